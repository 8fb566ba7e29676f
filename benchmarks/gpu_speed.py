"""Inference speed of BSRN x4 on a GPU: plain eager fp32, the fast path (``bsrn.optimize``),
torch.compile, CUDA graphs, fp16 and bf16 autocast, fp16 + CUDA graphs, and ONNX Runtime's
TensorRT / CUDA providers where installed; timed interleaved with CUDA events in one process, at
a 1280x720 output (320x180 LR) and a DIV2K-size LR (510x339). Prints the median, the ratio
against plain eager fp32 and max |diff| against it.

    PYTHONPATH=src python3 benchmarks/gpu_speed.py [--sizes 180x320,339x510] [--reps 20]
        [--weights bsrn-x4] [--only tensorrt] [--skip compile] [--json F] [--md F]
    PYTHONPATH=src python3 benchmarks/gpu_speed.py --device cpu --sizes 16x24 --reps 2  # smoke

fp32 rows run through ``bsrn.precision.run`` with TF32 off (fp32 means fp32); "eager, PyTorch
defaults" is ``model(x)`` under no_grad with the library's default flags (cuDNN TF32 allowed),
for comparison. Half-precision rows are ``bsrn.precision.run`` under autocast, so they include its
finiteness check. ONNX Runtime rows bind CUDA tensors (no host copies).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import bsrn  # noqa: E402
from bsrn.precision import exact_fp32, run  # noqa: E402
from bsrn.profile import parse_hw  # noqa: E402
from bsrn.timing import time_interleaved  # noqa: E402

VARIANTS = ("eager", "eager_tf32", "fast", "compiled", "graphs", "fp16", "bf16", "fp16_graphs",
            "ort_cuda", "tensorrt")
LABELS = {"eager": "plain eager fp32 (baseline)", "eager_tf32": "eager, PyTorch default flags (cuDNN TF32 on)",
          "fast": "fast path fp32 (bsrn.optimize)", "compiled": "fast path + torch.compile",
          "graphs": "fast path + CUDA graphs", "fp16": "fast path fp16 autocast",
          "bf16": "fast path bf16 autocast", "fp16_graphs": "fast path fp16 + CUDA graphs",
          "ort_cuda": "ONNX Runtime CUDA EP", "tensorrt": "ONNX Runtime TensorRT EP (fp16)"}


def ort_runner(model, device, provider, workdir):
    """A callable x -> y running our verified ONNX export in ONNX Runtime with ``provider``,
    bound to CUDA tensors; None (with the reason) when the provider is absent."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime is not installed"
    if device.type != "cuda":
        return None, "needs CUDA"
    if provider not in ort.get_available_providers():
        return None, f"{provider} not available in this onnxruntime"
    path = Path(workdir) / "bsrn.onnx"
    if not path.exists():
        bsrn.export_onnx(model.cpu(), path)
        model.to(device)
    opts = {}
    if provider == "TensorrtExecutionProvider":
        opts = {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(workdir)}
    sess = ort.InferenceSession(str(path), providers=[(provider, opts), "CUDAExecutionProvider"])
    iname, oname = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    s = model.scale

    def fwd(x):
        x = x.contiguous()
        y = torch.empty(x.shape[0], 3, x.shape[2] * s, x.shape[3] * s, device=x.device)
        b = sess.io_binding()
        b.bind_input(iname, "cuda", x.device.index or 0, np.float32, tuple(x.shape),
                     x.data_ptr())
        b.bind_output(oname, "cuda", y.device.index or 0, np.float32, tuple(y.shape),
                      y.data_ptr())
        sess.run_with_iobinding(b)
        return y
    return fwd, ""


def build(name, model, device, workdir):
    """(callable x -> float32 y, skip reason)."""
    if name == "eager":
        return (lambda x: run(model, x, "fp32", device)), ""
    if name == "eager_tf32":
        def plain(x):
            with torch.no_grad():
                return model(x)
        return plain, ""
    if name in ("graphs", "fp16_graphs") and device.type != "cuda":
        return None, "CUDA graphs need CUDA"
    if name == "fp16" and device.type != "cuda":
        return None, "fp16 needs CUDA"
    if name == "fp16_graphs":
        g = bsrn.optimize(model, device, cuda_graphs=True)
        return (lambda x: run(g, x, "fp16", device)), ""
    if name == "compiled":
        if device.type != "cuda":  # the CPU rewrites call oneDNN ops that inductor cannot lower
            return None, "timed on CUDA only"
        try:
            import triton  # noqa: F401
        except ImportError:
            return None, "triton is not installed"
        c = bsrn.optimize(model, device, compile=True)
        return (lambda x: run(c, x, "fp32", device)), ""
    if name == "graphs":
        g = bsrn.optimize(model, device, cuda_graphs=True)
        return (lambda x: run(g, x, "fp32", device)), ""
    if name in ("fast", "fp16", "bf16"):
        f = bsrn.optimize(model, device)
        prec = "fp32" if name == "fast" else name
        if prec == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return None, "no bf16 on this GPU"
        return (lambda x: run(f, x, prec, device)), ""
    if name == "ort_cuda":
        return ort_runner(model, device, "CUDAExecutionProvider", workdir)
    if name == "tensorrt":
        return ort_runner(model, device, "TensorrtExecutionProvider", workdir)
    raise ValueError(name)


