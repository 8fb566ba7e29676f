"""Tiled inference: the exact schedule equals the whole-image forward; padded tiling does not."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bsrn.errors import ConfigError
from bsrn.models import create_model
from bsrn.tiling import (SPEED_TILE, TAIL_HALO, _even_crop, choose_tile, estimate_tiled_bytes, forward_auto,
                         forward_tiled, parse_bytes, spans, supports_exact)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.clamp(0, 1) - b.clamp(0, 1)).double().pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth synthetic photo-like image (low-frequency pattern + mild noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, h // 8 + 2, w // 8 + 2, generator=g)
    img = F.interpolate(low, (h, w), mode="bicubic", align_corners=False)
    return (img + 0.03 * torch.randn(1, 3, h, w, generator=g)).clamp(0, 1)


def _lively(model, seed=0):
    """Re-initialise convs at unit gain (N(0, 1/fan_in)) so that, unlike PyTorch's default
    init, the attention (CCA gates, ESA masks) varies across the image as in trained weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Conv2d):
                fan = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / math.sqrt(fan))
                if mod.bias is not None:
                    mod.bias.copy_((torch.rand(mod.bias.shape, generator=g) - 0.5) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def small_bsrn():
    return _lively(create_model("bsrn", scale=2, num_feat=16, num_block=3))


def test_spans_cover_length_evenly():
    assert spans(10, 4) == [(0, 3), (3, 7), (7, 10)]
    assert spans(5, 8) == [(0, 5)]
    for n, t in [(97, 24), (1080, 256), (15, 15)]:
        s = spans(n, t)
        assert s[0][0] == 0 and s[-1][1] == n
        assert all(b - a <= t for a, b in s) and all(s[i][1] == s[i + 1][0]
                                                     for i in range(len(s) - 1))


@pytest.mark.parametrize("length,tile,halo", [(1080, 256, 4), (97, 24, 8), (30, 24, 4),
                                               (15, 15, 4), (1920, 256, 8), (300, 100, 50)])
def test_even_crops_have_one_shape_and_full_context(length, tile, halo):
    """Every crop of a span has the same size, and at least ``halo`` px of real context on each
    side that is not the image edge (so the span's output is exact)."""
    parts = spans(length, tile)
    size = max(b - a for a, b in parts) + 2 * halo
    crops = [_even_crop(a, b, halo, size, length) for a, b in parts]
    assert len({b0 - a0 for a0, b0 in crops}) == 1
    for (a, b), (a0, b0) in zip(parts, crops):
        assert 0 <= a0 <= a and b <= b0 <= length
        assert a0 == 0 or a - a0 >= halo
        assert b0 == length or b0 - b >= halo


@torch.no_grad()
def test_exact_tiling_equals_whole_random_weights(small_bsrn):
    x = _image(64, 75)
    whole = small_bsrn(x)
    tiled = forward_tiled(small_bsrn, x, tile=24)  # 3 x 4 uneven tiles
    naive = forward_tiled(small_bsrn, x, tile=24, tile_pad=8, exact=False)
    err_exact = (tiled - whole).abs().max().item()
    err_naive = (naive - whole).abs().max().item()
    assert tiled.shape == whole.shape
    assert err_exact < 1e-5
    assert _psnr(tiled, whole) > 90
    # padded tiling misses the whole-image CCA statistics and ESA context
    assert err_naive > 100 * err_exact


@torch.no_grad()
@pytest.mark.parametrize("upsampler", ["pixelshuffledirect", "pixelshuffleblock", "nearestconv",
                                       "pa"])
@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_exact_tiling_tail_halo_suffices_for_every_upsampler(upsampler, scale):
    """Each network's own tail halo (smaller than the generic one) gives the whole-image
    output, for every upsampler and scale, with tiles small enough that most output pixels sit
    near a tile edge."""
    nets = [create_model("bsrn", scale=scale, num_feat=8, num_block=1, upsampler=upsampler)]
    if upsampler == "pixelshuffledirect":
        nets.append(create_model("rfdn", scale=scale, num_feat=8, num_block=1))
    x = _image(37, 41, seed=scale)
    for m in nets:
        m = _lively(m, seed=scale)
        assert m.tail_halo < TAIL_HALO
        assert (forward_tiled(m, x, tile=16) - m(x)).abs().max().item() < 1e-5


@torch.no_grad()
def test_exact_tiling_batch_and_bsrn_s_and_variants():
    x = torch.cat([_image(40, 46, 1), _image(40, 46, 2)])
    for name in ("bsrn_s", "bsrn_no_esa", "bsrn_no_attention"):
        m = _lively(create_model(name, scale=2, num_feat=16, num_block=2), 1)
        whole = m(x)
        assert (forward_tiled(m, x, tile=16) - whole).abs().max() < 1e-5, name


@torch.no_grad()
def test_official_x4_exact_beats_naive_on_real_image(official, dataset):
    from bsrn.checkpoint import load_model
    from bsrn.image_io import read_rgb_uint8
    from bsrn.metrics import psnr, tensor_to_uint8, uint8_to_tensor

    model = load_model(official("net_g_BSRN_x4.pth"))
    root = dataset("Set5")
    lr = read_rgb_uint8(root / "LR_bicubic" / "X4" / "babyx4.png")[:64, :64]
    hr = read_rgb_uint8(root / "HR" / "baby.png")[:256, :256]
    x = uint8_to_tensor(lr)
    whole = model(x)
    exact = forward_tiled(model, x, tile=32)
    naive = forward_tiled(model, x, tile=32, tile_pad=8, exact=False)
    p_whole = psnr(tensor_to_uint8(whole), hr, 4)
    p_exact = psnr(tensor_to_uint8(exact), hr, 4)
    p_naive = psnr(tensor_to_uint8(naive), hr, 4)
    assert abs(p_exact - p_whole) < 0.01
    assert (exact - whole).abs().max() < 1e-4
    assert (naive - whole).abs().max() > 100 * (exact - whole).abs().max()
    assert _psnr(exact, whole) > _psnr(naive, whole) + 30
    assert np.isfinite(p_naive)


class _GlobalNet(torch.nn.Module):
    """A network with a whole-image statistic and neither stages nor a halo."""

    scale = 2

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 12, 3, 1, 1)
        self.shuffle = torch.nn.PixelShuffle(2)

    def forward(self, x):
        return self.shuffle(self.conv(x) * x.mean())


