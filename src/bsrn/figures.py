"""Figures: PSNR against parameters and against Multi-Adds (the paper's Figure 1 style), and a
visual comparison grid of crops (HR, bicubic, models) with PSNR captions.

Points come from the JSON files our commands write: ``bsrn eval --json`` (a list of
``{dataset, scale, psnr, ...}``), ``bsrn profile --json`` (``params``, ``multi_adds``), and
``bsrn ablate`` results (``variants`` with both).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BsrnError


@dataclass
class Point:
    """One model on the trade-off plots."""

    label: str
    psnr: float
    params: float
    multi_adds: float | None = None
    group: str = ""
    err: tuple[float, float] | None = None   # (below, above) the mean, e.g. over seeds


def _read_json(path) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise BsrnError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise BsrnError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _psnr_from(obj, dataset: str | None, scale: int | None):
    """The PSNR of an eval JSON (list of rows) for the dataset/scale, or None."""
    rows = obj if isinstance(obj, list) else obj.get("eval", obj.get("results")) \
        if isinstance(obj, dict) else None
    if isinstance(obj, dict) and "psnr" in obj and isinstance(obj["psnr"], (int, float)):
        return float(obj["psnr"])
    if not isinstance(rows, list):
        return None
    for r in rows:
        if not isinstance(r, dict) or "psnr" not in r:
            continue
        if dataset and r.get("dataset", "").lower() != dataset.lower():
            continue
        if scale and r.get("scale") not in (None, scale):
            continue
        return float(r["psnr"])
    return None


def entry_point(label: str, files, dataset: str | None = "Set5", scale: int | None = None,
                group: str = "") -> Point:
    """Merge an eval JSON and a profile JSON (any order) into one Point."""
    psnr = params = madds = None
    for f in files:
        obj = _read_json(f)
        p = _psnr_from(obj, dataset, scale)
        psnr = p if p is not None else psnr
        if isinstance(obj, dict):
            params = obj.get("params", params)
            madds = obj.get("multi_adds", madds)
    if psnr is None:
        raise BsrnError(f"{label}: no PSNR for {dataset or 'any dataset'} in "
                        f"{', '.join(map(str, files))}")
    if params is None:
        raise BsrnError(f"{label}: no 'params' in {', '.join(map(str, files))} "
                        "(add a `bsrn profile --json` file)")
    return Point(label, psnr, float(params), None if madds is None else float(madds), group)


def study_points(path, group: str = "") -> list[Point]:
    """Points of every finished variant of an ablation results JSON."""
    obj = _read_json(path)
    if not isinstance(obj, dict) or "variants" not in obj:
        raise BsrnError(f"{path}: not an ablation results file (no 'variants')")
    pts = []
    for v in obj["variants"]:
        if v.get("psnr") is None:
            continue
        err = None
        if v.get("seeds", 1) > 1:
            err = (v["psnr"] - v["psnr_min"], v["psnr_max"] - v["psnr"])
        pts.append(Point(v.get("label") or v["name"], float(v["psnr"]), float(v["params"]),
                         v.get("multi_adds"), group or obj.get("study", ""), err))
    return pts


def study_reference(path) -> list[tuple[str, float]]:
    """The bicubic reference line of an ablation results JSON, if recorded."""
    obj = _read_json(path)
    b = obj.get("budget", {}).get("bicubic_psnr") if isinstance(obj, dict) else None
    return [("bicubic", float(b))] if b is not None else []


_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]


def plot_tradeoff(points: list[Point], out_dir, dataset: str = "Set5", scale: int = 4,
                  formats=("png",), highlight: tuple[str, ...] = (),
                  title: str | None = None,
                  reference: list[tuple[str, float]] = ()) -> list[Path]:
    """Draw ``psnr_vs_params`` and ``psnr_vs_multiadds`` (Figure 1 style: one labelled marker per
    model, highlighted models as red stars, marker area growing with Multi-Adds on the params
    plot, min-max bars where a point has a spread, dashed lines for ``reference`` PSNRs such as
    bicubic). Returns the files written."""
    from .extras import require

    matplotlib = require("matplotlib", "drawing figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not points:
        raise BsrnError("nothing to plot: no points")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    groups = sorted({p.group for p in points})
    for axis in ("params", "multi_adds"):
        pts = [p for p in points if getattr(p, axis) is not None]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=150)
        xs = [p.params / 1e3 if axis == "params" else p.multi_adds / 1e9 for p in pts]
        ys = [p.psnr for p in pts] + [v for _, v in reference]
        yspan = max(0.1, max(ys) - min(ys))
        placed: list[tuple[float, float]] = []
        for p in pts:
            x = p.params / 1e3 if axis == "params" else p.multi_adds / 1e9
            hi = p.label in highlight
            if p.err is not None:
                ax.errorbar(x, p.psnr, yerr=[[p.err[0]], [p.err[1]]], fmt="none",
                            ecolor="gray", elinewidth=1, capsize=3, zorder=2)
            size = 40.0
            if axis == "params" and p.multi_adds:
                size = 20 + 6 * p.multi_adds / 1e9
            color = "#d62728" if hi else _COLORS[groups.index(p.group) % len(_COLORS)]
            ax.scatter(x, p.psnr, s=size * (2.2 if hi else 1), marker="*" if hi else "o",
                       color=color, alpha=0.85, edgecolors="black", linewidths=0.6, zorder=3)
            off = 4 + 0.5 * (size * (2.2 if hi else 1)) ** 0.5
            crowded = any(abs(x - px) < 0.08 * max(xs) and abs(p.psnr - py) < 0.06 * yspan
                          for px, py in placed)
            placed.append((x, p.psnr))
            ax.annotate(p.label, (x, p.psnr), textcoords="offset points",
                        xytext=(off, -off * 2.2 if crowded else off * 0.6),
                        fontsize=8, color=color, fontweight="bold" if hi else "normal")
        ax.set_xlabel("Parameters (K)" if axis == "params" else
                      "Multi-Adds (G, 1280x720 output)")
        ax.set_ylabel(f"PSNR (dB), {dataset} x{scale}, Y")
        ax.grid(True, linestyle=":", alpha=0.6)
        for name, val in reference:
            ax.axhline(val, color="gray", linestyle="--", linewidth=1, zorder=1)
            ax.annotate(name, (0, val), textcoords="offset points", xytext=(4, 3), fontsize=8,
                        color="gray")
        ax.set_xlim(0, max(xs) * 1.25)
        lows = [p.psnr - (p.err[0] if p.err else 0) for p in pts] + [v for _, v in reference]
        highs = [p.psnr + (p.err[1] if p.err else 0) for p in pts] + [v for _, v in reference]
        ys = lows + highs
        pad = max(0.05, (max(ys) - min(ys)) * 0.15)
        ax.set_ylim(min(ys) - pad, max(ys) + pad)
        ax.set_title(title or (f"PSNR vs {'parameters' if axis == 'params' else 'Multi-Adds'}"
                               + (" (marker area ~ Multi-Adds)" if axis == "params" else "")),
                     fontsize=10)
        if len(groups) > 1:
            for g in groups:
                ax.scatter([], [], color=_COLORS[groups.index(g) % len(_COLORS)], label=g or "-")
            ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        stem = "psnr_vs_params" if axis == "params" else "psnr_vs_multiadds"
        for fmt in formats:
            path = out_dir / f"{stem}.{fmt}"
            _save_fig(fig, path)
            written.append(path)
        plt.close(fig)
    return written


def _save_fig(fig, path: Path) -> None:
    from .atomic import atomic_write

    fmt = path.suffix.lstrip(".")
    meta = {"Software": None} if fmt == "png" else None
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, metadata=meta))


def points_to_json(points: list[Point], path) -> None:
    from dataclasses import asdict

    from .atomic import write_json

    write_json(path, [asdict(p) for p in points])


# ----------------------------------------------------------------------------- comparison grid
def pick_crop(hr: np.ndarray, base: np.ndarray, size: int,
              other: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """The size x size window (stride size/4) where ``base`` (bicubic) is worst against HR, or,
    given ``other`` (a model's SR), where ``other`` gains most over ``base``."""
    def sq(a):
        return ((hr.astype(np.float64) - a.astype(np.float64)) ** 2).mean(axis=2)

    err = sq(base) if other is None else sq(base) - sq(other)
    h, w = err.shape
    size = min(size, h, w)
    step = max(1, size // 4)
    ii = np.cumsum(np.cumsum(np.pad(err, ((1, 0), (1, 0))), 0), 1)
    best, where = -1.0, (0, 0)
    for y in range(0, h - size + 1, step):
        for x in range(0, w - size + 1, step):
            s = ii[y + size, x + size] - ii[y, x + size] - ii[y + size, x] + ii[y, x]
            if s > best:
                best, where = s, (y, x)
    return where[0], where[1], size, size


def comparison_grid(hr_path, models: list[tuple[str, object]], out_path, lr_path=None,
                    scale: int = 4, crop: tuple[int, int, int, int] | None = None,
                    crop_size: int = 96, device="cpu") -> dict:
    """Crops of HR, MATLAB bicubic and each model's SR, captioned with Y-PSNR (crop border =
    scale) of the whole image and of the crop. ``models`` are (label, nn.Module or weights).
    Default crop: the window where the first model gains most over bicubic.
    LR is ``lr_path`` or the MATLAB bicubic (double, rounded once) of the modcropped HR."""
    from .extras import require

    matplotlib = require("matplotlib", "drawing figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .checkpoint import load_model
    from .evaluate import super_resolve
    from .image_io import read_rgb_uint8
    from .imresize import bicubic_downscale, imresize, modcrop
    from .metrics import psnr

    hr = modcrop(read_rgb_uint8(hr_path), scale)
    lr = read_rgb_uint8(lr_path) if lr_path else bicubic_downscale(hr, scale, variant="double")
    if lr.shape[0] * scale != hr.shape[0] or lr.shape[1] * scale != hr.shape[1]:
        raise BsrnError(f"{lr_path}: size {lr.shape[1]}x{lr.shape[0]} does not match "
                        f"{hr_path} at x{scale}")
    bic = imresize(lr, scale=scale)
    panels = [("HR", hr), ("Bicubic", bic)]
    for label, m in models:
        net = load_model(m, scale=scale) if isinstance(m, (str, os.PathLike)) else m
        if net.scale != scale:
            raise BsrnError(f"{label}: model is x{net.scale}, grid is x{scale}")
        panels.append((label, super_resolve(net.eval(), lr, device)))
    y, x, h, w = crop or pick_crop(hr, bic, crop_size, panels[2][1] if len(panels) > 2 else None)
    if y < 0 or x < 0 or y + h > hr.shape[0] or x + w > hr.shape[1]:
        raise BsrnError(f"crop {y},{x},{h},{w} lies outside the {hr.shape[0]}x{hr.shape[1]} image")
    info = {"image": str(hr_path), "crop": [y, x, h, w], "scale": scale, "panels": []}
    n = len(panels) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.3 * n, 2.9), dpi=150)
    axes[0].imshow(hr)
    axes[0].add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="red", linewidth=1.5))
    axes[0].set_title(Path(hr_path).stem, fontsize=8)
    for ax, (label, img) in zip(axes[1:], panels):
        ax.imshow(img[y:y + h, x:x + w], interpolation="nearest")
        if label == "HR":
            cap = "HR\n(PSNR, Y)"
        else:
            whole = psnr(img, hr, scale, True)
            part = psnr(img[y:y + h, x:x + w], hr[y:y + h, x:x + w], 0, True)
            cap = f"{label}\n{whole:.2f} dB / crop {part:.2f}"
            info["panels"].append({"label": label, "psnr": whole, "psnr_crop": part})
        ax.set_title(cap, fontsize=7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _save_fig(fig, out_path)
    plt.close(fig)
    return info
