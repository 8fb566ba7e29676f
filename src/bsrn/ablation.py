"""The paper's ablation studies as runnable experiments.

Each study is a list of registry presets. Every variant is trained with the same recipe and
budget (a training config in ``configs/ablation/``), scored with the ``bsrn eval`` protocol and
counted with ``bsrn profile``. Each (variant, seed) result is cached as JSON as soon as it is
done, so an interrupted study resumes where it stopped; a variant interrupted mid-training
resumes from its last checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path

from .errors import BsrnError, ConfigError

#: study -> (variants, baseline, what the paper concludes).
STUDIES: dict[str, dict] = {
    "conv": {
        "variants": ["rfdn", "rfdn_dsconv", "rfdn_bsconv_u", "rfdn_bsconv_s"],
        "baseline": "rfdn",
        "labels": {"rfdn": "standard conv", "rfdn_dsconv": "DSConv",
                   "rfdn_bsconv_u": "BSConv-U", "rfdn_bsconv_s": "BSConv-S"},
        "paper": "compares the decompositions on RFDN and adopts BSConv-U as the "
                 "best trade-off of PSNR against cost.",
    },
    "attention": {
        "variants": ["bsrn", "bsrn_no_esa", "bsrn_no_cca", "bsrn_no_attention"],
        "baseline": "bsrn",
        "labels": {"bsrn": "ESA + CCA", "bsrn_no_esa": "CCA only", "bsrn_no_cca": "ESA only",
                   "bsrn_no_attention": "neither"},
        "paper": "keeps both ESA and CCA, reporting that each improves PSNR.",
    },
    "activation": {
        "variants": ["bsrn", "bsrn_relu", "bsrn_lrelu", "bsrn_hswish"],
        "baseline": "bsrn",
        "labels": {"bsrn": "GELU", "bsrn_relu": "ReLU", "bsrn_lrelu": "LReLU",
                   "bsrn_hswish": "h-swish"},
        "paper": "adopts GELU, reporting it as the best of the activations tried.",
    },
    "capacity": {
        "variants": ["rfdn", "bsrn_1", "bsrn_2"],
        "baseline": "rfdn",
        "labels": {"rfdn": "RFDN", "bsrn_1": "BSRN-1 (RFDN's width/depth)",
                   "bsrn_2": "BSRN-2 (RFDN's cost)"},
        "paper": "compares BSRN-1 and BSRN-2 with RFDN to show that BSRN's gains "
                 "come from its design rather than its size.",
    },
}

BUDGET_DIR = Path(__file__).resolve().parents[2] / "configs" / "ablation"


def resolve_budget(budget: str) -> Path:
    """A budget name (file in configs/ablation/) or a path to a training YAML."""
    p = Path(budget)
    if p.is_file():
        return p
    for cand in (BUDGET_DIR / f"{budget}.yaml", Path("configs/ablation") / f"{budget}.yaml"):
        if cand.is_file():
            return cand
    known = sorted(q.stem for q in BUDGET_DIR.glob("*.yaml")) if BUDGET_DIR.is_dir() else []
    raise ConfigError(f"{budget}: no such budget file (known: {', '.join(known) or 'none'})")


def _atomic_json(obj, path: Path) -> None:
    from .atomic import write_json

    write_json(path, obj)


def _train_api():
    try:
        from .config import load_config
        from .train import train
    except ImportError as e:
        raise BsrnError(f"bsrn ablate needs the training module (bsrn.train): {e}") from None
    return load_config, train


def run_variant(variant: str, budget_path: Path, run_dir: Path, seed: int,
                overrides: list[str], eval_limit: int | None = None,
                progress: bool = True) -> dict:
    """Train one variant under the budget, evaluate its final weights, count it. Returns the
    result row (not cached here)."""
    load_config, train = _train_api()
    from .checkpoint import load_model
    from .evaluate import evaluate
    from .profile import count_ops, count_params, paper_input_hw

    cfg = load_config(str(budget_path), overrides=[
        f"model.name={variant}", f"run.dir={run_dir.as_posix()}", f"run.seed={seed}",
        *overrides])
    try:
        cfg.run.resume = True
    except AttributeError:
        pass
    t0 = time.time()
    result = train(cfg)
    train_s = time.time() - t0
    model = load_model(result["weights"])
    val = _cfg_get(cfg, "val.dataset")
    if not val:
        raise ConfigError(f"{budget_path}: val.dataset is needed to score the variants")
    ev = evaluate(model, val, model.scale, progress=progress, limit=eval_limit)
    paper = count_ops(model, paper_input_hw(model.scale))
    ntire = count_ops(model, (256, 256))
    return {"name": variant, "seed": seed, "psnr": ev.psnr, "ssim": ev.ssim,
            "dataset": ev.dataset, "images": ev.images, "lr_source": ev.lr_source,
            "scale": model.scale, "params": count_params(model),
            "multi_adds": paper.macs + paper.bias_adds, "macs": paper.macs,
            "flops": ntire.ntire_flops, "activations": ntire.activations, "convs": ntire.convs,
            "best_val_psnr": result.get("best_psnr"), "final_val_psnr": result.get("final_psnr"),
            "iterations": result.get("iterations"), "train_seconds": round(train_s, 1),
            "weights": str(result["weights"])}


def _cfg_get(cfg, dotted: str):
    cur = cfg
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else getattr(cur, part, None)
        if cur is None:
            return None
    return cur


def summarize(study: str, rows: list[dict], variants: list[str]) -> list[dict]:
    """One summary per variant: mean and spread of PSNR over seeds, counts, delta to baseline."""
    spec = STUDIES.get(study, {})
    out = []
    by = {v: [r for r in rows if r["name"] == v] for v in variants}
    base = spec.get("baseline")
    base_psnr = statistics.fmean(r["psnr"] for r in by[base]) if by.get(base) else None
    for v in variants:
        rs = by[v]
        if not rs:
            out.append({"name": v, "label": spec.get("labels", {}).get(v, v), "psnr": None,
                        "seeds": 0})
            continue
        ps = [r["psnr"] for r in rs]
        mean = statistics.fmean(ps)
        out.append({"name": v, "label": spec.get("labels", {}).get(v, v), "psnr": mean,
                    "psnr_std": statistics.stdev(ps) if len(ps) > 1 else None,
                    "psnr_min": min(ps), "psnr_max": max(ps), "seeds": len(ps),
                    "ssim": statistics.fmean(r["ssim"] for r in rs),
                    "delta": None if base_psnr is None else mean - base_psnr,
                    "params": rs[0]["params"], "multi_adds": rs[0]["multi_adds"],
                    "flops": rs[0]["flops"],
                    "train_seconds": statistics.fmean(r["train_seconds"] for r in rs)})
    return out


def format_table(study: str, summary: list[dict], budget: dict) -> str:
    """Markdown table of a study, with the budget it ran at."""
    spec = STUDIES.get(study, {})
    ds = budget.get("dataset", "val")
    lines = [f"### Study `{study}` (budget `{budget.get('name')}`)", "",
             f"| Variant | Preset | Params | Multi-Adds (x{budget.get('scale')}, 1280x720) | "
             f"{ds} PSNR (dB) | spread over seeds | vs baseline | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        if s["psnr"] is None:
            lines.append(f"| {s['label']} | `{s['name']}` | | | not run | | | |")
            continue
        spread = "-" if s["seeds"] < 2 else \
            f"±{s['psnr_std']:.3f} (n={s['seeds']}, {s['psnr_min']:.2f}–{s['psnr_max']:.2f})"
        delta = "baseline" if s["name"] == spec.get("baseline") else \
            ("" if s["delta"] is None else f"{s['delta']:+.3f}")
        lines.append(f"| {s['label']} | `{s['name']}` | {s['params'] / 1e3:.1f} K | "
                     f"{s['multi_adds'] / 1e9:.2f} G | {s['psnr']:.3f} | {spread} | {delta} | "
                     f"{s['train_seconds']:.0f} |")
    if budget.get("bicubic_psnr") is not None:
        lines.append(f"| bicubic (reference) | – | – | – | {budget['bicubic_psnr']:.3f} "
                     "| | | |")
    lines += ["", f"Budget: {budget.get('describe', '')}"]
    if spec.get("paper"):
        lines += ["", f"Paper: {spec['paper']}"]
    return "\n".join(lines)


def describe_budget(budget_path: Path, overrides: list[str]) -> dict:
    """The budget's key settings, read from its YAML (plus overrides), for the table."""
    import yaml

    with open(budget_path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}

    def get(dotted, default=None):
        for o in overrides:
            if o.split("=", 1)[0] == dotted:
                return yaml.safe_load(o.split("=", 1)[1])
        cur = raw
        for part in dotted.split("."):
            if not isinstance(cur, dict) or part not in cur:
                return default
            cur = cur[part]
        return cur

    import hashlib

    try:
        shown = budget_path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        shown = str(budget_path)
    d = {"name": budget_path.stem, "file": shown,
         "sha256": hashlib.sha256(budget_path.read_bytes()).hexdigest(),
         "overrides": list(overrides),
         "scale": get("model.scale", 4), "patch": get("data.patch_size"),
         "batch": get("data.batch_size"), "iterations": get("train.iterations"),
         "lr": get("optim.lr"), "train": get("data.train"),
         "dataset": Path(str(get("val.dataset", "val"))).name,
         "val_path": get("val.dataset")}
    d["describe"] = (f"x{d['scale']}, LR patch {d['patch']}, batch {d['batch']}, "
                     f"{d['iterations']} iterations, lr {d['lr']}, train data "
                     f"{', '.join(Path(str(t)).name for t in (d['train'] or []))}, "
                     f"scored on {d['dataset']} (Y, crop = scale)"
                     + (f"; overrides {' '.join(overrides)}" if overrides else ""))
    return d


