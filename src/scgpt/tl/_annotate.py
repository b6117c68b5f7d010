"""``scgpt.tl.annotate``: cell-type annotation by fine-tuning the classifier or by zero-shot reference mapping."""

from __future__ import annotations

import os
import time
import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .._anndata import actual_if_view, check_adata
from .._logging import log_added, logger
from ..model import ScGPT
from ._embed import compute_embeddings
from ._models import resolve_model

if TYPE_CHECKING:
    from anndata import AnnData

UNKNOWN = "unknown"


# ---------------------------------------------------------------------------- reference labels
def reference_labels(reference: AnnData, labels_key: str | None) -> tuple[AnnData, pd.Categorical]:
    """The labelled cells of the reference and their labels, with clear errors and warnings."""
    if reference is None:
        raise ValueError("Pass `reference=`, an AnnData of labelled cells, and `labels_key=`, its label column.")
    check_adata(reference, fn="annotate (reference)")
    if labels_key is None:
        raise ValueError("Pass `labels_key=`, the obs column of the reference holding cell-type labels.")
    if labels_key not in reference.obs:
        raise KeyError(
            f"labels_key={labels_key!r} is not a column of reference.obs (columns: {list(reference.obs.columns)})."
        )
    labels = reference.obs[labels_key]
    missing = labels.isna().to_numpy()
    if missing.all():
        raise ValueError(f"reference.obs[{labels_key!r}] holds no labels (all missing).")
    if missing.any():
        warnings.warn(
            f"{int(missing.sum())} reference cells have no label in {labels_key!r}; they are left out.",
            UserWarning,
            stacklevel=3,
        )
        reference = reference[~missing]
    cats = pd.Categorical(reference.obs[labels_key].astype(str))
    if len(cats.categories) < 2:
        raise ValueError(
            f"The reference has a single cell type ({cats.categories[0]!r}); annotation needs at least two."
        )
    counts = pd.Series(cats).value_counts()
    rare = counts[counts < 2]
    if len(rare):
        warnings.warn(
            f"{len(rare)} cell types have a single reference cell ({list(rare.index[:5])}); they are kept for "
            "training but cannot be represented in the validation split.",
            UserWarning,
            stacklevel=3,
        )
    return reference, cats


