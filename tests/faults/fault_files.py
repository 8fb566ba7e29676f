"""Files the fault tests make: images of every kind, and one-line error checks."""
from __future__ import annotations

import struct

import numpy as np
from PIL import Image

from image_files import save_image

RNG = np.random.default_rng(11)


def run_upscale(capsys, weights, *args):
    """``bsrn upscale`` in-process on the CPU, quiet: (exit code, stdout, stderr)."""
    from bsrn.cli import main

    rc = main(["upscale", "--weights", weights, "--device", "cpu", "-q", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def pixels(h=10, w=12, c=3):
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def save(path, a=None, **kw):
    return save_image(path, pixels() if a is None else a, **kw)


def rgba_bmp(path, a):
    """A 32-bit BMP with an alpha channel (BITMAPV4HEADER, BI_BITFIELDS), which Pillow reads as
    RGBA (Pillow itself writes 32-bit BMP without the alpha mask)."""
    h, w, _ = a.shape
    rows = a[::-1, :, [2, 1, 0, 3]].tobytes()  # bottom-up BGRA
    header = struct.pack("<IiiHHIIiiII", 108, w, h, 1, 32, 3, len(rows), 2835, 2835, 0, 0)
    header += struct.pack("<IIII", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000)
    header += b"BGRs" + bytes(36) + bytes(12)
    off = 14 + len(header)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"BM" + struct.pack("<IHHI", off + len(rows), 0, 0, off) + header + rows)
    with Image.open(path) as im:
        assert im.mode == "RGBA", im.mode
    return path


def error_lines(err: str, command: str = "upscale") -> list[str]:
    assert "Traceback" not in err, err
    return [ln for ln in err.splitlines() if ln.startswith(f"bsrn {command}: error: ")]
