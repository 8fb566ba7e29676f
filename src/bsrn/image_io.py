"""Image reading and writing for real-world pictures. Errors are one line naming the file.

``read_image`` turns any file Pillow can open into a ``Picture``: HxWxC pixels with C = 1 (grey),
2 (grey + alpha), 3 (RGB) or 4 (RGBA), dtype uint8 or uint16, plus the ICC profile and EXIF to
write back. On the way it

- applies the EXIF orientation (the pixels come out the way viewers show them);
- converts palette images to RGB (RGBA when the palette has transparency), 1-bit to grey and
  CMYK to RGB (through the embedded ICC profile when there is one);
- keeps 16 bits where the file has them, decided by the file's sample format, never by the
  pixel values: 16-bit grey PNG/TIFF through Pillow, 16-bit RGB/RGBA PNG/TIFF by decoding the
  high and low bytes separately (Pillow itself keeps only 8 bits of those);
- refuses decompression bombs: images over ``max_pixels`` (default ``DEFAULT_MAX_PIXELS``),
  reported with the limit as given;
- warns in one line when a multi-page file (TIFF) has pages beyond the first.

``probe_image`` reads only the header (format, size, alpha, frames), so output names can be
decided before any pixel is decoded. Animated GIF, PNG (APNG) and WebP are read whole by
``read_animation`` (every frame composited, with its duration and the loop count) and written
back animated by ``write_animation``.

``write_image`` writes a ``Picture``-like array atomically in the format named by the file
extension, with the ICC profile (and EXIF for JPEG/PNG/WebP), JPEG quality 95 without chroma
subsampling, and 16-bit PNG/TIFF (a small built-in encoder covers the 16-bit modes Pillow cannot
hold). JPEG and BMP cannot keep alpha; other formats round 16 bits to 8 (v / 257).
"""
from __future__ import annotations

import functools
import io
import os
from contextlib import contextmanager
import re
import struct
import sys
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .atomic import atomic_write
from .errors import ImageError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""Extensions bsrn writes (``--ext``); ``read_exts()`` lists every extension it reads."""
ANIMATED_EXTS = (".gif", ".png", ".webp")
"""Extensions an animation is written to (GIF, APNG, animated WebP)."""
ANIMATED_FORMATS = ("GIF", "PNG", "WEBP", "FLI", "AVIF")
_SINGLE_IMAGE_FORMATS = ("MPO", "PSD", "ICO", "ICNS", "CUR")  # extra frames: previews, layers
DEFAULT_MAX_PIXELS = 100_000_000
"""Decompression-bomb limit for ``read_image``: 100 megapixels (width x height of the input)."""
JPEG_QUALITY = 95
#: zlib level of written PNGs: 1, as OpenCV (and so most SR tools) writes them. A 33-megapixel SR
#: output (7680x4320 photo) takes 0.52 s on 2 cores with the parallel encoder and 19.6 MB,
#: against 0.82 s and 18.6 MB at level 2, 2.65 s at Pillow's level 3 and about 6.5 s at its
#: default 6.
PNG_COMPRESS_LEVEL = 1
#: PNGs of at least this many samples (8 megapixels RGB) are deflated on all cores.
PNG_PARALLEL_MIN_VALUES = 24_000_000

_FORMAT_OF_EXT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP",
                  ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}
# Pillow formats that cannot be read here: identify-only stubs, float data, Windows-only.
_UNREADABLE_FORMATS = ("BUFR", "GRIB", "HDF5", "MPEG", "WMF", "IPTC", "FITS", "PDF", "PALM")
_UNREADABLE_EXTS = (".pfm",)  # 32-bit float PPM
_EXT_OF_FORMAT = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "BMP": ".bmp", "TIFF": ".tiff",
                  "WEBP": ".webp"}
_NO_ALPHA = ("JPEG", "BMP")  # Pillow reads 32-bit BMP back without its alpha
_EIGHT_BIT_ONLY = ("JPEG", "WEBP", "BMP")
_LIMIT_LOCK = threading.Lock()


# ----------------------------------------------------------------------------- the picture
@dataclass
class Picture:
    """Decoded pixels plus what is needed to write them back faithfully.

    ``pixels`` is HxWxC, C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA), uint8 or uint16.
    """

    pixels: np.ndarray
    icc_profile: bytes | None = None
    exif: bytes | None = None
    format: str | None = None

    @property
    def channels(self) -> int:
        return self.pixels.shape[2]

    @property
    def has_alpha(self) -> bool:
        return self.channels in (2, 4)

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as Pillow reports it."""
        return self.pixels.shape[1], self.pixels.shape[0]

    def default_ext(self) -> str:
        """The extension that keeps the source format, or .png when alpha or 16 bits need it."""
        fmt = self.format or "PNG"
        if fmt in _NO_ALPHA and self.has_alpha or fmt in _EIGHT_BIT_ONLY and self.bit_depth == 16:
            return ".png"
        return _EXT_OF_FORMAT.get(fmt, ".png")


