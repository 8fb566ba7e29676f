"""Convolution building blocks: BSConvU, BSConvS, DSConv, plain conv, and activations by name.

BSConv: Haase & Amthor, "Rethinking Depthwise Separable Convolutions" (CVPR 2020).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Canonical conv kind names, with the official-code spellings accepted as aliases.
CONV_KINDS = ("bsconv_u", "bsconv_s", "dsconv", "conv")
_CONV_ALIASES = {
    "bsconvu": "bsconv_u", "bsconv_u": "bsconv_u",
    "bsconvs": "bsconv_s", "bsconv_s": "bsconv_s",
    "depthwiseconv": "dsconv", "dsconv": "dsconv",
    "conv": "conv", "conv2d": "conv",
}

ACTIVATIONS = ("gelu", "relu", "lrelu", "hswish", "silu")


def canonical_conv(kind: str) -> str:
    """Map a conv name (ours or the official code's) to one of CONV_KINDS."""
    key = kind.replace("-", "_").lower()
    if key not in _CONV_ALIASES:
        raise ValueError(f"unknown conv kind {kind!r}; choose one of {', '.join(CONV_KINDS)}")
    return _CONV_ALIASES[key]


def make_activation(name: str, negative_slope: float = 0.05) -> nn.Module:
    """Activation by name: gelu (exact erf form, as in BSRN), relu, lrelu, hswish, silu."""
    name = name.lower()
    if name == "gelu":
        return nn.GELU()
    if name == "relu":
        return nn.ReLU()
    if name == "lrelu":
        return nn.LeakyReLU(negative_slope)
    if name == "hswish":
        return nn.Hardswish()
    if name == "silu":
        return nn.SiLU()
    raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")


def conv1x1(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    """A pointwise (1x1) convolution."""
    return nn.Conv2d(cin, cout, 1, bias=bias)


class BSConvU(nn.Module):
    """Unconstrained blueprint separable conv: pointwise (no bias) then depthwise (with bias).

    Each kernel is a blueprint: F[o, i] = pw[o, i] * dw[o]. ``pw_bias`` adds a pointwise bias,
    as in BSRN-S, whose pointwise layers are nn.Linear.
    """

    def __init__(self, cin, cout, kernel_size=3, stride=1, padding=1, dilation=1, bias=True,
                 pw_bias=False):
        super().__init__()
        self.pw = nn.Conv2d(cin, cout, 1, bias=pw_bias)
        self.dw = nn.Conv2d(cout, cout, kernel_size, stride, padding, dilation, groups=cout,
                            bias=bias)

    def forward(self, x):
        return self.dw(self.pw(x))


class BSConvS(nn.Module):
    """Subspace blueprint separable conv: pointwise Cin->M' -> pointwise M'->Cout -> depthwise.

    M' = min(Cin, max(min_mid_channels, ceil(p * Cin))). ``reg_loss`` is the BSConv-S
    orthonormality penalty ||W1 W1^T - I||_F on the reducing pointwise matrix W1 (``pw1``).
    """

    def __init__(self, cin, cout, kernel_size=3, stride=1, padding=1, dilation=1, bias=True,
                 p=0.25, min_mid_channels=4, pw_bias=False):
        super().__init__()
        mid = min(cin, max(min_mid_channels, math.ceil(p * cin)))
        self.pw1 = nn.Conv2d(cin, mid, 1, bias=pw_bias)
        self.pw2 = nn.Conv2d(mid, cout, 1, bias=pw_bias)
        self.dw = nn.Conv2d(cout, cout, kernel_size, stride, padding, dilation, groups=cout,
                            bias=bias)

    def forward(self, x):
        return self.dw(self.pw2(self.pw1(x)))

    def reg_loss(self) -> torch.Tensor:
        """Frobenius distance of W1 W1^T from the identity (unsquared, as in the BSConv code)."""
        w = self.pw1.weight.flatten(1)
        gram = w @ w.t()
        eye = torch.eye(gram.shape[0], device=w.device, dtype=w.dtype)
        return torch.linalg.matrix_norm(gram - eye, "fro")


class DSConv(nn.Module):
    """Depthwise separable conv (MobileNet order): depthwise (with bias) then pointwise (no bias)."""

    def __init__(self, cin, cout, kernel_size=3, stride=1, padding=1, dilation=1, bias=True,
                 pw_bias=False):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, kernel_size, stride, padding, dilation, groups=cin,
                            bias=bias)
        self.pw = nn.Conv2d(cin, cout, 1, bias=pw_bias)

    def forward(self, x):
        return self.pw(self.dw(x))


def make_conv(kind: str, cin: int, cout: int, kernel_size: int = 3, stride: int = 1,
              padding: int = 1, p: float = 0.25, pw_bias: bool = False) -> nn.Module:
    """A k x k conv of the given kind: bsconv_u, bsconv_s, dsconv or a plain nn.Conv2d."""
    kind = canonical_conv(kind)
    if kind == "bsconv_u":
        return BSConvU(cin, cout, kernel_size, stride, padding, pw_bias=pw_bias)
    if kind == "bsconv_s":
        return BSConvS(cin, cout, kernel_size, stride, padding, p=p, pw_bias=pw_bias)
    if kind == "dsconv":
        return DSConv(cin, cout, kernel_size, stride, padding, pw_bias=pw_bias)
    return nn.Conv2d(cin, cout, kernel_size, stride, padding)


def orthogonality_loss(model: nn.Module, alpha: float = 0.1) -> torch.Tensor:
    """alpha * sum of BSConv-S orthonormality penalties over every BSConvS in ``model``.

    Returns a zero tensor when the model has no BSConvS layer.
    """
    terms = [m.reg_loss() for m in model.modules() if isinstance(m, BSConvS)]
    if not terms:
        p = next(model.parameters())
        return p.new_zeros(())
    return alpha * torch.stack(terms).sum()


def act_(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``, computed in place on ``x`` when autograd is off (``x`` must be a fresh
    intermediate): saves an allocation and its page faults on large CPU tensors."""
    if not torch.is_grad_enabled():
        if type(act) is nn.GELU:
            return torch.ops.aten.gelu_(x, approximate=act.approximate)
        if type(act) is nn.ReLU:
            return x.relu_()
        if type(act) is nn.LeakyReLU:
            return F.leaky_relu_(x, act.negative_slope)
        if type(act) is nn.Sigmoid:
            return x.sigmoid_()
    return act(x)


def conv_act(conv: nn.Module, act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(conv(x))``; a conv into which ``bsrn.rewrite`` fused the activation
    (``applies_act``) is just called."""
    y = conv(x)
    return y if getattr(conv, "applies_act", False) else act_(act, y)


def add_(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + y``, in place on the fresh intermediate ``x`` when autograd is off."""
    return x.add_(y) if not torch.is_grad_enabled() else x + y


def mul_(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x * y``, in place on the fresh intermediate ``x`` when autograd is off."""
    return x.mul_(y) if not torch.is_grad_enabled() else x * y


def _nhwc(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last)


def pointwise_acc(acc: torch.Tensor | None, x: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """``acc + W x`` for a 1x1 conv weight slice W (Cout, Cin_part): one term of a 1x1 conv over a
    channel concatenation, so the concatenation is never built. ``acc`` None starts the sum
    (with ``bias``); otherwise ``acc`` is updated in place when autograd is off."""
    weight = weight.reshape(weight.shape[0], -1)
    if acc is None:
        return pointwise(x, weight, bias)
    if torch.is_grad_enabled() or acc.dtype != weight.dtype or x.dtype != weight.dtype:
        return acc + pointwise(x, weight)  # (under autocast the matmul is autocast too)
    if _nhwc(acc) and _nhwc(x):
        c = acc.shape[1]
        flat = acc.permute(0, 2, 3, 1).reshape(-1, c)  # a view of acc
        flat.addmm_(x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]), weight.t())
        return acc
    return acc.add_(pointwise(x, weight))


def pointwise_cat(conv: nn.Module, parts: list[torch.Tensor]) -> torch.Tensor:
    """``conv(torch.cat(parts, 1))`` for a 1x1 ``conv``; on channels_last without autograd it is
    accumulated part by part (:func:`pointwise_acc`), which skips writing the concatenation."""
    if torch.is_grad_enabled() or not all(_nhwc(p) for p in parts) or \
            parts[0].dtype != conv.weight.dtype:
        return conv(torch.cat(parts, dim=1))
    w = conv.weight.reshape(conv.weight.shape[0], -1)
    acc, i = None, 0
    for p in parts:
        acc = pointwise_acc(acc, p, w[:, i:i + p.shape[1]], conv.bias if acc is None else None)
        i += p.shape[1]
    return acc


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """A 1x1 conv with ``weight`` (Cout, Cin): a matmul over the channel dim for channels_last
    ``x`` (zero-copy NHWC view, channels_last out), ``F.conv2d`` otherwise."""
    weight = weight.reshape(weight.shape[0], -1)
    if _nhwc(x):
        return F.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)
    return F.conv2d(x, weight[:, :, None, None], bias)
