"""The weights folder: `bsrn weights add` checks, converts and stores a checkpoint under
BSRN_HOME; `--weights NAME` then finds it from any folder; `bsrn weights list` shows every name."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bsrn
from bsrn.checkpoint import read_checkpoint, save_model
from bsrn.cli import main
from bsrn.weights_folder import list_weights, user_dir


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty BSRN_HOME, and the working folder moved somewhere else."""
    monkeypatch.setenv("BSRN_HOME", str(tmp_path / "home"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return tmp_path / "home"


def _image(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    return path


def test_add_official_then_upscale_by_name_from_any_folder(home, official, tmp_path, capsys,
                                                          one_thread):
    pth = official("net_g_BSRN_x4.pth")
    assert main(["weights", "add", str(pth)]) == 0
    assert "added net_g_BSRN_x4: bsrn x4, 352,400 params, Set5 32.35 dB" in capsys.readouterr().out
    stored = home / "weights" / "net_g_BSRN_x4.safetensors"
    assert user_dir() == home / "weights" and stored.is_file()
    sd, meta = read_checkpoint(stored)
    raw, _ = read_checkpoint(pth)
    assert meta["format"] == "bsrn/1" and meta["source"] == pth.name
    assert all(torch.equal(sd[k], v) for k, v in raw.items()) and set(sd) == set(raw)

    img = _image(Path("in.png"))  # the current folder holds neither the .pth nor the name
    assert main(["upscale", str(img), "--weights", "net_g_BSRN_x4", "-o", "by_name", "-q"]) == 0
    assert main(["upscale", str(img), "--weights", "net_g_BSRN_x4.pth", "-o", "by_file_name",
                 "-q"]) == 0
    assert main(["upscale", str(img), "--weights", str(pth), "-o", "by_path", "-q"]) == 0
    ref = np.asarray(Image.open("by_path/in_x4.png"))
    assert ref.shape == (80, 96, 3)
    assert np.array_equal(np.asarray(Image.open("by_name/in_x4.png")), ref)
    assert np.array_equal(np.asarray(Image.open("by_file_name/in_x4.png")), ref)
    assert bsrn.load_model("net_g_BSRN_x4").cfg == bsrn.load_model(pth).cfg


def test_existing_names_are_kept_unless_forced(home, tmp_path, capsys, one_thread):
    torch.manual_seed(0)
    a = save_model(bsrn.create_model("bsrn", scale=2, num_feat=8, num_block=1),
                   tmp_path / "a.pth")
    b = save_model(bsrn.create_model("bsrn", scale=3, num_feat=8, num_block=1),
                   tmp_path / "b.pth")
    assert main(["weights", "add", str(a), "--name", "mine"]) == 0
    before = (home / "weights" / "mine.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["weights", "add", str(b), "--name", "mine"]) == 1
    err = capsys.readouterr().err
    assert "mine: already in" in err and "--force" in err and err.count("\n") == 1
    assert (home / "weights" / "mine.safetensors").read_bytes() == before
    assert main(["weights", "add", str(b), "--name", "mine", "--force"]) == 0
    assert bsrn.load_model("mine").scale == 3
    assert main(["weights", "add", str(a), "--name", "bsrn-x4"]) == 1  # bundled names are taken
    assert main(["weights", "add", str(a), "--name", "../up"]) == 1
    assert "a weights name is" in capsys.readouterr().err
    assert bsrn.load_model("bsrn-x4").cfg.num_feat == 64
    assert main(["weights", "remove", "mine"]) == 0
    assert main(["weights", "remove", "mine"]) == 1


def test_list_shows_every_name_with_arch_scale_params_and_set5(home, tmp_path, capsys,
                                                              one_thread):
    torch.manual_seed(0)
    model = bsrn.create_model("rfdn", scale=2, num_feat=8, num_block=1)
    path = save_model(model, tmp_path / "tiny.safetensors", metadata={"iterations": "123"})
    assert main(["weights", "add", str(path), "--set5", "30.5"]) == 0
    assert read_checkpoint(home / "weights" / "tiny.safetensors")[1]["iterations"] == "123"
    capsys.readouterr()
    assert main(["weights", "list"]) == 0
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]]
            for r in capsys.readouterr().out.splitlines() if r.startswith("| ")}
    params = sum(p.numel() for p in model.parameters())
    assert rows["tiny"][:5] == ["user", "rfdn", "x2", f"{params:,}", "30.50"]
    assert rows["bsrn-x2"][:5] == ["bundled", "bsrn", "x2", "331,628", "36.58"]
    assert rows["bsrn-x3"][4] == "33.07" and rows["bsrn-x4"][4] == "31.03"
    assert [e.name for e in list_weights()] == ["bsrn-x2", "bsrn-x3", "bsrn-x4", "tiny"]
    (home / "weights" / "junk.safetensors").write_bytes(b"not safetensors")
    entries = {e.name: e for e in list_weights()}
    assert entries["junk"].arch == "?" and "junk.safetensors: cannot read" in \
        entries["junk"].description and entries["tiny"].arch == "rfdn"


def test_set5_is_measured_when_a_folder_is_given(home, tmp_path, dataset, one_thread):
    from bsrn.evaluate import evaluate
    from bsrn.weights_folder import add_weights

    torch.manual_seed(0)
    model = bsrn.create_model("bsrn", scale=4, num_feat=8, num_block=1).eval()
    path = save_model(model, tmp_path / "t.pth")
    entry = add_weights(path, set5=dataset("Set5"), progress=False)
    expected = evaluate(model, dataset("Set5"), progress=False).psnr
    assert entry.set5_psnr == pytest.approx(expected, abs=0.005)
    _, meta = read_checkpoint(entry.path)
    assert "Y-PSNR" in meta["set5_protocol"]


def test_scale_the_tensors_cannot_tell_is_asked_for(home, tmp_path, capsys, one_thread):
    torch.manual_seed(0)
    model = bsrn.create_model("bsrn", scale=3, num_feat=8, num_block=1, upsampler="pa")
    path = save_model(model, tmp_path / "pa3.pth")
    assert main(["weights", "add", str(path)]) == 1
    assert "x2 or x3" in capsys.readouterr().err
    assert main(["weights", "add", str(path), "--scale", "3"]) == 0
    assert bsrn.load_model("pa3").scale == 3  # stored in the metadata: no hint needed now


def test_a_checkpoint_that_gives_no_image_is_refused(home, tmp_path, capsys, one_thread):
    model = bsrn.create_model("bsrn", scale=2, num_feat=8, num_block=1)
    with torch.no_grad():
        model.c1.weight.fill_(3e38)  # finite (passes the tensor checks), overflows in use
    path = save_model(model, tmp_path / "broken.pth")
    assert main(["weights", "add", str(path)]) == 1
    assert "broken.pth: the network gives no usable output" in capsys.readouterr().err
    assert not (home / "weights" / "broken.safetensors").exists()


def test_default_folder_is_the_platform_user_data_folder(monkeypatch):
    import platformdirs

    monkeypatch.delenv("BSRN_HOME", raising=False)
    assert user_dir() == Path(platformdirs.user_data_dir("bsrn", appauthor=False)) / "weights"
