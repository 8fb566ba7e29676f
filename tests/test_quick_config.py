"""configs/quick.yaml runs in a fresh clone: synthetic training images, the bundled sample photo
for validation, nothing read from outside the repository."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from bsrn.config import load_config
from bsrn.data import GENERATE, synthetic_images
from bsrn.train import train

ROOT = Path(__file__).resolve().parents[1]


def test_synthetic_images_are_textured_and_deterministic(tmp_path):
    a = synthetic_images(tmp_path / "a", n=3, size=64, seed=1)
    b = synthetic_images(tmp_path / "b", n=3, size=64, seed=1)
    c = synthetic_images(tmp_path / "c", n=3, size=64, seed=2)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()
    for p in a:
        px = np.asarray(Image.open(p)).astype(np.float64)
        assert px.shape == (64, 64, 3)
        assert px.std() > 20  # shapes and colours, not a flat field
        assert np.abs(np.diff(px, axis=1)).mean() > 2  # edges and stripes
    mtime = a[0].stat().st_mtime_ns
    assert synthetic_images(tmp_path / "a", n=3, size=64, seed=1) == a  # made once
    assert a[0].stat().st_mtime_ns == mtime


def test_quick_config_runs_on_repository_data_only(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's paths are relative to the repository root
    monkeypatch.setenv("BSRN_SHARED", str(tmp_path / "absent"))
    cfg = load_config(ROOT / "configs" / "quick.yaml", [
        f"run.dir={tmp_path / 'run'}", "train.iterations=2", "train.log_every=1",
        "val.every=2", "train.threads=1", "model.args={num_feat: 8, num_block: 1}",
        "run.progress=false", "run.tensorboard=false"])
    assert cfg.data.train == [GENERATE]
    assert not Path(cfg.val.dataset).is_absolute() and Path(cfg.val.dataset).is_dir()
    assert "shared" not in (ROOT / "configs" / "quick.yaml").read_text().replace(
        "BSRN_SHARED", "")
    res = train(cfg)
    assert res["iterations"] == 2
    rows = [json.loads(r) for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any("val_psnr" in r and 0 < r["val_psnr"] < 100 for r in rows)  # scored the sample
    assert len(list((tmp_path / "run" / "lr_cache" / "synthetic").glob("*.png"))) == 48
