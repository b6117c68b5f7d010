"""scgpt.pl.confusion draws the evaluation of an annotation, from its DataFrame or from adata.uns[key]."""

from __future__ import annotations

import matplotlib
import matplotlib.axes
import pytest

import scgpt

matplotlib.use("agg")


def test_confusion_plot(pbmc):
    """The matrix, counts and title as drawn: catches shares drawn as counts or a style grid over the cells."""
    matplotlib.rcParams["axes.grid"] = True  # as scanpy's set_figure_params does; the plot turns it off
    pbmc.obs["pred"] = pbmc.obs["bulk_labels"]
    scgpt.tl.evaluate_annotation(pbmc, labels_key="bulk_labels", key="pred", key_added="ev")
    fig = scgpt.pl.confusion(pbmc, "ev", return_fig=True)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "predicted" and "accuracy 1.000" in ax.get_title()
    assert not any(line.get_visible() for line in ax.get_xgridlines() + ax.get_ygridlines())
    assert len(ax.get_xticklabels()) == 10
    ax2 = scgpt.pl.confusion(pbmc, "ev", normalize=None, show=False)
    assert isinstance(ax2, matplotlib.axes.Axes) and ax2.texts[0].get_text().isdigit()  # counts, not shares
    with pytest.raises(KeyError, match=r"adata.uns\['missing'\] holds no results of scgpt.tl.evaluate_annotation"):
        scgpt.pl.confusion(pbmc, "missing")
    matplotlib.rcParams["axes.grid"] = False
