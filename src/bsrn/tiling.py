"""Tiled inference with bounded memory, exact for BSRN.

Plain padded tiling (Real-ESRGAN style: run the whole network on each tile plus a halo, paste the
centre) changes BSRN's output, because two parts of every ESDB look beyond any halo:

- CCA gates each channel by its mean + std over the *whole* image;
- ESA's context branch (stride-2 conv, 7/3 max-pool, three 3x3 convs at ~1/6 resolution,
  bilinear back) spans ~60 LR px, and its pooling grid and interpolation ratio depend on the
  whole image size, so no halo reproduces it.

The exact mode (:func:`forward_tiled`, ``exact=True``) runs the network block by block over all
tiles and keeps three whole-image feature maps (block state, ESA output, c1 accumulator):

1. per tile, with a 4 px halo (the four 3x3 convs of an ESDB), the block body up to ``c5``;
   all crops of an image have one shape (border crops reach inward, :func:`_even_crop`), so a
   runtime compiles one graph per block;
2. ESA's context on the whole image: conv1 in row strips (kept, f = C/4 channels), the
   stride-2 conv2 in row strips, then max-pool and the 1/6-resolution convs on the small map
   (cheap), and ``F.interpolate`` back to the whole image (f channels);
3. in row strips (pointwise from here): mask, ESA output, and CCA's per-channel sums in
   float64; then the gate from the whole-image mean and std;
4. in row strips: block output = ESA output x gate + block input, and the multi-level fusion
   c1 is accumulated as ``acc += W_k B_k`` (c1 is linear) instead of storing all n outputs;
5. per tile, with the tail's halo (``tail_halo``: 2 px for BSRN's one-conv upsampler): GELU(acc)
   -> c2 + long skip (fea_conv recomputed from the input tile) -> upsampler, pasted into the output.

The result equals the whole-image forward up to float summation order (max |diff| ~1e-6).
Memory: (3 C + 2 C/4) x 4 bytes per LR pixel (896 B at C=64) plus the output and one tile's
working set, instead of the whole-image forward's ~7 kB per LR pixel.
"""
from __future__ import annotations

import math
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .models.attention import ESA

#: Halo of an ESDB body: four sequential 3x3 convs (c1_r, c2_r, c3_r, c4).
BODY_HALO = 4
#: Halo of the tail where a network does not give its own (``tail_halo``): fea_conv, c2 and the
#: upsampler's convs (<= 4.25 LR px for every upsampler).
TAIL_HALO = 8
#: Default CPU activation budget for choose_tile (bytes).
DEFAULT_CPU_BUDGET = 2 * 1024 ** 3
#: Whole-image forward peak RSS growth, bytes per LR pixel per feature channel (measured on CPU,
#: fp32, BSRN x4, 320x180: plain model 8.0 kB/px, fast path with ``accumulate`` and in-place
#: activations 3.3 kB/px; minus the 192 B/px output, / 64 channels), with some headroom.
_WHOLE_BYTES_PER_PX_CH = 128
_WHOLE_BYTES_PER_PX_CH_FAST = 56
#: Per-tile working set of the exact engine, bytes per tile pixel per feature channel: the
#: ESDB body keeps ~12 C-channel fp32 maps alive (d1..r4, the concat, c5).
_TILE_BYTES_PER_PX_CH = 48


# ----------------------------------------------------------------------------- helpers
def spans(length: int, tile: int) -> list[tuple[int, int]]:
    """Split ``range(length)`` into ceil(length / tile) nearly equal [a, b) spans."""
    n = max(1, math.ceil(length / tile))
    edges = [round(i * length / n) for i in range(n + 1)]
    return [(edges[i], edges[i + 1]) for i in range(n)]


def _grow(a: int, b: int, halo: int, length: int) -> tuple[int, int]:
    return max(0, a - halo), min(length, b + halo)


