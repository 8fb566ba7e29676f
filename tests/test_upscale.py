"""bsrn.upscale / bsrn.Upscaler: every input kind, checked against the model's own forward.

Tiny random-weight models keep this fast; the reference is always ``model(x)`` computed here
directly from the loaded weights (no upscale code involved), rounded by hand.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bsrn
from bsrn.checkpoint import bundled_weights
from bsrn.errors import ConfigError
from bsrn.imresize import imresize
from bsrn.upscale import Upscaler

RNG = np.random.default_rng(1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(tiny_x2_weights):
    return Path(tiny_x2_weights)


@pytest.fixture(scope="module")
def up(weights):
    return Upscaler(weights, device="cpu")


@pytest.fixture(scope="module")
def ref(weights):
    """The plain model's forward on float planes in [0, 1]: (H, W, 3) -> (2H, 2W, 3)."""
    model = bsrn.load_model(weights)

    def run(rgb: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        with torch.no_grad():
            y = model(x).clamp(0, 1)
        return y[0].permute(1, 2, 0).double().numpy()

    return run


def rand(h, w, c=None, dtype=np.uint8):
    hi = 256 if dtype == np.uint8 else 65536
    return RNG.integers(0, hi, (h, w) if c is None else (h, w, c), dtype=dtype)


def rounded(y, peak):
    return np.floor(y * peak + 0.5)


def assert_close_lsb(a, b, lsb=1):
    """Equal up to one rounding step (the optimized model differs from eager by ~1e-6)."""
    diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
    assert diff.max() <= lsb and (diff > 0).mean() < 0.01


# ----------------------------------------------------------------------------- numpy
def test_rgb_uint8_matches_model_forward(up, ref):
    a = rand(20, 17, 3)
    out = up(a)
    assert out.dtype == np.uint8 and out.shape == (40, 34, 3)
    assert_close_lsb(out, rounded(ref(a / 255), 255))


def test_uint16_keeps_16_bit_precision(up, ref):
    a = rand(18, 18, 3, dtype=np.uint16)
    out = up(a)
    assert out.dtype == np.uint16 and out.shape == (36, 36, 3)
    assert_close_lsb(out, rounded(ref(a / 65535), 65535), lsb=2)
    mid = out[(out > 0) & (out < 65535)]
    assert mid.size > 100 and (mid % 257 != 0).mean() > 0.9  # not 8-bit values scaled up


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_arrays_stay_float_and_unrounded(up, ref, dtype):
    a = RNG.random((16, 19, 3)).astype(dtype)
    out = up(a)
    assert out.dtype == dtype and out.shape == (32, 38, 3)
    np.testing.assert_allclose(out, ref(a), atol=1e-5)
    assert not np.allclose(out * 255, np.round(out * 255))
    assert out.min() >= 0 and out.max() <= 1


def test_greyscale_goes_through_rgb_and_back(up, ref):
    g = rand(16, 16)
    out = up(g)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    expect = rounded(ref(np.repeat(g[:, :, None] / 255, 3, axis=2)).mean(axis=2), 255)
    assert_close_lsb(out, expect)
    assert up(g[:, :, None]).shape == (32, 32, 1)


def test_alpha_network_and_bicubic(weights, ref):
    a = rand(16, 20, 4)
    a[:, :, 3] = np.maximum(a[:, :, 3], 1)  # no fully transparent pixel: colour is not filled
    alpha = a[:, :, 3] / 255
    net = Upscaler(weights, device="cpu", alpha_upsampler="network")(a)
    bic = Upscaler(weights, device="cpu", alpha_upsampler="bicubic")(a)
    colour = rounded(ref(a[:, :, :3] / 255), 255)
    assert_close_lsb(net[:, :, :3], colour)
    assert_close_lsb(bic[:, :, :3], colour)
    expect_net = rounded(ref(np.repeat(alpha[:, :, None], 3, axis=2)).mean(axis=2), 255)
    assert_close_lsb(net[:, :, 3], expect_net)
    expect_bic = rounded(np.clip(imresize(alpha, output_shape=(32, 40)), 0, 1), 255)
    assert_close_lsb(bic[:, :, 3], expect_bic)


def test_hidden_colour_is_filled_from_visible_neighbours(up):
    from bsrn.upscale import bleed_colour

    rgb = torch.zeros(1, 3, 9, 12)
    rgb[:, 0, :, :4] = 0.8  # visible: red on the left third; hidden: black
    rgb[:, 2, :, :4] = 0.1
    visible = torch.zeros(1, 1, 9, 12, dtype=torch.bool)
    visible[..., :4] = True
    filled = bleed_colour(rgb, visible)
    expect = torch.tensor([0.8, 0.0, 0.1]).view(1, 3, 1, 1).expand(1, 3, 9, 12)
    torch.testing.assert_close(filled, expect)
    # End to end: the visible part comes out as if the hidden colour had been red all along.
    a = np.zeros((9, 12, 4), np.uint8)
    a[:, :4] = (204, 0, 26, 255)
    solid = np.broadcast_to(np.array([204, 0, 26], np.uint8), (9, 12, 3)).copy()
    np.testing.assert_array_equal(up(a)[:, :8, :3], up(solid)[:, :8])
    # Two-colour check: each hidden pixel takes a visible colour near it, never black.
    rgb[:, :, :, 8:] = torch.tensor([0.0, 0.5, 0.0]).view(1, 3, 1, 1)
    visible[..., 8:] = True
    filled = bleed_colour(rgb, visible)
    assert torch.equal(filled[..., :4], rgb[..., :4]) and torch.equal(filled[..., 8:], rgb[..., 8:])
    assert (filled[:, :, :, 4:8].amax(dim=1) > 0.4).all()


def test_opaque_alpha_stays_exactly_opaque(up):
    a = rand(16, 16, 4)
    a[:, :, 3] = 255
    assert (up(a)[:, :, 3] == 255).all()
    la = rand(16, 16, 2)
    la[:, :, 1] = 0
    assert (up(la)[:, :, 1] == 0).all()


def test_tiny_image_below_network_minimum(up, ref):
    a = rand(8, 8, 3)
    out = up(a)
    assert out.shape == (16, 16, 3)
    assert_close_lsb(out, rounded(ref(a / 255), 255))
    assert up(rand(1, 1, 3)).shape == (2, 2, 3)


def test_tiled_equals_whole_image(weights):
    a = rand(48, 40, 3)
    whole = Upscaler(weights, device="cpu")(a)
    tiled = Upscaler(weights, device="cpu", tile=16)(a)
    assert_close_lsb(tiled, whole)


def test_plain_and_optimized_agree(weights):
    a = rand(24, 24, 3)
    assert_close_lsb(Upscaler(weights, device="cpu", plain=True)(a),
                     Upscaler(weights, device="cpu")(a))


def test_scale_the_weights_lack_is_resized_with_matlab_bicubic(weights, ref):
    a = rand(10, 14, 3)
    with pytest.warns(UserWarning, match="weights are x2: the remaining x1.5 to x3 is MATLAB"):
        up3 = Upscaler(weights, scale=3, device="cpu")
    out = up3(a)
    assert out.shape == (30, 42, 3)
    expect = rounded(np.clip(imresize(ref(a / 255), output_shape=(30, 42)), 0, 1), 255)
    assert_close_lsb(out, expect)
    assert Upscaler(weights, scale=1.5, device="cpu")(a).shape == (15, 21, 3)


# ----------------------------------------------------------------------------- PIL, tensors
@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "RGBA", "I;16"])
def test_pil_in_pil_out_same_mode(up, mode):
    c = {"RGB": 3, "L": 1, "LA": 2, "RGBA": 4, "I;16": 1}[mode]
    a = rand(12, 9, c, dtype=np.uint16 if mode == "I;16" else np.uint8)
    im = Image.fromarray(a[:, :, 0]) if c == 1 else Image.fromarray(a, mode=mode)
    out = up(im)
    assert isinstance(out, Image.Image) and out.mode == mode and out.size == (18, 24)
    np.testing.assert_array_equal(np.asarray(out).reshape(24, 18, c), up(a))


