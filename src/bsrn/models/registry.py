"""Model registry: presets by name, ``create_model`` and ``list_models`` (timm style).

A preset is a function returning a config; registering it records its architecture. Configs are
dataclasses, so the same object describes a network in presets, detection and checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from .bsrn import BSRN, BSRNConfig
from .imdn import IMDN, IMDNConfig
from .rfdn import RFDN, RFDNConfig

#: Architecture name -> (config class, network class).
ARCHITECTURES: dict[str, tuple[type, type]] = {
    "bsrn": (BSRNConfig, BSRN),
    "rfdn": (RFDNConfig, RFDN),
    "imdn": (IMDNConfig, IMDN),
}


@dataclass(frozen=True)
class Preset:
    name: str
    arch: str
    make_config: Callable[..., object]
    description: str


_PRESETS: dict[str, Preset] = {}


def register_model(arch: str, description: str):
    """Decorator: register ``fn(**overrides) -> config`` under its function name."""

    def wrap(fn):
        _PRESETS[fn.__name__] = Preset(fn.__name__, arch, fn, description)
        return fn

    return wrap


def list_models(pattern: str | None = None) -> list[str]:
    """Registered preset names, optionally filtered by a substring or fnmatch pattern."""
    import fnmatch

    names = sorted(_PRESETS)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern) or pattern in n]
    return names


def get_preset(name: str) -> Preset:
    if name not in _PRESETS:
        import difflib

        close = difflib.get_close_matches(name, _PRESETS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint} (see bsrn.list_models())")
    return _PRESETS[name]


def build_model(arch: str, config) -> nn.Module:
    """Instantiate the network class of ``arch`` from a config object or dict."""
    cfg_cls, net_cls = ARCHITECTURES[arch]
    if isinstance(config, dict):
        config = cfg_cls.from_dict(config)
    return net_cls(config)


def create_model(name: str, scale: int = 4, **overrides) -> nn.Module:
    """Build a registered model: ``create_model("bsrn", scale=2, num_block=4)``."""
    preset = get_preset(name)
    cfg = preset.make_config(scale=scale, **overrides)
    return build_model(preset.arch, cfg)


def arch_of(model: nn.Module) -> str:
    """The architecture name of a network built from this registry."""
    for arch, (_, net_cls) in ARCHITECTURES.items():
        if isinstance(model, net_cls):
            return arch
    raise TypeError(f"{type(model).__name__} is not a bsrn architecture")


def _bsrn(**base):
    def make(**overrides):
        return BSRNConfig(**{**base, **overrides})

    return make


# ----------------------------------------------------------------------------- presets


@register_model("bsrn", "BSRN as published: 64 channels, 8 ESDB, BSConvU, ESA + CCA, GELU")
def bsrn(**kw):
    return BSRNConfig(**kw)


@register_model("bsrn", "BSRN-S (NTIRE 2022 entry): 48 channels, 5 blocks, channel weights "
                        "instead of CCA, biased pointwise convs, plain ESA conv2")
def bsrn_s(**kw):
    return BSRNConfig(**{**dict(num_feat=48, num_block=5, attention="cw", pw_bias=True,
                                esa_conv2="conv"), **kw})


@register_model("rfdn", "RFDN (AIM 2020): 50 channels, 4 RFDB, plain 3x3 convs")
def rfdn(**kw):
    return RFDNConfig(**kw)


@register_model("imdn", "IMDN (AIM 2019), the NTIRE 2022 baseline: 64 channels, 8 IMDB")
def imdn(**kw):
    return IMDNConfig(**kw)


# Conv decomposition ablation, on the RFDN baseline (paper, Table 1) and on BSRN itself.
for _kind in ("dsconv", "bsconv_u", "bsconv_s"):
    def _make_rfdn(_kind=_kind, **kw):
        return RFDNConfig(**{"conv": _kind, **kw})

    _make_rfdn.__name__ = f"rfdn_{_kind}"
    register_model("rfdn", f"RFDN with every 3x3 conv replaced by {_kind} (conv ablation)")(
        _make_rfdn)

for _kind in ("conv", "dsconv", "bsconv_s"):
    _fn = _bsrn(conv=_kind)
    _fn.__name__ = f"bsrn_{_kind}"
    register_model("bsrn", f"BSRN with {_kind} in place of BSConvU (conv ablation)")(_fn)

# Attention ablation.
for _name, _base, _desc in (
        ("bsrn_no_esa", dict(esa=False), "BSRN without ESA (attention ablation)"),
        ("bsrn_no_cca", dict(attention="none"), "BSRN without CCA (attention ablation)"),
        ("bsrn_no_attention", dict(esa=False, attention="none"),
         "BSRN without ESA and CCA (attention ablation)")):
    _fn = _bsrn(**_base)
    _fn.__name__ = _name
    register_model("bsrn", _desc)(_fn)

# Activation ablation (GELU is the default).
for _act in ("relu", "lrelu", "hswish", "silu"):
    _fn = _bsrn(activation=_act)
    _fn.__name__ = f"bsrn_{_act}"
    register_model("bsrn", f"BSRN with {_act} in place of GELU (activation ablation)")(_fn)


@register_model("bsrn", "BSRN-1: BSRN at RFDN's depth and width (4 blocks, 50 channels)")
def bsrn_1(**kw):
    return BSRNConfig(**{**dict(num_feat=50, num_block=4), **kw})


@register_model("bsrn", "BSRN-2: BSRN widened to 72 channels, about RFDN's params and Multi-Adds "
                        "(docs/efficiency.md)")
def bsrn_2(**kw):
    return BSRNConfig(**{**dict(num_feat=72, num_block=8), **kw})
