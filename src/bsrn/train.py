"""The BSRN training loop, ``train(cfg)``, readable top to bottom.

Setup, checkpoints and validation are module-level functions over explicit state
(``Processes``, ``TrainState``); the loop itself shows every feature as a visible branch: AMP
(bf16, or fp16 with a grad scaler), channels_last, torch.compile, EMA of the weights, the
BSConv-S orthonormality term, gradient-norm logging and a NaN/Inf guard, DDP under ``torchrun``,
atomic checkpoints with exact resume, periodic Y-channel validation, JSONL/CSV (and TensorBoard
when installed) logs and a tqdm bar.

Training checkpoints hold tensors and plain values only (no pickled objects): they are read back
with ``torch.load(weights_only=True)``, and a damaged newest one is set aside for the newest
intact one.

Run it with ``bsrn train --config configs/bsrn_x4.yaml`` or, on N processes,
``torchrun --nproc_per_node N -m bsrn train --config ...``.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import json
import logging
import math
import os
import random
import re
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .checkpoint import atomic_write, read_checkpoint, resolve_weights, save_model
from .config import TrainConfig, dump_config, load_config
from .data import PatchSampler, load_pairs, memory_batches, worker_batches
from .errors import BsrnError, CheckpointError, ConfigError
from .models import create_model
from .models.blocks import BSConvS, orthogonality_loss

log = logging.getLogger("bsrn.train")

__all__ = ["train", "TrainingError", "load_config", "TrainConfig", "lr_at", "TrainState",
           "save_checkpoint", "load_checkpoint", "validate"]

CHECKPOINT_FORMAT = "bsrn-train-state/2"


class TrainingError(BsrnError):
    """Training stopped: non-finite loss or gradients (the message says at which step/where)."""


# ----------------------------------------------------------------------------- schedule
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate at ``step`` (0-based): optional linear warm-up, then one cosine period
    lr = eta_min + (lr0 - eta_min)(1 + cos(pi t / T)) / 2, held at eta_min after T."""
    lr0, sc = cfg.optim.lr, cfg.schedule
    if sc.warmup and step < sc.warmup:
        return lr0 * (step + 1) / sc.warmup
    if sc.name == "constant":
        return lr0
    period = sc.period or cfg.train.iterations
    t = min(step - sc.warmup, period)
    return sc.eta_min + 0.5 * (lr0 - sc.eta_min) * (1 + math.cos(math.pi * t / period))


# ----------------------------------------------------------------------------- setup
@dataclass
class Processes:
    """Where this process trains: its DDP rank among ``world`` and its device."""
    rank: int
    world: int
    device: torch.device
    global_batch: int
    local_batch: int
    own_group: bool = False      # this call initialised the process group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_processes(cfg: TrainConfig) -> Processes:
    """Rank, world size and device from torchrun's environment (one process otherwise); the
    global batch split over the ranks; the process group when there are several."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = (int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))) \
        if world > 1 else (0, 0)
    if cfg.data.batch_mode == "global":
        if cfg.data.batch_size % world:
            raise ConfigError(f"data.batch_size {cfg.data.batch_size} is not divisible by the "
                              f"{world} processes (or set data.batch_mode=per_rank)")
        global_batch = cfg.data.batch_size
    else:
        global_batch = cfg.data.batch_size * world
    if cfg.train.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(cfg.train.device)
        except RuntimeError:
            raise ConfigError(f"train.device: unknown device {cfg.train.device!r}") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"train.device: {device} is not available here "
                          f"({torch.cuda.device_count()} CUDA devices)")
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError, ValueError) as e:
        raise ConfigError(f"train.device: {device} is not usable here "
                          f"({' '.join(str(e).split())[:120]})") from None
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    return Processes(rank, world, device, global_batch, global_batch // world, own_group)


def seed_everything(cfg: TrainConfig, device: torch.device) -> None:
    """The same seed on every rank (identical initial weights); optional determinism."""
    random.seed(cfg.run.seed)
    np.random.seed(cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


@dataclass
class TrainState:
    """Everything a training checkpoint restores (with the RNG states)."""
    model: torch.nn.Module
    ema: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    step: int = 0
    best_psnr: float = -math.inf
    best_step: int = -1

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated and saved: the EMA when enabled."""
        return self.ema if self.ema is not None else self.model


