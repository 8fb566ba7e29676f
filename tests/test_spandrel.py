"""spandrel integration, tested with the real spandrel package: after ``install()``, spandrel's
own ``ModelLoader`` loads every official checkpoint into an ``ImageModelDescriptor`` whose output
equals ``bsrn.load_model``'s, with hints (size, tiling, half precision) that hold when tested.

spandrel imports torchvision at import time, for two of its architectures only: LaMa imports
``InterpolationMode`` and ``rotate``, RestoreFormer imports ``normalize``, all from
``torchvision.transforms.functional``. torchvision's PyPI build cannot load beside a CPU-only torch
of another build (``operator torchvision::nms does not exist``). When torchvision cannot be
imported, this test gives spandrel a minimal stand-in module holding exactly those names (which
raise if called; LaMa and RestoreFormer are never used here) and nothing else, and removes it from
``sys.modules`` once spandrel is imported.
"""
import enum
import importlib.util
import sys
import types

import pytest
import torch

import bsrn
from bsrn.checkpoint import save_model


def _import_spandrel():
    if importlib.util.find_spec("spandrel") is None:
        pytest.skip("spandrel is not installed (pip install 'bsrn[spandrel]')",
                    allow_module_level=True)
    try:
        import torchvision.transforms.functional  # noqa: F401
        return importlib.import_module("spandrel")
    except Exception:  # noqa: BLE001 - absent or unloadable: use the stand-in below
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]

    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision stand-in: not available in this test")

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    tv = types.ModuleType("torchvision")
    tv.transforms = types.ModuleType("torchvision.transforms")
    fn = tv.transforms.functional = types.ModuleType("torchvision.transforms.functional")
    fn.InterpolationMode, fn.rotate, fn.normalize = InterpolationMode, unavailable, unavailable
    stand_ins = {"torchvision": tv, "torchvision.transforms": tv.transforms,
                 "torchvision.transforms.functional": fn}
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module("spandrel")
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)


spandrel = _import_spandrel()
from bsrn.integrations.spandrel import install  # noqa: E402  (needs spandrel imported)

install()

# (folder, file, architecture id, scale, golden output key, tag)
FILES = [
    ("official", "net_g_BSRN_x2.pth", "BSRN", 2, "output_bsrn_x2", "64nf"),
    ("official", "net_g_BSRN_x3.pth", "BSRN", 3, "output_bsrn_x3", "64nf"),
    ("official", "net_g_BSRN_x4.pth", "BSRN", 4, "output_bsrn_x4", "64nf"),
    ("official", "net_g_BSRN-S.pth", "BSRN", 4, "output_bsrn_s_official_x4", "BSRN-S"),
    ("ntire", "team18_bsrn.pth", "BSRN", 4, "output_bsrn_s_ntire_team18_x4", "BSRN-S"),
    ("ntire", "rfdn_baseline.pth", "RFDN", 4, None, "0-255 input"),
    ("ntire", "imdn_baseline.pth", "IMDN", 4, None, "64nf"),
]
IDS = [f[1] for f in FILES]


@pytest.fixture
def path_of(official, ntire):
    return lambda where, fname: (official if where == "official" else ntire)(fname)


def test_install_registers_the_families_once():
    ids = [a.architecture.id for a in spandrel.MAIN_REGISTRY]
    assert {"BSRN", "RFDN", "IMDN"} <= set(ids)
    assert install() == []  # idempotent
    fresh = spandrel.ArchRegistry()
    assert [a.architecture.id for a in install(fresh)] == ["RFDN", "BSRN", "IMDN"]


@pytest.mark.parametrize("where,fname,arch,scale,golden_key,tag", FILES, ids=IDS)
def test_official_checkpoints_load_through_spandrel(where, fname, arch, scale, golden_key, tag,
                                                    path_of, golden, one_thread):
    path = path_of(where, fname)
    desc = spandrel.ModelLoader().load_from_file(path)
    assert isinstance(desc, spandrel.ImageModelDescriptor)
    assert desc.architecture.id == arch and desc.purpose == "SR" and tag in desc.tags
    assert (desc.scale, desc.input_channels, desc.output_channels) == (scale, 3, 3)
    esa = arch != "IMDN"
    assert desc.size_requirements.minimum == (15 if esa else 1)
    assert desc.tiling == (spandrel.ModelTiling.DISCOURAGED if esa
                           else spandrel.ModelTiling.SUPPORTED)

    x = golden["input"]
    with torch.no_grad():
        ref = bsrn.load_model(path)(x)
        raw = desc.model(x)
    out = desc(x)
    assert (raw - ref).abs().max().item() <= 1e-6
    assert (out - ref.clamp(0, 1)).abs().max().item() <= 1e-6
    if golden_key:
        assert (raw - golden[golden_key]).abs().max().item() <= 1e-5


