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


def curves(run_dirs, chain: bool = False) -> list[tuple]:
    """Per run: (name, first step, (steps, losses), (steps, val PSNRs)). With ``chain`` the runs
    are stages of one model, so each run's steps continue from the previous run's last step."""
    out, offset = [], 0
    for rd in run_dirs:
        train, val = read_log(rd)
        out.append((Path(rd).name, offset,
                    ([offset + r["step"] for r in train], [r["loss"] for r in train]),
                    ([offset + r["step"] for r in val], [r["val_psnr"] for r in val])))
        if chain:
            offset += max((r["step"] for r in train + val), default=0)
    return out


def plot_training_log(run_dirs, out: str | os.PathLike | None = None, title: str | None = None,
                      baselines: dict | None = None, chain: bool = False) -> Path:
    """Draw loss (log scale) and validation PSNR curves of one or more runs into one PNG.

    ``baselines`` maps a label to a PSNR drawn as a dashed line (e.g. bicubic, the paper).
    ``chain`` draws the runs one after another (stages of one model, each warm-started from
    the last): each run's steps are offset by the previous runs' last steps, and a dotted line
    marks where a stage starts. Returns the PNG path (default ``RUN_DIR/curves.png`` of the
    first run).
    """
    from .extras import require

    matplotlib = require("matplotlib", "drawing training curves")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .atomic import atomic_write

    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    fig, (ax_l, ax_p) = plt.subplots(1, 2, figsize=(11, 4))
    for name, start, (tx, ty), (vx, vy) in curves(run_dirs, chain):
        if chain and start:
            for ax in (ax_l, ax_p):
                ax.axvline(start, ls=":", lw=1, color="grey")
        if tx:
            ax_l.plot(tx, ty, label=name, lw=1)
        if vx:
            ax_p.plot(vx, vy, "o-", label=name, ms=3)
    for label, value in (baselines or {}).items():
        ax_p.axhline(value, ls="--", lw=1, color="grey")
        ax_p.text(ax_p.get_xlim()[0], value, f" {label}", va="bottom", fontsize=8, color="grey")
    xlabel = "iteration (stages chained)" if chain else "iteration"
    ax_l.set(xlabel=xlabel, ylabel="L1 loss (train)", yscale="log", title="loss")
    ax_p.set(xlabel=xlabel, ylabel="Y-PSNR (dB)", title="validation PSNR")
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