def build_state(cfg: TrainConfig, device: torch.device) -> TrainState:
    """Network (freshly initialised from the current seed), EMA copy, optimiser, cosine
    schedule and grad scaler."""
    try:
        model = create_model(cfg.model.name, scale=cfg.model.scale, **cfg.model.args)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"model: cannot build {cfg.model.name!r} with {cfg.model.args}: {e}") \
            from None
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.train.ema else None
    opt_cls = torch.optim.AdamW if cfg.optim.name == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                        weight_decay=cfg.optim.weight_decay,
                        **({"fused": True} if device.type == "cuda" else {}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: lr_at(t, cfg) / cfg.optim.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    return TrainState(model, ema, optimizer, scheduler, scaler)


def warm_start(state: TrainState, source: str) -> str:
    """Copy every tensor of ``source`` whose name and shape match (e.g. the body of an x2 model
    into an x4 one; the upsampler keeps its fresh init). Returns a one-line summary."""
    sd, _ = read_checkpoint(resolve_weights(source))
    own = state.model.state_dict()
    take = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    if not take:
        raise ConfigError(f"model.init: {source}: no tensor matches {type(state.model).__name__}")
    state.model.load_state_dict(take, strict=False)
    if state.ema is not None:
        state.ema.load_state_dict(state.model.state_dict())
    return f"warm start from {source}: {len(take)}/{len(own)} tensors"


def prepare_run_dir(cfg: TrainConfig) -> contextlib.ExitStack:
    """Create and lock ``run.dir`` (one training process at a time; refusing a finished or
    checkpointed run unless resuming), keep the resolved config in it, and log to
    ``train.log`` there. Closing the returned stack releases the lock and the log file."""
    run_dir = Path(cfg.run.dir)
    cleanup = contextlib.ExitStack()
    try:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"run.dir {run_dir}: cannot create ({e.strerror})") from None
        _lock_folder(run_dir, cleanup)
        done = [p for p in ("model.safetensors", "best.safetensors") if (run_dir / p).is_file()]
        if not cfg.run.resume and (checkpoint_files(run_dir) or done):
            held = "checkpoints" if checkpoint_files(run_dir) else done[0]
            raise ConfigError(f"run.dir {run_dir} already holds {held} of a run: pass --resume "
                              "to continue it, or choose another run.dir")
        if cfg.run.resume and done and not checkpoint_files(run_dir):
            raise ConfigError(f"run.dir {run_dir}: no checkpoint to resume from beside the "
                              f"finished {done[0]}; choose another run.dir to train again")
        try:
            atomic_write(run_dir / "config.yaml", lambda t: Path(t).write_text(dump_config(cfg)))
        except OSError as e:
            raise ConfigError(f"run.dir {run_dir}: cannot write there ({e.strerror})") from None
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        cleanup.callback(handler.close)
        cleanup.callback(log.removeHandler, handler)
    except BaseException:
        cleanup.close()
        raise
    return cleanup


