"""Timing of forwards: warm-up, repetitions, CUDA events or ``perf_counter``, median/mean/p90.

One place for how bsrn times things, shared by ``bsrn profile``, the NTIRE protocol and the
benchmarks. On CUDA every timed call is bracketed by CUDA events and followed by a synchronize,
so the time is the device's, not the launch's.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .errors import BsrnError


@dataclass
class Runtime:
    """Forward-pass timings in milliseconds."""

    mean: float
    median: float
    p90: float
    min: float
    repeat: int
    warmup: int
    timer: str
    first: float | None = None   # the very first call (NTIRE: no warm-up)

    def to_dict(self) -> dict:
        return asdict(self)


def sync(device: torch.device | str | None) -> None:
    """Wait for the device's queued work (a no-op off CUDA)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timer_name(device: torch.device | str) -> str:
    return "cuda events" if torch.device(device).type == "cuda" else "perf_counter"


def time_call(fn: Callable[[], object], device: torch.device | str) -> tuple[object, float]:
    """Run ``fn()`` once, timed alone: (its result, milliseconds). CUDA: events + synchronize."""
    device = torch.device(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync(device)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize(device)
        return out, float(start.elapsed_time(end))
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1e3


def summarize(times: list[float], warmup: int, device, first: float | None = None) -> Runtime:
    """Mean, median, p90 (nearest rank) and min of ``times`` (ms)."""
    if not times:
        raise BsrnError("no timings to summarize")
    t = sorted(times)
    p90 = t[min(len(t) - 1, math.ceil(0.9 * len(t)) - 1)]
    return Runtime(statistics.fmean(t), statistics.median(t), p90, t[0], len(t), warmup,
                   timer_name(device), first)


def time_forward(model, x: torch.Tensor, repeat: int = 10, warmup: int = 3,
                 progress: bool = False) -> Runtime:
    """Time ``model(x)`` under ``no_grad``: the first call is timed as ``first``; with ``warmup``
    > 0 it counts as a warm-up run, with ``warmup`` 0 as the first of ``repeat`` timed runs."""
    if repeat < 1:
        raise BsrnError(f"repeat must be >= 1, got {repeat}")
    from tqdm.auto import tqdm

    device = x.device
    times = []
    with torch.no_grad():
        _, first = time_call(lambda: model(x), device)
        bar = tqdm(total=max(0, warmup - 1) + repeat, desc="timing", unit="run",
                   disable=not progress, leave=False)
        for _ in range(max(0, warmup - 1)):
            time_call(lambda: model(x), device)
            bar.update()
        if warmup == 0:
            times.append(first)
        for _ in range(repeat - (1 if warmup == 0 else 0)):
            times.append(time_call(lambda: model(x), device)[1])
            bar.update()
        bar.close()
    return summarize(times, warmup, device, first)


def time_interleaved(fns: dict[str, Callable[[], object]], device, repeat: int = 10,
                     warmup: int = 2) -> dict[str, Runtime]:
    """Time several callables side by side: ``warmup`` untimed rounds, then ``repeat`` rounds
    in which each callable runs once in turn, so drifts in clock or load hit all of them alike."""
    if repeat < 1:
        raise BsrnError(f"repeat must be >= 1, got {repeat}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            times[k].append(time_call(fn, device)[1])
    return {k: summarize(v, warmup, device) for k, v in times.items()}
