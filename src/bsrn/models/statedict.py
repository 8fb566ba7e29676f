"""Reading hyperparameters back from a state dict's keys and shapes (spandrel style).

Shared by the family detectors (``detect_bsrn``, ``detect_rfdn``, ``detect_imdn``), which sit
beside their networks with the notes on what their tensors cannot tell.
"""
from __future__ import annotations

import math
import re

import torch

StateDict = dict[str, torch.Tensor]


def has_all(sd: StateDict, *keys: str) -> bool:
    return all(k in sd for k in keys)


def count_blocks(sd: StateDict, pattern: str) -> int:
    """Number of distinct indices captured by ``pattern``'s first group (e.g. ``B(\\d+)\\.``)."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd for m in [rx.match(k)] if m})


def conv_kind(sd: StateDict, prefix: str) -> str:
    """Conv kind of the layer stored under ``prefix`` (e.g. 'B1.c1_r'): bsconv_u, bsconv_s,
    dsconv or conv. BSConvU is pw then dw on the output width; DSConv is dw on the input width,
    then pw. A square layer cannot show that difference: the stored key order decides (pw first
    in BSConvU), and callers prefer the network's non-square layers."""
    if f"{prefix}.pw1.weight" in sd:
        return "bsconv_s"
    if f"{prefix}.pw.weight" in sd:
        pw, dw = sd[f"{prefix}.pw.weight"], sd[f"{prefix}.dw.weight"]
        if pw.shape[0] != pw.shape[1]:
            return "bsconv_u" if dw.shape[0] == pw.shape[0] else "dsconv"
        keys = list(sd)
        return "bsconv_u" if keys.index(f"{prefix}.pw.weight") < keys.index(
            f"{prefix}.dw.weight") else "dsconv"
    return "conv"


def conv_in_out(sd: StateDict, prefix: str, kind: str) -> tuple[int, int]:
    """(in, out) channels of the conv layer under ``prefix``."""
    if kind == "bsconv_s":
        return sd[f"{prefix}.pw1.weight"].shape[1], sd[f"{prefix}.pw2.weight"].shape[0]
    key = f"{prefix}.pw.weight" if kind in ("bsconv_u", "dsconv") else f"{prefix}.weight"
    w = sd[key]
    return w.shape[1], w.shape[0]


def bsconv_s_p(sd: StateDict, prefix: str) -> float:
    """BSConvS's ``p`` from its mid width M' = min(Cin, max(4, ceil(p * Cin))): 0.25 whenever
    that default explains the width, else M' / Cin."""
    mid, cin = sd[f"{prefix}.pw1.weight"].shape[:2]
    if min(cin, max(4, math.ceil(0.25 * cin))) == mid:
        return 0.25
    return mid / cin


def split_pixelshuffle(width: int, channels: tuple[int, ...] = (3, 1)) -> tuple[int, int]:
    """Split a pixel-shuffle conv's output width ``out * s^2`` into (out channels, s), trying
    ``channels`` in order."""
    for ch in channels:
        if ch > 0 and width % ch == 0:
            s = math.isqrt(width // ch)
            if s * s * ch == width:
                return ch, s
    raise ValueError(f"pixel-shuffle width {width} is not channels x scale^2")
