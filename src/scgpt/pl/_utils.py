"""Shared plotting conventions (scanpy's ``ax`` / ``show`` / ``return_fig``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._logging import caller

if TYPE_CHECKING:
    from anndata import AnnData
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


def evaluation_keys(adata: AnnData, evaluator: str) -> list[str]:
    """The ``uns`` keys holding results of ``scgpt.tl.<evaluator>`` (written with ``key_added=``), in order."""
    from collections.abc import Mapping

    tag = f"scgpt.tl.{evaluator}"
    return [str(k) for k, v in adata.uns.items() if isinstance(v, Mapping) and v.get("evaluator") == tag]


def missing_evaluation(adata: AnnData, key: str | None, evaluator: str) -> KeyError:
    """The error for a result of ``scgpt.tl.<evaluator>`` not found: it lists the keys that hold such results."""
    fn = caller()
    where = f"scgpt.tl.{evaluator}"
    candidates = evaluation_keys(adata, evaluator)
    store = f"pass the DataFrame {where} returns, or call it with key_added= to store its results"
    if key is None and len(candidates) > 1:
        return KeyError(f"{fn}: adata.uns holds results of {where} under several keys, {candidates}; pass key=.")
    if key is None or not candidates:
        named = "adata.uns" if key is None else f"adata.uns[{key!r}] (nor any other key)"
        return KeyError(f"{fn}: {named} holds no results of {where}; {store}.")
    return KeyError(
        f"{fn}: adata.uns[{key!r}] holds no results of {where}; they are under {candidates}: pass key= (one of them)."
    )


def evaluation_entry(adata: AnnData, key: str | None, evaluator: str, *, needs: tuple[str, ...]) -> dict:
    """``adata.uns[key]``, written by ``scgpt.tl.<evaluator>(..., key_added=key)`` and holding the fields ``needs``.

    ``key=None`` takes the only entry of that evaluator. Errors list the keys holding its results.
    """
    from collections.abc import Mapping

    if key is None:
        candidates = evaluation_keys(adata, evaluator)
        if len(candidates) != 1:
            raise missing_evaluation(adata, key, evaluator)
        key = candidates[0]
    entry = adata.uns.get(key)
    if not isinstance(entry, Mapping) or any(n not in entry for n in needs):
        raise missing_evaluation(adata, key, evaluator)
    return entry
