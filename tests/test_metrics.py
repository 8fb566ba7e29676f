"""Y-channel PSNR/SSIM (BasicSR form) against hand-derived values and an independent
sliding-window SSIM written with numpy only."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bsrn.metrics import psnr, rgb_to_y, ssim, tensor_to_uint8, uint8_to_tensor


def test_y_formula_values():
    px = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255],
                    [10, 20, 30]]], np.uint8)
    y = rgb_to_y(px)[0]
    expected = [16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966,
                16 + (65.481 * 10 + 128.553 * 20 + 24.966 * 30) / 255]
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-12)
    assert y.dtype == np.float64  # not rounded
    assert rgb_to_y(np.full((2, 2), 255, np.uint8)).ravel().tolist() == [235.0] * 4


def test_psnr_known_mse_rgb_and_y():
    rng = np.random.default_rng(0)
    a = rng.integers(10, 200, (20, 24, 3)).astype(np.uint8)
    b = a + 5  # every channel differs by 5 -> MSE 25 on RGB
    expected = 10 * math.log10(255 ** 2 / 25)
    assert psnr(a, b, 0, y_channel=False) == pytest.approx(expected, abs=1e-12)
    # equal RGB offsets d move Y by d * 219/255
    dy = 5 * 219 / 255
    assert psnr(a, b, 0, y_channel=True) == pytest.approx(10 * math.log10(255 ** 2 / dy ** 2),
                                                         abs=1e-9)
    assert psnr(a, a, 2) == math.inf


def test_psnr_crop_border_discards_the_border():
    a = np.zeros((10, 10, 3), np.uint8)
    b = a.copy()
    b[:2] = 255  # damage only the top 2 rows
    assert math.isfinite(psnr(a, b, 1))
    assert psnr(a, b, 2) == math.inf
    b[5, 5] = 3  # one pixel inside a 6x6 window after cropping 2
    mse = (3 * 219 / 255) ** 2 / 36
    assert psnr(a, b, 2) == pytest.approx(10 * math.log10(255 ** 2 / mse), abs=1e-9)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))


def _ssim_reference(a, b):
    """SSIM via explicit 11x11 windows (numpy sliding_window_view), float64, mean of map."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    g = np.array([math.exp(-(i - 5) ** 2 / (2 * 1.5 ** 2)) for i in range(11)])
    w = np.outer(g, g) / np.outer(g, g).sum()
    va = np.lib.stride_tricks.sliding_window_view(a, (11, 11))
    vb = np.lib.stride_tricks.sliding_window_view(b, (11, 11))
    mu_a, mu_b = (va * w).sum((-1, -2)), (vb * w).sum((-1, -2))
    var_a = (va ** 2 * w).sum((-1, -2)) - mu_a ** 2
    var_b = (vb ** 2 * w).sum((-1, -2)) - mu_b ** 2
    cov = (va * vb * w).sum((-1, -2)) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1)
                                                     * (var_a + var_b + c2))
    return m.mean()


def test_ssim_matches_independent_window_reference():
    rng = np.random.default_rng(3)
    hr = rng.integers(0, 256, (40, 37, 3)).astype(np.uint8)
    sr = np.clip(hr.astype(int) + rng.integers(-20, 21, hr.shape), 0, 255).astype(np.uint8)
    ref_y = _ssim_reference(rgb_to_y(sr)[3:-3, 3:-3], rgb_to_y(hr)[3:-3, 3:-3])
    assert ssim(sr, hr, 3, y_channel=True) == pytest.approx(ref_y, abs=1e-12)
    ref_rgb = np.mean([_ssim_reference(sr[..., c], hr[..., c]) for c in range(3)])
    assert ssim(sr, hr, 0, y_channel=False) == pytest.approx(ref_rgb, abs=1e-12)
    assert 0.3 < ref_y < 0.99


def test_ssim_hand_computed_cases():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (30, 30, 3)).astype(np.uint8)
    assert ssim(img, img, 4) == pytest.approx(1.0, abs=1e-12)
    # constant planes: variances and covariance vanish, SSIM = luminance term
    a, b = np.full((16, 16), 100, np.uint8), np.full((16, 16), 120, np.uint8)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 120 + c1) / (100 ** 2 + 120 ** 2 + c1)
    assert ssim(a, b, 0, y_channel=False) == pytest.approx(expected, abs=1e-12)


def test_ssim_against_scipy_filter_if_available():
    ndi = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(5)
    a = rng.random((25, 28)) * 255
    b = a * 0.8 + rng.random((25, 28)) * 51
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()

    def f(x):
        return ndi.correlate(x, w, mode="constant")[5:-5, 5:-5]

    mu1, mu2 = f(a), f(b)
    s1, s2, s12 = f(a * a) - mu1 ** 2, f(b * b) - mu2 ** 2, f(a * b) - mu1 * mu2
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s1 + s2 + c2))
    assert ssim(a, b, 0, y_channel=False) == pytest.approx(m.mean(), abs=1e-12)


def test_tensor_uint8_round_trip():
    x = torch.tensor([[[[-0.1, 0.2, 1.2, 100.4 / 255, 100.6 / 255]]]])
    assert tensor_to_uint8(x)[..., 0].ravel().tolist() == [0, 51, 255, 100, 101]
    img = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    t = uint8_to_tensor(img)
    assert t.shape == (1, 3, 2, 4) and t.dtype == torch.float32
    assert np.array_equal(tensor_to_uint8(t), img)
    assert uint8_to_tensor(img[..., 0]).shape == (1, 1, 2, 4)
