"""Image reading and writing. Errors are one line naming the file."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .checkpoint import atomic_write
from .errors import ImageError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_rgb_uint8(path: str | os.PathLike) -> np.ndarray:
    """Read an 8-bit image as HxWx3 uint8 RGB; greyscale is replicated to 3 channels (as the
    benchmark protocol does for Set14's ``bridge``)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{path}: cannot decode image ({e})") from None


def write_png(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write an HxW or HxWxC uint8 array as PNG, atomically."""
    img = Image.fromarray(arr)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
