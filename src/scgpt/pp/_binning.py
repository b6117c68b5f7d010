"""``scgpt.pp.bin_values``: the official scGPT value binning, deterministic per cell."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from .._docs import doc_params
from .._face import check_key_added, record, warn_overwrite, writable
from .._logging import logger, named
from ..data import bin_csr, cell_keys, check_values, gene_keys, gene_names, iter_row_chunks

if TYPE_CHECKING:
    from anndata import AnnData


@doc_params()
@named()
def bin_values(
    adata: AnnData,
    *,
    n_bins: int = 51,
    layer: str | None = None,
    key_added: str = "X_binned",
    gene_key: str | None = None,
    seed: int = 0,
    chunk_size: int = 10_000,
    copy: bool = False,
) -> AnnData | None:
    """Bin expression values per cell into quantile bins, exactly as the official scGPT.

    For each cell, the nonzero values are cut at their ``n_bins - 1`` quantiles
    (``np.linspace(0, 1, n_bins - 1)``) and digitised: zeros stay 0, nonzero values get bins
    ``1 … n_bins - 1``, and values equal to several tied quantile edges are spread uniformly at
    random over the tied bins. Unlike the official code, the random tie-break of each cell is
    seeded by ``seed`` and the cell's own genes and values, so a cell's bins never depend on the
    other cells in the AnnData, their order, or ``chunk_size``.

    Per-cell quantile binning is invariant to per-cell scaling and monotone transforms, so binning
    raw counts or log-normalised values gives the same bins (up to floating-point ties).

    Parameters
    ----------
    adata
        Annotated data matrix (may be backed).
    n_bins
        Number of bins including the zero bin (51 in every released model).
    layer
        Layer to bin; ``None`` bins ``adata.X``.
    key_added
        Layer written.
    gene_key
        ``var`` column naming genes (gene identity seeds the tie-break); ``None`` uses ``var_names``.
    seed
        Seed of the tie-break.
    chunk_size
        Cells processed at a time (does not change the result).
    {copy}

    Returns
    -------
    ``None``, or a copy when ``copy=True``. Sets

    ``adata.layers[key_added]`` : :class:`scipy.sparse.csr_matrix`, float32
        Bins, ``0 … n_bins - 1``.
    ``adata.uns[key_added]["params"]`` : dict
        The parameters used.
    """
    start = time.perf_counter()
    if not 3 <= n_bins <= 2**16:
        raise ValueError(f"n_bins must be between 3 and 65536, got {n_bins}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    adata = writable(adata, copy=copy)
    check_key_added(key_added, reads=(layer,), slot="layers")
    logger.info(f"binning values into {n_bins} bins per cell")
    keys = gene_keys(gene_names(adata, gene_key))
    blocks = []
    for s, X in iter_row_chunks(adata, layer, chunk_size):
        check_values(X, what=f"layer {layer!r}" if layer else "adata.X", start=s)
        X.sum_duplicates()
        X.eliminate_zeros()
        key = keys[X.indices]
        bins = bin_csr(X.indptr, X.data, key, cell_keys(X.indptr, key, X.data, seed), n_bins)
        blocks.append(sp.csr_matrix((bins.astype(np.float32), X.indices, X.indptr), shape=X.shape))
    n_empty = sum(int((np.diff(b.indptr) == 0).sum()) for b in blocks)
    if n_empty:
        logger.warning(f"    {n_empty} cells have no nonzero value; their bins are all 0")
    warn_overwrite(adata, "layers", key_added, copy=copy)
    adata.layers[key_added] = sp.vstack(blocks, format="csr") if len(blocks) > 1 else blocks[0]
    params = {"n_bins": n_bins, "layer": layer, "gene_key": gene_key, "seed": seed}
    record(adata, key_added, params, start=start, added=[f"'{key_added}', bins (adata.layers)"])
    return adata if copy else None
