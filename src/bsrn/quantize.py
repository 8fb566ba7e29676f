"""INT8 post-training quantisation (static, per-channel weights) for ONNX Runtime and OpenVINO.

The network is exported to ONNX (input replication folded; node names keep the module paths),
calibrated on LR patches made from a folder of HR images with MATLAB bicubic
(:func:`bsrn.imresize.bicubic_downscale`), and quantised by the runtime's own tool: ONNX
Runtime's QDQ ``quantize_static`` or OpenVINO NNCF's ``nncf.quantize``. Convolutions are the
quantised ops (activations uint8 per tensor, weights int8 per output channel); GELU, the sigmoid
gates, CCA's statistics and ESA's pooled context stay in float between them.

Mixed precision works by layer group (:func:`layer_group`: ``fea_conv``, each block's
distillation convs ``B<i>.distill``, ``B<i>.esa``, ``B<i>.cca``, ``c1c2``, ``upsampler``).
:func:`sensitivity_sweep` measures the Y-PSNR cost of each group alone in INT8; the groups named
in ``keep`` stay fp32 (``nodes_to_exclude`` / NNCF ``IgnoredScope``).
"""
from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import BsrnError, ConfigError
from .runtimes import save_openvino_ir

RUNTIMES = ("onnxruntime", "openvino")
#: Groups kept in fp32 when neither ``keep`` nor a sweep chooses: the measured most sensitive
#: groups of BSRN x4 (docs/deployment.md).
DEFAULT_KEEP = ("fea_conv", "B1.distill", "c1c2", "upsampler")
#: Precision of the float parts (kept groups, element-wise ops) per runtime: OpenVINO runs them
#: in bf16 where the CPU has bf16 units (measured: BSRN x4 INT8 1.94x fp32 instead of 1.34x,
#: for 0.01 dB; docs/deployment.md), ONNX Runtime in fp32.
DEFAULT_FLOAT_PRECISION = {"onnxruntime": "fp32", "openvino": "bf16"}
#: In ``auto`` selection, groups whose INT8 cost alone exceeds this (dB) stay fp32.
DEFAULT_MAX_GROUP_COST = 0.01
CALIB_PATCH = 64
#: OpenVINO op types that NNCF must leave in float (only convolutions are quantised).
_OV_FLOAT_OPS = ("Add", "Subtract", "Multiply", "Divide", "Concat", "MaxPool", "Interpolate",
                 "ReduceMean", "Power", "Sqrt", "Sigmoid", "Gelu", "DepthToSpace", "MatMul",
                 "AvgPool", "Relu")


# ----------------------------------------------------------------------------- layer groups
def layer_group(node_name: str) -> str | None:
    """The layer group of an exported ONNX node name (``/B3/esa/conv1/Conv`` -> ``B3.esa``)."""
    parts = [p for p in node_name.strip("/").split("/") if p]
    if len(parts) < 2:
        return None
    head = parts[0]
    if head == "fea_conv":
        return "fea_conv"
    if head in ("c1", "c2"):
        return "c1c2"
    if head == "upsampler":
        return "upsampler"
    if re.fullmatch(r"B\d+", head):
        sub = parts[1]
        if sub in ("esa", "cca"):
            return f"{head}.{sub}"
        if sub == "conv_du":  # CCA's gate, reached through CCA.gate rather than CCA.forward
            return f"{head}.cca"
        return f"{head}.distill"
    return None


def layer_groups(onnx_path) -> dict[str, list[str]]:
    """{group: [Conv node names]} of an exported graph, in graph order."""
    import onnx

    groups: dict[str, list[str]] = {}
    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        if node.op_type == "Conv":
            g = layer_group(node.name)
            if g is None and re.fullmatch(r"/Conv(_\d+)?", node.name):
                # top-level functional convs: the multi-level fusion c1, accumulated block by
                # block over slices of its weight (DistillationNet.fuse)
                g = "c1c2"
            if g is not None:
                groups.setdefault(g, []).append(node.name)
    return groups


