"""Parity with the official implementation: golden tensors made by the official code and
weights (../shared/reference/bsrn_official/golden)."""
import pytest
import torch

import bsrn

TOL = 1e-5

CASES = [
    ("official", "net_g_BSRN_x2.pth", "output_bsrn_x2"),
    ("official", "net_g_BSRN_x3.pth", "output_bsrn_x3"),
    ("official", "net_g_BSRN_x4.pth", "output_bsrn_x4"),
    ("official", "net_g_BSRN-S.pth", "output_bsrn_s_official_x4"),
    ("ntire", "team18_bsrn.pth", "output_bsrn_s_ntire_team18_x4"),
]


@pytest.mark.parametrize("where,fname,key", CASES, ids=[c[1] for c in CASES])
def test_outputs_match_golden(where, fname, key, golden, official, ntire, request):
    path = (official if where == "official" else ntire)(fname)
    model = bsrn.load_model(path)
    with torch.no_grad():
        out = model(golden["input"])
    assert out.shape == golden[key].shape
    assert (out - golden[key]).abs().max().item() <= TOL


def test_intermediates_match_golden(golden, official):
    model = bsrn.load_model(official("net_g_BSRN_x4.pth"))
    taps = {"x4_fea_conv": model.fea_conv, "x4_B1_esa": model.B1.esa, "x4_B1_cca": model.B1.cca,
            "x4_B1": model.B1, "x4_B8": model.B8, "x4_c1": model.c1, "x4_c2": model.c2}
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: seen.__setitem__(k, o))
             for k, m in taps.items()]
    with torch.no_grad():
        model(golden["input"])
    for h in hooks:
        h.remove()
    for k in taps:
        diff = (seen[k] - golden[k]).abs().max().item()
        assert diff <= TOL, f"{k}: max |diff| {diff:.2e}"
