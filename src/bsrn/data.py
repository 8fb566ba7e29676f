"""Training data: HR/LR pairs, random aligned crops and the 8 flip/rot90 symmetries.

Pairs come from HR folders (LR made once by MATLAB bicubic, ``bsrn.imresize``, and cached as
PNG) or from paired HR/LR folders. Every sample is a pure function of ``(seed, k)`` where ``k``
is its global sample index, so

- any loader (worker processes or the device-resident sampler) yields the same batches;
- resuming at step ``t`` only needs ``t`` (the sampler state is the step);
- a global batch is the same samples on 1 or N DDP ranks (rank r takes its slice of it).
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import BsrnError, ConfigError
from .image_io import IMAGE_EXTS, read_rgb_uint8, write_png
from .imresize import bicubic_downscale, modcrop

log = logging.getLogger("bsrn.train")


@dataclass
class Pair:
    """One training image: HR (modcropped to the scale) and its LR, both HxWx3 uint8."""
    name: str
    hr: np.ndarray
    lr: np.ndarray


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"data.train: {folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


GENERATE = "generate"
"""A ``data.train`` entry that stands for synthetic images made at start (``synthetic_images``)."""


def synthetic_images(folder: str | os.PathLike, n: int = 48, size: int = 192,
                     seed: int = 0) -> list[Path]:
    """Synthetic training images: smooth colour gradients under random anti-aliased shapes,
    lines and stripes, with mild noise; deterministic in ``seed``, written once as PNGs."""
    from PIL import Image, ImageDraw

    folder = Path(folder)
    paths = [folder / f"synthetic_{seed}_{i:03d}.png" for i in range(n)]
    if all(p.is_file() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    big = 2 * size  # drawn at 2x and downsampled: band-limited edges, as in photographs
    yy, xx = np.mgrid[0:big, 0:big] / big
    for path in paths:
        c0, c1, c2 = rng.integers(0, 256, (3, 3))
        base = c0 + np.multiply.outer(xx, c1 - c0) + np.multiply.outer(yy, c2 - c0) * 0.5
        im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(rng.integers(8, 24)):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            x0, y0 = (int(v) for v in rng.integers(-big // 4, big, 2))
            w, h = (int(v) for v in rng.integers(big // 16, big // 2, 2))
            kind = rng.integers(0, 4)
            if kind == 0:
                draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
            elif kind == 1:
                pts = [tuple(int(v) for v in rng.integers(-big // 4, big + big // 4, 2))
                       for _ in range(rng.integers(3, 6))]
                draw.polygon(pts, fill=colour)
            elif kind == 2:
                draw.line([x0, y0, x0 + w, y0 + h], fill=colour, width=int(rng.integers(1, 9)))
            else:  # stripes
                step = int(rng.integers(3, 16))
                for k in range(0, w, 2 * step):
                    draw.rectangle([x0 + k, y0, x0 + k + step - 1, y0 + h], fill=colour)
        im = im.resize((size, size), Image.LANCZOS)
        a = np.asarray(im).astype(np.float32) + rng.normal(0, 2, (size, size, 3))
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8)).save(tmp, format="PNG")
        os.replace(tmp, path)
    return paths


def _cached_lr(hr_path: Path, hr: np.ndarray, scale: int, cache_dir: Path, variant: str):
    """LR of ``hr`` from the cache, or made by MATLAB bicubic and written there."""
    st = hr_path.stat()
    key = hashlib.sha1(f"{hr_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{variant}"
                       .encode()).hexdigest()[:12]
    path = cache_dir / f"X{scale}" / f"{hr_path.stem}-{key}.png"
    if path.is_file():
        try:
            lr = read_rgb_uint8(path)
            if lr.shape[0] * scale == hr.shape[0] and lr.shape[1] * scale == hr.shape[1]:
                return lr
        except BsrnError:
            pass  # a damaged cache entry is simply made again
    lr = bicubic_downscale(hr, scale, variant=variant)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, lr)
    return lr


def _find_lr(lr_dir: Path, stem: str, scale: int) -> Path | None:
    for name in (stem, f"{stem}x{scale}", f"{stem}_x{scale}"):
        for ext in IMAGE_EXTS:
            p = lr_dir / f"{name}{ext}"
            if p.is_file():
                return p
    return None


def load_pairs(entries: list, scale: int, patch_size: int, cache_dir: str | os.PathLike,
               variant: str = "uint8", limit: int | None = None,
               progress: bool = False) -> list[Pair]:
    """Read every training pair. Unreadable, mismatched or too-small images are logged by name
    and skipped; an empty result is an error."""
    from tqdm import tqdm

    jobs = []  # (hr_path, lr_path or None)
    for entry in entries:
        if isinstance(entry, dict):
            hr_dir, lr_dir = Path(entry["hr"]), Path(entry["lr"])
            if not lr_dir.is_dir():
                raise ConfigError(f"data.train: {lr_dir}: no such folder")
            for p in _images(hr_dir):
                jobs.append((p, _find_lr(lr_dir, p.stem, scale) or lr_dir / f"{p.stem}x{scale}.png"))
        elif entry == GENERATE:
            jobs += [(p, None) for p in synthetic_images(Path(cache_dir) / "synthetic")]
        else:
            jobs += [(p, None) for p in _images(Path(entry))]
    if limit:
        jobs = jobs[:limit]
    pairs, skipped = [], []
    for hr_path, lr_path in tqdm(jobs, desc=f"load x{scale} pairs", disable=not progress,
                                 leave=False):
        try:
            hr = modcrop(read_rgb_uint8(hr_path), scale)
            if lr_path is None:
                lr = _cached_lr(hr_path, hr, scale, Path(cache_dir), variant)
            else:
                lr = read_rgb_uint8(lr_path)
                if lr.shape[0] * scale != hr.shape[0] or lr.shape[1] * scale != hr.shape[1]:
                    raise BsrnError(f"{lr_path}: size {lr.shape[1]}x{lr.shape[0]} does not "
                                    f"match {hr_path.name} at x{scale}")
            if min(lr.shape[:2]) < patch_size:
                raise BsrnError(f"{hr_path}: LR {lr.shape[1]}x{lr.shape[0]} is smaller than "
                                f"the {patch_size} px patch")
        except (BsrnError, OSError, ValueError) as e:
            msg = str(e) if str(hr_path) in str(e) or str(lr_path) in str(e) else f"{hr_path}: {e}"
            log.warning("skipping %s", msg)
            skipped.append(msg)
            continue
        pairs.append(Pair(hr_path.name, hr, lr))
    if not pairs:
        raise ConfigError(f"data.train: no usable training images in {entries}"
                          + (f" ({len(skipped)} skipped)" if skipped else ""))
    return pairs


@dataclass
class Draw:
    """The random choices for one sample."""
    index: int
    y: int
    x: int
    hflip: bool
    vflip: bool
    transpose: bool


class PatchSampler:
    """Sample ``k`` = an aligned LR/HR crop of an image picked with probability proportional to
    its number of crop positions (like uniform sampling of BasicSR's sub-images), then a random
    element of the flip/rot90 group."""

    def __init__(self, pairs: list[Pair], scale: int, patch_size: int, seed: int = 0,
                 flip: bool = True, rot: bool = True):
        self.pairs, self.scale, self.patch, self.seed = pairs, scale, patch_size, seed
        self.flip, self.rot = flip, rot
        pos = np.array([(p.lr.shape[0] - patch_size + 1) * (p.lr.shape[1] - patch_size + 1)
                        for p in pairs], dtype=np.float64)
        self.cum = np.cumsum(pos) / pos.sum()

    def draw(self, k: int) -> Draw:
        rng = np.random.default_rng([self.seed, k])
        u, a, b, f1, f2, f3 = rng.random(6)
        i = min(int(np.searchsorted(self.cum, u, side="right")), len(self.pairs) - 1)
        h, w = self.pairs[i].lr.shape[:2]
        return Draw(i, int(a * (h - self.patch + 1)), int(b * (w - self.patch + 1)),
                    self.flip and f1 < 0.5, self.flip and f2 < 0.5, self.rot and f3 < 0.5)

    def sample(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(LR patch, HR patch) as CHW uint8 arrays."""
        d, s, p = self.draw(k), self.scale, self.patch
        pair = self.pairs[d.index]
        lr = pair.lr[d.y:d.y + p, d.x:d.x + p]
        hr = pair.hr[d.y * s:(d.y + p) * s, d.x * s:(d.x + p) * s]
        return _augment(lr, d).transpose(2, 0, 1), _augment(hr, d).transpose(2, 0, 1)


def _augment(a: np.ndarray, d: Draw) -> np.ndarray:
    if d.hflip:
        a = a[:, ::-1]
    if d.vflip:
        a = a[::-1]
    if d.transpose:
        a = a.transpose(1, 0, 2)
    return np.ascontiguousarray(a)


class _SampleDataset(torch.utils.data.Dataset):
    def __init__(self, sampler: PatchSampler):
        self.sampler = sampler

    def __len__(self):
        return 2 ** 62

    def __getitem__(self, k):
        lr, hr = self.sampler.sample(int(k))
        return torch.from_numpy(lr), torch.from_numpy(hr)


class _RankIndices(torch.utils.data.Sampler):
    """Global sample indices of this rank's share of each global batch, from ``start_step``."""

    def __init__(self, start_step, global_batch, rank, local_batch, steps):
        self.start, self.gb, self.rank, self.lb, self.steps = (start_step, global_batch, rank,
                                                               local_batch, steps)

    def __iter__(self):
        for t in range(self.start, self.steps):
            base = t * self.gb + self.rank * self.lb
            yield from range(base, base + self.lb)

    def __len__(self):
        return (self.steps - self.start) * self.lb


def _to_float(lr, hr, device, channels_last):
    lr = lr.to(device, non_blocking=True).float().div_(255)
    hr = hr.to(device, non_blocking=True).float().div_(255)
    if channels_last:
        lr = lr.contiguous(memory_format=torch.channels_last)
    return lr, hr


def worker_batches(sampler: PatchSampler, start_step: int, steps: int, global_batch: int,
                   rank: int, local_batch: int, workers: int, device, channels_last=True):
    """Batches from DataLoader worker processes (crops made in parallel with the step)."""
    loader = torch.utils.data.DataLoader(
        _SampleDataset(sampler), batch_size=local_batch, num_workers=workers,
        sampler=_RankIndices(start_step, global_batch, rank, local_batch, steps),
        pin_memory=torch.device(device).type == "cuda", persistent_workers=False,
        prefetch_factor=4 if workers else None)
    for lr, hr in loader:
        yield _to_float(lr, hr, device, channels_last)


def memory_batches(sampler: PatchSampler, start_step: int, steps: int, global_batch: int,
                   rank: int, local_batch: int, device, channels_last=True):
    """Batches cropped in the main process from images held on ``device`` (for datasets that fit
    in GPU memory: no workers, no host-to-device copies per step)."""
    device = torch.device(device)
    hrs = [torch.from_numpy(p.hr).to(device) for p in sampler.pairs]
    lrs = [torch.from_numpy(p.lr).to(device) for p in sampler.pairs]
    s, p = sampler.scale, sampler.patch
    for t in range(start_step, steps):
        lr_b, hr_b = [], []
        base = t * global_batch + rank * local_batch
        for k in range(base, base + local_batch):
            d = sampler.draw(k)
            lr = lrs[d.index][d.y:d.y + p, d.x:d.x + p]
            hr = hrs[d.index][d.y * s:(d.y + p) * s, d.x * s:(d.x + p) * s]
            lr_b.append(_augment_t(lr, d))
            hr_b.append(_augment_t(hr, d))
        lr = torch.stack(lr_b).permute(0, 3, 1, 2)
        hr = torch.stack(hr_b).permute(0, 3, 1, 2)
        yield _to_float(lr, hr, device, channels_last)


def _augment_t(a: torch.Tensor, d: Draw) -> torch.Tensor:
    if d.hflip:
        a = a.flip(1)
    if d.vflip:
        a = a.flip(0)
    if d.transpose:
        a = a.transpose(0, 1)
    return a
