"""spandrel support: :func:`install` registers BSRN (BSRN-S included), RFDN and IMDN in
spandrel's ``MAIN_REGISTRY``, so hosts that load models through spandrel (chaiNNer, ComfyUI,
InvokeAI, ...) load their checkpoints::

    import spandrel
    from bsrn.integrations.spandrel import install

    install()
    model = spandrel.ModelLoader().load_from_file("net_g_BSRN_x4.pth")  # ImageModelDescriptor

Each family's detector is the one ``bsrn.load_model`` uses (``bsrn.detect.DETECTORS``).
spandrel passes tensors only, never a file's metadata, so what the tensors cannot tell is
assumed as each family's ``UNDETECTABLE`` says: a BSRN trained with another activation than
GELU, or an x2/x3 model with a one-step ``nearestconv``/``pa`` head, needs ``bsrn.load_model``
on its .safetensors instead.
"""
from __future__ import annotations

from torch import nn

from ..checkpoint import _fit_shapes
from ..detect import DETECTORS, Detector
from ..models.registry import build_model
from ..models.rfdn import probe_img_range

try:
    from spandrel import (MAIN_REGISTRY, ArchRegistry, ArchSupport, Architecture,
                          ImageModelDescriptor, ModelTiling, SizeRequirements)
except ImportError as e:  # spandrel itself, or one of its imports, is missing
    raise ImportError(f"bsrn.integrations.spandrel needs spandrel ({e}); "
                      "install it with: pip install 'bsrn[spandrel]'") from e

#: spandrel architecture id per bsrn architecture.
NAMES = {"bsrn": "BSRN", "rfdn": "RFDN", "imdn": "IMDN"}


def tiling(arch: str, cfg) -> ModelTiling:
    """spandrel's tiling hint. CCA's whole-image statistics and ESA's size-dependent wide
    context make tiled output differ from whole-image output, so tiling is DISCOURAGED for any
    network with them; without them the network is local and tiles with a halo are exact."""
    glob = getattr(cfg, "esa", False) or getattr(cfg, "attention", "none") == "cca"
    return ModelTiling.DISCOURAGED if glob else ModelTiling.SUPPORTED


def tags(arch: str, cfg) -> list[str]:
    out = [f"{cfg.num_feat}nf", f"{cfg.num_block}nb"]
    if arch == "bsrn":
        if cfg.attention == "cw":
            out.insert(0, "BSRN-S")
        if cfg.conv != "bsconv_u":
            out.append(cfg.conv)
        if cfg.upsampler != "pixelshuffledirect":
            out.append(cfg.upsampler)
    if arch == "rfdn" and cfg.img_range != 1.0:
        out.append(f"0-{cfg.img_range:g} input")
    return out


class BsrnArchitecture(Architecture[nn.Module]):
    """One bsrn family as a spandrel ``Architecture``: bsrn's key test and shape reader."""

    def __init__(self, detector: Detector):
        super().__init__(id=NAMES[detector.arch], detect=detector.matches)
        self.detector = detector

    def load(self, state_dict) -> ImageModelDescriptor[nn.Module]:
        arch = self.detector.arch
        cfg = self.detector.read(state_dict, None)
        if cfg is None:
            raise ValueError(f"not a {self.name} state dict")
        model = build_model(arch, cfg)
        state_dict = _fit_shapes(model, state_dict)  # BSRN-S nn.Linear -> 1x1 conv layouts
        model.load_state_dict(state_dict, strict=True)
        if arch == "rfdn":
            probe_img_range(model)
        return ImageModelDescriptor(
            model.eval(), state_dict, architecture=self,
            purpose="SR" if cfg.scale > 1 else "Restoration", tags=tags(arch, cfg),
            # CCA's statistics are computed in fp32 whatever the dtype (the official code's
            # fp16 overflow); fp16 and bf16 are tested on every official checkpoint.
            supports_half=True, supports_bfloat16=True,
            scale=cfg.scale, input_channels=cfg.num_in_ch, output_channels=cfg.num_out_ch,
            size_requirements=SizeRequirements(minimum=model.min_size),
            tiling=tiling(arch, cfg))


ARCHITECTURES: tuple[BsrnArchitecture, ...] = tuple(BsrnArchitecture(d) for d in DETECTORS)


def install(registry: ArchRegistry | None = None) -> list[ArchSupport]:
    """Add BSRN, RFDN and IMDN to ``registry`` (default: spandrel's ``MAIN_REGISTRY``), after
    spandrel's own architectures. Idempotent; an architecture id that the registry already has
    is left as it is. Returns the entries added."""
    registry = MAIN_REGISTRY if registry is None else registry
    return registry.add(*(ArchSupport.from_architecture(a) for a in ARCHITECTURES),
                        ignore_duplicates=True)
