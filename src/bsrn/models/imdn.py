"""IMDN: Information Multi-Distillation Network (Hui et al., AIM 2019 winner), as the simplified
KAIR variant used as the NTIRE 2022 baseline (no CCA, LReLU 0.05)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import ConfigMixin, sr_forward


@dataclass
class IMDNConfig(ConfigMixin):
    """Hyperparameters of the NTIRE IMDN baseline."""

    num_in_ch: int = 3
    num_out_ch: int = 3
    num_feat: int = 64
    num_block: int = 8
    scale: int = 4


def _conv_lrelu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.LeakyReLU(0.05, inplace=True))


class IMDB(nn.Module):
    """Information multi-distillation block: three 3x3 conv + split (1/4 distilled, 3/4 kept),
    a fourth conv, 1x1 fusion, block residual."""

    def __init__(self, c: int):
        super().__init__()
        self.d, self.r = c // 4, c - c // 4
        self.conv1 = _conv_lrelu(c, c)
        self.conv2 = _conv_lrelu(self.r, c)
        self.conv3 = _conv_lrelu(self.r, c)
        self.conv4 = nn.Conv2d(self.r, self.d, 3, 1, 1)
        self.conv1x1 = nn.Conv2d(self.d * 4, c, 1)

    def forward(self, x):
        d1, r1 = torch.split(self.conv1(x), (self.d, self.r), dim=1)
        d2, r2 = torch.split(self.conv2(r1), (self.d, self.r), dim=1)
        d3, r3 = torch.split(self.conv3(r2), (self.d, self.r), dim=1)
        d4 = self.conv4(r3)
        return x + self.conv1x1(torch.cat([d1, d2, d3, d4], dim=1))


class _Body(nn.Module):
    """Blocks plus a 3x3 conv under a residual (KAIR ShortcutBlock; keys ``model.1.sub.*``)."""

    def __init__(self, c: int, n: int):
        super().__init__()
        self.sub = nn.Sequential(*[IMDB(c) for _ in range(n)], nn.Conv2d(c, c, 3, 1, 1))

    def forward(self, x):
        return x + self.sub(x)


class IMDN(nn.Module):
    """IMDN baseline: conv -> (IMDB x n -> conv) + skip -> conv + PixelShuffle. I/O in [0, 1]."""

    min_size = 1

    def __init__(self, cfg: IMDNConfig | None = None, **kwargs):
        super().__init__()
        cfg = cfg or IMDNConfig(**kwargs)
        self.cfg = cfg
        c, s = cfg.num_feat, cfg.scale
        self.model = nn.Sequential(
            nn.Conv2d(cfg.num_in_ch, c, 3, 1, 1), _Body(c, cfg.num_block),
            nn.Conv2d(c, cfg.num_out_ch * s * s, 3, 1, 1), nn.PixelShuffle(s))

    @property
    def scale(self) -> int:
        return self.cfg.scale

    @property
    def halo(self) -> int:
        """Receptive-field radius in LR px (every layer is local: 3x3 convs, no attention), so
        padded tiling with this halo is exact."""
        return 3 + 4 * self.cfg.num_block

    @sr_forward
    def forward(self, x):
        return self.model(x)


# ----------------------------------------------------------------------------- detection
# What an IMDN state dict cannot tell: its activation (LReLU(0.05), fixed in this network) and
# nothing else; its I/O is [0, 1].
UNDETECTABLE = {"activation": "an activation has no tensors: LReLU(0.05), as published"}

#: Keys every IMDN (KAIR layout) state dict has.
SIGNATURE = ("model.0.weight", "model.1.sub.0.conv1.0.weight", "model.1.sub.0.conv1x1.weight",
             "model.2.weight")


def is_imdn(sd) -> bool:
    """Key test for IMDN (no false negatives). ESRGAN's old layout also has ``model.0`` and
    ``model.1.sub.*``, but not ``conv1x1`` in its blocks."""
    return all(k in sd for k in SIGNATURE)


def detect_imdn(sd, scale: int | None = None) -> IMDNConfig | None:
    """IMDN hyperparameters read back from tensor shapes, or None when the keys are not IMDN's."""
    from .statedict import count_blocks, split_pixelshuffle

    if not is_imdn(sd):
        return None
    num_feat, num_in_ch = sd["model.0.weight"].shape[:2]
    num_out_ch, s = split_pixelshuffle(sd["model.2.weight"].shape[0], (num_in_ch, 3, 1))
    return IMDNConfig(num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat,
                      num_block=count_blocks(sd, r"model\.1\.sub\.(\d+)\.conv1\."), scale=s)
