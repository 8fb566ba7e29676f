"""The BSRN training loop: one readable function, ``train(cfg)``.

Every feature is a visible branch of the loop: AMP (bf16, or fp16 with a grad scaler),
channels_last, torch.compile, EMA of the weights, the BSConv-S orthonormality term, gradient-norm
logging and a NaN/Inf guard, DDP under ``torchrun`` (rank logic lives here), atomic checkpoints
with resume, periodic Y-channel validation, TensorBoard + JSONL/CSV logs and a tqdm bar.

Run it with ``bsrn train --config configs/bsrn_x4.yaml`` or, on N processes,
``torchrun --nproc_per_node N -m bsrn train --config ...``.
"""
from __future__ import annotations

import copy
import datetime
import json
import logging
import math
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .checkpoint import atomic_write, read_checkpoint, resolve_weights, save_model
from .config import TrainConfig, dump_config, load_config
from .data import PatchSampler, load_pairs, memory_batches, worker_batches
from .errors import BsrnError, ConfigError
from .models import create_model
from .models.blocks import BSConvS, orthogonality_loss

log = logging.getLogger("bsrn.train")

__all__ = ["train", "TrainingError", "load_config", "TrainConfig", "lr_at"]


class TrainingError(BsrnError):
    """Training stopped: non-finite loss or gradients (the message says at which step/where)."""


# ----------------------------------------------------------------------------- helpers
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