# ----------------------------------------------------------------------------- reading
@functools.lru_cache(maxsize=None)
def read_exts() -> tuple[str, ...]:
    """Every file extension whose images ``read_image`` can decode with this Pillow (folder
    scans take these: a format that works when named also works in a folder)."""
    from PIL import features

    Image.init()
    needs = {"JPEG2000": "jpg_2000", "WEBP": "webp", "AVIF": "avif"}
    out = set(IMAGE_EXTS) | {".mpo"}
    for ext, fmt in Image.registered_extensions().items():
        if fmt not in Image.OPEN or fmt in _UNREADABLE_FORMATS or ext in _UNREADABLE_EXTS:
            continue
        if fmt in needs and not features.check(needs[fmt]):
            continue
        if fmt == "EPS":
            from PIL import EpsImagePlugin

            if not EpsImagePlugin.has_ghostscript():
                continue
        out.add(ext.lower())
    return tuple(sorted(out))


class _PixelLimit:
    """Let Pillow open images of any size: ``read_image`` checks the user's limit itself, from
    the header, so the message states the limit as given (Pillow's own check doubles it)."""

    def __init__(self, limit: int | None):
        self.limit = limit

    def __enter__(self):
        _LIMIT_LOCK.acquire()
        self.saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None

    def __exit__(self, *exc):
        Image.MAX_IMAGE_PIXELS = self.saved
        _LIMIT_LOCK.release()


def _bomb_message(where: str, w: int, h: int, limit: int, frames: int = 1) -> str:
    size = f"{w}x{h}" + (f" x {frames} frames" if frames > 1 else "")
    return (f"{where}: {size} = {w * h * frames / 1e6:.1f} MP exceeds the decompression-bomb "
            f"limit of {limit:,} pixels; raise it with --max-pixels (max_pixels=) if you trust "
            "this file")


def _has_alpha(im: Image.Image) -> bool:
    """Whether a (not yet decoded) PIL image carries transparency once normalised."""
    if im.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        return True
    if im.mode == "P":
        return "transparency" in im.info or im.palette is not None and im.palette.mode == "RGBA"
    return False


def _frames(im: Image.Image) -> int:
    try:
        return max(1, int(getattr(im, "n_frames", 1)))
    except Exception:  # noqa: BLE001 - a damaged later frame: the first one still counts
        return 1


def _is_animation(im: Image.Image, frames: int) -> bool:
    return frames > 1 and im.format in ANIMATED_FORMATS and bool(getattr(im, "is_animated", True))


@contextmanager
def _open_image(path: Path, max_pixels: int | None):
    """Open ``path`` with Pillow after the file checks; every failure, in here or in the body,
    becomes one ``ImageError`` line naming the file."""
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file")
    try:
        with _PixelLimit(max_pixels), warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if max_pixels and w * h > max_pixels:
                    raise ImageError(_bomb_message(str(path), w, h, max_pixels))
                yield im
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file, or a variant of its format that Pillow "
                         "cannot read") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: decompression bomb refused ({e})") from None
    except MemoryError:
        raise ImageError(f"{path}: not enough memory to decode this image") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error,
            IndexError, KeyError, TypeError, AttributeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImageError(f"{path}: cannot decode image ({msg[:200]})") from None


