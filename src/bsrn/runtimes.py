"""Graph runtimes behind the torch-model contract: ONNX Runtime (``.onnx``) and OpenVINO
(IR ``.xml``), fp32 or INT8; LiteRT (``.tflite``, one static input size) and ncnn, fp32.

:func:`load_graph` returns an ``nn.Module`` whose forward takes and returns NCHW float32 RGB in
[0, 1] like the PyTorch networks, with ``scale`` and ``min_size`` read from the file's metadata
(written by :func:`bsrn.export.export_onnx`; for LiteRT, the scale from the tensor shapes).
The session is built once and runs on the CPU.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError

#: File suffixes served by a graph runtime, and the runtime that runs them.
GRAPH_SUFFIXES = {".onnx": "onnxruntime", ".xml": "openvino", ".tflite": "litert"}


def ort_session(path, threads: int | None = None):
    """An ONNX Runtime CPU session for ``path`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or max(1, torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


#: Float precisions of an OpenVINO graph's float parts: fp32, or bf16 where the CPU has bf16
#: instructions (an INT8 graph's kept layers and element-wise ops; fp32 on other CPUs).
OV_FLOAT_PRECISIONS = ("fp32", "bf16")


def ov_config(threads: int | None = None, float_precision: str = "fp32") -> dict:
    """OpenVINO CPU settings: latency, ``threads`` threads, float parts in fp32 (on AMX /
    AVX512-BF16 CPUs the plugin's default is bf16, which would change the results), or in bf16
    when asked and the CPU has it."""
    hint = "bf16" if float_precision == "bf16" and ov_has_bf16() else "f32"
    return {"INFERENCE_NUM_THREADS": threads or max(1, torch.get_num_threads()),
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False,
            "INFERENCE_PRECISION_HINT": hint}


def ov_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can run bf16 here (AMX or AVX512-BF16)."""
    return "BF16" in ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


_OV_CORE = None


def ov_core():
    """The process's one OpenVINO Core. Compiled models and infer requests must not outlive the
    Core they came from; a Core per model let garbage collection destroy them in the wrong order,
    which crashed the process."""
    global _OV_CORE
    if _OV_CORE is None:
        import openvino as ov

        _OV_CORE = ov.Core()
    return _OV_CORE


def is_graph_file(path) -> bool:
    """True for a path that :func:`load_graph` runs (``.onnx``, OpenVINO ``.xml``,
    ``.tflite``)."""
    return isinstance(path, (str, os.PathLike)) and Path(path).suffix.lower() in GRAPH_SUFFIXES


class GraphModel(nn.Module):
    """An exported network run by a graph runtime, called like a torch SR model."""

    is_graph = True

    def __init__(self, path, runtime: str, scale: int, min_size: int, threads: int | None):
        super().__init__()
        self.source = str(path)
        self.runtime = runtime
        self.scale = int(scale)
        self.min_size = int(min_size)
        self.threads = threads

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an (N, 3, H, W) tensor, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        pad_h, pad_w = max(0, self.min_size - h), max(0, self.min_size - w)
        if pad_h or pad_w:  # the graph has no small-input branch: pad like the torch module
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        a = np.ascontiguousarray(x.detach().cpu().float().numpy())
        y = torch.from_numpy(np.asarray(self.run(a), dtype=np.float32))
        return y[..., : h * self.scale, : w * self.scale].to(x.device)


class OnnxRuntimeModel(GraphModel):
    """An ``.onnx`` file in an ONNX Runtime CPU session (INT8 QDQ graphs run as integer kernels)."""

    def __init__(self, path, threads: int | None = None):
        try:
            import onnx
            import onnxruntime as ort
        except ImportError:
            raise CheckpointError(f"{path}: running ONNX files needs onnxruntime "
                                  "(pip install 'bsrn[onnx]')") from None
        try:
            meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False)
                    .metadata_props}
            self.session = ort_session(path, threads)
        except Exception as e:  # noqa: BLE001 - onnx/ort raise many types for bad files
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"{path}: not a runnable ONNX model ({first})") from None
        super().__init__(path, "onnxruntime", *_scale_min_size(path, meta), threads)
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x):
        return self.session.run(None, {self.input_name: x})[0]


class OvRequests:
    """Infer requests of one OpenVINO model on the CPU, compiled per input shape.

    The CPU plugin runs a graph compiled for static shapes about 1.2x faster than its
    dynamic-shape compile (BSRN x4, 320x180), and compiling for one shape costs less than the
    dynamic compile. So a shape gets its own compile the first time the model runs and whenever
    it repeats (the last :attr:`KEEP` are kept); a shape seen once after that runs on the one
    dynamic-shape compile, so a stream of differently sized images pays no compile per image.
    ``dynamic=False`` compiles every shape (the plugin's dynamic path crashes on INT8 graphs
    when the shape changes).
    """

    KEEP = 4
    #: Distinct shapes remembered for "seen before" (then forgotten all at once).
    REMEMBER = 1024

    def __init__(self, model, threads: int | None = None, source: str = "model",
                 dynamic: bool = True, float_precision: str = "fp32"):
        self.model, self.source, self.dynamic = model, source, dynamic
        self.config = ov_config(threads, float_precision)
        self._static: dict[tuple, object] = {}
        self._seen: set[tuple] = set()
        self._dynamic = None
        self._lock = threading.Lock()
        self._local = threading.local()  # each thread's infer requests (and output buffers)

    def _compile(self, shapes: tuple | None):
        graph = self.model
        if shapes is not None:
            graph = self.model.clone()
            graph.reshape({i: list(s) for i, s in enumerate(shapes)})
        try:
            return ov_core().compile_model(graph, "CPU", self.config)
        except Exception as e:  # noqa: BLE001 - the plugin raises one generic type
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            what = f"input {shapes[0] if len(shapes) == 1 else shapes}" if shapes else \
                "dynamic shapes"
            raise CheckpointError(f"{self.source}: OpenVINO cannot compile it for {what} "
                                  f"({first})") from None

    def compiled(self, shapes: tuple):
        """The compiled model for inputs of ``shapes`` (a tuple of shape tuples)."""
        with self._lock:
            if shapes in self._static:
                self._static[shapes] = self._static.pop(shapes)  # most recent last
                return self._static[shapes]
            first_run = not self._static and self._dynamic is None
            if self.dynamic and not first_run and shapes not in self._seen:
                if len(self._seen) >= self.REMEMBER:  # a server seeing endless sizes
                    self._seen.clear()
                self._seen.add(shapes)
                if self._dynamic is None:
                    self._dynamic = self._compile(None)
                return self._dynamic
            self._seen.add(shapes)
            while len(self._static) >= self.KEEP:
                self._static.pop(next(iter(self._static)))
            self._static[shapes] = self._compile(shapes)
            return self._static[shapes]

    def request(self, shapes: tuple):
        """This thread's infer request for inputs of ``shapes``: requests (and their output
        buffers) are per thread, so threads sharing a model never share a buffer."""
        model = self.compiled(shapes)
        key = None if model is self._dynamic else shapes
        reqs = self._local.__dict__.setdefault("reqs", {})
        hit = reqs.get(key)
        if hit is None or hit[0] is not model:
            if len(reqs) > self.KEEP:  # drop requests of compiles that were let go
                live = {id(m) for m in (*self._static.values(), self._dynamic)}
                for k in [k for k, (m, _) in reqs.items() if id(m) not in live]:
                    del reqs[k]
            hit = reqs[key] = (model, model.create_infer_request())
        return hit[1]

    def borrow(self, *xs: np.ndarray) -> np.ndarray:
        """The output as a view of this thread's request buffer, valid until the thread's next
        call for the same shapes (the inputs are read in place, not copied)."""
        req = self.request(tuple(tuple(x.shape) for x in xs))
        req.infer(list(xs), share_inputs=True)
        return req.get_output_tensor(0).data

    def borrow_region(self, whole: np.ndarray, begin, end) -> np.ndarray:
        """:meth:`borrow` for the one input ``whole[begin:end]`` (a box of a C-contiguous
        array), which the plugin reads in place through a region-of-interest tensor: no copy of
        the box is made (an exact tile's crop of a whole-image map)."""
        from openvino import Tensor

        if not whole.flags.c_contiguous:
            return self.borrow(np.ascontiguousarray(
                whole[tuple(slice(b, e) for b, e in zip(begin, end))]))
        req = self.request((tuple(e - b for b, e in zip(begin, end)),))
        req.set_input_tensor(Tensor(Tensor(whole, shared_memory=True), list(begin), list(end)))
        req.infer()
        return req.get_output_tensor(0).data

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        return self.borrow(*xs).copy()


def ov_channels_last(model):
    """``model`` (an OpenVINO model with NCHW 4-D inputs and outputs) taking and returning
    NHWC tensors: the plugin folds the layout change into its first and last layers, so a
    channels_last PyTorch tensor goes in and comes out without a transpose pass."""
    from openvino import Layout
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    for i, port in enumerate(model.inputs):
        if port.get_partial_shape().rank.get_length() == 4:
            ppp.input(i).tensor().set_layout(Layout("NHWC"))
            ppp.input(i).model().set_layout(Layout("NCHW"))
    for i, port in enumerate(model.outputs):
        if port.get_partial_shape().rank.get_length() == 4:
            ppp.output(i).tensor().set_layout(Layout("NHWC"))
            ppp.output(i).model().set_layout(Layout("NCHW"))
    return ppp.build()


class OpenVINOModel(GraphModel):
    """An OpenVINO IR (``.xml`` + ``.bin``) on the CPU plugin, compiled for each input shape
    (:class:`OvRequests`, static shapes only); float parts in the precision its rt_info names
    (``bsrn quantize`` writes bf16 for INT8 graphs), else fp32."""

    def __init__(self, path, threads: int | None = None):
        try:
            import openvino as ov  # noqa: F401
        except ImportError:
            raise CheckpointError(f"{path}: running OpenVINO IR needs openvino "
                                  "(pip install 'bsrn[openvino]')") from None
        try:
            graph = ov_core().read_model(str(path))
            meta = {}
            for key in ("scale", "min_size", "float_precision"):
                if graph.has_rt_info(["bsrn", key]):
                    meta[f"bsrn.{key}"] = graph.get_rt_info(["bsrn", key]).astype(str)
        except Exception as e:  # noqa: BLE001
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"{path}: not a readable OpenVINO IR ({first})") from None
        super().__init__(path, "openvino", *_scale_min_size(path, meta), threads)
        self.float_precision = meta.get("bsrn.float_precision", "fp32")
        if self.float_precision not in OV_FLOAT_PRECISIONS:
            raise CheckpointError(f"{path}: unknown bsrn.float_precision "
                                  f"{self.float_precision!r}")
        self.requests = OvRequests(graph, threads, str(path), dynamic=False,
                                   float_precision=self.float_precision)

    def run(self, x):
        return self.requests(x)


class NcnnModel(GraphModel):
    """An ncnn model (``.param`` + ``.bin`` written by pnnx), fp32 on the CPU, batch 1 per
    call (ncnn runs one image at a time)."""

    def __init__(self, param, scale: int, min_size: int, threads: int | None = None):
        try:
            import ncnn
        except ImportError:
            raise CheckpointError(f"{param}: running ncnn models needs ncnn "
                                  "(pip install 'bsrn[ncnn]')") from None
        param = Path(param)
        self.net = ncnn.Net()
        # exact fp32: no fp16/bf16 storage or arithmetic, no Winograd/SGEMM approximations
        for opt in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic",
                    "use_bf16_packed", "use_bf16_storage", "use_vulkan_compute"):
            setattr(self.net.opt, opt, False)
        self.net.opt.num_threads = threads or max(1, torch.get_num_threads())
        if self.net.load_param(str(param)) != 0 or \
                self.net.load_model(str(ncnn_bin_path(param))) != 0:
            raise CheckpointError(f"{param}: ncnn cannot load it (or its .bin)")
        super().__init__(param, "ncnn", scale, min_size, threads)
        self.ncnn = ncnn

    def run(self, x):
        outs = []
        for img in x:
            # ncnn layers expect aligned channel steps, which Mat(ndarray) does not give:
            # allocate the Mat, then fill it channel by channel
            mat = self.ncnn.Mat(img.shape[2], img.shape[1], img.shape[0])
            for c in range(img.shape[0]):
                np.array(mat.channel(c), copy=False)[:] = img[c]
            with self.net.create_extractor() as ex:
                ex.input("in0", mat)
                _, out = ex.extract("out0")
                outs.append(np.array(out))
        return np.stack(outs)


class TfliteModel(GraphModel):
    """A LiteRT (TFLite) flatbuffer in the LiteRT interpreter on the CPU (fp32). The file has
    one static input shape (1, 3, H, W): other sizes are refused; a batch runs image by image."""

    def __init__(self, path, threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            from .extras import missing_message

            raise CheckpointError(missing_message("ai_edge_litert",
                                                  f"{path}: running LiteRT files")) from None
        try:
            self.interpreter = Interpreter(model_path=str(path),
                                           num_threads=threads or max(1, torch.get_num_threads()))
            self.interpreter.allocate_tensors()
            (inp,), (out,) = self.interpreter.get_input_details(), \
                self.interpreter.get_output_details()
        except Exception as e:  # noqa: BLE001 - the interpreter raises many types for bad files
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"{path}: not a runnable LiteRT model ({first})") from None
        shape, out_shape = tuple(int(v) for v in inp["shape"]), tuple(int(v) for v in out["shape"])
        if len(shape) != 4 or shape[:2] != (1, 3) or len(out_shape) != 4 or \
                out_shape[2] % shape[2] or out_shape[2] * shape[3] != out_shape[3] * shape[2]:
            raise CheckpointError(f"{path}: not a bsrn LiteRT export (input {list(shape)}, "
                                  f"output {list(out_shape)}; expected NCHW 1x3xHxW -> "
                                  "1x3x(sH)x(sW))")
        super().__init__(path, "litert", out_shape[2] // shape[2], 1, threads)
        self.input_shape = shape
        self.in_index, self.out_index = inp["index"], out["index"]

    def run(self, x):
        if tuple(x.shape[1:]) != self.input_shape[1:]:
            h, w = self.input_shape[2:]
            raise CheckpointError(f"{self.source}: this LiteRT file takes {h}x{w} inputs only "
                                  f"(got {x.shape[2]}x{x.shape[3]}); export one for that size "
                                  "with bsrn export --input-size")
        outs = []
        for img in x:
            self.interpreter.set_tensor(self.in_index, np.ascontiguousarray(img[None]))
            self.interpreter.invoke()
            outs.append(self.interpreter.get_tensor(self.out_index)[0].copy())
        return np.stack(outs)


def ncnn_bin_path(param) -> Path:
    """The weights file beside an ncnn ``X.param``: ``X.bin``."""
    return Path(param).with_suffix(".bin")


def _scale_min_size(path, meta: dict) -> tuple[int, int]:
    try:
        return int(meta["bsrn.scale"]), int(meta.get("bsrn.min_size") or 1)
    except (KeyError, ValueError):
        raise CheckpointError(f"{path}: no bsrn.scale metadata (export it with bsrn export or "
                              "bsrn quantize)") from None


def save_openvino_ir(model, out, scale: int, min_size: int,
                     float_precision: str = "fp32") -> None:
    """Write an ``ov.Model`` as IR ``out`` (.xml + .bin, both atomically, .bin first) with the
    bsrn scale, min_size and float precision (:func:`ov_config`) in its rt_info."""
    import openvino as ov

    out = Path(out)
    model.set_rt_info(str(scale), ["bsrn", "scale"])
    model.set_rt_info(str(min_size), ["bsrn", "min_size"])
    model.set_rt_info(float_precision, ["bsrn", "float_precision"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent))
    try:
        ov.save_model(model, str(tmpdir / out.name), compress_to_fp16=False)
        os.replace(tmpdir / out.with_suffix(".bin").name, out.with_suffix(".bin"))
        os.replace(tmpdir / out.name, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def load_graph(path, threads: int | None = None) -> GraphModel:
    """Open an exported ``.onnx`` (ONNX Runtime), OpenVINO ``.xml`` or LiteRT ``.tflite`` as a
    torch-like model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    runtime = GRAPH_SUFFIXES.get(path.suffix.lower())
    if runtime == "onnxruntime":
        return OnnxRuntimeModel(path, threads)
    if runtime == "openvino":
        return OpenVINOModel(path, threads)
    if runtime == "litert":
        return TfliteModel(path, threads)
    raise CheckpointError(f"{path}: not a graph file ({', '.join(GRAPH_SUFFIXES)})")