def test_pil_palette_and_icc(up):
    im = Image.fromarray(rand(10, 10, 3)).quantize(colors=8)
    out = up(im)
    assert out.mode == "RGB" and out.size == (20, 20)
    im = Image.fromarray(rand(10, 10, 3))
    im.info["icc_profile"] = b"profile bytes"
    assert up(im).info["icc_profile"] == b"profile bytes"


def test_pil_with_exif_orientation_comes_back_upright(up, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rand(10, 14, 3)).save(tmp_path / "r.png", exif=exif.tobytes())
    with Image.open(tmp_path / "r.png") as im:
        assert up(im).size == (20, 28)  # shown as 10 wide, 14 high


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tensor_chw_and_nchw(up, ref, dtype):
    x = torch.rand(2, 3, 16, 18, dtype=dtype)
    out = up(x)
    assert out.shape == (2, 3, 32, 36) and out.dtype == dtype
    for i in range(2):
        np.testing.assert_allclose(out[i].permute(1, 2, 0).numpy(),
                                   ref(x[i].permute(1, 2, 0).numpy()), atol=1e-5)
    chw = up(x[1])
    assert chw.shape == (3, 32, 36)
    torch.testing.assert_close(chw, out[1])


def test_module_function_caches_the_model(weights):
    from bsrn import upscale as module_upscale
    import bsrn.upscale as _  # noqa: F401 - the module is importable alongside the function

    a = rand(16, 16, 3)
    first = bsrn.upscale(a, weights=weights, device="cpu")
    from bsrn.upscale import _CACHE

    cached = next(iter(_CACHE.values()))
    second = module_upscale(a, weights=weights, device="cpu")
    assert next(iter(_CACHE.values())) is cached
    np.testing.assert_array_equal(first, second)
    assert first.shape == (32, 32, 3)


