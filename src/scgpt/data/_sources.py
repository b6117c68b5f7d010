"""Where training cells come from: an in-memory AnnData or a collection of h5ad files read lazily.

A source hands out rows as CSR matrices over the *vocabulary* (column j = token j), so cells from
files with different gene sets share one token space and one collator.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import scipy.sparse as sp

from ._vocab import GeneVocab

if TYPE_CHECKING:
    from anndata import AnnData


class CellSource(Protocol):
    """Rows of cells in vocabulary space."""

    n_obs: int
    n_tokens: int

    def rows(self, idx: np.ndarray) -> sp.csr_matrix:
        """CSR ``(len(idx), n_tokens)`` of the cells ``idx`` (in that order)."""
        ...

    def present_tokens(self) -> np.ndarray:
        """Token ids of the genes this source measures."""
        ...

    def lengths(self) -> np.ndarray | None:
        """Expressed genes per cell (or an estimate), for length-bucketed batching; ``None`` if unknown."""
        ...


def _to_token_space(X: sp.csr_matrix, col_tokens: np.ndarray, n_tokens: int) -> sp.csr_matrix:
    """Relabel columns to token ids, dropping unmatched columns (token -1)."""
    X = X.tocsr()
    keep = col_tokens[X.indices] >= 0
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))[keep]
    out = sp.csr_matrix((X.data[keep], (rows, col_tokens[X.indices[keep]])), shape=(X.shape[0], n_tokens))
    out.sum_duplicates()
    return out


class AnnDataSource:
    """An in-memory AnnData (or one matrix of it): rows are sliced on demand.

    Parameters
    ----------
    adata
        Cells x genes, raw counts in ``X`` or ``layer``.
    col_tokens
        Vocabulary id of each gene column (``-1``: unused).
    n_tokens
        Vocabulary size.
    layer
        Layer with counts.
    """

    def __init__(self, adata: AnnData, col_tokens: np.ndarray, n_tokens: int, layer: str | None = None) -> None:
        from .._anndata import check_values, get_matrix

        X = get_matrix(adata, layer)
        if adata.isbacked:
            X = X[:] if not hasattr(X, "to_memory") else X.to_memory()
        X = sp.csr_matrix(X) if not sp.issparse(X) else X.tocsr()
        check_values(X, what=f"layer {layer!r}" if layer else "adata.X")
        self._X = _to_token_space(X, np.asarray(col_tokens), n_tokens)
        self.n_obs, self.n_tokens = self._X.shape
        self._present = np.unique(col_tokens[col_tokens >= 0])

    def rows(self, idx: np.ndarray) -> sp.csr_matrix:  # noqa: D102
        return self._X[np.asarray(idx)]

    def present_tokens(self) -> np.ndarray:  # noqa: D102
        return self._present

    def lengths(self) -> np.ndarray:  # noqa: D102
        return np.diff(self._X.indptr)


class H5adCollection:
    """Cells of several ``.h5ad`` files, read from disk a few rows at a time (larger than memory).

    Files may hold different genes; each is matched to the vocabulary once. Reads of a minibatch
    are grouped by file and sorted, so chunked shuffling (see :class:`CellLoader`) keeps them
    mostly contiguous.

    Parameters
    ----------
    paths
        ``.h5ad`` files (raw counts in ``X`` or ``layer``).
    vocab
        Model vocabulary.
    gene_key
        ``var`` column with gene names (``None``: ``var_names``).
    layer
        Layer with counts.
    use_aliases
        Match genes by Ensembl id / previous / alias symbols too.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        vocab: GeneVocab,
        *,
        gene_key: str | None = None,
        layer: str | None = None,
        use_aliases: bool = True,
    ) -> None:
        import anndata as ad

        from ..pp._genes import check_coverage, gene_names, match_genes

        if not paths:
            raise ValueError("H5adCollection needs at least one file.")
        self.paths = [Path(p) for p in paths]
        self.layer = layer
        self.n_tokens = len(vocab)
        self._files, self._tokens, sizes = [], [], []
        for p in self.paths:
            a = ad.read_h5ad(p, backed="r")
            m = match_genes(gene_names(a, gene_key), vocab, use_aliases=use_aliases)
            check_coverage(m, fn=f"H5adCollection ({p.name})")
            self._files.append(a)
            self._tokens.append(m.ids)
            sizes.append(a.n_obs)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self._lengths = np.concatenate([_stored_per_row(a, layer) for a in self._files])
        self.n_obs = int(self.offsets[-1])
        self._present = np.unique(np.concatenate([t[t >= 0] for t in self._tokens]))

    def rows(self, idx: np.ndarray) -> sp.csr_matrix:  # noqa: D102
        from .._anndata import check_values, get_matrix

        idx = np.asarray(idx)
        file_of = np.searchsorted(self.offsets, idx, side="right") - 1
        blocks, where = [], []
        for f in np.unique(file_of):
            sel = np.flatnonzero(file_of == f)
            local = idx[sel] - self.offsets[f]
            order = np.argsort(local, kind="stable")
            X = get_matrix(self._files[f], self.layer)[np.sort(local)]  # h5py wants increasing indices
            X = sp.csr_matrix(X) if not sp.issparse(X) else X.tocsr()
            check_values(X, what=str(self.paths[f]))
            inv = np.empty_like(order)
            inv[order] = np.arange(len(order))
            blocks.append(_to_token_space(X, self._tokens[f], self.n_tokens)[inv])
            where.append(sel)
        out = sp.vstack(blocks, format="csr")
        pos = np.empty(len(idx), dtype=np.int64)
        pos[np.concatenate(where)] = np.arange(len(idx))
        return out[pos]

    def present_tokens(self) -> np.ndarray:  # noqa: D102
        return self._present

    def lengths(self) -> np.ndarray:  # noqa: D102
        return self._lengths


def _stored_per_row(adata, layer: str | None) -> np.ndarray:
    """Stored entries per row of a backed sparse matrix, read from its ``indptr`` alone (dense: all genes)."""
    from .._anndata import get_matrix

    X = get_matrix(adata, layer)
    group = getattr(X, "group", None)
    if group is not None and "indptr" in group:
        return np.diff(group["indptr"][:])
    return np.full(adata.n_obs, adata.n_vars)
