"""Plots of how much of each cell the model reads (vocabulary and ortholog coverage)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._docs import doc_params
from .._logging import named
from ._utils import finish, new_axes

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _fractions(adata: AnnData | np.ndarray, key: str, what: str) -> np.ndarray:
    """The per-cell shares in ``adata.obs[key + "_fraction"]`` (or an array of them), without NaN (empty cells)."""
    if isinstance(adata, np.ndarray | list | tuple):
        values = np.asarray(adata, dtype=np.float64)
    else:
        column = f"{key}_fraction"
        if column not in adata.obs:
            raise KeyError(
                f"{what}.obs[{column!r}] is missing; run scgpt.pp.align_vocab({what}, model, key_added={key!r}) first."
            )
        values = adata.obs[column].to_numpy(dtype=np.float64)
    values = values[~np.isnan(values)]
    if not len(values):
        raise ValueError(f"{what}: no cell with counts to plot.")
    return values


def _label(adata: AnnData | np.ndarray, key: str, default: str) -> str:
    """``"mouse cells (orthologs='one2one')"`` from the record of :func:`scgpt.pp.align_vocab`, else ``default``."""
    params = getattr(adata, "uns", {}).get(key, {}).get("params", {})
    organism = params.get("organism")
    if organism and organism != "human":
        return f"{organism} cells (orthologs={params.get('orthologs', 'one2one')!r})"
    return default


@doc_params()
@named("scgpt.pl.gene_coverage")
def gene_coverage(
    adata: AnnData | np.ndarray,
    reference: AnnData | np.ndarray | None = None,
    *,
    key: str = "id_in_vocab",
    label: str | None = None,
    reference_label: str | None = None,
    bins: int = 40,
    threshold: float | None = 0.5,
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Share of each cell's counts in genes the model reads, next to a reference (e.g. human cells).

    Histograms (outlines) of ``adata.obs[key + "_fraction"]``, written by :func:`scgpt.pp.align_vocab`, with
    a dotted line at each set's median; for another species' cells the share counts the genes read through
    their human orthologs, so the reference of human cells shows what the model sees of the data it was
    trained on.

    Parameters
    ----------
    adata
        Cells aligned with :func:`scgpt.pp.align_vocab` (or an array of per-cell shares).
    reference
        A second set drawn beside it, e.g. human cells aligned to the same model; ``None``: none.
    key
        The ``key_added`` of :func:`scgpt.pp.align_vocab`.
    label, reference_label
        Legend entries (default: the species and ortholog policy recorded by :func:`scgpt.pp.align_vocab`).
    bins
        Histogram bins over ``[0, 1]``.
    threshold
        Draw a vertical line at this share (the median below which :func:`scgpt.pp.align_vocab` warns);
        ``None``: no line.
    title
        Axes title.
    {plot}

    Returns
    -------
    {plot_returns}
    """
    if bins < 1:
        raise ValueError(f"bins must be positive, got {bins}.")
    sets = [(_fractions(adata, key, "adata"), label or _label(adata, key, "cells"))]
    if reference is not None:
        sets.append((_fractions(reference, key, "reference"), reference_label or _label(reference, key, "reference")))
    fig, ax = new_axes(ax, (5.5, 3.2))
    edges = np.linspace(0.0, 1.0, bins + 1)
    for (values, name), color in zip(sets, ("C0", "C7")):
        median = float(np.median(values))
        weights = np.full(len(values), 100.0 / len(values))  # percent of cells, comparable across set sizes
        ax.hist(values, bins=edges, weights=weights, histtype="step", linewidth=1.8, color=color,
                label=f"{name}: median {median:.0%} ({len(values):,} cells)")  # fmt: skip
        ax.axvline(median, color=color, linestyle=":", linewidth=1.2)
    if threshold is not None:
        ax.axvline(threshold, color="0.3", linestyle="--", linewidth=0.8, label=f"warning below {threshold:.0%}")
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(lambda x, _: f"{x:.0%}")
    ax.set_xlabel("share of the cell's counts in genes the model reads")
    ax.set_ylabel("% of cells")
    ax.legend(loc="upper left", fontsize="small", frameon=False)
    if title is not None:
        ax.set_title(title)
    return finish(fig, ax, show=show, return_fig=return_fig)