def bicubic_psnr(dataset, scale: int, limit: int | None = None) -> float | None:
    """Y-PSNR of MATLAB bicubic upscaling on the validation set (the floor every variant must
    beat), with the same LR and protocol as ``bsrn eval``."""
    if not dataset or not Path(dataset).is_dir():
        return None
    from .evaluate import has_lr_files, hr_dir, list_images, load_pair
    from .imresize import imresize
    from .metrics import psnr

    src = "files" if has_lr_files(dataset, scale) else "matlab"
    vals = []
    for p in list_images(hr_dir(dataset))[:limit]:
        hr, lr = load_pair(dataset, p, scale, src)
        vals.append(psnr(imresize(lr, scale=scale), hr, scale, True))
    return statistics.fmean(vals) if vals else None


def run_study(study: str, budget: str, out_dir: str | os.PathLike | None = None,
              seeds=(0,), variants: list[str] | None = None, overrides: list[str] = (),
              eval_limit: int | None = None, progress: bool = True, log=print) -> dict:
    """Run (or resume) a study; write ``results.json`` and ``table.md`` under ``out_dir``.

    Finished (variant, seed) pairs are read back from ``out_dir/cache`` and not retrained.
    """
    if study not in STUDIES:
        raise ConfigError(f"unknown study {study!r}; choose one of {', '.join(STUDIES)}")
    variants = list(variants or STUDIES[study]["variants"])
    from .models import list_models

    unknown = [v for v in variants if v not in list_models()]
    if unknown:
        raise ConfigError(f"unknown variants: {', '.join(unknown)}")
    budget_path = resolve_budget(budget)
    overrides = list(overrides)
    info = describe_budget(budget_path, overrides)
    info["bicubic_psnr"] = bicubic_psnr(info["val_path"], info["scale"], eval_limit)
    out = Path(out_dir or Path("runs") / "ablate" / study / budget_path.stem)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    todo = [(v, s) for v in variants for s in seeds]
    for i, (v, seed) in enumerate(todo, 1):
        f = cache / f"{v}-seed{seed}.json"
        if f.is_file():
            row = json.loads(f.read_text(encoding="utf-8"))
            same = row.get("budget_sha256") == info["sha256"] or (
                row.get("budget_sha256") is None
                and Path(row.get("budget_file", "")).resolve() == budget_path.resolve())
            if same and row.get("overrides") == overrides:
                log(f"[{i}/{len(todo)}] {v} seed {seed}: cached, {row['psnr']:.3f} dB")
                rows.append(row)
                continue
            log(f"[{i}/{len(todo)}] {v} seed {seed}: cache was made with another budget; "
                "retraining")
        log(f"[{i}/{len(todo)}] {v} seed {seed}: training ({info['describe']})")
        row = run_variant(v, budget_path, out / "runs" / f"{v}-seed{seed}", seed, overrides,
                          eval_limit, progress)
        row.update(study=study, budget_file=info["file"], budget_sha256=info["sha256"],
                   overrides=overrides)
        _atomic_json(row, f)
        log(f"[{i}/{len(todo)}] {v} seed {seed}: {row['psnr']:.3f} dB on {row['dataset']} "
            f"({row['train_seconds']:.0f} s)")
        rows.append(row)
        _write_outputs(study, rows, variants, info, out)
    return _write_outputs(study, rows, variants, info, out)


def _write_outputs(study, rows, variants, info, out: Path) -> dict:
    summary = summarize(study, rows, variants)
    res = {"study": study, "budget": info, "baseline": STUDIES[study]["baseline"],
           "paper": STUDIES[study]["paper"], "variants": summary, "runs": rows}
    _atomic_json(res, out / "results.json")
    table = format_table(study, summary, info)
    from .atomic import atomic_write

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(table + "\n")

    atomic_write(out / "table.md", write)
    res["table"] = table
    return res


def ranking(summary: list[dict]) -> list[str]:
    """Variant names by mean PSNR, best first (finished variants only)."""
    done = [s for s in summary if s.get("psnr") is not None and not math.isnan(s["psnr"])]
    return [s["name"] for s in sorted(done, key=lambda s: -s["psnr"])]
