"""Export to ONNX and TorchScript (and OpenVINO IR, ncnn, LiteRT), verified against PyTorch
after writing.

ONNX conventions (those of the SR ecosystem): input ``input`` and output ``output``, NCHW float32
RGB in [0, 1], dynamic batch, height and width; opset 17 by default through the legacy
TorchScript-based exporter (``dynamo=False``; exact GELU becomes an Erf subgraph that ONNX Runtime
re-fuses, PixelShuffle becomes DepthToSpace, ESA's bilinear resize takes its size from Shape).
``dynamo=True`` uses the torch.export-based exporter (opset >= 18). After writing, the file is run
in ONNX Runtime (CPU) at several sizes, odd ones and batch 2 included, and compared with the
PyTorch model. Like the network itself, exported graphs need inputs of at least ``min_size``
(15 px for BSRN): the small-input padding of the PyTorch module is a Python branch that tracing
freezes.

``optimize=True`` exports the exact rewrite of :mod:`bsrn.rewrite` that suits a graph runtime
(the replication folded into fea_conv), not the CPU-eager matmul layout.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import atomic_write
from .errors import BsrnError, ConfigError, MissingDependencyError
from .extras import missing_message, require

#: Sizes (N, H, W) checked after export: minimum, odd, batch 2 non-square.
VERIFY_SIZES = ((1, 15, 15), (1, 37, 53), (2, 24, 31))
#: Tolerance of the post-export check (max |diff| in [0, 1] units).
VERIFY_ATOL = 1e-3


def _export_module(model: nn.Module, optimize: bool) -> nn.Module:
    model = model.eval().float().cpu()
    if not optimize:
        return model
    from .models.bsrn import BSRN
    from .rewrite import optimize as _optimize

    if not isinstance(model, BSRN):
        return model
    return _optimize(model, "cpu", rewrites=("fold",))


def _dummy(model: nn.Module, n: int = 1, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = getattr(getattr(model, "cfg", None), "num_in_ch", 3)
    return torch.rand(n, c, h, w, generator=g)


def _check(name: str, got: np.ndarray, ref: torch.Tensor, path) -> float:
    diff = float(np.abs(got - ref.numpy()).max())
    if not np.isfinite(diff) or diff > VERIFY_ATOL:
        raise BsrnError(f"{path}: exported {name} model differs from PyTorch by {diff:.2e} "
                        f"(> {VERIFY_ATOL})")
    return diff


def verify_onnx(path: str | os.PathLike, model: nn.Module,
                sizes=VERIFY_SIZES) -> dict[str, float]:
    """Run ``path`` in ONNX Runtime (CPU) at ``sizes`` and compare with ``model``; returns
    {"NxHxW": max |diff|}; raises BsrnError above :data:`VERIFY_ATOL`."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, torch.get_num_threads())
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    out = {}
    for i, (n, h, w) in enumerate(sizes):
        x = _dummy(model, n, h, w, seed=i)
        with torch.no_grad():
            ref = model(x).float()
        got = sess.run(["output"], {"input": x.numpy()})[0]
        if got.shape != tuple(ref.shape):
            raise BsrnError(f"{path}: ONNX output shape {got.shape} for input {tuple(x.shape)}, "
                            f"expected {tuple(ref.shape)}")
        out[f"{n}x{h}x{w}"] = _check("ONNX", got, ref, path)
    return out


