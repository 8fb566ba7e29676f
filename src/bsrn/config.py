"""Typed training configuration: dataclasses, YAML loading and dotted overrides.

YAML sections mirror BasicSR's options files (model, data, optim, schedule, train, val, run).
Unknown keys are rejected at start-up with the closest valid name, numbers are coerced (YAML 1.1
reads ``1e-3`` as a string), and domain rules (every numeric field has its range) live in
``__post_init__``. ``check_paths`` checks that the datasets exist, at start-up before any step.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError


@dataclass
class ModelSection:
    """Network: a registry preset plus overrides; ``init`` warm-starts from weights."""
    name: str = "bsrn"
    scale: int = 4
    args: dict = field(default_factory=dict)
    init: str | None = None          # path or bundled name; mismatching tensors are skipped

    def __post_init__(self):
        if self.scale not in (2, 3, 4):
            raise ConfigError(f"model.scale must be 2, 3 or 4, got {self.scale}")
        if self.init is not None and not self.init.strip():
            raise ConfigError("model.init must name weights or be null, got an empty string")


@dataclass
class DataSection:
    """Training data: HR folders (LR made by MATLAB bicubic, cached) or {hr, lr} pairs."""
    train: list = field(default_factory=list)
    patch_size: int = 48             # LR patch side (HR patch = patch_size * scale)
    batch_size: int = 64             # global batch, split over DDP ranks (see batch_mode)
    batch_mode: str = "global"       # global: kept for any world size; per_rank: x world size
    loader: str = "workers"          # workers (DataLoader processes) | memory (device-resident)
    workers: int = 4                 # DataLoader processes; 0 = crop in the main process
    cache_dir: str | None = None     # LR cache; default <run.dir>/lr_cache
    lr_variant: str = "uint8"        # MATLAB bicubic variant for made LR (see bsrn.imresize)
    flip: bool = True                # horizontal and vertical flips
    rot: bool = True                 # transpose (with flips: all 8 rot90/flip symmetries)
    limit: int | None = None         # use only the first N images (for quick runs)

    def __post_init__(self):
        if isinstance(self.train, (str, dict)):
            self.train = [self.train]
        for entry in self.train:
            if isinstance(entry, dict) and set(entry) != {"hr", "lr"}:
                raise ConfigError(f"data.train entries are folders or {{hr: DIR, lr: DIR}}, "
                                  f"got keys {sorted(entry)}")
            if isinstance(entry, dict) and not all(isinstance(v, str) and v.strip()
                                                   for v in entry.values()):
                raise ConfigError(f"data.train: hr and lr must be folder names, got {entry!r}")
            if not isinstance(entry, (str, dict)) or entry == "":
                raise ConfigError(f"data.train: expected a folder or {{hr, lr}}, got {entry!r}")
        _at_least("data.patch_size", self.patch_size, 4)
        _at_least("data.batch_size", self.batch_size, 1)
        _at_least("data.workers", self.workers, 0)
        _at_least("data.limit", self.limit, 1)
        _choice("data.batch_mode", self.batch_mode, ("global", "per_rank"))
        _choice("data.loader", self.loader, ("workers", "memory"))
        _choice("data.lr_variant", self.lr_variant, ("uint8", "double"))


@dataclass
class OptimSection:
    """Adam (the paper's optimiser) or AdamW."""
    name: str = "adam"
    lr: float = 1e-3
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    grad_clip: float = 0.0           # max global grad norm; 0 = no clipping (norm still logged)

    def __post_init__(self):
        _choice("optim.name", self.name, ("adam", "adamw"))
        _above("optim.lr", self.lr, 0)
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas must have two values, got {self.betas}")
        self.betas = [_coerce(b, float, "optim.betas") for b in self.betas]
        for b in self.betas:
            if not 0.0 <= b < 1.0:
                raise ConfigError(f"optim.betas must be in [0, 1), got {self.betas}")
        _at_least("optim.weight_decay", self.weight_decay, 0)
        _at_least("optim.grad_clip", self.grad_clip, 0)


@dataclass
class ScheduleSection:
    """Cosine annealing from optim.lr to eta_min over ``period`` iterations (default: all)."""
    name: str = "cosine"
    eta_min: float = 1e-7
    period: int | None = None
    warmup: int = 0                  # linear warm-up iterations (the paper uses none)

    def __post_init__(self):
        _choice("schedule.name", self.name, ("cosine", "constant"))
        _at_least("schedule.eta_min", self.eta_min, 0)
        _at_least("schedule.period", self.period, 1)
        _at_least("schedule.warmup", self.warmup, 0)


@dataclass
class TrainSection:
    """The loop: iterations, precision, compile, EMA, BSConv-S regulariser, guards."""
    iterations: int = 1_000_000
    amp: str = "none"                # none | bf16 | fp16 (fp16 uses a grad scaler)
    channels_last: bool = True
    compile: bool = False
    ema: float = 0.0                 # EMA decay of the weights, e.g. 0.999; 0 = off
    ortho_alpha: float = 0.1         # BSConv-S orthonormality weight (only where BSConvS is used)
    deterministic: bool = False
    device: str = "auto"
    threads: int | None = None       # torch CPU threads; null or 0 = torch's default
    log_every: int = 100
    time_limit_min: float | None = None   # stop (checkpointed, resumable) after this wall time

    def __post_init__(self):
        _at_least("train.iterations", self.iterations, 1)
        _choice("train.amp", self.amp, ("none", "bf16", "fp16"))
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"train.ema must be in [0, 1), got {self.ema}")
        _at_least("train.ortho_alpha", self.ortho_alpha, 0)
        _at_least("train.threads", self.threads, 0)
        _at_least("train.log_every", self.log_every, 1)
        _above("train.time_limit_min", self.time_limit_min, 0)


