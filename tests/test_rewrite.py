"""The fast inference path: every rewrite is exact (max |diff| <= 1e-4 in fp32), and one test
crosses every preset with every schedule (plain, rewritten, exact-tiled, both)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bsrn.errors import ConfigError
from bsrn.models import BSConvU, create_model
import bsrn
from bsrn.models import list_models
from bsrn.precision import run
from bsrn.rewrite import REWRITES, CUDAGraphs, dense_from_bsconvu, optimize, policy_dense
from bsrn.tiling import forward_tiled

TOL = 1e-4


def _lively(model, seed=0):
    """Unit-gain re-initialisation so attention and biases matter (see test_tiling)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan))
            else:
                p.copy_((torch.rand(p.shape, generator=g) - 0.5) * 0.2)
            if name.endswith(".cw"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def _x(h, w, n=1, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def nets():
    return {"bsrn": _lively(create_model("bsrn", scale=3, num_feat=16, num_block=2)),
            "bsrn_s": _lively(create_model("bsrn_s", scale=2, num_feat=24, num_block=2))}


@torch.no_grad()
@pytest.mark.parametrize("name", ["bsrn", "bsrn_s"])
@pytest.mark.parametrize("size", [(23, 37), (16, 15), (9, 6), (1, 1)])
def test_fast_path_equals_model(nets, name, size):
    model = nets[name]
    fast = optimize(model)
    x = _x(*size)
    ref = model(x)
    out = fast(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert (out - ref).abs().max() <= TOL


@torch.no_grad()
@pytest.mark.parametrize("rewrite", REWRITES)
def test_each_rewrite_alone(nets, rewrite):
    for name, model in nets.items():
        fast = optimize(model, rewrites=[rewrite], fuse="all")
        x = _x(19, 26, n=2, seed=1)
        assert (fast(x) - model(x)).abs().max() <= TOL, (name, rewrite)


@torch.no_grad()
def test_all_rewrites_and_all_fusions_together(nets):
    for model in nets.values():
        fast = optimize(model, rewrites=REWRITES, fuse="all")
        x = _x(31, 17, seed=2)
        assert (fast(x) - model(x)).abs().max() <= TOL


@torch.no_grad()
def test_dense_fusion_is_exact_for_stride_2_without_padding():
    torch.manual_seed(0)
    layer = BSConvU(16, 16, 3, stride=2, padding=0).eval()  # ESA conv2
    dense = dense_from_bsconvu(layer)
    x = torch.randn(1, 16, 21, 18)
    assert dense.weight.shape == (16, 16, 3, 3)
    # hand-derived blueprint: W[o, i] = pw[o, i] * dw[o]
    w = layer.dw.weight[:, 0][:, None] * layer.pw.weight[:, :, 0, 0][:, :, None, None]
    assert torch.allclose(dense.weight, w)
    assert (dense(x) - layer(x)).abs().max() < 1e-5


def test_replication_fold_sums_the_four_slices(nets):
    model = nets["bsrn"]
    fast = optimize(model, rewrites=["fold"])
    w = model.fea_conv.pw.weight[:, :, 0, 0]
    folded = fast.fea_conv.pw.weight[:, :, 0, 0]
    assert folded.shape == (16, 3)
    assert torch.allclose(folded, w[:, 0:3] + w[:, 3:6] + w[:, 6:9] + w[:, 9:12])


def test_pointwise_bias_is_never_fused_to_dense(nets):
    fast = optimize(nets["bsrn_s"], fuse="all")
    # BSRN-S's pointwise layers have a bias: a dense conv would be wrong at the border
    assert set(fast.decisions.values()) == {"separate"}
    fast = optimize(nets["bsrn"], fuse="all")
    assert set(fast.decisions.values()) == {"dense"}


def test_activations_fuse_into_the_convs_that_feed_them_on_cpu(nets):
    fast = optimize(nets["bsrn"])
    assert {"B1.c1_d", "B1.c4", "B1.esa.conv_max", "B2.esa.conv3"} <= set(fast.fused_acts)
    assert "B1.c1_r" not in fast.fused_acts and "B1.esa.conv3_" not in fast.fused_acts
    assert fast.B1.c4.applies_act and not getattr(nets["bsrn"].B1.c4, "applies_act", False)


def test_cpu_policy_fuses_only_the_narrow_input_layer(nets):
    fast = optimize(nets["bsrn"], device="cpu")
    assert fast.decisions["fea_conv"] == "dense"
    assert fast.decisions["B1.c1_r"] == "separate"
    assert policy_dense(3, 64, torch.device("cpu")) and not policy_dense(64, 64,
                                                                        torch.device("cpu"))


@torch.no_grad()
def test_measured_fusion_decision_is_cached_and_exact(nets):
    fast = optimize(nets["bsrn"], fuse="measure", sample_size=(24, 24))
    assert set(fast.decisions.values()) <= {"dense", "separate"}
    x = _x(20, 22, seed=3)
    assert (fast(x) - nets["bsrn"](x)).abs().max() <= TOL


@torch.no_grad()
def test_official_weights_fast_path(official):
    from bsrn.checkpoint import load_model

    model = load_model(official("net_g_BSRN_x4.pth"))
    x = _x(27, 41, seed=4)
    ref = model(x)
    for kw in ({}, {"rewrites": REWRITES, "fuse": "all"}):
        assert (optimize(model, **kw)(x) - ref).abs().max() <= TOL


@torch.no_grad()
def test_official_bsrn_s_fast_path(official):
    from bsrn.checkpoint import load_model

    model = load_model(official("net_g_BSRN-S.pth"))
    x = _x(20, 25, seed=5)
    assert (optimize(model)(x) - model(x)).abs().max() <= TOL


@torch.no_grad()
@pytest.mark.parametrize("name", ["bsrn_dsconv", "bsrn_bsconv_s", "bsrn_conv", "bsrn_no_esa",
                                  "bsrn_no_attention", "rfdn", "imdn"])
def test_other_architectures(name):
    model = _lively(create_model(name, scale=2, num_feat=16, num_block=1))
    fast = optimize(model)
    x = _x(17, 20, seed=6)
    assert (fast(x) - model(x)).abs().max() <= TOL
    assert fast.scale == model.scale and fast.min_size == model.min_size


@torch.no_grad()
def test_interface_and_source_untouched(nets):
    model = nets["bsrn"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize(model, cuda_graphs=True)  # ignored off CUDA
    assert type(fast) is type(model) and not isinstance(fast, CUDAGraphs)
    assert fast.scale == 3 and fast.min_size == 15 and fast.cfg.num_feat == 16
    assert fast.rewrites == REWRITES and fast.input_replicate == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.input_replicate == 4 and not hasattr(model, "rewrites")
    assert not any(p.requires_grad for p in fast.parameters())
    x = _x(20, 20)
    assert F.mse_loss(fast(x), model(x)) < 1e-10
    assert bsrn.optimize is optimize  # the package exposes the function


@torch.no_grad()
def test_bf16_fast_path_is_close(nets):
    model = nets["bsrn"]
    x = _x(24, 24, seed=7)
    ref = model(x)
    out = run(optimize(model), x, "bf16", "cpu")
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    rel = ((out - ref).pow(2).mean() / ref.pow(2).mean()).sqrt()
    assert 0 < rel < 0.05  # bf16 has an 8-bit mantissa: close but not equal


def test_bad_options(nets):
    with pytest.raises(ConfigError):
        optimize(nets["bsrn"], rewrites=["nope"])
    with pytest.raises(ConfigError):
        optimize(nets["bsrn"], fuse="sometimes")


@torch.no_grad()
@pytest.mark.parametrize("name", list_models())
def test_every_model_agrees_across_every_schedule(name):
    """model == rewritten (CPU set) == rewritten (the CUDA set, run on CPU) == exact-tiled
    model == exact-tiled rewritten models, fp32, atol 1e-5, on uneven tiles and batch 2."""
    model = _lively(create_model(name, scale=2, num_feat=16, num_block=2), seed=11)
    x = _x(41, 37, n=2, seed=12)
    ref = model(x)
    cuda_set = optimize(model, rewrites=REWRITES, fuse="all")  # = default_rewrites + policy on CUDA
    variants = {"rewritten": optimize(model), "rewritten-cuda-set": cuda_set}
    outs = {k: m(x) for k, m in variants.items()}
    outs["tiled"] = forward_tiled(model, x, tile=16)
    for k, m in variants.items():
        outs[f"tiled {k}"] = forward_tiled(m, x, tile=16)
    for k, y in outs.items():
        assert y.shape == ref.shape, k
        assert (y - ref).abs().max() <= 1e-5, f"{name} {k}: {(y - ref).abs().max():.2e}"