def export_onnx(model: nn.Module, path: str | os.PathLike, opset: int = 17,
                optimize: bool = True, dynamo: bool = False, verify: bool = True,
                sizes=VERIFY_SIZES) -> dict:
    """Write ``model`` as ONNX to ``path`` (atomically) and verify it in ONNX Runtime.

    Returns {"path", "opset", "optimized", "max_abs_diff": {size: diff}}.
    """
    path = Path(path)
    require("onnx", "ONNX export")
    if verify:
        require("onnxruntime", "checking the exported ONNX file (--no-verify skips it)")
    if dynamo and opset < 18:
        raise ConfigError(f"the dynamo exporter needs opset >= 18 (got {opset})")
    if not dynamo and not 11 <= opset <= 20:
        raise ConfigError(f"opset must be 11..20 for the legacy exporter (got {opset}); "
                          "PixelShuffle needs >= 11")
    src = model.eval().float().cpu()
    net = _export_module(src, optimize)
    dummy = _dummy(net, 1, 32, 32)

    def write(tmp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dynamo:
                dim = torch.export.Dim
                shapes = {"x": {0: dim("batch", min=1, max=64), 2: dim("height", min=15),
                                3: dim("width", min=15)}}
                prog = torch.onnx.export(net, (dummy,), None, dynamo=True, opset_version=opset,
                                         input_names=["input"], output_names=["output"],
                                         dynamic_shapes=shapes)
                prog.save(tmp)
            else:
                torch.onnx.export(
                    net, (dummy,), tmp, opset_version=opset, dynamo=False,
                    input_names=["input"], output_names=["output"],
                    dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"},
                                  "output": {0: "batch", 2: "height_out", 3: "width_out"}})
        _add_metadata(tmp, src)

    with torch.no_grad():
        try:
            atomic_write(path, write)
        except (RuntimeError, ValueError, TypeError, ImportError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BsrnError(f"{path}: ONNX export (opset {opset}) failed: {first}") from e
    result = {"path": str(path), "opset": opset, "optimized": net is not src}
    if verify:
        result["max_abs_diff"] = verify_onnx(path, src, sizes)
    return result


def _add_metadata(tmp, model: nn.Module) -> None:
    import onnx

    m = onnx.load(tmp)
    meta = {"bsrn.scale": str(getattr(model, "scale", "")),
            "bsrn.min_size": str(getattr(model, "min_size", "")),
            "bsrn.io": "NCHW float32 RGB in [0, 1]"}
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        import json

        meta["bsrn.config"] = json.dumps(cfg.to_dict())
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, tmp)


def export_torchscript(model: nn.Module, path: str | os.PathLike, optimize: bool = False,
                       verify: bool = True, sizes=VERIFY_SIZES) -> dict:
    """Trace ``model`` to TorchScript at ``path`` (atomically) and verify the reloaded module.

    TorchScript is deprecated upstream in favour of torch.export; it remains the format some
    C++/mobile deployments load. ``optimize=True`` traces the fast path for this CPU.
    """
    path = Path(path)
    src = model.eval().float().cpu()
    if optimize:
        from .rewrite import optimize as _optimize

        net = _optimize(src, "cpu", rewrites=("fold", "matmul"), fuse="none")
    else:
        net = src
    dummy = _dummy(net, 1, 32, 32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, dummy, check_trace=False)
    with warnings.catch_warnings():  # torch.jit.save is deprecated upstream (see docstring)
        warnings.simplefilter("ignore", DeprecationWarning)
        atomic_write(path, lambda tmp: torch.jit.save(traced, tmp))
    result = {"path": str(path), "optimized": optimize}
    if verify:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded = torch.jit.load(str(path))
        diffs = {}
        for i, (n, h, w) in enumerate(sizes):
            x = _dummy(src, n, h, w, seed=i)
            # the profiling executor would re-optimise for every new shape: check the graph as is
            with torch.no_grad(), torch.jit.optimized_execution(False):
                ref = src(x).float()
                got = loaded(x)
            if tuple(got.shape) != tuple(ref.shape):
                raise BsrnError(f"{path}: TorchScript output shape {tuple(got.shape)}, expected "
                                f"{tuple(ref.shape)}")
            diffs[f"{n}x{h}x{w}"] = _check("TorchScript", got.numpy(), ref, path)
        result["max_abs_diff"] = diffs
    return result


# ----------------------------------------------------------------------------- stage graphs
class _Stage(nn.Module):
    """One stage of a staged network as a module, for export."""

    def __init__(self, fn, owner: nn.Module):
        super().__init__()
        self.owner, self.fn = owner, fn

    def forward(self, *xs):
        return self.fn(*xs)


def stage_modules(model: nn.Module) -> dict[str, tuple[nn.Module, tuple[str, ...]]]:
    """The heavy stages of a staged network (BSRN, RFDN) as exportable modules:
    {"head": ..., "body1".."bodyN": ..., "tail": ...} -> (module, input names). The exact
    tiler runs these per tile; the light whole-image passes between them stay in PyTorch."""
    out = {"head": (_Stage(model.head, model), ("input",))}
    for k, blk in enumerate(model.blocks()):
        out[f"body{k + 1}"] = (_Stage(blk.body, blk), ("input",))
    out["tail"] = (_Stage(model.tail, model), ("acc", "fea"))
    return out