@dataclass
class ValSection:
    """Periodic validation: Y-channel PSNR/SSIM on a benchmark folder (paper protocol)."""
    dataset: str | None = None
    every: int = 5000
    limit: int | None = None         # first N images only
    lr_source: str | None = None     # files | matlab | None (files when present)
    crops: int = 3                   # crops saved as images at each validation
    crop_px: int = 96

    def __post_init__(self):
        if self.lr_source not in (None, "files", "matlab"):
            raise ConfigError(f"val.lr_source must be files, matlab or null, got {self.lr_source}")
        if self.dataset is not None and not self.dataset.strip():
            raise ConfigError("val.dataset must be a folder or null, got an empty string")
        _at_least("val.every", self.every, 1)
        _at_least("val.limit", self.limit, 1)
        _at_least("val.crops", self.crops, 0)
        _at_least("val.crop_px", self.crop_px, 4)


@dataclass
class RunSection:
    """Output folder, seed, resume and checkpoint policy."""
    dir: str = "runs/bsrn"
    seed: int = 0
    resume: bool = False
    ckpt_every: int = 5000
    keep_last: int = 3               # checkpoints kept (the newest ones); at least 1
    tensorboard: bool = True         # needs the [tensorboard] extra; JSONL/CSV logs always
    progress: bool = True

    def __post_init__(self):
        if not self.dir.strip():
            raise ConfigError("run.dir must be a folder, got an empty string")
        if not 0 <= self.seed < 2 ** 32:
            raise ConfigError(f"run.seed must be in [0, 2^32), got {self.seed}")
        _at_least("run.ckpt_every", self.ckpt_every, 1)
        _at_least("run.keep_last", self.keep_last, 1)


