"""Upscaling as a product: any picture in, the same kind of picture out, ``scale`` times larger.

- ``upscale(image, ...)``: one call for a PIL image, a numpy array or a torch tensor.
- ``Upscaler``: keeps the (optimized) model loaded for repeated calls; also reads and writes
  files (``upscale_file``).
- the batch behind ``bsrn upscale`` (files, folders, globs, one output plan) is
  ``bsrn.batch.upscale_files``.

Colour goes through the network. Greyscale is replicated to RGB, super-resolved and averaged
back to one channel. Alpha is upscaled separately, by the network (replicated to RGB, the
default) or by MATLAB bicubic, and recombined; a constant alpha (e.g. fully opaque) stays
exactly constant. Before the colour pass, fully transparent pixels take the colour of the
visible pixels around them (``bleed_colour``), so hidden colour cannot fringe visible edges.
Scales the weights do not provide natively (``scale=3`` with x4 weights, or 1.5) run the
network at its native scale and resize the result with MATLAB bicubic.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import bundled_weights, load_model
from .errors import CheckpointError, ConfigError, ImageError
from .image_io import (DEFAULT_MAX_PIXELS, Picture, picture_from_pil, read_image, stores_alpha,
                       to_8bit, write_image)
from .backends import make_backend, physical_cores, tune_allocator
from .precision import resolve_device, resolve_precision
from .tiling import forward_auto, parse_bytes

DEFAULT_SCALE = 4
ALPHA_UPSAMPLERS = ("network", "bicubic")
DEFAULT_ALPHA_UPSAMPLER = "network"
SAMPLE = Path(__file__).parent / "samples" / "sample.png"



# ----------------------------------------------------------------------------- weights
def _bundled_scales() -> dict[int, str]:
    out = {}
    for name in bundled_weights():
        if name.startswith("bsrn-x") and name[6:].isdigit():
            out[int(name[6:])] = name
    return out


def _default_weights(scale: float) -> str:
    """The bundled ``bsrn-x{s}`` to use for output scale ``scale``: its own scale when bundled,
    else the smallest bundled scale above it (the result is then resized), else the largest."""
    bundled = _bundled_scales()
    if not bundled:
        raise CheckpointError("no bundled weights in this install (src/bsrn/weights/bsrn-x*."
                              "safetensors); pass weights=/--weights FILE")
    above = [s for s in bundled if s >= scale]
    return bundled[min(above) if above else max(bundled)]


def _check_scale(scale) -> float | None:
    if scale is None:
        return None
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise ConfigError(f"scale must be a number, got {scale!r}") from None
    if not (0 < s <= 16) or math.isnan(s):
        raise ConfigError(f"scale must be in (0, 16], got {scale}")
    return int(s) if s.is_integer() else s


def bleed_colour(rgb: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Give fully transparent pixels an average colour of the visible pixels around them
    (push-pull over an image pyramid); visible pixels are returned unchanged.

    The colour under alpha = 0 is arbitrary (often black) and a network's receptive field would
    smear it across the upscaled edge as a dark fringe. ``rgb`` (1, C, H, W), ``visible``
    (1, 1, H, W) bool.
    """
    if bool(visible.all()) or not bool(visible.any()):
        return rgb
    w = visible.to(rgb.dtype)
    levels = [(rgb * w, w)]
    while max(levels[-1][1].shape[-2:]) > 1:
        c, w = levels[-1]
        k = (min(2, w.shape[-2]), min(2, w.shape[-1]))
        levels.append((F.avg_pool2d(c, k, ceil_mode=True), F.avg_pool2d(w, k, ceil_mode=True)))
    c, w = levels[-1]
    col = c / w.clamp_min(1e-12)
    for c, w in reversed(levels[:-1]):
        up = F.interpolate(col, size=c.shape[-2:], mode="nearest")
        col = torch.where(w > 0, c / w.clamp_min(1e-12), up)
    return torch.where(visible, rgb, col)