def _psnr(a, b):
    return (-10 * torch.log10((a - b).pow(2).mean())).item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("where,fname,arch,scale,golden_key,tag", FILES, ids=IDS)
def test_half_precision_is_claimed_where_it_holds(where, fname, arch, scale, golden_key, tag,
                                                  dtype, path_of, dataset, one_thread):
    """On a photo crop, the same crop with noise, and flat white and black, fp16 / bf16 output
    is finite and matches fp32 (CCA's statistics stay fp32, so its sums cannot overflow).
    Inputs that make the fp32 network itself explode (full-range pixel noise) are not claimed."""
    import numpy as np
    from PIL import Image

    path = path_of(where, fname)
    desc = spandrel.ModelLoader().load_from_file(path)
    assert desc.supports_half and desc.supports_bfloat16
    crop = np.asarray(Image.open(dataset("Set5") / "HR" / "baby.png").convert("RGB"))[200:248,
                                                                                      200:248]
    photo = torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float() / 255
    noisy = (photo + 0.05 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(0))
             ).clamp(0, 1)
    inputs = (photo, noisy, torch.ones(1, 3, 24, 24), torch.zeros(1, 3, 24, 24))
    refs = [desc(x) for x in inputs]
    desc.to(dtype)
    try:
        for x, ref in zip(inputs, refs):
            y = desc(x.to(dtype)).float()
            assert torch.isfinite(y).all()
            assert _psnr(y, ref) > (50 if dtype == torch.float16 else 38)
    finally:
        desc.to(torch.float32)


def _tiled(desc, x, halo):
    """Left and right halves, each run with ``halo`` extra columns, pasted together."""
    w, s = x.shape[-1], desc.scale
    mid = w // 2
    left = desc.model(x[..., : mid + halo])[..., : mid * s]
    right = desc.model(x[..., mid - halo:])[..., halo * s:]
    return torch.cat([left, right], dim=-1)


@pytest.mark.parametrize("source,hint", [
    ("official:net_g_BSRN_x2.pth", "DISCOURAGED"),
    ("ntire:rfdn_baseline.pth", "DISCOURAGED"),
    ("bsrn_no_attention", "SUPPORTED"),
    ("imdn", "SUPPORTED"),
])
def test_tiling_hint_tells_the_truth(source, hint, path_of, tmp_path, one_thread):
    """SUPPORTED: halves with a halo wider than the receptive field give the whole-image output
    exactly. DISCOURAGED: they do not (CCA's whole-image statistics, ESA's wide context)."""
    if ":" in source:
        path = path_of(*source.split(":"))
    else:
        torch.manual_seed(0)
        model = bsrn.create_model(source, scale=2, num_feat=8, num_block=1).eval()
        path = save_model(model, tmp_path / "m.pth")
    desc = spandrel.ModelLoader().load_from_file(path)
    assert desc.tiling == getattr(spandrel.ModelTiling, hint)
    x = torch.rand(1, 3, 32, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (_tiled(desc, x, halo=24) - desc.model(x)).abs().max().item()
    if hint == "SUPPORTED":
        assert diff <= 1e-5
    else:
        assert diff > 1e-3


def test_bsrn_s_in_both_layouts(official, tmp_path, golden):
    """BSRN-S as published (1x1s as nn.Linear, 2-D) and as bsrn saves it (1x1 convs, 4-D)."""
    model = bsrn.load_model(official("net_g_BSRN-S.pth"))
    conv_layout = save_model(model, tmp_path / "bsrn_s.safetensors")
    desc = spandrel.ModelLoader().load_from_file(conv_layout)
    assert "BSRN-S" in desc.tags and desc.model.B1.c1_d.weight.ndim == 4
    x = golden["input"]
    with torch.no_grad():
        assert (desc.model(x) - model(x)).abs().max().item() <= 1e-6


def test_what_the_tensors_cannot_tell_is_not_guessed(tmp_path):
    torch.manual_seed(0)
    model = bsrn.create_model("bsrn", scale=3, num_feat=8, num_block=1, upsampler="nearestconv")
    with pytest.raises(ValueError, match="x2 or x3"):
        spandrel.ModelLoader().load_from_file(save_model(model, tmp_path / "x3.pth"))


def test_spandrel_architectures_are_not_claimed():
    """bsrn's key tests stay off other architectures' state dicts (spandrel's own models)."""
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.SPAN import SPAN

    from bsrn.detect import DETECTORS

    for net in (SPAN(num_in_ch=3, num_out_ch=3), Compact(num_feat=16, num_conv=2),
                ESRGAN(num_filters=8, num_blocks=1)):
        sd = net.state_dict()
        assert not any(d.matches(sd) for d in DETECTORS), type(net).__name__