def _lock_folder(run_dir: Path, cleanup: contextlib.ExitStack) -> None:
    """An exclusive advisory lock on the folder itself, released on exit or kill (POSIX)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        return
    fd = os.open(run_dir, os.O_RDONLY)
    cleanup.callback(os.close, fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise ConfigError(f"run.dir {run_dir} is in use by another training process") from None


def make_batches(cfg: TrainConfig, procs: Processes, start_step: int):
    """Training pairs (rank 0 fills the LR cache first) and the batch iterator from
    ``start_step``. Returns (number of images, batches)."""
    cache_dir = cfg.data.cache_dir or str(Path(cfg.run.dir) / "lr_cache")
    if procs.world > 1 and not procs.is_main:
        dist.barrier()
    pairs = load_pairs(cfg.data.train, cfg.model.scale, cfg.data.patch_size, cache_dir,
                       cfg.data.lr_variant, cfg.data.limit,
                       progress=procs.is_main and cfg.run.progress)
    if procs.world > 1 and procs.is_main:
        dist.barrier()
    sampler = PatchSampler(pairs, cfg.model.scale, cfg.data.patch_size, cfg.run.seed,
                           cfg.data.flip, cfg.data.rot)
    args = (sampler, start_step, cfg.train.iterations, procs.global_batch, procs.rank,
            procs.local_batch)
    if cfg.data.loader == "memory":
        return len(pairs), memory_batches(*args, procs.device, cfg.train.channels_last)
    return len(pairs), worker_batches(*args, cfg.data.workers, procs.device,
                                      cfg.train.channels_last)


def open_tensorboard(cfg: TrainConfig, step: int):
    """A TensorBoard writer, or None when off or not installed (then said once)."""
    if not cfg.run.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("TensorBoard is not installed: logging to log.jsonl and log.csv only "
                    "(pip install \"bsrn[tensorboard]\" for TensorBoard)")
        return None
    return SummaryWriter(str(Path(cfg.run.dir) / "tb"), purge_step=step or None)


class _RunLog:
    """Plain logs of the run: ``log.jsonl`` (one JSON object per row) and ``log.csv`` (the same
    rows under fixed columns, for spreadsheets). A resumed run drops rows written after its
    checkpoint, so both files read as one uninterrupted run."""

    COLUMNS = ("step", "loss", "lr", "grad_norm", "it_s", "val_psnr", "val_ssim", "time")

    def __init__(self, run_dir: Path, resume_step: int):
        self.jsonl, self.csv = run_dir / "log.jsonl", run_dir / "log.csv"
        rows = []
        if resume_step and self.jsonl.is_file():
            for line in self.jsonl.read_text(errors="replace").splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a line cut short by a kill
                    continue
            rows = [r for r in rows if isinstance(r, dict) and r.get("step", 0) <= resume_step]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
        self.csv.write_text(",".join(self.COLUMNS) + "\n" + "".join(map(self._csv_line, rows)))

    @classmethod
    def _csv_line(cls, row: dict) -> str:
        return ",".join("" if row.get(c) is None else repr(row[c]) for c in cls.COLUMNS) + "\n"

    def write(self, row: dict):
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.csv, "a") as f:
            f.write(self._csv_line(row))


class StopRequest:
    """SIGTERM/SIGINT set ``requested``: the loop finishes its step, checkpoints and exits
    resumable. A context manager that restores the previous handlers."""

    def __init__(self, install: bool):
        self.requested, self._install, self._old = False, install, {}

    def _handle(self, signum, frame):
        self.requested = True

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT) if self._install else ():
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def agree_to_stop(want: bool, procs: Processes) -> bool:
    """True when any rank wants to stop (one all-reduce; the loop calls this every
    ``train.log_every`` steps under DDP)."""
    if procs.world == 1:
        return want
    flag = torch.tensor([float(want)], device=procs.device)
    dist.all_reduce(flag)
    return bool(flag.item())


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_files(run_dir: str | os.PathLike) -> list[Path]:
    """``RUN_DIR/checkpoints/step_*.pt``, oldest first."""
    return sorted((Path(run_dir) / "checkpoints").glob("step_*.pt"))


def _rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) generator states as tensors and plain values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st = {"python": [version, list(internal), gauss],
          "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
          "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    version, internal, gauss = st["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = st["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(state: TrainState, cfg: TrainConfig, procs: Processes) -> Path:
    """Atomically write ``checkpoints/step_N.pt`` (tensors and plain values: model, optimiser,
    EMA, RNG states; JSON: counters, schedule, scaler, sampler position, resolved config), then
    delete all but the newest ``run.keep_last`` (at least one: the one just written)."""
    meta = {"step": state.step, "best_step": state.best_step,
            "best_psnr": state.best_psnr if math.isfinite(state.best_psnr) else None,
            "scheduler": state.scheduler.state_dict(), "scaler": state.scaler.state_dict(),
            "sampler": {"seed": cfg.run.seed, "global_batch": procs.global_batch,
                        "next_sample": state.step * procs.global_batch},
            "world_size": procs.world, "config": cfg.to_dict()}
    payload = {"format": CHECKPOINT_FORMAT, "meta": json.dumps(meta),
               "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
               "ema": state.ema.state_dict() if state.ema is not None else None,
               "rng": _rng_state()}
    path = Path(cfg.run.dir) / "checkpoints" / f"step_{state.step:08d}.pt"
    try:
        atomic_write(path, lambda t: torch.save(payload, t))
    except (OSError, RuntimeError) as e:  # disk full, folder removed, ...
        raise TrainingError(f"{path}: cannot write the checkpoint at step {state.step} "
                            f"({' '.join(str(e).split())[:120]})") from None
    keep = max(1, cfg.run.keep_last)
    for old in checkpoint_files(cfg.run.dir)[:-keep]:
        if old != path:
            old.unlink()
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a training checkpoint with ``torch.load(weights_only=True)`` (no code runs) and
    check its layout; ``CheckpointError`` (one line) when it is unreadable or not ours."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # e.g. about the pickle protocol of a foreign file
            warnings.simplefilter("ignore")
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, empty file, refused pickle, I/O error, ...
        raise CheckpointError(f"{path}: unreadable training checkpoint "
                              f"({_load_failure(e)})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} training checkpoint")
    try:
        meta = json.loads(ck["meta"])
        missing = [k for k in ("model", "optimizer", "rng") if not isinstance(ck.get(k), dict)]
        missing += [f"rng.{k}" for k in ("python", "numpy", "torch") if k not in ck["rng"]]
        missing += [f"meta.{k}" for k in ("step", "best_step", "best_psnr", "scheduler", "scaler")
                    if k not in meta]
        if missing or not isinstance(meta["step"], int) or meta["step"] < 0:
            raise ValueError(f"missing or bad {', '.join(missing) or 'meta.step'}")
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: damaged training checkpoint ({e})") from None
    ck["meta"] = meta
    return ck


def _load_failure(e: Exception) -> str:
    """One line for why ``torch.load(weights_only=True)`` refused a file."""
    text = str(e)
    m = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if m:
        return f"it pickles a reference to {m.group(1)}, refused unrun by the tensor-only reader"
    m = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if m:
        return f"refused by the tensor-only reader: {m.group(1).split('. ')[0][:120]}"
    first = " ".join(text.split("\n")[0].split(". ")[0].split())[:160]
    return first or f"{type(e).__name__}: empty or cut short"


def restore(state: TrainState, ck: dict, path: Path) -> None:
    """Put a checkpoint read by ``load_checkpoint`` into ``state`` and the RNGs (tensors move
    to the device of the parameters they belong to)."""
    meta = ck["meta"]
    try:
        state.model.load_state_dict(ck["model"])
        state.optimizer.load_state_dict(ck["optimizer"])
        state.scheduler.load_state_dict(meta["scheduler"])
        state.scaler.load_state_dict(meta["scaler"])
        if state.ema is not None and ck.get("ema") is not None:
            state.ema.load_state_dict(ck["ema"])
        _set_rng_state(ck["rng"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        reason = " ".join(str(e).split())[:200]
        raise ConfigError(f"{path}: does not fit the configured model and optimiser "
                          f"({reason})") from None
    state.step, state.best_step = meta["step"], meta["best_step"]
    state.best_psnr = -math.inf if meta["best_psnr"] is None else meta["best_psnr"]


def resume(state: TrainState, cfg: TrainConfig, procs: Processes) -> Path | None:
    """Restore the newest intact checkpoint of ``run.dir``. Each unreadable newer one is
    reported in one line and set aside (renamed ``*.pt.bad``) so that it is neither loaded nor
    kept in place of good ones; none intact among several is an error."""
    bad = []
    for path in reversed(checkpoint_files(cfg.run.dir)):
        try:
            ck = load_checkpoint(path)  # on the CPU: RNG states must be CPU tensors
        except CheckpointError as e:
            bad.append((path, e))
            continue
        restore(state, ck, path)
        for b, err in bad:
            if procs.is_main:
                b.replace(b.with_name(b.name + ".bad"))
                log.warning(f"{err}; set aside as {b.name}.bad, resuming from {path.name}")
        return path
    if bad:
        raise CheckpointError(f"{cfg.run.dir}: no intact training checkpoint to resume from "
                              f"({len(bad)} unreadable, newest: {bad[0][1]})")
    return None


def resume_or_warm_start(state: TrainState, cfg: TrainConfig, procs: Processes) -> str:
    """Where training starts: the newest intact checkpoint when ``run.resume``, else the
    ``model.init`` weights, else the fresh network. Returns that in one line (or '')."""
    resumed = resume(state, cfg, procs) if cfg.run.resume else None
    if resumed is not None:
        return f"resumed from {resumed} at step {state.step}"
    said = f"no checkpoint in {Path(cfg.run.dir) / 'checkpoints'}: starting at step 0" \
        if cfg.run.resume else ""
    if cfg.model.init:
        said = "; ".join(filter(None, [said, warm_start(state, cfg.model.init)]))
    return said


# ----------------------------------------------------------------------------- validation
def validate(state: TrainState, cfg: TrainConfig, device, jlog: _RunLog, tb=None) -> float:
    """Y-PSNR/SSIM of the EMA (or raw) weights on ``val.dataset`` at ``state.step``; writes the
    best weights and the validation crops, logs the scores. Returns the PSNR."""
    from .evaluate import evaluate

    run_dir, at_step = Path(cfg.run.dir), state.step
    net = state.eval_model
    net.eval()
    res = evaluate(net, cfg.val.dataset, cfg.model.scale, lr_source=cfg.val.lr_source,
                   device=device, progress=False, limit=cfg.val.limit)
    if cfg.val.crops:
        _save_val_crops(net, cfg, at_step, run_dir, device, tb)
    state.model.train()
    if res.psnr > state.best_psnr:
        state.best_psnr, state.best_step = res.psnr, at_step
        save_model(net, run_dir / "best.safetensors", _meta(cfg, at_step, res.psnr))
    jlog.write({"step": at_step, "val_psnr": res.psnr, "val_ssim": res.ssim, "time": time.time()})
    if tb is not None:
        tb.add_scalar("val/psnr_y", res.psnr, at_step)
        tb.add_scalar("val/ssim_y", res.ssim, at_step)
    log.info(f"step {at_step}: {Path(cfg.val.dataset).name} x{cfg.model.scale} Y-PSNR "
             f"{res.psnr:.3f} dB, SSIM {res.ssim:.4f} "
             f"(best {state.best_psnr:.3f} @ {state.best_step})")
    return res.psnr


def _save_val_crops(model, cfg, step, run_dir, device, tb):
    """Centre crops (bicubic | SR | HR) of the first few validation images, as PNG."""
    from .evaluate import hr_dir, list_images, load_pair, super_resolve
    from .image_io import write_png
    from .imresize import imresize

    s, n, c = cfg.model.scale, cfg.val.crops, cfg.val.crop_px
    out = run_dir / "val_images"
    for path in list_images(hr_dir(cfg.val.dataset))[:n]:
        hr, lr = load_pair(cfg.val.dataset, path, s, cfg.val.lr_source or "matlab")
        h, w = lr.shape[:2]
        ch, cw = min(h, c // s), min(w, c // s)
        y, x = (h - ch) // 2, (w - cw) // 2
        lr_c = lr[y:y + ch, x:x + cw]
        sr = super_resolve(model, lr_c, device=device)
        bic = imresize(lr_c, s)
        hr_c = hr[y * s:(y + ch) * s, x * s:(x + cw) * s]
        strip = np.concatenate([bic, sr, hr_c], axis=1)
        write_png(out / f"{path.stem}_step{step:08d}.png", strip)
        if tb is not None:
            tb.add_image(f"val/{path.stem}", strip, step, dataformats="HWC")


# ----------------------------------------------------------------------------- the loop
def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int):
    """EMA of the weights with a short warm-up: d = min(decay, (1 + t) / (10 + t))."""
    with torch.no_grad():
        d = min(decay, (1 + step) / (10 + step))
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)


def _find_bad_grad(model) -> str:
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name
    return "?"


def _last_checkpoint(cfg: TrainConfig) -> str:
    return str((checkpoint_files(cfg.run.dir) or ["none"])[-1])


def train(cfg: TrainConfig | str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """Train a model from a config; returns run_dir, weights, best_weights, best_psnr,
    final_psnr, iterations (and the trained ``model``)."""
    if not isinstance(cfg, TrainConfig):
        cfg = load_config(cfg, overrides)
    from tqdm import tqdm

    # --- start-up: everything that can be wrong is found here, before any step
    cfg.check_paths()
    procs = setup_processes(cfg)
    device, is_main, run_dir = procs.device, procs.is_main, Path(cfg.run.dir)
    seed_everything(cfg, device)
    state = build_state(cfg, device)
    run_folder = prepare_run_dir(cfg) if is_main else contextlib.ExitStack()
    tb = None
    try:
        start = resume_or_warm_start(state, cfg, procs)
        if is_main and start:
            log.info(start)
        step, total = state.step, cfg.train.iterations
        model, optimizer, scheduler, scaler = (state.model, state.optimizer, state.scheduler,
                                               state.scaler)
        fwd_model = model
        if procs.world > 1:
            fwd_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.train.compile:
            fwd_model = torch.compile(fwd_model)
        uses_bsconv_s = any(isinstance(m, BSConvS) for m in model.modules())
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.amp)
        n_images, batches = make_batches(cfg, procs, step)
        jlog = _RunLog(run_dir, step) if is_main else None
        if is_main:
            tb = open_tensorboard(cfg, step)
            n_params = sum(p.numel() for p in model.parameters())
            log.info(f"{cfg.model.name} x{cfg.model.scale} ({n_params:,} params) on {device} "
                     f"x{procs.world}; {n_images} training images; global batch "
                     f"{procs.global_batch} of {cfg.data.patch_size} px LR patches; "
                     f"{total:,} iterations from step {step}")

        # --- the loop
        model.train()
        bar = tqdm(total=total, initial=step, disable=not (is_main and cfg.run.progress),
                   unit="it", dynamic_ncols=True, smoothing=0.05)
        t_start, t_log, loss_sum, n_sum = time.time(), time.time(), 0.0, 0
        last_psnr, last_val_step, stopping = None, -1, False
        with StopRequest(install=is_main or procs.world == 1) as stop, bar:
            for lr_img, hr_img in batches:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    sr = fwd_model(lr_img)
                loss = F.l1_loss(sr.float(), hr_img)
                if uses_bsconv_s and cfg.train.ortho_alpha:
                    loss = loss + orthogonality_loss(model, cfg.train.ortho_alpha)
                if not torch.isfinite(loss):
                    raise TrainingError(f"non-finite loss ({loss.item()}) at step {step + 1} "
                                        f"(lr {scheduler.get_last_lr()[0]:.3g}); last "
                                        f"checkpoint: {_last_checkpoint(cfg)}")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                       cfg.optim.grad_clip or float("inf"))
                if not torch.isfinite(gnorm) and not scaler.is_enabled():
                    raise TrainingError(f"non-finite gradient at step {step + 1} in "
                                        f"{_find_bad_grad(model)} (loss {loss.item():.4g}); "
                                        f"last checkpoint: {_last_checkpoint(cfg)}")
                scaler.step(optimizer)  # fp16: skips the step when the scaler found inf
                scaler.update()
                scheduler.step()
                if state.ema is not None:
                    _update_ema(state.ema, model, cfg.train.ema, step)
                step = state.step = step + 1
                loss_sum, n_sum = loss_sum + loss.item(), n_sum + 1
                bar.update(1)

                at_log_step = step % cfg.train.log_every == 0 or step == total
                if is_main and at_log_step:
                    now = time.time()
                    row = {"step": step, "loss": loss_sum / n_sum,
                           "lr": scheduler.get_last_lr()[0], "grad_norm": float(gnorm),
                           "it_s": n_sum / max(now - t_log, 1e-9), "time": now}
                    jlog.write(row)
                    if tb is not None:
                        for k in ("loss", "lr", "grad_norm", "it_s"):
                            tb.add_scalar(f"train/{k}", row[k], step)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}",
                                    gnorm=f"{row['grad_norm']:.3f}")
                    t_log, loss_sum, n_sum = now, 0.0, 0
                if procs.world == 1 or step % cfg.train.log_every == 0:  # ranks agree here
                    timed_out = (cfg.train.time_limit_min is not None
                                 and time.time() - t_start > 60 * cfg.train.time_limit_min)
                    stopping = agree_to_stop(stop.requested or timed_out, procs)
                if is_main and cfg.val.dataset and (step % cfg.val.every == 0 or step == total):
                    try:
                        last_psnr, last_val_step = validate(state, cfg, device, jlog, tb), step
                    except BsrnError:  # e.g. an unreadable image: keep the steps made so far
                        save_checkpoint(state, cfg, procs)
                        raise
                if is_main and (step % cfg.run.ckpt_every == 0 or step == total or stopping):
                    save_checkpoint(state, cfg, procs)
                if stopping:
                    if is_main:
                        log.info(f"stopped at step {step}; continue with --resume {run_dir}")
                    break

        # --- final weights (EMA when enabled)
        result = {"run_dir": str(run_dir), "iterations": step, "best_psnr": state.best_psnr,
                  "final_psnr": last_psnr, "stopped_early": step < total}
        if is_main:
            if cfg.val.dataset and last_val_step != step and step == total:
                last_psnr = result["final_psnr"] = validate(state, cfg, device, jlog, tb)
            result["weights"] = str(save_model(state.eval_model, run_dir / "model.safetensors",
                                               _meta(cfg, step, last_psnr)))
            best = run_dir / "best.safetensors"
            result["best_weights"] = str(best if best.is_file() else result["weights"])
            result["best_psnr"] = state.best_psnr
    finally:
        if tb is not None:
            tb.close()
        run_folder.close()
    if procs.world > 1:
        dist.barrier()
        if procs.own_group:
            dist.destroy_process_group()
    result["model"] = model
    return result


def _meta(cfg: TrainConfig, step: int, psnr) -> dict:
    return {"iterations": step, "val_psnr_y": "" if psnr is None else f"{psnr:.4f}",
            "val_dataset": cfg.val.dataset or "", "train_data": json.dumps(cfg.data.train),
            "recipe": json.dumps({"patch": cfg.data.patch_size, "batch": cfg.data.batch_size,
                                  "lr": cfg.optim.lr, "loss": "l1"}),
            "date": datetime.date.today().isoformat(), "trainer": "bsrn train"}
