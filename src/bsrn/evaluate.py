"""The paper's evaluation protocol on benchmark folders (BasicSR ``test_y_channel``).

A benchmark folder holds ``HR/`` and optionally ``LR_bicubic/X{s}/<name>x{s}.png`` (the EDSR
pack). HR is modcropped to the scale; LR is either read from the files (``lr_source="files"``)
or made from HR by MATLAB double-precision bicubic rounded once to uint8 (``"matlab"``, the
BSRN/BasicSR test sets). SR is clamped, rounded to uint8, and scored on Y (BT.601) with
``crop_border = scale``. Greyscale images are replicated to RGB.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import BsrnError, CheckpointError
from .image_io import IMAGE_EXTS, read_rgb_uint8
from .imresize import bicubic_downscale, modcrop
from .precision import exact_fp32, resolve_device  # noqa: F401 (re-exported)
from .metrics import psnr, ssim, tensor_to_uint8, uint8_to_tensor

LR_SOURCES = ("files", "matlab")


@dataclass
class EvalResult:
    """Mean scores of one model on one benchmark folder at one scale."""

    dataset: str
    scale: int
    psnr: float
    ssim: float
    images: int
    lr_source: str
    per_image: list = field(default_factory=list, repr=False)

    def to_dict(self, per_image: bool = False) -> dict:
        d = asdict(self)
        if not per_image:
            d.pop("per_image")
        return d


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def hr_dir(dataset: str | os.PathLike) -> Path:
    """The HR folder of a benchmark: ``DIR/HR`` when present, else DIR itself."""
    d = Path(dataset)
    if not d.is_dir():
        raise BsrnError(f"{d}: no such dataset folder")
    return d / "HR" if (d / "HR").is_dir() else d


def lr_file(dataset: str | os.PathLike, name: str, scale: int) -> Path:
    return Path(dataset) / "LR_bicubic" / f"X{scale}" / f"{name}x{scale}.png"


def has_lr_files(dataset: str | os.PathLike, scale: int) -> bool:
    return (Path(dataset) / "LR_bicubic" / f"X{scale}").is_dir()


#: (HR, LR) sub-folders of a benchmark folder: the EDSR pack, then DIV2K's valid and test sets.
PAIR_LAYOUTS = (("HR", "LR_bicubic/X{s}"), ("DIV2K_valid_HR", "DIV2K_valid_LR_bicubic/X{s}"),
                ("DIV2K_test_HR", "DIV2K_test_LR_bicubic/X{s}"))


def pair_dirs(dataset: str | os.PathLike, scale: int) -> tuple[Path, Path] | None:
    """(HR folder, LR folder) of a benchmark folder in one of :data:`PAIR_LAYOUTS`, or None."""
    d = Path(dataset)
    for h, lo in PAIR_LAYOUTS:
        if (d / h).is_dir() and (d / lo.format(s=scale)).is_dir():
            return d / h, d / lo.format(s=scale)
    return None


def find_lr(lr_dir: str | os.PathLike, hr_path: Path, scale: int) -> Path | None:
    """The LR file of one HR image: ``<name>x{s}<ext>``, ``<name>x{s}.png`` or ``<name><ext>``."""
    lr_dir = Path(lr_dir)
    for cand in (lr_dir / f"{hr_path.stem}x{scale}{hr_path.suffix}",
                 lr_dir / f"{hr_path.stem}x{scale}.png", lr_dir / hr_path.name):
        if cand.is_file():
            return cand
    return None


def benchmark_pairs(hr: str | os.PathLike, lr: str | os.PathLike,
                    scale: int) -> list[tuple[str, Path, Path]]:
    """(name, HR path, LR path) for every HR image of ``hr`` with its LR file in ``lr``."""
    pairs = []
    for p in list_images(hr):
        cand = find_lr(lr, p, scale)
        if cand is None:
            raise BsrnError(f"{p}: no LR file {p.stem}x{scale}.png in {lr}")
        pairs.append((p.stem, p, cand))
    if not pairs:
        raise BsrnError(f"{hr}: no images found")
    return pairs


def load_pair(dataset, hr_path: Path, scale: int, lr_source: str):
    """(HR modcropped to the scale, LR uint8) for one benchmark image."""
    hr = modcrop(read_rgb_uint8(hr_path), scale)
    if lr_source == "files":
        lp = lr_file(dataset, hr_path.stem, scale)
        lr = read_rgb_uint8(lp)
        if lr.shape[0] * scale != hr.shape[0] or lr.shape[1] * scale != hr.shape[1]:
            raise BsrnError(f"{lp}: size {lr.shape[1]}x{lr.shape[0]} does not match "
                            f"{hr_path.name} at x{scale}")
    else:
        lr = bicubic_downscale(hr, scale, variant="double")
    return hr, lr


@torch.no_grad()
def super_resolve(model: nn.Module, lr: np.ndarray, device="cpu") -> np.ndarray:
    """Run a model on one uint8 LR image; return the uint8 SR image (clamped, rounded)."""
    x = uint8_to_tensor(lr).to(device)
    y = model(x)
    if not bool(torch.isfinite(y).all()):  # a score of a black image is no score
        raise CheckpointError(f"{getattr(model, 'source', type(model).__name__)}: the network "
                              "output has NaN or infinite values (broken or overflowing weights)")
    return tensor_to_uint8(y)


def evaluate(model: nn.Module, dataset: str | os.PathLike, scale: int | None = None,
             lr_source: str | None = None, device="cpu", save_dir: str | os.PathLike | None = None,
             progress: bool = True, limit: int | None = None) -> EvalResult:
    """Y-channel PSNR/SSIM of ``model`` on one benchmark folder (the paper's protocol).

    ``lr_source`` None picks ``"files"`` when ``LR_bicubic/X{s}`` exists, else ``"matlab"``.
    ``save_dir`` receives the SR images as ``save_dir/<dataset>/X{s}/<name>.png``.
    """
    scale = scale or model.scale
    if scale != model.scale:
        raise BsrnError(f"model is x{model.scale} but x{scale} was requested")
    folder = hr_dir(dataset)  # raises for a missing dataset folder
    if lr_source is None:
        lr_source = "files" if has_lr_files(dataset, scale) else "matlab"
    if lr_source not in LR_SOURCES:
        raise BsrnError(f"lr_source must be one of {LR_SOURCES}, got {lr_source!r}")
    if lr_source == "files" and not has_lr_files(dataset, scale):
        raise BsrnError(f"{dataset}: no LR_bicubic/X{scale} folder (use the 'matlab' LR source "
                        "to make LR from HR)")
    paths = list_images(folder)[:limit]
    if not paths:
        raise BsrnError(f"{folder}: no images found")
    name = Path(dataset).resolve().name
    device = resolve_device(device)
    model = model.eval().to(device)
    rows = []
    from tqdm.auto import tqdm

    with exact_fp32(device):
        for p in tqdm(paths, desc=f"{name} x{scale} ({lr_source} LR)", unit="img",
                      disable=not progress, leave=False):
            hr, lr = load_pair(dataset, p, scale, lr_source)
            sr = super_resolve(model, lr, device)
            rows.append({"image": p.stem, "psnr": psnr(sr, hr, scale, True),
                         "ssim": ssim(sr, hr, scale, True)})
            if save_dir is not None:
                from .image_io import write_png

                write_png(Path(save_dir) / name / f"X{scale}" / f"{p.stem}.png", sr)
    return EvalResult(name, scale, float(np.mean([r["psnr"] for r in rows])),
                      float(np.mean([r["ssim"] for r in rows])), len(rows), lr_source, rows)


def evaluate_many(weights, datasets, scale: int | None = None, lr_source: str | None = None,
                  device="auto", save_dir: str | os.PathLike | None = None,
                  progress: bool = True, limit: int | None = None) -> list[EvalResult]:
    """Evaluate one model (an ``nn.Module``, or anything ``bsrn.load_model`` accepts: a path
    or a bundled name) on several benchmark folders, in order."""
    if isinstance(datasets, (str, os.PathLike)):
        datasets = [datasets]
    for d in datasets:  # fail before any slow work
        hr_dir(d)
    device = resolve_device(device)
    if isinstance(weights, nn.Module):
        model = weights
    else:
        from .checkpoint import load_model

        model = load_model(weights, scale=scale, device=device)
    return [evaluate(model, d, scale, lr_source, device, save_dir, progress, limit)
            for d in datasets]


PROTOCOL = ("Protocol: PSNR/SSIM on Y (BT.601: 16 + 65.481 R + 128.553 G + 24.966 B), "
            "crop border = scale, SR clamped and rounded to uint8, HR modcropped to the scale, "
            "greyscale replicated to RGB. LR source: files = the folder's LR_bicubic images "
            "(EDSR pack: MATLAB bicubic on uint8, each pass rounded); matlab = MATLAB bicubic of "
            "HR in double, rounded once to uint8 (the paper's BasicSR test sets).")


def format_table(results, title: str | None = None) -> str:
    """A markdown table of ``EvalResult``s (or their dicts) followed by the protocol line."""
    rows = [r.to_dict() if isinstance(r, EvalResult) else dict(r) for r in results]
    lines = [f"**{title}**", ""] if title else []
    lines += ["| Dataset | Scale | PSNR (dB) | SSIM | Images | LR source |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | x{r['scale']} | {r['psnr']:.4f} | {r['ssim']:.5f} "
                     f"| {r['images']} | {r['lr_source']} |")
    lines += ["", PROTOCOL]
    return "\n".join(lines)


def write_json(results, path: str | os.PathLike, per_image: bool = False) -> Path:
    """Write ``[{"dataset", "scale", "psnr", "ssim", "images", "lr_source"}, ...]``
    atomically (``per_image`` adds the per-image scores)."""
    from .atomic import write_json as _write_json

    rows = [r.to_dict(per_image) if isinstance(r, EvalResult) else dict(r) for r in results]
    return _write_json(path, rows)
