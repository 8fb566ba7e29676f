"""Architecture detection from a state dict alone (spandrel style): which network, and its
hyperparameters read back from tensor shapes. Detectors run in order; the first match wins."""
from __future__ import annotations

import math
import re
from typing import Callable

import torch

from .models.bsrn import BSRNConfig
from .models.imdn import IMDNConfig
from .models.rfdn import RFDNConfig

StateDict = dict[str, torch.Tensor]


def _count_blocks(sd: StateDict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd for m in [rx.match(k)] if m})


def _conv_kind(sd: StateDict, prefix: str) -> str:
    """Conv kind of the block stored under ``prefix`` (e.g. 'B1.c1_r')."""
    if f"{prefix}.pw1.weight" in sd:
        return "bsconv_s"
    if f"{prefix}.pw.weight" in sd:
        pw, dw = sd[f"{prefix}.pw.weight"], sd[f"{prefix}.dw.weight"]
        # BSConvU: pw then dw on the output width; DSConv: dw on the input width, then pw.
        if pw.shape[0] != pw.shape[1]:
            return "bsconv_u" if dw.shape[0] == pw.shape[0] else "dsconv"
        keys = list(sd)  # square layer: fall back on the stored order (pw first in BSConvU)
        return "bsconv_u" if keys.index(f"{prefix}.pw.weight") < keys.index(
            f"{prefix}.dw.weight") else "dsconv"
    return "conv"


def _in_out(sd: StateDict, prefix: str, kind: str) -> tuple[int, int]:
    """(in, out) channels of a conv block."""
    if kind == "bsconv_s":
        return sd[f"{prefix}.pw1.weight"].shape[1], sd[f"{prefix}.pw2.weight"].shape[0]
    if kind in ("bsconv_u", "dsconv"):
        w = sd[f"{prefix}.pw.weight"]
        return w.shape[1], w.shape[0]
    w = sd[f"{prefix}.weight"]
    return w.shape[1], w.shape[0]


