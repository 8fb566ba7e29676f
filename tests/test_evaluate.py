"""The paper's evaluation protocol end to end: official BSRN weights on Set5 reproduce the
published table (MATLAB double LR) and the official implementation's numbers on the pack's
uint8 LR files; the ``bsrn eval`` CLI, its JSON, and its one-line errors."""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bsrn.checkpoint import bundled_weights, load_model
from bsrn.cli import main
from bsrn.errors import BsrnError
from bsrn.evaluate import (EvalResult, evaluate, evaluate_many, format_table, resolve_device,
                           write_json)
from bsrn.imresize import bicubic_downscale, imresize
from bsrn.metrics import psnr

PAPER = {2: (38.10, 0.9610), 3: (34.46, 0.9277), 4: (32.35, 0.8966)}  # Set5, BSRN paper table
FILES = {2: (38.0830, 0.96084), 3: (34.4502, 0.92763), 4: (32.3488, 0.89652)}  # official code
KEYS = {"dataset", "scale", "psnr", "ssim", "images", "lr_source"}


@functools.lru_cache(maxsize=None)
def _model(path):
    return load_model(path)


@functools.lru_cache(maxsize=None)
def _set5(weights, folder, lr_source):
    return evaluate(_model(weights), folder, lr_source=lr_source, progress=False)


@pytest.fixture
def set5(official, dataset):
    return lambda s, src: _set5(str(official(f"net_g_BSRN_x{s}.pth")), str(dataset("Set5")), src)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_set5_matlab_lr_reproduces_the_paper(set5, scale):
    r = set5(scale, "matlab")
    assert (r.dataset, r.scale, r.images, r.lr_source) == ("Set5", scale, 5, "matlab")
    assert (round(r.psnr, 2), round(r.ssim, 4)) == PAPER[scale]


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_set5_pack_lr_files_match_official_implementation(set5, scale):
    r = set5(scale, "files")
    assert r.lr_source == "files" and r.images == 5
    assert abs(r.psnr - FILES[scale][0]) <= 0.002
    assert abs(r.ssim - FILES[scale][1]) <= 0.0002
    assert r.psnr != set5(scale, "matlab").psnr  # the two LR conventions really differ


@pytest.fixture
def hr_only(dataset, tmp_path):
    """An HR-only benchmark folder with two Set5 images (LR must then come from MATLAB bicubic)."""
    d = tmp_path / "Mini" / "HR"
    d.mkdir(parents=True)
    for n in ("bird", "head"):
        shutil.copy(dataset("Set5") / "HR" / f"{n}.png", d / f"{n}.png")
    return d.parent


