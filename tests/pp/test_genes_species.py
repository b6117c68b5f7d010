"""``scgpt.pp.align_vocab`` on another species' genes: the mapping in ``var``, the coverage report, warnings, errors."""

from __future__ import annotations

import numpy as np
import pytest

import scgpt
from scgpt.data import GeneVocab


@pytest.fixture(scope="module")
def mouse_like(pbmc_counts, mouse_round_trip):
    """The 765 pbmc68k genes, those with a one-to-one mouse ortholog named by it (the others keep their human name)."""
    vocab = GeneVocab.default()
    restricted, renamed, _, _ = mouse_round_trip(pbmc_counts, vocab)
    names = dict(zip(restricted.var_names, renamed.var_names))
    out = pbmc_counts.copy()
    out.var_names = [names.get(g, g) for g in pbmc_counts.var_names]
    return out, np.isin(pbmc_counts.var_names, restricted.var_names)


def test_mapping_and_coverage_report(mouse_like):
    """Catches a coverage report that miscounts genes or cells' counts, or a mapping not written to var/uns."""
    adata, renamed = mouse_like
    adata = adata.copy()
    scgpt.pp.align_vocab(adata, organism="mouse")
    rep = adata.uns["id_in_vocab"]
    n = int(renamed.sum())
    assert n == 639  # pbmc68k genes with a one-to-one mouse ortholog in the whole-human vocabulary
    assert rep["n_matched"] == n and rep["n_genes"] == 765
    assert rep["orthology"]["none"] == 765 - n and rep["orthology"]["one2one"] == n
    assert rep["by_reason"] == {"one2one": n, "no ortholog": 765 - n}
    assert rep["params"]["organism"] == "mouse" and rep["params"]["orthologs"] == "one2one"
    X = adata.X.toarray().astype(np.float64)
    share = X[:, renamed].sum(1) / X.sum(1)
    np.testing.assert_allclose(adata.obs["id_in_vocab_fraction"], share, rtol=1e-12)
    assert rep["counts_fraction"]["median"] == pytest.approx(np.median(share), rel=1e-12)
    assert rep["counts_fraction"]["p5"] == pytest.approx(np.percentile(share, 5), rel=1e-12)
    assert 0.6 < rep["counts_fraction"]["p5"] < rep["counts_fraction"]["median"] < 0.8  # 64 %, 74 %: FTL, HLA class II
    var = adata.var
    assert var.loc["Cd3e", "id_in_vocab_human"] == "CD3E" and var.loc["Cd3e", "id_in_vocab_reason"] == "one2one"
    assert var.loc["FTL", "id_in_vocab_human"] == "" and var.loc["FTL", "id_in_vocab_reason"] == "no ortholog"
    assert var.loc["Cd3e", "id_in_vocab"] == GeneVocab.default()["CD3E"]


def test_mouse_genes_without_organism_warn_with_the_suggestion(mouse_like):
    """Catches the human-default path silently reading a few percent of a mouse dataset (official issue #347)."""
    adata, renamed = mouse_like
    mouse_only = adata[:, renamed].copy()
    with pytest.warns(UserWarning, match=r"genes look like 'mouse' or 'rat' genes: pass organism='mouse'"):
        scgpt.pp.align_vocab(mouse_only)
    with pytest.raises(ValueError, match=r"none of the 3 genes .* pass organism='mouse'"):
        scgpt.pp.align_vocab(mouse_only[:, ["Cd3e", "Ms4a1", "Cd79a"]].copy())


def test_wrong_organism_is_an_error_naming_the_likely_species(mouse_like, pbmc):
    """Catches a wrong ``organism`` giving an empty or nonsense mapping instead of a clear error."""
    adata, renamed = mouse_like
    mouse_only = adata[:, renamed].copy()
    zebrafish = r"organism='zebrafish', but only 0% .* look like 'mouse' or 'rat' genes .* Pass organism='mouse'"
    with pytest.raises(ValueError, match=zebrafish):
        scgpt.pp.align_vocab(mouse_only, organism="zebrafish")
    human = (
        r"organism='mouse', but only 0% .* look like 'human' genes .* Pass organism='human' \(the default\)\. "
        r"If they are mouse genes written in upper case"
    )
    with pytest.raises(ValueError, match=human):
        scgpt.pp.align_vocab(pbmc, organism="mouse")
    with pytest.raises(ValueError, match="organism='martian' is not a species"):
        scgpt.pp.align_vocab(pbmc, organism="martian")
