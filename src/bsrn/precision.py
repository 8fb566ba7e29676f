"""Device and precision selection, and a guarded half-precision forward.

Precisions: ``fp32`` (reference), ``fp16`` (CUDA autocast), ``bf16`` (CUDA autocast where the GPU
supports it; CPU autocast). ``auto`` picks fp16 on CUDA and fp32 on CPU. fp16 on CPU is an error:
CPU fp16 convolutions are slow reference kernels, so ask for bf16 there.

The statistic that overflows in fp16 is CCA's spatial sum (|mean| * H * W > 65504 at 256^2 as soon
as |mean| > 1); ``bsrn.models.attention.channel_stats`` computes it in fp32 and the tiled path in
fp64. ESA has no spatial reduction (a max-pool and bilinear interpolation only), so it cannot
overflow that way. As a last guard, :func:`run` repeats the forward in fp32 whenever the
half-precision output has a NaN or an infinity, so half precision never yields a black or NaN
image.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable

import torch
from torch import nn

from .errors import ConfigError

PRECISIONS = ("fp32", "fp16", "bf16")
_ALIASES = {"fp32": "fp32", "float32": "fp32", "float": "fp32", "32": "fp32",
            "fp16": "fp16", "float16": "fp16", "half": "fp16", "16": "fp16",
            "bf16": "bf16", "bfloat16": "bf16", "auto": "auto"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None -> cuda when available, else cpu. Asking for cuda without a GPU (or an
    unknown device string) raises ConfigError."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from e
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and
                                  torch.backends.mps.is_available()):
        raise ConfigError(f"device {str(device)!r} requested but MPS is not available "
                          "(use cpu or auto)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r} requested but no CUDA GPU is available "
                              "(use cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r}: only {torch.cuda.device_count()} "
                              "CUDA device(s) present")
    return dev


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is available on ``device`` (CPU: always, though fast only with
    AVX512-BF16/AMX; CUDA: compute capability >= 8.0)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def resolve_precision(precision: str | None, device: str | torch.device) -> str:
    """Normalise a precision name for ``device``: ``auto`` -> fp16 on CUDA, fp32 elsewhere.

    fp16 on CPU raises ConfigError (use bf16); bf16 on a GPU without bf16 raises ConfigError.
    """
    device = torch.device(device) if not isinstance(device, torch.device) else device
    key = str(precision or "auto").lower()
    if key not in _ALIASES:
        raise ConfigError(f"unknown precision {precision!r}; choose one of auto, "
                          f"{', '.join(PRECISIONS)}")
    p = _ALIASES[key]
    if p == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if p == "fp16" and device.type != "cuda":
        raise ConfigError(f"fp16 needs a CUDA device (device is {device.type}); use bf16 or fp32")
    if p == "bf16" and not bf16_supported(device):
        raise ConfigError(f"bf16 is not supported on {device}; use fp16 or fp32")
    return p


def autocast(precision: str, device: torch.device, cache_enabled: bool = True):
    """The autocast context for ``precision`` on ``device`` (a no-op for fp32).
    ``cache_enabled=False`` is required while capturing CUDA graphs."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision],
                          cache_enabled=cache_enabled)


def exact_fp32(device: torch.device):
    """Full-fp32 CUDA matmuls/convs (no TF32) so fp32 means fp32; a no-op on CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return _no_tf32()


@contextlib.contextmanager
def _no_tf32():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def run(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
        precision: str = "fp32", device: str | torch.device | None = None) -> torch.Tensor:
    """``model(x)`` in inference mode under ``precision`` autocast; returns float32.

    ``model`` may be any callable on a (N, C, H, W) tensor (e.g. a tiled forward). ``x`` is moved
    to ``device`` (default: x's device). If a half-precision output is not finite, the forward
    is repeated in fp32 with a warning (guard against fp16 overflow: never a NaN/black image).
    """
    device = resolve_device(device) if device is not None else x.device
    precision = resolve_precision(precision, device)
    x = x.to(device)
    with torch.inference_mode():
        if precision != "fp32":
            with autocast(precision, device):
                out = model(x)
            out = out.float()
            if torch.isfinite(out).all():
                return out
            warnings.warn(f"{precision} forward produced non-finite values; repeating in fp32",
                          RuntimeWarning, stacklevel=2)
            del out
        with exact_fp32(device):
            return model(x).float()