def test_cli_eval_json_table_and_images(set5, official, dataset, hr_only, tmp_path, capsys):
    out = tmp_path / "res.json"
    imgs = tmp_path / "sr"
    rc = main(["eval", "--weights", str(official("net_g_BSRN_x4.pth")), "--dataset", str(hr_only),
               "--dataset", str(dataset("Set5")), "--limit", "2", "--json", str(out),
               "--save-images", str(imgs), "--device", "cpu", "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| Mini | x4 |" in text and "| Set5 | x4 |" in text
    assert "Y (BT.601" in text and "crop border = scale" in text and "uint8" in text
    rows = json.loads(out.read_text())
    assert [set(r) for r in rows] == [KEYS, KEYS]
    assert [(r["dataset"], r["lr_source"], r["images"]) for r in rows] == [
        ("Mini", "matlab", 2), ("Set5", "files", 2)]
    # per-image scores agree with the full Set5 runs for the same images
    per = {p["image"]: p for p in set5(4, "matlab").per_image}
    assert rows[0]["psnr"] == pytest.approx((per["bird"]["psnr"] + per["head"]["psnr"]) / 2,
                                            abs=1e-9)
    per = {p["image"]: p for p in set5(4, "files").per_image}  # Set5 sorted: baby, bird
    assert rows[1]["ssim"] == pytest.approx((per["baby"]["ssim"] + per["bird"]["ssim"]) / 2,
                                            abs=1e-12)
    # saved SR images are the scored ones
    sr = np.asarray(Image.open(imgs / "Mini" / "X4" / "bird.png"))
    hr = np.asarray(Image.open(hr_only / "HR" / "bird.png"))
    assert sr.shape == hr.shape  # 288 is a multiple of 4
    bird = {p["image"]: p for p in set5(4, "matlab").per_image}["bird"]
    assert psnr(sr, hr, 4) == pytest.approx(bird["psnr"], abs=1e-9)
    assert not list(tmp_path.rglob("*.tmp"))


def test_greyscale_bridge_is_replicated(official, dataset, tmp_path):
    src = dataset("Set14")
    d = tmp_path / "Grey"
    (d / "HR").mkdir(parents=True)
    (d / "LR_bicubic" / "X4").mkdir(parents=True)
    shutil.copy(src / "HR" / "bridge.png", d / "HR" / "bridge.png")
    shutil.copy(src / "LR_bicubic" / "X4" / "bridgex4.png", d / "LR_bicubic" / "X4")
    assert Image.open(d / "HR" / "bridge.png").mode == "L"
    r = evaluate(_model(str(official("net_g_BSRN_x4.pth"))), d, progress=False)
    assert r.lr_source == "files" and r.images == 1
    assert 22 < r.psnr < 30 and 0.5 < r.ssim < 0.9  # bridge x4 is ~25 dB for light SR models


def test_evaluate_many_accepts_modules_and_tables(official, hr_only):
    model = _model(str(official("net_g_BSRN_x4.pth")))
    res = evaluate_many(model, hr_only, device="cpu", progress=False, limit=1)
    assert len(res) == 1 and isinstance(res[0], EvalResult) and res[0].images == 1
    table = format_table(res)
    assert table.splitlines()[0].startswith("| Dataset | Scale | PSNR")
    assert f"{res[0].psnr:.4f}" in table


def test_bundled_weights_name(hr_only):
    names = bundled_weights()
    if "bsrn-x4" not in names:
        pytest.skip("bundled bsrn-x4 weights not present in this checkout")
    res = evaluate_many("bsrn-x4", [hr_only], device="cpu", progress=False, limit=1)
    hr = np.asarray(Image.open(hr_only / "HR" / "bird.png"))
    bicubic = imresize(bicubic_downscale(hr, 4), 4)  # the trivial baseline on the same LR
    assert res[0].scale == 4 and res[0].psnr > psnr(bicubic, hr, 4) + 0.5


def test_write_json_is_a_plain_list(tmp_path):
    r = EvalResult("X", 2, 30.0, 0.9, 3, "files", [{"image": "a", "psnr": 30.0, "ssim": 0.9}])
    p = write_json([r], tmp_path / "sub" / "r.json")
    assert json.loads(p.read_text()) == [{"dataset": "X", "scale": 2, "psnr": 30.0, "ssim": 0.9,
                                          "images": 3, "lr_source": "files"}]


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_error_paths(official, hr_only, tmp_path, capsys):
    w = str(official("net_g_BSRN_x4.pth"))
    assert main(["eval", "--weights", w, "--dataset", str(tmp_path / "missing")]) == 1
    _one_line_error(capsys, "missing", "no such dataset folder")

    assert main(["eval", "--weights", w, "--dataset", str(hr_only), "--lr-source", "files"]) == 1
    _one_line_error(capsys, "Mini", "LR_bicubic/X4")

    assert main(["eval", "--weights", w, "--dataset", str(hr_only), "--scale", "2"]) == 1
    _one_line_error(capsys, "x4", "x2")

    bad = hr_only / "HR" / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
    assert main(["eval", "--weights", w, "--dataset", str(hr_only), "--quiet"]) == 1
    _one_line_error(capsys, "corrupt.png")

    assert main(["eval", "--weights", str(tmp_path / "nope.pth"), "--dataset",
                 str(hr_only)]) == 1
    _one_line_error(capsys, "nope.pth")

    if not torch.cuda.is_available():
        with pytest.raises(BsrnError, match="cuda"):
            resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_model_card_matches_the_shipped_weights(dataset, scale):
    """docs/models.md's Set5 row for each bundled file is what that file scores (matlab LR), and
    the margin over bicubic it states is the real one."""
    import re
    name = f"bsrn-x{scale}"
    if name not in bundled_weights():
        pytest.skip(f"bundled {name} weights not present in this checkout")
    card = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    row = re.search(rf"^\| `{name}` \|[^|]*\| \*\*([0-9.]+)\*\* / ([0-9.]+) \|.*\| ([+-][0-9.]+) dB \|"
                    rf"[^|]*\|$", card, re.M)
    bic = re.search(rf"^\| bicubic x{scale} \| \| ([0-9.]+) / ", card, re.M)
    assert row and bic, f"docs/models.md has no Set5 row for {name}"
    res = evaluate(load_model(name), dataset("Set5"), scale, lr_source="matlab", progress=False)
    assert f"{res.psnr:.2f}" == row.group(1) and f"{res.ssim:.4f}" == row.group(2)
    assert f"{res.psnr - float(bic.group(1)):+.2f}" == row.group(3)
