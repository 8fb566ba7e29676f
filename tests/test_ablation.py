"""`bsrn ablate`: a tiny study runs end to end, writes its table and JSON, and resumes without
retraining finished variants."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("bsrn.train", reason="the training module is not installed")

from bsrn import ablation  # noqa: E402
from bsrn.cli import main  # noqa: E402


@pytest.fixture
def tiny_budget(tmp_path):
    import torch

    threads = torch.get_num_threads()  # the budget trains on one thread; restore afterwards
    yield _make_budget(tmp_path)
    torch.set_num_threads(threads)


def _make_budget(tmp_path):
    rng = np.random.default_rng(0)
    hr = tmp_path / "hr"
    hr.mkdir()
    yy, xx = np.mgrid[0:64, 0:64]
    for i in range(2):
        img = np.stack([127 + 100 * np.sin(xx / (3 + i)), 127 + 100 * np.cos(yy / (4 + i)),
                        rng.integers(0, 255, (64, 64))], -1).astype(np.uint8)
        Image.fromarray(img).save(hr / f"img{i}.png")
    cfg = tmp_path / "budget.yaml"
    cfg.write_text(f"""
model: {{name: bsrn, scale: 4}}
data: {{train: [{hr.as_posix()}], patch_size: 16, batch_size: 2, workers: 0,
        cache_dir: {(tmp_path / 'cache').as_posix()}}}
train: {{iterations: 2, channels_last: false, log_every: 1, threads: 1}}
val: {{dataset: {hr.as_posix()}, every: 1000, crops: 0}}
run: {{ckpt_every: 1, tensorboard: false, progress: false}}
""")
    return cfg


def test_study_runs_writes_and_resumes(tiny_budget, tmp_path, monkeypatch):
    out = tmp_path / "study"
    argv = ["ablate", "--study", "conv", "--budget", str(tiny_budget), "--out", str(out),
            "--variants", "rfdn", "rfdn_bsconv_u", "--quiet"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert [v["name"] for v in res["variants"]] == ["rfdn", "rfdn_bsconv_u"]
    for v in res["variants"]:
        assert np.isfinite(v["psnr"]) and v["params"] > 0 and v["multi_adds"] > 0
    # BSConv-U has fewer parameters than the standard-conv RFDN it replaces.
    assert res["variants"][1]["params"] < res["variants"][0]["params"]
    assert res["budget"]["iterations"] == 2
    table = (out / "table.md").read_text()
    assert "| BSConv-U | `rfdn_bsconv_u` |" in table and "baseline" in table

    # Resume: an interrupted study (one cached result removed) retrains only that variant.
    (out / "cache" / "rfdn_bsconv_u-seed0.json").unlink()
    trained = []
    real = ablation.run_variant

    def spy(variant, *a, **k):
        trained.append(variant)
        return real(variant, *a, **k)

    monkeypatch.setattr(ablation, "run_variant", spy)
    assert main(argv) == 0
    assert trained == ["rfdn_bsconv_u"]
    assert main(argv) == 0
    assert trained == ["rfdn_bsconv_u"]           # everything cached now


def test_unknown_study_and_budget(capsys, tiny_budget):
    assert main(["ablate", "--study", "conv", "--budget", "no-such-budget"]) == 1
    assert "no-such-budget" in capsys.readouterr().err
    with pytest.raises(Exception):
        ablation.run_study("colour", str(tiny_budget))


def test_shipped_budgets_are_valid():
    from bsrn.config import load_config

    for name in ("cpu-tiny", "gpu-short"):
        cfg = load_config(ablation.resolve_budget(name), overrides=["model.name=rfdn_dsconv"])
        assert cfg.model.name == "rfdn_dsconv" and cfg.val.dataset
