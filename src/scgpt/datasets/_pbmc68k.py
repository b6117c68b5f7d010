"""scanpy's bundled ``pbmc68k_reduced`` cells with their raw counts recovered exactly."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from anndata import AnnData


def pbmc68k_counts() -> AnnData:
    """700 PBMCs x 765 genes with raw UMI counts and 10 labelled cell types.

    The cells of scanpy's bundled ``pbmc68k_reduced`` (10x Genomics; BSD-3 via scanpy). Its ``raw``
    holds ``log1p(normalize_total(counts, 1e4))``, from which the counts are recovered exactly:
    ``rint(expm1(raw.X) * n_counts / 1e4)``.

    Returns
    -------
    AnnData with counts in ``X`` (CSR, float32), ``obs['bulk_labels']`` (cell types), ``obs['louvain']``
    and ``obs['n_counts']``.
    """
    import anndata as ad
    import scanpy as sc

    src = sc.datasets.pbmc68k_reduced()
    raw = src.raw.to_adata()
    X = raw.X.toarray() if sp.issparse(raw.X) else np.asarray(raw.X)
    counts = np.rint(np.expm1(X) * src.obs["n_counts"].to_numpy()[:, None] / 1e4).astype(np.float32)
    out = ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=src.obs[["bulk_labels", "louvain", "n_counts"]].copy(),
        var=raw.var[[]].copy(),
    )
    out.uns["source"] = "scanpy.datasets.pbmc68k_reduced (10x Genomics PBMC 68k), counts recovered from .raw"
    return out
