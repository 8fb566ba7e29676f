"""INT8 against fp32 speed of BSRN in the same runtime, side by side in one run.

    python benchmarks/int8_speed.py [--weights W] [--calib DIR] [--size 180x320] [--threads 2]
                                    [--repeats 10] [--runtime onnxruntime openvino]

Quantises the weights with ``bsrn.quantize`` (default mixed precision), exports the fp32
reference of the same runtime (ONNX with the exact graph rewrites; OpenVINO IR converted from
it, run in fp32), then times fp32 and INT8 interleaved (warm-up first, median of ``--repeats``)
on an LR input of ``--size``. Prints the CPU model, its INT8 instruction sets, and per runtime
the fp32 and INT8 latencies (median wall time, and median process CPU time, which a busy machine
disturbs less) and their ratios. Default weights: the official BSRN x4 under
$BSRN_SHARED (else ../shared); calibration: its BSD200 folder.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BSRN_SHARED", ROOT.parent / "shared"))


def cpu_model() -> str:
    """The CPU's model name and its INT8 dot-product extensions (Linux /proc/cpuinfo)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines()
                  if line.startswith("flags")), [])
    isa = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp") if f in flags]
    return f"{name} ({os.cpu_count()} logical CPUs; {', '.join(isa) or 'no VNNI/AMX'})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(SHARED / "reference/bsrn_official/net_g_BSRN_x4.pth"))
    ap.add_argument("--calib", default=str(SHARED / "datasets/BSD200"))
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--size", default="180x320", help="LR HxW (default 180x320: 720p out at x4)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--runtime", nargs="+", default=["onnxruntime", "openvino"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))

    from bsrn.checkpoint import load_model, resolve_weights
    from bsrn.quantize import fp32_and_int8
    from bsrn.runtimes import load_graph

    print(f"CPU: {cpu_model()}")
    print(f"threads {args.threads}, LR input 1x3x{h}x{w}, median of {args.repeats} runs each, "
          "fp32 and INT8 interleaved")
    model = load_model(resolve_weights(args.weights))
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="bsrn-int8s-") as tmp:
        for rt in args.runtime:
            fp32, int8, res = fp32_and_int8(model, args.weights, args.calib, tmp, rt,
                                            args.images)
            nets = {"fp32": load_graph(fp32, args.threads), "int8": load_graph(int8, args.threads)}
            wall, cpu = {k: [] for k in nets}, {k: [] for k in nets}
            for net in nets.values():  # warm-up (OpenVINO compiles for the shape here)
                net(x)
                net(x)
            for _ in range(args.repeats):
                for k, net in nets.items():
                    t, c = time.perf_counter(), time.process_time()
                    net(x)
                    wall[k].append(time.perf_counter() - t)
                    cpu[k].append(time.process_time() - c)
            a, b = (statistics.median(wall[k]) * 1000 for k in ("fp32", "int8"))
            ca, cb = (statistics.median(cpu[k]) * 1000 for k in ("fp32", "int8"))
            print(f"{rt:12s} wall: fp32 {a:8.1f} ms  int8 {b:8.1f} ms  speed-up x{a / b:.2f} | "
                  f"CPU time: fp32 {ca:8.1f} ms  int8 {cb:8.1f} ms  x{ca / cb:.2f}  "
                  f"(kept in float: {', '.join(res.kept_fp32) or 'nothing'}; float parts "
                  f"{res.float_precision})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
