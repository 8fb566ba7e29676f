"""Shared fixtures. Tests that need ../shared (official weights, datasets) skip when absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BSRN_SHARED", ROOT.parent / "shared"))
REFERENCE = SHARED / "reference"
DATASETS = SHARED / "datasets"
OFFICIAL = REFERENCE / "bsrn_official"
NTIRE = REFERENCE / "ntire2022_esr"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# Tests run on the PyTorch backend unless they ask for another, and never touch the user cache.
os.environ.setdefault("BSRN_BACKEND", "torch")
if "BSRN_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["BSRN_CACHE"] = tempfile.mkdtemp(prefix="bsrn-test-cache-")
    atexit.register(shutil.rmtree, os.environ["BSRN_CACHE"], True)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"fixture {path} is absent (tests read ../shared; see README)")
    return path


@pytest.fixture
def official():
    """Path factory for official checkpoints: official('net_g_BSRN_x4.pth')."""
    return lambda name: _need(OFFICIAL / name)


@pytest.fixture
def ntire():
    return lambda name: _need(NTIRE / name)


@pytest.fixture
def golden():
    return torch.load(_need(OFFICIAL / "golden" / "bsrn_golden_io.pt"), weights_only=True)


@pytest.fixture
def dataset():
    """Path factory for benchmark folders: dataset('Set5')."""
    return lambda name: _need(DATASETS / name)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight the other tests for cores)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def tiny_x2_weights(tmp_path_factory):
    """A tiny x2 BSRN (16 features, 1 block) with random weights, saved like real weights."""
    import bsrn

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny_x2.safetensors"
    bsrn.save_model(bsrn.create_model("bsrn", scale=2, num_feat=16, num_block=1), path)
    return str(path)
