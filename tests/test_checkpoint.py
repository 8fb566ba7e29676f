"""Checkpoint I/O: every official file loads with no hint, our safetensors round-trips exactly,
and bad files get one-line errors that say what is wrong."""
import pickle

import numpy as np
import pytest
import torch

import bsrn
from bsrn.checkpoint import read_checkpoint, save_model, unwrap_state_dict
from bsrn.errors import CheckpointError
from bsrn.models import BSRN, IMDN, RFDN, create_model

OFFICIAL_FILES = [
    ("official", "net_g_BSRN_x2.pth", BSRN, 2, 331_628),
    ("official", "net_g_BSRN_x3.pth", BSRN, 3, 340_283),
    ("official", "net_g_BSRN_x4.pth", BSRN, 4, 352_400),
    ("official", "net_g_BSRN-S.pth", BSRN, 4, 156_288),
    ("ntire", "team18_bsrn.pth", BSRN, 4, 156_288),
    ("ntire", "rfdn_baseline.pth", RFDN, 4, 433_448),
    ("ntire", "imdn_baseline.pth", IMDN, 4, 893_936),
]


@pytest.mark.parametrize("where,fname,cls,scale,params", OFFICIAL_FILES,
                         ids=[f[1] for f in OFFICIAL_FILES])
def test_official_checkpoints_load_without_hints(where, fname, cls, scale, params, official,
                                                 ntire):
    path = (official if where == "official" else ntire)(fname)
    model = bsrn.load_model(path)
    assert isinstance(model, cls) and model.scale == scale and not model.training
    assert sum(p.numel() for p in model.parameters()) == params
    # Loaded tensors equal the file's tensors (Linear weights reshaped to 1x1 convs).
    raw, _ = read_checkpoint(path)
    sd = model.state_dict()
    assert set(raw) == set(sd)
    for k, v in raw.items():
        assert torch.equal(sd[k].reshape(v.shape), v), k


def test_bsrn_s_linear_maps_to_conv(official):
    model = bsrn.load_model(official("net_g_BSRN-S.pth"))
    raw, _ = read_checkpoint(official("net_g_BSRN-S.pth"))
    assert raw["B1.c1_d.weight"].ndim == 2 and model.B1.c1_d.weight.shape == (24, 48, 1, 1)
    assert model.B1.cw.shape == (1, 48, 1, 1) and model.cfg.attention == "cw"
    assert model.cfg.pw_bias and model.cfg.esa_conv2 == "conv"


def _baby_x4(dataset):
    from bsrn.image_io import read_rgb_uint8
    from bsrn.imresize import bicubic_downscale, imresize, modcrop

    hr = modcrop(read_rgb_uint8(dataset("Set5") / "HR" / "baby.png"), 4)[128:320, 128:320]
    lr = bicubic_downscale(hr, 4)
    return hr, lr, imresize(lr, 4)


@pytest.mark.parametrize("fname", ["rfdn_baseline.pth", "imdn_baseline.pth"])
def test_baselines_take_unit_range_io(fname, ntire, dataset):
    """RFDN's 0-255 and IMDN's [0, 1] conventions are both hidden behind [0, 1] I/O: a real
    image comes out sharper than bicubic."""
    from bsrn.evaluate import super_resolve
    from bsrn.metrics import psnr

    hr, lr, bic = _baby_x4(dataset)
    model = bsrn.load_model(ntire(fname))
    sr = super_resolve(model, lr)
    assert psnr(sr, hr, 4) > psnr(bic, hr, 4) + 0.5
    if fname.startswith("rfdn"):
        assert model.cfg.img_range == 255.0


@pytest.mark.parametrize("name,kw", [("bsrn", dict(scale=3)), ("bsrn_s", {}),
                                     ("bsrn_hswish", dict(num_block=2)), ("rfdn_bsconv_s", {}),
                                     ("imdn", dict(num_block=2)),
                                     ("bsrn", dict(upsampler="nearestconv", scale=4))])
def test_safetensors_round_trip_is_exact(name, kw, tmp_path):
    torch.manual_seed(1)
    model = create_model(name, **kw).eval()
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = bsrn.load_model(path)
    assert type(loaded) is type(model) and loaded.cfg == model.cfg
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_pth_export_loads_by_detection(tmp_path):
    model = create_model("bsrn", scale=2, num_feat=32, num_block=3)
    path = save_model(model, tmp_path / "m.pth")
    assert set(torch.load(path, weights_only=True)) == {"params"}
    loaded = bsrn.load_model(path)
    assert loaded.cfg == model.cfg


@pytest.mark.parametrize("wrap", [lambda sd: {"params_ema": sd, "params": sd},
                                  lambda sd: {"state_dict": {f"module.{k}": v
                                                             for k, v in sd.items()}},
                                  lambda sd: {"net": sd, "step": 3}])
def test_training_containers_are_unwrapped(wrap, tmp_path):
    model = create_model("bsrn", num_feat=16, num_block=1)
    torch.save(wrap(model.state_dict()), tmp_path / "c.pth")
    assert bsrn.load_model(tmp_path / "c.pth").cfg == model.cfg


def test_mismatch_lists_missing_and_unexpected_keys(tmp_path):
    sd = create_model("bsrn", num_feat=16, num_block=2).state_dict()
    del sd["B2.cca.conv_du.2.bias"]
    sd["B2.extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as e:
        bsrn.load_model(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "bad.pth" in msg and "\n" not in msg
    assert "missing keys: B2.cca.conv_du.2.bias" in msg and "unexpected keys: B2.extra.weight" in msg


def test_unknown_architecture_is_explained(tmp_path):
    torch.save({"encoder.0.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other\.pth: unrecognised architecture"):
        bsrn.load_model(tmp_path / "other.pth")


def test_pickles_are_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"params": Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="evil.pth: cannot read weights"):
        bsrn.load_model(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", bytes(range(256)) * 4])
def test_corrupt_files_get_one_line_errors(content, tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        bsrn.load_model(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_missing_file_lists_bundled_names(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or bundled weights"):
        bsrn.load_model(tmp_path / "nope.pth")


def test_requested_scale_must_match(tmp_path):
    path = save_model(create_model("bsrn", scale=2, num_feat=16, num_block=1),
                      tmp_path / "x2.safetensors")
    with pytest.raises(CheckpointError, match="x2, but x4 was requested"):
        bsrn.load_model(path, scale=4)


def test_unwrap_rejects_non_state_dicts():
    with pytest.raises(CheckpointError, match="no state dict"):
        unwrap_state_dict({"epoch": 3, "opt": {"lr": np.float64(1.0)}}, "x.pth")
