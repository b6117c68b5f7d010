"""scgpt.pl.gene_coverage draws the per-cell share of counts the model reads, next to a reference."""

from __future__ import annotations

import matplotlib
import matplotlib.axes
import matplotlib.pyplot as plt
import numpy as np
import pytest

import scgpt
from scgpt.data import GeneVocab

matplotlib.use("agg")


def test_gene_coverage_draws_both_sets_and_their_medians(pbmc, mouse_round_trip):
    """Catches the histograms of the wrong column, medians drawn where they are not, or the legend losing the policy."""
    restricted, mouse, _, _ = mouse_round_trip(pbmc, GeneVocab.default())
    names = dict(zip(restricted.var_names, mouse.var_names))
    species = pbmc.copy()
    species.var_names = [names.get(g, g) for g in pbmc.var_names]  # genes without a 1:1 ortholog: not read
    scgpt.pp.align_vocab(species, organism="mouse")
    scgpt.pp.align_vocab(pbmc)
    fig = scgpt.pl.gene_coverage(species, pbmc, reference_label="human PBMCs", return_fig=True)
    ax = fig.axes[0]
    m_species = float(np.median(species.obs["id_in_vocab_fraction"]))
    m_human = float(np.median(pbmc.obs["id_in_vocab_fraction"]))
    assert 0.6 < m_species < 0.8 and m_human > 0.99
    assert len(ax.patches) == 2  # one outline histogram per set
    for patch, adata in zip(ax.patches, (species, pbmc)):  # outline heights: % of cells per bin
        values = adata.obs["id_in_vocab_fraction"].to_numpy()
        heights = np.histogram(values, np.linspace(0, 1, 41))[0] * 100 / len(values)
        drawn = np.unique(np.round(patch.get_xy()[:, 1], 9))
        assert np.allclose(drawn, np.unique(np.round(np.r_[0, heights], 9)))
    vertical = sorted(line.get_xdata()[0] for line in ax.lines)
    assert np.allclose(vertical, sorted([m_species, m_human, 0.5]))
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts[0] == f"mouse cells (orthologs='one2one'): median {m_species:.0%} (700 cells)"
    assert texts[1] == f"human PBMCs: median {m_human:.0%} (700 cells)" and texts[2] == "warning below 50%"
    plt.close(fig)
    fig2, ax2 = plt.subplots()
    out = scgpt.pl.gene_coverage(np.array([0.2, 0.4, np.nan]), ax=ax2, threshold=None, show=False)
    assert out is ax2 and len(ax2.lines) == 1 and np.isclose(ax2.lines[0].get_xdata()[0], 0.3)
    plt.close(fig2)
    with pytest.raises(KeyError, match=r"run scgpt.pp.align_vocab\(adata, model, key_added='other'\) first"):
        scgpt.pl.gene_coverage(pbmc, key="other")