def _check_groups(keep, groups: dict) -> tuple[str, ...]:
    keep = tuple(keep or ())
    unknown = [g for g in keep if g not in groups]
    if unknown:
        raise ConfigError(f"unknown layer groups {unknown}; this model has {', '.join(groups)}")
    return keep


# ----------------------------------------------------------------------------- data
def _hr_images(folder) -> list[Path]:
    from .evaluate import hr_dir, list_images

    paths = list_images(hr_dir(folder))
    if not paths:
        raise BsrnError(f"{folder}: no images found")
    return paths


def calibration_patches(folder, scale: int, images: int = 32, patch: int = CALIB_PATCH,
                        per_image: int = 2, seed: int = 0, progress: bool = True
                        ) -> list[np.ndarray]:
    """LR patches (1, 3, patch, patch) float32 in [0, 1] from the first ``images`` HR images
    of ``folder`` (sorted), each made LR by MATLAB bicubic; patch corners are seeded."""
    from tqdm.auto import tqdm

    from .image_io import read_rgb_uint8
    from .imresize import bicubic_downscale

    paths = _hr_images(folder)[:images]
    rng = np.random.default_rng(seed)
    out = []
    for p in tqdm(paths, desc="calibration patches", unit="img", disable=not progress,
                  leave=False):
        lr = bicubic_downscale(read_rgb_uint8(p), scale)
        h, w = lr.shape[:2]
        if min(h, w) < patch:
            raise BsrnError(f"{p}: too small for {patch} px LR calibration patches at x{scale}")
        for _ in range(per_image):
            y, x = int(rng.integers(0, h - patch + 1)), int(rng.integers(0, w - patch + 1))
            crop = lr[y:y + patch, x:x + patch].astype(np.float32) / 255.0
            out.append(np.ascontiguousarray(crop.transpose(2, 0, 1)[None]))
    return out


