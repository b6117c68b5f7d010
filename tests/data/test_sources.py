"""On-disk cell sources: backed .h5ad files and zarr AnnData stores read lazily, in vocabulary space."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

from scgpt.data import AnnDataSource, GeneVocab, H5adCollection


@pytest.fixture
def parts(pbmc, tmp_path):
    """Two files with different, overlapping genes and in different formats."""
    a, b = pbmc[:300, :500].copy(), pbmc[300:, 200:].copy()
    a.write_h5ad(tmp_path / "a.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b.write_zarr(tmp_path / "b.zarr")
    vocab = GeneVocab([*pbmc.var_names, "<pad>", "<cls>", "<eoc>"])
    return tmp_path, vocab


def test_collection_rows_equal_in_memory_rows(pbmc, parts):
    tmp, vocab = parts
    coll = H5adCollection([tmp / "a.h5ad", tmp / "b.zarr"], vocab)
    assert coll.n_obs == 700 and coll.n_tokens == len(vocab)
    mem = AnnDataSource(pbmc, np.arange(765), len(vocab))
    idx = np.array([650, 3, 299, 300, 42, 699])  # across both files, unsorted
    got = coll.rows(idx).toarray()
    want = mem.rows(idx).toarray()
    cols_a, cols_b = np.arange(500), np.arange(200, 765)
    in_a = idx < 300
    np.testing.assert_array_equal(got[in_a][:, cols_a], want[in_a][:, cols_a])
    np.testing.assert_array_equal(got[~in_a][:, cols_b], want[~in_a][:, cols_b])
    assert got[in_a][:, 500:].sum() == 0 and got[~in_a][:, :200].sum() == 0  # genes a file does not measure
    assert np.array_equal(coll.present_tokens(), np.arange(765))
    np.testing.assert_array_equal(coll.lengths()[:300], np.diff(pbmc[:300, :500].X.tocsr().indptr))


def test_zarr_collection_like_annbatch(pbmc, parts):
    tmp, vocab = parts
    zarr.open_group(str(tmp / "collection.zarr"), mode="w", zarr_format=2)  # a group of AnnData stores
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("dataset_0", "dataset_1"):
            pbmc[300:, 200:].copy().write_zarr(tmp / "collection.zarr" / name)
    coll = H5adCollection.from_zarr_collection(tmp / "collection.zarr", vocab)
    assert coll.n_obs == 800 and len(coll.paths) == 2
    np.testing.assert_array_equal(coll.rows(np.array([0])).toarray(), coll.rows(np.array([400])).toarray())
    with pytest.raises(ValueError, match="holds no AnnData stores"):
        H5adCollection.from_zarr_collection(tmp / "b.zarr" / "obs", vocab)


def test_soma_experiment_rows_equal_in_memory_rows(pbmc, tmp_path):
    """A TileDB-SOMA experiment (CELLxGENE Census layout: RNA measurement, X 'raw', var 'feature_name')."""
    tiledbsoma_io = pytest.importorskip("tiledbsoma.io")
    from scgpt.data import SomaSource

    adata = pbmc.copy()
    adata.var["feature_name"] = adata.var_names
    adata.obs["donor"] = np.where(np.arange(adata.n_obs) % 3 == 0, "d0", "d1")
    uri = str(tmp_path / "experiment")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiledbsoma_io.from_anndata(uri, adata, measurement_name="RNA", X_layer_name="raw")
    vocab = GeneVocab([*pbmc.var_names[::-1], "<pad>", "<cls>", "<eoc>"])  # another gene order than the file
    src = SomaSource(uri, vocab)
    assert src.n_obs == pbmc.n_obs and src.n_tokens == len(vocab) and len(src.present_tokens()) == 765
    mem = AnnDataSource(pbmc, np.arange(765)[::-1], len(vocab))
    idx = np.array([650, 3, 299, 3, 42, 699])  # unsorted, with a repeat
    np.testing.assert_array_equal(src.rows(idx).toarray(), mem.rows(idx).toarray())

    donors = SomaSource(uri, vocab, obs_value_filter="donor == 'd0'")
    assert donors.n_obs == len(range(0, pbmc.n_obs, 3))
    np.testing.assert_array_equal(donors.rows(np.array([1])).toarray(), mem.rows(np.array([3])).toarray())
    with pytest.raises(KeyError, match="no X layer 'counts'"):
        SomaSource(uri, vocab, layer="counts")
    with pytest.raises(ValueError, match="No cells"):
        SomaSource(uri, vocab, obs_value_filter="donor == 'nobody'")
    # trains like any other source, and pickles (loader workers, DDP) without an open handle
    import pickle

    import torch

    from scgpt.model import ScGPT

    assert pickle.loads(pickle.dumps(src)).rows(idx[:2]).nnz == mem.rows(idx[:2]).nnz
    torch.manual_seed(0)
    model = ScGPT(vocab=vocab, d_model=32, n_heads=2, d_hid=64, n_layers=1, generative=True, n_cls=None)
    dm = model.make_datamodule(src, "pretrain", batch_size=64, chunk_size=8)
    model.train(
        datamodule=dm,
        recipe="pretrain",
        max_epochs=2,
        plan_kwargs={"lr": 1e-3},
        progress=False,
        checkpoint_dir=tmp_path / "ck",
    )
    assert np.isfinite(model.history_["val_loss"]).all() and len(model.history_["val_loss"]) == 2


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
def test_stored_entries_per_row_in_memory_backed_and_zarr(pbmc, tmp_path, fmt):
    """Expressed genes per cell, the same from a matrix in memory, a backed .h5ad and a zarr store, CSR or CSC."""
    import anndata as ad

    from scgpt.data import matrix_stored_per_row, open_on_disk

    cells = pbmc[:50].copy()
    want = np.diff(sp.csr_matrix(cells.X).indptr)
    dense = fmt == "dense"
    cells.X = cells.X.toarray() if dense else sp.csr_matrix(cells.X).asformat(fmt)
    if dense:
        want = np.full(cells.n_obs, cells.n_vars)
    cells.write_h5ad(tmp_path / "c.h5ad")
    with ad.settings.override(zarr_write_format=3), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata's notes on future zarr defaults
        cells.write_zarr(tmp_path / "c.zarr")
    for X in (cells.X, open_on_disk(tmp_path / "c.h5ad").X, open_on_disk(tmp_path / "c.zarr").X):
        np.testing.assert_array_equal(matrix_stored_per_row(X), want)
