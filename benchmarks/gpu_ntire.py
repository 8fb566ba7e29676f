"""The NTIRE 2022 runtime protocol (``bsrn.ntire.bench_ntire``) on plain eager fp32 and on the
fast paths, in one process: mean per-image runtime over a folder, RGB PSNR, and the speed-up of
each path over plain eager fp32 (goal on a GPU: >= 3x).

    PYTHONPATH=src python3 benchmarks/gpu_ntire.py [--data DIR] [--images 100] [--json F] [--md F]

Without ``--data``, a folder of ``--images`` pairs of DIV2K valid size is synthesised from the
bundled sample photo (HR 2040x1356 by bicubic upscaling, LR 510x339 by bicubic downscaling; every
fourth image portrait 339x510, as DIV2K mixes orientations). Its PSNR is not a DIV2K score; the
runtime protocol is the challenge's.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import bsrn  # noqa: E402
from bsrn.ntire import bench_ntire  # noqa: E402
from bsrn.precision import run  # noqa: E402
from gpu_speed import gpu_parser, parse_gpu_args, write  # noqa: E402  (the sibling benchmark)

#: name -> (label, precision, optimize kwargs or None for the plain model)
PATHS = {"eager": ("plain eager fp32 (baseline)", "fp32", None),
         "fp16_graphs": ("fast path fp16 + CUDA graphs", "fp16", {"cuda_graphs": True}),
         "fp16": ("fast path fp16", "fp16", {}),
         "graphs": ("fast path + CUDA graphs fp32", "fp32", {"cuda_graphs": True}),
         "fast": ("fast path fp32", "fp32", {}),
         "bf16": ("fast path bf16", "bf16", {})}
# (in this order: if a time limit cuts the run, the baseline and the likely fastest are in)


class Path_(nn.Module):
    """One inference path as a module for bench_ntire: ``precision.run`` around a network."""

    def __init__(self, net, precision, device):
        super().__init__()
        self.net, self.precision, self.device, self.scale = net, precision, device, net.scale

    def forward(self, x):
        return run(self.net, x, self.precision, self.device)


def synthesise(root: Path, images: int, scale: int = 4, size=(339, 510)) -> Path:
    """``root/HR`` + ``root/LR_bicubic/X4`` with ``images`` pairs made from the bundled photo;
    one landscape and one portrait pair are written, the rest are hard links (or copies)."""
    from PIL import Image

    from bsrn.upscale import SAMPLE

    src = Image.open(SAMPLE).convert("RGB")
    hr_dir, lr_dir = root / "HR", root / "LR_bicubic" / f"X{scale}"
    hr_dir.mkdir(parents=True, exist_ok=True)
    lr_dir.mkdir(parents=True, exist_ok=True)
    made = {}
    for orient, (h, w) in (("land", size), ("port", size[::-1])):
        hr = src.resize((w * scale, h * scale), Image.BICUBIC)
        lr = hr.resize((w, h), Image.BICUBIC)
        made[orient] = (root / f"{orient}_hr.png", root / f"{orient}_lr.png")
        hr.save(made[orient][0])
        lr.save(made[orient][1])
    for i in range(images):
        hp, lp = made["port" if i % 4 == 3 else "land"]
        for a, b in ((hp, hr_dir / f"{i:04d}.png"), (lp, lr_dir / f"{i:04d}x{scale}.png")):
            try:
                os.link(a, b)
            except OSError:
                shutil.copyfile(a, b)
    return root


def main(argv=None):
    ap = gpu_parser(__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="validation folder (default: synthesised)")
    ap.add_argument("--images", type=int, default=100, help="synthesised pairs")
    ap.add_argument("--lr-size", default="339x510", help="LR HxW of the synthesised pairs")
    ap.add_argument("--paths", default=",".join(PATHS), help="comma list of paths to run")
    args, device = parse_gpu_args(ap, argv)
    torch.backends.cudnn.benchmark = False                   # as the challenge ran it
    model = bsrn.load_model(args.weights, device=device).eval()
    names = [n for n in args.paths.split(",") if n]
    if "eager" not in names:
        names.insert(0, "eager")
    res = {"weights": args.weights, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
           else f"CPU ({torch.get_num_threads()} threads)", "torch": torch.__version__,
           "data": args.data or f"synthesised: {args.images} pairs of LR {args.lr_size} from the "
                                "bundled sample photo", "paths": {}}
    with tempfile.TemporaryDirectory() as work:
        if args.data:
            folder = Path(args.data)
        else:
            h, w = (int(v) for v in args.lr_size.lower().split("x"))
            folder = synthesise(Path(work) / "val", args.images, model.scale, (h, w))
        shapes = [] if args.data else [(h, w), (w, h)]
        for name in names:
            label, prec, kw = PATHS[name]
            try:
                if device.type != "cuda" and (prec == "fp16" or (kw or {}).get("cuda_graphs")):
                    raise RuntimeError("needs CUDA")
                net = Path_(model if kw is None else bsrn.optimize(model, device, **kw), prec,
                            device)
                # one untimed call per LR shape first: CUDA graphs capture, cuDNN and allocator
                # start-up are not part of a per-image time
                for hw in shapes:
                    net(torch.rand(1, 3, *hw, device=device))
                (r,) = bench_ntire(net, [folder], device, warmup=1, progress=False)
                res["paths"][name] = {"label": label, "runtime_ms": r.runtime_ms,
                                      "psnr": r.psnr, "images": r.images}
            except Exception as e:
                res["paths"][name] = {"label": label,
                                      "skipped": f"{type(e).__name__}: {str(e)[:200]}"}
            base = res["paths"].get("eager", {}).get("runtime_ms")
            for p in res["paths"].values():
                if base and "runtime_ms" in p:
                    p["speedup"] = base / p["runtime_ms"]
            print(f"{label}: {res['paths'][name]}", flush=True)
            write(args.json, json.dumps(res, indent=2) + "\n")
            write(args.md, to_markdown(res))
    print(to_markdown(res))


def to_markdown(res) -> str:
    lines = [f"NTIRE 2022 runtime protocol, BSRN x4 ({res['weights']}) on {res['device_name']}, "
             f"torch {res['torch']}; data: {res['data']}. Batch 1, whole image, each forward "
             "timed alone (CUDA events on a GPU), one warm-up call per LR shape and path, "
             "cudnn.benchmark off.", "",
             "| path | mean ms / image | vs plain eager fp32 | RGB PSNR |", "|---|---|---|---|"]
    for p in res["paths"].values():
        if "skipped" in p:
            lines.append(f"| {p['label']} | skipped: {p['skipped']} | | |")
        else:
            lines.append(f"| {p['label']} | {p['runtime_ms']:.2f} | {p.get('speedup', 0):.2f}x "
                         f"| {p['psnr']:.2f} |")
    fast = [p for k, p in res["paths"].items() if k != "eager" and "speedup" in p]
    if fast:
        best = max(fast, key=lambda p: p["speedup"])
        lines += ["", f"Fastest: {best['label']}, {best['speedup']:.2f}x plain eager fp32 "
                      f"(goal >= 3x: {'met' if best['speedup'] >= 3 else 'not met'})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
