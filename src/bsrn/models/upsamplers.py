"""Reconstruction heads. ``pixelshuffledirect`` (one 3x3 conv + PixelShuffle) is the one every
BSRN checkpoint uses; the others are the official code's alternatives."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

UPSAMPLERS = ("pixelshuffledirect", "pixelshuffleblock", "nearestconv", "pa")


class PixelShuffleDirect(nn.Module):
    """Conv C -> out*s^2 (3x3) then PixelShuffle(s): the whole upsampler in one step."""

    #: LR px of context one output pixel needs (its one 3x3 conv).
    halo = 1

    def __init__(self, scale: int, num_feat: int, num_out_ch: int):
        super().__init__()
        self.upsampleOneStep = nn.Sequential(
            nn.Conv2d(num_feat, num_out_ch * scale * scale, 3, 1, 1), nn.PixelShuffle(scale))

    def forward(self, x):
        return self.upsampleOneStep(x)


def _factors(scale: int) -> list[int]:
    """Split a scale into x2/x3 steps (4 -> [2, 2], 8 -> [2, 2, 2], 3 -> [3])."""
    if scale == 1:
        return []
    out, s = [], scale
    while s % 2 == 0:
        out.append(2)
        s //= 2
    if s == 3:
        out.append(3)
        s = 1
    if s != 1:
        raise ValueError(f"scale {scale} is not a product of 2s and at most one 3")
    return out


class PixelShuffleBlock(nn.Module):
    """Conv + LReLU, then (conv C->4C, PixelShuffle(2)) per x2 step (x3: one 9C step), conv out."""

    #: LR px of context one output pixel needs (3x3 convs at LR, at each step's resolution and at HR).
    halo = 3

    def __init__(self, scale: int, num_feat: int, num_out_ch: int):
        super().__init__()
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(num_feat, num_feat, 3, 1, 1),
                                                  nn.LeakyReLU(inplace=True))
        steps = []
        for f in _factors(scale):
            steps += [nn.Conv2d(num_feat, f * f * num_feat, 3, 1, 1), nn.PixelShuffle(f)]
        self.upsample = nn.Sequential(*steps)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x):
        return self.conv_last(self.upsample(self.conv_before_upsample(x)))


class NearestConv(nn.Module):
    """Conv + LReLU, then per step nearest upsampling + conv + LReLU(0.2); conv_hr, conv_last."""

    #: LR px of context one output pixel needs (3x3 convs at LR, at each upsampled resolution and at HR).
    halo = 3

    def __init__(self, scale: int, num_feat: int, num_out_ch: int):
        super().__init__()
        self.factors = _factors(scale)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(num_feat, num_feat, 3, 1, 1),
                                                  nn.LeakyReLU(inplace=True))
        self.conv_up = nn.ModuleList(nn.Conv2d(num_feat, num_feat, 3, 1, 1) for _ in self.factors)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x):
        x = self.conv_before_upsample(x)
        for f, conv in zip(self.factors, self.conv_up):
            x = self.lrelu(conv(F.interpolate(x, scale_factor=f, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(x)))


class PixelAttention(nn.Module):
    """PAN's pixel attention: x * sigmoid(conv1x1(x))."""

    def __init__(self, nf: int):
        super().__init__()
        self.conv = nn.Conv2d(nf, nf, 1)

    def forward(self, x):
        return x * self.conv(x).sigmoid()


class PAUpsampler(nn.Module):
    """PAN-style upsampler: per step nearest up, conv, pixel attention, LReLU, conv, LReLU."""

    #: LR px of context one output pixel needs (3x3 convs at each upsampled resolution).
    halo = 2

    def __init__(self, scale: int, num_feat: int, num_out_ch: int, unf: int = 24):
        super().__init__()
        self.factors = _factors(scale)
        chans = [num_feat] + [unf] * len(self.factors)
        self.up = nn.ModuleList(nn.Conv2d(chans[i], unf, 3, 1, 1) for i in range(len(self.factors)))
        self.att = nn.ModuleList(PixelAttention(unf) for _ in self.factors)
        self.hr = nn.ModuleList(nn.Conv2d(unf, unf, 3, 1, 1) for _ in self.factors)
        self.conv_last = nn.Conv2d(chans[-1], num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x):
        for f, up, att, hr in zip(self.factors, self.up, self.att, self.hr):
            x = up(F.interpolate(x, scale_factor=f, mode="nearest"))
            x = self.lrelu(att(x))
            x = self.lrelu(hr(x))
        return self.conv_last(x)


def make_upsampler(kind: str, scale: int, num_feat: int, num_out_ch: int) -> nn.Module:
    """Build an upsampler by name (one of UPSAMPLERS)."""
    if kind == "pixelshuffledirect":
        return PixelShuffleDirect(scale, num_feat, num_out_ch)
    if kind == "pixelshuffleblock":
        return PixelShuffleBlock(scale, num_feat, num_out_ch)
    if kind == "nearestconv":
        return NearestConv(scale, num_feat, num_out_ch)
    if kind == "pa":
        return PAUpsampler(scale, num_feat, num_out_ch)
    raise ValueError(f"unknown upsampler {kind!r}; choose one of {', '.join(UPSAMPLERS)}")