def benchmark_pairs(folder, scale: int, limit: int | None = None, skip: int = 0,
                    crop: int | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(name, HR, LR)] by the evaluation protocol (modcrop, MATLAB bicubic LR); ``crop`` takes
    the central crop x crop HR pixels first (a quick sweep)."""
    from .evaluate import load_pair
    from .imresize import modcrop

    out = []
    for p in _hr_images(folder)[skip:][:limit]:
        hr, lr = load_pair(folder, p, scale, "matlab")
        if crop:
            from .image_io import read_rgb_uint8
            from .imresize import bicubic_downscale

            full = modcrop(read_rgb_uint8(p), scale)
            h, w = full.shape[:2]
            c = min(crop, h, w) // scale * scale
            y, x = (h - c) // 2 // scale * scale, (w - c) // 2 // scale * scale
            hr = full[y:y + c, x:x + c]
            lr = bicubic_downscale(hr, scale)
        out.append((p.stem, hr, lr))
    return out


@torch.no_grad()
def score(model: nn.Module, pairs, scale: int, ssim: bool = True) -> dict:
    """Mean Y-PSNR/SSIM (crop border = scale) of ``model`` on ``pairs``."""
    from .evaluate import super_resolve
    from .metrics import psnr as _psnr
    from .metrics import ssim as _ssim

    ps, ss = [], []
    for _, hr, lr in pairs:
        sr = super_resolve(model, lr)
        ps.append(_psnr(sr, hr, scale, True))
        if ssim:
            ss.append(_ssim(sr, hr, scale, True))
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)) if ss else None,
            "images": len(pairs)}


# ----------------------------------------------------------------------------- quantisers
class _Reader:
    """ONNX Runtime calibration reader over a list of patches."""

    def __init__(self, patches, name="input"):
        self.patches, self.name, self.i = patches, name, 0

    def get_next(self):
        if self.i >= len(self.patches):
            return None
        self.i += 1
        return {self.name: self.patches[self.i - 1]}

    def rewind(self):
        self.i = 0

    def __len__(self):
        return len(self.patches)


def quantize_onnxruntime(fp32_onnx, out, patches=None, keep=(), only=None,
                         calibration_cache=None) -> dict:
    """QDQ INT8 of ``fp32_onnx`` at ``out`` by ONNX Runtime's ``quantize_static``.

    Conv nodes are quantised (uint8 activations, per-channel int8 weights, MinMax ranges from
    ``patches``), except those of the groups in ``keep``; ``only`` restricts quantisation to
    these groups (the sensitivity sweep). ``calibration_cache`` (a path) reuses the ranges.
    """
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    from .checkpoint import atomic_write

    groups = layer_groups(fp32_onnx)
    keep = _check_groups(keep, groups)
    if only is not None:
        nodes = [n for g in _check_groups(only, groups) for n in groups[g]]
        exclude = []
    else:
        nodes = None
        exclude = [n for g in keep for n in groups[g]]
    reader = _Reader(patches) if patches is not None else None

    def write(tmp):
        with _quiet_logging():  # ORT advises "pre-processing" on every call
            _quantize_static(tmp)
        _copy_metadata(fp32_onnx, tmp)

    def _quantize_static(tmp):
        quantize_static(str(fp32_onnx), tmp, reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv"], per_channel=True, reduce_range=False,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_quantize=nodes, nodes_to_exclude=exclude,
                        calibrate_method=CalibrationMethod.MinMax,
                        calibration_cache_path=calibration_cache,
                        extra_options={"ActivationSymmetric": False,
                                       "WeightSymmetric": True})

    atomic_write(out, write)
    return {"path": str(out), "runtime": "onnxruntime", "kept_fp32": list(keep),
            "int8_convs": sum(len(v) for g, v in groups.items() if g not in keep)
            if only is None else len(nodes), "convs": sum(map(len, groups.values()))}


@contextlib.contextmanager
def _quiet_logging():
    """Hide the quantisers' INFO/WARNING log lines (progress is shown by bsrn's own bars)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _copy_metadata(src_onnx, dst_onnx) -> None:
    import onnx

    src = onnx.load(str(src_onnx), load_external_data=False)
    dst = onnx.load(str(dst_onnx))
    have = {p.key for p in dst.metadata_props}
    for p in src.metadata_props:
        if p.key not in have:
            q = dst.metadata_props.add()
            q.key, q.value = p.key, p.value
    q = dst.metadata_props.add()
    q.key, q.value = "bsrn.precision", "int8"
    onnx.save(dst, str(dst_onnx))


def quantize_openvino(fp32_onnx, out, patches, keep=(), float_precision: str = "bf16") -> dict:
    """INT8 OpenVINO IR of ``fp32_onnx`` at ``out`` (.xml) by NNCF ``nncf.quantize``
    (per-channel weights), with the groups in ``keep`` in NNCF's ignored scope. The IR asks for
    ``float_precision`` in its float parts (kept groups and element-wise ops): bf16 runs them
    on the CPU's bf16 units where it has them, and fp32 elsewhere."""
    try:
        import nncf
        import openvino as ov
    except ImportError:
        raise BsrnError("OpenVINO quantisation needs nncf and openvino "
                        "(pip install 'bsrn[quantize]')") from None
    import onnx

    groups = layer_groups(fp32_onnx)
    keep = _check_groups(keep, groups)
    meta = {p.key: p.value for p in onnx.load(str(fp32_onnx), load_external_data=False)
            .metadata_props}
    model = ov.convert_model(str(fp32_onnx))
    # OpenVINO splits a biased Conv into Convolution "<name>/WithoutBiases" + Add "<name>"
    names = [m for g in keep for n in groups[g] for m in (n, f"{n}/WithoutBiases")]
    # convolutions only, as for ONNX Runtime: the gates, statistics and sums stay float
    scope = nncf.IgnoredScope(names=names, types=list(_OV_FLOAT_OPS), validate=False)
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    # global min/max ranges like ONNX Runtime's MinMax (NNCF's default averages per-sample
    # extremes, which clips SR activations), and no bias correction
    advanced = AdvancedQuantizationParameters(
        activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
        disable_bias_correction=True)
    with _quiet_logging():
        q = nncf.quantize(model, nncf.Dataset(patches), subset_size=len(patches),
                          preset=nncf.QuantizationPreset.MIXED, ignored_scope=scope,
                          advanced_parameters=advanced)
    save_openvino_ir(q, out, int(meta.get("bsrn.scale", 0)), int(meta.get("bsrn.min_size", 1)),
                     float_precision)
    return {"path": str(out), "runtime": "openvino", "kept_fp32": list(keep),
            "float_precision": float_precision,
            "int8_convs": sum(len(v) for g, v in groups.items() if g not in keep),
            "convs": sum(map(len, groups.values()))}