def _even_crop(a: int, b: int, halo: int, size: int, length: int) -> tuple[int, int]:
    """The crop ``[a0, a0 + size)`` around the span ``[a, b)`` with at least ``halo`` px of
    context on each side that is not the image edge, where ``size`` (>= the longest span +
    2 halo, or the whole length) is the same for every span: border crops reach further inward
    instead of being shorter, so every tile has one shape (one compile for a runtime)."""
    size = min(size, length)
    a0 = max(0, min(a - halo, length - size))
    return a0, a0 + size


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1x1 conv as a matmul over the channel dim (weight (Cout, Cin)); returns NHWC memory."""
    y = F.linear(x.permute(0, 2, 3, 1), weight.to(x.dtype),
                 None if bias is None else bias.to(x.dtype))
    return y.permute(0, 3, 1, 2)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tile", disable=not enabled, leave=False)


def _is_staged(model) -> bool:
    return all(hasattr(model, a) for a in ("head", "blocks", "fuse", "tail", "cfg"))


def _stages(model):
    """The network whose stages the exact engine runs (BSRN, RFDN, rewritten or run by an
    external runtime), or None."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    if not _is_staged(model):  # CUDA-graph wrapper
        model = getattr(model, "model", model)
    return model if _is_staged(model) else None


# ----------------------------------------------------------------------------- naive tiling
def _forward_naive(model, x, tile, tile_pad, progress):
    n, _, h, w = x.shape
    s = model.scale
    out = None
    ys, xs = spans(h, tile), spans(w, tile)
    with _progress(len(ys) * len(xs), progress, "tiles") as bar:
        for a, b in ys:
            for c, d in xs:
                a0, b0 = _grow(a, b, tile_pad, h)
                c0, d0 = _grow(c, d, tile_pad, w)
                y = model(x[:, :, a0:b0, c0:d0])
                if out is None:
                    out = x.new_empty((n, y.shape[1], h * s, w * s), dtype=torch.float32)
                out[:, :, a * s:b * s, c * s:d * s] = y[:, :, (a - a0) * s:(b - a0) * s,
                                                         (c - c0) * s:(d - c0) * s]
                bar.update()
    return out


# ----------------------------------------------------------------------------- exact tiling
#: Pixels per pointwise strip of the exact schedule (about 16 MiB of a 64-channel map).
STRIP_PX = 1 << 16


