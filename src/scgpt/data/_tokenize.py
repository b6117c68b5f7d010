"""Cells -> gene tokens: the official zero-shot tokenisation, vectorised over sparse rows.

For each cell (official ``scgpt.tasks.embed_data`` + ``DataCollator``): keep the genes with a
nonzero value that are in the vocabulary, bin the values over all of them, keep a random subset
of ``max_length - 1`` genes when there are more, and put ``<cls>`` first. Randomness comes from
:mod:`scgpt.data._random`, keyed by each cell's own content, so a cell's tokens never depend on
the other cells processed with it. Genes of a cell are kept in vocabulary-id order (the model
has no positional encoding; a fixed order only makes floating-point sums reproducible).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ._binning import _row_ids, bin_csr
from ._random import STREAM_SAMPLE_GENES, cell_keys, entry_bits


@dataclass
class TokenizedCells:
    """Ragged per-cell gene tokens (CSR layout), without ``<cls>``.

    Attributes
    ----------
    indptr
        ``(n_cells + 1,)`` row pointers.
    genes
        Token id of each entry (int64).
    values
        Bin (or raw value) of each entry (float32).
    n_input_genes
        Number of in-vocabulary genes of each cell before sampling (nonzero ones, or all with
        ``include_zero_genes``).
    cell_key
        Random-choice key of each cell (:func:`scgpt.data._random.cell_keys`).
    gene_key
        Random-choice key of each entry's gene.
    """

    indptr: np.ndarray
    genes: np.ndarray
    values: np.ndarray
    n_input_genes: np.ndarray
    cell_key: np.ndarray
    gene_key: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per cell (without ``<cls>``)."""
        return np.diff(self.indptr)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def take(self, cells: np.ndarray) -> TokenizedCells:
        """The tokens of some cells, in the given order."""
        cells = np.asarray(cells, dtype=np.int64)
        starts, lengths = self.indptr[cells], np.diff(self.indptr)[cells]
        idx = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(lengths.sum())
        return TokenizedCells(
            np.concatenate([[0], np.cumsum(lengths)]),
            self.genes[idx],
            self.values[idx],
            self.n_input_genes[cells],
            self.cell_key[cells],
            self.gene_key[idx],
        )


def tokenize(
    X: sp.csr_matrix,
    token_ids: np.ndarray,
    gene_key: np.ndarray,
    *,
    max_genes: int | None,
    n_bins: int | None = 51,
    seed: int = 0,
    include_zero_genes: bool = False,
    groups: np.ndarray | None = None,
    binary_groups: tuple[int, ...] = (),
) -> TokenizedCells:
    """Tokenise the rows of a cells x genes matrix.

    Parameters
    ----------
    X
        CSR matrix of non-negative values (raw counts for the released models); columns are genes.
    token_ids
        Vocabulary id of each column; ``-1`` drops the column.
    gene_key
        64-bit key of each column's gene (:func:`scgpt.data._random.gene_keys` of the token), the
        gene's identity in random choices.
    max_genes
        Keep at most this many genes per cell (``max_length - 1``), sampled without replacement;
        ``None`` keeps all.
    n_bins
        Bin values into ``n_bins`` per-cell quantile bins (official binning); ``None`` keeps raw values.
    seed
        Seed of every random choice.
    include_zero_genes
        Also keep the in-vocabulary genes a cell does not express (value 0), as the official
        fine-tuning recipes do on highly variable genes.
    groups
        Group (modality) of each column: values are binned per cell and group (the official
        multi-omic recipe bins RNA and proteins separately); ``None``: one group.
    binary_groups
        Groups whose nonzero values all become the top bin (``n_bins - 1``; binarised chromatin accessibility).
    """
    X = sp.csr_matrix(X) if not sp.isspmatrix_csr(X) else X
    X = X.copy() if not X.has_canonical_format else X
    X.sum_duplicates()
    shared = merge_shared_columns(token_ids)
    if shared is not None:  # several columns on one token (orthologs="all"): their counts summed into one column
        A, first = shared
        X = (X @ A.astype(X.dtype)).tocsr()
        token_ids, gene_key = token_ids[first], gene_key[first]
        groups = None if groups is None else np.asarray(groups)[first]
    keep_col = token_ids >= 0
    rows = _row_ids(X.indptr)
    nz = keep_col[X.indices] & (X.data != 0)
    nz_rows, nz_cols, nz_data = rows[nz], X.indices[nz], X.data[nz]
    nz_indptr = np.concatenate([[0], np.cumsum(np.bincount(nz_rows, minlength=X.shape[0]))])
    nz_keys = gene_key[nz_cols]
    ckey = cell_keys(nz_indptr, nz_keys, nz_data, seed)  # from the expressed genes only
    if n_bins and groups is not None:
        nz_vals = _bin_per_group(nz_rows, groups[nz_cols], nz_data, nz_keys, ckey, n_bins, binary_groups)
    elif n_bins:
        nz_vals = bin_csr(nz_indptr, nz_data, nz_keys, ckey, n_bins).astype(np.float32)
    else:
        nz_vals = nz_data.astype(np.float32)

    if include_zero_genes:  # every in-vocabulary column of every cell, zeros included
        cols = np.flatnonzero(keep_col)
        n = len(cols)
        rows = np.repeat(np.arange(X.shape[0]), n)
        col_of_entry = np.tile(cols, X.shape[0])
        vals = np.zeros(len(rows), dtype=np.float32)
        pos = np.searchsorted(cols, nz_cols)  # nonzero entries land in their (row, column) slot
        vals[nz_rows * n + pos] = nz_vals
        indptr = np.arange(X.shape[0] + 1, dtype=np.int64) * n
    else:
        rows, col_of_entry, vals, indptr = nz_rows, nz_cols, nz_vals, nz_indptr
    toks, keys = token_ids[col_of_entry], gene_key[col_of_entry]
    n_input = np.diff(indptr)

    if max_genes is not None and (n_input > max_genes).any():
        # keep the max_genes entries with the smallest per-(cell, gene) random priority
        prio = entry_bits(np.repeat(ckey, n_input), keys, STREAM_SAMPLE_GENES)
        keep = rank_in_row(prio, indptr) < max_genes
        rows, toks, vals, keys = rows[keep], toks[keep], vals[keep], keys[keep]
        indptr = np.concatenate([[0], np.cumsum(np.minimum(n_input, max_genes))])
    order = np.lexsort((toks, rows))  # vocabulary order within each cell
    return TokenizedCells(indptr, toks[order], vals[order], n_input, ckey, keys[order])


