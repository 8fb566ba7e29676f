"""The model family: registry, parameter counts against the reference tables, shapes, training
behaviour, small inputs and the BSConv-S regulariser."""
import math

import pytest
import torch

import bsrn
from bsrn.detect import detect
from bsrn.models import (BSConvS, BSConvU, BSRNConfig, DSConv, create_model, list_models,
                         orthogonality_loss)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# Totals measured with the official implementation (bsrn-reference.md, 1.5 and 1.8).
PUBLISHED_PARAMS = [
    ("bsrn", 4, 352_400), ("bsrn", 3, 340_283), ("bsrn", 2, 331_628),
    ("bsrn_s", 4, 156_288), ("bsrn_bsconv_s", 4, 292_544), ("bsrn_dsconv", 4, 354_440),
    ("bsrn_conv", 4, 1_352_464), ("rfdn", 4, 433_448), ("imdn", 4, 893_936),
]


@pytest.mark.parametrize("name,scale,expected", PUBLISHED_PARAMS)
def test_param_counts_match_reference(name, scale, expected):
    assert n_params(create_model(name, scale=scale)) == expected


def test_block_param_breakdown():
    m = create_model("bsrn")
    assert n_params(m.fea_conv) == 1408
    assert n_params(m.B1) == 35_716
    assert n_params(m.B1.esa) == 4064 and n_params(m.B1.cca) == 580
    s = create_model("bsrn_s")
    assert n_params(s.B1) == 24_000 and n_params(s.B1.esa) == 3504


def test_registry_lists_paper_presets():
    names = set(list_models())
    for required in ("bsrn", "bsrn_s", "rfdn", "imdn", "bsrn_1", "bsrn_2", "bsrn_no_esa",
                     "bsrn_no_cca", "rfdn_dsconv", "rfdn_bsconv_u", "rfdn_bsconv_s",
                     "bsrn_relu", "bsrn_lrelu", "bsrn_hswish"):
        assert required in names
    assert list_models("rfdn*") == sorted(n for n in names if n.startswith("rfdn"))


def test_unknown_model_suggests_close_name():
    with pytest.raises(KeyError, match="bsrn_s"):
        create_model("bsrn-s")


def test_invalid_config_values_are_rejected():
    for bad in (dict(activation="tanh"), dict(attention="se"), dict(upsampler="deconv"),
                dict(num_block=0), dict(scale=5), dict(conv="octconv")):
        with pytest.raises(ValueError):
            BSRNConfig(**bad)


@pytest.mark.parametrize("name", list_models())
def test_every_preset_forward_backward_and_detect(name):
    torch.manual_seed(0)
    model = create_model(name, scale=2)
    x = torch.rand(2, 3, 16, 17)
    y = model(x)
    assert y.shape == (2, 3, 32, 34)
    y.abs().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    # The architecture and hyperparameters come back from the tensors alone.
    arch, cfg = detect(model.state_dict())
    want = model.cfg.to_dict()
    got = cfg.to_dict()
    want.pop("activation", None), got.pop("activation", None)  # not visible in weights
    want.pop("img_range", None), got.pop("img_range", None)
    assert got == want


@pytest.mark.parametrize("num_block,num_feat", [(1, 16), (3, 32), (12, 24)])
def test_any_depth_and_width(num_block, num_feat):
    m = create_model("bsrn", scale=3, num_block=num_block, num_feat=num_feat)
    assert m.c1.in_channels == num_block * num_feat
    assert m(torch.rand(1, 3, 16, 17)).shape == (1, 3, 48, 51)


