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
