"""The NTIRE 2022 efficient-SR runtime protocol: RGB PSNR and per-image runtime over validation
folders, with the challenge's efficiency columns (counted by :mod:`bsrn.profile`, timed by
:mod:`bsrn.timing`); folders are read with :mod:`bsrn.evaluate`'s benchmark-pair finding."""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import BsrnError
from .evaluate import benchmark_pairs, pair_dirs
from .image_io import read_rgb_uint8
from .imresize import modcrop
from .metrics import psnr, tensor_to_uint8, uint8_to_tensor
from .profile import NTIRE_LR, count_ops, count_params, estimate_peak_memory
from .timing import time_call


@dataclass
class NtireFolder:
    """RGB PSNR and runtime of one model over one validation folder (NTIRE 2022 protocol)."""

    folder: str
    images: int
    psnr: float
    runtime_ms: float
    per_image: list = field(default_factory=list, repr=False)


def ntire_pairs(folder, hr: str | None = None, lr: str | None = None, scale: int = 4):
    """(name, HR path, LR path) for a validation folder.

    Layouts (:data:`bsrn.evaluate.PAIR_LAYOUTS`): ``DIR/HR`` + ``DIR/LR_bicubic/X4/<n>x4.png``
    (EDSR pack); ``DIR/DIV2K_valid_HR`` + ``DIR/DIV2K_valid_LR_bicubic/X4`` (DIV2K); or
    explicit ``hr``/``lr`` folders. LR files are named ``<n>x4.png`` or ``<n>.png``.
    """
    if hr is None:
        d = Path(folder)
        if not d.is_dir():
            raise BsrnError(f"{d}: no such folder")
        found = pair_dirs(d, scale)
        if found is None:
            raise BsrnError(f"{d}: expected HR/ and LR_bicubic/X{scale}/ (or DIV2K_valid_HR/ and "
                            f"DIV2K_valid_LR_bicubic/X{scale}/)")
        hr, lr = found
    return benchmark_pairs(hr, lr, scale)


def bench_ntire(model: nn.Module, folders, device="cpu", warmup: int = 0,
                limit: int | None = None, progress: bool = True, border: int = 4):
    """Run the NTIRE 2022 efficient-SR protocol on each folder: one whole-image forward per LR
    image (batch 1), timed alone (CUDA events on GPU), no warm-up unless asked; SR rounded to
    uint8 and scored by RGB PSNR against the HR modcropped to the scale, ``border`` px cropped.
    ``folders`` are folder paths or (hr_dir, lr_dir) pairs. Returns a list of NtireFolder."""
    from tqdm.auto import tqdm

    dev = torch.device(device)
    model = model.eval().to(dev)
    s = model.scale
    jobs = []
    for f in folders:
        if isinstance(f, (tuple, list)):
            jobs.append((f"{Path(f[0]).name}", ntire_pairs(None, f[0], f[1], s)))
        else:
            jobs.append((Path(f).name, ntire_pairs(f, scale=s)))
    results = []
    with torch.no_grad():
        for name, pairs in jobs:
            pairs = pairs[:limit]
            if warmup:
                x = uint8_to_tensor(read_rgb_uint8(pairs[0][2])).to(dev)
                for _ in range(warmup):
                    model(x)
            rows = []
            for stem, hp, lp in tqdm(pairs, desc=f"NTIRE {name}", unit="img",
                                     disable=not progress, leave=False):
                hr = modcrop(read_rgb_uint8(hp), s)
                lr = read_rgb_uint8(lp)
                if lr.shape[0] * s != hr.shape[0] or lr.shape[1] * s != hr.shape[1]:
                    raise BsrnError(f"{lp}: size {lr.shape[1]}x{lr.shape[0]} does not match "
                                    f"{hp.name} at x{s}")
                x = uint8_to_tensor(lr).to(dev)
                y, ms = time_call(lambda: model(x), dev)
                sr = tensor_to_uint8(y)
                rows.append({"image": stem, "psnr": psnr(sr, hr, border, y_channel=False),
                             "runtime_ms": ms, "lr_hw": list(lr.shape[:2])})
            results.append(NtireFolder(name, len(rows),
                                       statistics.fmean(r["psnr"] for r in rows),
                                       statistics.fmean(r["runtime_ms"] for r in rows), rows))
    return results


NTIRE_PROTOCOL = ("NTIRE 2022 protocol: x4, batch 1, whole LR image, forward timed alone "
                  "(CUDA events + synchronize on GPU, perf_counter on CPU), no warm-up unless "
                  "--warmup; SR clamped and rounded to uint8; PSNR on RGB (not Y) against HR "
                  "modcropped to 4, border 4. Ave. time = mean over the folders' mean times. "
                  "FLOPs = MACs at 3x256x256 LR; #Acts/#Conv: Conv2d outputs/calls. Memory: "
                  "CUDA max_memory_allocated after the pass, or a CPU estimate at the largest "
                  "LR image.")


def ntire_report(model: nn.Module, label: str, folders, device="cpu", warmup: int = 0,
                 limit: int | None = None, progress: bool = True) -> dict:
    """bench_ntire plus the challenge's efficiency columns, as one dict."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.cuda.reset_peak_memory_stats(dev)
    res = bench_ntire(model, folders, dev, warmup, limit, progress)
    counts = count_ops(model, (NTIRE_LR, NTIRE_LR))
    if dev.type == "cuda":
        mem, src = torch.cuda.max_memory_allocated(dev) / 2 ** 20, "torch.cuda.max_memory_allocated"
    else:
        big = max((tuple(r["lr_hw"]) for f in res for r in f.per_image),
                  key=lambda hw: hw[0] * hw[1])
        mem = estimate_peak_memory(model, big) / 2 ** 20
        src = f"live-tensor estimate at the largest LR image {big[0]}x{big[1]}"
    return {"model": label, "scale": model.scale, "device": str(dev), "warmup": warmup,
            "folders": [asdict(f) for f in res],
            "psnr": [f.psnr for f in res],
            "runtime_ms": statistics.fmean(f.runtime_ms for f in res),
            "params": count_params(model), "flops": counts.ntire_flops,
            "activations": counts.activations, "convs": counts.convs,
            "memory_mb": mem, "memory_source": src, "protocol": NTIRE_PROTOCOL}


def format_ntire(rows: list[dict]) -> str:
    """Markdown table in the NTIRE 2022 report's columns."""
    if not rows:
        return ""
    names = " / ".join(f["folder"] for f in rows[0]["folders"])
    lines = [f"| Entry | PSNR ({names}) | Ave. time | Params | FLOPs | #Acts | Mem | #Conv |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ps = " / ".join(f"{p:.2f}" for p in r["psnr"])
        lines.append(f"| {r['model']} | {ps} | {r['runtime_ms']:.2f} ms | "
                     f"{r['params'] / 1e6:.3f} M | {r['flops'] / 1e9:.2f} G | "
                     f"{r['activations'] / 1e6:.2f} M | {r['memory_mb']:.2f} MB | {r['convs']} |")
    lines += ["", f"Device: {rows[0]['device']}. {NTIRE_PROTOCOL}"]
    return "\n".join(lines)