def export_graph(module: nn.Module, inputs: tuple[torch.Tensor, ...], path, input_names,
                 opset: int = 17) -> Path:
    """Write one graph with dynamic batch/height/width on every input (atomically)."""
    path = Path(path)
    axes = {n: {0: "batch", 2: "height", 3: "width"} for n in input_names}
    axes["output"] = {0: "batch", 2: "height_out", 3: "width_out"}

    def write(tmp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, inputs, tmp, opset_version=opset, dynamo=False,
                              input_names=list(input_names), output_names=["output"],
                              dynamic_axes=axes)

    with torch.no_grad():
        atomic_write(path, write)
    return path


def export_stages(model: nn.Module, folder, opset: int = 17) -> dict[str, Path]:
    """Export the whole network (``whole.onnx``) and its heavy stages (``head``, ``body{k}``,
    ``tail``) into ``folder``, with the replication folded; returns {name: path}."""
    folder = Path(folder)
    net = _export_module(model.eval().float().cpu(), True)
    x = _dummy(net, 1, 32, 32)
    paths = {"whole": export_graph(net, (x,), folder / "whole.onnx", ("input",), opset)}
    with torch.no_grad():
        fea = net.head(x)
        c = fea.shape[1]
    for name, (mod, names) in stage_modules(net).items():
        feat = torch.rand(1, c, 32, 32)
        args = (x,) if name == "head" else (feat, fea) if name == "tail" else (feat,)
        paths[name] = export_graph(mod, args, folder / f"{name}.onnx", names, opset)
    return paths


# ----------------------------------------------------------------------------- edge runtimes
#: The real picture every edge export is also checked on (a crop of the bundled sample photo).
SAMPLE_PHOTO = Path(__file__).parent / "samples" / "sample.png"


def _photo_crop(h: int = 48, w: int = 64) -> torch.Tensor:
    """(1, 3, h, w) float32 crop of the bundled sample photo, in [0, 1] (mirrored beyond its
    edges when larger than the photo)."""
    from .image_io import read_rgb_uint8
    from .metrics import uint8_to_tensor

    img = read_rgb_uint8(SAMPLE_PHOTO)
    img = np.pad(img, ((0, max(0, h - img.shape[0])), (0, max(0, w - img.shape[1])), (0, 0)),
                 mode="symmetric")
    return uint8_to_tensor(img[:h, :w].copy())


