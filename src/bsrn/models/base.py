"""Shared behaviour of the network configs: plain-dict round trips for checkpoint metadata."""
from __future__ import annotations

import functools
from dataclasses import asdict, fields

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ESA_MIN_SIZE
from .blocks import act_, add_, conv_act, pointwise_acc, pointwise_cat


class ConfigMixin:
    """``to_dict`` / ``from_dict`` for a config dataclass; unknown keys are an error."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {', '.join(sorted(unknown))}")
        return cls(**d)


def sr_forward(forward):
    """Decorate a network's ``forward``: the one place that conditions its input. Inputs smaller
    than ``self.min_size`` (ESA needs 15 px) are replicate-padded at the bottom/right and the
    output cropped back; the input takes the network's ``memory_format`` (channels_last after
    ``bsrn.rewrite``) and the output comes back NCHW-contiguous."""

    @functools.wraps(forward)
    def wrapped(self, x):
        fmt = getattr(self, "memory_format", torch.contiguous_format)
        h, w = x.shape[-2:]
        m = getattr(self, "min_size", 1)
        pad = (0, max(0, m - w), 0, max(0, m - h))
        if any(pad):
            x = F.pad(x, pad, mode="replicate")
        out = forward(self, x.contiguous(memory_format=fmt))
        if any(pad):
            out = out[..., : h * self.scale, : w * self.scale]
        return out.contiguous() if fmt is not torch.contiguous_format else out

    return wrapped


class DistillationBlock(nn.Module):
    """The distillation steps shared by ESDB (BSRN) and RFDB (RFDN): three times a 1x1
    "distilled" branch ``c{i}_d`` and a shallow residual step act(conv(x) + x) ``c{i}_r``, then
    ``c4`` and the 1x1 fusion ``c5`` over the concatenation."""

    #: Convs whose output goes straight into ``act`` (``bsrn.rewrite`` may fuse the two).
    act_convs = ("c1_d", "c2_d", "c3_d", "c4")

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Stage: everything before the attention (c5's output). Four 3x3 convs deep, so a
        tile needs a 4 px halo."""
        act = self.act
        d1 = conv_act(self.c1_d, act, x)
        r1 = act_(act, add_(self.c1_r(x), x))
        d2 = conv_act(self.c2_d, act, r1)
        r2 = act_(act, add_(self.c2_r(r1), r1))
        d3 = conv_act(self.c3_d, act, r2)
        r3 = act_(act, add_(self.c3_r(r2), r2))
        r4 = conv_act(self.c4, act, r3)
        return pointwise_cat(self.c5, [d1, d2, d3, r4])


class DistillationNet(nn.Module):
    """The schedule shared by BSRN and RFDN: ``head`` -> blocks B1..Bn, each ``body`` -> ESA ->
    ``output`` -> multi-level fusion over all block outputs (``fuse``) -> ``tail``.

    Subclasses provide ``cfg`` (scale, num_feat, num_block, esa), ``head``, ``tail``, the
    ``fusion`` 1x1 conv and blocks with ``body``, ``esa``, ``attention`` and ``output``. The
    exact tiler (``bsrn.tiling``) runs the same stages block-synchronously over tiles.
    """

    @property
    def scale(self) -> int:
        return self.cfg.scale

    @property
    def min_size(self) -> int:
        return ESA_MIN_SIZE if self.cfg.esa else 1

    def blocks(self) -> list[nn.Module]:
        return [getattr(self, f"B{i + 1}") for i in range(self.cfg.num_block)]

    def fuse(self, acc: torch.Tensor | None, k: int, out: torch.Tensor) -> torch.Tensor:
        """Stage: the multi-level fusion (1x1 over cat[B1..Bn]) accumulated block by block,
        acc += W_k B_k (the fusion is linear), so the n block outputs are never stored together.
        ``acc`` is None for the first block (which adds the bias) and is updated in place when
        autograd is off."""
        c = self.cfg.num_feat
        conv = self.fusion
        w = conv.weight.reshape(c, -1)[:, k * c:(k + 1) * c]
        return pointwise_acc(acc, out, w, conv.bias if acc is None else None)

    @sr_forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.head(x)
        out, acc = fea, None
        for k, block in enumerate(self.blocks()):
            out = block(out)
            acc = self.fuse(acc, k, out)
        return self.tail(acc, fea)
