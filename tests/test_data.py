"""bsrn.data: aligned crops, the 8 flip/rot90 symmetries, LR cache, loaders, bad images."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from bsrn.data import PatchSampler, load_pairs, memory_batches, worker_batches
from bsrn.errors import ConfigError
from bsrn.image_io import read_rgb_uint8
from bsrn.imresize import bicubic_downscale

S, P = 3, 6


def _dihedral(a):
    """All 8 flip/rot90 images of an HxWxC array, as independent reference."""
    out = []
    for k in range(4):
        r = np.rot90(a, k)
        out += [r, r[:, ::-1]]
    return out


@pytest.fixture
def paired(tmp_path):
    """HR = nearest-upsampled LR, so an aligned crop of HR is exactly the upsampled LR crop."""
    rng = np.random.default_rng(1)
    hr_dir, lr_dir = tmp_path / "HR", tmp_path / "LR"
    hr_dir.mkdir(), lr_dir.mkdir()
    for i, (h, w) in enumerate([(10, 14), (17, 9)]):
        lr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(lr).save(lr_dir / f"im{i}x{S}.png")
        Image.fromarray(lr.repeat(S, 0).repeat(S, 1)).save(hr_dir / f"im{i}.png")
    return [{"hr": str(hr_dir), "lr": str(lr_dir)}]


def test_crops_are_aligned_and_cover_all_symmetries(paired, tmp_path):
    pairs = load_pairs(paired, S, P, tmp_path / "cache")
    sampler = PatchSampler(pairs, S, P, seed=0)
    seen = set()
    for k in range(300):
        lr, hr = sampler.sample(k)
        assert lr.shape == (3, P, P) and hr.shape == (3, P * S, P * S)
        np.testing.assert_array_equal(hr, lr.repeat(S, 1).repeat(S, 2))
        d = sampler.draw(k)
        src = pairs[d.index].lr[d.y:d.y + P, d.x:d.x + P]
        matches = [i for i, t in enumerate(_dihedral(src)) if np.array_equal(t, lr.transpose(1, 2, 0))]
        assert matches, "patch is not a flip/rot90 of the source crop"
        seen.add((d.hflip, d.vflip, d.transpose))
    assert len(seen) == 8
    # both images are used, roughly in proportion to their crop positions (5*9=45 vs 12*4=48)
    counts = np.bincount([sampler.draw(k).index for k in range(2000)], minlength=2)
    assert 0.4 < counts[0] / 2000 < 0.6


def test_loaders_agree_and_ranks_split_the_global_batch(paired, tmp_path):
    pairs = load_pairs(paired, S, P, tmp_path / "cache")
    sampler = PatchSampler(pairs, S, P, seed=3)
    mem = list(memory_batches(sampler, 2, 4, 4, 0, 4, "cpu"))
    wrk = list(worker_batches(sampler, 2, 4, 4, 0, 4, workers=0, device="cpu"))
    assert len(mem) == len(wrk) == 2
    for (a, b), (c, d) in zip(mem, wrk):
        assert torch.equal(a, c) and torch.equal(b, d)
        assert a.dtype == torch.float32 and float(a.max()) <= 1.0
    r0 = list(memory_batches(sampler, 2, 4, 4, 0, 2, "cpu"))
    r1 = list(worker_batches(sampler, 2, 4, 4, 1, 2, workers=1, device="cpu"))
    for (a, _), (b, _), (full, _) in zip(r0, r1, mem):
        assert torch.equal(torch.cat([a, b]), full)


def test_lr_cache_is_matlab_bicubic_made_once(tmp_path):
    rng = np.random.default_rng(0)
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    hr = rng.integers(0, 256, (50, 61, 3), dtype=np.uint8)
    Image.fromarray(hr).save(hr_dir / "a.png")
    pairs = load_pairs([str(hr_dir)], 4, 8, tmp_path / "cache")
    want = bicubic_downscale(hr, 4, variant="uint8")
    np.testing.assert_array_equal(pairs[0].lr, want)
    assert pairs[0].hr.shape == (48, 60, 3)
    cached = list((tmp_path / "cache" / "X4").glob("a-*.png"))
    assert len(cached) == 1
    np.testing.assert_array_equal(read_rgb_uint8(cached[0]), want)
    mtime = cached[0].stat().st_mtime_ns
    load_pairs([str(hr_dir)], 4, 8, tmp_path / "cache")
    assert cached[0].stat().st_mtime_ns == mtime


def test_bad_images_are_reported_by_name_and_skipped(tmp_path, caplog):
    d = tmp_path / "hr"
    d.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(d / "good.png")
    (d / "broken.png").write_bytes(b"\x89PNG not really")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(d / "tiny.png")
    with caplog.at_level(logging.WARNING, logger="bsrn.train"):
        pairs = load_pairs([str(d)], 2, 8, tmp_path / "cache")
    assert [p.name for p in pairs] == ["good.png"]
    text = caplog.text
    assert "broken.png" in text and "tiny.png" in text and "smaller than" in text
    (d / "good.png").unlink()
    with pytest.raises(ConfigError, match="no usable training images"):
        load_pairs([str(d)], 2, 8, tmp_path / "cache")
    with pytest.raises(ConfigError, match="no such folder"):
        load_pairs([str(tmp_path / "missing")], 2, 8, tmp_path / "cache")
