"""``scgpt.tl.build_reference`` and :class:`ReferenceIndex`: a labelled reference indexed once for k-NN label transfer.

An atlas of millions of cells is embedded and indexed once; every query is then mapped onto the
saved index by :func:`scgpt.tl.annotate` (``method="knn"``, ``reference=<index or its folder>``)
without embedding or indexing the reference again.

Saved layout (a folder, written atomically)::

    <folder>/reference.json   format marker, backend, metric, labels, parameters, fingerprint, checksums
    <folder>/labels.npy       label code of every reference cell (int32)
    <folder>/embeddings.npy   exact search ("sklearn"): the (normalised) embeddings
    <folder>/index.pkl        pynndescent: the pickled NNDescent index
    <folder>/index.faiss      faiss: the index, written by faiss.write_index

By convention an index is saved next to the model whose embeddings it holds, in
``<model_dir>/reference_<name>/`` (:func:`reference_dir`); model folders ignore such subfolders.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import pickle
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .._files import atomic_path
from .._logging import logger, named, warn
from ..data import check_adata

if TYPE_CHECKING:
    from anndata import AnnData

    from ..model import ScGPT

EXACT_MAX_CELLS = 200_000
"""``backend="auto"`` searches exactly up to this many reference cells, and builds a pynndescent index above."""

FORMAT = "scgpt-reference-index"
FORMAT_VERSION = 2  # 2: reference.json carries its own checksum (meta_sha256), the weights' SHA-256
META_FILE = "reference.json"
LABELS_FILE = "labels.npy"
INDEX_FILES = {"sklearn": "embeddings.npy", "pynndescent": "index.pkl", "faiss": "index.faiss"}
BACKENDS = tuple(INDEX_FILES)
METRICS = ("cosine", "euclidean")
PYNNDESCENT_DEFAULTS = {"n_neighbors": 30, "parallel_batch_queries": True, "search_tree_leaf_budget": 128}
"""NNDescent options used unless ``index_params`` overrides them (graph degree at least ``2 * n_neighbors``).

``search_tree_leaf_budget`` (pynndescent >= 0.7) starts each query from several leaves of the search tree:
with pynndescent's default of 1, a query routed into the wrong leaf stays in a well-separated cluster of
other cells (1 % of queries on 20k clustered 32-d embeddings, 23 % on 100k noisy 128-d ones; 128 leaves:
label agreement with exact k-NN 0.995 on the latter, at 3x the query time). Left out with older pynndescent."""
SEARCH_DEFAULTS = {"pynndescent": {"epsilon": 0.1}, "faiss": {"nprobe": 32}, "sklearn": {}}
"""Search options of each backend unless ``search_params`` overrides them."""

Backend = Literal["auto", "sklearn", "pynndescent", "faiss"]


@named()
def reference_dir(model_dir: str | os.PathLike, name: str) -> Path:
    """The folder of the reference index ``name`` saved next to a model: ``<model_dir>/reference_<name>/``.

    A published model's name (``"scGPT_human"``) that is not a local folder stands for the model's cache folder
    (:func:`scgpt.hub.model_dir`); the bundled ``"demo"`` is refused (its folder is part of the package), so that
    no ``./demo`` folder is made that would shadow the model's name afterwards.

    Parameters
    ----------
    model_dir
        The model's folder (official layout or :meth:`scgpt.model.ScGPT.save`), or a published model's name.
    name
        Name of the reference (e.g. ``"hlca"``).

    Returns
    -------
    The folder (not created).
    """
    if not name or os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError(f"name must be a plain folder name, got {name!r}.")
    folder = Path(model_dir).expanduser()
    if isinstance(model_dir, str) and not folder.exists():
        from ..hub import get_entry, is_published

        if is_published(model_dir):  # a model name, not a folder: never create ./<name>, which would shadow it
            entry = get_entry(model_dir)
            if entry.bundled:
                raise ValueError(
                    f"model_dir={model_dir!r} is the bundled model's name, and its folder is part of the installed "
                    f"package: pass a folder of your own (e.g. ScGPT.from_pretrained({model_dir!r}).save(FOLDER)); "
                    f"a ./{model_dir} folder made here would shadow the model {model_dir!r}."
                )
            from ..hub import model_dir as cached_dir

            folder = cached_dir(model_dir)  # the published model's cache folder
    return folder / f"reference_{name}"


def model_fingerprint(model: ScGPT) -> str:
    """A short hash of a model's weights and vocabulary: equal embeddings need an equal fingerprint."""
    h = hashlib.sha256()
    h.update("\n".join(model.vocab.itos).encode())
    for name, tensor in model.net.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(_uint8()).numpy().tobytes())
    return h.hexdigest()[:16]


