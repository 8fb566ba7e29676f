"""Training iterations/s of BSRN (default x4, batch 64, 48 px LR patches): bsrn's fast path
(channels_last, AMP, optional torch.compile, as ``bsrn.train`` runs it) against a plain fp32
eager loop of the same model, timed in the same run (interleaved repetitions, medians).
Also times the two data loaders (worker processes vs the device-resident crop sampler).

    python benchmarks/train_throughput.py                    # GPU when present, else CPU
    python benchmarks/train_throughput.py --iters 2 --reps 2 --batch 16 --patch 32   # CPU, ~1 min
    python benchmarks/train_throughput.py --shapes 8x24,16x32,32x24 --iters 10 --loaders ''

``--shapes BxP,...`` instead compares batch shapes of the fast path: LR pixels/s (batch x patch^2
per second, the quantity a fixed compute budget buys) relative to the first shape.

Fast-path defaults: CUDA -> bf16 autocast + channels_last + fused Adam (+ --compile);
CPU -> channels_last, fp32 (CPU bf16 autocast is far slower on most CPUs; try --amp bf16).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from bsrn.models import create_model  # noqa: E402
from bsrn.timing import time_call  # noqa: E402


def make_step(device, batch, patch, scale, fast, amp, compile_):
    torch.manual_seed(0)
    model = create_model("bsrn", scale=scale).to(device).train()
    x = torch.rand(batch, 3, patch, patch, device=device)
    y = torch.rand(batch, 3, patch * scale, patch * scale, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if fast else None
    if fast:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3,
                           **({"fused": True} if fast and device.type == "cuda" else {}))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    fwd = torch.compile(model) if fast and compile_ else model

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = fwd(x)
        loss = F.l1_loss(out.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return step


def timed(step, iters, device):
    """Iterations/s of ``iters`` steps, timed as one call (CUDA events + synchronize on GPU)."""
    _, ms = time_call(lambda: [step() for _ in range(iters)], device)
    return iters / (ms / 1e3)


def loader_rates(device, batch, patch, scale, data, workers, steps):
    """Batches/s of the worker DataLoader and the device-resident sampler (data only)."""
    from bsrn.data import PatchSampler, load_pairs, memory_batches, worker_batches
    pairs = load_pairs([data], scale, patch, Path("runs/lr_cache"), limit=40)
    sampler = PatchSampler(pairs, scale, patch)
    out = {}
    for name, gen in [
        ("memory", lambda: memory_batches(sampler, 0, steps + 1, batch, 0, batch, device)),
        (f"workers={workers}", lambda: worker_batches(sampler, 0, steps + 1, batch, 0, batch,
                                                      workers, device))]:
        it = gen()
        next(it)  # start-up (worker spawn, upload) excluded
        t = time.perf_counter()
        for _ in it:
            pass
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[name] = steps / (time.perf_counter() - t)
    return out


def compare_shapes(args, device, amp, dev_name):
    """LR pixels/s of the fast path at several (batch, patch) shapes, relative to the first."""
    try:
        shapes = [tuple(int(v) for v in item.lower().split("x")) for item in args.shapes.split(",")]
        assert all(len(sh) == 2 and min(sh) > 0 for sh in shapes)
    except (ValueError, AssertionError):
        raise SystemExit(f"--shapes {args.shapes!r}: expected BATCHxPATCH[,...], e.g. 8x24,16x32")
    print(f"BSRN x{args.scale} fast path (amp={amp}{', compile' if args.compile else ''}) "
          f"on {dev_name}: LR pixels/s by batch shape")
    steps = {sh: make_step(device, sh[0], sh[1], args.scale, True, amp, args.compile)
             for sh in shapes}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    rates = {sh: [] for sh in shapes}
    for _ in range(args.reps):  # interleaved
        for sh, step in steps.items():
            rates[sh].append(timed(step, args.iters, device) * sh[0] * sh[1] ** 2 / 1e3)
    base = statistics.median(rates[shapes[0]])
    for (b, p), r in rates.items():
        m = statistics.median(r)
        print(f"  batch {b:4d} x {p:3d} px  {m * 1e3 / (b * p * p):8.3f} it/s  {m:9.1f} kpx/s  "
              f"x{m / base:.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--iters", type=int, default=20, help="iterations per timed repetition")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default=None,
                    help="fast-path precision (default bf16 on CUDA, none on CPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the fast path")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--loaders", default="../shared/datasets/T91",
                    help="HR folder to time the two data loaders on ('' to skip)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shapes", default="",
                    help="compare fast-path batch shapes, e.g. 8x24,16x32 (batch x LR patch px)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = args.amp or ("bf16" if device.type == "cuda" else "none")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({torch.get_num_threads()} threads)"
    if args.shapes:
        return compare_shapes(args, device, amp, dev_name)
    print(f"BSRN x{args.scale}, batch {args.batch}, {args.patch} px LR patches, on {dev_name}")
    steps = {"fp32 eager (baseline)": make_step(device, args.batch, args.patch, args.scale,
                                                False, "none", False),
             f"bsrn fast path (channels_last, amp={amp}{', compile' if args.compile else ''})":
                 make_step(device, args.batch, args.patch, args.scale, True, amp, args.compile)}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    rates = {k: [] for k in steps}
    for _ in range(args.reps):  # interleaved, so load changes hit both alike
        for k, step in steps.items():
            rates[k].append(timed(step, args.iters, device))
    base = statistics.median(next(iter(rates.values())))
    for k, r in rates.items():
        m = statistics.median(r)
        print(f"  {k:55s} {m:8.3f} it/s  {m * args.batch * args.patch ** 2 / 1e3:9.1f} "
              f"kpx/s  x{m / base:.2f}")
    if args.loaders:
        lr = loader_rates(device, args.batch, args.patch, args.scale, args.loaders,
                          args.workers, max(5, args.iters))
        need = max(statistics.median(r) for r in rates.values())
        print(f"data loaders (batches/s; the fastest training step above needs {need:.2f}):")
        for k, v in lr.items():
            print(f"  {k:55s} {v:8.2f} batches/s")


if __name__ == "__main__":
    main()
