"""Training faults: no code runs on resume, damaged checkpoints fall back, bad configs stop at
start-up in one line, nothing is lost, and a core install (no TensorBoard) still trains."""
import io
import json
import logging
import os
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bsrn.cli import main
from bsrn.image_io import write_png
from bsrn.train import checkpoint_files, load_checkpoint

SRC = Path(__file__).resolve().parents[2] / "src"


class _Plant:
    """Unpickling this opens (creates) ``marker``: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def recipe(tmp_path):
    """A tiny training recipe on generated images; returns (config file, run dir)."""
    rng = np.random.default_rng(0)
    for i in range(3):
        img = rng.integers(0, 256, (5, 5, 3)).astype(np.float32)
        img = np.kron(img, np.ones((8, 8, 1)))  # 40x40, blocky: something to learn
        write_png(tmp_path / "train" / f"img{i}.png", img.clip(0, 255).astype(np.uint8))
    write_png(tmp_path / "val" / "HR" / "v.png", rng.integers(0, 256, (24, 24, 3), np.uint8))
    run = tmp_path / "run"
    cfg = {"model": {"name": "bsrn", "scale": 2, "args": {"num_feat": 8, "num_block": 1}},
           "data": {"train": [str(tmp_path / "train")], "patch_size": 8, "batch_size": 2,
                    "loader": "memory", "cache_dir": str(tmp_path / "cache")},
           "optim": {"lr": 1e-3}, "schedule": {"name": "constant"},
           "train": {"iterations": 4, "threads": 1, "log_every": 1, "channels_last": False},
           "val": {"dataset": None},
           "run": {"dir": str(run), "ckpt_every": 2, "keep_last": 3, "tensorboard": False,
                   "progress": False}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, run


def _losses(run):
    rows = [json.loads(r) for r in (run / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _one_line_error(capsys, rc):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith("bsrn train: error: ") and "Traceback" not in err[0]
    return err[0]


def _trained(recipe, capsys, *extra):
    cfg, run = recipe
    assert main(["train", "--config", str(cfg), *extra]) == 0
    capsys.readouterr()
    return cfg, run


# ----------------------------------------------------------------------------- code on resume
def _plant(path, marker, kind):
    """A checkpoint-named file whose unpickling would create ``marker``; the file is checked
    to be a working exploit with plain ``pickle``."""
    if kind == "raw":
        data = pickle.dumps({"format": "bsrn-train-state/2", "model": _Plant(marker)})
        pickle.loads(data)
        path.write_bytes(data)
    else:  # torch's zip layout, as torch.save writes it
        torch.save({"format": "bsrn-train-state/2", "model": _Plant(marker)}, path)
        with zipfile.ZipFile(path) as z:
            pickle.loads(z.read(next(n for n in z.namelist() if n.endswith("data.pkl"))))
    assert Path(marker).exists()
    Path(marker).unlink()


@pytest.mark.parametrize("kind", ["raw", "zip"])
def test_planted_pickle_never_runs_and_resume_falls_back(recipe, capsys, caplog, tmp_path, kind):
    cfg, run = _trained(recipe, capsys)
    marker = tmp_path / "pwned"
    _plant(run / "checkpoints" / "step_00000006.pt", marker, kind)
    caplog.set_level(logging.WARNING, "bsrn.train")
    assert main(["train", "--resume", str(run), "--set", "train.iterations=6"]) == 0
    assert not marker.exists()
    said = [r.getMessage() for r in caplog.records if "step_00000006.pt" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0] and "resuming from step_00000004.pt" in said[0]
    assert (run / "checkpoints" / "step_00000006.pt.bad").is_file()  # set aside, not deleted
    assert sorted(_losses(run)) == list(range(1, 7))
    for p in checkpoint_files(run):  # every checkpoint left is one of ours and intact
        assert load_checkpoint(p)["meta"]["step"] in (2, 4, 6)


def test_planted_pickle_alone_is_a_one_line_error(recipe, capsys, tmp_path):
    cfg, run = _trained(recipe, capsys)
    for p in checkpoint_files(run):
        p.unlink()
    marker = tmp_path / "pwned"
    _plant(run / "checkpoints" / "step_00000009.pt", marker, "zip")
    line = _one_line_error(capsys, main(["train", "--resume", str(run)]))
    assert "no intact training checkpoint" in line and "step_00000009.pt" in line
    assert not marker.exists()
    assert (run / "checkpoints" / "step_00000009.pt").is_file()  # left for the user to inspect


def test_no_unsafe_torch_load_in_the_package():
    offenders = [str(p) for p in SRC.rglob("*.py") if "weights_only=False" in p.read_text()]
    assert offenders == []


# ----------------------------------------------------------------------------- damaged newest
@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "foreign", "partial"])
def test_damaged_newest_checkpoint_falls_back_to_the_intact_one(recipe, capsys, caplog, damage):
    cfg, run = _trained(recipe, capsys)
    want = _losses(run)
    newest = run / "checkpoints" / "step_00000004.pt"
    data = newest.read_bytes()
    newest.write_bytes({"truncated": data[:len(data) // 2], "empty": b"",
                        "garbage": bytes(range(256)) * 8}.get(damage, b""))
    if damage == "foreign":  # a valid tensor file, but not a training state
        torch.save({"weight": torch.zeros(2)}, newest)
    if damage == "partial":  # ours, but with its RNG states and schedule lost
        ck = torch.load(io.BytesIO(data), weights_only=True)
        del ck["rng"]["torch"]
        ck["meta"] = json.dumps({k: v for k, v in json.loads(ck["meta"]).items()
                                 if k != "scheduler"})
        torch.save(ck, newest)
    caplog.set_level(logging.WARNING, "bsrn.train")
    assert main(["train", "--resume", str(run)]) == 0
    said = [r.getMessage() for r in caplog.records if "step_00000004.pt" in r.getMessage()]
    assert len(said) == 1 and "resuming from step_00000002.pt" in said[0]
    # steps 3 and 4 were trained again from step 2, and came out exactly as the first time
    assert _losses(run) == want
    assert load_checkpoint(newest)["meta"]["step"] == 4


def test_resume_needs_no_repeated_set(recipe, capsys, tmp_path):
    """The run folder keeps the resolved config: ``--resume RUN_DIR`` alone continues it."""
    cfg, run = recipe
    sets = ["--set", "optim.lr=3e-3", "--set", "data.patch_size=6", "--set", "train.ema=0.5"]
    assert main(["train", "--config", str(cfg), *sets, "--set", "train.iterations=6",
                 "--set", f"run.dir={tmp_path / 'ref'}"]) == 0
    assert main(["train", "--config", str(cfg), *sets]) == 0  # 4 iterations, then continue
    assert main(["train", "--resume", str(run), "--set", "train.iterations=6"]) == 0
    capsys.readouterr()
    assert _losses(run) == _losses(tmp_path / "ref")
    kept = yaml.safe_load((run / "config.yaml").read_text())
    assert (kept["optim"]["lr"], kept["data"]["patch_size"], kept["train"]["iterations"]) == \
        (3e-3, 6, 6)
    ck = load_checkpoint(checkpoint_files(run)[-1])
    assert ck["meta"]["config"]["optim"]["lr"] == 3e-3 and ck["ema"] is not None
    assert ck["meta"]["sampler"]["next_sample"] == 6 * 2


# ----------------------------------------------------------------------------- bad configs
BAD = ["optim.lr=.nan", "optim.lr=.inf", "optim.lr=0", "optim.lr=-1e-3", "run.ckpt_every=0",
       "train.log_every=0", "run.keep_last=-1", "run.keep_last=0", "train.threads=-1",
       "data.workers=-1", "val.every=0", "data.limit=0", "schedule.warmup=-1",
       "schedule.eta_min=-1", "schedule.period=0", "optim.weight_decay=.nan",
       "optim.grad_clip=-1", "optim.betas=[0.9, 1.5]", "optim.betas=[.nan, 0.9]",
       "train.time_limit_min=0", "train.ortho_alpha=.nan", "train.ema=.nan", "train.ema=1",
       "run.seed=-1", "train.iterations=.inf", "train.iterations=0", "val.crop_px=0",
       "val.crops=-1", "data.batch_size=0", "data.patch_size=2", "model.scale=.nan",
       # values YAML cannot parse, or refuses
       "model.args={num_feat: 8", "data.train=[a", "optim.lr=@3", "train.iterations=*x",
       "optim.lr=!!python/object/apply:os.system [touch pwned]", "optim.lr: 1",
       "train.device=quantum", "train.device=cuda:7", "data.train=[]"]


@pytest.mark.parametrize("bad", BAD)
def test_bad_value_stops_at_start_up_in_one_line(recipe, capsys, bad):
    cfg, run = recipe
    line = _one_line_error(capsys, main(["train", "--config", str(cfg), "--set", bad]))
    key = bad.split("=")[0].split(":")[0]
    assert key in line or bad in line, line
    assert not run.exists()  # stopped before the run folder, let alone a step


@pytest.mark.parametrize("where", ["data.train", "val.dataset", "hr_lr"])
def test_missing_dataset_stops_at_start_up(recipe, capsys, tmp_path, where):
    cfg, run = recipe
    gone = tmp_path / "nowhere"
    value = {"data.train": f"data.train=[{gone}]", "val.dataset": f"val.dataset={gone}",
             "hr_lr": f"data.train=[{{hr: {tmp_path / 'train'}, lr: {gone}}}]"}[where]
    line = _one_line_error(capsys, main(["train", "--config", str(cfg), "--set", value,
                                         "--set", "val.every=1000"]))
    key = "val.dataset" if where == "val.dataset" else "data.train"
    assert str(gone) in line and key in line
    assert not run.exists()


def test_run_dir_that_is_a_file_stops_at_start_up(recipe, capsys):
    cfg, run = recipe
    rc = main(["train", "--config", str(cfg), "--set", f"run.dir={cfg}"])
    line = _one_line_error(capsys, rc)
    assert "run.dir" in line and str(cfg) in line
    assert "iterations" in cfg.read_text()  # the file is untouched


@pytest.mark.parametrize("args", [[], ["--resume"], ["--resume", "{cfg}"], ["--resume", "{tmp}"],
                                  ["--config", "{tmp}/none.yaml"]])
def test_train_without_a_usable_config_or_run_is_one_line(recipe, capsys, tmp_path, args):
    cfg, run = recipe
    args = [a.format(cfg=cfg, tmp=tmp_path) for a in args]
    line = _one_line_error(capsys, main(["train", *args]))
    assert "--config" in line or "none.yaml" in line or "run folder" in line


def test_binary_config_file_is_one_line(capsys, tmp_path):
    (tmp_path / "bin.yaml").write_bytes(bytes(range(256)))
    line = _one_line_error(capsys, main(["train", "--config", str(tmp_path / "bin.yaml")]))
    assert "bin.yaml" in line


def test_empty_val_dataset_stops_at_start_up(recipe, capsys, tmp_path):
    cfg, run = recipe
    (tmp_path / "empty" / "HR").mkdir(parents=True)
    line = _one_line_error(capsys, main(["train", "--config", str(cfg), "--set",
                                         f"val.dataset={tmp_path / 'empty'}"]))
    assert "val.dataset" in line and "no images" in line and not run.exists()


def test_a_fresh_run_never_replaces_a_finished_one(recipe, capsys):
    cfg, run = _trained(recipe, capsys)
    for p in checkpoint_files(run):
        p.unlink()
    weights = (run / "model.safetensors").read_bytes()
    line = _one_line_error(capsys, main(["train", "--config", str(cfg)]))
    assert "model.safetensors" in line and "--resume" in line
    line = _one_line_error(capsys, main(["train", "--resume", str(run)]))
    assert "no checkpoint to resume" in line
    assert (run / "model.safetensors").read_bytes() == weights


def test_a_failing_validation_keeps_the_steps_made(recipe, capsys, tmp_path):
    cfg, run = recipe
    (tmp_path / "val" / "HR" / "w.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    line = _one_line_error(capsys, main(["train", "--config", str(cfg), "--set",
                                         f"val.dataset={tmp_path / 'val'}", "--set", "val.every=3",
                                         "--set", "run.ckpt_every=100", "--set", "val.crops=0"]))
    assert "w.png" in line
    assert [load_checkpoint(p)["meta"]["step"] for p in checkpoint_files(run)] == [3]


def test_a_checkpoint_that_cannot_be_written_is_one_line(recipe, capsys):
    cfg, run = recipe
    run.mkdir()
    (run / "checkpoints").write_text("in the way")
    line = _one_line_error(capsys, main(["train", "--config", str(cfg)]))
    assert "step_00000002.pt" in line and "cannot write" in line


def test_a_second_writer_into_a_run_folder_is_refused(recipe, capsys):
    fcntl = pytest.importorskip("fcntl", reason="folder locks are POSIX")
    cfg, run = recipe
    run.mkdir()
    fd = os.open(run, os.O_RDONLY)  # another training process holds the folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = _one_line_error(capsys, main(["train", "--config", str(cfg)]))
        assert "in use" in line and not (run / "config.yaml").exists()
    finally:
        os.close(fd)
    assert main(["train", "--config", str(cfg)]) == 0  # free again: it trains


def test_keep_last_one_keeps_a_resumable_checkpoint(recipe, capsys):
    cfg, run = _trained(recipe, capsys, "--set", "run.keep_last=1")
    assert [p.name for p in checkpoint_files(run)] == ["step_00000004.pt"]
    assert main(["train", "--resume", str(run), "--set", "train.iterations=6"]) == 0
    assert [load_checkpoint(p)["meta"]["step"] for p in checkpoint_files(run)] == [6]


# ----------------------------------------------------------------------------- core install
def test_training_without_tensorboard_logs_jsonl_and_says_so_once(recipe, capsys, caplog,
                                                                monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    cfg, run = recipe
    caplog.set_level(logging.INFO, "bsrn.train")
    assert main(["train", "--config", str(cfg), "--set", "run.tensorboard=true"]) == 0
    said = [r.getMessage() for r in caplog.records if "TensorBoard" in r.getMessage()]
    assert len(said) == 1 and "log.jsonl" in said[0] and "bsrn[tensorboard]" in said[0]
    assert sorted(_losses(run)) == [1, 2, 3, 4] and (run / "log.csv").is_file()
    assert not (run / "tb").exists()
    assert "Traceback" not in capsys.readouterr().err