def stratified_split(codes: np.ndarray, validation_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded ``validation_size`` share of the cells goes to validation.

    Classes of a single cell stay in training.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(codes):
        idx = rng.permutation(np.flatnonzero(codes == c))
        n_val = int(round(len(idx) * validation_size)) if len(idx) > 1 else 0
        n_val = min(n_val, len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


# ---------------------------------------------------------------------------- fine-tuning
def finetune_classifier(
    model: ScGPT,
    reference: AnnData,
    labels_key: str,
    *,
    gene_key: str | None = None,
    layer: str | None = None,
    max_epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-4,
    max_length: int | None = None,
    freeze_layers: int = 0,
    validation_size: float = 0.1,
    early_stopping: bool = True,
    patience: int = 3,
    seed: int = 0,
    accelerator: str = "auto",
    devices: int | str = "auto",
    precision: str | int = "32-true",
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    **train_kwargs: Any,
) -> ScGPT:
    """A copy of ``model`` fine-tuned to classify cell types (official annotation recipe).

    The recipe of the scGPT annotation tutorial: classification loss only, nothing masked,
    expressed genes, ``<cls>`` value 0, Adam at ``lr`` 1e-4, batch 32, 10 epochs; here with a
    stratified validation split and early stopping on the validation loss.

    Parameters
    ----------
    model
        Pretrained model (not modified).
    reference
        Labelled cells (raw counts).
    labels_key
        ``reference.obs`` column with cell types.
    gene_key, layer
        Gene names and counts of the reference.
    max_epochs, batch_size, lr
        Training length and settings.
    max_length
        Tokens per cell (default: the recipe's 3001).
    freeze_layers
        Keep the gene/value encoders and the first ``freeze_layers`` transformer layers fixed (0: train all,
        as the tutorial).
    validation_size
        Share of each cell type held out for early stopping.
    early_stopping, patience
        Stop when the validation loss stops improving.
    seed
        Seed of the split, order and the new head's initialisation.
    accelerator, devices, precision, checkpoint_dir, progress, **train_kwargs
        Passed to :meth:`scgpt.model.ScGPT.train`.

    Returns
    -------
    The fine-tuned model; ``registry_['label_categories']`` lists its classes in output order.
    """
    import torch

    from ..data import AnnDataSource
    from ..train import get_recipe

    reference, cats = reference_labels(reference, labels_key)
    torch.manual_seed(seed)
    clf = model.adapt(n_cls=len(cats.categories))
    n_layers = clf.config.n_layers
    if not 0 <= freeze_layers <= n_layers:
        raise ValueError(f"freeze_layers must be between 0 and {n_layers}, got {freeze_layers}.")
    if freeze_layers:
        frozen = [clf.net.encoder, clf.net.value_encoder, *clf.net.transformer_encoder.layers[:freeze_layers]]
        for module in frozen:
            module.requires_grad_(False)
    source = AnnDataSource.matched(reference, clf.vocab, gene_key=gene_key, layer=layer, fn="annotate (reference)")
    codes = np.asarray(cats.codes, dtype=np.int64)
    recipe = get_recipe("annotation")
    if max_length is not None:
        recipe = recipe.replace(max_length=max_length)
    train_idx, val_idx = stratified_split(codes, validation_size if early_stopping else 0.0, seed)
    dm = clf.make_datamodule(
        source, recipe, batch_size=batch_size, seed=seed, obs={"labels": codes}, split=(train_idx, val_idx)
    )
    clf.registry_["label_categories"] = [str(c) for c in cats.categories]
    clf.registry_["labels_key"] = labels_key
    logger.info(
        f"fine-tuning the classifier on {len(train_idx)} reference cells ({len(val_idx)} for validation), "
        f"{len(cats.categories)} cell types"
    )
    clf.train(
        datamodule=dm,
        recipe=recipe,
        max_epochs=max_epochs,
        lr=lr,
        schedule="step",
        seed=seed,
        early_stopping=early_stopping and len(val_idx) > 0,
        early_stopping_patience=patience,
        accelerator=accelerator,
        devices=devices,
        precision=precision,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        **train_kwargs,
    )
    for p in clf.net.parameters():
        p.requires_grad_(True)
    return clf


def classify(
    model: ScGPT,
    adata: AnnData,
    *,
    gene_key: str | None = None,
    layer: str | None = None,
    max_length: int | None = None,
    batch_size: int = 64,
    device=None,
    progress: bool | None = None,
) -> np.ndarray:
    """Class probabilities ``(n_obs, n_classes)`` of a fine-tuned classifier (its ``registry_['label_categories']``)."""
    import torch

    if not model.config.n_cls or "label_categories" not in model.registry_:
        raise ValueError(
            "This model is not a fine-tuned cell-type classifier; pass `reference=` and `labels_key=` to fine-tune "
            "it, or method='knn'."
        )
    if max_length is None:
        max_length = int(model.registry_.get("last_recipe", {}).get("max_length", 3001))
    res = compute_embeddings(
        model,
        adata,
        gene_key=gene_key,
        layer=layer,
        max_length=max_length,
        batch_size=batch_size,
        device=device,
        progress=progress,
        fn="annotate",
        cls_value=0.0,
        head=lambda net, emb: torch.softmax(net.cls_decoder(emb).float(), -1),
        out_dim=model.config.n_cls,
        normalize=False,
    )
    return res.embeddings


# ---------------------------------------------------------------------------- k-NN reference mapping
def knn_vote(
    ref_emb: np.ndarray,
    ref_labels: pd.Categorical,
    query_emb: np.ndarray,
    *,
    n_neighbors: int = 10,
    backend: Literal["auto", "sklearn", "pynndescent", "faiss"] = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Majority label among the ``n_neighbors`` most cosine-similar reference cells, and its vote share.

    Ties go to the label with the larger summed similarity. ``backend="auto"`` uses exact search
    (scikit-learn) up to 200k reference cells, else pynndescent; ``"faiss"`` needs faiss installed.
    """
    k = min(n_neighbors, len(ref_emb))
    ref = ref_emb / np.maximum(np.linalg.norm(ref_emb, axis=1, keepdims=True), 1e-12)
    qry = query_emb / np.maximum(np.linalg.norm(query_emb, axis=1, keepdims=True), 1e-12)
    if backend == "auto":
        backend = "sklearn" if len(ref) <= 200_000 else "pynndescent"
    if backend == "sklearn":
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(ref)
        dist, idx = nn.kneighbors(qry)
        sim = 1 - dist
    elif backend == "pynndescent":
        from pynndescent import NNDescent

        index = NNDescent(ref, metric="cosine", n_neighbors=max(k, 15), random_state=0)
        idx, dist = index.query(qry, k=k)
        sim = 1 - dist
    elif backend == "faiss":
        try:
            import faiss
        except ImportError as e:
            raise ImportError("backend='faiss' needs faiss: pip install faiss-cpu (or faiss-gpu).") from e
        index = faiss.IndexFlatIP(ref.shape[1])
        index.add(np.ascontiguousarray(ref, dtype=np.float32))
        sim, idx = index.search(np.ascontiguousarray(qry, dtype=np.float32), k)
    else:
        raise ValueError(f"backend must be 'auto', 'sklearn', 'pynndescent' or 'faiss', got {backend!r}.")
    codes = np.asarray(ref_labels.codes)[idx]  # (n_query, k)
    n_cls = len(ref_labels.categories)
    votes = np.zeros((len(qry), n_cls))
    weight = np.zeros((len(qry), n_cls))
    rows = np.repeat(np.arange(len(qry)), k)
    np.add.at(votes, (rows, codes.ravel()), 1.0)
    np.add.at(weight, (rows, codes.ravel()), sim.ravel())
    best = np.argmax(votes + 1e-6 * weight / k, axis=1)  # similarity only breaks ties (it is < 1 per vote)
    return best, votes[np.arange(len(qry)), best] / k


# ---------------------------------------------------------------------------- the tool
def annotate(
    adata: AnnData,
    model: ScGPT | str | os.PathLike | None = None,
    *,
    reference: AnnData | None = None,
    labels_key: str | None = None,
    method: Literal["finetune", "knn"] = "finetune",
    key_added: str = "scgpt_celltype",
    min_confidence: float | None = None,
    unknown_label: str = UNKNOWN,
    gene_key: str | None = None,
    layer: str | None = None,
    n_neighbors: int = 10,
    use_rep: str | None = None,
    knn_backend: Literal["auto", "sklearn", "pynndescent", "faiss"] = "auto",
    batch_size: int = 64,
    max_length: int | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool | None = None,
    return_model: bool = False,
    copy: bool = False,
    **finetune_kwargs: Any,
) -> AnnData | ScGPT | tuple[AnnData, ScGPT] | None:
    """Annotate cell types with scGPT: fine-tuned classifier or zero-shot reference mapping.

    - ``method="finetune"``: fine-tune a copy of ``model`` as a classifier on ``reference`` (the
      official annotation recipe, see :func:`finetune_classifier`) and predict ``adata``. If
      ``model`` is already a fine-tuned classifier (e.g. returned with ``return_model=True``, saved
      and loaded), it predicts directly and ``reference`` is not needed.
    - ``method="knn"``: embed reference and query with :func:`scgpt.tl.embed` (no training) and
      take the majority label of the ``n_neighbors`` most cosine-similar reference cells, as the
      official reference-mapping tutorial.

    Parameters
    ----------
    adata
        Query cells (raw counts).
    model
        Pretrained or fine-tuned model, path, ``"demo"`` or ``None`` (``scgpt.settings.default_model``).
    reference
        Labelled reference cells (raw counts).
    labels_key
        ``reference.obs`` column with cell types.
    method
        ``"finetune"`` or ``"knn"``.
    key_added
        ``obs`` column written (and ``uns`` entry).
    min_confidence
        Cells whose confidence is below this get ``unknown_label`` (novel or ambiguous cells).
    unknown_label
        Label of low-confidence cells.
    gene_key, layer
        Gene names (``var`` column) and counts layer, for query and reference alike.
    n_neighbors
        Neighbours of the k-NN vote (official: 10).
    use_rep
        k-NN on an existing ``obsm`` embedding of both ``adata`` and ``reference`` instead of computing
        scGPT embeddings.
    knn_backend
        Nearest-neighbour search, see :func:`knn_vote`.
    batch_size, max_length, seed, device, progress
        Inference (and training) settings; results do not depend on ``batch_size``.
    return_model
        Also return the fine-tuned classifier (``method="finetune"``), to reuse or :meth:`~scgpt.model.ScGPT.save`.
    copy
        Return an annotated copy instead of writing to ``adata``.
    **finetune_kwargs
        Passed to :func:`finetune_classifier` (``max_epochs``, ``lr``, ``freeze_layers``, ``early_stopping``, ...).

    Returns
    -------
    ``None`` (or the copy with ``copy=True``; with ``return_model=True`` the fine-tuned model too). Sets

    ``adata.obs[key_added]`` : categorical
        Predicted cell type.
    ``adata.obs[f"{key_added}_confidence"]`` : float
        Class probability (``finetune``) or vote share (``knn``) of the prediction.
    ``adata.uns[key_added]`` : dict
        ``params`` and ``classes``.
    """
    start = time.perf_counter()
    if method not in ("finetune", "knn"):
        raise ValueError(f"method must be 'finetune' or 'knn', got {method!r}.")
    if return_model and method != "finetune":
        raise ValueError("return_model=True needs method='finetune'.")
    check_adata(adata, fn="annotate")
    adata = adata.copy() if copy else adata
    if not copy:
        actual_if_view(adata, fn="annotate")
    clf = None
    if method == "knn":
        if finetune_kwargs:
            raise TypeError(f"method='knn' takes no training options: {sorted(finetune_kwargs)}")
        reference, cats = reference_labels(reference, labels_key)
        if use_rep is not None:
            for who, a in (("adata", adata), ("reference", reference)):
                if use_rep not in a.obsm:
                    raise KeyError(f"use_rep={use_rep!r} is not in {who}.obsm.")
            ref_emb, qry_emb, model_name = np.asarray(reference.obsm[use_rep]), np.asarray(adata.obsm[use_rep]), None
        else:
            model_obj, model_name = resolve_model(model)
            kw = {
                "gene_key": gene_key, "layer": layer, "batch_size": batch_size, "seed": seed, "device": device,
                "progress": progress, "max_length": max_length or 1200,
            }  # fmt: skip
            logger.info(f"embedding {reference.n_obs} reference and {adata.n_obs} query cells")
            ref_emb = compute_embeddings(model_obj, reference, fn="annotate (reference)", **kw).embeddings
            qry_emb = compute_embeddings(model_obj, adata, fn="annotate", **kw).embeddings
        best, confidence = knn_vote(ref_emb, cats, qry_emb, n_neighbors=n_neighbors, backend=knn_backend)
        classes = [str(c) for c in cats.categories]
    else:
        model_obj, model_name = resolve_model(model)
        if reference is not None:
            clf = finetune_classifier(
                model_obj,
                reference,
                labels_key,
                gene_key=gene_key,
                layer=layer,
                seed=seed,
                max_length=max_length,
                progress=progress,
                **finetune_kwargs,
            )
        else:
            if finetune_kwargs:
                raise TypeError(f"Training options given but no `reference`: {sorted(finetune_kwargs)}")
            clf = model_obj
        probs = classify(
            clf,
            adata,
            gene_key=gene_key,
            layer=layer,
            max_length=max_length,
            batch_size=batch_size,
            device=device,
            progress=progress,
        )
        classes = list(clf.registry_["label_categories"])
        best, confidence = probs.argmax(1), probs.max(1)
    labels = np.asarray(classes, dtype=object)[best]
    if min_confidence is not None:
        low = confidence < min_confidence
        labels = np.where(low, unknown_label, labels)
        logger.info(f"    {int(low.sum())} cells below confidence {min_confidence} labelled {unknown_label!r}")
    order = classes + ([unknown_label] if min_confidence is not None and unknown_label not in classes else [])
    adata.obs[key_added] = pd.Categorical(labels, categories=order)
    adata.obs[f"{key_added}_confidence"] = confidence.astype(np.float32)
    adata.uns[key_added] = {
        "params": {
            "method": method,
            "model": model_name,
            "labels_key": labels_key,
            "min_confidence": min_confidence,
            "n_neighbors": n_neighbors if method == "knn" else None,
            "use_rep": use_rep,
            "seed": seed,
            "reference_cells": None if reference is None else int(reference.n_obs),
        },
        "classes": classes,
    }
    log_added(
        start,
        "",
        [
            f"'{key_added}', predicted cell types (adata.obs)",
            f"'{key_added}_confidence', confidence (adata.obs)",
            f"'{key_added}', parameters (adata.uns)",
        ],
    )
    out = adata if copy else None
    if return_model:
        return (out, clf) if copy else clf
    return out


# ---------------------------------------------------------------------------- evaluation
def evaluate_annotation(
    adata: AnnData, true_key: str, pred_key: str, *, key_added: str | None = None
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix of an annotation.

    Parameters
    ----------
    adata
        Annotated data with both label columns.
    true_key
        ``obs`` column with the true cell types.
    pred_key
        ``obs`` column with the predictions (e.g. ``"scgpt_celltype"``).
    key_added
        ``uns`` entry written (default ``f"{pred_key}_evaluation"``).

    Returns
    -------
    The metrics, also stored in ``adata.uns[key_added]``: ``accuracy``, ``macro_f1`` (over the true
    cell types; predictions of other labels, e.g. ``"unknown"``, count as errors), ``per_class``
    (DataFrame: precision, recall, f1, support), ``confusion`` (DataFrame, true x predicted counts) and
    ``n_cells``. Cells without a true label are left out.
    """
    for key in (true_key, pred_key):
        if key not in adata.obs:
            raise KeyError(f"{key!r} is not a column of adata.obs.")
    keep = adata.obs[true_key].notna().to_numpy() & adata.obs[pred_key].notna().to_numpy()
    if not keep.any():
        raise ValueError(f"No cell has both {true_key!r} and {pred_key!r}.")
    true = adata.obs[true_key].astype(str).to_numpy()[keep]
    pred = adata.obs[pred_key].astype(str).to_numpy()[keep]
    true_classes = sorted(set(true))
    all_labels = true_classes + sorted(set(pred) - set(true_classes))
    conf = pd.crosstab(
        pd.Categorical(true, categories=true_classes), pd.Categorical(pred, categories=all_labels), dropna=False
    )
    conf.index.name, conf.columns.name = "true", "predicted"
    tp = np.diag(conf.loc[true_classes, true_classes]).astype(float)
    support = conf.sum(1).to_numpy(dtype=float)
    predicted = conf[true_classes].sum(0).to_numpy(dtype=float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    per_class = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(int)},
        index=pd.Index(true_classes, name="cell type"),
    )
    metrics = {
        "accuracy": float((true == pred).mean()),
        "macro_f1": float(f1.mean()),
        "per_class": per_class,
        "confusion": conf,
        "n_cells": int(keep.sum()),
    }
    adata.uns[key_added or f"{pred_key}_evaluation"] = metrics
    logger.info(f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f} on {metrics['n_cells']} cells")
    return metrics