def _split_out(total: int, prefer: int) -> tuple[int, int]:
    """Split an upsampler width ``out * s^2`` into (out channels, scale), preferring ``prefer``."""
    for ch in (prefer, 3, 1):
        if total % ch == 0:
            s = math.isqrt(total // ch)
            if s * s * ch == total:
                return ch, s
    raise ValueError(f"upsampler width {total} is not channels x scale^2")


def _bsconv_s_p(sd: StateDict, prefix: str) -> float:
    mid, cin = sd[f"{prefix}.pw1.weight"].shape[:2]
    if min(cin, max(4, math.ceil(0.25 * cin))) == mid:
        return 0.25
    return mid / cin


def detect_bsrn(sd: StateDict) -> BSRNConfig | None:
    if not ("fea_conv.pw.weight" in sd or "fea_conv.pw1.weight" in sd or
            "fea_conv.weight" in sd) or "B1.c5.weight" not in sd or "c1.weight" not in sd:
        return None
    if "LR_conv.weight" in sd or any(k.startswith("LR_conv.") for k in sd):
        return None
    conv = _conv_kind(sd, "fea_conv")  # fea_conv is never square, so this is unambiguous
    fea_in, num_feat = _in_out(sd, "fea_conv", conv)
    num_block = _count_blocks(sd, r"B(\d+)\.")
    pw_key = {"bsconv_u": "B1.c1_r.pw.bias", "dsconv": "B1.c1_r.pw.bias",
              "bsconv_s": "B1.c1_r.pw1.bias"}.get(conv)
    attention = "cca" if "B1.cca.conv_du.0.weight" in sd else "cw" if "B1.cw" in sd else "none"
    esa = "B1.esa.conv1.weight" in sd
    esa_conv2 = None
    if esa:
        k2 = _conv_kind(sd, "B1.esa.conv2")
        if k2 in ("bsconv_u", "dsconv") and conv in ("bsconv_u", "dsconv"):
            k2 = conv  # square f->f layer: same family as the rest of the network
        esa_conv2 = None if k2 == conv else k2
    num_in_ch = 3 if fea_in % 3 == 0 else 1
    if "upsampler.upsampleOneStep.0.weight" in sd:
        upsampler = "pixelshuffledirect"
        num_out_ch, scale = _split_out(sd["upsampler.upsampleOneStep.0.weight"].shape[0],
                                       num_in_ch)
    elif "upsampler.conv_before_upsample.0.weight" in sd and "upsampler.conv_last.weight" in sd:
        num_out_ch = sd["upsampler.conv_last.weight"].shape[0]
        if any(k.startswith("upsampler.upsample.") for k in sd):
            upsampler, scale = "pixelshuffleblock", 1
            for k, v in sd.items():
                if k.startswith("upsampler.upsample.") and k.endswith(".weight"):
                    scale *= math.isqrt(v.shape[0] // num_feat)
        else:
            upsampler = "nearestconv"
            scale = 2 ** _count_blocks(sd, r"upsampler\.conv_up\.(\d+)\.")
    elif any(k.startswith("upsampler.att.") for k in sd):
        upsampler = "pa"
        num_out_ch = sd["upsampler.conv_last.weight"].shape[0]
        scale = 2 ** _count_blocks(sd, r"upsampler\.att\.(\d+)\.")
    else:
        return None
    return BSRNConfig(
        num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat, num_block=num_block,
        scale=scale, conv=conv, esa=esa, attention=attention, replicate=fea_in // num_in_ch,
        upsampler=upsampler, p=_bsconv_s_p(sd, "B1.c1_r") if conv == "bsconv_s" else 0.25,
        pw_bias=bool(pw_key and pw_key in sd), esa_conv2=esa_conv2)


def detect_rfdn(sd: StateDict) -> RFDNConfig | None:
    if "LR_conv.weight" not in sd and "LR_conv.pw.weight" not in sd and \
            "LR_conv.pw1.weight" not in sd:
        return None
    conv = _conv_kind(sd, "fea_conv")
    num_in_ch, num_feat = _in_out(sd, "fea_conv", conv)
    num_out_ch, scale = _split_out(sd["upsampler.0.weight"].shape[0], num_in_ch)
    return RFDNConfig(num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat,
                      num_block=_count_blocks(sd, r"B(\d+)\."), scale=scale, conv=conv,
                      esa="B1.esa.conv1.weight" in sd)


def detect_imdn(sd: StateDict) -> IMDNConfig | None:
    if "model.0.weight" not in sd or not any(k.startswith("model.1.sub.") for k in sd):
        return None
    num_feat, num_in_ch = sd["model.0.weight"].shape[:2]
    num_out_ch, scale = _split_out(sd["model.2.weight"].shape[0], num_in_ch)
    return IMDNConfig(num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat,
                      num_block=_count_blocks(sd, r"model\.1\.sub\.(\d+)\.conv1\."), scale=scale)


#: (architecture, detector, signature keys used to explain near misses).
DETECTORS: list[tuple[str, Callable[[StateDict], object], tuple[str, ...]]] = [
    ("rfdn", detect_rfdn, ("fea_conv.weight", "B1.c1_r.weight", "LR_conv.weight",
                           "upsampler.0.weight")),
    ("bsrn", detect_bsrn, ("fea_conv.pw.weight", "B1.c5.weight", "B1.esa.conv1.weight",
                           "c1.weight", "upsampler.upsampleOneStep.0.weight")),
    ("imdn", detect_imdn, ("model.0.weight", "model.1.sub.0.conv1.0.weight", "model.2.weight")),
]


def detect(sd: StateDict) -> tuple[str, object]:
    """Return (architecture, config) for a state dict, or raise ValueError explaining the miss."""
    for arch, fn, _ in DETECTORS:
        try:
            cfg = fn(sd)
        except (KeyError, ValueError, IndexError) as e:
            raise ValueError(f"looks like {arch} but its tensors do not fit ({e})") from None
        if cfg is not None:
            return arch, cfg
    scores = sorted(((sum(k in sd for k in sig), arch, sig) for arch, _, sig in DETECTORS),
                    reverse=True)
    best, arch, sig = scores[0]
    sample = ", ".join(list(sd)[:4])
    raise ValueError(f"unrecognised architecture (keys start {sample}, ...); closest is {arch} "
                     f"with {best}/{len(sig)} of its signature keys")
