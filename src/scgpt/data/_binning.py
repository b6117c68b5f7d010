"""The official scGPT per-cell quantile binning, vectorised over the rows of a sparse matrix.

For each cell, with ``nz`` its nonzero values (official ``scgpt.preprocess.binning``)::

    edges = np.quantile(nz, np.linspace(0, 1, n_bins - 1))     # 50 edges for 51 bins
    left, right = np.digitize(nz, edges), np.digitize(nz, edges, right=True)
    bin = ceil(u * (right - left) + left),  u ~ U[0, 1)

so zeros stay 0, nonzero values get bins ``1 … n_bins - 1`` and a value equal to several tied
edges is spread uniformly over the tied bins. Here ``u`` comes from :mod:`scgpt.data._random`
(keyed by the cell's own content) instead of the global ``np.random`` state; quantiles and
digitisation are computed exactly as numpy does.
"""

from __future__ import annotations

import numpy as np

from ._random import STREAM_BIN_TIES, entry_uniform


def _row_ids(indptr: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))


def quantile_edges(indptr: np.ndarray, values: np.ndarray, n_bins: int = 51) -> np.ndarray:
    """Per-row ``np.quantile(row, np.linspace(0, 1, n_bins - 1))`` for CSR rows; ``(n_rows, n_bins - 1)`` float64.

    Rows must be non-empty. Reproduces numpy's "linear" method bit for bit (interpolation in the
    input dtype's difference, then float64, as ``numpy.lib._function_base_impl._lerp``).
    """
    lengths = np.diff(indptr)
    rows = _row_ids(indptr)
    order = np.lexsort((values, rows))  # sorted within each row
    srt = values[order]
    q = np.linspace(0, 1, n_bins - 1)
    virtual = (lengths[:, None] - 1) * q[None, :]  # (n_rows, n_edges) float64
    prev = np.floor(virtual)
    nxt = prev + 1
    above = virtual >= (lengths[:, None] - 1)
    prev[above] = lengths[:, None].repeat(len(q), 1)[above] - 1
    nxt[above] = prev[above]
    gamma = virtual - np.floor(virtual)
    base = indptr[:-1, None]
    a = srt[(base + prev).astype(np.intp)]
    b = srt[(base + nxt).astype(np.intp)]
    diff = b - a  # in the input dtype, as numpy
    out = a + diff * gamma
    hi = gamma >= 0.5
    out[hi] = (b - diff * (1 - gamma))[hi]
    return out


def _batched_digitize(edges: np.ndarray, rows: np.ndarray, x: np.ndarray, *, right: bool) -> np.ndarray:
    """``np.digitize(x[i], edges[rows[i]], right)`` for every entry, by a vectorised binary search."""
    n_edges = edges.shape[1]
    flat = edges.ravel()
    base = rows * n_edges
    lo = np.zeros(len(x), dtype=np.int64)
    hi = np.full(len(x), n_edges, dtype=np.int64)
    for _ in range(int(np.ceil(np.log2(n_edges + 1)))):
        active = lo < hi
        mid = (lo + hi) // 2
        e = flat[base + np.minimum(mid, n_edges - 1)]
        go_left = (x <= e) if right else (x < e)
        hi = np.where(active & go_left, mid, hi)
        lo = np.where(active & ~go_left, mid + 1, lo)
    return lo


def bin_csr(
    indptr: np.ndarray,
    values: np.ndarray,
    genes: np.ndarray,
    cell_key: np.ndarray,
    n_bins: int = 51,
) -> np.ndarray:
    """Bin the stored (nonzero) values of CSR rows; returns int64 bins ``1 … n_bins - 1`` per entry.

    Parameters
    ----------
    indptr
        Row pointers ``(n_rows + 1,)``.
    values
        Stored values (all > 0).
    genes
        Gene key of each stored entry (tie-break randomness is drawn per gene).
    cell_key
        One key per row (see :func:`scgpt.data._random.cell_keys`).
    n_bins
        Number of bins including the zero bin (51 in every released model).
    """
    values = np.asarray(values)
    if values.dtype.kind in "iub":
        values = values.astype(np.float32)
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = np.diff(indptr)
    nonempty = np.flatnonzero(lengths)
    sub_indptr = np.concatenate([[0], np.cumsum(lengths[nonempty])])  # empty rows hold no entries
    edges = quantile_edges(sub_indptr, values, n_bins)
    rows = _row_ids(sub_indptr)
    u = entry_uniform(np.repeat(cell_key[nonempty], lengths[nonempty]), genes, STREAM_BIN_TIES)
    x = values.astype(np.float64)
    left = _batched_digitize(edges, rows, x, right=False)
    right = _batched_digitize(edges, rows, x, right=True)
    return np.ceil(u * (right - left) + left).astype(np.int64)
