"""Detection round trips: networks built with random hyperparameters, saved as .pth and
.safetensors, come back with the same config; what tensors cannot tell is refused or taken from
stored metadata, never guessed over it."""
import random

import pytest
import torch

import bsrn
from bsrn.checkpoint import read_checkpoint, save_model
from bsrn.detect import DETECTORS, detect
from bsrn.errors import CheckpointError
from bsrn.models import BSRNConfig, IMDNConfig, RFDNConfig, build_model
from bsrn.models.blocks import ACTIVATIONS

KINDS = ("bsconv_u", "bsconv_s", "dsconv", "conv")


def _random_bsrn(rng: random.Random) -> BSRNConfig:
    conv = rng.choice(KINDS)
    ch = rng.choice((1, 3))
    feat = rng.choice((8, 12, 16, 20))
    esa = rng.random() < 0.7
    return BSRNConfig(
        num_in_ch=ch, num_out_ch=ch, num_feat=feat, num_block=rng.randint(1, 3),
        scale=rng.choice((1, 2, 3, 4)), conv=conv, activation=rng.choice(ACTIVATIONS),
        esa=esa, attention=rng.choice(("cca", "cw", "none")),
        replicate=rng.randint(1, 4),
        upsampler=rng.choice(("pixelshuffledirect", "pixelshuffleblock", "nearestconv", "pa")),
        p=rng.choice((0.25, 0.5)) if conv == "bsconv_s" and feat >= 16 else 0.25,
        pw_bias=conv != "conv" and rng.random() < 0.5,
        esa_conv2=rng.choice([None] + [k for k in ("conv", "bsconv_s") if k != conv and esa]))


def _random_rfdn(rng: random.Random) -> RFDNConfig:
    ch = rng.choice((1, 3))
    return RFDNConfig(num_in_ch=ch, num_out_ch=ch, num_feat=rng.choice((8, 10, 16)),
                      num_block=rng.randint(1, 3), scale=rng.choice((1, 2, 3, 4)),
                      conv=rng.choice(KINDS), esa=rng.random() < 0.7)


def _random_imdn(rng: random.Random) -> IMDNConfig:
    ch = rng.choice((1, 3))
    return IMDNConfig(num_in_ch=ch, num_out_ch=ch, num_feat=rng.choice((8, 16, 24)),
                      num_block=rng.randint(1, 3), scale=rng.choice((1, 2, 3, 4)))


CASES = ([("bsrn", _random_bsrn, seed) for seed in range(24)]
         + [("rfdn", _random_rfdn, seed) for seed in range(8)]
         + [("imdn", _random_imdn, seed) for seed in range(6)])


def _one_step_head(cfg) -> bool:
    """x2 and x3 'nearestconv'/'pa' heads have the same tensors (bsrn.models.bsrn.UNDETECTABLE)."""
    return getattr(cfg, "upsampler", "") in ("nearestconv", "pa") and cfg.scale in (2, 3)


def _as_detected(arch, cfg):
    """``cfg`` with the fields a bare state dict cannot carry at their assumed values."""
    d = cfg.to_dict()
    if arch == "bsrn":
        d["activation"] = "gelu"
    return type(cfg).from_dict(d)


@pytest.mark.parametrize("arch,make,seed", CASES, ids=[f"{a}-{s}" for a, _, s in CASES])
def test_random_hyperparameters_round_trip(arch, make, seed, tmp_path, one_thread):
    torch.manual_seed(seed)
    cfg = make(random.Random(seed))
    model = build_model(arch, cfg).eval()
    hint = cfg.scale if _one_step_head(cfg) else None

    # .pth: tensors only, so detection reads the config back (activation assumed GELU).
    pth = save_model(model, tmp_path / "m.pth")
    sd, meta = read_checkpoint(pth)
    assert meta == {}
    assert detect(sd, hint) == (arch, _as_detected(arch, cfg))
    if hint is not None:
        with pytest.raises(ValueError, match="x2 or x3"):
            detect(sd)

    # .safetensors: the same tensors detect the same way, and loading uses the stored config,
    # activation and scale included, with no hint.
    st = save_model(model, tmp_path / "m.safetensors")
    sd2, meta2 = read_checkpoint(st)
    assert detect(sd2, hint) == (arch, _as_detected(arch, cfg))
    loaded = bsrn.load_model(st)
    assert loaded.cfg == cfg
    x = torch.rand(1, cfg.num_in_ch, 16, 17)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("upsampler", ["nearestconv", "pa"])
def test_x3_single_step_heads_are_not_taken_for_x2(upsampler, tmp_path, one_thread):
    """Once detected as x2 with no warning; now the scale comes from metadata or the caller."""
    torch.manual_seed(0)
    model = bsrn.create_model("bsrn", scale=3, num_feat=8, num_block=1,
                              upsampler=upsampler).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    assert bsrn.load_model(save_model(model, tmp_path / "m.safetensors")).scale == 3
    pth = save_model(model, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=r"m\.pth: .*x2 or x3.*give the scale"):
        bsrn.load_model(pth)
    loaded = bsrn.load_model(pth, scale=3)
    with torch.no_grad():
        out = loaded(x)
    assert out.shape == ref.shape == (1, 3, 48, 48) and torch.equal(out, ref)
    with pytest.raises(CheckpointError, match="not x4"):
        bsrn.load_model(pth, scale=4)


def test_stored_activation_wins_over_the_guess(tmp_path, one_thread):
    torch.manual_seed(0)
    model = bsrn.create_model("bsrn_relu", scale=2, num_feat=8, num_block=1).eval()
    path = save_model(model, tmp_path / "relu.safetensors")
    sd, meta = read_checkpoint(path)
    assert detect(sd)[1].activation == "gelu"  # the tensors alone: the published assumption
    assert '"activation": "relu"' in meta["config"]
    loaded = bsrn.load_model(path)
    assert loaded.cfg.activation == "relu"
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_every_family_documents_what_its_tensors_cannot_tell():
    for d in DETECTORS:
        assert "activation" in d.undetectable, d.arch


def test_esrgan_old_layout_is_not_imdn():
    """ESRGAN's old key layout shares model.0 / model.1.sub.* with IMDN's."""
    w = torch.zeros
    sd = {"model.0.weight": w(64, 3, 3, 3), "model.0.bias": w(64),
          "model.1.sub.0.RDB1.conv1.0.weight": w(32, 64, 3, 3),
          "model.1.sub.23.weight": w(64, 64, 3, 3), "model.3.weight": w(64, 64, 3, 3),
          "model.10.weight": w(3, 64, 3, 3)}
    with pytest.raises(ValueError, match="unrecognised architecture"):
        detect(sd)
