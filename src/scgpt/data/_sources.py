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

from .._logging import calling, describing
from ._genes import check_coverage, match_adata, match_genes
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
        from ._matrix import check_values, get_matrix

        X = get_matrix(adata, layer)
        if adata.isbacked:
            X = X[:] if not hasattr(X, "to_memory") else X.to_memory()
        X = sp.csr_matrix(X) if not sp.issparse(X) else X.tocsr()
        check_values(X, what=f"layer {layer!r}" if layer else "adata.X")
        self._X = _to_token_space(X, np.asarray(col_tokens), n_tokens)
        self.n_obs, self.n_tokens = self._X.shape
        self._present = np.unique(col_tokens[col_tokens >= 0])

    @classmethod
    def matched(
        cls,
        adata: AnnData,
        vocab: GeneVocab,
        *,
        gene_key: str | None = None,
        layer: str | None = None,
        use_aliases: bool = True,
        organism: str = "human",
        orthologs: str = "one2one",
    ) -> AnnDataSource:
        """The cells of ``adata`` with its genes matched to ``vocab`` (clear errors from ``fn`` at no overlap).

        ``organism``/``orthologs``: another species' genes read as their human orthologs (see
        :func:`scgpt.pp.align_vocab`); genes that share a token have their counts summed.
        """
        match = match_adata(
            adata, vocab, gene_key=gene_key, use_aliases=use_aliases, organism=organism, orthologs=orthologs
        )
        return cls(adata, match.ids, len(vocab), layer)

    def rows(self, idx: np.ndarray) -> sp.csr_matrix:
        return self._X[np.asarray(idx)]

    def present_tokens(self) -> np.ndarray:
        return self._present

    def lengths(self) -> np.ndarray:
        return np.diff(self._X.indptr)


class H5adCollection:
    """Cells of several AnnData files, read from disk a few rows at a time (larger than memory).

    Files may be ``.h5ad`` (opened backed) or ``.zarr`` AnnData stores (read lazily through
    :func:`anndata.io.sparse_dataset`), and may hold different genes; each is matched to the
    vocabulary once. Reads of a minibatch are grouped by file and sorted, so chunked shuffling (see
    :class:`CellLoader`) keeps them mostly contiguous.

    Parameters
    ----------
    paths
        ``.h5ad`` files or ``.zarr`` stores with raw counts in ``X`` or ``layer``.
    vocab
        Model vocabulary.
    gene_key
        ``var`` column with gene names (``None``: ``var_names``).
    layer
        Layer with counts.
    use_aliases
        Match genes by Ensembl id / previous / alias symbols too.
    organism, orthologs
        Another species' genes read as their human orthologs (see :func:`scgpt.pp.align_vocab`).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        vocab: GeneVocab,
        *,
        gene_key: str | None = None,
        layer: str | None = None,
        use_aliases: bool = True,
        organism: str = "human",
        orthologs: str = "one2one",
    ) -> None:
        if not paths:
            raise ValueError("H5adCollection needs at least one file.")
        self.paths = [Path(p) for p in paths]
        self.layer = layer
        self.n_tokens = len(vocab)
        from ._matrix import matrix_stored_per_row

        self._X, self._tokens, sizes, lengths = [], [], [], []
        for p in self.paths:
            X, names = _open_lazy(p, layer, gene_key)
            m = match_genes(names, vocab, use_aliases=use_aliases, organism=organism, orthologs=orthologs)
            with calling("H5adCollection"), describing(p.name):
                check_coverage(m)
            self._X.append(X)
            self._tokens.append(m.ids)
            sizes.append(X.shape[0])
            lengths.append(matrix_stored_per_row(X))  # from the row pointers alone
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.n_obs = int(self.offsets[-1])
        self._lengths = np.concatenate(lengths)
        self._present = np.unique(np.concatenate([t[t >= 0] for t in self._tokens]))

    @classmethod
    def from_zarr_collection(cls, path: str | os.PathLike, vocab: GeneVocab, **kwargs) -> H5adCollection:
        """All AnnData stores inside a zarr group, e.g. a collection written by annbatch's ``DatasetCollection``."""
        import zarr

        root = Path(path)
        group = zarr.open(str(root), mode="r")
        stores = sorted(name for name, sub in group.groups() if "X" in sub and "var" in sub)
        if not stores:
            raise ValueError(f"{root} holds no AnnData stores (sub-groups with 'X' and 'var').")
        return cls([root / name for name in stores], vocab, **kwargs)

    def rows(self, idx: np.ndarray) -> sp.csr_matrix:
        from ._matrix import check_values

        idx = np.asarray(idx)
        file_of = np.searchsorted(self.offsets, idx, side="right") - 1
        blocks, where = [], []
        for f in np.unique(file_of):
            sel = np.flatnonzero(file_of == f)
            local = idx[sel] - self.offsets[f]
            order = np.argsort(local, kind="stable")
            X = self._X[f][np.sort(local)]  # on-disk readers want increasing indices
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

    def present_tokens(self) -> np.ndarray:
        return self._present

    def lengths(self) -> np.ndarray:
        return self._lengths


def _open_lazy(path: Path, layer: str | None, gene_key: str | None):
    """A row-indexable on-disk matrix and the gene names of an ``.h5ad`` file or ``.zarr`` AnnData store."""
    import pandas as pd

    from ._matrix import get_matrix, open_on_disk

    adata = open_on_disk(path)
    X, var = get_matrix(adata, layer), adata.var
    if gene_key is None:
        names = pd.Index(var.index.astype(str))
    elif gene_key in var:
        names = pd.Index(var[gene_key].astype(str))
    else:
        raise KeyError(f"gene_key={gene_key!r} is not a var column of {path}.")
    if names.has_duplicates:
        raise ValueError(f"{path}: duplicated gene names (e.g. {list(names[names.duplicated()][:3])}).")
    return X, names
