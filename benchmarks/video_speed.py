"""Video upscaling throughput (frames/s) of ``bsrn.video.upscale_video`` by frames per forward,
on a synthetic clip made here with PyAV, interleaved so background load hits every setting.

    python benchmarks/video_speed.py [--device cuda] [--size 480x270] [--frames 120]
                                     [--batches 1 4 8] [--weights bsrn-x2] [--reps 2]

Prints the median frames/s per batch size and checks that every output keeps the frame count.
On CUDA, batches of fixed shape are where the time goes down; on CPU expect no gain.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def make_clip(path: Path, w: int, h: int, n: int) -> Path:
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=Fraction(30000, 1001))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        base = rng.integers(0, 256, (h, w, 3)).astype(np.int16)
        for i in range(n):
            img = np.clip(np.roll(base, i, axis=1) + (i % 32), 0, 255).astype(np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            f.pts = i
            out.mux(s.encode(f))
        out.mux(s.encode(None))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", default="480x270", help="input WxH")
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--weights", default="bsrn-x2")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch

    from bsrn.upscale import Upscaler
    from bsrn.video import upscale_video

    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    up = Upscaler(args.weights, device=args.device, precision=args.precision)
    print(f"{up.describe()}; {args.frames} frames of {w}x{h}")
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip.mp4", w, h, args.frames)
        upscale_video(clip, Path(tmp) / "warm.mp4", up, batch=max(args.batches), progress=False)
        times: dict[int, list[float]] = {b: [] for b in args.batches}
        for _ in range(args.reps):
            for b in args.batches:
                if up.device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                r = upscale_video(clip, Path(tmp) / f"out_{b}.mp4", up, batch=b, progress=False)
                times[b].append(time.perf_counter() - t0)
                assert r.frames == args.frames, (r.frames, args.frames)
    print("| frames per forward | frames/s (median) | vs batch 1 |\n|---|---|---|")
    base = statistics.median(times[args.batches[0]])
    for b in args.batches:
        med = statistics.median(times[b])
        print(f"| {b} | {args.frames / med:.2f} | {base / med:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
