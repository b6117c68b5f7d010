"""Nothing lost: a write that fails part-way (here: the disk is full) leaves the previous file intact."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

import scgpt
from scgpt.cli import main
from scgpt.model import ScGPT

WORKER = Path(__file__).with_name("_disk_full.py")
LIMIT = 60_000  # bytes: the tiny model's files fit, the larger model's and the embeddings' do not


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _run(action: str, target: Path, extra: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, str(WORKER), action, str(target), str(LIMIT), extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def small(tiny_model):
    return tiny_model(d_model=8, n_heads=2, d_hid=8, n_layers=1)


@pytest.mark.parametrize("action", ["save", "save_pretrained"])
def test_a_failed_overwrite_leaves_the_previous_model(small, tmp_path, action):
    folder = tmp_path / "model"
    (small.save if action == "save" else small.save_pretrained)(folder)
    before = _digest(folder)
    proc = _run(action, folder)
    assert proc.returncode == 3 and "OSError 27" in proc.stderr, proc.stderr[-2000:]  # EFBIG: file too large
    assert _digest(folder) == before  # bit-identical, and no partial file left behind
    again = ScGPT.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(again.net.state_dict().values(), small.net.state_dict().values()))


def test_embed_over_its_own_input_keeps_the_input_when_the_write_fails(small, tmp_path):
    model = small.save_pretrained(tmp_path / "model")
    cells = tmp_path / "cells.h5ad"
    scgpt.datasets.pbmc68k_counts()[:300].copy().write_h5ad(cells)
    before = _digest(tmp_path)["cells.h5ad"]
    proc = _run("cli", cells, str(model))
    assert proc.returncode == 2, proc.stderr[-2000:]  # not 139: HDF5 crashes at exit after a failed write
    assert proc.stderr.strip().splitlines()[-1] == (
        "scgpt: error: a file could not be written: File too large (a full disk or a file-size limit); "
        "the files that were there before are unchanged"
    )
    assert _digest(tmp_path)["cells.h5ad"] == before and ad.read_h5ad(cells).n_obs == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad", "model"]


def test_embed_over_its_own_input_works(small, tmp_path):
    model = small.save_pretrained(tmp_path / "model")
    cells = tmp_path / "cells.h5ad"
    scgpt.datasets.pbmc68k_counts()[:100].copy().write_h5ad(cells)
    assert main(["embed", "--model", str(model), "--input", str(cells), "--output", str(cells), "-q"]) == 0
    result = ad.read_h5ad(cells)
    assert result.obsm["X_scGPT"].shape == (100, 8) and result.X.nnz > 0 and np.isfinite(result.obsm["X_scGPT"]).all()
