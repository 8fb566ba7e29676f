"""Inference backends: PyTorch, ONNX Runtime and OpenVINO behind one call contract.

An external runtime runs graphs that bsrn exports and verifies itself (:func:`bsrn.export.
export_stages`): the whole network, and its heavy stages (head, each block body, tail) so that
the exact tiler keeps whole-image statistics at the runtime's speed. Graphs are cached per model
in the user cache folder (``BSRN_CACHE``, else ``$XDG_CACHE_HOME/bsrn``, else ``~/.cache/bsrn``),
keyed by a hash of the weights, so they are rebuilt when the weights change; a graph folder is
written atomically. ``auto`` picks the fastest installed backend for this device and thread
count by a short measurement, cached in the same folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ConfigError

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
#: Bumped whenever the exported graphs change, so cached graphs are rebuilt.
GRAPH_VERSION = "2"
#: Max |diff| allowed between a runtime and PyTorch on the verification input (fp32).
VERIFY_ATOL = 1e-4
_PIP_EXTRA = {"onnxruntime": "onnx", "openvino": "openvino"}


def cache_dir() -> Path:
    """The user cache folder for exported graphs and backend measurements."""
    env = os.environ.get("BSRN_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bsrn"


def cpu_name() -> str:
    """The CPU model name (for logs and cache keys)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads counted once)."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for c in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(),
                       (topo / "core_id").read_text().strip()))
        except OSError:
            cores.add(("?", str(c)))
    return max(1, len(cores))


_ALLOCATOR_TUNED = False


