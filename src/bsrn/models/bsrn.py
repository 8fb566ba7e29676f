"""BSRN: Blueprint Separable Residual Network (Li et al., CVPRW 2022), and BSRN-S.

Submodule names follow the official state dict (``fea_conv``, ``B1``..``Bn``, ``c1``, ``c2``,
``upsampler``), so official checkpoints load strictly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import ConfigMixin, DistillationNet

from .attention import CCA, ESA, ESA_MIN_SIZE
from .blocks import (ACTIVATIONS, act_, add_, canonical_conv, conv1x1, conv_act, make_activation,
                     make_conv,
                     mul_)
from .upsamplers import UPSAMPLERS, make_upsampler


@dataclass
class BSRNConfig(ConfigMixin):
    """Hyperparameters of one BSRN-family network.

    ``attention`` is the block-tail channel attention: "cca" (BSRN), "cw" (BSRN-S learnable
    per-channel weights followed by ``conv_out``) or "none". ``pw_bias`` gives every pointwise
    conv a bias (BSRN-S, whose 1x1s are nn.Linear). ``esa_conv2`` overrides the conv kind of ESA's
    stride-2 conv (BSRN-S: "conv").
    """

    num_in_ch: int = 3
    num_out_ch: int = 3
    num_feat: int = 64
    num_block: int = 8
    scale: int = 4
    conv: str = "bsconv_u"
    activation: str = "gelu"
    esa: bool = True
    attention: str = "cca"
    replicate: int = 4
    upsampler: str = "pixelshuffledirect"
    p: float = 0.25
    pw_bias: bool = False
    esa_conv2: str | None = None

    def __post_init__(self):
        self.conv = canonical_conv(self.conv)
        if self.esa_conv2 is not None:
            self.esa_conv2 = canonical_conv(self.esa_conv2)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.attention not in ("cca", "cw", "none"):
            raise ValueError(f"attention must be cca, cw or none, got {self.attention!r}")
        if self.upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {self.upsampler!r}")
        if self.num_block < 1 or self.num_feat < 4 or self.replicate < 1:
            raise ValueError("need num_block >= 1, num_feat >= 4 and replicate >= 1")
        if self.scale not in (1, 2, 3, 4, 8):
            raise ValueError(f"scale must be 1, 2, 3, 4 or 8, got {self.scale}")


class ESDB(nn.Module):
    """Efficient Separable Distillation Block.

    Three distillation steps, each a 1x1 "distilled" branch ``c{i}_d`` and a BSRB (blueprint
    shallow residual block, act(BSConvU(x) + x)) ``c{i}_r``; then ``c4``, a 1x1 fusion ``c5``
    over the concatenation, ESA, channel attention, and the block residual.
    """

    def __init__(self, cfg: BSRNConfig):
        super().__init__()
        c, dc, conv = cfg.num_feat, cfg.num_feat // 2, cfg.conv
        kw = dict(p=cfg.p, pw_bias=cfg.pw_bias)
        if cfg.attention == "cw":
            self.cw = nn.Parameter(torch.normal(1.0, 0.2, size=(1, c, 1, 1)))
        self.c1_d = conv1x1(c, dc)
        self.c1_r = make_conv(conv, c, c, 3, **kw)
        self.c2_d = conv1x1(c, dc)
        self.c2_r = make_conv(conv, c, c, 3, **kw)
        self.c3_d = conv1x1(c, dc)
        self.c3_r = make_conv(conv, c, c, 3, **kw)
        self.c4 = make_conv(conv, c, dc, 3, **kw)
        self.c5 = conv1x1(dc * 4, c)
        self.esa = ESA(c, conv, cfg.activation, cfg.p, cfg.pw_bias, cfg.esa_conv2) if cfg.esa \
            else nn.Identity()
        if cfg.attention == "cca":
            self.cca = CCA(c)
        elif cfg.attention == "cw":
            self.conv_out = conv1x1(c, c)
        self.act = make_activation(cfg.activation)
        self.attention = cfg.attention

    #: Convs whose output goes straight into ``act`` (``bsrn.rewrite`` may fuse the two).
    act_convs = ("c1_d", "c2_d", "c3_d", "c4")

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Stage: distillation and fusion, everything before the attention (c5's output).
        Four 3x3 convs deep, so a tile needs a 4 px halo."""
        act = self.act
        d1 = conv_act(self.c1_d, act, x)
        r1 = act_(act, add_(self.c1_r(x), x))
        d2 = conv_act(self.c2_d, act, r1)
        r2 = act_(act, add_(self.c2_r(r1), r1))
        d3 = conv_act(self.c3_d, act, r2)
        r3 = act_(act, add_(self.c3_r(r2), r2))
        r4 = conv_act(self.c4, act, r3)
        return self.c5(torch.cat([d1, d2, d3, r4], dim=1))

    def output(self, e: torch.Tensor, x: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        """Stage: the block output from the ESA output ``e`` (overwritten when autograd is off),
        the block input ``x`` and the CCA ``gate`` (None unless attention is "cca")."""
        if self.attention == "cca":
            e = mul_(e, gate.to(e.dtype))
        elif self.attention == "cw":
            e = self.conv_out(e * self.cw)
        return add_(e, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.esa(self.body(x))
        gate = self.cca.gate(self.cca.stats(e)) if self.attention == "cca" else None
        return self.output(e, x, gate)


class BSRN(DistillationNet):
    """Blueprint Separable Residual Network.

    x (RGB in [0, 1]) -> replicate channels ``replicate`` times -> ``fea_conv`` -> ESDB x n ->
    multi-level fusion ``c1`` (1x1 over all block outputs) + act -> ``c2`` + long skip ->
    upsampler. Inputs smaller than ESA's minimum (15 px) are replicate-padded and the output
    cropped.

    The forward is a schedule over stages that every other schedule reuses (the exact tiler,
    exported stage graphs): ``head``; per block ``body``, ESA (``conv1``, ``conv2``,
    ``context``, ``mask``), CCA (``stats``, ``gate``) and ``output``; ``fuse``; ``tail``.
    With autograd off, fresh intermediates are updated in place.
    """

    def __init__(self, cfg: BSRNConfig | None = None, **kwargs):
        super().__init__()
        cfg = cfg or BSRNConfig(**kwargs)
        self.cfg = cfg
        c = cfg.num_feat
        kw = dict(p=cfg.p, pw_bias=cfg.pw_bias)
        self.fea_conv = make_conv(cfg.conv, cfg.num_in_ch * cfg.replicate, c, 3, **kw)
        for i in range(cfg.num_block):
            self.add_module(f"B{i + 1}", ESDB(cfg))
        self.c1 = conv1x1(c * cfg.num_block, c)  # the multi-level fusion (see ``fuse``)
        self.act = make_activation(cfg.activation)
        self.c2 = make_conv(cfg.conv, c, c, 3, **kw)
        self.upsampler = make_upsampler(cfg.upsampler, cfg.scale, c, cfg.num_out_ch)
        #: How often ``head`` replicates the input (1 once the replication is folded).
        self.input_replicate = cfg.replicate

    @property
    def fusion(self) -> nn.Conv2d:
        return self.c1

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Stage: the input replicated ``replicate`` times (unless folded into fea_conv by
        ``bsrn.rewrite``), then fea_conv. Its output is the first block input and the long skip."""
        if self.input_replicate > 1:
            x = torch.cat([x] * self.input_replicate, dim=1)
        return self.fea_conv(x)

    def tail(self, acc: torch.Tensor, fea: torch.Tensor) -> torch.Tensor:
        """Stage: act(acc) -> c2 + long skip ``fea`` -> upsampler (``acc`` is overwritten)."""
        return self.upsampler(add_(self.c2(act_(self.act, acc)), fea))
