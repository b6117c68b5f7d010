"""scgpt.tl.gene_programs and scgpt.tl.infer_grn: what the network computes, cell by cell, whatever the batching."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch

import scgpt
from scgpt.model import rank_normalize

GENES = ["CD3E", "CD3D", "IL7R", "LTB", "CCR7", "MS4A1", "CD79A", "CD79B", "LYZ", "S100A8", "S100A9", "CST3"]
GENES += ["FCER1G", "NKG7", "GNLY", "GZMB", "SPI1", "IRF8", "IRF1", "FOS", "JUNB", "KLF6", "HLA-DRA", "CD74"]
#: Tokens of a cell as infer_grn runs it: every gene, expressed or not
EVERY_GENE = {"include_zero_genes": True, "max_length": len(GENES) + 1, "tokens": GENES}


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model(n_layers=2, dropout=0.0)


@pytest.fixture(scope="module")
def cells(pbmc_counts):
    adata = pbmc_counts[:24, GENES].copy()
    adata.obs["half"] = np.where(np.arange(24) < 12, "a", "b")
    return adata


# ---------------------------------------------------------------------------- rank normalisation
def _rank_rows_then_columns(m: np.ndarray) -> np.ndarray:
    n = m.shape[0]
    r = np.argsort(np.argsort(m, axis=1, kind="stable"), axis=1, kind="stable") / n
    return np.argsort(np.argsort(r, axis=0, kind="stable"), axis=0, kind="stable") / n


def test_rank_normalize_is_the_official_rows_then_columns_ranking_over_gene_tokens():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 3, 6, 6, generator=g)
    is_gene = torch.tensor([[False, True, True, True, True, True], [False, True, True, True, False, False]])
    out = rank_normalize(maps, is_gene).numpy()
    for b in range(2):
        idx = np.flatnonzero(is_gene[b].numpy())
        for h in range(3):
            want = _rank_rows_then_columns(maps[b, h].numpy()[np.ix_(idx, idx)])
            np.testing.assert_allclose(out[b, h][np.ix_(idx, idx)], want)
        outside = np.ones((6, 6), bool)
        outside[np.ix_(idx, idx)] = False
        assert (out[b][:, outside] == 0).all()
    assert out[1, 0][np.ix_([1, 2, 3], [1, 2, 3])].max() == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------- attention networks
def _brute_force(model, batch, layer: int, *, softmax: bool) -> np.ndarray:
    """Per-head attention ``(h, L, L)`` from the raw weights: softmax(QK^T/sqrt(d)) or the raw QK^T."""
    net = model.net
    with torch.no_grad():
        x, _, _, _ = net._transformer_input(batch.genes, batch.values, None, None, None, None)
        for lyr in net.transformer_encoder.layers[:layer]:
            x = lyr(x)
        attn = net.transformer_encoder.layers[layer].self_attn
        d, h = attn.d_model, attn.n_heads
        q = (x @ attn.in_proj_weight[:d].T + attn.in_proj_bias[:d]).view(1, -1, h, d // h).transpose(1, 2)
        k = (x @ attn.in_proj_weight[d : 2 * d].T + attn.in_proj_bias[d : 2 * d]).view(1, -1, h, d // h).transpose(1, 2)
        s = q @ k.transpose(-1, -2)
        return (torch.softmax(s / math.sqrt(d // h), -1) if softmax else s)[0].numpy()


def _network(adata, key="scgpt_grn") -> pd.DataFrame:
    """The varp network as a target x source DataFrame over the data's genes."""
    M = adata.varp[key].toarray()
    return pd.DataFrame(M, index=adata.var_names, columns=adata.var_names)


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("head", [0, 1, 2, 3])
def test_attention_network_equals_brute_force_softmax_per_layer_and_head(model, cells, layer, head, one_cell_batch):
    adata = cells[:3].copy()
    scgpt.tl.infer_grn(
        adata, model, method="attention", genes=GENES, tfs=GENES, layers=layer, heads=head, scores="softmax",
        rank_normalize=False, top_k=None, device="cpu", batch_size=2,
    )  # fmt: skip
    want = np.zeros((len(GENES), len(GENES)))
    for i in range(3):
        b = one_cell_batch(model, adata, i, **EVERY_GENE)
        order = adata.var_names.get_indexer(model.vocab.lookup_tokens(b.genes[0, 1:].numpy()))
        w = _brute_force(model, b, layer, softmax=True)[head][1:, 1:]  # <cls> row and column left out
        cell = np.zeros_like(want)
        cell[np.ix_(order, order)] = w
        want += cell / 3
    np.fill_diagonal(want, 0)  # no self-edges
    got = _network(adata).to_numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    edges = adata.uns["scgpt_grn"]["edges"]
    assert len(edges) == len(GENES) * (len(GENES) - 1) and (edges["source"] != edges["target"]).all()
    row = edges.iloc[0]  # edge source -> target carries map[target, source]
    assert row["weight"] == pytest.approx(want[GENES.index(row["target"]), GENES.index(row["source"])], abs=1e-5)


