"""Cells of a TileDB-SOMA experiment (e.g. the CELLxGENE Census), read from it a block of rows at a time.

:func:`open_soma` gives an AnnData whose ``obs`` and ``var`` are in memory and whose ``X`` is a
:class:`SomaMatrix`: an :class:`anndata.abc.CSRDataset` that reads the rows it is sliced with, so the
inference engine (``tl.embed``, several processes, ``scgpt embed --backed``) streams an experiment like a
backed ``.h5ad``. :class:`SomaSource` puts the same reader behind the training sources' interface.

Needs the optional package ``tiledbsoma``: ``pip install "tiledbsoma>=1.15"`` (or, in a clone of
scgpt-scverse, ``pip install ".[dataloaders]"``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from anndata.abc import CSRDataset

from .._logging import calling
from ._genes import check_coverage, match_genes
from ._sources import _to_token_space
from ._vocab import GeneVocab

if TYPE_CHECKING:
    from anndata import AnnData

#: Cells read at once by :meth:`SomaMatrix.to_memory` and :meth:`SomaMatrix.stored_per_row`.
READ_BLOCK = 16_384


def _tiledbsoma():
    try:
        import tiledbsoma
    except ImportError as err:
        raise ImportError(
            "Reading a TileDB-SOMA experiment needs the optional package tiledbsoma: "
            'pip install "tiledbsoma>=1.15" (or pip install ".[dataloaders]" in a clone of scgpt-scverse).'
        ) from err
    return tiledbsoma


def _first_line(error: BaseException) -> str:
    """The first line of a TileDB error, without TileDB's ``[TileDB::...]`` prefixes and Python frames."""
    import re

    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"^SOMAError: ", "", text).strip()
    if len(text) > 1 and text[0] == text[-1] == "'":
        text = text[1:-1]
    text = re.sub(r"^\[TileDB::[^\]]*\] (Error: )?", "", text)
    return text[:300]