@dataclass
class ImageInfo:
    """What the header of an image file says: enough to name its output."""

    format: str | None
    size: tuple[int, int]
    has_alpha: bool
    frames: int = 1
    animated: bool = False


def probe_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS
                ) -> ImageInfo:
    """Read the header of ``path`` (no pixels are decoded): format, size, alpha, frames."""
    path = Path(path)
    with _open_image(path, max_pixels) as im:
        frames = _frames(im)
        animated = _is_animation(im, frames)
        if animated and max_pixels and im.size[0] * im.size[1] * frames > max_pixels:
            raise ImageError(_bomb_message(str(path), *im.size, max_pixels, frames))
        return ImageInfo(im.format, im.size, _has_alpha(im), frames, animated)


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Picture:
    """Read any image file as a ``Picture`` (see the module docstring for what is normalised).

    ``max_pixels`` (width x height) guards against decompression bombs; 0 or None disables it.
    """
    path = Path(path)
    with _open_image(path, max_pixels) as im:
        frames = _frames(im)
        if frames > 1 and im.format not in ANIMATED_FORMATS + _SINGLE_IMAGE_FORMATS:
            warnings.warn(f"{path}: has {frames} pages; only the first is read", stacklevel=2)
        return _picture_from_pil(im, path)


@dataclass
class Animation:
    """Every frame of an animated image, composited (HxWx3 RGB or HxWx4 RGBA uint8), with the
    duration of each frame in ms and the loop count (0: for ever; None: the file has none)."""

    frames: list[np.ndarray]
    durations: list[float]
    loop: int | None = None
    format: str | None = None

    @property
    def has_alpha(self) -> bool:
        return self.frames[0].shape[2] == 4


def read_animation(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS
                   ) -> Animation:
    """Read every frame of an animated GIF, PNG (APNG) or WebP as an ``Animation``.

    ``max_pixels`` bounds width x height x frames."""
    from PIL import ImageSequence

    path = Path(path)
    with _open_image(path, max_pixels) as im:
        frames_n = _frames(im)
        if max_pixels and im.size[0] * im.size[1] * frames_n > max_pixels:
            raise ImageError(_bomb_message(str(path), *im.size, max_pixels, frames_n))
        loop = im.info.get("loop")
        frames, durations, alpha = [], [], False
        for frame in ImageSequence.Iterator(im):
            frame.load()
            alpha = alpha or _has_alpha(frame)
            frames.append(frame.convert("RGBA"))
            durations.append(float(frame.info.get("duration", 0) or 0))
        loop = im.info.get("loop", loop)
        fmt = im.format
    arrays = [np.asarray(f if alpha else f.convert("RGB")).copy() for f in frames]
    return Animation(arrays, durations, loop, fmt)


def write_animation(path: str | os.PathLike, anim: Animation) -> None:
    """Write an ``Animation`` atomically as GIF, APNG (.png) or animated WebP, keeping every
    frame's duration and the loop count."""
    ext = Path(path).suffix.lower()
    fmt = {".gif": "GIF", ".png": "PNG", ".webp": "WEBP"}.get(ext)
    if fmt is None:
        raise ImageError(f"{path}: an animation is written as {', '.join(ANIMATED_EXTS)}, "
                         f"not {ext or '(none)'}")
    alpha = anim.has_alpha
    images = [Image.fromarray(np.ascontiguousarray(a), mode="RGBA" if alpha else "RGB")
              for a in anim.frames]
    if fmt == "GIF":
        images = [_gif_frame(im) for im in images]
    kw = {"save_all": True, "append_images": images[1:],
          "duration": [max(0, round(d)) for d in anim.durations]}
    if fmt == "GIF":
        kw["disposal"] = 2 if alpha else 1
        if anim.loop is not None:
            kw["loop"] = anim.loop
    elif fmt == "PNG":
        kw.update(disposal=1, blend=0, loop=1 if anim.loop is None else anim.loop)
    else:
        kw.update(quality=JPEG_QUALITY, loop=1 if anim.loop is None else anim.loop)
    try:
        atomic_write(path, lambda tmp: images[0].save(tmp, format=fmt, **kw))
    except (OSError, ValueError) as e:
        raise ImageError(f"{path}: cannot write animation ({e})") from None


