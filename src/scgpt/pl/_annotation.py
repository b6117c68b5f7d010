"""Plots of annotation results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from .._docs import doc_params
from .._logging import named
from ._utils import finish, new_axes

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@doc_params()
@named()
def confusion(
    adata: AnnData,
    key: str = "scgpt_celltype_evaluation",
    *,
    normalize: Literal["true", "pred", None] = "true",
    cmap: str = "Blues",
    annotate: bool = True,
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Confusion matrix of an annotation, as computed by :func:`scgpt.tl.evaluate_annotation`.

    Parameters
    ----------
    adata
        Annotated data holding ``adata.uns[key]``.
    key
        ``uns`` entry written by :func:`scgpt.tl.evaluate_annotation`.
    normalize
        ``"true"``: rows sum to 1 (recall per cell type); ``"pred"``: columns sum to 1 (precision);
        ``None``: cell counts.
    cmap
        Colour map.
    annotate
        Write the value in each cell.
    title
        Axes title (default: accuracy and macro-F1).
    {plot}

    Returns
    -------
    {plot_returns}
    """
    if key not in adata.uns or "confusion" not in adata.uns[key]:
        raise KeyError(f"adata.uns[{key!r}] has no confusion matrix; run scgpt.tl.evaluate_annotation first.")
    if normalize not in ("true", "pred", None):
        raise ValueError(f"normalize must be 'true', 'pred' or None, got {normalize!r}.")
    metrics = adata.uns[key]
    conf = metrics["confusion"]
    values = conf.to_numpy(dtype=float)
    if normalize == "true":
        values = values / np.maximum(values.sum(1, keepdims=True), 1)
    elif normalize == "pred":
        values = values / np.maximum(values.sum(0, keepdims=True), 1)
    n_rows, n_cols = values.shape
    fig, ax = new_axes(ax, (1.0 + 0.55 * n_cols, 0.8 + 0.5 * n_rows))
    im = ax.imshow(values, cmap=cmap, vmin=0, vmax=1 if normalize else None, aspect="auto")
    ax.set_xticks(range(n_cols), [str(c) for c in conf.columns], rotation=90)
    ax.set_yticks(range(n_rows), [str(r) for r in conf.index])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.grid(False)  # a style's axes grid (e.g. scanpy's figure params) would cut through the cells
    if annotate:
        high = np.nanmax(values) if values.size else 1
        for i in range(n_rows):
            for j in range(n_cols):
                text = f"{values[i, j]:.2f}" if normalize else f"{int(values[i, j])}"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize="small",
                    color="white" if values[i, j] > 0.6 * high else "black",
                )
    fig.colorbar(
        im,
        ax=ax,
        fraction=0.046,
        pad=0.04,
        label={"true": "share of true cells", "pred": "share of predicted cells", None: "cells"}[normalize],
    )
    ax.set_title(
        title if title is not None else f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}"
    )
    return finish(fig, ax, show=show, return_fig=return_fig)
