"""Highly variable genes for the integration tools, robust to small batches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._logging import caller, logger
from ..data import MIN_VARIABLE, varying_genes


def check_n_top_genes(n_top_genes: int | None, *, none: bool = True) -> None:
    """A clear error for an ``n_top_genes`` that is not a positive integer (``None`` allowed with ``none``)."""
    if n_top_genes is None and none:
        return
    if isinstance(n_top_genes, bool) or not isinstance(n_top_genes, int | np.integer) or n_top_genes < 1:
        what = "a positive integer" + (" or None (every gene)" if none else "")
        raise ValueError(f"{caller()}: n_top_genes must be {what}, got {n_top_genes!r}.")


def log1p_variance_rank(X: sp.spmatrix | np.ndarray, n: int, *, binary: bool = False) -> np.ndarray:
    """Columns of the ``n`` most variable features (of binarised or of log1p values), in column order."""
    Y = sp.csr_matrix(X, dtype=np.float64, copy=True)
    Y.data = (Y.data > 0).astype(np.float64) if binary else np.log1p(Y.data)
    mean = np.asarray(Y.mean(0)).ravel()
    var = np.asarray(Y.multiply(Y).mean(0)).ravel() - mean**2
    return np.sort(np.argsort(-var, kind="stable")[:n])


def variable_genes(counts: sp.spmatrix | np.ndarray, n_top: int, batches: pd.Series | np.ndarray | None) -> np.ndarray:
    """Columns of the ``n_top`` most variable genes of a count matrix, in column order.

    scanpy's seurat_v3 (on counts, per batch when ``batches`` are given), as the official tutorials; its
    loess fit fails on batches of very few cells, and then the batches are pooled, and as a last resort genes
    are ranked by the variance of their log1p counts (logged at INFO level).
    """
    import anndata as ad
    import scanpy as sc

    check_n_top_genes(n_top, none=False)
    n_top = min(n_top, counts.shape[1])
    counts = sp.csr_matrix(counts)
    empty = np.asarray(counts.sum(1)).ravel() == 0
    if empty.any():  # empty droplets carry no information, and seurat_v3's loess crashes on a batch of them
        logger.info(f"    {int(empty.sum())} cells without counts are left out of the gene selection")
        counts = counts[~empty]
        batches = None if batches is None else np.asarray(batches)[~empty]
    obs = pd.DataFrame({"batch": np.asarray(batches).astype(str)} if batches is not None else {})
    obs.index = obs.index.astype(str) if len(obs.columns) else pd.RangeIndex(counts.shape[0]).astype(str)
    tmp = ad.AnnData(X=counts, obs=obs)
    for key in ["batch", None] if batches is not None else [None]:
        if min(varying_genes(counts, None if key is None else obs["batch"].to_numpy()).values()) < MIN_VARIABLE:
            where = "per batch" if key else "on all cells"
            logger.info(f"    seurat_v3 {where} skipped: a batch has fewer than {MIN_VARIABLE} genes that vary")
            continue
        try:
            hvg = sc.pp.highly_variable_genes(tmp, n_top_genes=n_top, flavor="seurat_v3", batch_key=key, inplace=False)
            return np.flatnonzero(hvg["highly_variable"].to_numpy())
        except ValueError as e:  # seurat_v3's loess fit fails on very few cells
            where = "per batch" if key else "on all cells"
            logger.info(f"    seurat_v3 {where} failed ({e})")
    logger.info("    genes ranked by the variance of their log1p counts instead")
    return log1p_variance_rank(counts, n_top)