def _smooth_dummy(model: nn.Module, n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Random input with a photo's smoothness: uniform noise at 1/8 resolution, bilinear up.
    (On white noise at large sizes the official weights amplify the rounding differences
    between runtimes to 1e-4..1e-3, ONNX Runtime's included: that measures the network, not
    the file.)"""
    low = _dummy(model, n, max(1, h // 8), max(1, w // 8), seed)
    return torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear",
                                           align_corners=False)


def verify_runtime(runner: nn.Module, model: nn.Module, name: str, path,
                   sizes=VERIFY_SIZES, photo: tuple[int, int] = (48, 64),
                   smooth: bool = False) -> dict[str, float]:
    """Run ``runner`` (a :mod:`bsrn.runtimes` model) on a ``photo`` (H, W) crop of the sample
    photo and on random inputs at ``sizes`` (``smooth``: :func:`_smooth_dummy`) and compare with
    ``model``; returns {"photo HxW" | "NxHxW" | "NxHxW smooth": max |diff|}."""
    inputs = {f"photo {photo[0]}x{photo[1]}": _photo_crop(*photo)}
    for i, (n, h, w) in enumerate(sizes):
        if smooth:
            inputs[f"{n}x{h}x{w} smooth"] = _smooth_dummy(model, n, h, w, seed=i)
        else:
            inputs[f"{n}x{h}x{w}"] = _dummy(model, n, h, w, seed=i)
    out = {}
    for key, x in inputs.items():
        with torch.no_grad():
            ref = model(x).float()
            got = runner(x)
        if tuple(got.shape) != tuple(ref.shape):
            raise BsrnError(f"{path}: {name} output shape {tuple(got.shape)} for input "
                            f"{tuple(x.shape)}, expected {tuple(ref.shape)}")
        out[key] = _check(name, got.numpy(), ref, path)
    return out


def export_openvino(model: nn.Module, path: str | os.PathLike, verify: bool = True,
                    sizes=VERIFY_SIZES) -> dict:
    """Write ``model`` as OpenVINO IR (``path`` .xml + .bin) by ``openvino.convert_model`` of
    our ONNX export, and verify it in the OpenVINO CPU runtime (fp32) against PyTorch."""
    import tempfile

    try:
        import openvino as ov
    except ImportError:
        raise BsrnError("OpenVINO export needs openvino (pip install 'bsrn[openvino]')") from None
    from .runtimes import load_graph, save_openvino_ir

    path = Path(path)
    if path.suffix.lower() != ".xml":
        raise ConfigError(f"{path}: an OpenVINO IR is written as .xml (+ .bin)")
    src = model.eval().float().cpu()
    with tempfile.TemporaryDirectory(prefix="bsrn-ov-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(src, onnx_path, optimize=True, verify=False)
        try:
            ir = ov.convert_model(str(onnx_path))
        except Exception as e:  # noqa: BLE001 - the converter raises its own types
            raise BsrnError(f"{path}: OpenVINO conversion failed: {str(e).splitlines()[0]}") \
                from None
        save_openvino_ir(ir, path, int(src.scale), int(getattr(src, "min_size", 1)))
    result = {"path": str(path), "optimized": True, "files": [str(path),
                                                               str(path.with_suffix(".bin"))]}
    if verify:
        result["max_abs_diff"] = verify_runtime(load_graph(path), src, "OpenVINO", path, sizes)
    return result


@contextlib.contextmanager
def _quiet_fds():
    """Silence stdout/stderr at the file-descriptor level (pnnx's converter logs every pass)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def export_ncnn(model: nn.Module, path: str | os.PathLike, verify: bool = True) -> dict:
    """Write ``model`` as an ncnn model (``path`` .param + .bin) through pnnx (traced at two
    sizes, so height and width stay dynamic), and verify it in ncnn (fp32) against PyTorch.

    pnnx and ncnn are native code that can crash the process that loads them, so the conversion
    and the check run in a child process; a crash there is a one-line BsrnError here. ncnn runs
    one image at a time: the check uses batch 1.
    """
    path = Path(path)
    if path.suffix.lower() != ".param":
        raise ConfigError(f"{path}: an ncnn model is written as .param (+ .bin)")
    return _export_in_child("_export_ncnn_here", model, path, verify, "pnnx/ncnn")


def _export_in_child(func: str, model: nn.Module, path: Path, verify: bool, what: str,
                     **kwargs) -> dict:
    """Run the exporter ``bsrn.export.<func>(model, path, verify, **kwargs)`` in a child
    process (for converters and runtimes in native code that can crash the process); returns
    its result; a failure or crash there is one BsrnError line here."""
    import json
    import subprocess
    import tempfile

    from .checkpoint import save_model

    code = ("import json, sys\n"
            "from bsrn import export\n"
            "from bsrn.checkpoint import load_model\n"
            f"r = export.{func}(load_model(sys.argv[1]), sys.argv[2], sys.argv[3] == '1', "
            "**json.loads(sys.argv[4]))\n"
            "print(json.dumps(r))")
    with tempfile.TemporaryDirectory(prefix="bsrn-export-") as tmp:
        weights = save_model(model.float().cpu(), Path(tmp) / "model.safetensors")
        proc = subprocess.run([sys.executable, "-c", code, str(weights), str(path),
                               "1" if verify else "0", json.dumps(kwargs)],
                              capture_output=True, text=True)
    if proc.returncode == 0:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    if proc.returncode < 0:
        raise BsrnError(f"{path}: export crashed in {what} (signal {-proc.returncode})")
    last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    raise BsrnError(last.split("Error: ", 1)[-1] if "Error: " in last else last)


def _export_ncnn_here(model: nn.Module, path: str | os.PathLike, verify: bool = True,
                      sizes=((1, 15, 15), (1, 37, 53))) -> dict:
    """:func:`export_ncnn` in this process."""
    import shutil
    import tempfile

    try:
        import pnnx
    except ImportError:
        raise BsrnError("ncnn export needs pnnx and ncnn (pip install 'bsrn[ncnn]')") from None
    from .runtimes import NcnnModel, ncnn_bin_path

    path = Path(path)
    if path.suffix.lower() != ".param":
        raise ConfigError(f"{path}: an ncnn model is written as .param (+ .bin)")
    src = model.eval().float().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.stem}.", dir=path.parent) as tmp:
        traced = Path(tmp) / "model.pt"
        try:
            with torch.no_grad(), warnings.catch_warnings(), _quiet_fds():
                warnings.simplefilter("ignore")
                pnnx.export(src, str(traced), (_dummy(src, 1, 32, 32),),
                            (_dummy(src, 1, 40, 48, seed=1),), fp16=False)
        except Exception as e:  # noqa: BLE001 - pnnx reports failures in many ways
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BsrnError(f"{path}: pnnx conversion failed: {first}") from None
        param, weights = Path(tmp) / "model.ncnn.param", Path(tmp) / "model.ncnn.bin"
        if not (param.is_file() and weights.is_file()):
            raise BsrnError(f"{path}: pnnx wrote no ncnn model")
        os.replace(weights, ncnn_bin_path(path))  # weights first: a .param never lacks its .bin
        os.replace(param, path)
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"path": str(path), "optimized": False,
              "files": [str(path), str(ncnn_bin_path(path))]}
    if verify:
        runner = NcnnModel(path, int(src.scale), int(getattr(src, "min_size", 1)))
        result["max_abs_diff"] = verify_runtime(runner, src, "ncnn", path, sizes)
    return result


