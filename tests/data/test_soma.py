"""TileDB-SOMA experiments opened as AnnData whose matrix stays in the experiment (scgpt.data.open_soma)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.sparse as sp

import scgpt
from scgpt.data import SomaMatrix, open_soma

KW = {"max_length": 128, "batch_size": 16, "device": "cpu"}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, pbmc_counts, write_soma):
    """700 real PBMCs with a donor column, as a SOMA experiment with obs["nnz"] (Census layout)."""
    adata = pbmc_counts.copy()
    adata.obs["donor"] = np.where(np.arange(adata.n_obs) % 3 == 0, "d0", "d1")
    return write_soma(adata, tmp_path_factory.mktemp("soma") / "experiment")


def test_open_soma_reads_rows_on_demand(experiment, pbmc_counts):
    adata = open_soma(experiment)
    assert isinstance(adata.X, SomaMatrix) and adata.X.shape == pbmc_counts.shape
    assert list(adata.obs_names) == list(pbmc_counts.obs_names)
    assert list(adata.var_names) == list(pbmc_counts.var_names)
    assert adata.obs["soma_joinid"].tolist() == list(range(700)) and "donor" in adata.obs
    assert "nnz" in adata.obs and adata.X.counts_known  # all columns by default
    want = pbmc_counts.X.toarray()
    block = adata.X[10:20]
    assert sp.issparse(block) and block.dtype == np.float32
    np.testing.assert_array_equal(block.toarray(), want[10:20])
    np.testing.assert_array_equal(adata.X[20:4:-3].toarray(), want[20:4:-3])
    idx = np.array([650, 3, 299, 3, 42, 699])  # unsorted, with a repeat
    np.testing.assert_array_equal(adata.X[idx].toarray(), want[idx])
    np.testing.assert_array_equal(adata.X[idx, 5:9].toarray(), want[idx, 5:9])
    mask = np.zeros(700, dtype=bool)
    mask[[1, 500]] = True
    np.testing.assert_array_equal(adata.X[mask].toarray(), want[mask])
    np.testing.assert_array_equal(adata.X[-1].toarray(), want[[-1]])
    np.testing.assert_array_equal(adata.X.to_memory().toarray(), want)
    np.testing.assert_array_equal(adata[5:8].X.toarray(), want[5:8])  # AnnData views slice it too
    np.testing.assert_array_equal(adata.X.stored_per_row(), np.diff(pbmc_counts.X.indptr))
    # pickles without an open handle (DDP ranks, loader workers) and reads again after
    again = pickle.loads(pickle.dumps(adata.X))
    assert again._experiment._exp is None
    np.testing.assert_array_equal(again[[7]].toarray(), want[[7]])
    # TileDB options as a dict: each process builds its own context from them
    configured = open_soma(experiment, context={"sm.io_concurrency_level": 2}, obs_columns=[])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(configured.X))[[7]].toarray(), want[[7]])
    with pytest.raises(IndexError, match="out of range"):
        adata.X[[700]]


def test_open_soma_selects_cells_and_columns(experiment, pbmc_counts):
    donors = open_soma(experiment, obs_value_filter="donor == 'd0'", obs_columns=["donor"])
    assert donors.n_obs == len(range(0, 700, 3)) and list(donors.obs.columns) == ["soma_joinid", "donor"]
    assert (donors.obs["donor"] == "d0").all()
    np.testing.assert_array_equal(donors.X[[1, 2]].toarray(), pbmc_counts.X[[3, 6]].toarray())
    np.testing.assert_array_equal(donors.X.stored_per_row(), np.diff(pbmc_counts.X[::3].indptr))


def test_open_soma_clear_errors(experiment, tmp_path):
    with pytest.raises(FileNotFoundError, match="No TileDB-SOMA experiment"):
        open_soma(tmp_path / "nothing")
    with pytest.raises(KeyError, match="no measurement 'ATAC'"):
        open_soma(experiment, measurement="ATAC")
    with pytest.raises(KeyError, match="no X layer 'counts'"):
        open_soma(experiment, layer="counts")
    with pytest.raises(KeyError, match="no column 'symbol'"):
        open_soma(experiment, var_index="symbol")
    with pytest.raises(KeyError, match=r"no columns \['tissue'\]"):
        open_soma(experiment, obs_columns=["tissue"])
    with pytest.raises(ValueError, match="No cells"):
        open_soma(experiment, obs_value_filter="donor == 'nobody'")


def test_is_soma_experiment(experiment, tmp_path, pbmc_counts):
    from scgpt.data._soma import is_soma_experiment

    pbmc_counts.write_h5ad(tmp_path / "a.h5ad")
    assert is_soma_experiment(experiment) and is_soma_experiment("s3://bucket/census/homo_sapiens")
    assert not is_soma_experiment(tmp_path / "a.h5ad") and not is_soma_experiment(tmp_path)


def test_embedding_a_soma_experiment_equals_in_memory(experiment, pbmc_counts, tiny_model):
    """tl.embed streams the experiment chunk by chunk; the result equals the in-memory AnnData's."""
    model = tiny_model(dropout=0.0)
    mem = pbmc_counts.copy()
    scgpt.tl.embed(mem, model, **KW)
    lazy = open_soma(experiment)
    scgpt.tl.embed(lazy, model, **KW)
    np.testing.assert_allclose(lazy.obsm["X_scGPT"], mem.obsm["X_scGPT"], atol=1e-6, rtol=0)
    assert isinstance(lazy.X, SomaMatrix)  # still not read into memory
    assert lazy.uns["X_scGPT"]["mean_tokens_per_cell"] == pytest.approx(mem.uns["X_scGPT"]["mean_tokens_per_cell"])


def test_shards_balance_by_nnz_or_by_cells(experiment, pbmc_counts, write_soma, tmp_path):
    """Processes split the cells by tokens when obs has nnz; without it, by cells (the layer is not read)."""
    from scgpt.model._distributed import chunk_costs

    chunks = [(0, 100), (100, 700)]
    with_nnz = chunk_costs(open_soma(experiment), None, chunks, 128)
    want = np.minimum(np.diff(pbmc_counts.X.indptr) + 1, 128)
    np.testing.assert_array_equal(with_nnz, [want[:100].sum(), want[100:].sum()])
    bare = open_soma(write_soma(pbmc_counts[:200], tmp_path / "bare", nnz=False))
    assert not bare.X.counts_known
    np.testing.assert_array_equal(chunk_costs(bare, None, [(0, 50), (50, 200)], 128), [50 * 128, 150 * 128])
    np.testing.assert_array_equal(bare.X.stored_per_row(), np.diff(pbmc_counts.X[:200].indptr))  # counted


def test_each_process_reads_only_its_share(experiment, tiny_model, monkeypatch):
    """The rows a rank embeds are the only rows read from the experiment (here rank 1 of 2, run alone)."""
    from scgpt.model._distributed import RangeRows, shard_chunks
    from scgpt.model._engine import run_inference

    lazy = open_soma(experiment)
    read = []
    original = SomaMatrix._read
    monkeypatch.setattr(SomaMatrix, "_read", lambda self, rows: read.append(rows.copy()) or original(self, rows))
    shards = shard_chunks(lazy, None, world_size=2, batch_size=16, max_length=128)
    lo, hi = shards[1][0][0], shards[1][-1][1]
    assert 0 < lo < hi == 700
    res = run_inference(tiny_model(dropout=0.0), lazy, RangeRows(lo, hi, normalize=True), chunks=shards[1], **KW)
    assert res.output.shape == (hi - lo, 32)
    np.testing.assert_array_equal(np.sort(np.concatenate(read)), np.arange(lo, hi))