@dataclass
class TrainConfig:
    """A full training recipe (see ``configs/*.yaml``)."""
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    val: ValSection = field(default_factory=ValSection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self):
        if self.val.crop_px < self.model.scale:
            raise ConfigError(f"val.crop_px must be >= model.scale ({self.model.scale}), "
                              f"got {self.val.crop_px}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check_paths(self) -> None:
        """Every dataset folder exists (training and validation): checked before any step."""
        from .data import GENERATE

        if not self.data.train:
            raise ConfigError("data.train: no training folder given")
        for entry in self.data.train:
            if entry == GENERATE:  # synthetic images, made at start
                continue
            for folder in (entry.values() if isinstance(entry, dict) else [entry]):
                if not Path(folder).is_dir():
                    raise ConfigError(f"data.train: {folder}: no such folder")
        if self.val.dataset is not None:
            from .evaluate import hr_dir, list_images
            d = Path(self.val.dataset)
            if not d.is_dir():
                raise ConfigError(f"val.dataset: {d}: no such folder")
            if not list_images(hr_dir(d)):
                raise ConfigError(f"val.dataset: {hr_dir(d)}: no images")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return _build(cls, d or {}, "")


def _at_least(key, value, low):
    """``value`` (None allowed: the field is optional) is a finite number >= ``low``."""
    if value is not None and not (math.isfinite(value) and value >= low):
        raise ConfigError(f"{key} must be a finite number >= {low}, got {value}")


def _above(key, value, low):
    """``value`` (None allowed) is a finite number > ``low``."""
    if value is not None and not (math.isfinite(value) and value > low):
        raise ConfigError(f"{key} must be a finite number > {low}, got {value}")


def _choice(key, value, allowed):
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def _closest(key: str, options) -> str:
    m = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{m[0]}'?)" if m else f" (valid: {', '.join(options)})"


def _coerce(value, tp, key):
    """Coerce a YAML value onto a field type (int, float, bool, str, list, dict, Optional)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    try:
        if tp is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if tp is int:
            if isinstance(value, bool):
                raise ValueError
            f = float(value)
            if f != int(f):
                raise ValueError
            return int(f)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if tp is list or origin is list:
            return list(value) if isinstance(value, (list, tuple)) else [value]
        if tp is dict or origin is dict:
            if value is None:
                return {}
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError, OverflowError):
        name = getattr(tp, "__name__", str(tp))
        raise ConfigError(f"{key}: expected {name}, got {value!r}") from None
    return value


def _build(cls, d: dict, prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in d.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}'{_closest(key, names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def apply_overrides(d: dict, overrides: list[str] | None) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a nested dict."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML "
                              f"({_first_line(e)})") from None
        parts = key.strip().split(".")
        node, cls = d, TrainConfig
        for i, part in enumerate(parts):
            names = [f.name for f in dataclasses.fields(cls)] if cls else None
            if names is not None and part not in names:
                where = ".".join(parts[:i + 1])
                raise ConfigError(f"unknown config key '{where}'{_closest(part, names)}")
            if i == len(parts) - 1:
                node[part] = value
            else:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
                tp = typing.get_type_hints(cls)[part] if cls else None
                cls = tp if tp is not None and dataclasses.is_dataclass(tp) else None
    return d


def load_config(path: str | os.PathLike | None = None,
                overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (or defaults when ``path`` is None), apply overrides, validate."""
    d = {}
    if path is not None:
        path = Path(path)
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text (YAML) file") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML ({_first_line(e)})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(d).__name__}")
    try:
        return TrainConfig.from_dict(apply_overrides(d, overrides))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def load_run_config(config: str | os.PathLike | None = None, overrides: list[str] | None = None,
                    resume: bool | str | os.PathLike = False) -> TrainConfig:
    """The config of a training command. Fresh: ``config`` plus ``overrides``. Resuming: the
    resolved config kept in the run folder (``RUN_DIR/config.yaml``), so no ``--set`` needs
    repeating, plus the ``overrides`` given now. ``resume`` is True (run.dir from ``config``)
    or the run folder itself."""
    if not resume:
        if config is None:
            raise ConfigError("give --config FILE (or --resume RUN_DIR to continue a run)")
        return load_config(config, overrides)
    if resume is True:
        if config is None:
            raise ConfigError("--resume without a folder needs --config FILE")
        run_dir = Path(load_config(config, overrides).run.dir)
    else:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise ConfigError(f"--resume {run_dir}: no such run folder")
    kept = run_dir / "config.yaml"
    if kept.is_file():
        cfg = load_config(kept, overrides)
    elif config is not None:
        cfg = load_config(config, overrides)
    else:
        raise ConfigError(f"{kept}: no such file (not a bsrn run folder; pass --config FILE)")
    cfg.run.dir, cfg.run.resume = str(run_dir), True
    return cfg


def _first_line(e: Exception) -> str:
    return " ".join(str(e).split("\n")[0].split())


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