#: LR input size (H, W) of a LiteRT export when none is given: a .tflite file has one static shape.
TFLITE_SIZE = (128, 128)


def _check_tflite_args(model: nn.Module, path: Path, size) -> tuple[int, int]:
    if path.suffix.lower() != ".tflite":
        raise ConfigError(f"{path}: a LiteRT model is written as .tflite")
    h, w = (int(v) for v in size)
    low = int(getattr(model, "min_size", 1))
    if min(h, w) < low:
        raise ConfigError(f"{path}: the LiteRT input size {h}x{w} is below the network's "
                          f"minimum of {low} px")
    return h, w


def export_tflite(model: nn.Module, path: str | os.PathLike, size=TFLITE_SIZE,
                  verify: bool = True) -> dict:
    """Write ``model`` as a LiteRT (TFLite) flatbuffer through litert-torch, for inputs of the
    one static shape (1, 3, H, W) given by ``size``, NCHW float32 RGB in [0, 1], and verify it
    in the LiteRT interpreter (CPU, fp32) against PyTorch.

    The converter (jax, the LiteRT converter) and the runtime are native code: both run in a
    child process, like pnnx; a failure there is a one-line BsrnError here. Height and width
    are static because the converter bakes ESA's resize size into the graph. The check runs a
    crop of the sample photo and smooth random input (:func:`_smooth_dummy`) of that size.
    """
    import importlib.util

    path = Path(path)
    h, w = _check_tflite_args(model, path, size)
    if importlib.util.find_spec("litert_torch") is None:
        raise MissingDependencyError(missing_message("litert_torch", "LiteRT export"))
    return _export_in_child("_export_tflite_here", model, path, verify, "litert-torch/LiteRT",
                            size=[h, w])


def _export_tflite_here(model: nn.Module, path: str | os.PathLike, verify: bool = True,
                        size=TFLITE_SIZE) -> dict:
    """:func:`export_tflite` in this process."""
    litert_torch = require("litert_torch", "LiteRT export")
    from .runtimes import TfliteModel

    path = Path(path)
    src = model.eval().float().cpu()
    h, w = _check_tflite_args(src, path, size)
    net = _export_module(src, True)
    x = _dummy(net, 1, h, w)
    try:
        with torch.no_grad(), warnings.catch_warnings(), _quiet_fds():
            warnings.simplefilter("ignore")
            content = litert_torch.convert(net, (x,)).model_content()
    except Exception as e:  # noqa: BLE001 - torch.export, jax and the converter raise many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BsrnError(f"{path}: LiteRT conversion failed: {first}") from None

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(content)

    atomic_write(path, write)
    result = {"path": str(path), "optimized": net is not src, "files": [str(path)],
              "input_shape": list(x.shape)}
    if verify:
        runner = TfliteModel(path)
        result["max_abs_diff"] = verify_runtime(runner, src, "LiteRT", path, ((1, h, w),),
                                                photo=(h, w), smooth=True)
    return result