# ----------------------------------------------------------------------------- the sweep
def sensitivity_sweep(fp32_onnx, patches, pairs, scale: int, workdir,
                      progress: bool = True) -> list[dict]:
    """Y-PSNR cost of each layer group alone in INT8 (ONNX Runtime QDQ), on ``pairs``.

    Returns [{"group", "convs", "psnr", "cost_db"}] sorted by cost, largest first; ranges are
    calibrated once and reused.
    """
    from tqdm.auto import tqdm

    from .runtimes import load_graph

    workdir = Path(workdir)
    cache = workdir / "calibration.ranges"
    base = score(load_graph(fp32_onnx), pairs, scale, ssim=False)["psnr"]
    groups = layer_groups(fp32_onnx)
    rows = []
    for g in tqdm(list(groups), desc="sensitivity sweep", unit="group", disable=not progress):
        path = workdir / f"only_{g}.onnx"
        quantize_onnxruntime(fp32_onnx, path, patches, only=[g], calibration_cache=cache)
        p = score(load_graph(path), pairs, scale, ssim=False)["psnr"]
        rows.append({"group": g, "convs": len(groups[g]), "psnr": p, "cost_db": base - p})
        path.unlink()
    return sorted(rows, key=lambda r: -r["cost_db"])


def format_sweep(rows) -> str:
    """The sweep as a markdown table."""
    lines = ["| Layer group | Convs | PSNR cost when alone INT8 (dB) |", "|---|---|---|"]
    lines += [f"| {r['group']} | {r['convs']} | {r['cost_db']:.4f} |" for r in rows]
    return "\n".join(lines)


def choose_keep(rows, max_group_cost: float = DEFAULT_MAX_GROUP_COST) -> tuple[str, ...]:
    """Groups whose cost alone exceeds ``max_group_cost`` dB, most sensitive first."""
    return tuple(r["group"] for r in rows if r["cost_db"] > max_group_cost)


# ----------------------------------------------------------------------------- the command
@dataclass
class QuantizeResult:
    """What ``quantize`` wrote and decided."""

    path: str
    runtime: str
    kept_fp32: list
    int8_convs: int
    convs: int
    sweep: list = field(default_factory=list)
    float_precision: str = "fp32"

    def summary(self) -> str:
        kept = ", ".join(self.kept_fp32) or "nothing"
        where = "" if self.float_precision == "fp32" else \
            f"; float parts in {self.float_precision} where the CPU has it"
        return (f"wrote {self.path} ({self.runtime} INT8: {self.int8_convs}/{self.convs} convs "
                f"int8, kept in float: {kept}{where})")


