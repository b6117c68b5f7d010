"""Embedding on two CPU processes (DDP over gloo, Lightning's launcher) equals the one-process run, in cell order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import scgpt

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
WORKER = Path(__file__).with_name("distributed_embed_worker.py")
KW = {"max_length": 128, "batch_size": 16, "device": "cpu"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_model, pbmc_counts, write_soma) -> tuple[Path, Path, str]:
    """A tiny model folder and 700 real cells in shuffled order (lengths unsorted) in an .h5ad and a SOMA experiment."""
    root = tmp_path_factory.mktemp("distributed")
    model_dir = tiny_model(dropout=0.0).save_pretrained(root / "tiny")
    adata = pbmc_counts[np.random.default_rng(1).permutation(pbmc_counts.n_obs)].copy()
    cells = root / "cells.h5ad"
    adata.write_h5ad(cells)
    return model_dir, cells, write_soma(adata, root / "experiment")


def test_two_processes_equal_one_in_cell_order(saved, tmp_path):
    import anndata as ad

    from scgpt.model import ScGPT

    model_dir, cells, soma = saved
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("OMP_NUM_THREADS", None)  # Lightning splits the cores between the processes
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(model_dir), str(cells), "2", str(tmp_path), soma],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = np.load(tmp_path / "emb.npz")
    assert int(got["world"]) == 2
    model = ScGPT.from_pretrained(model_dir, device="cpu")
    adata = ad.read_h5ad(cells)
    single = model.get_latent_representation(adata, **KW)
    scgpt.tl.embed(adata, model, **KW)
    np.testing.assert_allclose(got["in_memory"], single, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got["backed"], single, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got["soma"], single, atol=1e-6, rtol=0)  # each rank read its rows of the experiment
    assert float(got["mean_tokens"]) == pytest.approx(adata.uns["X_scGPT"]["mean_tokens_per_cell"])
    # cell order: each row is its own cell (a cell embedded alone gives the same row)
    for i in (0, 350, 699):
        alone = model.get_latent_representation(adata[i : i + 1].copy(), **KW)
        np.testing.assert_allclose(got["backed"][i], alone[0], atol=1e-6, rtol=0)


def test_one_fabric_process_equals_the_plain_path(saved):
    import anndata as ad

    from scgpt.model import ScGPT

    model_dir, cells, _ = saved
    model = ScGPT.from_pretrained(model_dir, device="cpu")
    adata = ad.read_h5ad(cells)[:300].copy()
    np.testing.assert_allclose(
        model.get_latent_representation(adata, devices=1, **KW),
        model.get_latent_representation(adata, **KW),
        atol=1e-6,
        rtol=0,
    )


def test_clear_errors(saved):
    import anndata as ad

    from scgpt.model import ScGPT

    model_dir, cells, soma = saved
    model = ScGPT.from_pretrained(model_dir, device="cpu")
    adata = ad.read_h5ad(cells)[:10].copy()
    for strategy in ("ddp_notebook", "ddp_fork"):  # TileDB hangs in forked processes: refused before any fork
        with pytest.raises(ValueError, match="cannot be used in forked processes"):
            model.get_latent_representation(scgpt.data.open_soma(soma), devices=2, strategy=strategy, **KW)
    with pytest.raises(ValueError, match="CPU cores"):
        model.get_latent_representation(adata, devices=(os.cpu_count() or 1) + 1, **KW)
    with pytest.raises(ValueError, match="cannot be used for inference"):
        model.get_latent_representation(adata, devices=1, strategy="fsdp", **KW)
    with pytest.raises(ValueError, match="cannot run on CPU"):
        from lightning.fabric.strategies import DDPStrategy

        model.get_latent_representation(adata, devices=1, strategy=DDPStrategy(process_group_backend="nccl"), **KW)
    with pytest.raises(ValueError, match="names one device"):
        model.get_latent_representation(adata, devices=1, **{**KW, "device": "cuda:1"})