# ----------------------------------------------------------------------------- the upscaler
class Upscaler:
    """A super-resolution model ready for repeated use on images of any kind.

    ``weights``: a bundled name (``bsrn-x4``), any file ``load_model`` reads (official
    checkpoints included) or a loaded model; None picks the bundled BSRN for ``scale``.
    ``scale``: output scale; None means the weights' own scale (4 for the bundled default).
    ``tile``/``tile_pad``: LR tile side and halo for tiled inference (None: automatic, whole
    image when it fits memory). ``plain=True`` skips the exact inference rewrites of
    ``bsrn.optimize``. ``backend``: auto (the fastest installed for this device and thread
    count, measured once and cached), torch, onnxruntime or openvino (CPU, fp32). ``threads``:
    CPU threads (default: all physical cores). ``backend=None`` reads BSRN_BACKEND (else auto). ``memory_budget``: bytes (or "6G") for the
    activations of one image on the CPU (default: a share of the available memory); larger
    images are tiled exactly. ``progress=True`` shows a progress bar on large images.
    """

    def __init__(self, weights=None, scale: float | None = None, device="auto",
                 precision: str = "fp32", tile: int | None = None, tile_pad: int | None = None,
                 alpha_upsampler: str = DEFAULT_ALPHA_UPSAMPLER, plain: bool = False,
                 compile: bool = False, progress: bool = False, backend: str | None = None,
                 threads: int | None = None, memory_budget: int | str | None = None,
                 log=None):
        scale = _check_scale(scale)
        if alpha_upsampler not in ALPHA_UPSAMPLERS:
            raise ConfigError(f"alpha_upsampler must be one of {', '.join(ALPHA_UPSAMPLERS)}, "
                              f"got {alpha_upsampler!r}")
        if tile is not None and tile < 0 or tile_pad is not None and tile_pad < 0:
            raise ConfigError("tile and tile_pad must be >= 0")
        if threads is not None and (not isinstance(threads, int) or threads < 0):
            raise ConfigError(f"threads must be a whole number >= 0 (0: all physical cores), "
                              f"got {threads!r}")
        self.threads = threads or physical_cores()
        torch.set_num_threads(self.threads)
        self.memory_budget = parse_bytes(memory_budget) if memory_budget is not None else None
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise ConfigError(f"memory budget must be positive, got {memory_budget!r}")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        if self.device.type == "cpu":
            tune_allocator()
        if weights is None:
            weights = _default_weights(scale or DEFAULT_SCALE)
        if isinstance(weights, torch.nn.Module):
            model = weights.eval().to(self.device)
            self.weights = getattr(model, "source", type(model).__name__)
        else:
            model = load_model(weights, device=self.device)
            self.weights = str(weights)
        self.native_scale = int(model.scale)
        try:
            from .models import arch_of

            self.arch = arch_of(model)
        except Exception:  # noqa: BLE001 - only used for labels
            self.arch = type(model).__name__.lower()
        self.scale = scale if scale is not None else self.native_scale
        if self.scale > self.native_scale:
            warnings.warn(f"the weights are x{self.native_scale}: the remaining "
                          f"x{self.scale / self.native_scale:g} to x{self.scale:g} is MATLAB "
                          "bicubic, not super-resolution", stacklevel=2)
        backend = backend or os.environ.get("BSRN_BACKEND") or "auto"
        if getattr(model, "is_graph", False):  # an exported graph file runs as exported
            self.backend = f"graph file ({getattr(model, 'runtime', 'runtime')})"
        elif plain:
            if backend not in ("auto", "torch"):
                raise ConfigError(f"plain runs the PyTorch model as loaded; it cannot run on "
                                  f"the {backend} backend")
            self.backend = "torch (plain)"
        else:
            if self.precision != "fp32" and backend == "auto":
                backend = "torch"  # half precision is a PyTorch (autocast) feature here
            elif self.precision != "fp32" and backend != "torch":
                raise ConfigError(f"the {backend} backend runs fp32; use --backend torch for "
                                  f"{self.precision}")
            model, self.backend = make_backend(model, backend, self.device, self.threads,
                                               compile=compile, progress=log)
        self.model = model
        self.tile = tile or None
        self.tile_pad = 16 if tile_pad is None else tile_pad
        self.alpha_upsampler = alpha_upsampler
        self.progress = progress

    def describe(self) -> str:
        """One line for logs: weights, architecture, scale, device, precision, tiling."""
        tiling = f"{self.tile} px tiles" if self.tile else "automatic tiling"
        threads = f", {self.threads} threads" if self.device.type == "cpu" else ""
        return (f"{Path(self.weights).name} ({self.arch} x{self.native_scale}) -> "
                f"x{self.scale:g} on {self.device}{threads}, {self.backend}, {self.precision}, "
                f"{tiling}")

    def __repr__(self):
        return (f"Upscaler(weights={self.weights!r}, scale={self.scale}, device={self.device}, "
                f"precision={self.precision!r}, tile={self.tile})")

    # -- core: planes in [0, 1]
    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) of the output for an h x w input."""
        if self.scale == self.native_scale:
            return h * self.native_scale, w * self.native_scale
        return max(1, round(h * self.scale)), max(1, round(w * self.scale))

    def _net(self, x: torch.Tensor) -> torch.Tensor:
        y = forward_auto(self.model, x, device=self.device, precision=self.precision,
                         tile=self.tile, tile_pad=self.tile_pad, progress=self.progress,
                         memory_budget_bytes=self.memory_budget)
        # never a black image reported as a success (one reduction; exact check only on alarm)
        if not bool(torch.isfinite(y.sum())) and not bool(torch.isfinite(y).all()):
            raise CheckpointError(f"{self.weights}: the network output has NaN or infinite "
                                  "values (broken or overflowing weights); nothing written")
        with torch.inference_mode():  # y is an inference tensor: clamp it in place there
            return y.clamp_(0, 1)

    def upscale_planes(self, x: torch.Tensor) -> torch.Tensor:
        """(1, C, H, W) float in [0, 1], C = 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA) ->
        (1, C, H', W') float32 in [0, 1] on the model's device."""
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] not in (1, 2, 3, 4):
            raise ConfigError(f"expected a (1, C, H, W) tensor with C in 1..4, got "
                              f"{tuple(x.shape)}")
        x = x.to(self.device, torch.float32)
        if not torch.isfinite(x).all():
            raise ConfigError("the image has NaN or infinite values")
        x = x.clamp(0, 1)
        c = x.shape[1]
        grey = c in (1, 2)
        colour = x[:, :1].expand(-1, 3, -1, -1) if grey else x[:, :3]
        if c in (2, 4):  # hidden colour must not bleed into visible edges: fill it first
            colour = bleed_colour(colour, x[:, -1:] > 0)
        out = self._net(colour)
        if grey:
            out = out.mean(dim=1, keepdim=True)
        planes = [out]
        if c in (2, 4):
            planes.append(self._alpha(x[:, -1:]))
        y = torch.cat(planes, dim=1) if len(planes) > 1 else out
        if self.scale != self.native_scale:
            y = self._resize(y, *self.output_size(*x.shape[-2:]))
        return y

    def _alpha(self, a: torch.Tensor) -> torch.Tensor:
        s = self.native_scale
        h, w = a.shape[-2:]
        lo, hi = a.min(), a.max()
        if lo == hi:  # fully opaque (or uniform): keep it exactly uniform
            return a.new_full((1, 1, h * s, w * s), float(lo))
        if self.alpha_upsampler == "network":
            return self._net(a.expand(-1, 3, -1, -1)).mean(dim=1, keepdim=True)
        from .imresize import imresize

        up = imresize(a[0, 0].double().cpu().numpy(), output_shape=(h * s, w * s))
        return torch.from_numpy(np.clip(up, 0, 1)).float().to(a.device)[None, None]

    @staticmethod
    def _resize(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
        from .imresize import imresize

        a = y[0].permute(1, 2, 0).double().cpu().numpy()
        r = np.clip(imresize(a, output_shape=(h, w)), 0, 1)
        return torch.from_numpy(r).float().permute(2, 0, 1)[None].to(y.device)

    # -- kinds of images
    def __call__(self, image):
        return self.upscale(image)

    def upscale(self, image):
        """Upscale a PIL image, a numpy HxW/HxWxC array (uint8, uint16 or float in [0, 1]) or a
        torch tensor (CHW or NCHW float in [0, 1]); returns the same kind, dtype and layout.

        PIL images are normalised like files: palette -> RGB(A), CMYK -> RGB, and an EXIF
        orientation is applied, so the result is upright (it carries no EXIF)."""
        if isinstance(image, torch.Tensor):
            return self._upscale_tensor(image)
        if isinstance(image, np.ndarray):
            return self._upscale_array(image)
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover
            Image = None
        if Image is not None and isinstance(image, Image.Image):
            return self._upscale_pil(image)
        raise TypeError(f"cannot upscale a {type(image).__name__}; pass a PIL image, a numpy "
                        "array or a torch tensor")

    def upscale_picture(self, pic: Picture) -> Picture:
        """Upscale a decoded ``Picture`` (uint8/uint16 HxWxC); ICC and EXIF are carried over."""
        return Picture(self._upscale_array(pic.pixels), icc_profile=pic.icc_profile,
                       exif=pic.exif, format=pic.format)

    def _upscale_array(self, a: np.ndarray) -> np.ndarray:
        if a.ndim not in (2, 3) or a.ndim == 3 and a.shape[2] not in (1, 2, 3, 4):
            raise ConfigError(f"expected an HxW or HxWxC (C = 1..4) image array, got shape "
                              f"{a.shape}")
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise ConfigError(f"empty image array of shape {a.shape}")
        if a.dtype == np.uint8:
            peak = 255.0
        elif a.dtype == np.uint16:
            peak = 65535.0
        elif a.dtype.kind == "f":
            peak = None
        else:
            raise TypeError(f"unsupported array dtype {a.dtype} (uint8, uint16 or float)")
        planes = a if a.ndim == 3 else a[:, :, None]
        x = torch.from_numpy(np.ascontiguousarray(planes, dtype=np.float32))
        if peak is not None:
            x = x / peak
        y = self.upscale_planes(x.permute(2, 0, 1)[None])[0]
        if peak is None:
            out = y.permute(1, 2, 0).cpu().numpy().astype(a.dtype, copy=False)
        else:  # round half up to integers in torch: parallel, in place on y (ours), then one
            with torch.inference_mode():  # pass that converts (truncating: the floor of values
                q = y.mul_(peak).add_(0.5)  # >= 0) and transposes to HWC
                dtype = torch.uint8 if peak == 255.0 else torch.int32
                out = torch.empty(q.shape[1:] + q.shape[:1], dtype=dtype, device=q.device)
                out = out.copy_(q.permute(1, 2, 0)).cpu().numpy()
            out = out.astype(a.dtype, copy=False)
        return out if a.ndim == 3 else out[:, :, 0]

    def _upscale_tensor(self, t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            raise TypeError(f"expected a float tensor in [0, 1], got {t.dtype}")
        if t.dim() == 3:
            return self._upscale_tensor(t[None])[0]
        if t.dim() != 4:
            raise ConfigError(f"expected a CHW or NCHW tensor, got shape {tuple(t.shape)}")
        outs = [self.upscale_planes(t[i:i + 1]) for i in range(t.shape[0])]
        return torch.cat(outs).to(device=t.device, dtype=t.dtype)

    def _upscale_pil(self, im):
        from PIL import Image

        pic = picture_from_pil(im)
        out = self._upscale_array(pic.pixels)
        if out.dtype == np.uint16:  # Pillow holds 16 bits only for greyscale
            img = Image.fromarray(np.ascontiguousarray(out[:, :, 0]))
        else:
            img = Image.fromarray(np.ascontiguousarray(out if out.shape[2] > 1 else out[:, :, 0]),
                                  mode=("L", "LA", "RGB", "RGBA")[out.shape[2] - 1])
        if pic.icc_profile:
            img.info["icc_profile"] = pic.icc_profile
        return img

    # -- files
    def upscale_file(self, src, dst, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                     compare: bool = False) -> tuple[Picture, Picture, Path]:
        """Read ``src``, upscale it and write ``dst`` atomically (format from its extension;
        a JPEG or BMP destination for an image with alpha becomes .png). Returns (input, output,
        written path). ``compare=True`` also writes ``<dst stem>_side_by_side.png``."""
        pic = read_image(src, max_pixels=max_pixels)
        out = self.upscale_picture(pic)
        dst = Path(dst)
        if out.has_alpha and not stores_alpha(dst):
            png = dst.with_suffix(".png")
            if png.exists():  # the switch to .png must not replace a file nobody named
                raise ImageError(f"{src}: has transparency, which {dst.suffix} cannot store, "
                                 f"and {png} exists; write to a .png name")
            dst = png
        write_image(dst, out.pixels, icc_profile=out.icc_profile, exif=out.exif)
        if compare:
            write_side_by_side(side_by_side_path(dst), pic, out,
                               f"{self.arch.upper().replace('_', '-')} x{self.scale:g}")
        return pic, out, dst


# ----------------------------------------------------------------------------- one-call API
_CACHE: dict = {}


def upscale(image, scale: float | None = None, weights=None, tile: int | None = None,
            tile_pad: int | None = None, precision: str = "fp32", device="auto",
            alpha_upsampler: str = DEFAULT_ALPHA_UPSAMPLER, plain: bool = False):
    """Upscale one image and return the same kind (PIL image, numpy array or torch tensor).

    ``scale=None``: the weights' scale (bundled default: 4). With ``weights=None`` the bundled
    ``bsrn-x{scale}`` is used. The last model is cached, so repeated calls do not reload it;
    use ``Upscaler`` to control that explicitly.
    """
    key = None
    if not isinstance(weights, torch.nn.Module):
        w = weights
        if weights is not None and Path(weights).is_file():
            w = (str(Path(weights).resolve()), Path(weights).stat().st_mtime_ns)
        key = (w, scale, str(device), precision, tile, tile_pad, alpha_upsampler, plain)
    up = _CACHE.get(key) if key is not None else None
    if up is None:
        up = Upscaler(weights, scale=scale, device=device, precision=precision, tile=tile,
                      tile_pad=tile_pad, alpha_upsampler=alpha_upsampler, plain=plain)
        if key is not None:
            _CACHE.clear()
            _CACHE[key] = up
    return up.upscale(image)


# ----------------------------------------------------------------------------- side by side
def side_by_side_path(dst: str | os.PathLike) -> Path:
    dst = Path(dst)
    return dst.with_name(f"{dst.stem}_side_by_side.png")


def _for_display(a: np.ndarray) -> np.ndarray:
    """uint8 RGB for viewing: 16 bits rounded to 8, grey replicated, alpha over white."""
    if a.dtype == np.uint16:
        a = to_8bit(a)
    c = a.shape[2]
    if c in (2, 4):
        alpha = a[:, :, -1:].astype(np.float32) / 255
        a = np.floor(a[:, :, :-1] * alpha + 255 * (1 - alpha) + 0.5).astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return a


SIDE_BY_SIDE_MAX = 1024
"""Largest panel side of a side-by-side image; bigger results are shown as a centre crop."""


def side_by_side(lr: np.ndarray, sr: np.ndarray, label: str = "BSRN",
                 max_side: int = SIDE_BY_SIDE_MAX) -> np.ndarray:
    """A labelled comparison image (uint8 RGB): MATLAB-bicubic upscale of ``lr`` | ``sr``.

    Results larger than ``max_side`` px are compared on their centre crop (said in the label),
    so the picture stays small enough to open.
    """
    from PIL import Image, ImageDraw, ImageFont

    from .imresize import imresize

    lh, lw = lr.shape[:2]
    sh, sw = sr.shape[:2]
    sy, sx = sh / lh, sw / lw
    cropped = sh > max_side or sw > max_side
    if cropped:  # centre crop, aligned on LR pixels
        ch, cw = min(lh, max(1, int(max_side / sy))), min(lw, max(1, int(max_side / sx)))
        y0, x0 = (lh - ch) // 2, (lw - cw) // 2
        lr = lr[y0:y0 + ch, x0:x0 + cw]
        sr = sr[round(y0 * sy):round((y0 + ch) * sy), round(x0 * sx):round((x0 + cw) * sx)]
    sr8 = _for_display(sr)
    h, w = sr8.shape[:2]
    bic = imresize(_for_display(lr), output_shape=(h, w))
    gap = max(4, w // 100)
    band = max(28, h // 16)
    canvas = Image.new("RGB", (2 * w + gap, h + band), "white")
    canvas.paste(Image.fromarray(bic), (0, band))
    canvas.paste(Image.fromarray(sr8), (w + gap, band))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=int(band * 0.6))
    except (TypeError, OSError):  # Pillow without FreeType: fixed small bitmap font
        font = ImageFont.load_default()
    note = " (centre crop)" if cropped else ""
    for x0, text in ((0, f"bicubic x{sx:.3g}{note}"), (w + gap, label + note)):
        draw.text((x0 + w // 2, band // 2), text, fill="black", font=font, anchor="mm")
    return np.asarray(canvas)


def write_side_by_side(path, lr: Picture, sr: Picture, label: str = "BSRN") -> Path:
    write_image(path, side_by_side(lr.pixels, sr.pixels, label))
    return Path(path)


def __getattr__(name):
    """The batch API lives in ``bsrn.batch``; these names are kept importable from here."""
    if name in ("upscale_files", "collect_inputs", "plan_outputs", "BatchResult", "Job"):
        from . import batch

        return getattr(batch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