def tune_allocator() -> bool:
    """Keep freed memory in the process (glibc malloc): allocations up to 32 MiB come from the
    heap and freed heap memory is not returned to the system, so the next forward reuses pages
    instead of faulting fresh ones in. Per op, BSRN allocates a feature map of 64 x H x W
    floats; page faults were ~20 % of a CPU forward at 320x180 with 2 threads. Returns whether
    it applied (glibc only; once per process). ``malloc_trim`` still releases memory."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024) == 1
        ok &= libc.mallopt(m_trim_threshold, 2 ** 31 - 1) == 1  # (a C int)
    except (OSError, AttributeError):
        return False
    _ALLOCATOR_TUNED = ok
    return ok


def installed(name: str) -> bool:
    """Whether the runtime behind backend ``name`` can be imported."""
    if name == "torch":
        return True
    import importlib.util

    mod = {"onnxruntime": "onnxruntime", "openvino": "openvino"}[name]
    return importlib.util.find_spec(mod) is not None and importlib.util.find_spec("onnx") is not None


def model_key(model: nn.Module) -> str:
    """A hash of the network's config and weights (and the graph format version)."""
    h = hashlib.sha256(f"{GRAPH_VERSION}|{torch.__version__}".encode())
    cfg = getattr(model, "cfg", None)
    h.update(json.dumps(cfg.to_dict() if hasattr(cfg, "to_dict") else str(cfg),
                        sort_keys=True).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def graphs_for(model: nn.Module, progress=None) -> dict[str, Path]:
    """The exported graphs of ``model`` from the cache, exported (and verified) when missing."""
    from .export import export_stages

    folder = cache_dir() / "graphs" / model_key(model)
    done = folder / "graphs.json"
    if done.is_file():
        names = json.loads(done.read_text())
        paths = {n: folder / f"{n}.onnx" for n in names}
        if all(p.is_file() for p in paths.values()):
            return paths
    folder.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        progress(f"exporting graphs for this model to {folder} (once)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        paths = export_stages(model, tmp)
        (tmp / "graphs.json").write_text(json.dumps(sorted(paths)))
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {n: folder / f"{n}.onnx" for n in paths}


# ----------------------------------------------------------------------------- runtimes
class _OrtGraph:
    """One graph in an ONNX Runtime session."""

    def __init__(self, path: Path, threads: int):
        from .runtimes import ort_session

        self.sess = ort_session(path, threads)
        self.names = [i.name for i in self.sess.get_inputs()]

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        return self.sess.run(None, dict(zip(self.names, xs)))[0]


class _OvGraph:
    """One graph on OpenVINO's CPU plugin in fp32, compiled per input shape
    (:class:`bsrn.runtimes.OvRequests`)."""

    def __init__(self, path: Path, threads: int):
        from .runtimes import OvRequests, ov_core

        self.requests = OvRequests(ov_core().read_model(str(path)), threads, str(path))

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        return self.requests(*xs)


_RUNTIMES = {"onnxruntime": _OrtGraph, "openvino": _OvGraph}
#: Bumped when what ``RuntimeNet`` checks changes, so older checks are redone.
_VERIFY_VERSION = 2


_COMPILE_POOL = None


def _compile_pool():
    """One background thread for runtime compiles (they then run in the order asked)."""
    global _COMPILE_POOL
    if _COMPILE_POOL is None:
        import concurrent.futures

        _COMPILE_POOL = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bsrn-compile")
    return _COMPILE_POOL


class _OvTileBody:
    """A block body for exact tiles on OpenVINO: channels_last in and out (the plugin folds the
    layout change into the graph), compiled once per tile shape (the tiler cuts equal crops),
    the output a view of the request's buffer that the tiler copies before the next call. If
    OpenVINO cannot compile a tile shape, the block's PyTorch body takes over, with a warning."""

    def __init__(self, path: Path, threads: int, fallback):
        self.path, self.threads, self.fallback = path, threads, fallback
        self._requests, self.failed, self._pending = None, False, None
        self._lock = threading.Lock()

    def reset(self):
        try:
            self._wait()
        except Exception:  # noqa: BLE001 - the compile is dropped anyway
            pass
        self._requests = None

    def _compile(self, shape: tuple | None = None):
        with self._lock:
            if self._requests is None:
                from .runtimes import OvRequests, ov_channels_last, ov_core

                model = ov_channels_last(ov_core().read_model(str(self.path)))
                self._requests = OvRequests(model, self.threads, str(self.path), dynamic=False)
        if shape is not None:
            self._requests.compiled((shape,))

    def prefetch(self, shape: tuple) -> None:
        """Compile for NHWC input ``shape`` in the background (one thread for all blocks, in
        call order), so that compiles overlap the work of earlier blocks."""
        if not self.failed and self._pending is None:
            self._pending = _compile_pool().submit(self._compile, tuple(shape))

    def _wait(self):
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # a failure surfaces in _run, which retries and falls back

    def _run(self, a: np.ndarray, box: tuple | None = None) -> np.ndarray | None:
        """The body of the NHWC array ``a`` (or of its region ``box`` = (begin, end), read in
        place), as a borrowed view; None once OpenVINO failed."""
        if self.failed:
            return None
        try:
            self._wait()
            self._compile()
            return self._requests.borrow(a) if box is None else \
                self._requests.borrow_region(a, *box)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises one generic type
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            warnings.warn(f"{self.path.name}: OpenVINO cannot run this tile shape ({first}); "
                          "this block's tiles run on PyTorch instead", stacklevel=2)
            self.failed = True
            return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        if x.dtype == torch.float32:
            out = self._run(x.detach().permute(0, 2, 3, 1).contiguous().numpy())
        return self.fallback(x) if out is None else torch.from_numpy(out).permute(0, 3, 1, 2)

    def into(self, src: torch.Tensor, dst: torch.Tensor, crop, core) -> bool:
        """``dst[core] = body(src[crop])[core]`` for channels_last CPU float32 maps: the plugin
        reads the crop in place (a region of ``src``) and the core is copied out with numpy
        (single-threaded copies between runtime calls measured faster than PyTorch's, whose idle
        OpenMP workers then compete with the runtime's); False when it cannot (the caller runs
        the PyTorch body)."""
        if not all(t.device.type == "cpu" and t.dtype == torch.float32 and
                   t.is_contiguous(memory_format=torch.channels_last) for t in (src, dst)):
            return False
        (a0, b0, c0, d0), (a, b, cc, d) = crop, core
        s, t = src.detach().permute(0, 2, 3, 1).numpy(), dst.detach().permute(0, 2, 3, 1).numpy()
        out = self._run(s, ((0, a0, c0, 0), (s.shape[0], b0, d0, s.shape[3])))
        if out is None:
            return False
        np.copyto(t[:, a:b, cc:d], out[:, a - a0:b - a0, cc - c0:d - c0])
        return True


class _Runner:
    """Tensor in, tensor out through a runtime graph (CPU, fp32)."""

    def __init__(self, graph):
        self.graph = graph

    def __call__(self, *xs: torch.Tensor) -> torch.Tensor:
        arrays = [np.ascontiguousarray(x.detach().float().cpu().numpy()) for x in xs]
        return torch.from_numpy(self.graph(*arrays))


class _LazyRunner(_Runner):
    """A runner that compiles its graph on first use (stage graphs are needed only when an
    image is tiled)."""

    def __init__(self, make, path: Path, threads: int):
        self.make, self.path, self.threads, self._graph = make, path, threads, None

    @property
    def graph(self):
        if self._graph is None:
            self._graph = self.make(self.path, self.threads)
        return self._graph


class _RuntimeBlock:
    """A block whose ``body`` runs in the runtime; its light stages stay in PyTorch."""

    def __init__(self, block: nn.Module, body: _Runner):
        self.block, self.body = block, body
        if hasattr(body, "into"):
            self.body_into = body.into
        self.esa, self.attention = block.esa, block.attention
        self.cca = getattr(block, "cca", None)
        self.output = block.output


class RuntimeNet(nn.Module):
    """A staged network run by an external runtime (ONNX Runtime or OpenVINO) on the CPU.

    Same call contract as the PyTorch network (NCHW float32 in [0, 1] in and out, ``scale``,
    ``min_size``, ``cfg``), and the same stages, so ``bsrn.tiling.forward_tiled`` tiles it
    exactly. The whole-image forward always runs in the runtime. In exact tiles on OpenVINO,
    the block bodies (most of the work) run in OpenVINO, channels_last in and out and compiled
    for the tile shape (about 1.2x faster than the PyTorch fast path per tile), and the passes
    between them on the PyTorch fast path; ``tile_bodies=False``, and ONNX Runtime, run every
    tile stage on the fast path. ``staged_graphs=True`` runs ``head``, each ``body`` and
    ``tail`` through the exported stage graphs as plain NCHW calls instead (a check of the
    stage graphs, not a fast path).
    """

    def __init__(self, model: nn.Module, backend: str, threads: int | None = None,
                 progress=None, staged_graphs: bool = False, tile_bodies: bool = True):
        super().__init__()
        if backend not in _RUNTIMES:
            raise ConfigError(f"unknown runtime backend {backend!r}")
        if not installed(backend):
            raise ConfigError(f"backend {backend} is not installed: pip install "
                              f"\"bsrn[{_PIP_EXTRA[backend]}]\"")
        from .rewrite import optimize

        self.backend = backend
        self.torch_model = optimize(model, "cpu")  # the light passes, on the fast path
        self.cfg = model.cfg
        self.memory_format = getattr(self.torch_model, "memory_format", torch.contiguous_format)
        threads = threads or torch.get_num_threads()
        make = _RUNTIMES[backend]
        paths = graphs_for(model, progress)
        self._whole = _LazyRunner(make, paths["whole"], threads)
        self._head = _LazyRunner(make, paths["head"], threads)
        self._tail = _LazyRunner(make, paths["tail"], threads)
        torch_blocks = self.torch_model.blocks()
        self._blocks = [_RuntimeBlock(b, _LazyRunner(make, paths[f"body{k + 1}"], threads))
                        for k, b in enumerate(torch_blocks)]
        self._tile_blocks = None
        if backend == "openvino" and tile_bodies:
            self._tile_blocks = [
                _RuntimeBlock(b, _OvTileBody(paths[f"body{k + 1}"], threads, b.body))
                for k, b in enumerate(torch_blocks)]
            #: Tile working sets held besides PyTorch's (one compiled graph per block).
            self.tile_workspaces = len(torch_blocks)
        self.staged_graphs = staged_graphs
        stamp = paths["whole"].parent / f"verified-{backend}-{_VERIFY_VERSION}.json"
        if stamp.is_file():
            self.max_abs_diff = json.loads(stamp.read_text())["max_abs_diff"]
        else:  # once per graphs and runtime: whole graph and stages against PyTorch
            self.max_abs_diff = self._verify(model)
            from .checkpoint import atomic_write

            atomic_write(stamp, lambda tmp: Path(tmp).write_text(
                json.dumps({"max_abs_diff": self.max_abs_diff})))

    @property
    def scale(self) -> int:
        return self.torch_model.scale

    @property
    def min_size(self) -> int:
        return self.torch_model.min_size

    @property
    def tail_halo(self) -> int:
        from .tiling import TAIL_HALO

        return getattr(self.torch_model, "tail_halo", TAIL_HALO)

    def prepare_tiles(self, shape: tuple) -> None:
        """Start compiling every block's tile graph for NCHW crops of ``shape`` in the
        background (called by the exact tiler before the first block)."""
        if not self.staged_graphs:
            n, c, h, w = shape
            for b in self._tile_blocks or ():
                b.body.prefetch((n, h, w, c))

    def blocks(self):
        if self.staged_graphs:
            return self._blocks
        return self._tile_blocks or self.torch_model.blocks()

    def head(self, x):
        if not self.staged_graphs:
            return self.torch_model.head(x)
        return self._head(x).contiguous(memory_format=self.memory_format)

    def fuse(self, acc, k, out):
        return self.torch_model.fuse(acc, k, out)

    def tail(self, acc, fea):
        return self._tail(acc, fea) if self.staged_graphs else self.torch_model.tail(acc, fea)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .models.base import sr_forward

        return sr_forward(lambda self_, t: self._whole(t))(self, x).to(x.device)

    @torch.no_grad()
    def _verify(self, model: nn.Module) -> float:
        """Whole graph and stages against PyTorch on a random input; raises on a mismatch."""
        from .tiling import forward_tiled

        x = torch.rand(1, 3, 40, 47, generator=torch.Generator().manual_seed(0))
        ref = model(x)
        staged, self.staged_graphs = self.staged_graphs, True
        try:
            diffs = [(self(x) - ref).abs().max().item(),
                     (forward_tiled(self, x, tile=16) - ref).abs().max().item()]
            self.staged_graphs = False
            diffs.append((forward_tiled(self, x, tile=16) - ref).abs().max().item())
        finally:
            self.staged_graphs = staged
            for runner in (self._whole, self._head, self._tail, *(b.body for b in self._blocks)):
                runner._graph = None  # drop the check's compiles: its sizes are not the user's
            for b in self._tile_blocks or ():
                b.body.reset()
        worst = max(diffs)
        if not worst <= VERIFY_ATOL:
            raise ConfigError(f"the {self.backend} graphs differ from PyTorch by {worst:.2e} "
                              f"(> {VERIFY_ATOL}); delete {cache_dir() / 'graphs'} and retry")
        return worst


# ----------------------------------------------------------------------------- choosing
def _median_time(fn, x, reps: int) -> float:
    fn(x)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def choose_backend(model: nn.Module, device: torch.device, threads: int,
                   candidates=None, size: int = 128, reps: int = 3, progress=None) -> str:
    """The fastest installed backend for ``model``'s architecture on this device and thread
    count, by a short measurement at ``size`` x ``size`` (cached per CPU, thread count,
    architecture and library versions in the cache folder). Non-CPU devices use torch."""
    if device.type != "cpu" or not hasattr(model, "blocks"):
        return "torch"
    candidates = [b for b in (candidates or BACKENDS[1:]) if installed(b)]
    if len(candidates) == 1:
        return candidates[0]
    import importlib.metadata as md

    versions = []
    for pkg in ("torch", "onnxruntime", "openvino"):
        try:
            versions.append(f"{pkg}={md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    cfg = model.cfg.to_dict() if hasattr(model.cfg, "to_dict") else str(model.cfg)
    key = hashlib.sha256(json.dumps([cpu_name(), threads, cfg, candidates, versions, size],
                                    sort_keys=True).encode()).hexdigest()[:16]
    store = cache_dir() / "backend_choice.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known and known[key].get("backend") in candidates:
        return known[key]["backend"]
    if progress:
        progress(f"measuring backends ({', '.join(candidates)}) at {threads} threads (once)")
    from .rewrite import optimize

    x = torch.rand(1, 3, size, size)
    times = {}
    with torch.inference_mode():
        for name in candidates:
            net = optimize(model, "cpu") if name == "torch" else RuntimeNet(model, name, threads)
            times[name] = _median_time(net, x, reps)
    best = min(times, key=times.get)
    known[key] = {"backend": best, "seconds": times, "cpu": cpu_name(), "threads": threads}
    from .checkpoint import atomic_write

    atomic_write(store, lambda tmp: Path(tmp).write_text(json.dumps(known, indent=1)))
    return best


def make_backend(model: nn.Module, backend: str, device: torch.device, threads: int,
                 compile: bool = False, progress=None) -> tuple[nn.Module, str]:
    """(network ready to run, backend name) for ``backend`` in BACKENDS."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        backend = choose_backend(model, device, threads, progress=progress)
    if backend == "torch":
        from .rewrite import optimize

        return optimize(model, device, compile=compile), "torch"
    if device.type != "cpu":
        raise ConfigError(f"the {backend} backend runs on the CPU here; use --backend torch "
                          f"for {device.type}")
    return RuntimeNet(model, backend, threads, progress), backend
