"""AnnData helpers every layer uses.

Argument checks, matrix access, chunked reads, value checks, and the scanpy-style tail of a face
function (record ``uns[key]["params"]``, log what was added, MuData write-back).

This module imports nothing from the sub-packages of :mod:`scgpt`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from ._logging import log_added, logger, warn

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData


def missing_values(values) -> np.ndarray:
    """Which entries of an ``obs`` column are missing.

    NaN/None, and the strings "nan"/"None"/"" that a cast to ``str`` leaves behind: they must never
    become a label or a batch of their own.
    """
    import pandas as pd

    values = pd.Series(values)
    text = values.astype(str).str.strip().str.lower()
    return values.isna().to_numpy() | text.isin(("nan", "none", "")).to_numpy()


def check_key_added(key: str, *, reads=(), slot: str, fn: str, param: str = "key_added") -> None:
    """Outputs never overwrite inputs: an error when ``key`` names an entry of ``slot`` that the function reads.

    Call it before any work; :func:`warn_overwrite` then says so when an earlier result is replaced.
    """
    if key in {r for r in reads if r is not None}:
        raise ValueError(
            f"{fn}: {param}={key!r} names the {slot} entry it reads; choose another {param} so that the input "
            "is not overwritten."
        )


def warn_overwrite(adata: AnnData, slot: str, key: str, *, fn: str, copy: bool = False) -> None:
    """Warn that ``adata.<slot>[key]`` exists and is about to be replaced (call it just before writing).

    Silent for ``copy=True`` calls: the entry replaced is in the copy, not in the caller's data.
    """
    if not copy and key in getattr(adata, slot):
        warn(f"{fn}: adata.{slot}[{key!r}] exists and is overwritten.")


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
        warn(
            f"{fn} received a view of an AnnData; it is made into an actual AnnData (a copy of the subset) "
            "so that results can be written. Pass `adata[...].copy()` to avoid this warning."
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


# ---------------------------------------------------------------------------- the tail of a face function
def record(adata: AnnData, key: str, params: dict[str, Any], *, start: float, added: list[str], **extra: Any) -> None:
    """Write ``adata.uns[key] = {"params": params, **extra}`` and log every field added (scanpy's ``finished`` line).

    Parameters
    ----------
    adata
        Where the results went.
    key
        The ``uns`` entry (the function's ``key_added``).
    params
        The parameters of the call, as the user would pass them again.
    start
        ``time.perf_counter()`` at the start of the call.
    added
        Fields written besides ``uns[key]``, e.g. ``"'X_scGPT', cell embeddings (adata.obsm)"``.
    **extra
        Further entries of ``uns[key]`` (coverage reports, class lists, ...).
    """
    adata.uns[key] = {"params": params, **extra}
    log_added(start, [*added, f"'{key}', parameters (adata.uns)"])


@dataclass
class Target:
    """The AnnData a face function reads and writes: the input itself, or one modality of a MuData.

    Attributes
    ----------
    adata
        The AnnData to read cells from and write results to.
    mdata
        The MuData ``adata`` belongs to (``None`` for AnnData input).
    mod
        The modality's name in ``mdata``.
    """

    adata: AnnData
    mdata: MuData | None = None
    mod: str | None = None

    @property
    def returned(self) -> AnnData | MuData:
        """What a ``copy=True`` call returns: the MuData for MuData input, else the AnnData."""
        return self.mdata if self.mdata is not None else self.adata

    def write_obsm(self, key: str, values: np.ndarray, what: str) -> list[str]:
        """Write ``obsm[key]`` of the modality, and of the MuData aligned to ``mdata.obs_names``.

        Cells absent from the modality get NaN in the MuData. Returns the fields written (described
        as ``what``), for :func:`record`.
        """
        self.adata.obsm[key] = values
        added = [f"'{key}', {what} (adata.obsm)"]
        if self.mdata is not None:
            full = np.full((self.mdata.n_obs, values.shape[1]), np.nan, dtype=values.dtype)
            pos = self.mdata.obs_names.get_indexer(self.adata.obs_names)
            full[pos[pos >= 0]] = values[pos >= 0]
            self.mdata.obsm[key] = full
            added.append(f"'{key}', aligned to mdata.obs_names (mdata.obsm)")
        return added

    def write_uns(self, key: str) -> None:
        """Copy the modality's ``uns[key]`` to the MuData (no-op for AnnData input)."""
        if self.mdata is not None:
            self.mdata.uns[key] = self.adata.uns[key]


def writable(adata: object, *, fn: str, copy: bool, in_memory: bool = False) -> AnnData:
    """The AnnData a face function writes to: checked, copied with ``copy=True``, a view made actual.

    ``in_memory`` refuses backed input (for functions that subset or rewrite the matrix).
    """
    check_adata(adata, fn=fn)
    if adata.isbacked and (copy or in_memory):
        what = f"{fn}(copy=True)" if copy else fn
        raise ValueError(
            f"{what} needs the AnnData in memory, and this one is backed (on disk). Load it first with "
            "adata.to_memory()" + (", or write into it with copy=False." if copy and not in_memory else ".")
        )
    if copy:
        return adata.copy()
    actual_if_view(adata, fn=fn)
    return adata


def resolve_target(data: object, *, mod: str, fn: str, copy: bool) -> Target:
    """The AnnData to work on: ``data``, or its modality ``mod`` when it is a MuData (copied first with ``copy``).

    Raises clear errors for other types, missing modalities and empty data; a view is made actual with a warning.
    """
    if type(data).__name__ == "MuData":  # avoids importing mudata for AnnData input
        mdata = data.copy() if copy else data
        if mod not in mdata.mod:
            raise KeyError(f"mod={mod!r} is not a modality of the MuData (modalities: {list(mdata.mod)}).")
        return Target(writable(mdata.mod[mod], fn=fn, copy=False), mdata, mod)
    from anndata import AnnData

    if not isinstance(data, AnnData):
        raise TypeError(f"{fn} expects an AnnData or MuData, got {type(data).__name__}.")
    return Target(writable(data, fn=fn, copy=copy))
