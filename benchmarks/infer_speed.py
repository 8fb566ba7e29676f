"""Inference speed of BSRN x4 at the paper's size (320x180 LR -> 1280x720): the fast path
(bsrn.optimize) against plain eager fp32 and ONNX Runtime, measured interleaved in one run so
background load affects all alike; the ratios are what count.

    python benchmarks/infer_speed.py [--threads 2] [--reps 5] [--weights PATH] [--size 320x180]
                                     [--device cpu|cuda] [--bf16] [--compile]

Prints per-variant median/min times, ratios against eager fp32, and max |diff| against eager.
On CUDA it adds fp16/bf16 autocast and CUDA graphs (ONNX Runtime stays on CPU unless the CUDA
provider is installed). Target on CPU: fast path >= 1.5x eager with max |diff| <= 1e-4.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT.parent / "shared" / "reference" / "bsrn_official" / "net_g_BSRN_x4.pth"
SAMPLE = ROOT.parent / "shared" / "datasets" / "DIV2K_train_sample" / "LR_bicubic" / "X4" / \
    "0004x4.png"


def load(weights: str | None):
    from bsrn.checkpoint import load_model
    from bsrn.models import create_model

    path = Path(weights) if weights else OFFICIAL
    if path.exists():
        return load_model(path), str(path)
    torch.manual_seed(0)
    return create_model("bsrn", scale=4).eval(), "random-init bsrn x4 (official weights absent)"


def make_input(w: int, h: int) -> torch.Tensor:
    if SAMPLE.exists():
        from bsrn.image_io import read_rgb_uint8
        from bsrn.metrics import uint8_to_tensor

        img = uint8_to_tensor(read_rgb_uint8(SAMPLE))
        if img.shape[2] >= h and img.shape[3] >= w:
            return img[:, :, :h, :w].contiguous()
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--weights")
    ap.add_argument("--size", default="320x180", help="LR WxH")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="also time the fast path in bf16")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--no-onnx", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from bsrn.optimize import optimize
    from bsrn.precision import resolve_device

    device = resolve_device(args.device)
    model, src = load(args.weights)
    model = model.to(device)
    w, h = (int(v) for v in args.size.lower().split("x"))
    x = make_input(w, h).to(device)
    print(f"BSRN x{model.scale} ({src}); input {w}x{h} -> {w * model.scale}x{h * model.scale}; "
          f"device {device}; torch {torch.__version__}; threads {args.threads}")

    t0 = time.perf_counter()
    fast = optimize(model, device=device, sample_size=(h, w))
    print(f"optimize(): {time.perf_counter() - t0:.1f} s; dense-fused layers: "
          f"{sorted(k for k, v in fast.decisions.items() if v == 'dense') or 'none'}")
    variants = {"eager fp32": model, "fast fp32": fast}
    if args.bf16 or device.type == "cuda":
        variants["fast bf16"] = optimize(model, device=device, precision="bf16",
                                         sample_size=(h, w))
    if device.type == "cuda":
        variants["fast fp16"] = optimize(model, device=device, precision="fp16",
                                         sample_size=(h, w))
        variants["fast fp16 + CUDA graphs"] = optimize(model, device=device, precision="fp16",
                                                       cuda_graphs=True, sample_size=(h, w))
    if args.compile:
        t0 = time.perf_counter()
        comp = optimize(model, device=device, compile=True, sample_size=(h, w))
        with torch.inference_mode():
            comp(x)
        print(f"torch.compile warm-up: {time.perf_counter() - t0:.1f} s")
        variants["fast fp32 + compile"] = comp

    ort_sess = None
    if not args.no_onnx:
        try:
            import onnxruntime as ort

            from bsrn.export import export_onnx

            tmp = Path(tempfile.mkdtemp()) / "bsrn.onnx"
            export_onnx(model.cpu(), tmp, verify=False)
            model.to(device)
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            ort_sess = ort.InferenceSession(str(tmp), so, providers=["CPUExecutionProvider"])
            xn = x.cpu().numpy()
            variants["onnxruntime cpu"] = lambda _x: torch.from_numpy(
                ort_sess.run(["output"], {"input": xn})[0]).to(device)
        except Exception as e:  # noqa: BLE001 - report and go on without ORT
            print(f"onnxruntime skipped: {e}", file=sys.stderr)

    times = {k: [] for k in variants}
    outs = {}
    with torch.inference_mode():
        for k, fn in variants.items():  # warm-up (and output for the diff)
            outs[k] = fn(x).float()
        sync(device)
        for _ in range(args.reps):  # interleaved
            for k, fn in variants.items():
                sync(device)
                t0 = time.perf_counter()
                fn(x)
                sync(device)
                times[k].append(time.perf_counter() - t0)
    ref = outs["eager fp32"]
    base = statistics.median(times["eager fp32"])
    print(f"\n{'variant':26s} {'median ms':>10s} {'min ms':>9s} {'speed-up':>9s} "
          f"{'max|diff|':>10s}")
    for k in variants:
        med, mn = statistics.median(times[k]), min(times[k])
        diff = (outs[k] - ref).abs().max().item()
        print(f"{k:26s} {med * 1e3:10.1f} {mn * 1e3:9.1f} {base / med:8.2f}x {diff:10.2e}")
    ratio = base / statistics.median(times["fast fp32"])
    diff = (outs["fast fp32"] - ref).abs().max().item()
    ok = ratio >= 1.5 and diff <= 1e-4
    print(f"\nfast fp32 vs eager fp32: {ratio:.2f}x, max|diff| {diff:.1e} -> "
          f"{'PASS' if ok else 'FAIL'} (target >= 1.5x, <= 1e-4)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
