"""Backends: ONNX Runtime and OpenVINO run graphs we export and verify, whole and exactly tiled,
cached per weights; ``auto`` measures once and says what it picked."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import bsrn
from bsrn.backends import RuntimeNet, cache_dir, choose_backend, installed, make_backend, model_key
from bsrn.errors import ConfigError
from bsrn.tiling import BODY_HALO, forward_tiled, spans

RUNTIMES = [pytest.param(b, marks=pytest.mark.skipif(not installed(b), reason=f"{b} not installed"))
            for b in ("onnxruntime", "openvino")]


def _lively(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            else:
                p.copy_((torch.rand(p.shape, generator=g) - 0.5) * 0.2)
    return model.eval()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BSRN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def small():
    return _lively(bsrn.create_model("bsrn", scale=2, num_feat=16, num_block=2))


@torch.no_grad()
@pytest.mark.parametrize("backend", RUNTIMES)
@pytest.mark.parametrize("arch", ["bsrn", "bsrn_s", "rfdn"])
def test_runtime_whole_and_exact_tiles_equal_pytorch(backend, arch):
    model = _lively(bsrn.create_model(arch, scale=3, num_feat=16, num_block=2), seed=3)
    net = RuntimeNet(model, backend, threads=1, staged_graphs=True)
    x = torch.rand(2, 3, 43, 38, generator=torch.Generator().manual_seed(1))
    ref = model(x)
    assert net.scale == 3 and net.min_size == 15
    assert (net(x) - ref).abs().max() <= 1e-4
    assert (forward_tiled(net, x, tile=16) - ref).abs().max() <= 1e-4  # stage graphs in tiles
    net.staged_graphs = False
    assert (forward_tiled(net, x, tile=16) - ref).abs().max() <= 1e-4  # torch stages in tiles
    small = torch.rand(1, 3, 9, 11)  # below ESA's minimum: padded like the PyTorch model
    assert (net(small) - model(small)).abs().max() <= 1e-4


@torch.no_grad()
@pytest.mark.skipif(not installed("openvino"), reason="openvino not installed")
def test_openvino_tile_bodies_compile_once_per_image_and_fall_back_to_torch(small):
    """Exact tiles run each block body on OpenVINO, channels_last, one static compile per block
    for all tiles of an image (border crops have the interior's shape); if OpenVINO cannot
    compile, that block's tiles run on PyTorch with a warning, and the output is unchanged."""
    net = RuntimeNet(small, "openvino", threads=1)
    x = torch.rand(1, 3, 61, 75, generator=torch.Generator().manual_seed(4))
    ref = small(x)
    assert (forward_tiled(net, x, tile=20) - ref).abs().max() <= 1e-4  # 4 x 4 tiles
    crop = tuple(max(b - a for a, b in spans(n, 20)) + 2 * BODY_HALO for n in (61, 75))
    assert crop == (24, 27)
    for blk in net.blocks():
        assert list(blk.body._requests._static) == [((1, *crop, 16),)]  # NHWC, one shape
    broken = net.blocks()[1].body
    broken.reset()
    broken.path = broken.path.with_name("missing.onnx")
    with pytest.warns(UserWarning, match="run on PyTorch"):
        out = forward_tiled(net, x, tile=20)
    assert broken.failed and (out - ref).abs().max() <= 1e-4


@pytest.mark.skipif(not installed("openvino"), reason="openvino not installed")
def test_openvino_reads_tile_crops_in_place(small):
    """A tile's crop goes to OpenVINO as a region of the whole-image NHWC map (no copy): at
    every position, border and interior, the body equals the body of a copied crop; a map that
    is not C-contiguous is copied first."""
    net = RuntimeNet(small, "openvino", threads=1)
    body = net.blocks()[0].body
    body._compile()
    reqs = body._requests
    whole = np.random.default_rng(2).random((1, 41, 53, 16), dtype=np.float32)
    for a0, c0 in [(0, 0), (0, 29), (17, 0), (9, 13), (17, 29)]:
        crop = np.ascontiguousarray(whole[:, a0:a0 + 24, c0:c0 + 24])
        ref = reqs.borrow(crop).copy()
        got = reqs.borrow_region(whole, (0, a0, c0, 0), (1, a0 + 24, c0 + 24, 16))
        assert np.array_equal(got, ref), (a0, c0)
        assert np.abs(ref).max() > 0
    cm = np.asfortranarray(whole)  # not C-contiguous: copied, same result
    got = reqs.borrow_region(cm, (0, 9, 13, 0), (1, 33, 37, 16)).copy()  # (one output buffer)
    assert np.array_equal(got, reqs.borrow(np.ascontiguousarray(whole[:, 9:33, 13:37])))


@pytest.mark.skipif(not installed("openvino"), reason="openvino not installed")
def test_openvino_network_shared_by_threads(small):
    """Server workers share one network: each thread runs on its own infer requests (and output
    buffers), so concurrent whole-image and tiled runs all give PyTorch's output."""
    import concurrent.futures

    net = RuntimeNet(small, "openvino", threads=1)
    xs = [torch.rand(1, 3, 33 + i % 2, 41, generator=torch.Generator().manual_seed(i))
          for i in range(8)]
    with torch.no_grad():
        refs = [small(x) for x in xs]

    def run(i):
        with torch.no_grad():
            y = net(xs[i]) if i % 2 else forward_tiled(net, xs[i], tile=16)
        return (y - refs[i]).abs().max().item()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        errors = list(pool.map(run, range(len(xs))))
        assert max(errors) <= 1e-4, errors
        reqs = net._whole.graph.requests
        shape = ((1, 3, 33, 41),)
        reqs.request(shape)  # (seen before: from here on its own static compile)
        mine = reqs.request(shape)
        theirs = pool.submit(reqs.request, shape).result()
    assert mine is reqs.request(shape) and theirs is not mine  # per thread, kept per thread
    assert reqs.compiled(shape) is reqs.compiled(shape)  # one compile shared by the threads


@torch.no_grad()
@pytest.mark.skipif(not installed("openvino"), reason="openvino not installed")
def test_openvino_compiles_static_shapes_for_first_and_repeated_sizes(small):
    """First run and repeated sizes get a static-shape compile; a size seen once after that runs
    on the dynamic compile; every path gives PyTorch's output."""
    net = RuntimeNet(small, "openvino", threads=1)
    sizes = [(31, 40), (33, 29), (31, 40), (35, 35), (33, 29)]
    for h, w in sizes:
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * w))
        assert (net(x) - small(x)).abs().max() <= 1e-4
    reqs = net._whole.graph.requests
    static = {s[0][2:] for s in reqs._static}
    assert static == {(31, 40), (33, 29)}  # the first size and the repeated one, not the check's
    assert reqs._dynamic is not None  # sizes seen once ran on the dynamic compile
    fresh = RuntimeNet(small, "openvino", threads=1)._whole.graph.requests  # (checked before: stamp)
    x = torch.rand(1, 3, 30, 30)
    assert (fresh(x.numpy()) - small(x).numpy()).__abs__().max() <= 1e-4
    assert list(fresh._static) == [((1, 3, 30, 30),)] and fresh._dynamic is None  # first: static


