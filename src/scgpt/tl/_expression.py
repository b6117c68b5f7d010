"""Log-normalised expression, the scale every gene-level score and baseline of the tools is computed on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from .._anndata import check_values, get_matrix, looks_like_counts
from .._logging import logger

if TYPE_CHECKING:
    from anndata import AnnData


def log_normalized(adata: AnnData, layer: str | None = None, *, target_sum: float = 1e4) -> sp.csr_matrix:
    """``log1p(normalize_total(counts, target_sum))`` as CSR float64, or the values as they are if already normalised.

    Counts (non-negative integers) are normalised; non-integer values are taken to be log-normalised
    already (logged at INFO level). NaN, infinite or negative values raise.
    """
    X = get_matrix(adata, layer)
    X = sp.csr_matrix(X.to_memory() if hasattr(X, "to_memory") else X, dtype=np.float64, copy=True)
    check_values(X, what=f"layer {layer!r}" if layer else "adata.X")
    if not looks_like_counts(X):
        logger.info("    values are not counts: taken as log-normalised already")
        return X
    totals = np.asarray(X.sum(1)).ravel()
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    X = sp.diags(scale) @ X
    X.data = np.log1p(X.data)
    return sp.csr_matrix(X)