def test_official_setting_rank_normalised_qk_averaged_over_heads(model, cells, one_cell_batch):
    adata = cells[:2].copy()
    scgpt.tl.infer_grn(adata, model, method="attention", genes=GENES, tfs=GENES, top_k=None, device="cpu")
    want = np.zeros((len(GENES), len(GENES)))
    for i in range(2):
        b = one_cell_batch(model, adata, i, **EVERY_GENE)
        order = adata.var_names.get_indexer(model.vocab.lookup_tokens(b.genes[0, 1:].numpy()))
        qk = _brute_force(model, b, 1, softmax=False)[:, 1:, 1:]
        ranked = np.mean([_rank_rows_then_columns(m) for m in qk], axis=0)
        cell = np.zeros_like(want)
        cell[np.ix_(order, order)] = ranked
        want += cell / 2
    np.fill_diagonal(want, 0)
    np.testing.assert_allclose(_network(adata).to_numpy(), want, atol=1e-6)
    params = adata.uns["scgpt_grn"]["params"]
    assert params["scores"] == "qk" and params["rank_normalize"] and params["directed"]


def test_a_cells_map_does_not_depend_on_the_other_cells_in_its_minibatch(model, cells):
    kw = {"method": "attention", "genes": GENES, "tfs": GENES, "top_k": None, "device": "cpu", "copy": True}
    together = scgpt.tl.infer_grn(cells, model, batch_size=24, **kw)
    alone = scgpt.tl.infer_grn(cells, model, batch_size=1, **kw)
    np.testing.assert_allclose(_network(together).to_numpy(), _network(alone).to_numpy(), atol=1e-5)
    # a group's network is computed from its cells only: equal to a run on those cells alone
    grouped = scgpt.tl.infer_grn(cells, model, groupby="half", batch_size=5, **kw)
    first = scgpt.tl.infer_grn(cells[:12].copy(), model, batch_size=7, **kw)
    e = grouped.uns["scgpt_grn"]["edges"]
    a = e[e["group"] == "a"].set_index(["source", "target"])["weight"]
    b = first.uns["scgpt_grn"]["edges"].set_index(["source", "target"])["weight"]
    np.testing.assert_allclose(a.loc[b.index].to_numpy(), b.to_numpy(), atol=1e-5)
    assert grouped.uns["scgpt_grn"]["n_cells"] == {"a": 12, "b": 12} and "scgpt_grn" not in grouped.varp


def test_group_difference_is_antisymmetric(model, cells):
    kw = {"method": "attention", "genes": GENES, "tfs": GENES, "groupby": "half", "top_k": None, "device": "cpu"}
    ab = scgpt.tl.infer_grn(cells, model, reference_group="a", copy=True, **kw)
    ba = scgpt.tl.infer_grn(cells, model, reference_group="b", copy=True, **kw)
    np.testing.assert_allclose(_network(ab).to_numpy(), -_network(ba).to_numpy(), atol=1e-6)
    assert set(ab.uns["scgpt_grn"]["edges"]["group"]) == {"b"} and np.abs(_network(ab).to_numpy()).max() > 0.01
    # top_k on a difference keeps the strongest changes of either sign
    top = scgpt.tl.infer_grn(cells, model, reference_group="a", copy=True, **{**kw, "top_k": 3})
    e = top.uns["scgpt_grn"]["edges"]
    assert (e["weight"] < 0).any() and (e["weight"] > 0).any() and (e.groupby("target").size() == 3).all()


def test_tfs_are_the_only_sources_and_are_never_dropped_by_gene_selection(model, pbmc_counts):
    adata = pbmc_counts[:8].copy()
    low = adata.var_names[np.argsort(np.asarray(adata.X.sum(0)).ravel())[5]]  # a barely expressed gene
    scgpt.tl.infer_grn(adata, model, method="attention", n_top_genes=20, tfs=[low, "SPI1"], top_k=4, device="cpu")
    grn = adata.uns["scgpt_grn"]
    assert low in grn["genes"] and len(grn["genes"]) in (21, 22)
    assert set(grn["edges"]["source"]) == {low, "SPI1"} and (grn["edges"].groupby("target").size() <= 2).all()


