"""Checkpoint I/O: official .pth files (BasicSR containers, bare state dicts, NTIRE BSRN-S with
nn.Linear 1x1s, RFDN with 0-255 I/O, IMDN) and our own safetensors with the config in metadata.

Pickles are only ever read with ``torch.load(weights_only=True)``. Weights are validated before
the network is allocated: the metadata is parsed and bounded by the tensors in the file, the
network is first laid out on the ``meta`` device (no memory) and matched shape by shape, and
only floating, finite tensors are accepted.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_write
from .detect import detect
from .errors import CheckpointError
from .models.registry import ARCHITECTURES, arch_of, build_model
from .models.rfdn import probe_img_range

FORMAT = "bsrn/1"
WEIGHTS_DIR = Path(__file__).parent / "weights"
_CONTAINER_KEYS = ("model_state_dict", "state_dict", "params_ema", "params-ema", "params",
                   "model", "net", "netG", "generator")
_STRIP_PREFIXES = ("module.", "netG.", "_orig_mod.")


def bundled_weights() -> dict[str, Path]:
    """Bundled weight names (e.g. ``bsrn-x4``) -> files shipped inside the package."""
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.safetensors"))}


def resolve_weights(name_or_path: str | os.PathLike) -> Path:
    """A weights name (bundled, or added with ``bsrn weights add``) or a path -> a file path."""
    from .weights_folder import find_weights, known_weights

    p = Path(name_or_path)
    if p.is_file():
        return p
    named = find_weights(str(name_or_path))
    if named is not None:
        return named
    if p.exists():
        raise CheckpointError(f"{p}: not a file")
    known = ", ".join(known_weights()) or "none in this install"
    raise CheckpointError(f"{name_or_path}: no such file or bundled weights, nor a name added with "
                          f"`bsrn weights add FILE` (known: {known})")


def unwrap_state_dict(obj, path: str = "") -> dict[str, torch.Tensor]:
    """Take the tensors out of a training container and strip wrapper prefixes."""
    while isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        for key in _CONTAINER_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        else:
            if len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
                obj = next(iter(obj.values()))
                continue
            raise CheckpointError(f"{path}: no state dict found (top-level keys: "
                                  f"{', '.join(map(str, list(obj)[:8]))})")
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: contains {type(obj).__name__}, not a state dict")
    out = {}
    for k, v in obj.items():
        for prefix in _STRIP_PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a weights file -> (state dict, metadata). Never unpickles arbitrary objects."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                sd = {k: f.get_tensor(k) for k in f.keys()}
            return sd, meta
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure becomes one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot read weights ({msg[:200]})") from None
    return unwrap_state_dict(obj, str(path)), {}


def _fit_shapes(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reshape nn.Linear (out, in) weights and (1, C) channel weights to our conv layouts."""
    own = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape and own[k].numel() == v.numel():
            v = v.reshape(own[k].shape)
        out[k] = v
    return out