def quantize(weights, calib, out, runtime: str = "onnxruntime", images: int = 32,
             keep=None, sweep: bool = False, sweep_images: int = 4, sweep_crop: int = 192,
             max_group_cost: float = DEFAULT_MAX_GROUP_COST, progress: bool = True,
             float_precision: str | None = None) -> QuantizeResult:
    """Quantise ``weights`` to INT8 for ``runtime`` at ``out`` (.onnx or OpenVINO .xml).

    ``calib``: folder of HR images; its first ``images`` give the calibration patches. ``keep``:
    layer groups to leave fp32 (None: :data:`DEFAULT_KEEP`, or the sweep's choice with
    ``sweep=True``). ``sweep``: run :func:`sensitivity_sweep` on the next ``sweep_images``
    images of ``calib`` (central ``sweep_crop`` px), held out from calibration.
    """
    from .checkpoint import load_model, resolve_weights
    from .export import export_onnx

    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    float_precision = float_precision or DEFAULT_FLOAT_PRECISION[runtime]
    if float_precision not in ("fp32", "bf16") or \
            (runtime == "onnxruntime" and float_precision != "fp32"):
        raise ConfigError(f"float precision {float_precision!r} is not offered for {runtime} "
                          f"(onnxruntime: fp32; openvino: bf16 or fp32)")
    if images < 1:
        raise ConfigError(f"images must be >= 1, got {images}")
    out = Path(out)
    want = ".onnx" if runtime == "onnxruntime" else ".xml"
    if out.suffix.lower() != want:
        raise ConfigError(f"{out}: the {runtime} output must end in {want}")
    model = load_model(resolve_weights(weights))
    scale = int(model.scale)
    patches = calibration_patches(calib, scale, images, progress=progress)
    with tempfile.TemporaryDirectory(prefix="bsrn-quant-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(model, fp32, optimize=True, verify=True)  # (fold: same node names)
        groups = layer_groups(fp32)
        if not groups:
            raise BsrnError(f"{weights}: no BSRN layer groups found in the exported graph")
        rows = []
        if sweep:
            pairs = benchmark_pairs(calib, scale, sweep_images, skip=images, crop=sweep_crop)
            if not pairs:
                raise BsrnError(f"{calib}: no images left after the first {images} for the "
                                "sweep (use fewer --images)")
            rows = sensitivity_sweep(fp32, patches, pairs, scale, tmp, progress)
        if keep is None:
            keep = choose_keep(rows, max_group_cost) if sweep else \
                tuple(g for g in DEFAULT_KEEP if g in groups)
        if runtime == "onnxruntime":
            res = quantize_onnxruntime(fp32, out, patches, keep,
                                       calibration_cache=Path(tmp) / "calibration.ranges")
        else:
            res = quantize_openvino(fp32, out, patches, keep, float_precision)
    return QuantizeResult(res["path"], runtime, res["kept_fp32"], res["int8_convs"],
                          res["convs"], rows, float_precision)


def fp32_and_int8(model: nn.Module, weights, calib, folder, runtime: str = "onnxruntime",
                  images: int = 32):
    """(fp32 graph, INT8 graph, quantize result) of ``runtime`` in ``folder``: the fp32
    reference is our ONNX export (for OpenVINO converted to IR), the INT8 one comes from
    :func:`quantize` with its default mixed precision. Used by the INT8 benchmarks."""
    from .export import export_onnx
    from .runtimes import save_openvino_ir

    folder = Path(folder)
    fp32_onnx = folder / "fp32.onnx"
    if not fp32_onnx.is_file():
        export_onnx(model, fp32_onnx, optimize=True)
    if runtime == "onnxruntime":
        fp32, int8 = fp32_onnx, folder / "int8.onnx"
    else:
        import openvino as ov

        fp32, int8 = folder / "fp32.xml", folder / "int8.xml"
        save_openvino_ir(ov.convert_model(str(fp32_onnx)), fp32, int(model.scale),
                         model.min_size)
    res = quantize(weights, calib, int8, runtime=runtime, images=images, progress=False)
    return fp32, int8, res
