from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scgpt
from scgpt.data import GeneVocab


def _adata(names):
    return ad.AnnData(np.ones((3, len(names)), dtype=np.float32), var=pd.DataFrame(index=names))


def test_symbols_previous_symbols_and_aliases(pbmc):
    scgpt.pp.align_vocab(pbmc)
    rep = pbmc.uns["id_in_vocab"]
    assert rep["by_kind"]["symbol"] == 705  # exact census tokens, as the official code finds
    assert rep["n_matched"] >= 755  # old symbols (IGJ, SEPT7, H2AFY, ...) rescued through HGNC
    vocab = GeneVocab.default()
    ids = pbmc.var["id_in_vocab"]
    assert ids["IGJ"] == vocab["JCHAIN"] and ids["SEPT7"] == vocab["SEPTIN7"] and ids["CD3E"] == vocab["CD3E"]
    assert rep["params"] == {
        "vocab": "default", "gene_key": None, "use_aliases": True, "organism": "human", "orthologs": "one2one",
        "layer": None,
    }  # fmt: skip
    exact = scgpt.pp.align_vocab(pbmc, use_aliases=False, key_added="exact", copy=True)
    assert exact.uns["exact"]["n_matched"] == 705


def test_ensembl_ids():
    """The 1,000 Ensembl ids of a real OneK1K PBMC panel (tests/fixtures) match through the bundled id table."""
    ids = (Path(__file__).parents[1] / "fixtures" / "onek1k_ensembl_ids.txt").read_text().split()
    assert len(ids) == 1000
    a = _adata(ids)
    scgpt.pp.align_vocab(a)
    rep = a.uns["id_in_vocab"]
    assert rep["by_kind"]["ensembl"] == rep["n_matched"] and rep["coverage"] > 0.9
    assert a.var.loc["ENSG00000167286", "id_in_vocab"] == GeneVocab.default()["CD3D"]
    versioned = _adata(["ENSG00000010610.10", "ENSG00000167286.9"])  # version suffixes are ignored
    scgpt.pp.align_vocab(versioned)
    assert (versioned.var["id_in_vocab"] >= 0).all()


def test_gene_key_column():
    a = _adata(["a", "b", "c"])
    a.var["symbol"] = ["CD3E", "MS4A1", "LYZ"]
    scgpt.pp.align_vocab(a, gene_key="symbol", key_added="ids")
    assert (a.var["ids"] >= 0).all() and a.uns["ids"]["coverage"] == 1.0
    with pytest.raises(KeyError, match="gene_key='nope' is not a column"):
        scgpt.pp.align_vocab(a, gene_key="nope")


def test_coverage_warning_and_error():
    with pytest.warns(UserWarning, match=r"only 1 of 3 genes \(33%\)"):
        scgpt.pp.align_vocab(_adata(["CD3E", "notagene1", "notagene2"]))
    with pytest.raises(ValueError, match="none of the 2 genes is in the model's vocabulary"):
        scgpt.pp.align_vocab(_adata(["x1", "x2"]))


def test_duplicated_names_are_an_error():
    a = ad.AnnData(np.ones((2, 3), dtype=np.float32))
    a.var_names = ["CD3E", "CD3E", "LYZ"]
    with pytest.raises(ValueError, match=r"duplicated gene names .*var_names_make_unique"):
        scgpt.pp.align_vocab(a)


def test_two_genes_on_one_token_keep_the_exact_match():
    """Catches the weaker match keeping the token, and a routine collision (an old symbol of a gene that is in the
    data under its own name, as 'AC016831.7' next to 'LINC00513' in the bundled CITE-seq data) raising a warning;
    genes with equal evidence on one token are ambiguous and still warn."""
    import warnings

    a = _adata(["IGJ", "JCHAIN", "CD3E"])  # IGJ is JCHAIN's previous symbol
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scgpt.pp.align_vocab(a)
    assert a.var["id_in_vocab"].tolist()[0] == -1 and a.var["id_in_vocab"].tolist()[1] >= 0
    b = _adata(["ENSG00000198851.8", "ENSG00000198851.9", "LYZ"])  # CD3E's Ensembl id, two versions
    with pytest.warns(UserWarning, match="already taken by another gene with equal evidence"):
        scgpt.pp.align_vocab(b)
    assert sorted(b.var["id_in_vocab"].tolist()[:2])[0] == -1 and max(b.var["id_in_vocab"].tolist()[:2]) >= 0


def test_coverage_is_reported_for_the_model_that_will_be_used(pbmc):
    """The demo model's vocabulary is smaller than the whole-human one: align_vocab(model=) says so (and embed
    reports the same coverage: a gene-level count, the same for 20 cells as for all 700)."""
    whole_human = scgpt.pp.align_vocab(pbmc, copy=True).uns["id_in_vocab"]
    demo = scgpt.pp.align_vocab(pbmc, "demo", copy=True).uns["id_in_vocab"]
    embedded = scgpt.tl.embed(pbmc[:20].copy(), "demo", copy=True).uns["X_scGPT"]
    assert demo["n_matched"] == embedded["n_genes_matched"] < whole_human["n_matched"]
    assert demo["params"]["model"] == "demo" and "vocab" not in demo["params"]
    with pytest.raises(ValueError, match="either `model` or `vocab`"):
        scgpt.pp.align_vocab(pbmc, "demo", vocab=GeneVocab.default())


def test_default_model_setting_decides_the_vocabulary(pbmc, monkeypatch):
    monkeypatch.setattr(scgpt.settings, "_default_model", "demo")
    rep = scgpt.pp.align_vocab(pbmc, copy=True).uns["id_in_vocab"]
    assert rep["params"]["model"] == "demo"