@torch.no_grad()
def test_unstaged_networks_fall_back_to_padded_tiling_with_warning():
    m = _GlobalNet().eval()
    assert not supports_exact(m)
    x = _image(40, 40)
    with pytest.warns(UserWarning, match="no exact tiled forward"):
        y = forward_tiled(m, x, tile=20, tile_pad=12)
    assert y.shape == (1, 3, 80, 80) and (y - m(x)).abs().max() > 1e-4


@torch.no_grad()
def test_local_networks_tile_exactly_with_their_halo():
    m = _lively(create_model("imdn", scale=2, num_feat=16, num_block=2))
    assert supports_exact(m) and m.halo == 11
    x = _image(45, 52, 6)
    assert (forward_tiled(m, x, tile=16) - m(x)).abs().max() < 1e-5


@torch.no_grad()
def test_small_images_and_bad_tiles(small_bsrn):
    x = _image(12, 9)  # below ESA's minimum: the model pads, tiling is skipped
    assert torch.equal(forward_tiled(small_bsrn, x, tile=4), small_bsrn(x))
    with pytest.raises(ConfigError):
        forward_tiled(small_bsrn, x, tile=0)


def test_choose_tile_respects_budget():
    m = create_model("bsrn", scale=4)
    assert choose_tile(m, 180, 320, "cpu") is None  # 0.06 MP fits 2 GiB
    tile = choose_tile(m, 1080, 1920, "cpu", memory_budget_bytes=2 * 1024 ** 3)
    assert isinstance(tile, int) and tile >= 64
    assert estimate_tiled_bytes(m, 1080, 1920, tile) <= 2 * 1024 ** 3
    assert choose_tile(m, 1080, 1920, "cpu", memory_budget_bytes=10) == 64
    # photo-sized images on the CPU run in exact speed tiles even when the whole image fits
    assert choose_tile(m, 1080, 1920, "cpu", memory_budget_bytes=1 << 40) == SPEED_TILE
    assert choose_tile(_GlobalNet(), 1080, 1920, "cpu", memory_budget_bytes=1 << 40) is None
    assert parse_bytes("2G") == 2 * 1024 ** 3 and parse_bytes("512MiB") == 512 * 1024 ** 2
    with pytest.raises(ConfigError):
        parse_bytes("lots")


def test_forward_auto_tiles_under_a_small_budget(small_bsrn):
    x = _image(48, 52, 4)
    with torch.no_grad():
        whole = small_bsrn(x)
    y = forward_auto(small_bsrn, x, device="cpu", memory_budget_bytes=1)  # forces tiles
    assert (y - whole).abs().max() < 1e-5
    y = forward_auto(small_bsrn, x, device="cpu", tile=20)
    assert (y - whole).abs().max() < 1e-5


def test_tiled_bf16_through_the_guarded_run(small_bsrn):
    x = _image(40, 44, 5)
    with torch.no_grad():
        whole = small_bsrn(x)
    y = forward_auto(small_bsrn, x, device="cpu", precision="bf16", tile=20)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert 0 < (y - whole).abs().max() < 0.1 * whole.abs().max()