def _describe_mismatch(model: nn.Module, sd: dict[str, torch.Tensor]) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in sd and sd[k].shape != own[k].shape]

    def head(items):
        return ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {head(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {head(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch: {head(shapes)}")
    return "; ".join(parts)


def check_tensors(sd: dict[str, torch.Tensor], path) -> None:
    """Refuse non-tensor entries, non-floating dtypes and NaN/infinite values, naming the
    first offending tensor."""
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        if not v.is_floating_point():
            raise CheckpointError(f"{path}: tensor {k} has dtype {str(v.dtype).replace('torch.', '')}"
                                  "; weights must be floating point (float32, float16 or "
                                  "bfloat16)")
    for k, v in sd.items():
        if v.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            v = v.float()  # e.g. float8: isfinite is not implemented for every dtype
        if not bool(torch.isfinite(v).all()):
            what = "NaN" if bool(torch.isnan(v).any()) else "infinite"
            raise CheckpointError(f"{path}: tensor {k} has {what} values; the weights are "
                                  "broken (diverged training or a damaged file)")


def config_from_metadata(meta: dict[str, str], path) -> tuple[str, dict] | None:
    """(arch, config dict) from our safetensors metadata, None when the file has none.

    Malformed metadata (invalid JSON, a missing or unknown ``arch``, a config that is not a
    JSON object) is a ``CheckpointError``."""
    fmt = meta.get("format")
    if fmt != FORMAT:
        if isinstance(fmt, str) and fmt.startswith("bsrn/"):
            raise CheckpointError(f"{path}: metadata format {fmt!r} is not supported by this "
                                  f"version (reads {FORMAT})")
        return None
    arch = meta.get("arch")
    if not arch:
        raise CheckpointError(f"{path}: metadata has no 'arch' (the architecture name)")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: unknown architecture {arch[:60]!r} in metadata (known: "
                              f"{', '.join(ARCHITECTURES)})")
    raw = meta.get("config")
    if raw is None:
        raise CheckpointError(f"{path}: metadata has no 'config'")
    try:
        cfg = json.loads(raw)
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        why = getattr(e, "msg", type(e).__name__)
        raise CheckpointError(f"{path}: metadata 'config' is not valid JSON ({why})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: metadata 'config' must be a JSON object, not "
                              f"{type(cfg).__name__}")
    return arch, cfg


def _check_bounds(cfg: dict, sd: dict[str, torch.Tensor], path) -> None:
    """Every number in the config must be finite, and every integer no larger than what the
    tensors in the file can describe (their largest dimension or their count), so that a
    small file cannot ask for a huge network."""
    dims = [d for v in sd.values() for d in v.shape]
    limit = max(max(dims, default=0), len(sd))

    def check(k, v):
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return
        if isinstance(v, (list, tuple)):
            for item in v:
                check(k, item)
            return
        if isinstance(v, float) and not math.isfinite(v):
            raise CheckpointError(f"{path}: metadata config {k}={v} is not a finite number")
        if isinstance(v, int) and not 0 <= v <= limit:
            raise CheckpointError(f"{path}: metadata config {k}={v} is out of range for the "
                                  f"{len(sd)} tensors in this file (largest dimension "
                                  f"{max(dims, default=0)})")
        if not isinstance(v, (int, float)):
            raise CheckpointError(f"{path}: metadata config {k} is a {type(v).__name__}, "
                                  "expected a number, string, boolean or list")

    for k, v in cfg.items():
        check(k, v)


def _build(arch: str, cfg: dict, path, device=None) -> nn.Module:
    try:
        if device is None:
            return build_model(arch, cfg)
        with torch.device(device):
            return build_model(arch, cfg)
    except Exception as e:  # noqa: BLE001 - any config the network rejects becomes one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: bad config for {arch} ({msg[:200]})") from None


def load_model(path: str | os.PathLike, scale: int | None = None, device="cpu") -> nn.Module:
    """Load any supported weights file (or bundled name, e.g. ``"bsrn-x4"``) into its network.

    The architecture and hyperparameters come from our metadata when present, otherwise from
    the tensors alone. The model is returned in eval mode; it takes and returns RGB in [0, 1].
    Malformed metadata, a config the tensors do not fit, non-floating or non-finite tensors are
    refused (``CheckpointError``) before the network is allocated.
    """
    from .runtimes import is_graph_file, load_graph

    if is_graph_file(path):  # an exported .onnx / OpenVINO .xml: run by its graph runtime
        model = load_graph(path)
        if scale is not None and scale != model.scale:
            raise CheckpointError(f"{path}: model is x{model.scale}, but x{scale} was requested")
        return model
    path = resolve_weights(path)
    sd, meta = read_checkpoint(path)
    check_tensors(sd, path)
    ours = config_from_metadata(meta, path)
    if ours is not None:
        arch, cfg = ours
        _check_bounds(cfg, sd, path)
    else:
        try:
            arch, cfg = detect(sd, scale)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise CheckpointError(f"{path}: {str(e).strip(chr(39))}") from None
        cfg = cfg.to_dict()
    skeleton = _build(arch, cfg, path, device="meta")  # shapes only: nothing is allocated
    problems = _describe_mismatch(skeleton, _fit_shapes(skeleton, sd))
    if problems:
        raise CheckpointError(f"{path}: does not fit {arch} {cfg}: {problems}")
    del skeleton
    model = _build(arch, cfg, path)
    model.load_state_dict(_fit_shapes(model, sd), strict=True)
    if arch == "rfdn" and ours is None:
        probe_img_range(model)
    if scale is not None and scale != model.scale:
        raise CheckpointError(f"{path}: weights are x{model.scale}, but x{scale} was requested")
    model.source = str(path)
    return model.eval().to(device)


def save_model(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Save weights. ``.safetensors`` (recommended) stores the architecture and config in its
    metadata, so ``load_model`` rebuilds the exact network; ``.pth`` writes a tensor-only
    ``{'params': state_dict}`` for tools such as chaiNNer."""
    path = Path(path)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        meta = {"format": FORMAT, "arch": arch_of(model),
                "config": json.dumps(model.cfg.to_dict()), "scale": str(model.scale)}
        meta.update({k: str(v) for k, v in (metadata or {}).items()})
        atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))
    else:
        atomic_write(path, lambda tmp: torch.save({"params": sd}, tmp))
    return path
