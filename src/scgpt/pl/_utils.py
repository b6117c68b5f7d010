"""Shared plotting conventions (scanpy's ``ax`` / ``show`` / ``return_fig``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """The given axes and their figure, or a new figure with one axes."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def finish(fig: Figure, ax: Axes, *, show: bool | None, return_fig: bool) -> Figure | Axes | None:
    """Scanpy's convention: the figure with ``return_fig``, nothing once shown, else the axes."""
    import matplotlib.pyplot as plt

    if return_fig:
        return fig
    if show is None:
        import matplotlib

        show = matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo", "template")
    if show:
        plt.show()
        return None
    return ax
