"""CUDA: fp32/fp16/bf16 parity with the CPU, exact tiling, the out-of-memory retry, CUDA graphs
and torch.compile, with the bundled x4 weights on a crop of the bundled photo.

Marked ``cuda``; skipped without a GPU. ``benchmarks/gpu_suite.sh`` runs them.
"""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

import bsrn
from bsrn.image_io import read_rgb_uint8
from bsrn.metrics import uint8_to_tensor
from bsrn.precision import exact_fp32, run
from bsrn.tiling import forward_auto, forward_tiled
from bsrn.upscale import SAMPLE

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")
#: Minimum PSNR (dB, on [0, 1] output) of a half-precision output against the fp32 CPU one.
HALF_PSNR = {"fp16": 50.0, "bf16": 40.0}


@pytest.fixture(scope="module")
def model():
    """The bundled x4 network on the CPU (tests copy it to the GPU)."""
    return bsrn.load_model("bsrn-x4").eval()


@pytest.fixture(scope="module")
def gpu_model(model):
    return copy.deepcopy(model).to(CUDA)


@pytest.fixture(scope="module")
def photo():
    """A 96x128 crop of the bundled photo, (1, 3, H, W) in [0, 1]."""
    return uint8_to_tensor(read_rgb_uint8(SAMPLE)[:96, :128].copy())


@pytest.fixture(scope="module")
def cpu_ref(model, photo):
    with torch.no_grad():
        return model(photo)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double().cpu() - b.double().cpu()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def test_fp32_matches_cpu(gpu_model, photo, cpu_ref):
    y = run(gpu_model, photo, "fp32", CUDA)          # TF32 off inside run
    assert y.device.type == "cuda" and y.dtype == torch.float32
    assert (y.cpu() - cpu_ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_close_to_cpu(gpu_model, photo, cpu_ref, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = run(gpu_model, photo, precision, CUDA)
    assert not [w for w in caught if "non-finite" in str(w.message)]   # no fp32 retry
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert _psnr(y, cpu_ref) >= HALF_PSNR[precision]
    assert (y.cpu() - cpu_ref).abs().max().item() > 0     # really ran in half precision


@pytest.mark.parametrize("rewritten", [False, True])
def test_exact_tiling_equals_whole_image(model, gpu_model, photo, rewritten):
    net = bsrn.optimize(model, CUDA) if rewritten else gpu_model
    x = photo.to(CUDA)
    with torch.no_grad(), exact_fp32(CUDA):
        whole = net(x)
        tiled = forward_tiled(net, x, tile=32)
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max().item() <= 1e-4


def test_oom_retry_tiles_and_gives_the_whole_image_result(gpu_model):
    """Cap this process's GPU memory below what a whole-image forward needs (measured): the
    forward in forward_auto must hit a CUDA out-of-memory error, retry tiled, and return the
    uncapped whole-image output."""
    torch.manual_seed(0)
    h, w = 768, 1024
    x = torch.rand(1, 3, h, w, device=CUDA)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(CUDA)
    base = torch.cuda.memory_allocated(CUDA)
    with torch.no_grad(), exact_fp32(CUDA):
        ref = gpu_model(x).cpu()
    need = torch.cuda.max_memory_allocated(CUDA) - base
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(CUDA).total_memory
    # 60 % of the whole-image need: the tiled schedule (3 LR feature maps, the output and one
    # tile) fits, the whole image does not
    torch.cuda.set_per_process_memory_fraction((base + 0.6 * need) / total, CUDA)
    try:
        with pytest.warns(RuntimeWarning, match="out of memory"):
            y = forward_auto(gpu_model, x, CUDA, "fp32")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, CUDA)
        torch.cuda.empty_cache()
    assert y.shape == ref.shape
    assert (y.cpu() - ref).abs().max().item() <= 1e-4


def test_cuda_graphs_equal_eager(model, gpu_model, photo):
    eager = gpu_model
    graphs = bsrn.optimize(model, CUDA, cuda_graphs=True)
    assert isinstance(graphs, bsrn.rewrite.CUDAGraphs)
    x1, x2 = photo.to(CUDA), photo[..., :64, :80].contiguous().to(CUDA)
    with torch.no_grad(), exact_fp32(CUDA):
        for x in (x1, x2, x1):                            # two shapes, then a replay
            a, b = eager(x), graphs(x)
            assert (a - b).abs().max().item() <= 1e-4
        first = graphs(x1)
        graphs(x1 * 0.5)
        assert (first - eager(x1)).abs().max().item() <= 1e-4   # outputs are not aliased
    with torch.no_grad():
        a = run(eager, x1, "fp16", CUDA)
        b = run(graphs, x1, "fp16", CUDA)
    assert _psnr(a, b) >= HALF_PSNR["fp16"]


def test_compile_equals_eager(model, gpu_model, photo):
    pytest.importorskip("triton", reason="torch.compile on CUDA needs triton")
    eager = gpu_model
    compiled = bsrn.optimize(model, CUDA, compile=True)
    x = photo.to(CUDA)
    with torch.no_grad(), exact_fp32(CUDA):
        a, b = eager(x), compiled(x)
    assert (a - b).abs().max().item() <= 1e-4

