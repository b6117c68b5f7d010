"""On-disk cell sources: backed .h5ad files and zarr AnnData stores read lazily, in vocabulary space."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
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