def is_soma_experiment(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TileDB-SOMA experiment: a local TileDB group folder, or a remote URI (``s3://``, ...)."""
    text = str(path)
    if "://" in text and not text.startswith("file://"):
        return True
    p = Path(text.removeprefix("file://")).expanduser()
    return p.is_dir() and ((p / "__tiledb_group.tdb").exists() or (p / "__group").is_dir()) and (p / "ms").exists()


class _Experiment:
    """An experiment opened once per process (reopened in another process, and never pickled open).

    ``context`` is a ``tiledbsoma.SOMATileDBContext`` or a dict of TileDB configuration options, from which
    each process builds its own context.
    """

    def __init__(self, uri: str, context: Any = None) -> None:
        self.uri, self.context = uri, context
        self._exp, self._pid = None, None

    def get(self):
        tiledbsoma = _tiledbsoma()
        if self._exp is None or self._pid != os.getpid():
            context = self.context
            if isinstance(context, dict):
                context = tiledbsoma.SOMATileDBContext(tiledb_config={k: str(v) for k, v in context.items()})
            try:
                self._exp = tiledbsoma.Experiment.open(self.uri, context=context)
            except tiledbsoma.DoesNotExistError:
                raise FileNotFoundError(f"No TileDB-SOMA experiment at {self.uri}.") from None
            except tiledbsoma.SOMAError as e:  # e.g. a remote URI that cannot be reached or read
                raise FileNotFoundError(
                    f"The TileDB-SOMA experiment {self.uri} cannot be opened ({_first_line(e)}). Check the URI, the "
                    "network and the TileDB configuration (context= / --soma-config, e.g. vfs.s3.region)."
                ) from None
            self._pid = os.getpid()
        return self._exp

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_exp": None, "_pid": None}


class SomaMatrix(CSRDataset):
    """Cells x genes of one ``X`` layer of a SOMA measurement, read from the experiment when sliced.

    Rows are the selected cells (``obs_joinids``, in that order), columns the genes ``var_joinids``.
    Slicing returns a :class:`scipy.sparse.csr_matrix` of the values stored for those cells, read
    with one SOMA query per slice (sorted coordinates; a range of consecutive cells as one slice).

    Parameters
    ----------
    uri
        URI of the SOMA experiment.
    measurement
        Measurement holding the genes.
    layer
        Name of the ``X`` layer.
    obs_joinids, var_joinids
        ``soma_joinid`` of the rows and of the columns.
    nnz
        Stored values per row, when the experiment's ``obs`` has them (the Census' ``nnz`` column).
    context
        A ``tiledbsoma.SOMATileDBContext`` or a dict of TileDB configuration options, if needed.
    """

    backend = "tiledbsoma"

    def __init__(
        self,
        uri: str,
        measurement: str,
        layer: str,
        obs_joinids: np.ndarray,
        var_joinids: np.ndarray,
        *,
        nnz: np.ndarray | None = None,
        dtype: np.dtype | None = None,
        context: Any = None,
    ) -> None:
        self._experiment = _Experiment(uri, context)
        self.uri, self.measurement, self.layer = uri, measurement, layer
        self.obs_joinids = np.asarray(obs_joinids, dtype=np.int64)
        self.var_joinids = np.asarray(var_joinids, dtype=np.int64)
        self.shape = (len(self.obs_joinids), len(self.var_joinids))
        self.dtype = np.dtype(np.float32 if dtype is None else dtype)
        self._nnz = None if nnz is None else np.asarray(nnz, dtype=np.int64)
        self._column_of = np.full(int(self.var_joinids.max(initial=-1)) + 1, -1, dtype=np.int64)
        self._column_of[self.var_joinids] = np.arange(len(self.var_joinids))

    def __repr__(self) -> str:
        return f"SomaMatrix({self.uri!r}, {self.measurement}/X/{self.layer}, {self.shape[0]:,} x {self.shape[1]:,})"

    def _read(self, rows: np.ndarray) -> sp.csr_matrix:
        """CSR of the rows ``rows`` (positions, any order, repeats allowed)."""
        wanted = self.obs_joinids[rows]
        cells = np.unique(wanted)  # SOMA reads want sorted coordinates
        if len(cells) == 0:
            return sp.csr_matrix((0, self.shape[1]), dtype=self.dtype)
        contiguous = cells[-1] - cells[0] + 1 == len(cells)
        coords = slice(int(cells[0]), int(cells[-1])) if contiguous else cells  # SOMA slices include both ends
        X = self._experiment.get().ms[self.measurement].X[self.layer]
        table = X.read(coords=(coords,)).tables().concat()
        genes = table["soma_dim_1"].to_numpy()
        cols = np.full(len(genes), -1, dtype=np.int64)
        known = genes < len(self._column_of)
        cols[known] = self._column_of[genes[known]]
        keep = cols >= 0
        local = np.searchsorted(cells, table["soma_dim_0"].to_numpy()[keep])
        values = table["soma_data"].to_numpy()[keep].astype(self.dtype, copy=False)
        block = sp.csr_matrix((values, (local, cols[keep])), shape=(len(cells), self.shape[1]))
        block.sum_duplicates()
        if len(cells) == len(wanted) and np.array_equal(cells, wanted):
            return block
        return block[np.searchsorted(cells, wanted)]

    def __getitem__(self, index) -> sp.csr_matrix:
        rows, cols = index if isinstance(index, tuple) else (index, slice(None))
        if rows is Ellipsis:
            rows = slice(None)
        n = self.shape[0]
        if isinstance(rows, slice):
            r = range(n)[rows]  # no array of all rows
            positions = np.arange(r.start, r.stop, r.step, dtype=np.int64)
        else:
            positions = np.asarray(rows)
            if positions.dtype == bool:
                if positions.shape != (n,):
                    raise IndexError(f"boolean row index of length {len(positions)} for {n} rows")
                positions = np.flatnonzero(positions)
            positions = positions.reshape(-1).astype(np.int64)
            if ((positions < -n) | (positions >= n)).any():
                raise IndexError(f"row index out of range for {n} rows")
            positions = np.where(positions < 0, positions + n, positions)
        block = self._read(positions)
        if not (isinstance(cols, slice) and cols == slice(None)):
            block = block[:, cols]
        return block

    def to_memory(self) -> sp.csr_matrix:
        """The whole matrix, read :data:`READ_BLOCK` cells at a time."""
        blocks = [
            self._read(np.arange(s, min(s + READ_BLOCK, self.shape[0]))) for s in range(0, self.shape[0], READ_BLOCK)
        ]
        return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix(self.shape, dtype=self.dtype)

    @property
    def counts_known(self) -> bool:
        """Whether :meth:`stored_per_row` is known without reading the layer (from ``obs["nnz"]``)."""
        return self._nnz is not None

    def stored_per_row(self) -> np.ndarray:
        """Stored values per cell: the experiment's ``obs["nnz"]`` when it has one, else counted block by block.

        The counts are over all genes of the layer (as ``nnz`` in the Census); counting reads the layer once.
        """
        if self._nnz is not None:
            return self._nnz
        counts = [np.diff(self._read(np.arange(s, min(s + READ_BLOCK, self.shape[0]))).indptr)
                  for s in range(0, self.shape[0], READ_BLOCK)]  # fmt: skip
        self._nnz = np.concatenate(counts).astype(np.int64) if counts else np.zeros(0, dtype=np.int64)
        return self._nnz


def open_soma(
    uri: str | os.PathLike,
    *,
    measurement: str = "RNA",
    layer: str = "raw",
    obs_value_filter: str | None = None,
    obs_columns: Sequence[str] | None = None,
    var_index: str = "feature_name",
    context: Any = None,
) -> AnnData:
    """A TileDB-SOMA experiment as an AnnData whose expression matrix stays in the experiment.

    ``obs`` (the selected cells) and ``var`` are read into memory; ``X`` is a :class:`SomaMatrix` that
    reads only the rows it is sliced with. Every function that streams a backed ``.h5ad``
    (:func:`scgpt.tl.embed` with or without ``devices=``, ``scgpt embed --backed``) streams it: each
    process reads only its share of the cells. ``adata.X.to_memory()`` reads the whole matrix.

    Parameters
    ----------
    uri
        URI of the SOMA experiment (a folder, or e.g. ``s3://...`` with a suitable ``context``).
    measurement
        Measurement holding the genes (``"RNA"`` in the Census).
    layer
        ``X`` layer with raw counts (``"raw"`` in the Census).
    obs_value_filter
        SOMA value filter selecting cells, e.g. ``"tissue_general == 'blood' and is_primary_data == True"``.
    obs_columns
        ``obs`` columns to read (``None``: all; the Census has many, so name the ones you need).
        ``soma_joinid`` is always read, to join results back to the experiment.
    var_index
        ``var`` column used as ``var_names`` (``"feature_name"``: gene symbols in the Census; the other
        ``var`` columns, e.g. Ensembl ids in ``"feature_id"``, are kept for ``gene_key=``).
    context
        A ``tiledbsoma.SOMATileDBContext``, or a dict of TileDB configuration options (credentials, region, cache
        sizes), if needed; the public Census on S3 reads with
        ``{"vfs.s3.region": "us-west-2", "vfs.s3.no_sign_request": "true"}``.

    Returns
    -------
    Cells x genes, with ``obs["soma_joinid"]`` and ``var["soma_joinid"]``; ``obs_names`` from ``obs_id``
    when the experiment has it, else the joinids.

    Raises
    ------
    FileNotFoundError, KeyError, ValueError
        For a missing experiment, measurement, layer or column, or a filter that selects no cells.

    Examples
    --------
    >>> adata = scgpt.data.open_soma("path/to/experiment", obs_value_filter="tissue == 'blood'")
    >>> scgpt.tl.embed(adata, "path/to/scGPT_human", devices=4)
    """
    import anndata as ad
    import pandas as pd

    uri = str(uri)
    experiment = _Experiment(uri, context)
    exp = experiment.get()
    if measurement not in exp.ms:
        raise KeyError(f"{uri} has no measurement {measurement!r} (it has {sorted(exp.ms.keys())}).")
    ms = exp.ms[measurement]
    if layer not in ms.X:
        raise KeyError(f"{uri}: measurement {measurement!r} has no X layer {layer!r} (it has {sorted(ms.X.keys())}).")
    var = ms.var.read().concat().to_pandas()
    if var_index not in var:
        raise KeyError(f"{uri}: var has no column {var_index!r} (it has {list(var.columns)}).")
    obs_names = exp.obs.schema.names
    if obs_columns is None:
        columns = list(obs_names)
    else:
        unknown = [c for c in obs_columns if c not in obs_names]
        if unknown:
            raise KeyError(f"{uri}: obs has no columns {unknown} (it has {list(obs_names)}).")
        columns = ["soma_joinid", *(c for c in obs_columns if c != "soma_joinid")]
    extra = [c for c in ("obs_id", "nnz") if c in obs_names and c not in columns]
    try:
        obs = exp.obs.read(value_filter=obs_value_filter, column_names=columns + extra).concat().to_pandas()
    except _tiledbsoma().SOMAError as e:
        if obs_value_filter is None:
            raise
        raise ValueError(
            f"obs_value_filter={obs_value_filter!r} is not a valid SOMA value filter of {uri} ({_first_line(e)}). "
            f"Compare obs columns with ==, !=, <, >, in [...], joined by and/or (columns: {list(obs_names)})."
        ) from None
    if obs.empty:
        raise ValueError(f"No cells of {uri} pass obs_value_filter={obs_value_filter!r}.")
    obs = obs.sort_values("soma_joinid", kind="stable").reset_index(drop=True)
    nnz = obs["nnz"].to_numpy() if "nnz" in obs else None
    names = obs["obs_id"].astype(str) if "obs_id" in obs else obs["soma_joinid"].astype(str)
    obs = obs.drop(columns=extra).set_index(pd.Index(names.to_numpy(), name=None))
    var = var.set_index(pd.Index(var[var_index].astype(str).to_numpy(), name=None))
    dtype = ms.X[layer].schema.field("soma_data").type.to_pandas_dtype()
    X = SomaMatrix(
        uri, measurement, layer, obs["soma_joinid"].to_numpy(), var["soma_joinid"].to_numpy(),
        nnz=nnz, dtype=dtype, context=context,
    )  # fmt: skip
    X._experiment = experiment  # one open handle
    return ad.AnnData(X=X, obs=obs, var=var)


class SomaSource:
    """Cells of a TileDB-SOMA experiment (e.g. the CELLxGENE Census), read a minibatch at a time, for training.

    Only the selected cells' rows are read from the experiment's ``X`` layer (through
    :class:`SomaMatrix`), so experiments far larger than memory (and remote ones, when the URI and
    ``context`` allow) train like an :class:`H5adCollection`. Needs the optional ``tiledbsoma`` package
    (``pip install "tiledbsoma>=1.15"``).

    Parameters
    ----------
    uri
        URI of the SOMA experiment.
    vocab
        Model vocabulary.
    measurement
        Measurement holding the genes (``"RNA"`` in the Census).
    layer
        ``X`` layer with raw counts (``"raw"`` in the Census).
    gene_key
        ``var`` column with gene names (``"feature_name"`` in the Census; Ensembl ids in
        ``"feature_id"`` match too).
    obs_value_filter
        SOMA value filter selecting cells, e.g. ``"tissue_general == 'blood' and is_primary_data == True"``.
    use_aliases
        Match genes by Ensembl id / previous / alias symbols too.
    organism, orthologs
        Another species' genes read as their human orthologs (see :func:`scgpt.pp.align_vocab`); e.g. the
        Census' ``mus_musculus`` experiment with ``organism="mouse"``.
    context
        A ``tiledbsoma.SOMATileDBContext`` or a dict of TileDB configuration options, if needed (see :func:`open_soma`).

    Examples
    --------
    >>> src = scgpt.data.SomaSource("path/to/experiment", model.vocab, obs_value_filter="tissue == 'blood'")
    >>> model.train(datamodule=model.make_datamodule(src, "pretrain", chunk_size=64))
    """

    def __init__(
        self,
        uri: str,
        vocab: GeneVocab,
        *,
        measurement: str = "RNA",
        layer: str = "raw",
        gene_key: str = "feature_name",
        obs_value_filter: str | None = None,
        use_aliases: bool = True,
        organism: str = "human",
        orthologs: str = "one2one",
        context: Any = None,
    ) -> None:
        adata = open_soma(
            uri, measurement=measurement, layer=layer, obs_value_filter=obs_value_filter, obs_columns=[],
            var_index=gene_key, context=context,
        )  # fmt: skip
        if adata.var_names.has_duplicates:
            dup = list(adata.var_names[adata.var_names.duplicated()][:3])
            raise ValueError(f"{uri}: duplicated gene names in var[{gene_key!r}] (e.g. {dup}).")
        m = match_genes(adata.var_names, vocab, use_aliases=use_aliases, organism=organism, orthologs=orthologs)
        with calling("SomaSource"):
            check_coverage(m)
        self.uri, self.n_tokens, self.n_obs = str(uri), len(vocab), adata.n_obs
        self.matrix: SomaMatrix = adata.X
        self.obs_joinids = self.matrix.obs_joinids
        self._tokens = m.ids
        self._present = np.unique(m.ids[m.ids >= 0])

    def rows(self, idx: np.ndarray) -> sp.csr_matrix:
        from ._matrix import check_values

        block = self.matrix[np.asarray(idx, dtype=np.int64)]
        check_values(block, what=self.uri)
        return _to_token_space(block, self._tokens, self.n_tokens)

    def present_tokens(self) -> np.ndarray:
        return self._present

    def lengths(self) -> np.ndarray | None:
        return self.matrix.stored_per_row() if self.matrix.counts_known else None  # never reads the layer
