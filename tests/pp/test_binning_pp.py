from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import scgpt


def test_bin_values_layer(pbmc):
    scgpt.pp.bin_values(pbmc, seed=0)
    B = pbmc.layers["X_binned"]
    X = pbmc.X.tocsr()
    assert sp.issparse(B) and B.dtype == np.float32
    np.testing.assert_array_equal(B.indptr, X.indptr)  # zeros stay 0, every nonzero is binned
    assert B.data.min() >= 1 and B.data.max() == 50
    # per cell, the max value maps to bin 50 and larger values never get smaller bins
    for i in range(20):
        x, b = X[i].toarray().ravel(), B[i].toarray().ravel()
        assert b[np.argmax(x)] == 50
        levels = np.unique(x[x > 0])
        lo = np.array([b[x == v].min() for v in levels])
        hi = np.array([b[x == v].max() for v in levels])
        assert (hi[:-1] <= lo[1:]).all()
    assert pbmc.uns["X_binned"]["params"] == {"n_bins": 51, "layer": None, "gene_key": None, "seed": 0}


def test_same_bins_whatever_the_chunking_or_cell_order(pbmc):
    a = scgpt.pp.bin_values(pbmc, chunk_size=10_000, copy=True).layers["X_binned"]
    b = scgpt.pp.bin_values(pbmc, chunk_size=37, copy=True).layers["X_binned"]
    assert (a != b).nnz == 0
    order = np.random.default_rng(0).permutation(pbmc.n_obs)
    c = scgpt.pp.bin_values(pbmc[order].copy(), copy=True).layers["X_binned"]
    assert (a[order] != c).nnz == 0
    half = scgpt.pp.bin_values(pbmc[:100].copy(), copy=True).layers["X_binned"]
    assert (a[:100] != half).nnz == 0


def test_log_normalised_data_give_the_same_bins_up_to_ties(pbmc):
    raw = scgpt.pp.bin_values(pbmc, copy=True).layers["X_binned"]
    norm = pbmc.copy()
    scgpt.pp.preprocess(norm, log1p=True)
    logged = scgpt.pp.bin_values(norm, layer="X_log1p", copy=True).layers["X_binned"]
    X = pbmc.X.tocsr()
    unique = np.zeros(X.nnz, dtype=bool)  # values that occur once in their cell cannot be tied
    for i in range(X.shape[0]):
        sl = slice(X.indptr[i], X.indptr[i + 1])
        vals, counts = np.unique(X.data[sl], return_counts=True)
        unique[sl] = np.isin(X.data[sl], vals[counts == 1])
    assert unique.sum() > 4_000
    np.testing.assert_array_equal(raw.data[unique], logged.data[unique])


def test_bad_values(pbmc):
    bad = pbmc.copy()
    bad.X = bad.X.tocsr()
    bad.X.data[5] = -1
    with pytest.raises(ValueError, match="holds 1 negative values"):
        scgpt.pp.bin_values(bad)
    bad.X.data[5] = np.nan
    with pytest.raises(ValueError, match="holds 1 NaN or infinite values"):
        scgpt.pp.bin_values(bad)
    with pytest.raises(ValueError, match="n_bins must be between"):
        scgpt.pp.bin_values(pbmc, n_bins=1)


def test_view_is_made_actual_with_a_warning(pbmc):
    view = pbmc[:10]
    with pytest.warns(UserWarning, match="received a view"):
        scgpt.pp.bin_values(view)
    assert not view.is_view and "X_binned" in view.layers


def test_backed_input(pbmc, tmp_path):
    pbmc.write_h5ad(tmp_path / "x.h5ad")
    backed = ad.read_h5ad(tmp_path / "x.h5ad", backed="r")
    scgpt.pp.bin_values(backed, chunk_size=128)  # X is streamed from disk in chunks
    ref = scgpt.pp.bin_values(pbmc, copy=True)
    assert (backed.layers["X_binned"] != ref.layers["X_binned"]).nnz == 0


def test_preprocess_official_steps(pbmc):
    before = pbmc.copy()
    scgpt.pp.preprocess(pbmc, normalize_total=1e4, log1p=True, subset_hvg=200, binning=51)
    assert pbmc.n_vars == 200 and (pbmc.X != before[:, pbmc.var_names].X).nnz == 0  # X untouched
    raw = before.X.toarray()
    expected = raw / raw.sum(1, keepdims=True) * 1e4  # normalised over all 765 genes, before the HVG subset
    np.testing.assert_allclose(
        pbmc.layers["X_normed"].toarray(), expected[:, before.var_names.get_indexer(pbmc.var_names)], rtol=1e-5
    )
    np.testing.assert_allclose(pbmc.layers["X_log1p"].data, np.log1p(pbmc.layers["X_normed"].data), rtol=1e-6)
    assert {"X_normed", "X_log1p", "X_binned"} <= set(pbmc.layers)
    assert pbmc.layers["X_binned"].data.max() == 50


