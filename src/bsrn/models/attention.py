"""Attention used by BSRN: ESA (enhanced spatial attention) and CCA (contrast-aware channel
attention). BSRN-S's per-channel weights ``cw`` live in ESDB as a bare parameter."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import add_, conv1x1, conv_act, make_activation, make_conv, mul_

#: Smallest LR side ESA accepts: stride-2 3x3 conv then a 7x7 max-pool need H >= 15.
ESA_MIN_SIZE = 15


class ESA(nn.Module):
    """Enhanced Spatial Attention (RFANet/RFDN; BSRN variant with GELU and BSConv).

    conv1 (1x1, C->f) -> conv2 (3x3, stride 2, no padding) -> max-pool 7/3 -> act(conv_max)
    -> act(conv3) -> conv3_ -> bilinear up to (H, W) -> + conv_f(conv1 output) -> conv4 (1x1,
    f->C) -> sigmoid -> x * mask. ``conv2_kind`` overrides the conv kind of conv2 alone (BSRN-S
    uses a plain 3x3 there).
    """

    def __init__(self, num_feat: int, conv: str = "bsconv_u", act: str = "gelu", p: float = 0.25,
                 pw_bias: bool = False, conv2_kind: str | None = None):
        super().__init__()
        f = num_feat // 4
        self.conv1 = conv1x1(num_feat, f)
        self.conv_f = conv1x1(f, f)
        self.conv_max = make_conv(conv, f, f, 3, padding=1, p=p, pw_bias=pw_bias)
        self.conv2 = make_conv(conv2_kind or conv, f, f, 3, stride=2, padding=0, p=p,
                               pw_bias=pw_bias)
        self.conv3 = make_conv(conv, f, f, 3, padding=1, p=p, pw_bias=pw_bias)
        self.conv3_ = make_conv(conv, f, f, 3, padding=1, p=p, pw_bias=pw_bias)
        self.conv4 = conv1x1(f, num_feat)
        self.act = make_activation(act)
        self.gate = nn.Sigmoid()
        self.maxPooling = nn.MaxPool2d(kernel_size=7, stride=3)

    #: Convs whose output goes straight into an activation (``bsrn.rewrite`` may fuse the two):
    #: a name (into ``act``) or (name, attribute of the activation).
    act_convs = ("conv_max", "conv3", ("conv4", "gate"))

    def context(self, c2: torch.Tensor) -> torch.Tensor:
        """The low-resolution context, from conv2's output (stride 2): max-pool 7/3, then
        act(conv_max), act(conv3), conv3_; about 1/6 of the input resolution."""
        v = conv_act(self.conv_max, self.act, self.maxPooling(c2))
        return self.conv3_(conv_act(self.conv3, self.act, v))

    def mask(self, c1_: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """The spatial mask sigmoid(conv4(up + conv_f(c1_))) from conv1's output ``c1_`` and the
        upsampled context ``up`` (overwritten when autograd is off)."""
        return conv_act(self.conv4, self.gate, add_(up, self.conv_f(c1_)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1_ = self.conv1(x)
        c3 = self.context(self.conv2(c1_))
        up = F.interpolate(c3, (x.shape[2], x.shape[3]), mode="bilinear", align_corners=False)
        return mul_(self.mask(c1_, up), x)


def channel_stats(x: torch.Tensor) -> torch.Tensor:
    """CCA's per-channel statistic: population std (no epsilon) + mean over H x W.

    Two passes (mean, then mean squared deviation) in float32 whatever the input dtype, so half
    precision cannot overflow the spatial sums (the fp16 risk in the official code).
    ``torch.var_mean`` measured 2x slower on the CPU.
    """
    xf = x.float()
    mu = xf.mean(dim=(2, 3), keepdim=True)
    return (xf - mu).square_().mean(dim=(2, 3), keepdim=True).sqrt_() + mu


class CCA(nn.Module):
    """Contrast-aware Channel Attention (IMDN): y = sigmoid(MLP(std + mean)); return x * y."""

    def __init__(self, num_feat: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, num_feat // reduction)
        self.conv_du = nn.Sequential(
            nn.Conv2d(num_feat, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_feat, 1), nn.Sigmoid())

    stats = staticmethod(channel_stats)

    def gate(self, stats: torch.Tensor) -> torch.Tensor:
        """The channel gate from precomputed statistics (N, C, 1, 1) in float32."""
        return self.conv_du(stats.to(self.conv_du[0].weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.stats(x)).to(x.dtype)
