"""AnnData helpers shared by :mod:`scgpt.pp` and :mod:`scgpt.tl`: input checks and chunked row reads."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from anndata import AnnData


def check_adata(adata: object, *, fn: str) -> None:
    """A clear error for objects that are not a usable AnnData (wrong type, no cells, no genes)."""
    from anndata import AnnData

    if not isinstance(adata, AnnData):
        raise TypeError(f"{fn} expects an AnnData (or MuData where documented), got {type(adata).__name__}.")
    if adata.n_obs == 0:
        raise ValueError(f"{fn}: the AnnData has no cells (n_obs == 0).")
    if adata.n_vars == 0:
        raise ValueError(f"{fn}: the AnnData has no genes (n_vars == 0).")


def actual_if_view(adata: AnnData, *, fn: str) -> None:
    """Turn a view into an actual AnnData in place, with a warning (as scanpy does before writing)."""
    if adata.is_view:
        warnings.warn(
            f"{fn} received a view of an AnnData; it is made into an actual AnnData (a copy of the subset) "
            "so that results can be written. Pass `adata[...].copy()` to avoid this warning.",
            UserWarning,
            stacklevel=3,
        )
        adata._init_as_actual(adata.copy())


def get_matrix(adata: AnnData, layer: str | None):
    """``adata.X`` or ``adata.layers[layer]`` with a clear error for unknown layers."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass `layer=` naming the layer that holds the counts.")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(f"Layer {layer!r} not found; available layers: {list(adata.layers)}.")
    return adata.layers[layer]


def iter_row_chunks(adata: AnnData, layer: str | None, chunk_size: int) -> Iterator[tuple[int, sp.csr_matrix]]:
    """Yield ``(start, CSR rows)`` chunks; reads backed files chunk by chunk so memory stays bounded."""
    X = get_matrix(adata, layer)
    for start in range(0, adata.n_obs, chunk_size):
        block = X[start : start + chunk_size]
        if hasattr(block, "to_memory"):  # backed sparse dataset
            block = block.to_memory()
        yield start, block.tocsr() if sp.issparse(block) else sp.csr_matrix(np.asarray(block))


def check_values(X: sp.csr_matrix, *, what: str = "the expression matrix", start: int = 0) -> None:
    """Raise for NaN / infinite / negative values, naming how many and the first cell."""
    data = X.data
    bad = ~np.isfinite(data)
    if bad.any():
        row = start + int(np.searchsorted(X.indptr, np.flatnonzero(bad)[0], side="right") - 1)
        raise ValueError(f"{what} holds {int(bad.sum())} NaN or infinite values (first in cell {row}).")
    neg = data < 0
    if neg.any():
        row = start + int(np.searchsorted(X.indptr, np.flatnonzero(neg)[0], side="right") - 1)
        raise ValueError(
            f"{what} holds {int(neg.sum())} negative values (first in cell {row}); scGPT needs non-negative "
            "expression, ideally raw counts (scaled or centred data cannot be binned)."
        )


def looks_like_counts(X: sp.csr_matrix) -> bool:
    """Whether the stored values are (close to) non-negative integers."""
    data = X.data[:1_000_000]
    return bool(np.all(np.abs(data - np.round(data)) < 1e-3)) if len(data) else True
