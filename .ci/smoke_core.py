"""Smoke test of every ``bsrn`` subcommand on a core install (no optional extras).

Run with the Python of a plain virtual environment (``.ci/smoke_core.sh`` makes one): every
subcommand answers ``--help``; each one runs a minimal real invocation (in this process, through
``bsrn.cli.main``, so torch is imported once) and either succeeds or fails in one line that
names the extra to install; nothing raises or prints a traceback.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAILURES: list[str] = []


def run(*args, expect="ok", extra=None):
    """Run ``bsrn ARGS`` in this process. ``expect``: "ok" (exit 0), "extra" (exit 1 with one
    error line naming ``extra``) or "either" (one of the two)."""
    import contextlib
    import io
    import traceback

    from bsrn.cli import main

    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse: --help and usage errors
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - a traceback is exactly what must not happen
            traceback.print_exc()
            rc = "exception"
    took = time.perf_counter() - t0
    stderr = err.getvalue()
    label = "bsrn " + " ".join(map(str, args))
    problems = []
    if "Traceback" in stderr:
        problems.append("printed a traceback")
    errors = [ln for ln in stderr.splitlines() if ": error: " in ln]
    hint = f'[{extra}]"' if extra else None
    ok = rc == 0
    extra_line = (rc == 1 and len(errors) == 1 and hint is not None
                  and hint in errors[0] and "pip install" in errors[0])
    if expect == "ok" and not ok:
        problems.append(f"exit {rc}")
    elif expect == "extra" and not extra_line:
        problems.append(f"exit {rc}, expected one error line with {hint}")
    elif expect == "either" and not (ok or extra_line):
        problems.append(f"exit {rc}, expected success or one line with {hint}")
    status = "FAIL" if problems else "ok"
    print(f"[{status}] {label} ({took:.1f} s)" + (f": {'; '.join(problems)}" if problems else ""))
    if problems:
        FAILURES.append(label)
        print("    stderr: " + "\n    stderr: ".join(stderr.strip().splitlines()[-8:]))


def images(folder: Path, n=2, size=(64, 48)):
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        base = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        Image.fromarray(base).resize(size, Image.BICUBIC).save(folder / f"img{i}.png")
    return folder


def main() -> int:
    import argparse
    import importlib.util

    import bsrn.cli

    sub = next(a for a in bsrn.cli.build_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    commands = sorted(sub.choices)
    present = [m for m in ("matplotlib", "onnx", "onnxruntime", "tensorboard")
               if importlib.util.find_spec(m) is not None]
    if present:
        print(f"not a core install: {', '.join(present)} importable", file=sys.stderr)
        return 2
    entry = subprocess.run([str(Path(sys.executable).parent / "bsrn"), "--version"],
                           capture_output=True, text=True)
    print(f"[{'ok' if entry.returncode == 0 else 'FAIL'}] bsrn --version (console script)")
    if entry.returncode != 0:
        FAILURES.append("bsrn --version")
    for cmd in commands:
        run(cmd, "--help")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        hr = images(d / "Set" / "HR")
        run("models")
        run("upscale", "--weights", "bsrn-x2", "--device", "cpu", "-q", hr / "img0.png",
            "-o", d / "up")
        run("make-lr", hr, d / "Set", "--scale", "2", "4", "--quiet")
        run("eval", "--weights", "bsrn-x2", "--dataset", d / "Set", "--device", "cpu",
            "--quiet", "--json", d / "eval.json")
        run("profile", "--model", "bsrn", "--scale", "2", "--input", "16x16", "--no-runtime",
            "--device", "cpu", "--json", d / "profile.json")
        run("bench-ntire", "--weights", "bsrn-x4", "--hr-lr", hr, d / "Set" / "LR_bicubic" / "X4",
            "--limit", "1", "--device", "cpu", "--quiet")
        run("export", d / "m.pt", "--weights", "bsrn-x2")
        run("export", d / "m.onnx", "--weights", "bsrn-x2", expect="extra", extra="onnx")
        run("export", d / "m.tflite", "--weights", "bsrn-x2", expect="extra", extra="tflite")
        run_dir = d / "run"
        run_dir.mkdir()
        (run_dir / "log.jsonl").write_text(
            "\n".join(json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2)) + "\n")
        run("plot-log", run_dir, expect="extra", extra="plot")
        run("plot", "tradeoff", "--entry", "BSRN", d / "eval.json", d / "profile.json",
            "--dataset", "Set", "--scale", "2", "--out", d / "fig", expect="extra", extra="plot")
        run("plot", "grid", "--hr", hr / "img0.png", "--weights", "BSRN", "bsrn-x2",
            "--scale", "2", "--crop-size", "16", "--device", "cpu", "--out", d / "grid.png",
            expect="extra", extra="plot")
        run("train", "--config", "configs/quick.yaml", "--set", f"data.train=[{hr}]",
            "--set", "val.dataset=null", "--set", "train.iterations=2", "--set",
            "data.batch_size=2", "--set", "train.log_every=1", "--set", "run.ckpt_every=2",
            "--set", f"run.dir={d / 'train'}", "--set", "run.progress=false",
            expect="either", extra="tensorboard")
    print(f"{len(FAILURES)} smoke check(s) failed" if FAILURES else "core install: all "
          "subcommands work or name their extra")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
