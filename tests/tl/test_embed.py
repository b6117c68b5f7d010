"""scgpt.tl.embed: official numbers, determinism, streaming, MuData and clear errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import scgpt
from scgpt.model import ScGPT


def _cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.golden
@pytest.mark.parametrize("folder,key", [("official_base", "base_seed0"), ("official_base_flash", "flash_seed0")])
def test_matches_official_embed_data(golden_dir, pbmc, folder, key):
    """Same settings as the official embed_data(gene_col="index", max_length=1200): exact gene names."""
    ref = np.load(golden_dir / "embed_data_output.npz", allow_pickle=True)
    assert (pbmc.obs_names == ref["obs_names"]).all()
    scgpt.tl.embed(pbmc, golden_dir / folder, use_aliases=False, max_length=1200, batch_size=64, device="cpu")
    emb = pbmc.obsm["X_scGPT"]
    assert emb.dtype == np.float32 and emb.shape == (700, 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    cos = _cos(emb, ref[key])
    assert cos.mean() >= 0.9998 and cos.min() >= 0.995, (cos.mean(), cos.min())
    params = pbmc.uns["X_scGPT"]["params"]
    assert params["max_length"] == 1200 and params["seed"] == 0 and params["dtype"] == "float32"
    assert pbmc.uns["X_scGPT"]["n_genes_matched"] == 705


@pytest.fixture(scope="module")
def reference(pbmc_counts, base_model):
    """Embeddings with gene sampling active (max_length below the cells' gene counts)."""
    return scgpt.tl.embed(pbmc_counts, base_model, max_length=100, batch_size=64, copy=True).obsm["X_scGPT"]


def test_independent_of_batch_size_and_of_other_cells(pbmc, base_model, reference):
    for bs in (1, 7, 700):
        out = scgpt.tl.embed(pbmc, base_model, max_length=100, batch_size=bs, copy=True).obsm["X_scGPT"]
        assert np.abs(out - reference).max() < 1e-5, bs
    order = np.random.default_rng(1).permutation(pbmc.n_obs)[:300]  # other cells, other order
    sub = scgpt.tl.embed(pbmc[order].copy(), base_model, max_length=100, batch_size=13, copy=True).obsm["X_scGPT"]
    assert np.abs(sub - reference[order]).max() < 1e-5
    other_seed = scgpt.tl.embed(pbmc, base_model, max_length=100, seed=1, copy=True).obsm["X_scGPT"]
    assert np.abs(other_seed - reference).max() > 1e-3  # the seed drives the sampling


def test_backed_equals_in_memory(pbmc, base_model, reference, tmp_path):
    pbmc.write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    scgpt.tl.embed(backed, base_model, max_length=100, batch_size=5)
    assert np.abs(backed.obsm["X_scGPT"] - reference).max() < 1e-5


def test_model_method_equals_tl(pbmc, base_model, reference):
    emb = base_model.get_latent_representation(pbmc, max_length=100)
    assert np.abs(emb - reference).max() < 1e-5


def test_dense_input_and_layer(pbmc, base_model, reference):
    dense = pbmc.copy()
    dense.layers["counts"] = dense.X.toarray()
    dense.X = sp.csr_matrix(dense.shape, dtype=np.float32)
    scgpt.tl.embed(dense, base_model, layer="counts", max_length=100, key_added="emb")
    assert np.abs(dense.obsm["emb"] - reference).max() < 1e-5
    assert dense.uns["emb"]["params"]["layer"] == "counts"


def test_bfloat16_close_to_float32(pbmc, base_model, reference):
    bf = scgpt.tl.embed(pbmc, base_model, max_length=100, dtype="bfloat16", copy=True).obsm["X_scGPT"]
    assert bf.dtype == np.float32
    assert _cos(bf, reference).min() >= 0.995 and _cos(bf, reference).mean() >= 0.999
    assert next(base_model.net.parameters()).dtype.is_floating_point  # the model itself stays float32
    assert str(next(base_model.net.parameters()).dtype) == "torch.float32"


def test_gene_embeddings(pbmc, base_model):
    scgpt.tl.embed(pbmc, base_model, genes=True)
    G = pbmc.varm["X_scGPT"]
    matched = pbmc.uns["X_scGPT"]["n_genes_matched"]
    assert G.shape == (765, 32) and int((~np.isnan(G).any(1)).sum()) == matched
    ref = base_model.get_gene_embeddings(["CD3E"]).to_numpy()[0]
    np.testing.assert_allclose(G[pbmc.var_names.get_loc("CD3E")], ref, rtol=1e-6)


def test_mudata(pbmc, base_model, reference):
    import mudata as md

    prot = ad.AnnData(np.ones((350, 3), dtype=np.float32))
    prot.obs_names = pbmc.obs_names[:350]
    mdata = md.MuData({"rna": pbmc[:500].copy(), "prot": prot})
    scgpt.tl.embed(mdata, base_model, max_length=100)
    assert np.abs(mdata.mod["rna"].obsm["X_scGPT"] - reference[:500]).max() < 1e-5
    full = mdata.obsm["X_scGPT"]
    assert full.shape == (mdata.n_obs, 32)
    pos = mdata.obs_names.get_indexer(pbmc.obs_names[:500])
    assert np.abs(full[pos] - reference[:500]).max() < 1e-5
    assert "X_scGPT" in mdata.uns
    with pytest.raises(KeyError, match="mod='atac' is not a modality"):
        scgpt.tl.embed(mdata, base_model, mod="atac")


def test_copy_returns_new_object_and_leaves_input(pbmc, base_model):
    out = scgpt.tl.embed(pbmc, base_model, copy=True)
    assert out is not pbmc and "X_scGPT" in out.obsm and "X_scGPT" not in pbmc.obsm
    assert scgpt.tl.embed(pbmc, base_model) is None and "X_scGPT" in pbmc.obsm


def test_clear_errors(pbmc, base_model):
    bad = pbmc.copy()
    bad.X = bad.X.tocsr()
    bad.X.data[3] = -2.0
    with pytest.raises(ValueError, match="holds 1 negative values"):
        scgpt.tl.embed(bad, base_model)
    bad.X.data[3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        scgpt.tl.embed(bad, base_model)
    with pytest.raises(ValueError, match="none of the 765 genes is in the model's vocabulary"):
        renamed = pbmc.copy()
        renamed.var_names = [f"notagene_{i}" for i in range(765)]
        scgpt.tl.embed(renamed, base_model)
    with pytest.raises(ValueError, match="duplicated gene names"):
        dup = pbmc.copy()
        dup.var_names = ["CD3E"] * 2 + list(dup.var_names[2:])
        scgpt.tl.embed(dup, base_model)
    with pytest.raises(ValueError, match="has no cells"):
        scgpt.tl.embed(pbmc[:0].copy(), base_model)
    with pytest.raises(TypeError, match="expects an AnnData or MuData"):
        scgpt.tl.embed(pbmc.X, base_model)
    with pytest.raises(ValueError, match="max_length must be at least 2"):
        scgpt.tl.embed(pbmc, base_model, max_length=1)


def test_empty_cells_are_embedded_with_a_warning(pbmc, base_model):
    X = pbmc.X.tolil()
    X[:3] = 0
    pbmc.X = X.tocsr()
    with pytest.warns(UserWarning, match="3 cells express none of the model's genes") as record:
        scgpt.tl.embed(pbmc, base_model)
    assert record[0].filename == __file__  # the warning names the user's line, not a line inside scgpt
    emb = pbmc.obsm["X_scGPT"]
    assert np.isfinite(emb).all() and np.allclose(emb[0], emb[1])


def test_view_is_made_actual(pbmc, base_model):
    view = pbmc[:20]
    with pytest.warns(UserWarning, match="received a view"):
        scgpt.tl.embed(view, base_model)
    assert "X_scGPT" in view.obsm


def test_non_counts_warn(pbmc, base_model):
    pbmc.X = pbmc.X.tocsr()
    pbmc.X.data = np.log1p(pbmc.X.data)
    with pytest.warns(UserWarning, match="do not look like raw counts"):
        scgpt.tl.embed(pbmc, base_model)


def test_default_model_setting(pbmc, golden_dir, monkeypatch):
    monkeypatch.delenv("SCGPT_MODEL", raising=False)
    scgpt.settings.default_model = None
    with pytest.raises(ValueError, match="No model given and no default model is set.*scGPT_human"):
        scgpt.tl.embed(pbmc)
    monkeypatch.setenv("SCGPT_MODEL", str(golden_dir / "official_base"))
    scgpt.tl.embed(pbmc)
    assert pbmc.uns["X_scGPT"]["params"]["model"] == str(golden_dir / "official_base")


def test_batch_conditioned_model_needs_batch_key(golden_dir, pbmc):
    model = ScGPT.from_pretrained(golden_dir / "official_integration")
    with pytest.raises(ValueError, match="conditioned on 2 batches.*batch_key"):
        scgpt.tl.embed(pbmc, model)
    pbmc.obs["batch"] = np.where(np.arange(700) % 2, "b", "a")
    scgpt.tl.embed(pbmc, model, batch_key="batch")
    assert pbmc.obsm["X_scGPT"].shape == (700, 32)
    mixed = pbmc.obsm["X_scGPT"]
    pbmc.obs["batch"] = "a"  # each cell is conditioned on its own batch label, nothing else
    all_a = scgpt.tl.embed(pbmc, model, batch_key="batch", key_added="all_a", copy=True).obsm["all_a"]
    np.testing.assert_allclose(all_a[::2], mixed[::2], atol=1e-5)
    assert np.abs(all_a[1::2] - mixed[1::2]).max(axis=1).min() > 1e-3
    pbmc.obs["batch"] = np.array(["a", "b", "c"])[np.arange(700) % 3]
    with pytest.raises(ValueError, match="more batches than the 2 the model knows"):
        scgpt.tl.embed(pbmc, model, batch_key="batch")
