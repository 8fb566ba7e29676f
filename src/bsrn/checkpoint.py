"""Checkpoint I/O: official .pth files (BasicSR containers, bare state dicts, NTIRE BSRN-S with
nn.Linear 1x1s, RFDN with 0-255 I/O, IMDN) and our own safetensors with the config in metadata.

Pickles are only ever read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .detect import detect
from .errors import CheckpointError
from .models.registry import arch_of, build_model

FORMAT = "bsrn/1"
WEIGHTS_DIR = Path(__file__).parent / "weights"
_CONTAINER_KEYS = ("model_state_dict", "state_dict", "params_ema", "params-ema", "params",
                   "model", "net", "netG", "generator")
_STRIP_PREFIXES = ("module.", "netG.", "_orig_mod.")


def bundled_weights() -> dict[str, Path]:
    """Bundled weight names (e.g. ``bsrn-x4``) -> files shipped inside the package."""
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.safetensors"))}


def resolve_weights(name_or_path: str | os.PathLike) -> Path:
    """A bundled weight name or a path -> an existing file path."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    bundled = bundled_weights()
    if str(name_or_path) in bundled:
        return bundled[str(name_or_path)]
    if p.exists():
        raise CheckpointError(f"{p}: not a file")
    known = ", ".join(bundled) or "none bundled in this install"
    raise CheckpointError(f"{name_or_path}: no such file or bundled weights (bundled: {known})")


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


def _probe_img_range(model: nn.Module) -> float:
    """RFDN weights come in 0-255 (official) or [0, 1] variants that the tensors alone cannot
    name; pick the range under which a smooth grey image comes back closest to itself."""
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.1 * torch.nn.functional.interpolate(torch.rand(1, model.cfg.num_in_ch, 6, 6,
                                                               generator=g), size=(24, 24),
                                                    mode="bilinear", align_corners=False)
    best, err_best = 1.0, float("inf")
    for rng in (1.0, 255.0):
        model.cfg.img_range = rng
        with torch.no_grad():
            y = model(x)
        ref = torch.nn.functional.interpolate(x, scale_factor=model.scale, mode="bilinear",
                                              align_corners=False)
        err = (y - ref).abs().mean().item()
        if err < err_best:
            best, err_best = rng, err
    model.cfg.img_range = best
    return best


def load_model(path: str | os.PathLike, scale: int | None = None, device="cpu") -> nn.Module:
    """Load any supported weights file (or bundled name, e.g. ``"bsrn-x4"``) into its network.

    The architecture and hyperparameters come from our metadata when present, otherwise from
    the tensors alone. The model is returned in eval mode; it takes and returns RGB in [0, 1].
    """
    from .runtimes import is_graph_file, load_graph

    if is_graph_file(path):  # an exported .onnx / OpenVINO .xml: run by its graph runtime
        model = load_graph(path)
        if scale is not None and scale != model.scale:
            raise CheckpointError(f"{path}: model is x{model.scale}, but x{scale} was requested")
        return model
    path = resolve_weights(path)
    sd, meta = read_checkpoint(path)
    if meta.get("format") == FORMAT:
        arch = meta["arch"]
        cfg = json.loads(meta["config"])
    else:
        try:
            arch, cfg = detect(sd)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
        cfg = cfg.to_dict()
        if scale is not None and cfg.get("upsampler") in ("nearestconv", "pa") and scale == 3:
            cfg["scale"] = 3
    try:
        model = build_model(arch, cfg)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: bad config for {arch} ({e})") from None
    sd = _fit_shapes(model, sd)
    problems = _describe_mismatch(model, sd)
    if problems:
        raise CheckpointError(f"{path}: does not fit {arch} {cfg}: {problems}")
    model.load_state_dict(sd, strict=True)
    if arch == "rfdn" and meta.get("format") != FORMAT:
        _probe_img_range(model)
    if scale is not None and scale != model.scale:
        raise CheckpointError(f"{path}: weights are x{model.scale}, but x{scale} was requested")
    model.source = str(path)
    return model.eval().to(device)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
