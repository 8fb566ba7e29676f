"""Training curves: L1 loss and validation Y-PSNR against iterations, from runs' ``log.jsonl``."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import BsrnError


def read_log(run_dir: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """(train rows, val rows) of a run folder's ``log.jsonl`` (or the file itself)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / "log.jsonl"
    if not path.is_file():
        raise BsrnError(f"{path}: no training log (expected RUN_DIR/log.jsonl)")
    train, val = [], []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise BsrnError(f"{path}: line {i} is not JSON") from None
        (val if "val_psnr" in row else train).append(row)
    return train, val


def plot_training_log(run_dirs, out: str | os.PathLike | None = None, title: str | None = None,
                      baselines: dict | None = None) -> Path:
    """Draw loss (log scale) and validation PSNR curves of one or more runs into one PNG.

    ``baselines`` maps a label to a PSNR drawn as a dashed line (e.g. bicubic, the paper).
    Returns the PNG path (default ``RUN_DIR/curves.png`` of the first run).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .checkpoint import atomic_write

    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    fig, (ax_l, ax_p) = plt.subplots(1, 2, figsize=(11, 4))
    for rd in run_dirs:
        train, val = read_log(rd)
        name = Path(rd).name
        if train:
            ax_l.plot([r["step"] for r in train], [r["loss"] for r in train], label=name, lw=1)
        if val:
            ax_p.plot([r["step"] for r in val], [r["val_psnr"] for r in val], "o-", label=name,
                      ms=3)
    for label, value in (baselines or {}).items():
        ax_p.axhline(value, ls="--", lw=1, color="grey")
        ax_p.text(ax_p.get_xlim()[0], value, f" {label}", va="bottom", fontsize=8, color="grey")
    ax_l.set(xlabel="iteration", ylabel="L1 loss (train)", yscale="log", title="loss")
    ax_p.set(xlabel="iteration", ylabel="Y-PSNR (dB)", title="validation PSNR")
    for ax in (ax_l, ax_p):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out) if out else Path(run_dirs[0]) / "curves.png"
    atomic_write(out, lambda t: fig.savefig(t, dpi=120, format="png"))
    plt.close(fig)
    return out
