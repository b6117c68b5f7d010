"""AnnData matrices: access, chunked reads from memory or disk, value checks, log-normalisation.

Every layer reads cells through these helpers (the tools through :mod:`scgpt.data`'s namespace).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._logging import caller, logger

if TYPE_CHECKING:
    from anndata import AnnData


def missing_values(values) -> np.ndarray:
    """Which entries of an ``obs`` column are missing.

    NaN/None, and the strings "nan"/"None"/"" that a cast to ``str`` leaves behind: they must never
    become a label or a batch of their own.
    """
    import pandas as pd

    values = pd.Series(values)
    text = values.astype(str).str.strip().str.lower()
    return values.isna().to_numpy() | text.isin(("nan", "none", "")).to_numpy()


def check_adata(adata: object) -> None:
    """A clear error for objects that are not a usable AnnData (wrong type, no cells, no genes)."""
    fn = caller()
    from anndata import AnnData

    if not isinstance(adata, AnnData):
        raise TypeError(f"{fn} expects an AnnData (or MuData where documented), got {type(adata).__name__}.")
    if adata.n_obs == 0:
        raise ValueError(f"{fn}: the AnnData has no cells (n_obs == 0).")
    if adata.n_vars == 0:
        raise ValueError(f"{fn}: the AnnData has no genes (n_vars == 0).")


def get_matrix(adata: AnnData, layer: str | None):
    """``adata.X`` or ``adata.layers[layer]`` with a clear error for unknown layers."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass `layer=` naming the layer that holds the counts.")
        return adata.X
    check_layer(adata, layer)
    return adata.layers[layer]


def check_layer(adata: AnnData, layer: str | None) -> None:
    """A clear error, naming the caller, when ``layer`` (not ``None``) is not a layer of ``adata``."""
    if layer is not None and layer not in adata.layers:
        raise KeyError(
            f"{caller()}: layer={layer!r} is not a layer of adata (layers: {list(adata.layers)}); pass the layer that "
            "holds the counts, or layer=None for adata.X."
        )


