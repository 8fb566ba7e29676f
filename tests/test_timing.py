"""Shared timing (bsrn.timing): statistics, warm-up accounting and interleaved repetitions."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bsrn.errors import BsrnError
from bsrn.timing import summarize, time_forward, time_interleaved


def test_summarize_against_hand_computed_statistics():
    r = summarize([5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 7.0, 8.0, 9.0], warmup=1, device="cpu")
    assert (r.mean, r.median, r.min, r.repeat) == (5.5, 5.5, 1.0, 10)
    assert r.p90 == 9.0            # nearest rank: the 9th of 10 sorted values
    assert r.timer == "perf_counter" and r.warmup == 1
    with pytest.raises(BsrnError):
        summarize([], 0, "cpu")


def test_time_forward_counts_calls():
    calls = []
    net = nn.Conv2d(3, 3, 3, padding=1)
    net.register_forward_hook(lambda *a: calls.append(1))
    r = time_forward(net, torch.rand(1, 3, 16, 16), repeat=7, warmup=2)
    assert len(calls) == 2 + 7          # the first call is the first warm-up run
    assert r.repeat == 7 and r.warmup == 2 and r.timer == "perf_counter"
    assert 0 < r.min <= r.median <= r.p90 and r.min <= r.mean
    assert r.first is not None and r.first > 0
    calls.clear()
    r = time_forward(net, torch.rand(1, 3, 16, 16), repeat=3, warmup=0)
    assert len(calls) == 3 and r.repeat == 3   # no warm-up: the first call is timed
    with pytest.raises(BsrnError):
        time_forward(net, torch.rand(1, 3, 4, 4), repeat=0)


def test_time_interleaved_alternates_and_times_each():
    order = []
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    res = time_interleaved(fns, "cpu", repeat=3, warmup=1)
    assert order == ["a", "b"] * 4
    assert set(res) == {"a", "b"} and all(r.repeat == 3 and r.min >= 0 for r in res.values())
