"""Inference speed of BSRN x4 at the paper's size (320x180 LR -> 1280x720) on the CPU: plain eager,
the path ``bsrn upscale`` takes by default, the torch fast path, ONNX Runtime and OpenVINO run
directly on bsrn's exported graph at their best settings (and the official implementation, given
a checkout of it), timed interleaved in one process at all
physical cores and again at 1 thread, so background load affects all alike.

    python benchmarks/infer_speed.py [--reps 15] [--weights PATH] [--size 320x180]
                                     [--threads N ...] [--official PATH/TO/BSRN-checkout]
                                     [--ov-bf16] [--json FILE]

Bars: the default path >= 0.95x the fastest external runtime, with max |diff| <= 1e-4 against
the plain model; with --official, the plain model >= 1.0x the official code.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
OFFICIAL_W = ROOT.parent / "shared" / "reference" / "bsrn_official" / "net_g_BSRN_x4.pth"
SAMPLE = ROOT.parent / "shared" / "datasets" / "DIV2K_train_sample" / "LR_bicubic" / "X4" / \
    "0004x4.png"


def load(weights):
    import bsrn

    path = Path(weights) if weights else OFFICIAL_W
    if path.exists() or weights:
        return bsrn.load_model(weights or path), str(weights or path)
    return bsrn.load_model("bsrn-x4"), "bundled bsrn-x4"


def make_input(w: int, h: int) -> torch.Tensor:
    if SAMPLE.exists():
        from bsrn.image_io import read_rgb_uint8
        from bsrn.metrics import uint8_to_tensor

        img = uint8_to_tensor(read_rgb_uint8(SAMPLE))
        if img.shape[2] >= h and img.shape[3] >= w:
            return img[:, :, :h, :w].contiguous()
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))


def official_model(checkout: Path, model):
    """The official BSRN network from a checkout of its repository (basicsr stubbed out)."""
    for name in ("basicsr", "basicsr.archs", "basicsr.utils", "basicsr.utils.registry"):
        sys.modules.setdefault(name, types.ModuleType(name))

    class _Registry:
        def register(self, *a, **k):
            return a[0] if a else (lambda f: f)

    sys.modules["basicsr.utils.registry"].ARCH_REGISTRY = _Registry()
    mods = {}
    for name in ("Upsamplers", "BSRN_arch"):
        spec = importlib.util.spec_from_file_location(f"basicsr.archs.{name}",
                                                      checkout / "basicsr" / "archs" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[f"basicsr.archs.{name}"] = mod
        setattr(sys.modules["basicsr.archs"], name, mod)
        spec.loader.exec_module(mod)
        mods[name] = mod
    with contextlib.redirect_stdout(io.StringIO()):  # its constructor prints
        net = mods["BSRN_arch"].BSRN(upscale=model.scale)
    net.load_state_dict(model.state_dict(), strict=True)
    return net.eval()


def external_runtimes(model, threads: int, shape, ov_bf16: bool = False):
    """ONNX Runtime and OpenVINO run directly on bsrn's exported ONNX graph, as a user of those
    runtimes would run it: ONNX Runtime with all graph optimisations, OpenVINO compiled for the
    input's static shape (its fastest setting here) in fp32 (and, with ``ov_bf16``, in the
    plugin's default precision)."""
    import numpy as np

    from bsrn.backends import graphs_for, installed

    path = str(graphs_for(model)["whole"])
    out = {}
    if installed("onnxruntime"):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        out["onnxruntime"] = lambda x: torch.from_numpy(sess.run(None, {name: x.numpy()})[0])
    if installed("openvino"):
        import openvino as ov

        core = ov.Core()
        graph = core.read_model(path)
        graph.reshape({0: list(shape)})
        configs = {"openvino": {"INFERENCE_PRECISION_HINT": "f32"}}
        if ov_bf16:
            configs["openvino (its default: bf16 here)"] = {}
        for label, cfg in configs.items():
            req = core.compile_model(graph, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                    "PERFORMANCE_HINT": "LATENCY", **cfg}) \
                .create_infer_request()
            out[label] = (lambda r: lambda x: torch.from_numpy(
                np.array(r.infer([x.numpy()])[0])))(req)
    return out


def variants_at(model, threads: int, args, shape):
    import bsrn
    from bsrn.precision import run

    torch.set_num_threads(threads)
    out = {}
    if args.official:
        out["official code, eager"] = official_model(Path(args.official), model)
    out["bsrn plain model"] = model
    up = bsrn.Upscaler(model, device="cpu", threads=threads, progress=False)
    out[f"bsrn default ({up.backend})"] = up._net
    fast = bsrn.optimize(model, "cpu")
    out["bsrn torch fast path"] = lambda x: run(fast, x, "fp32", "cpu")
    out.update(external_runtimes(model, threads, shape, args.ov_bf16))
    return out