def iter_row_chunks(adata: AnnData, layer: str | None, chunk_size: int) -> Iterator[tuple[int, sp.csr_matrix]]:
    """Yield ``(start, CSR rows)`` chunks; reads backed files chunk by chunk so memory stays bounded.

    Values come as float32 or float64 (integer and float16 matrices are converted chunk by chunk).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    X = get_matrix(adata, layer)
    for start in range(0, adata.n_obs, chunk_size):
        yield start, read_rows(X, start, start + chunk_size)


def read_rows(X, start: int, stop: int) -> sp.csr_matrix:
    """Rows ``start:stop`` of a matrix (in memory or backed, sparse or dense) as CSR, float32 or float64.

    A backed matrix is read from disk for these rows only.
    """
    block = X[start:stop]
    if hasattr(block, "to_memory"):  # backed sparse dataset
        block = block.to_memory()
    if sp.issparse(block):
        block = block.tocsr()
    else:
        dense = np.asarray(block)
        block = sp.csr_matrix(dense if dense.dtype in (np.float32, np.float64) else dense.astype(np.float32))
    return block if block.dtype in (np.float32, np.float64) else block.astype(np.float32)


def is_zarr_store(path) -> bool:
    """Whether ``path`` is a ``.zarr`` AnnData store (a folder), rather than an ``.h5ad`` file."""
    from pathlib import Path

    p = Path(path).expanduser()
    return p.is_dir() and (p.suffix == ".zarr" or (p / ".zattrs").is_file() or (p / "zarr.json").is_file())


def open_on_disk(path) -> AnnData:
    """An AnnData whose expression matrices stay on disk: rows are read when sliced.

    An ``.h5ad`` file is opened backed (read-only). For a ``.zarr`` store, ``obs`` and ``var`` are read and ``X``
    and the layers become on-disk datasets (sparse ones through :func:`anndata.io.sparse_dataset`), which
    :func:`read_rows` reads a block of rows at a time; ``obsm``, ``uns`` and the rest are not read.
    """
    from pathlib import Path

    import anndata as ad

    p = Path(path).expanduser()
    if not is_zarr_store(p):
        return ad.read_h5ad(p, backed="r")
    import zarr

    group = zarr.open(str(p), mode="r")

    def matrix(node):
        return ad.io.sparse_dataset(node) if isinstance(node, zarr.Group) else node

    missing = [k for k in ("obs", "var") if k not in group]
    if missing:
        raise ValueError(f"{p} is not an AnnData zarr store (no {' or '.join(missing)}).")
    layers = {k: matrix(group["layers"][k]) for k in group["layers"]} if "layers" in group else {}
    return ad.AnnData(
        X=matrix(group["X"]) if "X" in group else None,
        obs=ad.io.read_elem(group["obs"]),
        var=ad.io.read_elem(group["var"]),
        layers=layers,
    )


def stored_per_row(adata: AnnData, layer: str | None) -> np.ndarray:
    """Stored entries per row (expressed genes of a sparse matrix; all genes of a dense one), without the values.

    Read from the row pointers alone for CSR matrices in memory or on disk.
    """
    return matrix_stored_per_row(get_matrix(adata, layer))


def matrix_stored_per_row(X) -> np.ndarray:
    """:func:`stored_per_row` of a matrix (in memory, backed ``.h5ad``, on-disk zarr, or a TileDB-SOMA layer)."""
    n_obs, n_vars = X.shape
    if hasattr(X, "stored_per_row"):  # e.g. scgpt.data.SomaMatrix: from the experiment's obs["nnz"]
        return np.asarray(X.stored_per_row(), dtype=np.int64)
    group = getattr(X, "group", None)  # on-disk sparse dataset
    if group is not None and "indptr" in group and getattr(X, "format", "csr") == "csr":
        return np.diff(np.asarray(group["indptr"][:])).astype(np.int64)
    if sp.issparse(X):
        return np.asarray(X.getnnz(axis=1), dtype=np.int64) if X.format != "csr" else np.diff(X.indptr).astype(np.int64)
    if group is not None:  # an on-disk CSC matrix: count per row chunk by chunk
        return np.concatenate(
            [np.diff(read_rows(X, s, s + 4096).indptr) for s in range(0, n_obs, 4096)] or [np.zeros(0, np.int64)]
        ).astype(np.int64)
    return np.full(n_obs, n_vars, dtype=np.int64)


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


def as_csr(X) -> sp.csr_matrix:
    """A matrix (dense, sparse or backed) as an in-memory CSR of float32 or float64."""
    return read_rows(X, 0, X.shape[0])


def log_normalize_counts(counts, *, target_sum: float = 1e4) -> sp.csr_matrix:
    """``log1p(counts / total * target_sum)`` per cell (CSR float64; cells with no counts stay 0)."""
    X = as_csr(counts).astype(np.float64)
    totals = np.asarray(X.sum(1)).ravel()
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    X = sp.csr_matrix(sp.diags(scale) @ X)
    X.data = np.log1p(X.data)
    return X


def log_normalized(adata: AnnData, layer: str | None = None) -> sp.csr_matrix:
    """``log1p(normalize_total(counts, 1e4))`` of every cell (CSR, float64).

    Parameters
    ----------
    adata
        Cells with counts (or log1p data marked by ``uns["log1p"]``).
    layer
        Layer with the counts; ``None`` uses ``adata.X``.

    Notes
    -----
    Counts (non-negative integers) are normalised here. A non-integer matrix is accepted only when
    ``adata.uns["log1p"]`` marks it as already log-transformed (scanpy's ``sc.pp.log1p`` and
    :func:`scgpt.data.from_gears` write that marker): it is used as it is. Anything else is an error:
    scaled, centred or normalised-but-not-logged values would give meaningless profiles.
    """
    fn = caller()
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


MIN_VARIABLE = 50
"""Genes that must vary within every batch for seurat_v3's loess fit (it aborts the process on fewer, or none)."""


def varying_genes(counts, groups: np.ndarray | None = None) -> dict[str, int]:
    """Genes of non-zero variance within each group of cells (``None``: all cells); a group of fewer than 2 cells: 0.

    scanpy's ``seurat_v3`` fits a loess curve per batch and aborts the whole process (segfault) when a batch has
    no varying gene, e.g. a batch of empty droplets: callers check this first.
    """
    X = as_csr(counts).astype(np.float64)
    keys = np.zeros(X.shape[0], dtype=object) if groups is None else np.asarray(groups).astype(str)
    out = {}
    for g in pd.unique(keys):
        rows = np.flatnonzero(keys == g)
        if len(rows) < 2:
            out[str(g)] = 0
            continue
        block = X[rows]
        mean = np.asarray(block.mean(0)).ravel()
        sq = np.asarray(block.multiply(block).mean(0)).ravel()
        out[str(g)] = int(((sq - mean**2) > 1e-12).sum())
    return out