def test_bad_arguments(weights, up):
    with pytest.raises(ConfigError, match="alpha_upsampler"):
        Upscaler(weights, device="cpu", alpha_upsampler="nearest")
    with pytest.raises(ConfigError, match="scale"):
        Upscaler(weights, device="cpu", scale=0)
    with pytest.raises(TypeError, match="cannot upscale a list"):
        up([[1, 2], [3, 4]])
    with pytest.raises(TypeError, match="dtype"):
        up(np.zeros((4, 4, 3), np.int32))
    with pytest.raises(ConfigError, match="shape"):
        up(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ConfigError, match="NaN"):
        up(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(TypeError, match="float tensor"):
        up(torch.zeros(3, 4, 4, dtype=torch.uint8))


def test_official_checkpoint_as_weights(official):
    """Official weights through the whole product path (optimized), on the bundled photo:
    better than bicubic by a clear margin (measured +1.2 dB), and equal to the plain model."""
    from bsrn.image_io import read_image
    from bsrn.metrics import psnr
    from bsrn.upscale import SAMPLE

    path = official("net_g_BSRN_x4.pth")
    hr = read_image(SAMPLE).pixels
    lr = imresize(hr, 0.25)
    sr = Upscaler(path, device="cpu")(lr)
    assert sr.shape == hr.shape
    assert psnr(sr, hr, crop_border=4) > psnr(imresize(lr, 4.0), hr, crop_border=4) + 0.8
    assert_close_lsb(sr, Upscaler(path, device="cpu", plain=True)(lr))


def test_bundled_default_weights():
    if "bsrn-x4" not in bundled_weights():
        pytest.skip("bundled weights bsrn-x4 are not in this install yet")
    up = Upscaler(device="cpu")
    assert up.scale == 4 and up.native_scale == 4
    a = rand(16, 16, 3)
    assert up(a).shape == (64, 64, 3)
    # Trained weights beat bicubic on a real photo (the official x4 weights: +1.2 dB here).
    from bsrn.image_io import read_image
    from bsrn.metrics import psnr
    from bsrn.upscale import SAMPLE

    hr = read_image(SAMPLE).pixels
    lr = imresize(hr, 0.25)
    assert psnr(up(lr), hr, crop_border=4) > psnr(imresize(lr, 4.0), hr, crop_border=4) + 0.2


def test_side_by_side_layout_and_centre_crop():
    from bsrn.upscale import side_by_side

    lr = rand(10, 16, 3)
    sr = np.repeat(np.repeat(lr, 4, axis=0), 4, axis=1)
    pic = side_by_side(lr, sr, "BSRN x4")
    h, w = pic.shape[:2]
    assert w > 2 * 64 and h > 40
    np.testing.assert_array_equal(pic[h - 40:, w - 64:], sr)  # right panel: the result
    np.testing.assert_array_equal(pic[h - 40:, :64], imresize(lr, output_shape=(40, 64)))
    big = side_by_side(lr, sr, "BSRN x4", max_side=32)  # 40x64 result -> 32x32 centre crop
    assert big.shape[0] - 32 < 40 and big.shape[1] < 2 * 64
    np.testing.assert_array_equal(big[-32:, -32:], sr[4:36, 16:48])
