"""Precision selection and the half-precision guards (never a NaN or black image)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bsrn.errors import ConfigError
from bsrn.models import create_model
from bsrn.models.attention import CCA, channel_stats
from bsrn.precision import resolve_device, resolve_precision, run

CPU = torch.device("cpu")


def test_resolve_precision_rules():
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision(None, CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("float32", CPU) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="unknown precision"):
        resolve_precision("fp8", CPU)


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        assert resolve_device("auto") == CPU
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("toaster")


def _official_sum_stats(x: torch.Tensor) -> torch.Tensor:
    """CCA statistics as the official code computes them: spatial sums divided by H*W, in the
    input's dtype (the fp16 overflow risk)."""
    hw = x.shape[2] * x.shape[3]
    mean = x.sum(3, keepdim=True).sum(2, keepdim=True) / hw
    var = (x - mean).pow(2).sum(3, keepdim=True).sum(2, keepdim=True) / hw
    return var.pow(0.5) + mean


def test_cca_statistics_do_not_overflow_in_fp16():
    # |mean| * H * W = 2 * 256 * 256 = 131072 > 65504: an fp16 spatial sum overflows
    x = (2.0 + 0.5 * torch.randn(1, 4, 256, 256)).half()
    naive = _official_sum_stats(x)
    assert not torch.isfinite(naive).all()  # the risk is real in the official formula
    ours = channel_stats(x)
    ref = _official_sum_stats(x.double())
    assert ours.dtype == torch.float32 and torch.isfinite(ours).all()
    assert torch.allclose(ours.double(), ref, rtol=1e-4)
    cca = CCA(4).half()
    y = cca(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()


class _OverflowsInHalf(nn.Module):
    """Returns inf under autocast (as an fp16 overflow would), the right answer otherwise."""

    precision = "fp32"

    def forward(self, x):
        if torch.is_autocast_enabled("cpu"):
            return x * torch.tensor(float("inf"))
        return x * 2


def test_run_retries_in_fp32_when_half_output_is_not_finite():
    x = torch.rand(1, 3, 8, 8)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        y = run(_OverflowsInHalf(), x, "bf16", "cpu")
    assert torch.equal(y, x * 2) and y.dtype == torch.float32


def test_run_retry_covers_rewritten_and_tiled_forwards():
    """Autocast and the fp32 retry live in run() alone: a rewritten network, tiled or not,
    that overflows under bf16 autocast is repeated in exact fp32."""
    import bsrn
    from bsrn.tiling import forward_tiled

    torch.manual_seed(0)
    model = create_model("bsrn", scale=2, num_feat=16, num_block=1).eval()
    fast = bsrn.optimize(model)
    seen = []

    def poisoned(forward):
        def f(x):  # overflows only under autocast
            half = torch.is_autocast_enabled("cpu")
            seen.append(half)
            y = forward(x)
            return y * float("inf") if half else y
        return f

    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        ref = model(x)
    for forward in (fast, lambda t: forward_tiled(fast, t, tile=16)):
        seen.clear()
        with pytest.warns(RuntimeWarning, match="non-finite"):
            y = run(poisoned(forward), x, "bf16", "cpu")
        assert seen == [True, False]
        assert (y - ref).abs().max() < 1e-5  # the retry really ran in fp32


def _psnr(a, b):
    mse = (a.clamp(0, 1) - b.clamp(0, 1)).double().pow(2).mean().item()
    return 10 * math.log10(1 / mse)


def test_bf16_on_cpu_is_finite_and_close():
    torch.manual_seed(0)
    model = create_model("bsrn", scale=2, num_feat=16, num_block=2).eval()
    x = torch.rand(1, 3, 24, 24)
    ref = run(model, x, "fp32", "cpu")
    y = run(model, x, "bf16", "cpu")
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert not torch.equal(y, ref)  # it really ran in bf16
    assert _psnr(y, ref) > 35
