"""``scgpt.tl.annotate``: cell-type annotation by a fine-tuned classifier or by zero-shot reference mapping."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .._docs import doc_params
from .._face import check_key_added, provenance, record, warn_overwrite, writable
from .._logging import describing, log_added, logger, named, warn
from ..data import check_adata, missing_values
from ..model import ScGPT, label_codes, resolve_model
from ._reference import (
    EXACT_MAX_CELLS,
    ReferenceIndex,
    as_reference_index,
    check_n_neighbors,
    embedding_provenance,
    index_embeddings,
    model_fingerprint,
    warn_provenance,
)

if TYPE_CHECKING:
    from anndata import AnnData

UNKNOWN = "unknown"
NO_PREDICTION = "(no prediction)"


# ---------------------------------------------------------------------------- k-NN reference mapping
def _knn_index(
    adata: AnnData,
    model: ScGPT | str | os.PathLike | None,
    reference: object,
    labels_key: str | None,
    use_rep: str | None,
    knn_backend: str,
    n_neighbors: int | None,
    max_length: int | None,
    inference: dict[str, Any],
) -> tuple[ReferenceIndex, str | None]:
    """The reference index of ``annotate(method="knn")`` (built here for an AnnData reference) and the model name.

    Checks, before the query is embedded, that the query can be compared with the reference: its
    ``obsm[use_rep]`` exists, or the model that will embed it is the one the index was built from.
    """
    if reference is None:
        raise ValueError(
            "method='knn' needs `reference=`: labelled cells with `labels_key=` (their label column), a "
            "ReferenceIndex from scgpt.tl.build_reference, or the folder it was saved to."
        )
    if use_rep is not None and use_rep not in adata.obsm:
        raise KeyError(f"use_rep={use_rep!r} is not in adata.obsm.")
    index = as_reference_index(reference)
    if index is not None:
        if labels_key is not None and labels_key != index.labels_key:
            raise ValueError(
                f"labels_key={labels_key!r}, but the reference index holds the labels of {index.labels_key!r}; "
                "leave labels_key out or build an index of that column."
            )
        if knn_backend not in ("auto", index.backend):
            raise ValueError(
                f"knn_backend={knn_backend!r}, but the reference index was built with {index.backend!r}; rebuild it "
                "with scgpt.tl.build_reference(..., backend=...) to change the search."
            )
        index.check_n_neighbors(n_neighbors)  # before the query is embedded
        if use_rep is not None:
            warn_provenance(index, use_rep, embedding_provenance(adata, use_rep))
            return index, None
        model_obj, model_name = resolve_model(model)
        index.check_model(model_fingerprint(model_obj))  # before the query is embedded
        return index, model_name
    if labels_key is None:
        raise ValueError("method='knn' needs `reference=` (labelled cells) and `labels_key=` (their label column).")
    with describing("reference"):
        check_adata(reference)
    keep, codes, classes = label_codes(reference, labels_key)
    check_n_neighbors(10 if n_neighbors is None else n_neighbors, int(keep.sum()), given=n_neighbors is not None)
    reference = reference if keep.all() else reference[keep]
    model_name = None
    if use_rep is not None:
        if use_rep not in reference.obsm:
            raise KeyError(f"use_rep={use_rep!r} is not in reference.obsm.")
        ref_emb = np.asarray(reference.obsm[use_rep])
    else:
        model_obj, model_name = resolve_model(model)
        logger.info(f"embedding {reference.n_obs} reference and {adata.n_obs} query cells")
        kw = {**inference, "max_length": max_length or 1200}
        ref_emb = model_obj.get_latent_representation(reference, **kw)
    index = index_embeddings(
        ref_emb, codes, classes, labels_key=labels_key, use_rep=use_rep, backend=knn_backend,
        n_neighbors=10 if n_neighbors is None else n_neighbors, seed=inference["seed"],
        exact_threshold=EXACT_MAX_CELLS, n_neighbors_given=n_neighbors is not None,
    )  # fmt: skip
    return index, model_name


# ---------------------------------------------------------------------------- the tool
def _check_options(method: str, n_neighbors: int | None, min_confidence: float | None, unknown_label: str) -> None:
    """Clear errors for options of :func:`annotate` that cannot work."""
    if method not in ("finetune", "knn"):
        raise ValueError(f"method must be 'finetune' or 'knn', got {method!r}.")
    if n_neighbors is not None and n_neighbors < 1:
        raise ValueError(f"n_neighbors must be at least 1, got {n_neighbors}.")
    if min_confidence is not None and not 0 <= min_confidence <= 1:
        raise ValueError(
            f"min_confidence must lie in [0, 1] (a class probability or a share of the neighbours' votes), got "
            f"{min_confidence!r}: above 1 every cell would be labelled {unknown_label!r}."
        )


@doc_params()
@named()
def annotate(
    adata: AnnData,
    model: ScGPT | str | os.PathLike | None = None,
    *,
    reference: AnnData | ReferenceIndex | str | os.PathLike | None = None,
    labels_key: str | None = None,
    method: Literal["finetune", "knn"] | None = None,
    key_added: str = "scgpt_celltype",
    min_confidence: float | None = None,
    unknown_label: str = UNKNOWN,
    n_neighbors: int | None = None,
    use_rep: str | None = None,
    knn_backend: Literal["auto", "sklearn", "pynndescent", "faiss"] = "auto",
    gene_key: str | None = None,
    use_aliases: bool = True,
    organism: str = "human",
    orthologs: str = "one2one",
    layer: str | None = None,
    max_length: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool | None = None,
    copy: bool = False,
    **finetune_kwargs: Any,
) -> AnnData | None:
    """Annotate cell types with scGPT: a fine-tuned classifier, or zero-shot reference mapping.

    By default (``method=None``) the fast path: with a ``reference``, zero-shot reference mapping (``"knn"``, no
    training: seconds to minutes); without, prediction with the fine-tuned classifier ``model``. Fine-tuning on
    the reference happens only when asked for with ``method="finetune"``: it takes minutes to hours (9:45 against
    0:33 for k-NN on 369 reference cells on 2 CPU cores, and it scored lower there), and its expected duration is
    logged before it starts.

    - ``method="finetune"``: ``model`` is a classifier fine-tuned with
      ``model.finetune("annotation", reference, labels_key=...)`` (the official annotation recipe; keep it,
      :meth:`~scgpt.model.ScGPT.save` it and annotate new data in one call), and predicts ``adata``. Given a
      pretrained ``model`` and a ``reference``, a copy is fine-tuned here first (and not kept).
    - ``method="knn"``: embed reference and query with the zero-shot embedding of :func:`scgpt.tl.embed`
      (no training) and take the majority label of the ``n_neighbors`` most cosine-similar reference
      cells, as the official reference-mapping tutorial. For atlas-scale references, index the reference
      once with :func:`scgpt.tl.build_reference` (saved next to the model) and pass the index or its
      folder as ``reference``: every query then reuses it, without embedding the reference again.

    Parameters
    ----------
    adata
        Query cells (raw counts).
    {model}
    reference
        Labelled reference cells (raw counts); for ``method="knn"`` also a :class:`~scgpt.tl.ReferenceIndex`
        from :func:`scgpt.tl.build_reference`, or the folder it was saved to.
    labels_key
        ``reference.obs`` column with cell types (a reference index knows its labels).
    method
        ``"finetune"`` or ``"knn"``; ``None``: ``"knn"`` when a ``reference`` is given (and no training options),
        else ``"finetune"`` (predict with the classifier ``model``).
    key_added
        ``obs`` column written (and ``uns`` entry).
    min_confidence
        Cells whose confidence is below this get ``unknown_label`` (novel or ambiguous cells); between 0 and 1.
    unknown_label
        Label of low-confidence cells.
    n_neighbors
        Neighbours of the k-NN vote (``None``: the reference index's, else 10 as the official recipe); fewer than
        the reference cells (with as many, every cell would get the reference's majority label).
    use_rep
        k-NN on an existing ``obsm`` embedding of both ``adata`` and ``reference`` (or of ``adata``, for a
        reference index built on the same embedding) instead of computing scGPT embeddings.
    knn_backend
        Nearest-neighbour search of an AnnData reference: ``"auto"`` is exact (``"sklearn"``) up to
        :data:`~scgpt.tl.EXACT_MAX_CELLS` (200,000) reference cells and ``"pynndescent"`` above; ``"faiss"``
        needs faiss. A reference index keeps the backend it was built with.
    {gene_key}
    {use_aliases}
    {organism}
    {layer}
    max_length
        Tokens per cell including ``<cls>``; ``None``: 1200 for ``knn``, the fine-tuning length for ``finetune``.
    {batch_size}
    {seed}
    {device}
    {dtype}
    {progress}
    {copy}
    **finetune_kwargs
        Passed to :meth:`scgpt.model.ScGPT.finetune` when a reference is given (``max_epochs``, ``lr``,
        ``freeze_layers``, ``early_stopping``, ...).

    Returns
    -------
    ``None``, or the annotated copy with ``copy=True``. Sets

    ``adata.obs[key_added]`` : categorical
        Predicted cell type.
    ``adata.obs[f"{key_added}_confidence"]`` : float32
        Class probability (``finetune``) or vote share (``knn``: the fraction of the ``n_neighbors``
        neighbours carrying the label, exact or approximate search alike) of the prediction.
    ``adata.obsm[f"X_{key_added}"]`` : float32 (``method="knn"`` without ``use_rep`` only)
        The query's zero-shot scGPT embedding the vote was taken on (that of :func:`scgpt.tl.embed`), kept for
        ``sc.pp.neighbors(adata, use_rep=f"X_{key_added}")`` and a UMAP without embedding again.
    ``adata.uns[key_added]`` : dict
        ``params`` and ``classes``.
    """
    start = time.perf_counter()
    method = method or ("knn" if reference is not None and not finetune_kwargs else "finetune")  # the fast path
    _check_options(method, n_neighbors, min_confidence, unknown_label)
    adata = writable(adata, copy=copy)
    check_key_added(key_added, reads=(labels_key,), slot="obs")
    check_key_added(f"{key_added}_confidence", reads=(labels_key,), slot="obs")
    inference = {
        "gene_key": gene_key, "use_aliases": use_aliases, "layer": layer, "batch_size": batch_size, "seed": seed,
        "device": device, "dtype": dtype, "progress": progress, "organism": organism, "orthologs": orthologs,
    }  # fmt: skip
    model_name, model_obj, given = None, None, None
    index = None
    if method == "knn":
        if finetune_kwargs:
            raise TypeError(f"method='knn' takes no training options: {sorted(finetune_kwargs)}")
        index, model_name = _knn_index(
            adata, model, reference, labels_key, use_rep, knn_backend, n_neighbors, max_length, inference
        )
        if use_rep is not None:
            qry_emb = np.asarray(adata.obsm[use_rep])
        else:
            model_obj, model_name = resolve_model(model)
            given = model_obj
            kw = {
                **inference,
                "max_length": max_length or (index.fingerprint.get("embedding") or {}).get("max_length") or 1200,
            }
            qry_emb = model_obj.get_latent_representation(adata, **kw)
        qry_emb = index.check_query(qry_emb, use_rep=use_rep)
        best, confidence = index.predict_codes(qry_emb, n_neighbors)
        classes, labels_key = index.classes, index.labels_key
    else:
        model_obj, model_name = resolve_model(model)
        given = model_obj  # its provenance, before a classifier is fine-tuned from it
        if reference is not None:
            if type(reference).__name__ != "AnnData":
                raise TypeError(
                    "method='finetune' needs `reference=` as labelled cells (an AnnData); a reference index or its "
                    "folder is for method='knn'."
                )
            if labels_key is None:
                raise ValueError("Pass `labels_key=`, the obs column of the reference holding cell-type labels.")
            logger.info("fine-tuning a classifier on the reference (keep it: model.finetune('annotation', ...))")
            model_obj = model_obj.finetune(
                "annotation",
                reference,
                labels_key=labels_key,
                gene_key=gene_key,
                use_aliases=use_aliases,
                organism=organism,
                orthologs=orthologs,
                layer=layer,
                max_length=max_length,
                seed=seed,
                progress=progress,
                **finetune_kwargs,
            )
        elif finetune_kwargs:
            raise TypeError(f"Training options given but no `reference`: {sorted(finetune_kwargs)}")
        probs = model_obj.predict_proba(adata, max_length=max_length, **inference)
        classes = [str(c) for c in probs.columns]
        best, confidence = probs.to_numpy().argmax(1), probs.to_numpy().max(1)
    labels = np.asarray(classes, dtype=object)[best]
    if min_confidence is not None:
        low = confidence < min_confidence
        labels = np.where(low, unknown_label, labels)
        logger.info(f"    {int(low.sum())} cells below confidence {min_confidence} labelled {unknown_label!r}")
    order = classes + ([unknown_label] if min_confidence is not None and unknown_label not in classes else [])
    warn_overwrite(adata, "obs", key_added, copy=copy)
    adata.obs[key_added] = pd.Categorical(labels, categories=order)
    adata.obs[f"{key_added}_confidence"] = confidence.astype(np.float32)
    added = [f"'{key_added}', predicted cell types (adata.obs)", f"'{key_added}_confidence', confidence (adata.obs)"]
    if method == "knn" and use_rep is None:
        added.append(_keep_embedding(adata, f"X_{key_added}", qry_emb, copy=copy))
    params = {
        "method": method,
        **provenance(given, model_name),
        "labels_key": labels_key,
        "min_confidence": min_confidence,
        "n_neighbors": (index.n_neighbors if n_neighbors is None else n_neighbors) if index else None,
        "use_rep": use_rep,
        "organism": organism,
        "orthologs": orthologs,
        "seed": seed,
        "reference_cells": index.n_cells if index else None if reference is None else int(reference.n_obs),
    }
    if index is not None:
        params.update(knn_backend=index.backend, reference_index=None if index.path is None else str(index.path))
    record(adata, key_added, params, start=start, added=added, classes=classes)
    return adata if copy else None


def _keep_embedding(adata: AnnData, key: str, embedding: np.ndarray, *, copy: bool) -> str:
    """Write the query embedding the k-NN vote used to ``adata.obsm[key]``; returns the line for the log."""
    warn_overwrite(adata, "obsm", key, copy=copy)
    adata.obsm[key] = np.asarray(embedding, dtype=np.float32)
    return f"'{key}', the query's scGPT embedding the vote used (adata.obsm)"


# ---------------------------------------------------------------------------- evaluation
OVERALL = "overall"
"""Row of :func:`evaluate_annotation` with the scores over all cells (macro means of the per-type scores)."""


@doc_params()
@named()
def evaluate_annotation(
    adata: AnnData,
    *,
    labels_key: str,
    key: str = "scgpt_celltype",
    key_added: str | None = None,
) -> pd.DataFrame:
    """Precision, recall, F1 and accuracy of an annotation, per cell type and overall, and its confusion matrix.

    Every cell with a true label counts: a missing prediction is an error (column ``"(no prediction)"`` of the
    confusion matrix), and so is a prediction of a label that is no true cell type (e.g. ``"unknown"``). Cells
    without a true label (missing, or the strings "nan"/"None") are left out with a warning.

    Parameters
    ----------
    adata
        Annotated data with both label columns.
    {labels_key}
    key
        ``obs`` column with the predictions: the ``key_added`` of :func:`scgpt.tl.annotate` (default), or the
        labels of any other classifier.
    {eval_key_added}

    Returns
    -------
    A DataFrame (as scikit-learn's ``classification_report``), index ``cell type``: one row per true cell type
    (sorted), then the row ``"overall"``; columns

    - ``precision``, ``recall``, ``f1``: of the cell type; in the ``"overall"`` row their means over the true
      cell types (macro averages: ``f1`` is the macro-F1, ``recall`` the balanced accuracy);
    - ``accuracy``: the share of the row's cells predicted right (for a cell type, its recall);
    - ``n_cells``: cells with that true label (``"overall"``: all cells scored);
    - ``n_missing_predictions``: those of them without a prediction.

    ``df.attrs["confusion"]`` holds the confusion matrix as plain lists (``pd.DataFrame(**df.attrs["confusion"])``
    gives it: rows the true cell types, columns the predicted labels, those that are no true cell type last),
    which :func:`scgpt.pl.confusion` draws from the DataFrame alone. With ``key_added``:

    ``adata.uns[key_added]`` : dict
        ``params`` (``labels_key``, ``key``), ``results`` (the DataFrame), ``confusion`` (the confusion matrix,
        a DataFrame of cell counts) and ``evaluator`` (``"scgpt.tl.evaluate_annotation"``).

    Examples
    --------
    >>> scgpt.tl.annotate(query, clf)  # doctest: +SKIP
    >>> df = scgpt.tl.evaluate_annotation(query, labels_key="cell_type")  # doctest: +SKIP
    >>> df.loc["overall", ["accuracy", "f1"]]  # accuracy, macro-F1  # doctest: +SKIP
    >>> scgpt.pl.confusion(df)  # doctest: +SKIP
    """
    start = time.perf_counter()
    fn = "evaluate_annotation"
    check_adata(adata)
    for name, column in (("labels_key", labels_key), ("key", key)):
        if column not in adata.obs:
            raise KeyError(f"{fn}: {name}={column!r} is not a column of adata.obs.")
    if labels_key == key:
        raise ValueError(f"labels_key and key are the same column ({key!r}); the score would be 1 by design.")
    if key_added is not None:
        check_key_added(key_added, reads=(key,), slot="uns")
    no_truth = missing_values(adata.obs[labels_key])
    if no_truth.all():
        raise ValueError(f"No cell has a true label in {labels_key!r}.")
    if no_truth.any():
        first = adata.obs_names[np.flatnonzero(no_truth)[0]]
        warn(f"{int(no_truth.sum())} cells have no true label in {labels_key!r} (first: {first!r}); they are left out.")
    keep = ~no_truth
    true = adata.obs[labels_key].astype(str).to_numpy()[keep]
    no_pred = missing_values(adata.obs[key])[keep]
    pred = np.where(no_pred, NO_PREDICTION, adata.obs[key].astype(str).to_numpy()[keep])
    true_classes = sorted(set(true))
    if OVERALL in true_classes:
        raise ValueError(
            f"{fn}: {OVERALL!r} is a cell type in {labels_key!r}, and the name of the row of the scores over all "
            "cells; rename that cell type."
        )
    all_labels = true_classes + sorted(set(pred) - set(true_classes))
    conf = pd.crosstab(
        pd.Categorical(true, categories=true_classes), pd.Categorical(pred, categories=all_labels), dropna=False
    )
    conf.index = pd.Index(true_classes, dtype=object, name="true")
    conf.columns = pd.Index(all_labels, dtype=object, name="predicted")
    tp = np.diag(conf.loc[true_classes, true_classes]).astype(float)
    support = conf.sum(1).to_numpy(dtype=float)
    predicted = conf[true_classes].sum(0).to_numpy(dtype=float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    missing = conf[NO_PREDICTION].to_numpy() if NO_PREDICTION in conf.columns else np.zeros(len(true_classes), int)
    accuracy = float((true == pred).mean())
    table = pd.DataFrame(
        {
            "precision": [*precision, precision.mean()],
            "recall": [*recall, recall.mean()],
            "f1": [*f1, f1.mean()],
            "accuracy": [*recall, accuracy],
            "n_cells": [*support.astype(int), int(keep.sum())],
            "n_missing_predictions": [*missing.astype(int), int(no_pred.sum())],
        },
        index=pd.Index([*true_classes, OVERALL], dtype=object, name="cell type"),
    )
    table.attrs["confusion"] = {
        "data": conf.to_numpy().astype(int).tolist(),
        "index": list(true_classes),
        "columns": list(all_labels),
    }
    n_missing = int(no_pred.sum())
    missing_text = f", {n_missing} without a prediction (counted as errors)" if n_missing else ""
    logger.info(f"accuracy {accuracy:.3f}, macro-F1 {f1.mean():.3f} on {int(keep.sum())} cells{missing_text}")
    if key_added is None:
        log_added(start, [])
    else:
        warn_overwrite(adata, "uns", key_added)
        params = {"labels_key": labels_key, "key": key}
        record(
            adata, key_added, params, start=start, added=[], results=table, confusion=conf, evaluator=f"scgpt.tl.{fn}"
        )
    return table
