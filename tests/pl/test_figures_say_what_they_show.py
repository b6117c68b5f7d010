"""What the figures of scgpt.pl draw for the cases issue 30 found misleading, checked on the drawn artists.

Each test builds the input the ``tl`` call writes and asserts the legend, colour bar and title text of the figure
the gallery shows (docs/gallery.md draws every ``pl`` function from the bundled data).
"""

from __future__ import annotations

import anndata as ad
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import scgpt

matplotlib.use("agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _metrics_table(methods: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [
        {"method": m, "perturbation": p, "n_cells": 10, "pearson_delta": rng.uniform(-1, 1)}
        for m in methods
        for p in ("A", "B", "C")
    ]
    return pd.DataFrame(rows)


def test_perturbation_metrics_has_a_legend_entry_per_method():
    """Catches two models sharing one "model" legend entry, so that one of them is drawn without any."""
    methods = ["scGPT", "scGPT fine-tuned", "no_change", "train_mean"]
    ax = scgpt.pl.perturbation_metrics(_metrics_table(methods), show=False)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:4] == ["scGPT", "scGPT fine-tuned", "no_change (baseline)", "train_mean (baseline)"]
    faces = [tuple(p.get_facecolor()) for p in ax.get_legend().get_patches()[:4]]
    assert len(set(faces)) == 4  # each method its own colour, as its box
    assert ax.get_title() == "pearson_delta over 3 perturbations"


def _difference_network() -> ad.AnnData:
    genes = ["SPI1", "GATA3", "LYZ", "CD3E", "CST3", "IL7R"]
    rows = [(s, t, w) for s in genes[:2] for t, w in zip(genes, np.linspace(-0.5, 0.5, len(genes))) if s != t]
    edges = pd.DataFrame(rows, columns=["source", "target", "weight"]).assign(group="CD14 monocyte")
    adata = ad.AnnData(np.zeros((2, len(genes)), dtype=np.float32), var=pd.DataFrame(index=genes))
    adata.uns["grn"] = {
        "params": {"method": "attention", "groupby": "cell_type", "reference_group": "T cell"},
        "edges": edges,
    }
    return adata


def test_a_difference_network_is_titled_as_a_difference():
    """Catches a network of monocytes minus T cells titled "attention network: CD14 monocyte", as one cell type."""
    adata = _difference_network()
    ax = scgpt.pl.attention(adata, "grn", show=False)
    assert ax.get_title() == "attention network: CD14 monocyte minus T cell (difference)"
    assert ax.figure.axes[-1].get_ylabel() == "attention weight difference"  # the colour bar
    low, high = ax.images[0].get_clim()
    assert low == pytest.approx(-high)  # a difference: diverging, centred at 0
    ax = scgpt.pl.grn(adata, "grn", tfs=["SPI1", "GATA3"], top=4, show=False)
    assert ax.get_title() == "top 4 edges per source: CD14 monocyte minus T cell (difference)"


def test_grn_node_labels_sit_beside_their_nodes():
    """Catches node names drawn centred on the markers, where they overlap the nodes and each other."""
    adata = _difference_network()
    ax = scgpt.pl.grn(adata, "grn", tfs=["SPI1"], top=5, layout="shell", show=False)
    labels = [t for t in ax.texts if t.get_text()]
    assert sorted(t.get_text() for t in labels) == ["CD3E", "CST3", "GATA3", "IL7R", "LYZ", "SPI1"]
    for t in labels:
        offset = np.hypot(*t.get_position()) if t.get_anncoords() == "offset points" else 0.0
        assert offset > 5  # points away from the node's centre
        assert t.get_ha() in ("left", "right")


def test_gene_embedding_colours_the_largest_programs_by_default():
    """Catches a legend of all 89 programs by default (unreadable), and a title that hides the rest."""
    rng = np.random.default_rng(0)
    n_genes, n_programs = 400, 30
    sizes = np.arange(n_programs, 0, -1)  # program i has 30 - i genes ... (then the rest in no program)
    program = np.repeat([str(i) for i in range(n_programs)], sizes).astype(object)[:n_genes]
    program = np.r_[program, [np.nan] * (n_genes - len(program))]
    adata = ad.AnnData(
        np.zeros((2, n_genes), dtype=np.float32), var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)])
    )
    adata.var["scgpt_program"] = pd.Categorical(program, categories=[str(i) for i in range(n_programs)])
    adata.varm["scgpt_program_umap"] = rng.normal(size=(n_genes, 2))
    ax = scgpt.pl.gene_embedding(adata, show=False)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [str(i) for i in range(12)]  # the 12 largest, in order
    assert ax.get_title() == "gene programs (12 largest of 30)"
    every = scgpt.pl.gene_embedding(adata, programs=[str(i) for i in range(n_programs)], show=False)
    assert len(every.get_legend().get_texts()) == 30 and every.get_title() == "gene programs"


def test_benchmark_integration_uses_one_absolute_scale_with_a_colour_bar():
    """Catches each column coloured min-max with no colour bar (0.60 and 0.62 drawn as the two extremes)."""
    table = pd.DataFrame(
        {"Isolated labels": [0.60, 0.62], "KBET": [0.2, 0.9], "Total": [0.5, 0.7]}, index=["pca", "scGPT"]
    )
    fig = scgpt.pl.benchmark_integration(table, return_fig=True)
    ax, bar = fig.axes
    assert bar.get_ylabel() == "score (0 worst, 1 best)"
    image = ax.images[0]
    assert image.get_clim() == (0, 1)
    shade = np.asarray(image.get_array())
    assert [t.get_text() for t in ax.get_yticklabels()] == ["scGPT", "pca"]  # best total first
    np.testing.assert_allclose(shade[:, 0], [0.62, 0.60])  # the values themselves, not rescaled per column
    assert ax.get_title() == "integration benchmark (scib-metrics)"


def test_every_pl_function_is_drawn_in_the_gallery():
    """Catches a plot function added to scgpt.pl (or one like gene_coverage) that the gallery never renders, so its
    figure is never looked at; and a gallery that no longer shows a difference network."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "gallery.md").read_text()
    cells = "\n".join(re.findall(r"```\{code-cell\} ipython3\n(.*?)```", page, re.S))
    drawn = set(re.findall(r"scgpt\.pl\.(\w+)\(", cells))
    assert set(scgpt.pl.__all__) <= drawn, sorted(set(scgpt.pl.__all__) - drawn)
    assert "reference_group=" in cells  # pl.attention / pl.grn of a difference network
