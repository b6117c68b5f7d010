"""Plots of annotation results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .._docs import doc_params, evaluation_key_doc
from .._logging import caller, named
from ._utils import evaluation_entry, finish, new_axes

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


OVERALL = "overall"  # the row of scgpt.tl.evaluate_annotation's scores over all cells


def _confusion(data: AnnData | pd.DataFrame, key: str | None) -> tuple[pd.DataFrame, pd.Series | None]:
    """The confusion matrix (true x predicted counts) and the overall scores of an evaluation."""
    fn = caller()
    if isinstance(data, pd.DataFrame):
        stored = data.attrs.get("confusion")
        if not isinstance(stored, dict) or not {"data", "index", "columns"} <= set(stored):
            raise KeyError(
                f"{fn}: the DataFrame has no confusion matrix in .attrs['confusion']; pass the DataFrame "
                "scgpt.tl.evaluate_annotation returned (pandas drops .attrs in some operations), or the AnnData it "
                "stored its results in (key_added=) with key=."
            )
        table = data
        conf = pd.DataFrame(**stored)
    elif hasattr(data, "uns"):
        entry = evaluation_entry(data, key, "evaluate_annotation", needs=("confusion", "results"))
        table, conf = entry["results"], entry["confusion"]
    else:
        raise TypeError(
            f"{fn}: data must be the DataFrame of scgpt.tl.evaluate_annotation or an AnnData, got "
            f"{type(data).__name__}."
        )
    overall = table.loc[OVERALL] if isinstance(table, pd.DataFrame) and OVERALL in table.index else None
    return conf, overall


@doc_params(key=evaluation_key_doc("evaluate_annotation"))
@named("scgpt.pl.confusion")
def confusion(
    data: AnnData | pd.DataFrame,
    key: str | None = None,
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
    data
        The DataFrame :func:`scgpt.tl.evaluate_annotation` returned (its ``attrs["confusion"]``), or an AnnData
        holding its results in ``uns[key]`` (``evaluate_annotation(..., key_added=key)``).
    {key}
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
    if normalize not in ("true", "pred", None):
        raise ValueError(f"normalize must be 'true', 'pred' or None, got {normalize!r}.")
    conf, overall = _confusion(data, key)
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
    if title is None and overall is not None:
        title = f"accuracy {overall['accuracy']:.3f}, macro-F1 {overall['f1']:.3f}"
    ax.set_title(title or "")
    return finish(fig, ax, show=show, return_fig=return_fig)
