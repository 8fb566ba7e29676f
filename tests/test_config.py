"""bsrn.config: typed recipes, unknown keys named with the closest one, dotted overrides."""
import math
from pathlib import Path

import pytest

from bsrn.config import TrainConfig, load_config
from bsrn.errors import ConfigError
from bsrn.train import lr_at

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig) and cfg.data.train


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_official_recipe_bsrn(scale):
    """Reference section 5: 48 px LR, batch 64, Adam 1e-3, cosine to 1e-7 over 1M, L1, aug."""
    c = load_config(CONFIGS / f"bsrn_x{scale}.yaml")
    assert (c.model.name, c.model.scale) == ("bsrn", scale)
    assert (c.data.patch_size, c.data.batch_size, c.data.batch_mode) == (48, 64, "global")
    assert (c.optim.name, c.optim.lr, c.optim.betas, c.optim.weight_decay) == \
        ("adam", 1e-3, [0.9, 0.999], 0.0)
    assert (c.schedule.name, c.schedule.eta_min, c.schedule.warmup) == ("cosine", 1e-7, 0)
    assert c.train.iterations == 1_000_000 and c.schedule.period is None
    assert c.data.flip and c.data.rot and c.train.ema == 0 and c.optim.grad_clip == 0


def test_official_recipe_bsrn_s():
    c = load_config(CONFIGS / "bsrn_s_x4.yaml")
    assert (c.model.name, c.model.scale, c.data.patch_size, c.data.batch_size) == \
        ("bsrn_s", 4, 64, 256)
    assert (c.optim.lr, c.train.iterations, c.schedule.eta_min) == (2e-3, 1_500_000, 1e-7)


def test_unknown_key_names_the_closest(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim\.lrr.*did you mean 'lr'"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'.*'train'"):
        load_config(None, ["trian.iterations=5"])
    with pytest.raises(ConfigError, match=r"data\.patch_sise.*'patch_size'"):
        load_config(None, ["data.patch_sise=5"])


def test_overrides_and_coercion(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 1e-3\n")  # YAML 1.1 reads 1e-3 as a string
    c = load_config(p, ["train.iterations=1e3", "model.args={num_feat: 16}", "val.dataset=null",
                        "data.train=[a, {hr: b, lr: c}]", "train.compile=true"])
    assert c.optim.lr == 1e-3 and isinstance(c.optim.lr, float)
    assert c.train.iterations == 1000 and c.model.args == {"num_feat": 16}
    assert c.val.dataset is None and c.train.compile is True
    assert c.data.train == ["a", {"hr": "b", "lr": "c"}]


@pytest.mark.parametrize("override, key", [
    ("train.iterations=abc", "train.iterations"), ("model.scale=5", "model.scale"),
    ("train.amp=fp8", "train.amp"), ("data.loader=gpu", "data.loader"),
    ("train.iterations=2.5", "train.iterations"), ("optim.lr=-1", "optim.lr")])
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_cosine_schedule_hand_values():
    c = load_config(None, ["optim.lr=1e-3", "schedule.eta_min=1e-7", "train.iterations=1000"])
    assert lr_at(0, c) == pytest.approx(1e-3)
    assert lr_at(500, c) == pytest.approx((1e-3 + 1e-7) / 2)
    assert lr_at(250, c) == pytest.approx(1e-7 + (1e-3 - 1e-7) * (1 + math.sqrt(0.5)) / 2)
    assert lr_at(1000, c) == pytest.approx(1e-7) and lr_at(5000, c) == pytest.approx(1e-7)
    w = load_config(None, ["schedule.warmup=10", "optim.lr=1e-3"])
    assert lr_at(0, w) == pytest.approx(1e-4) and lr_at(9, w) == pytest.approx(1e-3)


def test_cli_reports_a_bad_key_in_one_line(capsys):
    from bsrn.cli import main
    rc = main(["train", "--config", str(CONFIGS / "quick.yaml"), "--set", "optim.lrr=1e-3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "optim.lrr" in err[0] and "'lr'" in err[0]


def _numeric_fields():
    """Every int or float field of every config section, as ``section.key``."""
    import typing
    for section, cls in typing.get_type_hints(TrainConfig).items():
        for name, tp in typing.get_type_hints(cls).items():
            inner = [a for a in (typing.get_args(tp) or (tp,)) if a is not type(None)]
            if inner[0] in (int, float):
                yield f"{section}.{name}"


@pytest.mark.parametrize("key", list(_numeric_fields()))
@pytest.mark.parametrize("value", ["-1", ".nan", ".inf", "-.inf"])
def test_every_numeric_field_has_a_range(key, value):
    """No numeric field takes a negative, NaN or infinite value: each is refused, by name."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [f"{key}={value}"])


def test_numeric_fields_are_all_found():
    keys = set(_numeric_fields())
    assert {"run.ckpt_every", "run.keep_last", "train.log_every", "optim.lr", "train.threads",
            "data.workers", "val.every", "schedule.warmup", "run.seed"} <= keys
    assert len(keys) == 24


@pytest.mark.parametrize("override", ["model.args={num_feat: 8", "data.train=[a",
                                      "optim.lr=!!python/name:os.system"])
def test_unparsable_set_value_is_one_config_error(override):
    with pytest.raises(ConfigError, match="not valid YAML") as e:
        load_config(None, [override])
    assert "\n" not in str(e.value)


def test_resume_reads_the_config_kept_in_the_run_folder(tmp_path):
    from bsrn.config import dump_config, load_run_config
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(load_config(None, ["optim.lr=3e-3",
                                                                    "run.dir=elsewhere"])))
    cfg = load_run_config(None, ["train.iterations=7"], str(run))
    assert (cfg.optim.lr, cfg.train.iterations, cfg.run.dir, cfg.run.resume) == \
        (3e-3, 7, str(run), True)
    fresh = tmp_path / "c.yaml"
    fresh.write_text(f"run:\n  dir: {run}\n")
    assert load_run_config(fresh, [], True).optim.lr == 3e-3  # the kept config, not the file's
    assert load_run_config(fresh, [], False).optim.lr == 1e-3
    with pytest.raises(ConfigError, match="not a bsrn run folder"):
        load_run_config(None, [], str(tmp_path))
