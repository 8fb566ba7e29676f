"""The NTIRE 2022 protocol (bsrn.ntire) on folders made by the test: pair finding in every
layout, RGB PSNR against an independent computation, and the `bsrn bench-ntire` command."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from torch import nn

from bsrn.cli import main
from bsrn.errors import BsrnError
from bsrn.ntire import bench_ntire, format_ntire, ntire_pairs


class Nearest(nn.Module):
    """x2 nearest-neighbour upscaling: its SR is known exactly."""

    scale = 2

    def forward(self, x):
        return x.repeat_interleave(2, -2).repeat_interleave(2, -1)


def _save(path, a):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def _folder(root, layout="edsr", n=2):
    rng = np.random.default_rng(0)
    hr_dir, lr_dir = {"edsr": ("HR", "LR_bicubic/X2"),
                      "div2k": ("DIV2K_valid_HR", "DIV2K_valid_LR_bicubic/X2")}[layout]
    imgs = {}
    for i in range(n):
        lr = rng.integers(0, 256, (6 + i, 8, 3), dtype=np.uint8)
        hr = np.clip(lr.repeat(2, 0).repeat(2, 1).astype(int)
                     + rng.integers(-3, 4, (12 + 2 * i, 16, 3)), 0, 255).astype(np.uint8)
        _save(root / hr_dir / f"{i:04d}.png", hr)
        _save(root / lr_dir / f"{i:04d}x2.png", lr)
        imgs[f"{i:04d}"] = (hr, lr)
    return imgs


def _rgb_psnr(sr, hr, border):
    d = (sr.astype(np.float64) - hr.astype(np.float64))[border:-border, border:-border]
    return 10 * np.log10(255.0 ** 2 / np.mean(d ** 2))


@pytest.mark.parametrize("layout", ["edsr", "div2k"])
def test_pairs_and_psnr(tmp_path, layout):
    imgs = _folder(tmp_path / "val", layout)
    pairs = ntire_pairs(tmp_path / "val", scale=2)
    assert [p[0] for p in pairs] == sorted(imgs)
    (res,) = bench_ntire(Nearest(), [tmp_path / "val"], progress=False, border=2)
    want = [_rgb_psnr(lr.repeat(2, 0).repeat(2, 1), hr, 2) for hr, lr in imgs.values()]
    assert res.images == 2
    assert res.psnr == pytest.approx(float(np.mean(want)), abs=1e-6)
    assert all(r["runtime_ms"] > 0 for r in res.per_image)


def test_explicit_pair_and_errors(tmp_path):
    _folder(tmp_path / "val")
    assert len(ntire_pairs(None, tmp_path / "val" / "HR", tmp_path / "val" / "LR_bicubic" / "X2",
                           scale=2)) == 2
    with pytest.raises(BsrnError, match="expected HR"):
        ntire_pairs(tmp_path, scale=2)
    (tmp_path / "val" / "LR_bicubic" / "X2" / "0001x2.png").unlink()
    with pytest.raises(BsrnError, match="0001"):
        ntire_pairs(tmp_path / "val", scale=2)


def test_report_and_cli(tmp_path, tiny_x2_weights, capsys):
    _folder(tmp_path / "val")
    out = tmp_path / "r.json"
    assert main(["bench-ntire", "--weights", tiny_x2_weights, "--data", str(tmp_path / "val"),
                 "--device", "cpu", "--quiet", "--json", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["folders"][0]["images"] == 2 and row["convs"] > 0 and row["memory_mb"] > 0
    assert "| tiny_x2 |" in capsys.readouterr().out
    assert format_ntire([row]).splitlines()[0].startswith("| Entry | PSNR (val)")
    assert main(["bench-ntire", "--weights", tiny_x2_weights, "--data", str(tmp_path)]) == 1