@pytest.mark.parametrize("scale", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("upsampler", ["pixelshuffledirect", "pixelshuffleblock", "nearestconv",
                                       "pa"])
def test_upsamplers_and_scales(scale, upsampler):
    m = create_model("bsrn", scale=scale, num_feat=16, num_block=1, upsampler=upsampler)
    assert m(torch.rand(1, 3, 16, 18)).shape == (1, 3, 16 * scale, 18 * scale)


@pytest.mark.parametrize("act", ["gelu", "relu", "lrelu", "hswish", "silu"])
def test_activation_option_reaches_every_block(act):
    m = create_model("bsrn", num_feat=16, num_block=2, activation=act)
    kinds = {type(mod).__name__ for mod in m.modules()}
    expected = {"gelu": "GELU", "relu": "ReLU", "lrelu": "LeakyReLU", "hswish": "Hardswish",
                "silu": "SiLU"}[act]
    assert expected in kinds
    others = {"GELU", "LeakyReLU", "Hardswish", "SiLU"} - {expected}
    assert not (kinds & others)


def test_replication_count():
    m = create_model("bsrn", num_feat=16, num_block=1, replicate=1)
    assert m.fea_conv.pw.in_channels == 3
    m4 = create_model("bsrn", num_feat=16, num_block=1)
    assert m4.fea_conv.pw.in_channels == 12


@pytest.mark.parametrize("size", [(1, 1), (7, 9), (14, 14), (3, 40)])
def test_inputs_below_official_minimum(size):
    torch.manual_seed(0)
    m = create_model("bsrn", scale=4, num_feat=16, num_block=2).eval()
    h, w = size
    x = torch.rand(1, 3, h, w)
    with torch.no_grad():
        y = m(x)
        # Same as explicitly replicate-padding to 15 px and cropping.
        ph, pw = max(0, 15 - h), max(0, 15 - w)
        xp = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
        ref = m(xp)[..., : 4 * h, : 4 * w]
    assert y.shape == (1, 3, 4 * h, 4 * w)
    assert torch.equal(y, ref)


def test_conv_blocks_are_the_published_decompositions():
    torch.manual_seed(0)
    x = torch.rand(1, 8, 10, 10)
    u = BSConvU(8, 6)
    dense = u.dw.weight * u.pw.weight.view(6, 8, 1, 1)  # blueprint: F[o,i] = pw[o,i]*dw[o]
    ref = torch.nn.functional.conv2d(x, dense, u.dw.bias, padding=1)
    assert torch.allclose(u(x), ref, atol=1e-5)
    d = DSConv(8, 6)
    assert d.dw.weight.shape == (8, 1, 3, 3) and d.pw.weight.shape == (6, 8, 1, 1)
    s = BSConvS(64, 64)
    assert s.pw1.weight.shape == (16, 64, 1, 1)  # M' = ceil(0.25 * 64)
    assert BSConvS(12, 12).pw1.out_channels == 4 and BSConvS(16, 8).pw1.out_channels == 4


def test_orthogonality_regulariser():
    torch.manual_seed(0)
    layer = BSConvS(16, 16)
    w = layer.pw1.weight.detach().flatten(1)
    expected = math.sqrt(((w @ w.T - torch.eye(w.shape[0])) ** 2).sum().item())
    assert layer.reg_loss().item() == pytest.approx(expected, rel=1e-5)
    # Zero for orthonormal rows.
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    with torch.no_grad():
        layer.pw1.weight.copy_(q[:4].reshape(4, 16, 1, 1))
    assert layer.reg_loss().item() < 1e-5
    # It really works as a loss: descending it makes the rows orthonormal.
    model = create_model("bsrn_bsconv_s", num_feat=16, num_block=1)
    before = orthogonality_loss(model, alpha=1.0).item()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    for _ in range(200):
        opt.zero_grad()
        orthogonality_loss(model, alpha=1.0).backward()
        opt.step()
    after = orthogonality_loss(model, alpha=1.0).item()
    assert before > 0.5 and after < 0.05 * before
    assert orthogonality_loss(create_model("bsrn", num_feat=16, num_block=1)).item() == 0.0


def test_public_api():
    assert callable(bsrn.create_model) and callable(bsrn.load_model)
    assert "bsrn" in bsrn.list_models()


def test_models_command_lists_presets_with_published_counts(capsys):
    from bsrn.cli import main

    assert main(["models", "bsrn*"]) == 0
    out = capsys.readouterr().out
    assert "| bsrn | bsrn | 352,400 |" in out and "| bsrn_s | bsrn | 156,288 |" in out
    assert "rfdn" not in out.split("bundled weights")[0]
