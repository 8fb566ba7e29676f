"""PSNR/SSIM cost of INT8: a BSRN quantised with ``bsrn quantize`` (default mixed precision)
against the same network in fp32 in the same runtime, on benchmark sets (paper protocol: Y,
crop border = scale, MATLAB bicubic LR).

    python benchmarks/int8_quality.py [--weights W] [--calib DIR] [--runtime onnxruntime openvino]
                                      [--datasets Set5 Set14 B100] [--json OUT.json]

Default weights: the official BSRN x4 under $BSRN_SHARED (else ../shared); calibration: BSD200
(disjoint from Set5/Set14/B100). Prints one markdown row per runtime and dataset, with the
files' sizes on disk.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BSRN_SHARED", ROOT.parent / "shared"))


def _size(path: Path) -> int:
    extra = path.with_suffix(".bin") if path.suffix == ".xml" else None
    return path.stat().st_size + (extra.stat().st_size if extra else 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(SHARED / "reference/bsrn_official/net_g_BSRN_x4.pth"))
    ap.add_argument("--calib", default=str(SHARED / "datasets/BSD200"))
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--runtime", nargs="+", default=["onnxruntime", "openvino"])
    ap.add_argument("--datasets", nargs="+", default=["Set5", "Set14", "B100"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from bsrn.checkpoint import load_model, resolve_weights
    from bsrn.quantize import benchmark_pairs, fp32_and_int8, score
    from bsrn.runtimes import load_graph

    model = load_model(resolve_weights(args.weights))
    scale = int(model.scale)
    sets = {d: benchmark_pairs(SHARED / "datasets" / d, scale) for d in args.datasets}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bsrn-int8q-") as tmp:
        for rt in args.runtime:
            fp32, int8, res = fp32_and_int8(model, args.weights, args.calib, tmp, rt,
                                            args.images)
            ref, q = load_graph(fp32, args.threads), load_graph(int8, args.threads)
            for name, pairs in sets.items():
                a, b = score(ref, pairs, scale), score(q, pairs, scale)
                row = {"runtime": rt, "dataset": name, "images": len(pairs),
                       "fp32_psnr": a["psnr"], "int8_psnr": b["psnr"],
                       "fp32_ssim": a["ssim"], "int8_ssim": b["ssim"],
                       "cost_db": a["psnr"] - b["psnr"], "fp32_bytes": _size(fp32),
                       "int8_bytes": _size(int8), "kept_fp32": res.kept_fp32}
                rows.append(row)
                print(f"| {rt} | {name} | {row['fp32_psnr']:.4f} / {row['fp32_ssim']:.5f} | "
                      f"{row['int8_psnr']:.4f} / {row['int8_ssim']:.5f} | "
                      f"{row['cost_db']:.4f} | {row['fp32_bytes'] / 1024:.0f} KiB -> "
                      f"{row['int8_bytes'] / 1024:.0f} KiB |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
