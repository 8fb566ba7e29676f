"""RFDN: Residual Feature Distillation Network (Liu et al., AIM 2020 winner), the NTIRE 2022
reference. The ``conv`` option swaps its 3x3 convs for BSConvU/BSConvS/DSConv, which is the
baseline of BSRN's conv-decomposition ablation."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import ConfigMixin, DistillationBlock, DistillationNet

from .attention import ESA
from .blocks import act_, add_, canonical_conv, conv1x1, make_activation, make_conv


@dataclass
class RFDNConfig(ConfigMixin):
    """Hyperparameters of RFDN. ``img_range`` 255 reproduces the official 0-255 I/O."""

    num_in_ch: int = 3
    num_out_ch: int = 3
    num_feat: int = 50
    num_block: int = 4
    scale: int = 4
    conv: str = "conv"
    activation: str = "lrelu"
    esa: bool = True
    img_range: float = 1.0

    def __post_init__(self):
        self.conv = canonical_conv(self.conv)


class RFDB(DistillationBlock):
    """Residual Feature Distillation Block: three (1x1 distilled, 3x3 shallow residual) steps,
    c4, 1x1 fusion c5, ESA. It has no block residual."""

    def __init__(self, cfg: RFDNConfig):
        super().__init__()
        c, dc = cfg.num_feat, cfg.num_feat // 2
        self.c1_d = conv1x1(c, dc)
        self.c1_r = make_conv(cfg.conv, c, c, 3)
        self.c2_d = conv1x1(c, dc)
        self.c2_r = make_conv(cfg.conv, c, c, 3)
        self.c3_d = conv1x1(c, dc)
        self.c3_r = make_conv(cfg.conv, c, c, 3)
        self.c4 = make_conv(cfg.conv, c, dc, 3)
        self.c5 = conv1x1(dc * 4, c)
        self.act = make_activation(cfg.activation, 0.05)
        self.esa = ESA(c, cfg.conv, "relu") if cfg.esa else nn.Identity()

    attention = "none"

    def output(self, e, x, gate=None):
        """Stage: the block output is ESA's output (RFDB has no block residual)."""
        return e

    def forward(self, x):
        return self.output(self.esa(self.body(x)), x)


class RFDN(DistillationNet):
    """RFDN: fea_conv -> RFDB x n -> c (1x1 + LReLU) -> LR_conv + long skip -> conv + PixelShuffle.
    Takes and returns RGB in [0, 1] whatever ``img_range`` the weights were trained for."""

    def __init__(self, cfg: RFDNConfig | None = None, **kwargs):
        super().__init__()
        cfg = cfg or RFDNConfig(**kwargs)
        self.cfg = cfg
        c = cfg.num_feat
        self.fea_conv = make_conv(cfg.conv, cfg.num_in_ch, c, 3)
        for i in range(cfg.num_block):
            self.add_module(f"B{i + 1}", RFDB(cfg))
        self.c = nn.Sequential(conv1x1(c * cfg.num_block, c), make_activation(cfg.activation, 0.05))
        self.LR_conv = make_conv(cfg.conv, c, c, 3)
        s = cfg.scale
        self.upsampler = nn.Sequential(nn.Conv2d(c, cfg.num_out_ch * s * s, 3, 1, 1),
                                       nn.PixelShuffle(s))

    @property
    def fusion(self) -> nn.Conv2d:
        return self.c[0]

    def head(self, x):
        """Stage: fea_conv on the input in the weights' range (``img_range``)."""
        return self.fea_conv(x * self.cfg.img_range)

    #: LR px of context the tail needs per output pixel: LR_conv and fea_conv (recomputed for
    #: the long skip) side by side, then the upsampler's 3x3 conv.
    tail_halo = 2

    def tail(self, acc, fea):
        """Stage: act(acc) -> LR_conv + long skip -> upsampler, back to [0, 1]."""
        out = self.upsampler(add_(self.LR_conv(act_(self.c[1], acc)), fea))
        return out / self.cfg.img_range


# ----------------------------------------------------------------------------- detection
# What an RFDN state dict cannot tell, and what loading does instead. bsrn's own .safetensors
# store the config (img_range included), which is used instead of any guess.
UNDETECTABLE = {
    "activation": "an activation has no tensors: LReLU(0.05) is assumed, as published (ESA: ReLU)",
    "img_range": "the official weights take 0-255 input, others [0, 1]: probe_img_range keeps "
                 "the range under which a smooth image comes back closest to itself",
}

#: Keys of the published RFDN (plain convs), to explain near misses.
SIGNATURE = ("fea_conv.weight", "B1.c1_r.weight", "B1.c5.weight", "c.0.weight", "LR_conv.weight",
             "upsampler.0.weight")


def is_rfdn(sd) -> bool:
    """Key test for RFDN (no false negatives; hyperparameters are not checked)."""
    return ("B1.c5.weight" in sd and "c.0.weight" in sd and "upsampler.0.weight" in sd
            and any(k.startswith("LR_conv.") for k in sd))


def detect_rfdn(sd, scale: int | None = None) -> RFDNConfig | None:
    """RFDN hyperparameters read back from tensor shapes, or None when the keys are not RFDN's.
    ``img_range`` is left at 1.0: run :func:`probe_img_range` on the loaded network."""
    from .statedict import conv_in_out, conv_kind, count_blocks, split_pixelshuffle

    if not is_rfdn(sd):
        return None
    conv = conv_kind(sd, "fea_conv")
    num_in_ch, num_feat = conv_in_out(sd, "fea_conv", conv)
    num_out_ch, s = split_pixelshuffle(sd["upsampler.0.weight"].shape[0], (num_in_ch, 3, 1))
    return RFDNConfig(num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat,
                      num_block=count_blocks(sd, r"B(\d+)\."), scale=s, conv=conv,
                      esa="B1.esa.conv1.weight" in sd)


def probe_img_range(model: RFDN) -> float:
    """Set and return the input range (1 or 255) under which a smooth grey image comes back
    closest to its bilinear upscale: RFDN weights come in 0-255 (official) and [0, 1] variants
    that the tensors alone cannot name."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.1 * F.interpolate(torch.rand(1, model.cfg.num_in_ch, 6, 6, generator=g),
                                  size=(24, 24), mode="bilinear", align_corners=False)
    x = x.to(next(model.parameters()))
    ref = F.interpolate(x, scale_factor=model.scale, mode="bilinear", align_corners=False)
    best, err_best = 1.0, float("inf")
    for rng in (1.0, 255.0):
        model.cfg.img_range = rng
        with torch.no_grad():
            err = (model(x) - ref).abs().mean().item()
        if err < err_best:
            best, err_best = rng, err
    model.cfg.img_range = best
    return best