def measure(variants, x, reps):
    times = {k: [] for k in variants}
    outs = {}
    with torch.inference_mode():
        for k, fn in variants.items():  # warm-up, and the output for the diff
            outs[k] = fn(x).float()
        names = list(variants)
        for r in range(reps):  # interleaved, in a rotating order
            for k in names[r % len(names):] + names[:r % len(names)]:
                fn = variants[k]
                time.sleep(0.3)  # let the previous runtime's worker threads stop spinning
                t0 = time.perf_counter()
                fn(x)
                times[k].append(time.perf_counter() - t0)
    return times, outs


def main(argv=None) -> int:
    from bsrn.backends import cpu_name, physical_cores, tune_allocator

    tune_allocator()  # what bsrn.Upscaler does on the CPU, here for every variant alike
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="thread counts (default: all physical cores, then 1)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--weights")
    ap.add_argument("--size", default="320x180", help="LR WxH")
    ap.add_argument("--official", default=None, metavar="DIR",
                    help="a checkout of the official BSRN repository, to time its network")
    ap.add_argument("--ov-bf16", action="store_true",
                    help="also time OpenVINO with its default CPU precision (bf16 where the CPU "
                         "has bf16 instructions; a different output)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    model, src = load(args.weights)
    w, h = (int(v) for v in args.size.lower().split("x"))
    x = make_input(w, h)
    threads = args.threads or sorted({physical_cores(), 1}, reverse=True)
    if len(threads) > 1:  # one process per thread count: no runtime's thread pool lingers
        import subprocess

        rc = 0
        for t in threads:
            argv2 = [a for a in (argv if argv is not None else sys.argv[1:])]
            if "--threads" in argv2:
                i = argv2.index("--threads")
                j = i + 1
                while j < len(argv2) and not argv2[j].startswith("--"):
                    j += 1
                del argv2[i:j]
            if "--json" in argv2:
                i = argv2.index("--json")
                argv2[i + 1] = f"{Path(argv2[i + 1]).with_suffix('')}.t{t}.json"
            rc |= subprocess.call([sys.executable, __file__, *argv2, "--threads", str(t)])
        return rc
    print(f"BSRN x{model.scale} ({src}); {w}x{h} -> {w * model.scale}x{h * model.scale}; "
          f"CPU: {cpu_name()}; torch {torch.__version__}; {args.reps} interleaved repetitions")
    ok, report = True, {"cpu": cpu_name(), "size": args.size, "runs": {}}
    for t in threads:
        variants = variants_at(model, t, args, tuple(x.shape))
        times, outs = measure(variants, x, args.reps)
        med = {k: statistics.median(t) for k, t in times.items()}
        ref = outs["bsrn plain model"].clamp(0, 1)  # the default path clamps, as images do
        base_name = "official code, eager" if args.official else "bsrn plain model"
        base = med[base_name]
        print(f"\n{t} thread{'s' if t > 1 else ''}:")
        print(f"  {'variant':38s} {'median ms':>10s} {'vs ' + base_name.split(',')[0]:>16s} "
              f"{'max|diff|':>10s}")
        rows = {}
        for k in variants:
            diff = (outs[k].clamp(0, 1) - ref).abs().max().item()
            rows[k] = {"median_ms": med[k] * 1e3, "ratio": base / med[k], "max_abs_diff": diff}
            print(f"  {k:38s} {med[k] * 1e3:10.1f} {base / med[k]:15.2f}x {diff:10.2e}")
        default = next(k for k in variants if k.startswith("bsrn default"))
        externals = [k for k in ("onnxruntime", "openvino") if k in med]
        if externals:
            fastest = min(externals, key=med.get)
            # paired: each repetition's ratio of two runs made seconds apart, then the median
            r = statistics.median(a / b for a, b in zip(times[fastest], times[default]))
            good = r >= 0.95 and rows[default]["max_abs_diff"] <= 1e-4
            ok &= good
            report.setdefault("default_vs_fastest_external", {})[str(t)] = {
                "external": fastest, "paired_median_ratio": r, "pass": good}
            print(f"  default vs fastest external ({fastest}), median of paired ratios: {r:.3f}x -> "
                  f"{'PASS' if good else 'FAIL'} (bar >= 0.95x, max|diff| <= 1e-4)")
        tfast = med["bsrn torch fast path"]
        for k in externals:
            print(f"  torch fast path vs {k}: {med[k] / tfast:.2f}x")
        if args.official:
            r = med["official code, eager"] / med["bsrn plain model"]
            ok &= r >= 1.0
            print(f"  plain model vs official code: {r:.2f}x -> {'PASS' if r >= 1.0 else 'FAIL'}"
                  " (bar >= 1.0x)")
        report["runs"][str(t)] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