def _gif_frame(im: Image.Image) -> Image.Image:
    """An RGB(A) frame as a 256-colour GIF frame; alpha below 50 % becomes the transparent
    index 255."""
    if im.mode != "RGBA":
        return im.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    q = im.convert("RGB").quantize(255, method=Image.Quantize.MEDIANCUT,
                                   dither=Image.Dither.NONE)
    idx = np.asarray(q).copy()
    idx[np.asarray(im)[:, :, 3] < 128] = 255
    out = Image.fromarray(idx, mode="P")
    pal = q.getpalette() or []
    out.putpalette((pal + [0] * 768)[:768])
    out.info["transparency"] = 255
    return out


def picture_from_pil(im: Image.Image) -> Picture:
    """Normalise an in-memory PIL image the way ``read_image`` normalises files."""
    return _picture_from_pil(im, None)


def _picture_from_pil(im: Image.Image, path: Path | None) -> Picture:
    icc = im.info.get("icc_profile") or None
    fmt = im.format
    arr = _decode_16bit_colour(im, path) if path is not None else None  # before getexif loads
    if arr is None:
        im.load()
        arr, icc = _pixels_of(im, icc, path)
    try:
        exif = im.getexif()
    except Exception:  # noqa: BLE001 - broken EXIF must not stop the pixels
        exif = None
    orientation = exif.get(0x0112, 1) if exif is not None else 1
    if arr.ndim == 2:
        arr = arr[:, :, None]
    arr = np.ascontiguousarray(_orient(arr, orientation))
    exif_bytes = None
    if exif is not None and len(exif) and fmt in ("JPEG", "MPO", "PNG", "WEBP"):
        # TIFF "EXIF" is the file's own IFD (strip offsets, bit depths): never copied.
        for tag in (0x0112, 0x0100, 0x0101):  # orientation (applied), stale width/height
            exif.pop(tag, None)
        sub = exif.get_ifd(0x8769)
        for tag in (0xA002, 0xA003):  # ExifImageWidth/Height: now stale
            sub.pop(tag, None)
        try:
            exif_bytes = exif.tobytes() if len(exif) else None
        except Exception:  # noqa: BLE001 - unwritable EXIF is dropped, the pixels are kept
            exif_bytes = None
    return Picture(arr, icc_profile=icc, exif=exif_bytes, format=fmt)


def _pixels_of(im: Image.Image, icc: bytes | None, path) -> tuple[np.ndarray, bytes | None]:
    """Pixels of a loaded PIL image as HxW[xC] uint8/uint16 in L/LA/RGB/RGBA order."""
    where = str(path) if path is not None else "image"
    mode = im.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(im), icc
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16), icc
    if mode == "I":
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ImageError(f"{where}: 32-bit integer pixels outside 0..65535 are not supported")
        return a.astype(np.uint16), icc
    if mode == "F":
        raise ImageError(f"{where}: 32-bit float images are not supported")
    if mode == "1":
        return np.asarray(im.convert("L")), icc
    if mode == "P":
        return np.asarray(im.convert("RGBA" if _has_alpha(im) else "RGB")), icc
    if mode in ("PA", "RGBa", "RGBX"):
        return np.asarray(im.convert("RGBA" if mode != "RGBX" else "RGB")), icc
    if mode == "La":
        return np.asarray(im.convert("LA")), icc
    if mode == "CMYK":
        if icc:
            try:
                from PIL import ImageCms

                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                rgb = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"),
                                                outputMode="RGB")
                return np.asarray(rgb), None
            except Exception:  # noqa: BLE001 - fall back to Pillow's naive conversion
                pass
        return np.asarray(im.convert("RGB")), None  # a CMYK profile does not describe RGB
    try:
        return np.asarray(im.convert("RGB")), None
    except ValueError:
        raise ImageError(f"{where}: unsupported image mode {mode}") from None