def _uint8():
    import torch

    return torch.uint8


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _meta_sha256(meta: Mapping[str, Any]) -> str:
    """SHA-256 of ``reference.json``'s content (keys sorted), its own checksum left out."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _check_meta_sha256(meta: Mapping[str, Any], meta_file: Path) -> None:
    """A clear error when ``reference.json`` (format 2 on) was edited or damaged after it was saved."""
    if meta.get("version", 0) < 2:
        logger.warning(
            f"{meta_file} was saved by an older scgpt without a checksum of its own: edits to it cannot be detected; "
            "rebuild the index with scgpt.tl.build_reference to have them detected."
        )
        return
    if meta.get("meta_sha256") != _meta_sha256(meta):
        what = "has no checksum" if "meta_sha256" not in meta else "does not match its checksum"
        raise ValueError(
            f"{meta_file} {what} (edited or damaged after it was saved: labels, classes or the model fingerprint "
            "may not be what the index was built with); rebuild the index with scgpt.tl.build_reference."
        )


def check_n_neighbors(n_neighbors: int, n_cells: int, *, given: bool = True) -> None:
    """A clear error for a k-NN vote over ``n_neighbors`` of ``n_cells`` reference cells that cannot work.

    ``given``: the value was passed by the caller (else it is a default, and the message says how to change it).
    """
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int | np.integer) or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be at least 1, got {n_neighbors!r}.")
    if n_neighbors >= n_cells:
        what = f"n_neighbors={n_neighbors}" + ("" if given else " (the default)")
        raise ValueError(
            f"{what} is not smaller than the {n_cells} reference cells: every query cell would get the "
            f"reference's majority label. Pass n_neighbors= below {n_cells}, or use a larger reference."
        )


def _normalized(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as the k-NN vote has always done."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _import_faiss(what: str):
    try:
        import faiss
    except ImportError as e:
        raise ImportError(
            f"{what} needs faiss, which is not installed: pip install faiss-cpu (or faiss-gpu on a CUDA machine; "
            'in a clone of scgpt-scverse: pip install ".[faiss]").'
        ) from e
    return faiss


def vote(
    nn_codes: np.ndarray, sim: np.ndarray, n_classes: int, *, chunk_size: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """Majority label of each row of neighbours, and its vote share (the confidence).

    Parameters
    ----------
    nn_codes
        ``(n_query, k)`` label codes of the neighbours; ``-1`` marks a neighbour the index did not find.
    sim
        ``(n_query, k)`` similarities (cosine similarity, or minus the distance); they only break ties.
    n_classes
        Number of labels.
    chunk_size
        Query rows voted at once (bounds memory for many queries and classes).

    Returns
    -------
    ``(best, confidence)``: the label code with most votes (ties go to the larger summed similarity) and
    the fraction of the ``k`` neighbours that voted for it.
    """
    n, k = nn_codes.shape
    best = np.empty(n, dtype=np.int64)
    confidence = np.empty(n, dtype=np.float64)
    for s in range(0, n, chunk_size):
        codes, w = nn_codes[s : s + chunk_size], sim[s : s + chunk_size]
        m = len(codes)
        found = codes >= 0
        votes = np.zeros((m, n_classes))
        weight = np.zeros((m, n_classes))
        rows = np.repeat(np.arange(m), k)
        cols = np.where(found, codes, 0).ravel()
        np.add.at(votes, (rows, cols), found.ravel().astype(np.float64))
        np.add.at(weight, (rows, cols), np.where(found, w, 0).ravel())
        b = np.argmax(votes + 1e-6 * weight / k, axis=1)  # similarity only breaks ties (it is < 1 per vote)
        best[s : s + m] = b
        confidence[s : s + m] = votes[np.arange(m), b] / k
    return best, confidence


class ReferenceIndex:
    """Labelled reference embeddings with a nearest-neighbour index, built once and reused for every query.

    Build one with :func:`build_reference`; save it with :meth:`save` and load it with :meth:`load`;
    pass it (or its folder) to :func:`scgpt.tl.annotate` as ``reference=``.

    Attributes
    ----------
    backend
        ``"sklearn"`` (exact search), ``"pynndescent"`` or ``"faiss"`` (approximate).
    metric
        ``"cosine"`` or ``"euclidean"``.
    labels_key
        The ``obs`` column the labels came from.
    classes
        Label names; :attr:`codes` index into them.
    codes
        Label code of every reference cell.
    use_rep
        The ``obsm`` key of the embeddings (``None``: computed by the model at build time).
    dim
        Embedding width.
    n_neighbors
        Neighbours of the vote the index was built for (the default of :meth:`transfer`).
    params
        Backend, seed, index and search options, for the record.
    fingerprint
        What the embeddings came from: ``model`` (hash of the weights, when known), ``model_name``, the
        embedding options recorded by :func:`scgpt.tl.embed`, and ``data`` (hash of the indexed embeddings).
    """

    def __init__(
        self,
        index: Any,
        *,
        backend: str,
        metric: str,
        labels_key: str,
        classes: list[str],
        codes: np.ndarray,
        use_rep: str | None,
        dim: int,
        n_neighbors: int,
        params: dict[str, Any],
        fingerprint: dict[str, Any],
    ) -> None:
        self.index = index
        self.backend = backend
        self.metric = metric
        self.labels_key = labels_key
        self.classes = list(classes)
        self.codes = np.asarray(codes)
        self.use_rep = use_rep
        self.dim = int(dim)
        self.n_neighbors = int(n_neighbors)
        self.params = params
        self.fingerprint = fingerprint
        self.path: Path | None = None

    @property
    def n_cells(self) -> int:
        """Reference cells in the index."""
        return len(self.codes)

    def __repr__(self) -> str:
        where = f", saved at {str(self.path)!r}" if self.path else ""
        model = self.fingerprint.get("model_name") or self.fingerprint.get("model")
        return (
            f"ReferenceIndex({self.n_cells:,} cells x {self.dim} dims, {len(self.classes)} labels of "
            f"{self.labels_key!r}, {self.backend} {self.metric}, k={self.n_neighbors}"
            + (f", use_rep={self.use_rep!r}" if self.use_rep else "")
            + (f", model {model!r}" if model else "")
            + f"{where})"
        )

    # ------------------------------------------------------------------ queries
    def check_query(self, query: np.ndarray, *, use_rep: str | None = None, model: str | None = None) -> np.ndarray:
        """The query embeddings as a finite 2-D array of the index's width, or a clear error.

        ``model`` is the fingerprint of the model that embedded the query (when it did): a model other
        than the one that embedded the reference is an error, since the two embeddings are not comparable.
        """
        self.check_model(model)
        query = np.asarray(query)
        if query.ndim != 2:
            raise ValueError(f"query embeddings must be 2-D (cells x dims), got shape {query.shape}.")
        if query.shape[1] != self.dim:
            raise ValueError(
                f"The query embeddings have {query.shape[1]} dimensions"
                + (f" (obsm[{use_rep!r}])" if use_rep else "")
                + f", the reference index {self.dim}{self._provenance()}. Embed the query with the same model as "
                "the reference."
            )
        if not np.isfinite(query).all():
            raise ValueError(f"The query embeddings hold {int((~np.isfinite(query)).sum())} NaN or infinite values.")
        return query

    def check_model(self, model: str | None) -> None:
        """An error when ``model`` (a :func:`model_fingerprint`) differs from the model the index was built from."""
        ref_model = self.fingerprint.get("model")
        if model is not None and ref_model is not None and model != ref_model:
            raise ValueError(
                f"The query is embedded by a different model (fingerprint {model}) than the reference index "
                f"(fingerprint {ref_model}{self._provenance()}); the embeddings are not comparable. Use the model "
                "the index was built with, or rebuild the index with scgpt.tl.build_reference."
            )

    def _provenance(self) -> str:
        name = self.fingerprint.get("model_name") or (self.fingerprint.get("embedding") or {}).get("model")
        rep = f"obsm[{self.use_rep!r}]" if self.use_rep else "scGPT embeddings"
        return f"; built from {rep}" + (f" of model {name!r}" if name else "")

    def check_n_neighbors(self, n_neighbors: int | None = None) -> int:
        """The neighbours of a vote (``None``: :attr:`n_neighbors`), or a clear error when it cannot work.

        At least 1, and fewer than the reference cells: with as many neighbours as reference cells every query
        cell would get the reference's majority label.
        """
        k = self.n_neighbors if n_neighbors is None else n_neighbors
        check_n_neighbors(k, self.n_cells, given=n_neighbors is not None)
        return int(k)

    def kneighbors(self, query: np.ndarray, n_neighbors: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``n_neighbors`` nearest reference cells of every query row.

        Parameters
        ----------
        query
            ``(n_query, dim)`` embeddings (same model and ``obsm`` key as the reference).
        n_neighbors
            Neighbours per query (default :attr:`n_neighbors`; at most the number of reference cells).

        Returns
        -------
        ``(indices, similarities)``, each ``(n_query, k)``, nearest first. Similarity is the cosine
        similarity (``metric="cosine"``) or minus the euclidean distance. An approximate index may find
        fewer than ``k`` neighbours for a query (index ``-1``, similarity ``-inf``), rarely.
        """
        query = self.check_query(query)
        k = self.check_n_neighbors(n_neighbors)
        cosine = self.metric == "cosine"
        q = _normalized(query) if cosine else query
        if self.backend == "sklearn":
            from sklearn.neighbors import NearestNeighbors

            nn = NearestNeighbors(n_neighbors=k, metric=self.metric, algorithm="brute").fit(self.index)
            dist, idx = nn.kneighbors(q)
            sim = 1 - dist if cosine else -dist
        elif self.backend == "pynndescent":
            search = {**SEARCH_DEFAULTS["pynndescent"], **self.params.get("search_params", {})}
            idx, dist = self.index.query(np.ascontiguousarray(q, dtype=np.float32), k=k, **search)
            sim = 1 - dist if cosine else -dist
        else:
            faiss = _import_faiss("This reference index (backend 'faiss')")
            self._set_faiss_search(faiss)
            score, idx = self.index.search(np.ascontiguousarray(q, dtype=np.float32), k)
            sim = score if cosine else -np.sqrt(np.maximum(score, 0))
            sim = np.where(idx >= 0, sim, -np.inf)
        return np.asarray(idx, dtype=np.int64), np.asarray(sim)

    def _set_faiss_search(self, faiss) -> None:
        search = {**SEARCH_DEFAULTS["faiss"], **self.params.get("search_params", {})}
        space = faiss.ParameterSpace()
        for name, value in search.items():
            if name == "nprobe" and faiss.try_extract_index_ivf(self.index) is None:
                continue  # not an IVF index (e.g. "Flat" or "HNSW32")
            space.set_index_parameter(self.index, name, value)

    def predict_codes(self, query: np.ndarray, n_neighbors: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Label codes and vote shares of the query rows (see :meth:`transfer`)."""
        idx, sim = self.kneighbors(query, n_neighbors)
        nn_codes = np.where(idx >= 0, self.codes[np.maximum(idx, 0)], -1)
        return vote(nn_codes, sim, len(self.classes))

    def transfer(self, query: np.ndarray, n_neighbors: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Label transfer: the majority label of each query row's nearest reference cells, and its vote share.

        Parameters
        ----------
        query
            ``(n_query, dim)`` embeddings.
        n_neighbors
            Neighbours of the vote (default :attr:`n_neighbors`).

        Returns
        -------
        ``(labels, confidence)``: label names (object array) and the fraction of the ``k`` neighbours
        that carry the label (ties go to the label with the larger summed similarity).
        """
        best, confidence = self.predict_codes(query, n_neighbors)
        return np.asarray(self.classes, dtype=object)[best], confidence

    # ------------------------------------------------------------------ saving and loading
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the index to a folder (see the module docs for the layout); returns the folder.

        The folder is written under a temporary name and moved into place when complete, so a failed
        write (a full disk) leaves what was there before. By convention, save next to the model:
        ``index.save(scgpt.tl.reference_dir(model_dir, "my_atlas"))``.

        Parameters
        ----------
        path
            The folder to write.
        overwrite
            Replace a reference index already saved there (a folder holding anything else is never replaced).

        Notes
        -----
        A pynndescent index is saved with :mod:`pickle`, and loading a pickle can run arbitrary code: load
        only folders from a source you trust. The checksums in ``reference.json`` detect damaged files,
        not deliberate tampering.
        """
        folder = Path(path).expanduser()
        if folder.exists():
            if not folder.is_dir():
                raise FileExistsError(f"{folder} is a file; give the folder to write the reference index to.")
            if any(folder.iterdir()):
                if not (folder / META_FILE).is_file():
                    raise FileExistsError(
                        f"{folder} holds other files and is not a reference index; choose an empty or new folder."
                    )
                if not overwrite:
                    raise FileExistsError(
                        f"{folder} already holds a reference index; pass overwrite=True to replace it."
                    )
        start = time.perf_counter()
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            np.save(tmp / LABELS_FILE, self.codes.astype(np.int32), allow_pickle=False)
            index_file = tmp / INDEX_FILES[self.backend]
            if self.backend == "sklearn":
                np.save(index_file, self.index, allow_pickle=False)
            elif self.backend == "pynndescent":
                with open(index_file, "wb") as f:
                    pickle.dump(self.index, f, protocol=pickle.HIGHEST_PROTOCOL)
            else:
                faiss = _import_faiss("Saving a faiss index")
                faiss.write_index(self.index, str(index_file))
            meta = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "backend": self.backend,
                "metric": self.metric,
                "labels_key": self.labels_key,
                "classes": self.classes,
                "n_cells": self.n_cells,
                "use_rep": self.use_rep,
                "dim": self.dim,
                "n_neighbors": self.n_neighbors,
                "params": self.params,
                "fingerprint": self.fingerprint,
                "checksums": {f.name: _sha256(f) for f in (tmp / LABELS_FILE, index_file)},
            }
            meta = json.loads(json.dumps(meta))  # as it will be read back
            meta["meta_sha256"] = _meta_sha256(meta)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        self.path = folder
        logger.info(f"saved the reference index to {folder} ({time.perf_counter() - start:.1f}s)")
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReferenceIndex:
        """Read an index written by :meth:`save`.

        Raises clear errors for a folder that is not a reference index, damaged or missing files
        (checked against the checksums), a newer format, and a faiss index without faiss installed.
        A pynndescent index is unpickled: load only folders you trust (see :meth:`save`).
        """
        folder = Path(path).expanduser()
        if not folder.exists():
            raise FileNotFoundError(f"No reference index at {folder}.")
        meta_file = folder / META_FILE
        if not folder.is_dir() or not meta_file.is_file():
            hint = ""
            if folder.is_dir():
                subs = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("reference_"))
                if subs:
                    hint = f" It holds the reference folders {subs}; pass one of them."
            raise ValueError(f"{folder} is not a reference index folder (no {META_FILE}).{hint}")
        try:
            meta = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{meta_file} is damaged (not valid JSON: {e}).") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{folder} is not a reference index written by scgpt ({META_FILE} has another format).")
        if meta.get("version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{folder} was written by a newer scgpt (reference index format {meta['version']}, this one reads "
                f"up to {FORMAT_VERSION}); upgrade scgpt."
            )
        try:
            backend, n_cells, classes = meta["backend"], int(meta["n_cells"]), list(meta["classes"])
            checksums = dict(meta["checksums"])
            if backend not in BACKENDS:
                raise ValueError(f"unknown backend {backend!r}")
            k = meta["n_neighbors"]
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n_cells:
                raise ValueError(f"n_neighbors={k!r} is not between 1 and the {n_cells} indexed cells")
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{meta_file} is damaged ({type(e).__name__}: {e}); rebuild the index with scgpt.tl.build_reference."
            ) from e
        _check_meta_sha256(meta, meta_file)  # after the fields, so that a value out of range is named
        if backend == "faiss":
            faiss = _import_faiss(f"The reference index at {folder} (saved with faiss)")
        files = (LABELS_FILE, INDEX_FILES[backend])
        for name in files:
            if not (folder / name).is_file():
                raise ValueError(f"The reference index at {folder} is damaged: {name} is missing.")
            if checksums.get(name) != _sha256(folder / name):
                raise ValueError(
                    f"The reference index at {folder} is damaged: {name} does not match its checksum "
                    "(changed or partly written); rebuild it with scgpt.tl.build_reference."
                )
        codes = np.load(folder / LABELS_FILE, allow_pickle=False).astype(np.int64)
        if codes.shape != (n_cells,) or (len(codes) and (codes.min() < 0 or codes.max() >= len(classes))):
            raise ValueError(f"The reference index at {folder} is damaged: {LABELS_FILE} does not match its labels.")
        index_file = folder / INDEX_FILES[backend]
        if backend == "sklearn":
            index = np.load(index_file, allow_pickle=False)
            size = index.shape[0]
        elif backend == "pynndescent":
            from pynndescent import NNDescent

            with open(index_file, "rb") as f:
                index = pickle.load(f)  # documented: load only trusted folders
            if not isinstance(index, NNDescent):
                raise ValueError(f"The reference index at {folder} is damaged: {index_file.name} is not an NNDescent.")
            size = index._raw_data.shape[0]
        else:
            index = faiss.read_index(str(index_file))
            size = index.ntotal
        if size != n_cells:
            raise ValueError(f"The reference index at {folder} is damaged: {size} indexed cells, {n_cells} labels.")
        self = cls(
            index,
            backend=backend,
            metric=meta["metric"],
            labels_key=meta["labels_key"],
            classes=classes,
            codes=codes,
            use_rep=meta["use_rep"],
            dim=meta["dim"],
            n_neighbors=meta["n_neighbors"],
            params=meta["params"],
            fingerprint=meta["fingerprint"],
        )
        self.path = folder
        return self


# ---------------------------------------------------------------------------- building
def _build_index(
    emb: np.ndarray,
    *,
    backend: str,
    metric: str,
    n_neighbors: int,
    seed: int,
    index_params: Mapping[str, Any],
    n_jobs: int | None,
) -> tuple[Any, dict[str, Any]]:
    """The backend's index over ``emb`` (already normalised for cosine) and the options it was built with."""
    if backend == "sklearn":
        return emb, {}
    data = np.ascontiguousarray(emb, dtype=np.float32)
    if backend == "pynndescent":
        from pynndescent import NNDescent

        accepted = inspect.signature(NNDescent).parameters
        defaults = {k: v for k, v in PYNNDESCENT_DEFAULTS.items() if k in accepted}
        degree = max(PYNNDESCENT_DEFAULTS["n_neighbors"], 2 * n_neighbors)
        opts = {**defaults, "n_neighbors": degree, **index_params}
        index = NNDescent(data, metric=metric, random_state=seed, n_jobs=n_jobs, **opts)
        index.prepare()
        return index, opts
    faiss = _import_faiss("backend='faiss'")
    n = len(data)
    nlist = int(max(1, min(round(4 * np.sqrt(n)), n // 39)))
    opts = {"factory": f"IVF{nlist},Flat", **index_params}
    unknown = set(opts) - {"factory"}
    if unknown:
        raise ValueError(
            f"index_params for faiss take 'factory' (a faiss index_factory string), got {sorted(unknown)}."
        )
    if n_jobs is not None:
        faiss.omp_set_num_threads(n_jobs)
    index = faiss.index_factory(
        data.shape[1], opts["factory"], faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    )
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
    if not index.is_trained:
        index.train(data)
    index.add(data)
    return index, opts


def _resolve_backend(backend: str, n_cells: int, exact_threshold: int) -> str:
    if backend == "auto":
        return "sklearn" if n_cells <= exact_threshold else "pynndescent"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'sklearn', 'pynndescent' or 'faiss', got {backend!r}.")
    return backend


def index_embeddings(
    emb: np.ndarray,
    codes: np.ndarray,
    classes: list[str],
    *,
    labels_key: str,
    use_rep: str | None,
    backend: Backend = "auto",
    n_neighbors: int = 10,
    metric: Literal["cosine", "euclidean"] = "cosine",
    seed: int = 0,
    exact_threshold: int = EXACT_MAX_CELLS,
    index_params: Mapping[str, Any] | None = None,
    search_params: Mapping[str, Any] | None = None,
    n_jobs: int | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    n_neighbors_given: bool = True,
) -> ReferenceIndex:
    """A :class:`ReferenceIndex` over embeddings and label codes (the core of :func:`build_reference`)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}.")
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.shape[0] != len(codes):
        raise ValueError(f"embeddings of shape {emb.shape} do not match {len(codes)} labelled cells.")
    check_n_neighbors(n_neighbors, len(emb), given=n_neighbors_given)
    if not np.isfinite(emb).all():
        raise ValueError(f"The reference embeddings hold {int((~np.isfinite(emb)).sum())} NaN or infinite values.")
    backend = _resolve_backend(backend, len(emb), exact_threshold)
    if backend == "faiss":
        _import_faiss("backend='faiss'")
    search_params = dict(search_params or {})
    allowed = {"pynndescent": {"epsilon"}, "faiss": None, "sklearn": set()}[backend]
    if allowed is not None and set(search_params) - allowed:
        raise ValueError(
            f"search_params for backend {backend!r} take {sorted(allowed) or 'nothing'}, got {sorted(search_params)}."
        )
    start = time.perf_counter()
    data = _normalized(emb) if metric == "cosine" else emb
    index, built_with = _build_index(
        data, backend=backend, metric=metric, n_neighbors=n_neighbors, seed=seed,
        index_params=dict(index_params or {}), n_jobs=n_jobs,
    )  # fmt: skip
    if backend != "sklearn":
        logger.info(f"    built a {backend} index of {len(emb):,} cells ({time.perf_counter() - start:.1f}s)")
    params = {
        "backend": backend,
        "seed": seed,
        "exact_threshold": exact_threshold,
        "index_params": built_with,
        "search_params": {**SEARCH_DEFAULTS[backend], **search_params},
    }
    return ReferenceIndex(
        index,
        backend=backend,
        metric=metric,
        labels_key=labels_key,
        classes=classes,
        codes=codes,
        use_rep=use_rep,
        dim=emb.shape[1],
        n_neighbors=n_neighbors,
        params=params,
        fingerprint=dict(fingerprint or {}),
    )


def embedding_provenance(adata: AnnData, use_rep: str) -> dict[str, Any]:
    """What :func:`scgpt.tl.embed` recorded about ``obsm[use_rep]`` (model name, ``max_length``), if anything."""
    entry = adata.uns.get(use_rep)
    params = entry.get("params") if isinstance(entry, Mapping) else None
    if not isinstance(params, Mapping):
        return {}
    keys = ("model", "max_length", "dtype", "weights_sha256")
    return {k: params[k] for k in keys if k in params and params[k] is not None}


@named()
def build_reference(
    reference: AnnData,
    model: ScGPT | str | os.PathLike | None = None,
    *,
    labels_key: str,
    use_rep: str | None = "X_scGPT",
    backend: Backend = "auto",
    n_neighbors: int = 10,
    metric: Literal["cosine", "euclidean"] = "cosine",
    seed: int = 0,
    exact_threshold: int = EXACT_MAX_CELLS,
    index_params: Mapping[str, Any] | None = None,
    search_params: Mapping[str, Any] | None = None,
    n_jobs: int | None = None,
    path: str | os.PathLike | None = None,
    overwrite: bool = False,
    max_length: int = 1200,
    **inference: Any,
) -> ReferenceIndex:
    """Index a labelled reference once, for k-NN label transfer of any number of queries.

    Pass the result (or the folder it was saved to) to :func:`scgpt.tl.annotate` with ``method="knn"``.

    Parameters
    ----------
    reference
        Labelled reference cells.
    model
        The model whose embeddings are indexed. With ``use_rep=None`` the reference is embedded here
        (zero-shot, as :func:`scgpt.tl.embed`); with ``use_rep`` it is only fingerprinted, so that a
        query embedded by another model is an error. ``None`` with ``use_rep``: no model fingerprint.
    labels_key
        ``reference.obs`` column with the labels (cells without a label are left out, with a warning).
    use_rep
        ``reference.obsm`` key of the embeddings (e.g. from :func:`scgpt.tl.embed`); ``None`` embeds here.
    backend
        ``"sklearn"`` (exact, brute force), ``"pynndescent"`` (approximate, installed with scgpt), ``"faiss"``
        (approximate IVF, needs the ``faiss`` extra) or ``"auto"``: exact up to ``exact_threshold``
        cells, pynndescent above.
    n_neighbors
        Neighbours of the vote the index is built for (the default of :func:`scgpt.tl.annotate`).
    metric
        ``"cosine"`` (scGPT's reference mapping) or ``"euclidean"``.
    seed
        Seed of the index construction (same seed, same index, same answers).
    exact_threshold
        Largest reference searched exactly by ``backend="auto"`` (default :data:`EXACT_MAX_CELLS`, 200,000).
    index_params
        Options of the index: for pynndescent, :class:`pynndescent.NNDescent` arguments (default graph
        degree ``n_neighbors=max(30, 2 * n_neighbors)``, ``parallel_batch_queries=True``,
        ``search_tree_leaf_budget=128``); for faiss,
        ``{"factory": ...}``, an ``index_factory`` string (default ``"IVF<nlist>,Flat"`` with
        ``nlist = 4 sqrt(n)``; ``"Flat"`` is exact, ``"HNSW32"`` a graph index).
    search_params
        Options of every query: pynndescent ``{"epsilon": 0.1}``; faiss index parameters such as
        ``{"nprobe": 32}`` or ``{"efSearch": 64}``.
    n_jobs
        Threads used to build the index (``None``: all cores).
    path
        Also save the index to this folder (see :meth:`ReferenceIndex.save`; by convention
        ``scgpt.tl.reference_dir(model_dir, name)``, next to the model).
    overwrite
        Replace a reference index already saved at ``path``.
    max_length
        Tokens per cell when embedding here (``use_rep=None``).
    **inference
        Further options of the embedding with ``use_rep=None`` (``gene_key``, ``use_aliases``, ``organism``, ``layer``,
        ``batch_size``, ``device``, ``dtype``, ``progress``).

    Returns
    -------
    The :class:`ReferenceIndex`.

    Examples
    --------
    >>> scgpt.tl.embed(atlas, "scGPT_human")  # doctest: +SKIP
    >>> scgpt.tl.build_reference(  # doctest: +SKIP
    ...     atlas, "scGPT_human", labels_key="cell_type", path=scgpt.tl.reference_dir("scGPT_human", "atlas")
    ... )
    >>> scgpt.tl.annotate(query, "scGPT_human", method="knn", reference="scGPT_human/reference_atlas")  # doctest: +SKIP
    """
    from ..model import label_codes, resolve_model

    start = time.perf_counter()
    if use_rep is None or type(reference).__name__ != "AnnData" or reference.n_obs == 0:
        check_adata(reference)  # genes are only needed to embed here
    keep, codes, classes = label_codes(reference, labels_key)
    fingerprint: dict[str, Any] = {}
    if use_rep is None:
        model_obj, model_name = resolve_model(model)
        cells = reference if keep.all() else reference[keep]
        logger.info(f"embedding {cells.n_obs:,} reference cells")
        emb = model_obj.get_latent_representation(cells, max_length=max_length, seed=seed, **inference)
        fingerprint.update(
            model=model_fingerprint(model_obj), model_name=model_name, embedding={"max_length": max_length}
        )
        fingerprint["weights_sha256"] = model_obj.weights_sha256()
    else:
        if inference:
            raise TypeError(f"use_rep={use_rep!r} takes no embedding options: {sorted(inference)}")
        if use_rep not in reference.obsm:
            raise KeyError(
                f"use_rep={use_rep!r} is not in reference.obsm (keys: {list(reference.obsm)}); run "
                "scgpt.tl.embed(reference, model) first, or pass use_rep=None and model= to embed here."
            )
        emb = np.asarray(reference.obsm[use_rep])
        emb = emb if keep.all() else emb[keep]
        fingerprint["embedding"] = embedding_provenance(reference, use_rep)
        if model is not None:
            model_obj, model_name = resolve_model(model)
            fingerprint.update(model=model_fingerprint(model_obj), model_name=model_name)
            fingerprint["weights_sha256"] = model_obj.weights_sha256()
    fingerprint["data"] = hashlib.sha256(np.ascontiguousarray(emb).tobytes()).hexdigest()[:16]
    index = index_embeddings(
        emb, codes, classes, labels_key=labels_key, use_rep=use_rep, backend=backend, n_neighbors=n_neighbors,
        metric=metric, seed=seed, exact_threshold=exact_threshold, index_params=index_params,
        search_params=search_params, n_jobs=n_jobs, fingerprint=fingerprint,
    )  # fmt: skip
    logger.info(f"    {index!r} ({time.perf_counter() - start:.1f}s)")
    if path is not None:
        index.save(path, overwrite=overwrite)
    return index


def as_reference_index(reference: object) -> ReferenceIndex | None:
    """``reference`` itself when it is a :class:`ReferenceIndex`, loaded when it is a path, else ``None``."""
    if isinstance(reference, ReferenceIndex):
        return reference
    if isinstance(reference, str | os.PathLike):
        return ReferenceIndex.load(reference)
    return None


def warn_provenance(index: ReferenceIndex, query_rep: str | None, query_provenance: Mapping[str, Any]) -> None:
    """Warn when the query's ``obsm`` embeddings look like they come from another source than the index's."""
    if query_rep is not None and index.use_rep is not None and query_rep != index.use_rep:
        warn(f"The reference index was built on obsm[{index.use_rep!r}] and the query uses obsm[{query_rep!r}].")
    ref = index.fingerprint.get("embedding") or {}
    ref_weights = index.fingerprint.get("weights_sha256") or ref.get("weights_sha256")
    query_weights = query_provenance.get("weights_sha256")
    if ref_weights and query_weights and ref_weights != query_weights:
        raise ValueError(
            f"obsm[{query_rep!r}] was embedded by another model (weights SHA-256 {query_weights[:12]}…, model "
            f"{query_provenance.get('model')!r}) than the reference index (weights {ref_weights[:12]}…"
            f"{index._provenance()}): the embeddings are not comparable. Embed the query with the index's model, "
            "or rebuild the index from embeddings of this model."
        )
    for key in ("model", "max_length"):
        if key in ref and key in query_provenance and ref[key] != query_provenance[key]:
            warn(
                f"The reference embeddings were computed with {key}={ref[key]!r} and the query's with "
                f"{key}={query_provenance[key]!r}; embed both the same way for comparable embeddings."
            )
