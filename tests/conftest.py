"""Shared fixtures: paths to the reference material beside the repository, tiny models and data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SCGPT_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
DATA = SHARED / "data"

os.environ.setdefault("MPLBACKEND", "agg")


def pytest_configure(config):
    import scgpt

    scgpt.settings.progress = False
    try:
        import mudata

        mudata.set_options(pull_on_update=False)
    except (ImportError, AttributeError, ValueError):
        pass


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden fixtures not found at {GOLDEN} (set SCGPT_SHARED to the shared/ folder)")
    return GOLDEN


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA} (set SCGPT_SHARED to the shared/ folder)")
    return DATA


@pytest.fixture(scope="session")
def pbmc_counts(golden_dir):
    """700 real PBMCs x 765 genes, raw counts (pbmc68k_reduced, recovered exactly)."""
    import anndata as ad

    return ad.read_h5ad(golden_dir / "pbmc68k_counts.h5ad")


@pytest.fixture
def pbmc(pbmc_counts):
    return pbmc_counts.copy()


@pytest.fixture(scope="session")
def base_model(golden_dir):
    """The official-format base model (full census vocabulary, width 32, 2 layers)."""
    from scgpt.model import ScGPT

    return ScGPT.from_pretrained(golden_dir / "official_base")


@pytest.fixture(scope="session")
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