_RAW16 = re.compile(r"(RGB|RGBA|RGBX);16([BLN])")


def _rawmode(tile) -> str | None:
    args = tile.args
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _with_rawmode(tile, rawmode: str):
    args = tile.args
    args = rawmode if isinstance(args, str) else (rawmode,) + tuple(args[1:])
    return tile._replace(args=args)


def _decode_16bit_colour(im: Image.Image, path: Path) -> np.ndarray | None:
    """16-bit RGB/RGBA PNG or TIFF at full depth, or None for anything else.

    Pillow stores these as 8-bit RGB(A), keeping the high byte of each sample. Decoding the file
    a second time with the opposite byte order yields the low bytes; together they are exact.
    """
    if im.mode not in ("RGB", "RGBA") or not im.tile:
        return None
    rawmodes = {_rawmode(t) for t in im.tile}
    if len(rawmodes) != 1:
        return None
    rawmode = rawmodes.pop() or ""
    if rawmode == "LA;16B" and im.mode == "RGBA":  # 16-bit grey + alpha PNG
        # Read each 32-bit pixel as four bytes: L high, L low, A high, A low.
        im.tile = [_with_rawmode(t, "RGBA") for t in im.tile]
        im.load()
        b = np.asarray(im).astype(np.uint16)
        return np.stack([(b[..., 0] << 8) | b[..., 1], (b[..., 2] << 8) | b[..., 3]], axis=-1)
    m = _RAW16.fullmatch(rawmode)
    if m is None:
        return None
    order = m.group(2)
    if order == "N":
        order = "L" if sys.byteorder == "little" else "B"
    swapped = f"{m.group(1)};16{'L' if order == 'B' else 'B'}"
    tiles = [_with_rawmode(t, swapped) for t in im.tile]
    im.load()
    hi = np.asarray(im).astype(np.uint16)
    try:
        with Image.open(path) as im2:
            im2.tile = tiles
            im2.load()
            lo = np.asarray(im2).astype(np.uint16)
    except Exception as e:  # noqa: BLE001 - a layout the trick does not cover: keep 8 bits
        warnings.warn(f"{path}: read as 8 bits per channel; the low bytes of this 16-bit file "
                      f"could not be decoded ({e})", stacklevel=3)
        return hi * 257
    return (hi << 8) | lo


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to HxWxC pixels, as Pillow's ``exif_transpose`` does."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(a, -1)
    if orientation == 7:
        return a[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(a, 1)
    return a


def read_uint8(path: str | os.PathLike, keep_grey: bool = False) -> np.ndarray:
    """Read an 8-bit image as HxWx3 uint8 RGB, or HxW when ``keep_grey`` and the file is
    greyscale. Other 8-bit modes are converted to RGB; 16-bit and float images are refused."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise ImageError(f"{path}: {im.mode} images are not supported here (need 8-bit)")
            target = "L" if keep_grey and im.mode in ("L", "LA", "La") else "RGB"
            if im.mode != target:
                im = im.convert(target)
            return np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{path}: cannot decode image ({e})") from None


def read_rgb_uint8(path: str | os.PathLike) -> np.ndarray:
    """Read an 8-bit image as HxWx3 uint8 RGB; greyscale is replicated to 3 channels (as the
    benchmark protocol does for Set14's ``bridge``)."""
    return read_uint8(path)


# ----------------------------------------------------------------------------- writing
def format_of(path: str | os.PathLike) -> str:
    """Pillow format name for a file extension (``.jpg`` -> ``JPEG``)."""
    ext = Path(path).suffix.lower()
    if ext not in _FORMAT_OF_EXT:
        raise ImageError(f"{path}: unsupported output extension {ext or '(none)'} "
                         f"(use one of {', '.join(IMAGE_EXTS)})")
    return _FORMAT_OF_EXT[ext]


def ext_of_format(fmt: str | None) -> str | None:
    """The extension bsrn writes a Pillow format under (``JPEG`` -> ``.jpg``), or None."""
    return _EXT_OF_FORMAT.get(fmt or "")


def stores_alpha(path: str | os.PathLike) -> bool:
    """Whether the format of ``path``'s extension keeps transparency (not JPEG or BMP)."""
    return format_of(path) not in _NO_ALPHA


def to_8bit(a: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 by rounding v / 257 (exact inverse of the 8 -> 16 bit v * 257)."""
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)


def write_image(path: str | os.PathLike, pixels: np.ndarray, icc_profile: bytes | None = None,
                exif: bytes | None = None, quality: int = JPEG_QUALITY) -> None:
    """Write HxW or HxWxC (C = 1..4) uint8/uint16 pixels atomically, in the format of the
    extension. 16 bits are kept by PNG and TIFF and rounded to 8 bits elsewhere; JPEG cannot
    store alpha (an ``ImageError``: choose .png)."""
    fmt = format_of(path)
    a = pixels if pixels.ndim == 3 else pixels[:, :, None]
    if a.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path}: cannot write {a.dtype} pixels (uint8 or uint16 expected)")
    c = a.shape[2]
    if c not in (1, 2, 3, 4):
        raise ImageError(f"{path}: cannot write {c}-channel pixels")
    if fmt in _NO_ALPHA and c in (2, 4):
        raise ImageError(f"{path}: {fmt} cannot store transparency; write .png instead")
    if a.dtype == np.uint16 and fmt in _EIGHT_BIT_ONLY:
        a = to_8bit(a)
    if a.dtype == np.uint16 and c == 2 and fmt == "TIFF":
        a = a[:, :, [0, 0, 0, 1]]  # 16-bit grey+alpha TIFF is rarely readable; write RGBA
    if a.dtype == np.uint16 and c > 1 or fmt == "PNG" and a.size >= PNG_PARALLEL_MIN_VALUES:
        data = _png_bytes(a, icc_profile, exif) if fmt == "PNG" else _tiff16_bytes(a, icc_profile)
        try:
            atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
        except OSError as e:
            raise ImageError(f"{path}: cannot write image ({e})") from None
        return
    if a.dtype == np.uint16:
        img = Image.fromarray(np.ascontiguousarray(a[:, :, 0]))
    else:
        img = Image.fromarray(np.ascontiguousarray(a if c > 1 else a[:, :, 0]),
                              mode=("L", "LA", "RGB", "RGBA")[c - 1])
    kw = {}
    if icc_profile and fmt != "BMP":
        kw["icc_profile"] = icc_profile
    if exif and fmt in ("JPEG", "PNG", "WEBP"):
        kw["exif"] = exif
    if fmt == "JPEG":
        kw.update(quality=quality, subsampling=0)
    elif fmt == "WEBP":
        kw.update(quality=quality)
    elif fmt == "PNG":
        kw.update(compress_level=PNG_COMPRESS_LEVEL)

    def save(tmp):
        try:
            img.save(tmp, format=fmt, **kw)
        except (ValueError, OSError):
            if "exif" not in kw:
                raise
            kw.pop("exif")  # e.g. EXIF over JPEG's 64 KB segment limit: keep the pixels
            img.save(tmp, format=fmt, **kw)

    try:
        atomic_write(path, save)
    except (OSError, ValueError) as e:
        raise ImageError(f"{path}: cannot write image ({e})") from None


def write_png(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write an HxW or HxWxC uint8 array as PNG, atomically."""
    img = Image.fromarray(arr)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png_bytes(a: np.ndarray, icc: bytes | None = None, exif: bytes | None = None) -> bytes:
    """A PNG (8 or 16 bits; grey, grey+alpha, RGB or RGBA) with the Sub filter on every row,
    deflated in row bands on all cores (:func:`_parallel_deflate`)."""
    h, w, c = a.shape
    depth = 16 if a.dtype == np.uint16 else 8
    raw = (a.astype(">u2") if depth == 16 else np.ascontiguousarray(a)).reshape(h, -1)
    raw = raw.view(np.uint8)
    bpp = c * depth // 8
    rows = np.empty((h, raw.shape[1] + 1), np.uint8)
    rows[:, 0] = 1  # Sub: each byte minus the same byte of the previous pixel
    rows[:, 1:bpp + 1] = raw[:, :bpp]
    np.subtract(raw[:, bpp:], raw[:, :-bpp], out=rows[:, bpp + 1:])
    out = [b"\x89PNG\r\n\x1a\n",
           _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, (0, 4, 2, 6)[c - 1], 0, 0, 0))]
    if icc:
        out.append(_png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc)))
    if exif:
        out.append(_png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    out.append(_png_chunk(b"IDAT", _parallel_deflate(rows.reshape(-1), PNG_COMPRESS_LEVEL)))
    out.append(_png_chunk(b"IEND", b""))
    return b"".join(out)


def _parallel_deflate(data: np.ndarray, level: int, band: int = 8 << 20) -> bytes:
    """One zlib stream of ``data`` (a uint8 array), its bands of ``band`` bytes deflated in
    parallel threads (zlib releases the GIL) and joined at byte-aligned sync-flush points,
    as pigz does; the checksum is the whole stream's Adler-32."""
    from concurrent.futures import ThreadPoolExecutor

    parts = [data[i:i + band] for i in range(0, max(1, data.size), band)]

    def deflate(i):
        co = zlib.compressobj(level, zlib.DEFLATED, -15)
        last = i == len(parts) - 1
        return co.compress(parts[i]) + co.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)

    workers = min(len(parts), os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        body = b"".join(pool.map(deflate, range(len(parts))))
    return b"\x78\x01" + body + struct.pack(">I", zlib.adler32(data) & 0xFFFFFFFF)


def _tiff16_bytes(a: np.ndarray, icc: bytes | None) -> bytes:
    """An uncompressed little-endian 16-bit baseline TIFF (one strip), with the ICC profile."""
    h, w, c = a.shape
    pixels = a.astype("<u2").tobytes()
    tags = []  # (tag, type, count, value bytes); types: 3 SHORT, 4 LONG, 7 UNDEFINED
    short = lambda *v: struct.pack(f"<{len(v)}H", *v)  # noqa: E731
    long_ = lambda *v: struct.pack(f"<{len(v)}I", *v)  # noqa: E731
    n_tags = 10 + (c in (2, 4)) + bool(icc)
    data_start = 8 + 2 + 12 * n_tags + 4
    extra = b""

    def add(tag, typ, count, value):
        nonlocal extra
        if len(value) <= 4:
            tags.append((tag, typ, count, value.ljust(4, b"\x00")))
        else:
            off = data_start + len(extra)
            tags.append((tag, typ, count, long_(off)))
            extra += value + (b"\x00" if len(value) % 2 else b"")

    add(256, 4, 1, long_(w))
    add(257, 4, 1, long_(h))
    add(258, 3, c, short(*([16] * c)))
    add(259, 3, 1, short(1))
    add(262, 3, 1, short(2 if c >= 3 else 1))
    strip_offset_index = len(tags)
    add(273, 4, 1, long_(0))
    add(277, 3, 1, short(c))
    add(278, 4, 1, long_(h))
    add(279, 4, 1, long_(len(pixels)))
    add(284, 3, 1, short(1))
    if c in (2, 4):
        add(338, 3, 1, short(2))  # unassociated alpha
    if icc:
        add(34675, 7, len(icc), icc)
    tags[strip_offset_index] = (273, 4, 1, long_(data_start + len(extra)))
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", t, typ, n) + v for t, typ, n, v in tags) + long_(0)
    return b"II*\x00" + long_(8) + ifd + extra + pixels
