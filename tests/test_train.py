"""bsrn.train: the loop learns, resumes a killed run step for step, stops cleanly on NaN."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bsrn.checkpoint import load_model
from bsrn.cli import main
from bsrn.config import load_config
from bsrn.train import TrainingError, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.args={num_feat: 8, num_block: 1}", "data.patch_size=8", "data.batch_size=2",
        "data.loader=memory", "train.threads=1", "train.log_every=1", "run.progress=false",
        "run.tensorboard=false", "val.dataset=null", "data.limit=4"]


def _cfg(dataset, run_dir, *extra):
    return load_config(ROOT / "configs" / "quick.yaml",
                       TINY + [f"data.train=[{dataset('T91')}]", f"run.dir={run_dir}",
                               f"data.cache_dir={run_dir.parent / 'cache'}", *extra])


def _losses(run_dir):
    rows = [json.loads(r) for r in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _small_benchmark(dataset, tmp_path):
    """A one-image benchmark folder: a 60x60 crop of Set5's butterfly (LR made by MATLAB
    bicubic at validation)."""
    from bsrn.image_io import read_rgb_uint8, write_png
    hr = read_rgb_uint8(dataset("Set5") / "HR" / "butterfly.png")[100:160, 100:160]
    write_png(tmp_path / "bench" / "HR" / "butterfly.png", hr)
    return tmp_path / "bench"


def test_loss_falls_and_run_folder_is_complete(dataset, tmp_path):
    bench = _small_benchmark(dataset, tmp_path)
    cfg = _cfg(dataset, tmp_path / "run", "train.iterations=40", "optim.lr=3e-3",
               f"val.dataset={bench}", "val.every=20", "val.crops=1", "val.crop_px=32",
               "run.tensorboard=true", "train.ema=0.9")
    res = train(cfg)
    loss = _losses(res["run_dir"])
    first, last = sum(loss[s] for s in range(1, 11)), sum(loss[s] for s in range(31, 41))
    assert last < 0.8 * first
    val = [json.loads(r) for r in (Path(res["run_dir"]) / "log.jsonl").read_text().splitlines()
           if "val_psnr" in r]
    assert [v["step"] for v in val] == [20, 40]
    assert res["iterations"] == 40 and res["final_psnr"] == val[1]["val_psnr"]
    assert res["best_psnr"] == max(v["val_psnr"] for v in val)
    run = Path(res["run_dir"])
    for name in ("config.yaml", "train.log", "log.jsonl", "model.safetensors", "best.safetensors"):
        assert (run / name).is_file(), name
    # log.csv holds the same rows as log.jsonl, under fixed columns
    import csv
    with open(run / "log.csv", newline="") as f:
        table = list(csv.DictReader(f))
    rows = [json.loads(r) for r in (run / "log.jsonl").read_text().splitlines()]
    assert len(table) == len(rows) == 40 + 2
    for t, r in zip(table, rows):
        assert {k for k, v in t.items() if v} == set(r)
        assert all(float(t[k]) == pytest.approx(r[k], rel=1e-12) for k in r)
    assert list((run / "tb").glob("events.*")) and list((run / "val_images").glob("*.png"))
    model = load_model(res["weights"])  # the EMA weights, rebuilt from their own metadata
    assert model.scale == 2 and model.cfg.num_feat == 8
    from bsrn.evaluate import evaluate
    assert evaluate(model, bench, progress=False).psnr == pytest.approx(val[1]["val_psnr"])
    # plot-log draws the curves
    assert main(["plot-log", str(run), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_resume_after_kill_reproduces_every_loss(dataset, tmp_path):
    n = 40
    ref = train(_cfg(dataset, tmp_path / "ref", f"train.iterations={n}", "run.ckpt_every=4"))
    run = tmp_path / "killed"
    cfg_file = tmp_path / "killed.yaml"
    from bsrn.config import dump_config
    cfg_file.write_text(dump_config(_cfg(dataset, run, f"train.iterations={n}",
                                         "run.ckpt_every=4")))
    proc = subprocess.Popen([sys.executable, "-m", "bsrn", "train", "--config", str(cfg_file)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < 120:
        if (run / "log.jsonl").is_file() and len(_losses(run)) >= 10:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no clean shutdown: whatever is on disk must suffice
    proc.wait()
    k = max(_losses(run))
    assert 10 <= k < n, "the run was not killed mid-way"
    assert main(["train", "--config", str(cfg_file), "--resume"]) == 0
    want, got = _losses(ref["run_dir"]), _losses(run)
    assert sorted(got) == list(range(1, n + 1))
    assert got == want
    # the CSV log was cut back to the checkpoint as well: one row per step, no duplicates
    steps = [int(line.split(",")[0]) for line in (run / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, n + 1))
    a = load_model(ref["weights"]).state_dict()
    b = load_model(Path(run) / "model.safetensors").state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_fresh_run_refuses_a_folder_with_checkpoints(dataset, tmp_path):
    train(_cfg(dataset, tmp_path / "r", "train.iterations=2"))
    with pytest.raises(Exception, match="--resume"):
        train(_cfg(dataset, tmp_path / "r", "train.iterations=2"))


def test_nan_guard_stops_and_says_where(dataset, tmp_path):
    cfg = _cfg(dataset, tmp_path / "nan", "train.iterations=20", "optim.lr=1e30",
               "schedule.name=constant")
    with pytest.raises(TrainingError, match=r"non-finite (loss|gradient).* at step [0-9]+"):
        train(cfg)


def test_warm_start_copies_the_body_not_the_upsampler(dataset, tmp_path):
    x2 = train(_cfg(dataset, tmp_path / "x2", "train.iterations=1"))
    cfg = _cfg(dataset, tmp_path / "x4", "train.iterations=1", "model.scale=4",
               f"model.init={x2['weights']}", "optim.lr=1e-12", "schedule.name=constant")
    x4 = train(cfg)
    a, b = load_model(x2["weights"]).state_dict(), x4["model"].state_dict()
    assert torch.allclose(a["fea_conv.pw.weight"], b["fea_conv.pw.weight"], atol=1e-9)
    assert a["upsampler.upsampleOneStep.0.weight"].shape != b["upsampler.upsampleOneStep.0.weight"].shape


def test_plot_log_chains_training_stages(tmp_path):
    """Stage 2 (warm-started from stage 1) is drawn after stage 1, not on top of it."""
    from bsrn.plots import curves
    for name, rows in (("s1", [(20, 0.05), (40, 0.04)]), ("s2", [(20, 0.03), (30, 0.02)])):
        (tmp_path / name).mkdir()
        lines = [json.dumps({"step": s, "loss": v}) for s, v in rows]
        lines.append(json.dumps({"step": rows[-1][0], "val_psnr": 30.0 + rows[-1][0] / 100}))
        (tmp_path / name / "log.jsonl").write_text("\n".join(lines) + "\n")
    runs = [tmp_path / "s1", tmp_path / "s2"]
    (_, a0, (ax, _), _), (_, b0, (bx, by), (bvx, bvy)) = curves(runs, chain=True)
    assert (a0, ax, b0, bx, by) == (0, [20, 40], 40, [60, 70], [0.03, 0.02])
    assert (bvx, bvy) == ([70], [30.3])
    assert curves(runs)[1][2][0] == [20, 30]  # not chained: each run from step 0
    assert main(["plot-log", *map(str, runs), "--chain", "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_checkpoint_holds_only_tensors_and_json(dataset, tmp_path):
    """Resume state reads back with weights_only=True: tensors, plain values and a JSON block
    with the counters, schedule, sampler position and the resolved config."""
    cfg = _cfg(dataset, tmp_path / "ck", "train.iterations=3", "run.ckpt_every=3",
               "train.ema=0.9")
    train(cfg)
    path = tmp_path / "ck" / "checkpoints" / "step_00000003.pt"
    ck = torch.load(path, weights_only=True)

    def leaves(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from leaves(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                yield from leaves(v)
        else:
            yield x
    assert all(isinstance(v, (torch.Tensor, str, int, float, bool, type(None)))
               for v in leaves(ck))
    meta = json.loads(ck["meta"])
    assert meta["step"] == 3 and meta["sampler"] == {"seed": cfg.run.seed, "global_batch": 2,
                                                      "next_sample": 6}
    assert meta["config"] == cfg.to_dict() and meta["scheduler"]["last_epoch"] == 3
    assert set(ck["model"]) == set(ck["ema"]) and ck["optimizer"]["state"]
