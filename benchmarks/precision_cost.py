"""PSNR cost of half precision: BSRN x4 (official weights) on Set5 under fp32, bf16 and (CUDA)
fp16 autocast, through the guarded ``bsrn.precision.run`` with the fast path.

    python benchmarks/precision_cost.py [--device cpu|cuda] [--dataset Set5] [--threads 2]

Prints per precision the mean Y-PSNR against HR (paper protocol, LR files), its change from
fp32, the PSNR of the output against the fp32 output, and whether the fp32 retry fired.
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OFFICIAL = SHARED / "reference" / "bsrn_official" / "net_g_BSRN_x4.pth"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dataset", default="Set5")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from bsrn.checkpoint import load_model
    from bsrn.evaluate import list_images
    from bsrn.image_io import read_rgb_uint8
    from bsrn.metrics import psnr, tensor_to_uint8, uint8_to_tensor
    from bsrn.precision import resolve_device, run
    from bsrn.rewrite import optimize
    from bsrn.timing import time_call

    device = resolve_device(args.device)
    root = SHARED / "datasets" / args.dataset
    if not OFFICIAL.exists() or not root.exists():
        print(f"needs {OFFICIAL} and {root}", file=sys.stderr)
        return 2
    model = load_model(OFFICIAL, device=device)
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    fast = optimize(model, device)
    res = {p: {"psnr": [], "vs32": [], "retry": 0, "sec": 0.0} for p in precisions}
    for hr_path in list_images(root / "HR"):
        hr = read_rgb_uint8(hr_path)
        lr = read_rgb_uint8(root / "LR_bicubic" / "X4" / f"{hr_path.stem}x4.png")
        x = uint8_to_tensor(lr).to(device)
        hr = hr[: lr.shape[0] * 4, : lr.shape[1] * 4]
        ref = None
        for p in precisions:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                y, ms = time_call(lambda: run(fast, x, p, device), device)
            res[p]["sec"] += ms / 1e3
            res[p]["retry"] += sum("non-finite" in str(w.message) for w in caught)
            if ref is None:
                ref = y
            res[p]["psnr"].append(psnr(tensor_to_uint8(y), hr, 4))
            mse = (y.clamp(0, 1) - ref.clamp(0, 1)).double().pow(2).mean().item()
            res[p]["vs32"].append(math.inf if mse == 0 else 10 * math.log10(1 / mse))
    base = sum(res["fp32"]["psnr"]) / len(res["fp32"]["psnr"])
    print(f"BSRN x4 official, {args.dataset}, device {device}, torch {torch.__version__}")
    print("| precision | PSNR (Y) | change vs fp32 | PSNR vs fp32 output (min) | fp32 retries "
          "| time (s) |")
    print("|---|---|---|---|---|---|")
    for p in precisions:
        m = sum(res[p]["psnr"]) / len(res[p]["psnr"])
        v = min(res[p]["vs32"])
        vs = "identical" if math.isinf(v) else f"{v:.1f} dB"
        print(f"| {p} | {m:.4f} | {m - base:+.4f} | {vs} | {res[p]['retry']} | "
              f"{res[p]['sec']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
