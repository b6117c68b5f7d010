"""``scgpt.pl.benchmark_integration``: the scib-metrics table of :func:`scgpt.tl.benchmark_integration`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._docs import doc_params, evaluation_key_doc
from .._logging import named
from ._utils import evaluation_entry, finish, new_axes

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

AGGREGATES = ("Bio conservation", "Batch correction", "Total", "AvgBIO", "AvgBATCH")


@doc_params(key=evaluation_key_doc("benchmark_integration"))
@named("scgpt.pl.benchmark_integration")
def benchmark_integration(
    data: AnnData | pd.DataFrame,
    key: str | None = None,
    *,
    cmap: str = "viridis",
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """The integration benchmark as a table: one row per embedding (best total first), one column per metric.

    Every cell is coloured on one absolute scale, 0 to 1 (scib-metrics scores, higher is better), shown by a
    colour bar: 0.60 and 0.62 look alike, as they should (a per-column min-max scaling would draw them as the
    extremes). The aggregate scores sit right of a vertical line. Values are written in the cells.

    Parameters
    ----------
    data
        The table :func:`scgpt.tl.benchmark_integration` returned, or an AnnData holding its results in
        ``uns[key]`` (``benchmark_integration(..., key_added=key)``).
    {key}
    cmap
        Colour map.
    title
        Axes title.
    {plot}

    Returns
    -------
    {plot_returns}
    """
    if isinstance(data, pd.DataFrame):
        table = data
    elif hasattr(data, "uns"):
        table = evaluation_entry(data, key, "benchmark_integration", needs=("results",))["results"]
    else:
        raise TypeError(
            "scgpt.pl.benchmark_integration: data must be the DataFrame of scgpt.tl.benchmark_integration or an "
            f"AnnData, got {type(data).__name__}."
        )
    table = table.sort_values("Total", ascending=False) if "Total" in table else table
    metrics = [c for c in table.columns if c not in AGGREGATES] + [c for c in AGGREGATES if c in table.columns]
    values = table[metrics].to_numpy(dtype=float)
    shade = np.clip(values, 0.0, 1.0)
    n_rows, n_cols = values.shape
    fig, ax = new_axes(ax, (2.2 + 0.85 * n_cols, 0.9 + 0.45 * n_rows))
    image = ax.imshow(shade, cmap=cmap, vmin=0, vmax=1, aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="score (0 worst, 1 best)")
    ax.set_xticks(range(n_cols), metrics, rotation=45, ha="right")
    ax.set_yticks(range(n_rows), [str(i) for i in table.index])
    ax.grid(False)
    for i in range(n_rows):
        for j in range(n_cols):
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize="small",
                    color="black" if shade[i, j] > 0.5 else "white")  # fmt: skip
    first_aggregate = next((j for j, m in enumerate(metrics) if m in AGGREGATES), None)
    if first_aggregate:
        ax.axvline(first_aggregate - 0.5, color="white", linewidth=3)
    ax.set_title(title if title is not None else "integration benchmark (scib-metrics)")
    return finish(fig, ax, show=show, return_fig=return_fig)