def bench_size(model, device, hw, names, reps, warmup, workdir):
    """Rows for one LR size: {variant: {median_ms, ratio, max_abs_diff, ...}} plus skips."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, *hw, device=device)
    with torch.no_grad(), exact_fp32(device):
        ref = model(x).float()
    fns, rows = {}, {}
    for name in names:
        try:
            fn, why = build(name, model, device, workdir)
            if fn is not None:
                y = fn(x)                                   # first call: capture / compile / build
                rows[name] = {"max_abs_diff": float((y.float() - ref).abs().max())}
                fns[name] = (lambda f=fn: f(x))
            else:
                rows[name] = {"skipped": why}
        except Exception as e:  # one variant failing must not lose the others
            rows[name] = {"skipped": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            traceback.print_exc()
    times = time_interleaved(fns, device, reps, warmup) if fns else {}
    base = times["eager"].median if "eager" in times else None
    for name, t in times.items():
        rows[name].update(median_ms=t.median, mean_ms=t.mean, p90_ms=t.p90, min_ms=t.min,
                          reps=t.repeat, ratio=(base / t.median) if base else None)
    return rows


def to_markdown(res) -> str:
    lines = [f"BSRN x4 ({res['weights']}) on {res['device_name']}, torch {res['torch']}, "
             f"{res['reps']} interleaved reps after {res['warmup']} warm-up, {res['timer']}.", ""]
    for size, rows in res["sizes"].items():
        h, w = (int(v) for v in size.split("x"))
        lines += [f"LR {w}x{h} -> {w * res['scale']}x{h * res['scale']}:", "",
                  "| variant | median ms | p90 ms | vs plain eager fp32 | max abs diff |",
                  "|---|---|---|---|---|"]
        for name, r in rows.items():
            if "skipped" in r:
                lines.append(f"| {LABELS[name]} | skipped: {r['skipped']} | | | |")
                continue
            ratio = f"{r['ratio']:.2f}x" if r.get("ratio") else "-"
            lines.append(f"| {LABELS[name]} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
                         f"{ratio} | {r['max_abs_diff']:.1e} |")
        lines.append("")
    return "\n".join(lines)


def gpu_parser(description: str) -> argparse.ArgumentParser:
    """The GPU benchmarks' parser with their shared leading options (--device, --weights)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--weights", default="bsrn-x4", help="weights file or bundled name")
    return ap


def parse_gpu_args(ap: argparse.ArgumentParser, argv=None):
    """Add the shared trailing options (--threads, --json, --md), parse, apply --threads;
    returns (args, device)."""
    ap.add_argument("--threads", type=int, default=None, help="CPU threads")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args, torch.device(args.device)


def main(argv=None):
    ap = gpu_parser(__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="180x320,339x510", help="LR HxW list")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--only", default="", help="comma list of variants (default: all)")
    ap.add_argument("--skip", action="append", default=[],
                    help="comma list of variants to leave out (repeatable)")
    args, device = parse_gpu_args(ap, argv)
    skip = {n for item in args.skip for n in item.split(",")}
    names = [n for n in (args.only.split(",") if args.only else VARIANTS) if n and n not in skip]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if "eager" not in names:
        names.insert(0, "eager")                         # the baseline of every ratio
    model = bsrn.load_model(args.weights, device=device).eval()
    res = {"weights": args.weights, "scale": model.scale, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
           else f"CPU ({torch.get_num_threads()} threads)",
           "torch": torch.__version__, "reps": args.reps, "warmup": args.warmup,
           "timer": "CUDA events" if device.type == "cuda" else "perf_counter", "sizes": {}}
    with tempfile.TemporaryDirectory() as work:
        for size in args.sizes.split(","):
            hw = parse_hw(size)
            res["sizes"][f"{hw[0]}x{hw[1]}"] = bench_size(model, device, hw, names, args.reps,
                                                          args.warmup, work)
            print(to_markdown(res), flush=True)
            write(args.json, json.dumps(res, indent=2) + "\n")  # after every size, so a
            write(args.md, to_markdown(res))                    # timeout keeps what was measured


def write(path, text):
    """Write ``text`` atomically when a path was given."""
    if path:
        from bsrn.atomic import write_text

        write_text(path, text)


if __name__ == "__main__":
    main()
