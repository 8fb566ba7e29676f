"""End-to-end ``bsrn upscale`` (read, upscale, write) on large photos on the CPU, with default
settings, against the same path on a 320x180 image in the same run.

    python benchmarks/large_image.py [--sizes 1920x1080 2000x1500] [--scale 4] [--reps 3]
                                     [--json FILE] [-- extra bsrn upscale options]

Each size runs in its own process (so its peak RSS is its own), through the library call behind
``bsrn upscale`` with one Upscaler built first (as in a batch). Bar: wall time of each large
image <= 1.3 x (its pixels / 320x180's) x the 320x180 time, and peak RSS within the memory
budget the run reports. Inputs are made from the bundled sample photo (bicubic-enlarged; PNG for
1920x1080, JPEG for the others).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def make_image(path: Path, w: int, h: int) -> Path:
    from PIL import Image

    from bsrn.upscale import SAMPLE

    im = Image.open(SAMPLE).convert("RGB")
    im = im.resize((w, h), Image.BICUBIC)
    if path.suffix == ".jpg":
        im.save(path, quality=92)
    else:
        im.save(path)
    return path


def child(args) -> int:
    """Run inside the measuring process: build the Upscaler, time one image, report JSON."""
    import torch

    import bsrn
    from bsrn.backends import cpu_name
    from bsrn.tiling import default_budget
    from bsrn.upscale import upscale_files

    extra = json.loads(args.child_opts)
    t0 = time.perf_counter()
    up = bsrn.Upscaler(scale=args.scale, progress=False, **extra)
    setup = time.perf_counter() - t0
    out = Path(args.child_out)
    times = []
    for i in range(args.reps):
        t0 = time.perf_counter()
        res = upscale_files([args.child], out / f"run{i}", up, progress=False, log=lambda m: None)
        times.append(time.perf_counter() - t0)
        if not res.ok:
            print(json.dumps({"error": res.failed}))
            return 1
    budget = up.memory_budget or default_budget(torch.device("cpu"))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": sorted(times)[len(times) // 2], "times": times,
                      "setup_s": setup, "peak_rss": rss, "budget": budget,
                      "describe": up.describe(), "cpu": cpu_name()}))
    return 0


def run_size(path: Path, scale: int, reps: int, opts: dict, tmp: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", str(path), "--child-out", str(tmp / path.stem),
           "--child-opts", json.dumps(opts), "--scale", str(scale), "--reps", str(reps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{path.name}: {proc.stdout.strip()} {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["1920x1080", "2000x1500"])
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the 320x180 run")
    ap.add_argument("--backend", default=None, help="pass --backend (default: the default)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-opts", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)

    opts = {"backend": args.backend} if args.backend else {}
    tmp = Path(tempfile.mkdtemp(prefix="bsrn-large-"))
    small = run_size(make_image(tmp / "small_320x180.png", 320, 180), args.scale, args.reps,
                     opts, tmp)
    print(f"CPU: {small['cpu']}\n{small['describe']}")
    print(f"320x180 -> x{args.scale}: {small['seconds']:.2f} s (median of {args.reps}; "
          f"model set-up {small['setup_s']:.1f} s, not counted)")
    ok, report = True, {"cpu": small["cpu"], "small": small, "large": {}}
    for size in args.sizes:
        w, h = (int(v) for v in size.lower().split("x"))
        ext = ".png" if size == "1920x1080" else ".jpg"
        r = run_size(make_image(tmp / f"large_{size}{ext}", w, h), args.scale, 1, opts, tmp)
        factor = (w * h) / (320 * 180)
        bound = 1.3 * factor * small["seconds"]
        per_px = r["seconds"] / (factor * small["seconds"])
        good = r["seconds"] <= bound and r["peak_rss"] <= r["budget"]
        ok &= good
        print(f"{size} ({ext[1:]}) -> {w * args.scale}x{h * args.scale}: {r['seconds']:.1f} s = "
              f"{per_px:.2f}x the 320x180 cost per pixel (bar <= 1.30x, bound {bound:.1f} s); "
              f"peak RSS {r['peak_rss'] / 2**30:.2f} GiB of a {r['budget'] / 2**30:.2f} GiB "
              f"budget -> {'PASS' if good else 'FAIL'}")
        report["large"][size] = dict(r, per_pixel_vs_small=per_px, bound_s=bound)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
