"""MATLAB bicubic imresize: bit-exact LR of the EDSR benchmark pack (uint8 variant), a slow
per-pixel reference written from the documented algorithm (double variant), hand-derived
kernel weights, and the make-lr folder tool."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from bsrn.cli import main
from bsrn.errors import BsrnError
from bsrn.imresize import bicubic_downscale, contributions, imresize, make_lr_folder, modcrop


def _load(path):
    with Image.open(path) as im:
        return im.mode, np.asarray(im).copy()


# ----------------------------------------------------------------------------- pack LR, bit for bit
@pytest.mark.parametrize("name", ["Set5", "Set14", "B100"])
def test_uint8_variant_reproduces_every_pack_lr_file(dataset, name):
    root = dataset(name)
    hr_paths = sorted((root / "HR").glob("*.png"))
    assert hr_paths
    checked, wrong = 0, []
    for hp in hr_paths:
        mode, hr = _load(hp)
        for s in (2, 3, 4):
            lmode, lr = _load(root / "LR_bicubic" / f"X{s}" / f"{hp.stem}x{s}.png")
            assert lmode == mode
            ours = bicubic_downscale(hr, s, variant="uint8")
            checked += 1
            if ours.dtype != np.uint8 or ours.shape != lr.shape or not np.array_equal(ours, lr):
                wrong.append(f"{hp.name} x{s}")
    assert not wrong, f"{len(wrong)}/{checked} LR files differ: {wrong[:5]}"
    assert checked == 3 * len(hr_paths)


def test_double_variant_is_a_different_convention(dataset):
    """The two conventions differ by 1 level on a few percent of pixels (reference doc: ~5-15%)."""
    _, hr = _load(dataset("Set5") / "HR" / "baby.png")
    a = bicubic_downscale(hr, 4, "uint8").astype(int)
    b = bicubic_downscale(hr, 4, "double").astype(int)
    frac = np.mean(a != b)
    assert 0.01 < frac < 0.3
    assert np.abs(a - b).max() <= 3


# ----------------------------------------------------------------------------- slow reference
def _cubic(x):
    x = abs(x)
    if x <= 1:
        return 1.5 * x ** 3 - 2.5 * x ** 2 + 1
    if x < 2:
        return -0.5 * x ** 3 + 2.5 * x ** 2 - 4 * x + 2
    return 0.0


def _mirror(i, n):
    """Symmetric padding of a 0-based index (edge sample repeated)."""
    while i < 0 or i >= n:
        i = -i - 1 if i < 0 else 2 * n - 1 - i
    return i


def _resize_1d_slow(v, out_len, scale):
    """One output sample at a time, straight from the documented MATLAB algorithm."""
    n = len(v)
    res = []
    for x in range(1, out_len + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        if scale < 1:
            width = 4 / scale

            def k(d):
                return scale * _cubic(scale * d)
        else:
            width, k = 4, _cubic
        left = math.floor(u - width / 2)
        taps = [left + j for j in range(math.ceil(width) + 2)]
        ws = [k(u - t) for t in taps]
        total = sum(ws)
        res.append(sum(w / total * v[_mirror(t - 1, n)] for w, t in zip(ws, taps)))
    return res


def _imresize_slow(img, scale):
    h, w = img.shape
    oh, ow = math.ceil(h * scale), math.ceil(w * scale)
    cols = np.array([_resize_1d_slow(list(img[:, j]), oh, scale) for j in range(w)]).T
    return np.array([_resize_1d_slow(list(cols[i]), ow, scale) for i in range(oh)])


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2, 3, 0.7])
def test_float_matches_slow_reference(scale):
    rng = np.random.default_rng(0)
    img = rng.random((13, 10))
    ours = imresize(img, scale)
    ref = _imresize_slow(img, scale)
    assert ours.shape == ref.shape == (math.ceil(13 * scale), math.ceil(10 * scale))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_double_variant_rounds_once_uint8_variant_rounds_each_pass():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)
    f = np.stack([_imresize_slow(img[..., c] / 255.0, 1 / 3) for c in range(3)], axis=2)
    expected_double = np.clip(np.floor(f * 255 + 0.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(imresize(img, 1 / 3, variant="double"), expected_double)
    # uint8: height pass rounded, then width pass rounded (MATLAB on uint8 data)
    exp = np.empty((4, 3, 3), np.uint8)
    for c in range(3):
        h = np.array([_resize_1d_slow(list(img[:, j, c].astype(float)), 4, 1 / 3)
                      for j in range(9)]).T
        h = np.clip(np.floor(h + 0.5), 0, 255)
        w = np.array([_resize_1d_slow(list(h[i]), 3, 1 / 3) for i in range(4)])
        exp[..., c] = np.clip(np.floor(w + 0.5), 0, 255)
    np.testing.assert_array_equal(imresize(img, 1 / 3, variant="uint8"), exp)


def test_half_scale_weights_hand_derived():
    """x1/2 with antialiasing: interior weights are 0.5*W(0.5*d) at d = +-0.5, 1.5, 2.5, 3.5."""
    w, idx = contributions(32, 16, 0.5)
    expected = np.array([-0.0234375, -0.0703125, 0.2265625, 0.8671875,
                         0.8671875, 0.2265625, -0.0703125, -0.0234375]) / 2
    np.testing.assert_allclose(w[8], expected, atol=1e-15)
    np.testing.assert_array_equal(idx[8], np.arange(13, 21))
    np.testing.assert_array_equal(idx[0], [2, 1, 0, 0, 1, 2, 3, 4])  # mirrored left border


def test_float_input_is_unrounded_and_unclipped():
    img = np.zeros((8, 8))
    img[:, 4:] = 1.0  # a step edge: bicubic overshoots
    out = imresize(img, 2)
    assert out.dtype == np.float64 and out.shape == (16, 16)
    assert out.max() > 1.0 and out.min() < 0.0
    assert np.any(np.abs(out * 255 - np.round(out * 255)) > 1e-3)


def test_upscaling_reproduces_constants_and_ramps():
    const = np.full((6, 7, 3), 77, np.uint8)
    up = imresize(const, 3, variant="uint8")
    assert up.shape == (18, 21, 3) and np.all(up == 77)
    ramp = np.tile(np.arange(10, dtype=np.float64), (10, 1))
    up = imresize(ramp, 2)
    # Keys' cubic reproduces linear functions away from the mirrored borders:
    # output column x samples the input at u = x/2 + 1/4 (1-based), i.e. value u - 1.
    u = np.arange(1, 21) / 2 + 0.25 - 1
    np.testing.assert_allclose(up[5, 4:16], u[4:16], atol=1e-12)


def test_output_shape_argument_and_errors():
    img = np.zeros((10, 20), np.uint8)
    assert imresize(img, output_shape=(5, 7)).shape == (5, 7)
    with pytest.raises(ValueError):
        imresize(img, 0.5, variant="float16")
    with pytest.raises(ValueError):
        imresize(img)
    assert modcrop(np.zeros((13, 10)), 4).shape == (12, 8)


# ----------------------------------------------------------------------------- make-lr
@pytest.fixture
def hr_copy(dataset, tmp_path):
    src = dataset("Set14") / "HR"
    d = tmp_path / "HR"
    d.mkdir()
    for n in ("bridge", "comic", "face"):  # greyscale + odd sizes
        (d / f"{n}.png").write_bytes((src / f"{n}.png").read_bytes())
    return d


def test_make_lr_folder_matches_pack_and_resumes(hr_copy, dataset, tmp_path):
    pack = dataset("Set14") / "LR_bicubic"
    out = tmp_path / "out"
    s1 = make_lr_folder(hr_copy, out, (2, 3, 4), progress=False)
    assert (s1.written, s1.unchanged) == (9, 0)
    for f in sorted((out / "LR_bicubic").rglob("*.png")):
        mode, ours = _load(f)
        pmode, ref = _load(pack / f.parent.name / f.name)
        assert mode == pmode and np.array_equal(ours, ref), f
    victim = out / "LR_bicubic" / "X3" / "comicx3.png"
    victim.write_bytes(b"partial")
    s2 = make_lr_folder(hr_copy.parent, out, (2, 3, 4), progress=False)  # benchmark folder form
    assert (s2.written, s2.unchanged) == (1, 8)
    assert np.array_equal(_load(victim)[1], _load(pack / "X3" / "comicx3.png")[1])
    assert not list(out.rglob("*.tmp"))


def test_make_lr_cli(hr_copy, dataset, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["make-lr", str(hr_copy), str(out), "--scale", "4", "--variant", "double",
                 "--quiet"]) == 0
    assert "3 written" in capsys.readouterr().out
    _, hr = _load(hr_copy / "face.png")
    assert np.array_equal(_load(out / "LR_bicubic" / "X4" / "facex4.png")[1],
                          bicubic_downscale(hr, 4, "double"))
    assert sorted(p.name for p in (out / "LR_bicubic").iterdir()) == ["X4"]


def test_make_lr_errors(tmp_path, capsys):
    bad = tmp_path / "hr"
    bad.mkdir()
    assert main(["make-lr", str(bad), str(tmp_path / "o")]) == 1
    assert "no images found" in capsys.readouterr().err
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    assert main(["make-lr", str(bad), str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "broken.png" in err and len(err.splitlines()) == 1
    assert main(["make-lr", str(tmp_path / "nope"), str(tmp_path / "o")]) == 1
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(BsrnError):
        make_lr_folder(bad, tmp_path / "o", scales=(1,))
