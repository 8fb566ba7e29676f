"""benchmarks/gpu_suite.sh runs end to end in its CPU dry-run mode and writes its JSON and
markdown summaries (the same script that runs on a GPU; no timings are checked)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils timeout")
def test_dry_run_writes_every_part(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, BSRN_GPU_SUITE_DEVICE="cpu",
               PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh")], env=env,
                          capture_output=True, text=True, timeout=900)
    summary = json.loads((tmp_path / "summary.json").read_text())
    status = {p["part"]: p["status"] for p in summary["parts"]}
    assert status == dict.fromkeys(["cuda_tests", "speed", "ntire", "train", "compiled",
                                          "tensorrt"], "ok"), \
        proc.stdout[-3000:]
    assert proc.returncode == 0
    speed = json.loads((tmp_path / "speed.json").read_text())
    (rows,) = speed["sizes"].values()
    assert rows["eager"]["ratio"] == 1.0 and rows["fast"]["max_abs_diff"] < 1e-4
    assert "fp16 needs CUDA" in rows["fp16"]["skipped"]
    ntire = json.loads((tmp_path / "ntire.json").read_text())
    assert ntire["paths"]["eager"]["images"] == 3
    md = (tmp_path / "summary.md").read_text()
    assert "| speed | ok |" in md and "plain eager fp32 (baseline)" in md
