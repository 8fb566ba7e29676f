"""Peak memory (whole-process RSS) of upscaling a 1920x1080 image x4 on CPU with automatic
tiling: read a PNG, super-resolve (fast path + exact tiling from the memory budget), write the
7680x4320 PNG. Each measurement runs in a fresh subprocess and reads its VmHWM from
/proc/self/status, so the interpreter, torch, the weights, the input and the output image are
all counted. Target: < 3 GiB.

    python benchmarks/peak_memory.py [--size 1920x1080] [--threads 2] [--budget 2G]
                                     [--weights PATH] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OFFICIAL = SHARED / "reference" / "bsrn_official" / "net_g_BSRN_x4.pth"
PHOTO = SHARED / "datasets" / "DIV2K_train_sample" / "HR" / "0004.png"  # 2040x1344
LIMIT = 3 * 1024 ** 3


def vm_hwm() -> int:
    """Peak resident set size of this process in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_input(path: Path, w: int, h: int) -> None:
    import numpy as np
    from PIL import Image

    if PHOTO.exists():
        im = Image.open(PHOTO).convert("RGB")
        if im.width < w or im.height < h:
            im = im.resize((max(w, im.width), max(h, im.height)), Image.BICUBIC)
        im = im.crop((0, 0, w, h))
    else:
        rng = np.random.default_rng(0)
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    im.save(path)


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.budget:
        os.environ["BSRN_MEMORY_BUDGET"] = args.budget
    from bsrn.checkpoint import load_model
    from bsrn.image_io import read_rgb_uint8, write_png
    from bsrn.metrics import tensor_to_uint8, uint8_to_tensor
    from bsrn.optimize import optimize
    from bsrn.tiling import choose_tile, forward_auto

    base = vm_hwm()
    t0 = time.perf_counter()
    weights = Path(args.weights) if args.weights else OFFICIAL
    if weights.exists():
        model = load_model(weights)
    else:
        from bsrn.models import create_model

        model = create_model("bsrn", scale=4).eval()
    fast = optimize(model, "cpu")
    lr = read_rgb_uint8(args.input)
    h, w = lr.shape[:2]
    tile = choose_tile(fast, h, w, "cpu")
    x = uint8_to_tensor(lr)
    del lr
    y = forward_auto(fast, x, device="cpu", progress=False)
    sr = tensor_to_uint8(y)
    del y
    write_png(args.output, sr)
    out = {"input": f"{w}x{h}", "output": f"{sr.shape[1]}x{sr.shape[0]}", "tile": tile,
           "seconds": round(time.perf_counter() - t0, 1), "peak_rss": vm_hwm(),
           "startup_rss": base, "budget": os.environ.get("BSRN_MEMORY_BUDGET", "2G (default)")}
    print(json.dumps(out))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", default=None, help="BSRN_MEMORY_BUDGET for the run (e.g. 2G)")
    ap.add_argument("--weights")
    ap.add_argument("--json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    w, h = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.png", Path(tmp) / "out.png"
        make_input(src, w, h)
        cmd = [sys.executable, __file__, "--child", "--input", str(src), "--output", str(dst),
               "--threads", str(args.threads)]
        if args.budget:
            cmd += ["--budget", args.budget]
        if args.weights:
            cmd += ["--weights", args.weights]
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
            return res.returncode
        r = json.loads(res.stdout.strip().splitlines()[-1])
    gib = r["peak_rss"] / 1024 ** 3
    ok = r["peak_rss"] < LIMIT
    print(f"upscale {r['input']} -> {r['output']} x4 on CPU ({args.threads} threads), automatic "
          f"tiling (tile {r['tile']} px, budget {r['budget']}), fast path: {r['seconds']} s")
    print(f"peak RSS (VmHWM, whole process incl. input/output images): {gib:.2f} GiB "
          f"(interpreter + torch at start: {r['startup_rss'] / 1024 ** 3:.2f} GiB) -> "
          f"{'PASS' if ok else 'FAIL'} (limit 3 GiB)")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
