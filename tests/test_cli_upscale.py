"""`bsrn upscale` end to end, in-process through ``bsrn.cli.main``, on files made here."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

import bsrn
from bsrn.cli import main
from bsrn.image_io import read_image, write_image
from image_files import save_image

RNG = np.random.default_rng(2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(tiny_x2_weights):
    return tiny_x2_weights


def rgb(h=12, w=10, c=3):
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def save(path, a=None, **kw):
    return save_image(path, rgb() if a is None else a, **kw)


def run(capsys, weights, *args):
    rc = main(["upscale", "--weights", weights, "--device", "cpu", "-q", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def size(path):
    with Image.open(path) as im:
        return im.size


# ----------------------------------------------------------------------------- inputs
def test_files_default_names_and_summary(tmp_path, capsys, weights):
    a, b = save(tmp_path / "a.png"), save(tmp_path / "b.jpg")
    rc, out, err = run(capsys, weights, a, b, "-o", tmp_path / "out")
    assert rc == 0, err
    assert size(tmp_path / "out" / "a_x2.png") == (20, 24)
    assert size(tmp_path / "out" / "b_x2.jpg") == (20, 24)  # --ext auto keeps JPEG
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("2 images upscaled x2 (0.00 MP -> 0.00 MP) in ")
    assert "failed" not in summary


def test_folder_recursive_and_glob(tmp_path, capsys, weights):
    src = tmp_path / "src"
    save(src / "top.png")
    save(src / "sub" / "deep.png")
    (src / "notes.txt").write_text("not an image")
    rc, _, _ = run(capsys, weights, src, "-o", tmp_path / "flat")
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "flat").rglob("*")) == ["top_x2.png"]
    rc, _, _ = run(capsys, weights, src, "-o", tmp_path / "rec", "--recursive")
    assert rc == 0
    assert (tmp_path / "rec" / "sub" / "deep_x2.png").is_file()
    assert (tmp_path / "rec" / "top_x2.png").is_file()
    for _ in range(2):  # an output folder inside the input folder is not read back as input
        rc, out, _ = run(capsys, weights, src, "-o", src / "up", "--recursive")
        assert rc == 0 and "2 images upscaled" in out
    assert not (src / "up" / "up").exists()
    save(src / "c.jpg")
    rc, out, _ = run(capsys, weights, str(src / "*.png"), "-o", tmp_path / "glob")
    assert rc == 0 and "1 image upscaled" in out
    assert [p.name for p in (tmp_path / "glob").iterdir()] == ["top_x2.png"]
    for _ in range(2):  # writing next to the inputs: earlier results are not inputs again
        rc, out, _ = run(capsys, weights, src, "-o", src)
        assert rc == 0 and "2 images upscaled" in out  # top.png, c.jpg
    assert sorted(p.name for p in src.iterdir() if p.is_file()) == [
        "c.jpg", "c_x2.jpg", "notes.txt", "top.png", "top_x2.png"]


def test_suffix_ext_and_output_file(tmp_path, capsys, weights):
    a = save(tmp_path / "in" / "a.png")
    rc, _, _ = run(capsys, weights, a, "-o", tmp_path / "o", "--suffix", "", "--ext", "jpg")
    assert rc == 0 and size(tmp_path / "o" / "a.jpg") == (20, 24)
    rgba = save(tmp_path / "in" / "t.png", rgb(c=4))
    rc, _, _ = run(capsys, weights, rgba, "-o", tmp_path / "o", "--ext", "jpg")
    assert rc == 0 and read_image(tmp_path / "o" / "t_x2.png").has_alpha  # alpha forces PNG
    rc, _, _ = run(capsys, weights, a, "-o", tmp_path / "exact name.webp")
    assert rc == 0 and read_image(tmp_path / "exact name.webp").format == "WEBP"


def test_skip_existing_and_default_replace(tmp_path, capsys, weights):
    a = save(tmp_path / "a.png")
    out = tmp_path / "o" / "a_x2.png"
    save(out, np.zeros((3, 3, 3), np.uint8))
    rc, stdout, _ = run(capsys, weights, a, "-o", tmp_path / "o", "--skip-existing")
    assert rc == 0 and size(out) == (3, 3) and "0 images upscaled" in stdout
    assert "1 skipped" in stdout
    rc, _, _ = run(capsys, weights, a, "-o", tmp_path / "o")
    assert rc == 0 and size(out) == (20, 24)  # an existing output is replaced


def test_inputs_are_never_overwritten_unless_asked(tmp_path, capsys, weights):
    a = save(tmp_path / "a.png")
    before = a.read_bytes()
    rc, out, err = run(capsys, weights, a, "-o", tmp_path, "--suffix", "")
    assert rc == 1 and a.read_bytes() == before
    assert f"{a}: output {a} would overwrite an input" in err and "1 failed" in out
    rc, _, _ = run(capsys, weights, tmp_path, "-o", tmp_path, "--suffix", "")  # as a folder
    assert rc == 1 and a.read_bytes() == before
    rc, _, _ = run(capsys, weights, a, "-o", tmp_path, "--suffix", "", "--overwrite")
    assert rc == 0 and size(a) == (20, 24)


def test_failures_are_reported_and_the_batch_continues(tmp_path, capsys, weights):
    src = tmp_path / "src"
    save(src / "good.png")
    buf = io.BytesIO()
    Image.fromarray(rgb(64, 64)).save(buf, format="PNG")
    (src / "truncated.png").write_bytes(buf.getvalue()[:300])
    (src / "random.png").write_bytes(RNG.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    (src / "empty.png").write_bytes(b"")
    (src / "text.jpg").write_text("hello")
    save(src / "big.png", rgb(40, 40))
    rc, out, err = run(capsys, weights, src, tmp_path / "missing.png", "-o", tmp_path / "o",
                       "--max-pixels", "1000")
    assert rc == 1
    assert (tmp_path / "o" / "good_x2.png").is_file()
    lines = [ln for ln in err.splitlines() if ln.startswith("bsrn upscale: error: ")]
    assert len(lines) == 6, err
    for name in ("truncated.png", "random.png", "empty.png", "text.jpg", "big.png",
                 "missing.png"):
        assert sum(name in ln for ln in lines) == 1
    assert any("big.png" in ln and "decompression-bomb limit of 1,000" in ln for ln in lines)
    assert "Traceback" not in err
    assert out.strip().splitlines()[-1].startswith("1 image upscaled x2")
    assert out.strip().endswith(", 6 failed")


def test_image_kinds_through_the_cli(tmp_path, capsys, weights):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112] = 8
    save(tmp_path / "in" / "icc.jpg", rgb(), icc_profile=icc)
    save(tmp_path / "in" / "rot.jpg", rgb(12, 10), exif=exif.tobytes())
    g16 = RNG.integers(0, 65536, (9, 9), dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "in" / "g16.png")
    save(tmp_path / "in" / "grey.png", rgb()[:, :, 0])
    Image.fromarray(rgb()).quantize(8).save(tmp_path / "in" / "pal.png")
    save(tmp_path / "in" / "tiny.png", rgb(8, 8))
    Image.fromarray(rgb(c=4), mode="CMYK").save(tmp_path / "in" / "cmyk.tif")
    write_image(tmp_path / "in" / "rgb16.png", RNG.integers(0, 65536, (6, 7, 3), dtype=np.uint16))
    save(tmp_path / "in" / "ümlaut ß 写真.png")
    rc, _, err = run(capsys, weights, tmp_path / "in", "-o", tmp_path / "o")
    assert rc == 0, err
    o = tmp_path / "o"
    with Image.open(o / "icc_x2.jpg") as im:
        assert im.info["icc_profile"] == icc
    assert size(o / "rot_x2.jpg") == (24, 20)  # orientation 8: stored 10x12 shown 12x10
    p16 = read_image(o / "g16_x2.png")
    assert p16.pixels.dtype == np.uint16 and p16.pixels.shape == (18, 18, 1)
    assert read_image(o / "grey_x2.png").pixels.shape == (24, 20, 1)
    assert read_image(o / "pal_x2.png").pixels.shape == (24, 20, 3)
    assert size(o / "tiny_x2.png") == (16, 16)
    assert read_image(o / "cmyk_x2.tif").pixels.shape == (24, 20, 3)
    p16 = read_image(o / "rgb16_x2.png")
    assert p16.pixels.dtype == np.uint16 and p16.pixels.shape == (12, 14, 3)
    assert size(o / "ümlaut ß 写真_x2.png") == (20, 24)


def test_sample_writes_result_and_side_by_side(tmp_path, capsys, weights):
    rc, out, _ = run(capsys, weights, "--sample", "-o", tmp_path / "results")
    assert rc == 0
    res = tmp_path / "results" / "sample_x2.png"
    sbs = tmp_path / "results" / "sample_x2_side_by_side.png"
    w, h = size(res)
    assert (w, h) == (2 * 224, 2 * 168)
    sw, sh = size(sbs)
    assert sw > 2 * w and sh > h
    assert f"wrote {res}" in out and f"wrote {sbs}" in out
    # The right half is the result itself, the left half the bicubic upscale of the sample.
    with Image.open(sbs) as im:
        panel = np.asarray(im)[sh - h:, sw - w:]
    np.testing.assert_array_equal(panel, read_image(res).pixels)


def test_scale_beyond_the_weights_warns_in_one_line(tmp_path, capsys, weights):
    a = save(tmp_path / "a.png", rgb(10, 10))
    rc = main(["upscale", "--weights", weights, "--device", "cpu", str(a), "-o",
               str(tmp_path / "o"), "--scale", "3"])
    out, err = capsys.readouterr()
    assert rc == 0 and size(tmp_path / "o" / "a_x3.png") == (30, 30)
    assert "bsrn upscale: warning: the weights are x2: the remaining x1.5" in err
    assert "tiny_x2.safetensors (bsrn x2) -> x3 on cpu, " in err  # the run is described
    assert " threads, torch, fp32, automatic tiling" in err
    assert out.strip().splitlines()[-1].startswith("1 image upscaled x3")


def test_usage_errors(tmp_path, capsys, weights):
    rc, _, err = run(capsys, weights)
    assert rc == 1 and "--sample" in err
    rc, _, err = run(capsys, weights, tmp_path / "nothing here.png")
    assert rc == 1 and "nothing here.png: no such file or folder" in err
    a = save(tmp_path / "a.png")
    b = save(tmp_path / "b.png")
    rc, _, err = run(capsys, weights, a, b, "-o", tmp_path / "one.png")
    assert rc == 1 and "names one file" in err
    rc, _, err = run(capsys, weights, a, "--ext", "gif")
    assert rc == 1 and "--ext" in err


def test_official_pth_weights(tmp_path, capsys, official):
    w = official("net_g_BSRN_x3.pth")
    a = save(tmp_path / "a.png", rgb(16, 16))
    rc, out, _ = run(capsys, str(w), a, "-o", tmp_path / "o")
    assert rc == 0 and size(tmp_path / "o" / "a_x3.png") == (48, 48)
    assert os.path.getsize(tmp_path / "o" / "a_x3.png") > 0