def merge_shared_columns(token_ids: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray] | None:
    """Columns that share a token, summed: ``(A, first)`` with ``X @ A`` one column per token, or ``None``.

    ``A`` is ``(n_columns, n_tokens_used)`` with a 1 where a matched column goes to its token's column;
    ``first`` is the first input column of each token (its token id and gene key stand for the merged
    column). Unmatched columns are left out. ``None`` when no two columns share a token (the common case).
    """
    cols = np.flatnonzero(token_ids >= 0)
    tokens, first, inverse = np.unique(token_ids[cols], return_index=True, return_inverse=True)
    if len(tokens) == len(cols):
        return None
    A = sp.csr_matrix((np.ones(len(cols)), (cols, inverse)), shape=(len(token_ids), len(tokens)))
    return A, cols[first]


def _bin_per_group(
    rows: np.ndarray,
    group: np.ndarray,
    data: np.ndarray,
    keys: np.ndarray,
    cell_key: np.ndarray,
    n_bins: int,
    binary_groups: tuple[int, ...],
) -> np.ndarray:
    """Bins of nonzero entries computed within each (cell, group): every group of a cell is a row of its own."""
    group = np.asarray(group, dtype=np.int64)
    codes, group = np.unique(group, return_inverse=True)
    n_groups = len(codes)
    virtual = rows * n_groups + group
    order = np.argsort(virtual, kind="stable")
    counts = np.bincount(virtual, minlength=len(cell_key) * n_groups)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    out = np.empty(len(data), dtype=np.float32)
    out[order] = bin_csr(indptr, data[order], keys[order], np.repeat(cell_key, n_groups), n_bins)
    if binary_groups:
        out[np.isin(codes[group], binary_groups)] = n_bins - 1
    return out


def rank_in_row(priority: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Rank (0 = smallest) of each CSR entry's ``priority`` among the entries of its row."""
    order = np.lexsort((priority, _row_ids(indptr)))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - np.repeat(indptr[:-1], np.diff(indptr))
    return rank


def entry_positions(indptr: np.ndarray, *, offset: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(row, column)`` of each CSR entry in a padded batch with ``offset`` leading columns (1: ``<cls>``, 0: none)."""
    rows = _row_ids(indptr)
    return rows, np.arange(len(rows)) - np.repeat(indptr[:-1], np.diff(indptr)) + offset


def pad_batch(
    cells: TokenizedCells,
    *,
    cls_id: int,
    cls_value: float,
    pad_id: int,
    pad_value: float,
    length: int | None = None,
    cls: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``<cls>`` + tokens, right-padded to the longest cell (or ``length``): ``(genes, values)``, each ``(B, L)``.

    ``cls=False`` leaves ``<cls>`` out (the perturbation models see genes only).
    """
    lengths = cells.lengths
    L = int(lengths.max(initial=0)) + int(cls) if length is None else length
    B = len(lengths)
    genes = np.full((B, L), pad_id, dtype=np.int64)
    values = np.full((B, L), pad_value, dtype=np.float32)
    if cls:
        genes[:, 0], values[:, 0] = cls_id, cls_value
    rows, cols = entry_positions(cells.indptr, offset=int(cls))
    genes[rows, cols] = cells.genes
    values[rows, cols] = cells.values
    return genes, values
