"""BSRN: Blueprint Separable Residual Network (Li et al., CVPRW 2022), and BSRN-S.

Submodule names follow the official state dict (``fea_conv``, ``B1``..``Bn``, ``c1``, ``c2``,
``upsampler``), so official checkpoints load strictly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import CCA, ESA
from .base import ConfigMixin, DistillationBlock, DistillationNet
from .blocks import ACTIVATIONS, act_, add_, canonical_conv, conv1x1, make_activation, make_conv
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


class ESDB(DistillationBlock):
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

    def output(self, e: torch.Tensor, x: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        """Stage: the block output from the ESA output ``e`` (overwritten when autograd is off),
        the block input ``x`` and the CCA ``gate`` (None unless attention is "cca")."""
        if self.attention == "cca":
            if not torch.is_grad_enabled() and not torch.jit.is_tracing() \
                    and not torch.compiler.is_compiling():  # e * gate + x in one pass
                return torch.addcmul(x, e, gate.to(e.dtype), out=e)
            e = e * gate.to(e.dtype)
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

    @property
    def tail_halo(self) -> int:
        """LR px of context the tail needs per output pixel: c2 and fea_conv (recomputed for
        the long skip) side by side, then the upsampler."""
        return 1 + self.upsampler.halo

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Stage: the input replicated ``replicate`` times (unless folded into fea_conv by
        ``bsrn.rewrite``), then fea_conv. Its output is the first block input and the long skip."""
        if self.input_replicate > 1:
            x = torch.cat([x] * self.input_replicate, dim=1)
        return self.fea_conv(x)

    def tail(self, acc: torch.Tensor, fea: torch.Tensor) -> torch.Tensor:
        """Stage: act(acc) -> c2 + long skip ``fea`` -> upsampler (``acc`` is overwritten)."""
        return self.upsampler(add_(self.c2(act_(self.act, acc)), fea))


# ----------------------------------------------------------------------------- detection
# What a BSRN state dict cannot tell, and what detection assumes instead. bsrn's own
# .safetensors files store the whole config in their metadata; loading uses that and never these
# guesses (a tensor-only .pth, official or exported, has only its tensors).
UNDETECTABLE = {
    "activation": "an activation has no tensors: GELU is assumed, as published",
    "scale": "the 'nearestconv' and 'pa' heads take one upsampling step at both x2 and x3, with "
             "the same tensors: the caller's scale decides, and without one it is an error",
    "num_in_ch": "fea_conv sees num_in_ch x replicate channels as one width: num_in_ch is taken "
                 "as num_out_ch when that divides it, else 3, else 1",
}

#: Keys of the published BSRN, to explain near misses.
SIGNATURE = ("fea_conv.pw.weight", "B1.c5.weight", "B1.esa.conv1.weight", "c1.weight",
             "c2.pw.weight", "upsampler.upsampleOneStep.0.weight")

_FEA_KEYS = ("fea_conv.pw.weight", "fea_conv.pw1.weight", "fea_conv.weight")
_HEAD_SCALES = {0: (1,), 1: (2, 3), 2: (4,), 3: (8,)}  # nearestconv / pa: steps -> scales


def is_bsrn(sd) -> bool:
    """Key test for the BSRN family (no false negatives; hyperparameters are not checked)."""
    return ("B1.c5.weight" in sd and "c1.weight" in sd and any(k in sd for k in _FEA_KEYS)
            and not any(k.startswith("LR_conv.") for k in sd)
            and any(k.startswith("upsampler.") for k in sd))


def _head(sd, num_feat: int, scale: int | None) -> tuple[str, int, int]:
    """(upsampler kind, num_out_ch, scale) from the ``upsampler.*`` tensors."""
    import math

    from .statedict import count_blocks, split_pixelshuffle

    if "upsampler.upsampleOneStep.0.weight" in sd:
        out, s = split_pixelshuffle(sd["upsampler.upsampleOneStep.0.weight"].shape[0])
        return "pixelshuffledirect", out, s
    if "upsampler.conv_last.weight" not in sd:
        raise ValueError("upsampler has neither upsampleOneStep nor conv_last")
    out = sd["upsampler.conv_last.weight"].shape[0]
    if "upsampler.conv_before_upsample.0.weight" in sd and "upsampler.conv_hr.weight" not in sd:
        s = 1
        for k, v in sd.items():
            if k.startswith("upsampler.upsample.") and k.endswith(".weight"):
                s *= math.isqrt(v.shape[0] // num_feat)
        return "pixelshuffleblock", out, s
    if "upsampler.conv_before_upsample.0.weight" in sd:
        kind, steps = "nearestconv", count_blocks(sd, r"upsampler\.conv_up\.(\d+)\.")
    else:
        kind, steps = "pa", count_blocks(sd, r"upsampler\.up\.(\d+)\.")
    scales = _HEAD_SCALES.get(steps)
    if scales is None:
        raise ValueError(f"a {kind} head with {steps} upsampling steps")
    if len(scales) == 1:
        return kind, out, scales[0]
    if scale in scales:
        return kind, out, scale
    told = f", not x{scale}" if scale is not None else ""
    raise ValueError(f"a one-step {kind} head is x2 or x3 (its tensors are the same at both){told}"
                     "; give the scale (load_model(..., scale=3), bsrn weights add FILE --scale 3)")


def detect_bsrn(sd, scale: int | None = None) -> BSRNConfig | None:
    """BSRN/BSRN-S hyperparameters read back from tensor shapes, or None when the keys are not
    BSRN's. ``scale`` settles what the tensors cannot (see ``UNDETECTABLE``)."""
    from .statedict import bsconv_s_p, conv_in_out, conv_kind

    if not is_bsrn(sd):
        return None
    conv = conv_kind(sd, "fea_conv")  # fea_conv is never square, so this is unambiguous
    fea_in, num_feat = conv_in_out(sd, "fea_conv", conv)
    num_block = 0
    while f"B{num_block + 1}.c5.weight" in sd:
        num_block += 1
    pw_key = {"bsconv_u": "B1.c1_r.pw.bias", "dsconv": "B1.c1_r.pw.bias",
              "bsconv_s": "B1.c1_r.pw1.bias"}.get(conv)
    attention = "cca" if "B1.cca.conv_du.0.weight" in sd else "cw" if "B1.cw" in sd else "none"
    esa = "B1.esa.conv1.weight" in sd
    esa_conv2 = None
    if esa:
        k2 = conv_kind(sd, "B1.esa.conv2")
        if k2 in ("bsconv_u", "dsconv") and conv in ("bsconv_u", "dsconv"):
            k2 = conv  # a square f->f layer: the same family as the rest of the network
        esa_conv2 = None if k2 == conv else k2
    upsampler, num_out_ch, scale = _head(sd, num_feat, scale)
    num_in_ch = next(c for c in (num_out_ch, 3, 1) if fea_in % c == 0)
    return BSRNConfig(
        num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat, num_block=num_block,
        scale=scale, conv=conv, esa=esa, attention=attention, replicate=fea_in // num_in_ch,
        upsampler=upsampler, p=bsconv_s_p(sd, "B1.c1_r") if conv == "bsconv_s" else 0.25,
        pw_bias=bool(pw_key and pw_key in sd), esa_conv2=esa_conv2)
