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
    """Every stage of the schedule (head, block body + ESA, CCA, block, fusion, c2) against the
    official code's intermediates."""
    model = bsrn.load_model(official("net_g_BSRN_x4.pth"))
    seen = {}
    with torch.no_grad():
        fea = model.head(golden["input"])
        seen["x4_fea_conv"] = fea.clone()
        esa = model.B1.esa(model.B1.body(fea))
        seen["x4_B1_esa"] = esa.clone()
        seen["x4_B1_cca"] = model.B1.cca(esa)
        out, acc = fea, None
        for k, block in enumerate(model.blocks()):
            out = block(out)
            seen.setdefault("x4_B1", out.clone())
            acc = model.fuse(acc, k, out)
        seen["x4_B8"] = out
        seen["x4_c1"] = acc.clone()
        seen["x4_c2"] = model.c2(model.act(acc))
    for k, v in seen.items():
        diff = (v - golden[k]).abs().max().item()
        assert diff <= TOL, f"{k}: max |diff| {diff:.2e}"