def test_hvg_warns_on_non_counts(pbmc):
    pbmc.layers["lognorm"] = pbmc.X.copy()
    pbmc.layers["lognorm"].data = np.log1p(pbmc.layers["lognorm"].data)
    with pytest.warns(UserWarning, match="expects raw count"):
        scgpt.pp.highly_variable_genes(pbmc, 100, layer="lognorm", flavor="seurat_v3")


def test_preprocess_filters_and_selects_on_the_counts_layer(pbmc):
    """With counts in a layer, filtering and HVG selection read that layer, not X."""
    counts = pbmc.X.copy()
    pbmc.layers["counts"] = counts
    pbmc.X = sp.csr_matrix(pbmc.shape, dtype=np.float32)  # X holds something else (here: nothing)
    low_gene = int(np.argmin(np.asarray(counts.sum(0)).ravel()))
    min_gene_counts = int(np.asarray(counts.sum(0)).ravel()[low_gene]) + 1
    low_name = pbmc.var_names[low_gene]
    scgpt.pp.preprocess(pbmc, layer="counts", filter_gene_by_counts=min_gene_counts, filter_cell_by_counts=500,
                        normalize_total=None, subset_hvg=100)  # fmt: skip
    cell_totals = np.asarray(counts.sum(1)).ravel()
    assert pbmc.n_obs == int((cell_totals >= 500).sum()) > 0
    assert pbmc.n_vars == 100 and low_name not in pbmc.var_names


def test_normalize_total_is_a_number_median_or_none(pbmc):
    raw = pbmc.X.toarray()
    totals = raw.sum(1, keepdims=True)
    scgpt.pp.preprocess(pbmc, normalize_total=10_000)  # an integer is a target, unlike the official Preprocessor
    np.testing.assert_allclose(pbmc.layers["X_normed"].toarray(), raw / totals * 1e4, rtol=1e-5)
    with pytest.warns(UserWarning, match=r"adata.layers\['X_normed'\] exists and is overwritten"):
        scgpt.pp.preprocess(pbmc, normalize_total="median")
    np.testing.assert_allclose(pbmc.layers["X_normed"].toarray(), raw / totals * np.median(totals), rtol=1e-5)
    params = pbmc.uns["scgpt_preprocess"]["params"]
    assert params["normalize_total"] == "median" and params["filter_cell_by_counts"] == 0
    fresh = scgpt.datasets.pbmc68k_counts()
    scgpt.pp.preprocess(fresh, normalize_total=None)
    assert "X_normed" not in fresh.layers
    for bad in (True, 0, -5.0, "mean"):
        with pytest.raises(ValueError, match="normalize_total must be a positive number, 'median' or None"):
            scgpt.pp.preprocess(pbmc, normalize_total=bad)


def test_count_filters_read_true_as_one_and_are_alike(pbmc):
    X = pbmc.X.tolil()
    X[0, :] = 0  # an empty cell
    pbmc.X = X.tocsr()
    empty_genes = int((np.asarray(pbmc.X.sum(0)).ravel() == 0).sum())
    out = scgpt.pp.preprocess(pbmc, filter_gene_by_counts=True, filter_cell_by_counts=True, copy=True)
    assert out.n_obs == 699 and out.n_vars == 765 - empty_genes
    with pytest.warns(UserWarning, match="Some cells have zero counts"):  # scanpy's normalize_total, on the kept cell
        assert scgpt.pp.preprocess(pbmc, filter_cell_by_counts=False, copy=True).n_obs == 700
    with pytest.raises(ValueError, match="filter_cell_by_counts must be a non-negative integer"):
        scgpt.pp.preprocess(pbmc, filter_cell_by_counts=2.5)


def test_hvg_records_params_and_checks_flavor(pbmc):
    scgpt.pp.highly_variable_genes(pbmc, 100)
    assert pbmc.var["highly_variable"].sum() == 100
    hvg = pbmc.uns["hvg"]
    assert hvg["flavor"] == "seurat_v3" and hvg["params"]["n_top_genes"] == 100  # scanpy's entry kept
    with pytest.raises(ValueError, match="flavor must be one of"):
        scgpt.pp.highly_variable_genes(pbmc, 100, flavor="seuratv3")
    with pytest.raises(KeyError, match="batch_key='donor' is not a column"):
        scgpt.pp.highly_variable_genes(pbmc, 100, batch_key="donor")