def _strip_rows(w: int) -> int:
    """Rows per pointwise strip: about :data:`STRIP_PX` pixels, at least 8 rows."""
    return max(8, STRIP_PX // max(1, w))


#: Relative cost per LR pixel of each pass of the exact schedule (progress bar weights; 1920x1080
#: with OpenVINO bodies: per block 1.04 s of body and 0.46 s of strips, tail 0.7 s, head 0.1 s).
_COST_HEAD, _COST_BODY, _COST_STRIPS, _COST_TAIL = 0.1, 1.0, 0.45, 0.65


class _Progress:
    """A progress bar over the whole schedule, in output pixels, weighted by each pass's cost,
    so its rate and ETA stay steady from the first block to the tail."""

    def __init__(self, model, n, h, w, enabled):
        from tqdm.auto import tqdm

        s = int(getattr(model, "scale", 1))
        nblk = len(model.blocks())
        self.per_lr_px = n * s * s / (_COST_HEAD + nblk * (_COST_BODY + _COST_STRIPS) + _COST_TAIL)
        self.bar = tqdm(total=n * h * w * s * s, desc="upscale", unit="px", unit_scale=True,
                        disable=not enabled, leave=False, smoothing=0.05)

    def __call__(self, lr_px: int, cost: float):
        self.bar.update(lr_px * cost * self.per_lr_px)

    def close(self):
        self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()


def _var_mean_update(count, mean, m2, e):
    """Chan's parallel update of per-channel (count, mean, M2) with the strip ``e``: float64
    running values, float32 strip statistics in two plain passes (``torch.var_mean`` is ~2x
    slower on the CPU)."""
    k = e.shape[2] * e.shape[3]
    ef = e.float()
    mean_s = ef.mean(dim=(2, 3))
    m2_s = (ef - mean_s[:, :, None, None]).square_().sum(dim=(2, 3)).double()
    mean_s = mean_s.double()
    if count == 0:
        return k, mean_s, m2_s
    total = count + k
    delta = mean_s - mean
    return total, mean + delta * (k / total), m2 + m2_s + delta.pow(2) * (count * k / total)


def _forward_exact(model, x, tile, progress):
    """The block-synchronous schedule over ``model``'s stages (see the module docstring)."""
    n, _, h, w = x.shape
    dev = x.device
    fmt = getattr(model, "memory_format", torch.contiguous_format)
    c = model.cfg.num_feat
    ys, xs = spans(h, tile), spans(w, tile)
    tiles = [(a, b, cc, d) for a, b in ys for cc, d in xs]
    rows = _strip_rows(w)
    strips = [(a, min(h, a + rows)) for a in range(0, h, rows)]

    def buf():
        return torch.empty((n, c, h, w), device=dev, dtype=torch.float32, memory_format=fmt)

    th = max(b - a for a, b in ys)
    tw = max(d - cc for cc, d in xs)

    def box(a, b, cc, d, halo):
        return _even_crop(a, b, halo, th + 2 * halo, h) + _even_crop(cc, d, halo, tw + 2 * halo, w)

    def crop(t, a, b, cc, d, halo):
        a0, b0, c0, d0 = box(a, b, cc, d, halo)
        return t[:, :, a0:b0, c0:d0].contiguous(memory_format=fmt), (a - a0, cc - c0)

    prepare = getattr(model, "prepare_tiles", None)
    if prepare is not None:  # a runtime compiles its block graphs for the crop shape meanwhile
        prepare((n, c, min(h, th + 2 * BODY_HALO), min(w, tw + 2 * BODY_HALO)))
    feat, esa_out, acc = buf(), buf(), buf()
    c1_ = up = c2 = None  # ESA's conv1 output, upsampled context and conv2 output
    bar = _Progress(model, n, h, w, progress)
    for a, b, cc, d in tiles:  # head: the first block input (and the long skip)
        f, (oy, ox) = crop(x, a, b, cc, d, 1)
        feat[:, :, a:b, cc:d] = model.head(f)[:, :, oy:oy + b - a, ox:ox + d - cc]
        bar((b - a) * (d - cc), _COST_HEAD)
    h2, w2 = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    for k, blk in enumerate(model.blocks()):
        # 1. the block body up to c5, per tile with its halo (a runtime may copy the tile in
        #    and out itself: ``body_into``)
        into = getattr(blk, "body_into", None)
        for a, b, cc, d in tiles:
            a0, b0, c0, d0 = box(a, b, cc, d, BODY_HALO)
            if into is None or not into(feat, esa_out, (a0, b0, c0, d0), (a, b, cc, d)):
                f = feat[:, :, a0:b0, c0:d0].contiguous(memory_format=fmt)
                esa_out[:, :, a:b, cc:d] = blk.body(f)[:, :, a - a0:b - a0, cc - c0:d - c0]
            bar((b - a) * (d - cc), _COST_BODY)
        # 2. ESA: conv1 in strips (kept for the mask), conv2 in strips on its stride, the
        #    low-resolution context on the small map, then bilinear back to the whole image
        #    (conv1's f channels, a quarter of a feature map each)
        esa = blk.esa if isinstance(blk.esa, ESA) else None
        if esa is not None:
            for a, b in strips:
                part = esa.conv1(esa_out[:, :, a:b])
                if c1_ is None or c1_.dtype != part.dtype:  # kept from block to block
                    c1_, up = (torch.empty((n, part.shape[1], h, w), device=dev, dtype=part.dtype,
                                           memory_format=fmt) for _ in range(2))
                c1_[:, :, a:b] = part
            orows = max(1, rows // 2)
            for i0 in range(0, h2, orows):
                i1 = min(h2, i0 + orows)
                part = esa.conv2(c1_[:, :, 2 * i0:2 * (i1 - 1) + 3])
                if c2 is None or c2.dtype != part.dtype or c2.shape[1] != part.shape[1]:
                    c2 = torch.empty((n, part.shape[1], h2, w2), device=dev, dtype=part.dtype,
                                     memory_format=fmt)
                c2[:, :, i0:i1] = part
            c3 = esa.context(c2).to(up.dtype)  # F.interpolate(c3, (h, w)), into ``up``:
            torch.ops.aten.upsample_bilinear2d.out(c3, [h, w], False, None, None, out=up)
        # 3. in strips: ESA mask and output, and CCA's whole-image statistics
        count, mean, m2 = 0, None, None
        for a, b in strips:
            e = esa_out[:, :, a:b]
            if esa is not None:
                e.mul_(esa.mask(c1_[:, :, a:b], up[:, :, a:b]).to(e.dtype))
            if blk.attention == "cca":
                count, mean, m2 = _var_mean_update(count, mean, m2, e)
        gate = None
        if blk.attention == "cca":
            stats = ((m2 / count).sqrt() + mean).float()[:, :, None, None]
            gate = blk.cca.gate(stats).float()
        # 4. in strips: the block output (into esa_out, which becomes the block state) and the
        #    multi-level fusion acc += W_k B_k
        for a, b in strips:
            e = esa_out[:, :, a:b]
            out = blk.output(e, feat[:, :, a:b], gate)
            if out.data_ptr() != e.data_ptr():
                e.copy_(out)
            if k == 0:
                acc[:, :, a:b] = model.fuse(None, 0, e)
            else:
                v = acc[:, :, a:b]
                r = model.fuse(v, k, e)
                if r.data_ptr() != v.data_ptr():
                    v.copy_(r)
            bar((b - a) * w, _COST_STRIPS)
        feat, esa_out = esa_out, feat
    spare = feat.permute(0, 2, 3, 1).reshape(-1)  # (a view) its pages hold the output if it fits
    del feat, esa_out, c1_, up, c2
    # 5. the tail per tile with its halo (head recomputed for the long skip)
    out = None
    tail_halo = getattr(model, "tail_halo", TAIL_HALO)
    for a, b, cc, d in tiles:
        t, (oy, ox) = crop(acc, a, b, cc, d, tail_halo)
        xt, _ = crop(x, a, b, cc, d, tail_halo)
        if t.data_ptr() == acc.data_ptr():  # the tail overwrites its input: never acc itself
            t = t.clone(memory_format=fmt)
        y = model.tail(t, model.head(xt))
        s = y.shape[2] // t.shape[2]
        if out is None:
            shape = (n, y.shape[1], h * s, w * s)
            size = math.prod(shape)  # no fresh pages to fault in for the largest buffer
            out = spare[:size].view(shape) if spare.numel() >= size else \
                torch.empty(shape, device=dev, dtype=torch.float32)
            del spare
        out[:, :, a * s:b * s, cc * s:d * s] = y[:, :, oy * s:(oy + b - a) * s,
                                                 ox * s:(ox + d - cc) * s]
        bar((b - a) * (d - cc), _COST_TAIL)
    bar.close()
    return out


def supports_exact(model: nn.Module) -> bool:
    """Whether ``model`` has an exact tiled forward: staged (BSRN, RFDN, rewritten or not) or
    local with a known ``halo`` (IMDN)."""
    return _stages(model) is not None or getattr(model, "halo", None) is not None


@torch.no_grad()
def forward_tiled(model: nn.Module, x: torch.Tensor, tile: int, tile_pad: int = 16,
                  exact: bool = True, progress: bool = False) -> torch.Tensor:
    """Super-resolve ``x`` (N, C, H, W in [0, 1]) tile by tile with bounded memory.

    ``tile`` is the LR tile side in px. ``exact=True`` (BSRN family): block-by-block schedule
    with whole-image CCA statistics and ESA context; output equals ``model(x)`` up to float
    rounding; the halos are what the layers need, so ``tile_pad`` is not used. ``exact=False``:
    padded tiling (each tile plus ``tile_pad`` px of context through the whole network, centre
    pasted), which changes BSRN's output; models without an exact schedule fall back to it with
    a warning. Returns float32 on x's device.
    """
    if tile is None or tile <= 0:
        raise ConfigError(f"tile must be a positive number of pixels, got {tile}")
    if x.dim() != 4:
        raise ConfigError(f"expected a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    min_size = getattr(model, "min_size", 1)
    if h < min_size or w < min_size or (h <= tile and w <= tile):
        return model(x).float()
    st = _stages(model) if exact else None
    if exact and st is None and getattr(model, "halo", None) is None:
        warnings.warn(f"{type(model).__name__} has no exact tiled forward; using padded tiling "
                      f"(tile_pad={tile_pad}), which changes the output slightly", stacklevel=2)
    if st is None:
        tile = max(tile, min_size)
        if exact and getattr(model, "halo", None) is not None:  # local network: exact
            tile_pad = model.halo
        return _forward_naive(model, x, tile, tile_pad, progress)
    return _forward_exact(st, x, max(tile, 16), progress)


# ----------------------------------------------------------------------------- memory
def _num_feat(model) -> int:
    cfg = getattr(model, "cfg", None)
    return int(getattr(cfg, "num_feat", 64))


def estimate_whole_bytes(model: nn.Module, h: int, w: int) -> int:
    """Rough peak activation bytes of a whole-image fp32 forward on an h x w LR image."""
    c = _num_feat(model)
    nblk = int(getattr(getattr(model, "cfg", None), "num_block", 8))
    s = int(getattr(model, "scale", 4))
    per_ch = _WHOLE_BYTES_PER_PX_CH_FAST if getattr(model, "accumulate", False) \
        else _WHOLE_BYTES_PER_PX_CH
    per_px = per_ch * c * max(1.0, nblk / 8) + 3 * s * s * 4
    return int(h * w * per_px)


def estimate_tiled_bytes(model: nn.Module, h: int, w: int, tile: int) -> int:
    """Rough peak activation bytes of the exact tiled forward: the larger of (3 feature maps
    and ESA's two quarter-width maps) and (c1 accumulator + fp32 output), plus one tile's
    working set (times ``model.tile_workspaces``: a runtime that keeps a compiled graph per
    block holds one working set per block)."""
    c = _num_feat(model)
    s = int(getattr(model, "scale", 4))
    persistent = h * w * max(3 * c * 4 + 2 * (c // 4) * 4, c * 4 + 3 * s * s * 4)
    t = tile + 2 * TAIL_HALO
    spaces = 1 + getattr(model, "tile_workspaces", 0)
    return int(persistent + t * t * (spaces * c * _TILE_BYTES_PER_PX_CH + 2 * 3 * s * s * 4))


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (bytes), or None where it cannot be read."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_budget(device: torch.device) -> int:
    """Activation budget: 80 % of free GPU memory on CUDA; on the CPU BSRN_MEMORY_BUDGET (bytes,
    or with a G/M suffix), else half of the memory available now (at least 1 GiB), else 2 GiB."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    env = os.environ.get("BSRN_MEMORY_BUDGET")
    if env:
        return parse_bytes(env)
    avail = available_memory()
    if avail is None:
        return DEFAULT_CPU_BUDGET
    return max(1024 ** 3, avail // 2)


def parse_bytes(text: str) -> int:
    """'2G', '512M', '1.5GiB' or a plain number of bytes -> int."""
    t = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(float(t))
    except ValueError as e:
        raise ConfigError(f"cannot parse memory size {text!r} (e.g. 2G, 512M)") from e


#: On the CPU, images above this many LR pixels run in exact tiles of :data:`SPEED_TILE` px even
#: when the whole image fits in memory: per pixel, a whole photo-sized forward is slower than
#: small ones (its activations outgrow the caches and every op allocates and faults in fresh
#: pages), while exact tiles keep the working set small at the cost of small halos. A 120 px
#: tile makes 128 px block-body crops, whose working set stays in the L2 caches: per output
#: pixel, halo included, they measured the fastest on OpenVINO (0.43 us per pixel and block,
#: against 0.53 for 224x248 crops) and as fast as larger ones on the PyTorch fast path.
SPEED_TILE_MIN_PX = 4 * 320 * 180
SPEED_TILE = 120


def choose_tile(model: nn.Module, h: int, w: int, device: str | torch.device = "cpu",
                memory_budget_bytes: int | None = None) -> int | None:
    """LR tile side for an h x w image, or None for a whole-image forward.

    On the CPU, large images (> :data:`SPEED_TILE_MIN_PX`) of networks that tile exactly use
    :data:`SPEED_TILE` for speed. Otherwise the whole image runs when it fits the budget
    (default :func:`default_budget`), else the largest tile whose estimate fits; when even the
    exact engine's whole-image maps exceed it, the smallest tile (64) is returned.
    """
    device = torch.device(device)
    budget = memory_budget_bytes if memory_budget_bytes is not None else default_budget(device)
    fits = estimate_whole_bytes(model, h, w) <= budget
    if device.type == "cpu" and h * w > SPEED_TILE_MIN_PX and supports_exact(model) \
            and max(h, w) > SPEED_TILE:
        for tile in (SPEED_TILE, 96):
            if estimate_tiled_bytes(model, h, w, tile) <= budget:
                return tile
        return 64
    if fits:
        return None
    for tile in (512, 384, 256, 192, 128, 96):
        if estimate_tiled_bytes(model, h, w, tile) <= budget:
            return tile
    return 64


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def forward_auto(model: nn.Module, x: torch.Tensor, device: str | torch.device | None = None,
                 precision: str = "fp32", tile: int | None = None, tile_pad: int = 16,
                 exact: bool = True, memory_budget_bytes: int | None = None,
                 progress: bool = False) -> torch.Tensor:
    """Forward with automatic tiling; returns float32 on ``device``.

    ``tile`` given: always tiled. Otherwise on CPU the tile comes from :func:`choose_tile` (None:
    whole image); on CUDA the whole image is tried first and a CUDA out-of-memory error retries
    tiled (tile from the free memory, halved on each further OOM down to 32 px).
    Half precision is guarded by :func:`bsrn.precision.run` (fp32 retry on non-finite output).
    """
    from .precision import resolve_device, run

    device = resolve_device(device) if device is not None else x.device
    precision = precision or "fp32"
    x = x.to(device)
    _, _, h, w = x.shape

    def tiled(t):
        return lambda inp: forward_tiled(model, inp, t, tile_pad, exact=exact, progress=progress)

    if tile:
        return run(tiled(tile), x, precision, device)
    if device.type != "cuda":
        t = choose_tile(model, h, w, device, memory_budget_bytes)
        return run(model if t is None else tiled(t), x, precision, device)
    t = None
    while True:
        try:
            return run(model if t is None else tiled(t), x, precision, device)
        except RuntimeError as e:  # CUDA OOM: free the cache and retry with smaller tiles
            if not _is_oom(e):
                raise
            torch.cuda.empty_cache()
            if t is None:
                t = choose_tile(model, h, w, device, memory_budget_bytes) or 512
            elif t > 32:
                t //= 2
            else:
                raise
            warnings.warn(f"CUDA out of memory; retrying with {t} px tiles", RuntimeWarning,
                          stacklevel=2)