def _dist_env():
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def _rng_state():
    st = {"python": random.getstate(), "numpy": np.random.get_state(),
          "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st):
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _warm_start(model, source: str) -> str:
    """Copy every tensor of ``source`` whose name and shape match (e.g. the body of an x2 model
    into an x4 one; the upsampler keeps its fresh init). Returns a one-line summary."""
    sd, _ = read_checkpoint(resolve_weights(source))
    own = model.state_dict()
    take = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    if not take:
        raise ConfigError(f"model.init: {source}: no tensor matches {type(model).__name__}")
    model.load_state_dict(take, strict=False)
    return f"warm start from {source}: {len(take)}/{len(own)} tensors"


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step_*.pt"))


def _find_bad_grad(model) -> str:
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name
    return "?"


class _RunLog:
    """Plain logs of the run: ``log.jsonl`` (one JSON object per row) and ``log.csv`` (the same
    rows under fixed columns, for spreadsheets). A resumed run drops rows written after its
    checkpoint, so both files read as one uninterrupted run."""

    COLUMNS = ("step", "loss", "lr", "grad_norm", "it_s", "val_psnr", "val_ssim", "time")

    def __init__(self, run_dir: Path, resume_step: int):
        self.jsonl, self.csv = run_dir / "log.jsonl", run_dir / "log.csv"
        rows = []
        if resume_step and self.jsonl.is_file():
            rows = [json.loads(r) for r in self.jsonl.read_text().splitlines() if r.strip()]
            rows = [r for r in rows if r.get("step", 0) <= resume_step]
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
def train(cfg: TrainConfig | str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """Train a model from a config; returns run_dir, weights, best_weights, best_psnr,
    final_psnr, iterations (and the trained ``model``)."""
    if not isinstance(cfg, TrainConfig):
        cfg = load_config(cfg, overrides)
    from tqdm import tqdm

    # --- processes and devices (DDP when launched by torchrun)
    rank, world, local_rank = _dist_env()
    is_main = rank == 0
    if cfg.train.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.data.batch_mode == "global":
        if cfg.data.batch_size % world:
            raise ConfigError(f"data.batch_size {cfg.data.batch_size} is not divisible by the "
                              f"{world} processes (or set data.batch_mode=per_rank)")
        global_batch = cfg.data.batch_size
    else:
        global_batch = cfg.data.batch_size * world
    local_batch = global_batch // world

    # --- seeds and determinism
    random.seed(cfg.run.seed)
    np.random.seed(cfg.run.seed)
    torch.manual_seed(cfg.run.seed)  # same on every rank: identical initial weights
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    run_dir = Path(cfg.run.dir)
    ckpts = _checkpoints(run_dir) if cfg.run.resume else []
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not cfg.run.resume and _checkpoints(run_dir):
            raise ConfigError(f"run.dir {run_dir} already holds checkpoints: pass --resume to "
                              "continue it, or choose another run.dir")
        atomic_write(run_dir / "config.yaml", lambda t: Path(t).write_text(dump_config(cfg)))
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        fh = logging.FileHandler(run_dir / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(fh)

    # --- model, optimiser, schedule, EMA
    scale = cfg.model.scale
    try:
        model = create_model(cfg.model.name, scale=scale, **cfg.model.args)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"model: cannot build {cfg.model.name!r} with {cfg.model.args}: {e}") \
            from None
    if cfg.model.init and not ckpts:
        msg = _warm_start(model, cfg.model.init)
        if is_main:
            log.info(msg)
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    uses_bsconv_s = any(isinstance(m, BSConvS) for m in model.modules())
    ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.train.ema else None
    opt_cls = torch.optim.AdamW if cfg.optim.name == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                        weight_decay=cfg.optim.weight_decay,
                        **({"fused": True} if device.type == "cuda" else {}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: lr_at(t, cfg) / cfg.optim.lr)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")

    # --- resume: model, optimiser, scheduler, scaler, EMA, RNG; the data sampler restarts at step
    step, best_psnr, best_step = 0, -math.inf, -1
    if ckpts:
        ck = torch.load(ckpts[-1], map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        if ema is not None and ck.get("ema") is not None:
            ema.load_state_dict(ck["ema"])
        _set_rng_state(ck["rng"])
        step, best_psnr, best_step = ck["step"], ck["best_psnr"], ck["best_step"]
        if is_main:
            log.info(f"resumed from {ckpts[-1]} at step {step}")

    fwd_model = model
    if world > 1:
        fwd_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        fwd_model = torch.compile(fwd_model)

    # --- data
    cache_dir = cfg.data.cache_dir or str(run_dir / "lr_cache")
    if world > 1 and not is_main:
        dist.barrier()  # rank 0 fills the LR cache first
    pairs = load_pairs(cfg.data.train, scale, cfg.data.patch_size, cache_dir,
                       cfg.data.lr_variant, cfg.data.limit, progress=is_main and cfg.run.progress)
    if world > 1 and is_main:
        dist.barrier()
    sampler = PatchSampler(pairs, scale, cfg.data.patch_size, cfg.run.seed, cfg.data.flip,
                           cfg.data.rot)
    total = cfg.train.iterations
    if cfg.data.loader == "memory":
        batches = memory_batches(sampler, step, total, global_batch, rank, local_batch, device,
                                 cfg.train.channels_last)
    else:
        batches = worker_batches(sampler, step, total, global_batch, rank, local_batch,
                                 cfg.data.workers, device, cfg.train.channels_last)

    # --- logs
    tb = jlog = None
    if is_main:
        jlog = _RunLog(run_dir, step)
        if cfg.run.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            tb = SummaryWriter(str(run_dir / "tb"), purge_step=step or None)
        n_params = sum(p.numel() for p in model.parameters())
        log.info(f"{cfg.model.name} x{scale} ({n_params:,} params) on {device} x{world}; "
                 f"{len(pairs)} training images; global batch {global_batch} of "
                 f"{cfg.data.patch_size} px LR patches; {total:,} iterations from step {step}")

    # --- stop requests (SIGTERM/SIGINT): finish the step, checkpoint, exit resumable
    stop = {"flag": False}
    old_handlers = {}
    if is_main or world == 1:
        def _request_stop(signum, frame):
            stop["flag"] = True
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                old_handlers[sig] = signal.signal(sig, _request_stop)
            except ValueError:  # not the main thread
                pass

    def save_checkpoint(at_step):
        if not is_main:
            return
        state = {"step": at_step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                 "ema": ema.state_dict() if ema is not None else None, "rng": _rng_state(),
                 "best_psnr": best_psnr, "best_step": best_step, "config": cfg.to_dict(),
                 "world_size": world}
        path = run_dir / "checkpoints" / f"step_{at_step:08d}.pt"
        atomic_write(path, lambda t: torch.save(state, t))
        for old in _checkpoints(run_dir)[:-cfg.run.keep_last]:
            old.unlink()

    def validate(at_step):
        """Y-PSNR/SSIM of the EMA (or raw) weights on val.dataset; saves best weights."""
        nonlocal best_psnr, best_step
        from .evaluate import evaluate
        net = ema if ema is not None else model
        net.eval()
        res = evaluate(net, cfg.val.dataset, scale, lr_source=cfg.val.lr_source, device=device,
                       progress=False, limit=cfg.val.limit)
        if cfg.val.crops:
            _save_val_crops(net, cfg, at_step, run_dir, device, tb)
        model.train()
        if res.psnr > best_psnr:
            best_psnr, best_step = res.psnr, at_step
            save_model(net, run_dir / "best.safetensors", _meta(cfg, at_step, res.psnr))
        jlog.write({"step": at_step, "val_psnr": res.psnr, "val_ssim": res.ssim,
                    "time": time.time()})
        if tb is not None:
            tb.add_scalar("val/psnr_y", res.psnr, at_step)
            tb.add_scalar("val/ssim_y", res.ssim, at_step)
        log.info(f"step {at_step}: {Path(cfg.val.dataset).name} x{scale} Y-PSNR "
                 f"{res.psnr:.3f} dB, SSIM {res.ssim:.4f} (best {best_psnr:.3f} @ {best_step})")
        return res.psnr

    # --- the loop
    model.train()
    bar = tqdm(total=total, initial=step, disable=not (is_main and cfg.run.progress),
               unit="it", dynamic_ncols=True, smoothing=0.05)
    t_start, t_log, loss_sum, n_sum, last_psnr = time.time(), time.time(), 0.0, 0, None
    last_val_step = -1
    try:
        for lr_img, hr_img in batches:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                sr = fwd_model(lr_img)
            loss = F.l1_loss(sr.float(), hr_img)
            if uses_bsconv_s and cfg.train.ortho_alpha:
                loss = loss + orthogonality_loss(model, cfg.train.ortho_alpha)
            if not torch.isfinite(loss):
                raise TrainingError(f"non-finite loss ({loss.item()}) at step {step + 1} "
                                    f"(lr {scheduler.get_last_lr()[0]:.3g}); last checkpoint: "
                                    f"{(_checkpoints(run_dir) or ['none'])[-1]}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                   cfg.optim.grad_clip or float("inf"))
            if not torch.isfinite(gnorm) and not scaler.is_enabled():
                raise TrainingError(f"non-finite gradient at step {step + 1} in "
                                    f"{_find_bad_grad(model)} (loss {loss.item():.4g}); last "
                                    f"checkpoint: {(_checkpoints(run_dir) or ['none'])[-1]}")
            scaler.step(optimizer)  # fp16: skips the step when the scaler found inf
            scaler.update()
            scheduler.step()
            if ema is not None:
                with torch.no_grad():
                    d = min(cfg.train.ema, (1 + step) / (10 + step))  # short warm-up
                    for e, p in zip(ema.parameters(), model.parameters()):
                        e.lerp_(p.detach(), 1 - d)
                    for e, b in zip(ema.buffers(), model.buffers()):
                        e.copy_(b)
            step += 1
            loss_v = loss.item()
            loss_sum, n_sum = loss_sum + loss_v, n_sum + 1
            bar.update(1)
            if is_main and (step % cfg.train.log_every == 0 or step == total):
                now = time.time()
                row = {"step": step, "loss": loss_sum / n_sum, "lr": scheduler.get_last_lr()[0],
                       "grad_norm": float(gnorm), "it_s": n_sum / max(now - t_log, 1e-9),
                       "time": now}
                jlog.write(row)
                if tb is not None:
                    for k in ("loss", "lr", "grad_norm", "it_s"):
                        tb.add_scalar(f"train/{k}", row[k], step)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}",
                                gnorm=f"{row['grad_norm']:.3f}")
                t_log, loss_sum, n_sum = now, 0.0, 0
            timed_out = (cfg.train.time_limit_min is not None
                         and time.time() - t_start > 60 * cfg.train.time_limit_min)
            if world > 1:  # every rank must agree to stop
                flag = torch.tensor([float(stop["flag"] or timed_out)], device=device)
                dist.all_reduce(flag)
                stop["flag"] = bool(flag.item())
            else:
                stop["flag"] = stop["flag"] or timed_out
            if is_main and cfg.val.dataset and (step % cfg.val.every == 0 or step == total):
                last_psnr, last_val_step = validate(step), step
            if step % cfg.run.ckpt_every == 0 or step == total or stop["flag"]:
                save_checkpoint(step)
            if stop["flag"]:
                if is_main:
                    log.info(f"stopped at step {step}; continue with --resume "
                             f"(run.dir={run_dir})")
                break
    finally:
        bar.close()
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        if tb is not None:
            tb.flush()

    # --- final weights (EMA when enabled)
    result = {"run_dir": str(run_dir), "iterations": step, "best_psnr": best_psnr,
              "final_psnr": last_psnr, "stopped_early": step < total}
    if is_main:
        net = ema if ema is not None else model
        if cfg.val.dataset and last_val_step != step and step == total:
            last_psnr = result["final_psnr"] = validate(step)
        result["weights"] = str(save_model(net, run_dir / "model.safetensors",
                                           _meta(cfg, step, last_psnr)))
        best = run_dir / "best.safetensors"
        result["best_weights"] = str(best if best.is_file() else result["weights"])
        result["best_psnr"] = best_psnr
        if tb is not None:
            tb.close()
    if world > 1:
        dist.barrier()
        if own_group:
            dist.destroy_process_group()
    result["model"] = model
    return result


def _meta(cfg: TrainConfig, step: int, psnr) -> dict:
    return {"iterations": step, "val_psnr_y": "" if psnr is None else f"{psnr:.4f}",
            "val_dataset": cfg.val.dataset or "", "train_data": json.dumps(cfg.data.train),
            "recipe": json.dumps({"patch": cfg.data.patch_size, "batch": cfg.data.batch_size,
                                  "lr": cfg.optim.lr, "loss": "l1"}),
            "date": datetime.date.today().isoformat(), "trainer": "bsrn train"}
