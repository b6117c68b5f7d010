"""Genes of other species read through their human orthologs: tables, matching, summation, the round trip."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scgpt
from scgpt.data import GeneVocab, match_genes, ortholog_table
from scgpt.data._orthologs import ORGANISMS, classify, gene_ids, resolve_organism
from scgpt.data._tokenize import tokenize


@pytest.fixture(scope="module")
def demo():
    from scgpt.model import resolve_model

    return resolve_model("demo")[0]


@pytest.fixture(scope="module")
def cells(pbmc_counts):
    """50 real PBMCs (raw counts), enough to embed in seconds."""
    return pbmc_counts[np.random.default_rng(0).choice(pbmc_counts.n_obs, 50, replace=False)].copy()


def test_bundled_tables_hold_the_expected_one_to_one_pairs():
    """Catches a table built from the wrong release or a broken orthology classification (the counts the docs quote)."""
    expected = {"mouse": 16757, "macaque": 17060, "cynomolgus": 15721, "pig": 16019, "rat": 15803, "zebrafish": 10557}
    for organism, n in expected.items():
        table = ortholog_table(organism)
        assert int((table.orthology == "one2one").sum()) == n, organism
    mouse = ortholog_table("mouse").set_index("gene")
    assert mouse.loc["Cd3e", "human"] == "CD3E" and mouse.loc["Cd3e", "orthology"] == "one2one"
    assert mouse.loc["mt-Co1", "human"] == "MT-CO1"
    assert gene_ids("mouse")["ENSMUSG00000002033"] == "Cd3g"
    assert set(ORGANISMS) >= {"human", "mouse", "macaque", "pig", "rat", "zebrafish", "fly", "arabidopsis"}
    assert resolve_organism("Mus musculus") == "mouse" and resolve_organism("Rhesus") == "macaque"
    with pytest.raises(ValueError, match=r"organism='martian' is not a species .* known: human, mouse"):
        resolve_organism("martian")


def test_orthology_classes_of_a_hand_made_table():
    """Catches one-to-many and many-to-one swapped, or a many-to-many group called one-to-one."""
    pairs = pd.DataFrame(
        [("a", "A"), ("b", "B1"), ("b", "B2"), ("c1", "C"), ("c2", "C"), ("d1", "D1"), ("d1", "D2"), ("d2", "D2")],
        columns=["gene", "human"],
    )
    kinds = classify(pairs).set_index(["gene", "human"])["orthology"].to_dict()
    assert kinds == {
        ("a", "A"): "one2one",
        ("b", "B1"): "one2many",
        ("b", "B2"): "one2many",
        ("c1", "C"): "many2one",
        ("c2", "C"): "many2one",
        ("d1", "D1"): "many2many",
        ("d1", "D2"): "many2many",
        ("d2", "D2"): "many2many",
    }


def test_match_genes_of_mouse_symbols_and_versioned_ids():
    """Catches ids with a version suffix left unmatched, or one-to-many genes used under the one-to-one policy."""
    vocab = GeneVocab.default()
    names = ["Cd3e", "ENSMUSG00000002033.7", "Gm19938", "Lyzl1", "Ms4a1"]
    m = match_genes(names, vocab, organism="mouse")
    assert list(m.human) == ["CD3E", "CD3G", "", "", "MS4A1"]
    assert list(m.ids) == [vocab["CD3E"], vocab["CD3G"], -1, -1, vocab["MS4A1"]]
    assert list(m.reason) == ["one2one", "one2one", "no ortholog", "one2many, not used", "one2one"]
    assert list(m.by_id) == [False, True, False, False, False]
    rep = m.report()
    assert rep["orthology"] == {"one2one": 3, "one2many": 1, "many2one": 0, "many2many": 0, "none": 1}
    assert rep["n_matched"] == 3 and rep["n_by_id"] == 1
    every = match_genes(names, vocab, organism="mouse", orthologs="all")  # Lyzl1 -> LYZL1 (spelled like it)
    assert every.human[3] == "LYZL1" and every.reason[3] == "one2many"
    with pytest.raises(ValueError, match="orthologs must be 'one2one' or 'all'"):
        match_genes(names, vocab, organism="mouse", orthologs="some")


def test_two_names_of_one_gene_keep_the_symbol():
    """Catches a token fed twice when a dataset names one mouse gene by symbol and by Ensembl id."""
    m = match_genes(["ENSMUSG00000002033", "Cd3g"], GeneVocab.default(), organism="mouse")
    assert list(m.ids >= 0) == [False, True] and m.reason[0] == "token taken"


def test_tokenizer_sums_columns_that_share_a_token():
    """Catches a token fed twice in a cell, or counts of many-to-one genes not summed, in the tokeniser."""
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(rng.poisson(1.0, (20, 6)).astype(np.float32))
    keys = np.arange(1, 7, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    shared = tokenize(X, np.array([5, 7, 5, -1, 9, 7]), keys, max_genes=None, seed=0)
    summed = sp.csr_matrix(np.c_[X[:, 0].toarray() + X[:, 2].toarray(), X[:, 1].toarray() + X[:, 5].toarray(),
                                 X[:, 4].toarray()])  # fmt: skip
    alone = tokenize(summed, np.array([5, 7, 9]), keys[[0, 1, 4]], max_genes=None, seed=0)
    np.testing.assert_array_equal(shared.indptr, alone.indptr)
    np.testing.assert_array_equal(shared.genes, alone.genes)
    np.testing.assert_array_equal(shared.values, alone.values)
    for i in range(len(shared)):
        row = shared.genes[shared.indptr[i] : shared.indptr[i + 1]]
        assert len(row) == len(set(row))


def test_round_trip_mouse_symbols_and_ids_embed_like_the_human_cells(cells, demo, mouse_round_trip):
    """Human cells renamed to their mouse one-to-one orthologs embed exactly as the human cells on the same genes.

    Catches any mapping that lands a gene on another token, drops or reorders values, or changes a cell's
    random tokenisation key (symbols, and Ensembl ids with version suffixes).
    """
    restricted, mouse, by_id, unique = mouse_round_trip(cells, demo.vocab)
    assert restricted.n_vars > 500 and by_id.n_vars > 0.9 * restricted.n_vars
    human_emb = scgpt.tl.embed(restricted, demo, copy=True).obsm["X_scGPT"]
    mouse_out = scgpt.tl.embed(mouse, demo, organism="mouse", copy=True)
    np.testing.assert_allclose(mouse_out.obsm["X_scGPT"], human_emb, atol=1e-6)
    rep = mouse_out.uns["X_scGPT"]
    assert rep["params"]["organism"] == "mouse" and rep["n_genes_matched"] == restricted.n_vars
    assert rep["counts_fraction"] == {"median": 1.0, "p5": 1.0, "min": 1.0}
    id_emb = scgpt.tl.embed(by_id, demo, organism="mouse", copy=True)
    expected = scgpt.tl.embed(restricted[:, unique].copy(), demo, copy=True).obsm["X_scGPT"]
    np.testing.assert_allclose(id_emb.obsm["X_scGPT"], expected, atol=1e-6)
    assert id_emb.uns["X_scGPT"]["orthologs_report"]["n_by_id"] == by_id.n_vars
    latent = demo.get_latent_representation(mouse, organism="mouse")
    np.testing.assert_allclose(latent, human_emb, atol=1e-6)


def test_many_to_one_counts_are_summed(cells, demo):
    """Several genes with one human ortholog: their counts summed into its token (orthologs="all"), unused with one2one.

    Catches a summation that keeps one of the genes only, feeds the token twice, or copies a one-to-many
    gene's counts into several tokens.
    """
    human = cells[:, ["CD3E", "MS4A1", "LYZ", "CD74", "HLA-DRA"]]
    human = human[np.asarray(human.X.sum(1)).ravel() > 0].copy()  # cells that express some of them
    counts = human.X.toarray()
    table = pd.DataFrame(
        [("x1", "CD3E"), ("x2", "CD3E"), ("y", "MS4A1"), ("z", "LYZ"), ("z", "CD74"), ("w", "HLA-DRA")],
        columns=["gene", "human"],
    )
    # x1 + x2 = CD3E (many-to-one), z -> LYZ or CD74 (one-to-many: the first alphabetically, CD74)
    split = np.floor(counts[:, 0] / 2)
    other = np.c_[split, counts[:, 0] - split, counts[:, 1], counts[:, 3], counts[:, 4]]
    species = ad.AnnData(sp.csr_matrix(other.astype(np.float32)), obs=human.obs.copy())
    species.var_names = ["x1", "x2", "y", "z", "w"]
    out = scgpt.tl.embed(species, demo, organism=table, orthologs="all", copy=True)
    expected = scgpt.tl.embed(human[:, ["CD3E", "MS4A1", "CD74", "HLA-DRA"]].copy(), demo, copy=True)
    np.testing.assert_allclose(out.obsm["X_scGPT"], expected.obsm["X_scGPT"], atol=1e-6)
    assert out.uns["X_scGPT"]["orthologs_report"]["n_summed"] == 2
    scgpt.pp.align_vocab(species, demo, organism=table, orthologs="all")
    assert list(species.var["id_in_vocab_human"]) == ["CD3E", "CD3E", "MS4A1", "CD74", "HLA-DRA"]
    assert list(species.var["id_in_vocab_reason"]) == [
        "many2one (summed)", "many2one (summed)", "one2one", "one2many", "one2one",
    ]  # fmt: skip
    with pytest.warns(UserWarning, match=r"median cell has only \d+% of its counts .* orthologs='all' also reads"):
        strict = scgpt.pp.align_vocab(species, demo, organism=table, copy=True)
    assert list(strict.var["id_in_vocab_reason"])[:2] == ["many2one, not used"] * 2
    with np.errstate(invalid="ignore"):  # a cell without counts in these genes: NaN
        share = (other[:, 2] + other[:, 4]).astype(np.float64) / other.sum(1)
    np.testing.assert_allclose(strict.obs["id_in_vocab_fraction"], share, rtol=1e-12)
    assert strict.uns["id_in_vocab"]["counts_fraction"]["median"] == pytest.approx(np.nanmedian(share), rel=1e-12)


def test_sources_read_another_species_in_vocabulary_space():
    """Catches a training source that drops the second gene of a many-to-one pair instead of summing it."""
    from scgpt.data import AnnDataSource

    vocab = GeneVocab.default()
    table = pd.DataFrame([("x1", "CD3E"), ("x2", "CD3E"), ("y", "MS4A1")], columns=["gene", "human"])
    X = np.array([[1, 2, 3], [0, 5, 0]], dtype=np.float32)
    cells = ad.AnnData(sp.csr_matrix(X))
    cells.var_names = ["x1", "x2", "y"]
    src = AnnDataSource.matched(cells, vocab, organism=table, orthologs="all")
    rows = src.rows(np.array([0, 1])).toarray()
    assert rows[:, vocab["CD3E"]].tolist() == [3, 5] and rows[:, vocab["MS4A1"]].tolist() == [3, 0]
    assert rows.sum() == X.sum() and sorted(src.present_tokens()) == sorted([vocab["CD3E"], vocab["MS4A1"]])
