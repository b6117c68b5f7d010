"""Log-normalised expression, the scale every gene-level score and baseline of the tools is computed on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._anndata import as_csr, check_values, get_matrix, log_normalize_counts, looks_like_counts
from .._logging import logger

if TYPE_CHECKING:
    import scipy.sparse as sp
    from anndata import AnnData


def log_normalized(adata: AnnData, layer: str | None = None, *, fn: str = "log_normalized") -> sp.csr_matrix:
    """``log1p(normalize_total(counts, 1e4))`` of every cell (CSR, float64).

    Parameters
    ----------
    adata
        Cells with counts (or log1p data marked by ``uns["log1p"]``).
    layer
        Layer with the counts; ``None`` uses ``adata.X``.
    fn
        Name of the calling function, for messages.

    Notes
    -----
    Counts (non-negative integers) are normalised here. A non-integer matrix is accepted only when
    ``adata.uns["log1p"]`` marks it as already log-transformed (scanpy's ``sc.pp.log1p`` and
    :func:`scgpt.data.from_gears` write that marker): it is used as it is. Anything else is an error:
    scaled, centred or normalised-but-not-logged values would give meaningless profiles.
    """
    X = as_csr(get_matrix(adata, layer))
    check_values(X, what=f"{fn}: the expression matrix")
    if looks_like_counts(X):
        return log_normalize_counts(X)
    if "log1p" in adata.uns:
        logger.info(f"{fn}: the matrix holds non-integer values and adata.uns['log1p'] is set: used as log1p data")
        return X.astype(np.float64)
    raise ValueError(
        f"{fn} expects raw counts (non-negative integers) and the matrix holds non-integer values. Pass the counts "
        "(layer= naming the layer that holds them); if the matrix already holds log1p(normalize_total) values, "
        "mark it with adata.uns['log1p'] = {'base': None} (as sc.pp.log1p does)."
    )