# ---------------------------------------------------------------------------- embedding networks
def test_embedding_network_is_cosine_similarity_in_both_directions(model, cells):
    adata = cells.copy()
    scgpt.tl.infer_grn(adata, model, genes=GENES, top_k=3)
    emb = model.get_gene_embeddings(GENES).to_numpy()
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cos = emb @ emb.T
    edges = adata.uns["scgpt_grn"]["edges"]
    for _, e in edges.head(10).iterrows():
        assert e["weight"] == pytest.approx(cos[GENES.index(e["source"]), GENES.index(e["target"])], abs=1e-5)
    pairs = set(zip(edges["source"], edges["target"], strict=True))
    assert all((t, s) in pairs for s, t in pairs)  # undirected: both directions
    np.fill_diagonal(cos, -np.inf)
    for g in range(len(GENES)):  # every gene keeps its 3 most similar genes
        best = {GENES[j] for j in np.argsort(-cos[g])[:3]}
        assert best <= set(edges.loc[edges["target"] == GENES[g], "source"])
    assert not adata.uns["scgpt_grn"]["params"]["directed"] and edges["weight"].is_monotonic_decreasing
    M = adata.varp["scgpt_grn"]
    assert abs(M - M.T).max() < 1e-6


# ---------------------------------------------------------------------------- programs
def test_gene_programs_cluster_embeddings_and_score_cells_like_scanpy(model, pbmc_counts):
    adata = pbmc_counts[:200].copy()
    scgpt.tl.gene_programs(adata, model, resolution=5, min_size=5, ctrl_size=1000)
    prog = adata.var["scgpt_program"]
    sizes = prog.value_counts()
    assert len(sizes) >= 3 and sizes.min() >= 5 and list(sizes.index[:3]) == ["0", "1", "2"]
    assert adata.varm["X_scGPT_gene"].shape == (765, 32) and not np.isnan(adata.varm["X_scGPT_gene"]).any()
    umap = adata.varm["scgpt_program_umap"]
    assert not np.isnan(umap).any()
    scores = adata.obsm["scgpt_program_scores"]
    assert list(scores.columns) == list(prog.cat.categories) and scores.shape == (200, len(sizes))
    # with control bins drawn whole, the score is scanpy's score_genes on log-normalised data
    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    for p in ["0", "2"]:
        genes = list(adata.var_names[prog == p])
        sc.tl.score_genes(lognorm, genes, ctrl_size=1000, score_name="s")
        np.testing.assert_allclose(scores[p].to_numpy(), lognorm.obs["s"].to_numpy(), atol=1e-6)
    table = adata.uns["scgpt_program"]["programs"]
    assert set(table.columns) == {"program", "gene"} and len(table) == prog.notna().sum()


def test_gene_programs_reproducible_and_with_drawn_controls(model, pbmc_counts):
    a = scgpt.tl.gene_programs(pbmc_counts[:100], model, resolution=5, copy=True, seed=1)
    b = scgpt.tl.gene_programs(pbmc_counts[:100], model, resolution=5, copy=True, seed=1)
    pd.testing.assert_series_equal(a.var["scgpt_program"], b.var["scgpt_program"])
    pd.testing.assert_frame_equal(a.obsm["scgpt_program_scores"], b.obsm["scgpt_program_scores"])
    assert "scgpt_program" not in pbmc_counts.var  # copy=True left the input alone


# ---------------------------------------------------------------------------- errors
def test_clear_errors(model, cells):
    with pytest.raises(KeyError, match="not genes of the data"):
        scgpt.tl.infer_grn(cells, model, method="attention", genes=GENES, tfs=["NOT_A_GENE"])
    outside = cells.copy()
    outside.var_names = [*GENES[:-1], "MADE_UP"]
    with pytest.raises(ValueError, match="not in the model's vocabulary"):
        scgpt.tl.infer_grn(outside, model, genes=["CD3E", "MADE_UP"])
    one = cells.copy()
    one.obs["one"] = "x"
    with pytest.raises(ValueError, match="has 1 group"):
        scgpt.tl.infer_grn(one, model, method="attention", tfs=GENES, groupby="one")
    with pytest.raises(KeyError, match="reference_group='c' is not a group"):
        scgpt.tl.infer_grn(cells, model, method="attention", tfs=GENES, groupby="half", reference_group="c")
    with pytest.raises(ValueError, match="layers=2 is out of range: the model has 2 layers, indices 0 to 1"):
        scgpt.tl.infer_grn(cells, model, method="attention", tfs=GENES, layers=2)
    with pytest.raises(ValueError, match=r"heads=\[7\] is out of range: the model has \d+ attention heads per layer"):
        scgpt.tl.infer_grn(cells, model, method="attention", tfs=GENES, heads=[7])
    with pytest.raises(ValueError, match="needs method='attention'"):
        scgpt.tl.infer_grn(cells, model, groupby="half")
    with pytest.raises(KeyError, match="groupby='nope'"):
        scgpt.tl.infer_grn(cells, model, method="attention", tfs=GENES, groupby="nope")