@pytest.mark.parametrize("backend", RUNTIMES)
def test_graphs_are_cached_per_weights_and_rebuilt_when_they_change(backend, small):
    RuntimeNet(small, backend, threads=1)
    folder = cache_dir() / "graphs" / model_key(small)
    assert (folder / "whole.onnx").is_file() and (folder / "body2.onnx").is_file()
    stamp = (folder / "whole.onnx").stat().st_mtime_ns
    RuntimeNet(small, backend, threads=1)  # reuses the cached graphs
    assert (folder / "whole.onnx").stat().st_mtime_ns == stamp
    changed = _lively(bsrn.create_model("bsrn", scale=2, num_feat=16, num_block=2), seed=9)
    assert model_key(changed) != model_key(small)
    net = RuntimeNet(changed, backend, threads=1)
    x = torch.rand(1, 3, 20, 21)
    with torch.no_grad():
        assert (net(x) - changed(x)).abs().max() <= 1e-4  # the new weights, not the cached ones
    assert not [p for p in (cache_dir() / "graphs").iterdir() if p.name.startswith(".")]


def test_auto_measures_once_and_caches_its_choice(small, monkeypatch):
    cpu = torch.device("cpu")
    first = choose_backend(small, cpu, 1, size=32, reps=1)
    assert first in ("torch", "onnxruntime", "openvino") and installed(first)
    store = cache_dir() / "backend_choice.json"
    if sum(installed(b) for b in ("torch", "onnxruntime", "openvino")) > 1:
        entry = next(iter(json.loads(store.read_text()).values()))
        assert entry["backend"] == first and set(entry["seconds"]) >= {"torch"}
        monkeypatch.setattr("bsrn.backends._median_time",
                            lambda *a, **k: pytest.fail("measured twice"))
        assert choose_backend(small, cpu, 1, size=32, reps=1) == first
    assert choose_backend(small, torch.device("meta"), 1) == "torch"  # non-CPU devices


@pytest.mark.parametrize("backend", RUNTIMES)
def test_upscaler_on_a_runtime_matches_torch(backend, tmp_path):
    model = _lively(bsrn.create_model("bsrn", scale=2, num_feat=16, num_block=1), seed=5)
    path = bsrn.save_model(model, tmp_path / "w.safetensors")
    img = (np.random.default_rng(0).random((30, 41, 3)) * 255).astype(np.uint8)
    ref = bsrn.Upscaler(path, backend="torch", device="cpu")
    up = bsrn.Upscaler(path, backend=backend, device="cpu", threads=1)
    assert up.backend == backend and backend in up.describe()
    diff = np.abs(up(img).astype(int) - ref(img).astype(int))
    assert diff.max() <= 1


def test_bad_backend_requests_are_one_line_errors(small, monkeypatch):
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match="backend must be one of"):
        make_backend(small, "tensorrt", cpu, 1)
    monkeypatch.setattr("bsrn.backends.installed", lambda name: name == "torch")
    with pytest.raises(ConfigError, match=r'pip install "bsrn\[openvino\]"'):
        make_backend(small, "openvino", cpu, 1)
    with pytest.raises(ConfigError, match="runs fp32"):
        bsrn.Upscaler(small, backend="onnxruntime", precision="bf16", device="cpu")
    with pytest.raises(ConfigError, match="threads"):
        bsrn.Upscaler(small, threads=-1, device="cpu")
