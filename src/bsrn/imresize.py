"""MATLAB-compatible bicubic ``imresize`` (Keys cubic, a = -0.5), vectorised with numpy.

Two rounding variants reproduce the two LR conventions of the SR literature:

* ``"double"``: the image is converted to double, resized with no intermediate rounding and
  rounded once to uint8 (MATLAB ``im2uint8(imresize(im2double(x)))``; the BasicSR/BSRN test sets).
* ``"uint8"``: MATLAB ``imresize`` on a uint8 image, which rounds each 1-D pass to uint8
  (the EDSR benchmark pack, DIV2K's official LR).

Downscaling antialiases (kernel stretched by 1/scale); borders are symmetric; the height is
resized first, then the width.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VARIANTS = ("double", "uint8")


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def contributions(in_len: int, out_len: int, scale: float, antialias: bool = True):
    """Per output pixel: (weights (out, P), 0-based source indices (out, P)), as MATLAB's
    ``contributions``: normalised weights, all-zero taps trimmed, symmetric borders."""
    width = 4.0
    if scale < 1 and antialias:
        def kernel(x):
            return scale * cubic(scale * x)
        width = width / scale
    else:
        kernel = cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    w = kernel(u[:, None] - idx)
    w = w / w.sum(axis=1, keepdims=True)
    keep = np.any(w != 0, axis=0)
    w, idx = w[:, keep], idx[:, keep].astype(np.int64) - 1
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    return w, mirror[np.mod(idx, 2 * in_len)]


def _round_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB's double -> uint8: round half away from zero, saturate."""
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def _resize_axis(img: np.ndarray, axis: int, out_len: int, scale: float,
                 antialias: bool) -> np.ndarray:
    w, idx = contributions(img.shape[axis], out_len, scale, antialias)
    src = np.moveaxis(img, axis, 0).astype(np.float64, copy=False)
    out = np.zeros((out_len,) + src.shape[1:], dtype=np.float64)
    shape = (out_len,) + (1,) * (src.ndim - 1)
    for t in range(w.shape[1]):  # loop over the few taps only; every pixel at once
        out += w[:, t].reshape(shape) * src[idx[:, t]]
    return np.moveaxis(out, 0, axis)


def output_size(in_hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """MATLAB's output size: ceil(in * scale) per side."""
    return tuple(int(math.ceil(n * scale - 1e-9)) for n in in_hw)


def imresize(img: np.ndarray, scale: float | None = None,
             output_shape: tuple[int, int] | None = None, variant: str = "double",
             antialias: bool = True) -> np.ndarray:
    """Resize an HxW or HxWxC image like MATLAB ``imresize(img, scale, 'bicubic')``.

    uint8 input returns uint8 (rounded per ``variant``). Float input is treated as double
    data and returned unrounded and unclipped (the BasicSR convention).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if img.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC image, got shape {img.shape}")
    h, w = img.shape[:2]
    if output_shape is None:
        if scale is None:
            raise ValueError("give scale or output_shape")
        output_shape = output_size((h, w), scale)
        sh = sw = float(scale)
    else:
        sh, sw = output_shape[0] / h, output_shape[1] / w
        if scale is not None:
            sh = sw = float(scale)
    is_uint8 = img.dtype == np.uint8
    if not is_uint8 and img.dtype.kind != "f":
        raise ValueError(f"expected uint8 or float input, got {img.dtype}")
    x = img.astype(np.float64)
    if is_uint8 and variant == "double":
        x = x / 255.0
    # MATLAB resizes the dimension with the smaller scale first; equal scales: height first.
    order = (0, 1) if sh <= sw else (1, 0)
    for axis in order:
        x = _resize_axis(x, axis, output_shape[axis], sh if axis == 0 else sw, antialias)
        if is_uint8 and variant == "uint8":
            x = _round_uint8(x).astype(np.float64)
    if not is_uint8:
        return x
    if variant == "uint8":
        return x.astype(np.uint8)
    return _round_uint8(x * 255.0)


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Keep the top-left floor(h/s)*s x floor(w/s)*s pixels."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def bicubic_downscale(hr: np.ndarray, scale: int, variant: str = "double") -> np.ndarray:
    """The benchmark LR: MATLAB bicubic of modcrop(HR, s) by 1/s, as uint8."""
    return imresize(modcrop(hr, scale), 1.0 / scale, variant=variant)


# ----------------------------------------------------------------------------- LR folders
@dataclass
class MakeLRSummary:
    """What ``make_lr_folder`` did: files written (new or changed) and left as they were."""

    images: int
    scales: tuple[int, ...]
    variant: str
    out_dir: str
    written: int = 0
    unchanged: int = 0

    def __str__(self) -> str:
        return (f"{self.images} HR images x{'/x'.join(map(str, self.scales))} ({self.variant}) -> "
                f"{self.out_dir}/LR_bicubic: {self.written} written, "
                f"{self.unchanged} already up to date")


def _same_png(path: Path, arr: np.ndarray) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            old = np.asarray(im)
    except Exception:  # unreadable or partial: regenerate it
        return False
    return old.dtype == arr.dtype and old.shape == arr.shape and np.array_equal(old, arr)


def make_lr_folder(hr_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   scales=(2, 3, 4), variant: str = "uint8", progress: bool = True,
                   limit: int | None = None) -> MakeLRSummary:
    """Write the benchmark LR set ``out_dir/LR_bicubic/X{s}/<name>x{s}.png``: MATLAB bicubic of
    modcrop(HR, s) by 1/s (the EDSR pack protocol with ``variant="uint8"``).

    ``hr_dir`` is a folder of images, or a benchmark folder holding ``HR/``. Outputs that
    already exist with identical pixels are left alone, so an interrupted run resumes; writes
    are atomic. Greyscale stays greyscale.
    """
    from .image_io import read_uint8

    from PIL import Image
    from tqdm.auto import tqdm

    from .atomic import atomic_write
    from .errors import BsrnError
    from .image_io import IMAGE_EXTS

    if variant not in VARIANTS:
        raise BsrnError(f"variant must be one of {VARIANTS}, got {variant!r}")
    scales = tuple(int(s) for s in scales)
    if not scales or any(s < 2 for s in scales):
        raise BsrnError(f"scales must be integers >= 2, got {scales}")
    src = Path(hr_dir)
    if not src.is_dir():
        raise BsrnError(f"{src}: no such folder")
    if (src / "HR").is_dir():
        src = src / "HR"
    paths = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    paths = paths[:limit]
    if not paths:
        raise BsrnError(f"{src}: no images found ({', '.join(IMAGE_EXTS)})")
    out = Path(out_dir)
    summary = MakeLRSummary(len(paths), scales, variant, str(out))
    for p in tqdm(paths, desc=f"make-lr x{'/x'.join(map(str, scales))}", unit="img",
                  disable=not progress):
        hr = read_uint8(p, keep_grey=True)
        for s in scales:
            if hr.shape[0] < s or hr.shape[1] < s:
                raise BsrnError(f"{p}: {hr.shape[1]}x{hr.shape[0]} is smaller than the scale {s}")
            lr = bicubic_downscale(hr, s, variant)
            dst = out / "LR_bicubic" / f"X{s}" / f"{p.stem}x{s}.png"
            if dst.exists() and _same_png(dst, lr):
                summary.unchanged += 1
                continue
            img = Image.fromarray(lr)
            atomic_write(dst, lambda tmp, img=img: img.save(tmp, format="PNG"))
            summary.written += 1
    return summary
