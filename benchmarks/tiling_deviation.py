"""How much tiling changes BSRN's output: exact tiling (bsrn.tiling, whole-image CCA statistics
and ESA context) against ordinary padded tiling (Real-ESRGAN style), on the DIV2K sample with the
official x4 weights.

    python benchmarks/tiling_deviation.py [--tiles 96 128 160] [--pads 16 32] [--threads 2]
                                          [--markdown OUT.md] [--figure OUT.png]

For each image and tiling: PSNR against HR (Y channel, 4 px border, uint8, the paper's
protocol), its change from the whole-image result, PSNR of the tiled output against the
whole-image output (RGB, [0, 1]) and max |diff|. Target: exact tiling within 0.01 dB.
The figure shows |tiled - whole| for one padded and one exact tiling (same log colour scale).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "DIV2K_train_sample"
OFFICIAL = ROOT.parent / "shared" / "reference" / "bsrn_official" / "net_g_BSRN_x4.pth"


def psnr_float(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.clamp(0, 1) - b.clamp(0, 1)).double().pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, nargs="+", default=[96, 128, 160])
    ap.add_argument("--pads", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--markdown")
    ap.add_argument("--figure")
    ap.add_argument("--limit", type=int, default=None, help="only the first N images")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from bsrn.checkpoint import load_model
    from bsrn.image_io import read_rgb_uint8
    from bsrn.metrics import psnr, tensor_to_uint8, uint8_to_tensor
    from bsrn.optimize import optimize
    from bsrn.tiling import forward_tiled

    if not OFFICIAL.exists() or not DATA.exists():
        print(f"needs {OFFICIAL} and {DATA}", file=sys.stderr)
        return 2
    model = optimize(load_model(OFFICIAL), "cpu")  # exact rewrites; same maths as the model
    rows, maps = [], {}
    hrs = sorted((DATA / "HR").glob("*.png"))[: args.limit]
    t_start = time.perf_counter()
    with torch.inference_mode():
        for hr_path in hrs:
            name = hr_path.stem
            lr = read_rgb_uint8(DATA / "LR_bicubic" / "X4" / f"{name}x4.png")
            hr = read_rgb_uint8(hr_path)
            x = uint8_to_tensor(lr)
            whole = model(x)
            hr = hr[: whole.shape[2], : whole.shape[3]]
            p_whole = psnr(tensor_to_uint8(whole), hr, 4)
            rows.append((name, f"{lr.shape[1]}x{lr.shape[0]}", "whole image", p_whole, 0.0,
                         math.inf, 0.0))
            variants = [(f"exact, tile {t}", dict(tile=t, exact=True)) for t in args.tiles]
            variants += [(f"padded, tile {t} + pad {p}", dict(tile=t, tile_pad=p, exact=False))
                         for t in args.tiles for p in args.pads]
            for label, kw in variants:
                y = forward_tiled(model, x, **kw)
                p = psnr(tensor_to_uint8(y), hr, 4)
                rows.append((name, "", label, p, p - p_whole, psnr_float(y, whole),
                             (y - whole).abs().max().item()))
                if name == hrs[0].stem and kw["tile"] == args.tiles[1 % len(args.tiles)] and \
                        kw.get("tile_pad") in (None, args.pads[0]):
                    maps[label] = (y - whole).abs().amax(1)[0].numpy()
                print(f"{name} {label}: PSNR {p:.4f} dB ({p - p_whole:+.4f}), vs whole "
                      f"{rows[-1][5]:.1f} dB, max|diff| {rows[-1][6]:.1e}", file=sys.stderr)
    lines = ["| image | LR size | tiling | PSNR vs HR (Y) | change | PSNR vs whole | max abs diff |",
             "|---|---|---|---|---|---|---|"]
    for name, size, label, p, d, pw, mx in rows:
        pw_s = "identical" if math.isinf(pw) else f"{pw:.1f} dB"
        lines.append(f"| {name} | {size} | {label} | {p:.4f} | {d:+.4f} | {pw_s} | {mx:.1e} |")
    worst_exact = max(abs(r[4]) for r in rows if r[2].startswith("exact"))
    worst_naive = max(abs(r[4]) for r in rows if r[2].startswith("padded"))
    table = "\n".join(lines)
    print(table)
    print(f"\nworst |PSNR change|: exact {worst_exact:.4f} dB (target < 0.01), padded "
          f"{worst_naive:.4f} dB; {time.perf_counter() - t_start:.0f} s, torch "
          f"{torch.__version__}, {args.threads} threads")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.figure and maps:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from matplotlib.colors import LogNorm

        fig, axes = plt.subplots(1, len(maps), figsize=(6 * len(maps), 4.4))
        vmax = max(float(m.max()) for m in maps.values()) or 1.0
        norm = LogNorm(vmin=1e-7, vmax=max(vmax, 1e-6))  # log: 1e-7 (exact) to 1e-1 (padded)
        for ax, (label, m) in zip(np.atleast_1d(axes), maps.items()):
            im = ax.imshow(np.maximum(m, 1e-7), cmap="magma", norm=norm)
            ax.set_title(f"{hrs[0].stem}: |{label} - whole| (max {m.max():.1e})", fontsize=9)
            ax.axis("off")
        fig.colorbar(im, ax=list(np.atleast_1d(axes)), shrink=0.8, label="max over RGB")
        fig.savefig(args.figure, dpi=110, bbox_inches="tight")
        print(f"wrote {args.figure}")
    return 0 if worst_exact < 0.01 else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
