"""Baselines of perturbation-response prediction, and the prediction format every predictor writes.

The four baselines that deep models must beat (Ahlmann-Eltze, Huber & Anders, Nat Methods 2025;
Csendes et al. 2025; Systema 2025): no change, the mean of the training perturbations, the additive
model of combinations and the linear model ``Y ~ G W P^T + b``. All work on pseudobulk profiles: the
mean over the cells of a perturbation of ``log1p(normalize_total(counts, 1e4))``.

A prediction is an AnnData with one row per requested perturbation (:func:`prediction_anndata`):
``X`` = predicted mean profile, ``layers["delta"]`` = prediction minus the control mean,
``var["control_mean"]`` and ``uns["perturbation_prediction"] = {"method": ..., "params": {...}}``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .._logging import caller, logger, named, warn
from ..data import log_normalized, parse_perturbation, perturbation_label, perturbation_labels

if TYPE_CHECKING:
    from anndata import AnnData

PREDICTION_KEY = "perturbation_prediction"
BaselineMethod = Literal["no_change", "train_mean", "additive", "linear"]
METHODS = ("no_change", "train_mean", "additive", "linear")


# ---------------------------------------------------------------------------- profiles
def _mean_by_label(X, labels: np.ndarray, order: Sequence[str]) -> np.ndarray:
    """Row means of ``X`` per label, in ``order`` (labels x genes, float64)."""
    import scipy.sparse as sp

    codes = pd.Categorical(labels, categories=list(order)).codes
    keep = codes >= 0
    indicator = sp.csr_matrix(
        (np.ones(int(keep.sum())), (codes[keep], np.flatnonzero(keep))), shape=(len(order), X.shape[0])
    )
    sizes = np.asarray(indicator.sum(1)).ravel()
    sums = indicator @ X
    sums = sums.toarray() if sp.issparse(sums) else np.asarray(sums)
    return sums / sizes[:, None]


@named()
def pseudobulk(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    labels: Sequence[str] | None = None,
    layer: str | None = None,
) -> pd.DataFrame:
    """Mean log-normalised profile of each perturbation label (the observed response).

    Parameters
    ----------
    adata
        The screen: counts (or log1p data marked by ``uns["log1p"]``, see :func:`log_normalized`).
    perturbation_key
        ``obs`` column with the perturbation labels.
    control
        Label of control cells (must occur).
    labels
        Labels to profile, in this order; ``None``: all labels present, control first, then sorted.
    layer
        Layer with the counts; ``None`` uses ``adata.X``.

    Returns
    -------
    DataFrame labels x genes (``var_names``) of means of ``log1p(normalize_total(counts, 1e4))``; the
    number of cells per label is in ``df.attrs["n_cells"]``.
    """
    obs_labels = perturbation_labels(adata, perturbation_key=perturbation_key, control=control)
    present = obs_labels.value_counts()
    order = [control, *sorted(set(present.index) - {control})] if labels is None else list(labels)
    unknown = [label for label in order if label not in present.index]
    if unknown:
        raise KeyError(_unknown_message(unknown, present.index, perturbation_key))
    cells = np.isin(obs_labels.to_numpy(), order)
    X = log_normalized(adata[cells] if not cells.all() else adata, layer=layer)
    means = _mean_by_label(X, obs_labels.to_numpy()[cells], order)
    df = pd.DataFrame(means, index=pd.Index(order, name=perturbation_key), columns=adata.var_names.copy())
    df.attrs["n_cells"] = {label: int(present[label]) for label in order}
    return df


def control_mean(
    adata: AnnData, *, perturbation_key: str = "perturbation", control: str = "control", layer: str | None = None
) -> pd.Series:
    """Mean log-normalised profile of the control cells, the reference of every delta.

    Parameters
    ----------
    adata
        The screen (see :func:`pseudobulk`).
    perturbation_key
        ``obs`` column with the perturbation labels.
    control
        Label of control cells (must occur).
    layer
        Layer with the counts; ``None`` uses ``adata.X``.

    Returns
    -------
    Series over ``var_names``: the mean of ``log1p(normalize_total(counts, 1e4))`` over the control cells.
    """
    df = pseudobulk(adata, perturbation_key=perturbation_key, control=control, labels=[control], layer=layer)
    return df.loc[control].rename(control)


def _unknown_message(unknown: Sequence[str], present, key: str) -> str:
    fn = caller()
    shown = ", ".join(repr(s) for s in list(unknown)[:5]) + (" ..." if len(unknown) > 5 else "")
    available = ", ".join(repr(s) for s in sorted(present)[:10]) + (" ..." if len(present) > 10 else "")
    return f"{fn}: unknown perturbation label(s) {shown}: not in adata.obs[{key!r}] (labels: {available})."


# ---------------------------------------------------------------------------- the prediction format
def prediction_anndata(
    X: np.ndarray,
    perturbations: Sequence[str],
    var_names: Sequence[str],
    control_mean: np.ndarray | pd.Series,
    params: dict[str, Any],
    *,
    method: str | None = None,
    perturbation_key: str = "perturbation",
) -> AnnData:
    """The AnnData every perturbation predictor returns (baselines and the scGPT model alike).

    Parameters
    ----------
    X
        Predicted mean profiles, perturbations x genes, in ``log1p(normalize_total(counts, 1e4))`` space.
    perturbations
        Names of the rows (``"JAK2"``, ``"JAK2+STAT1"``), unique.
    var_names
        Genes of the columns.
    control_mean
        Mean control profile (array over ``var_names``, or a Series indexed by gene names).
    params
        Parameters of the call, stored in ``uns["perturbation_prediction"]["params"]``.
    method
        Name of the predictor (default ``params["method"]``).
    perturbation_key
        ``obs`` column that repeats the row names (the column name pertpy and cell-eval read).

    Returns
    -------
    AnnData with ``X`` (float64), ``obs_names`` = ``perturbations``, ``obs[perturbation_key]``,
    ``obs["n_targets"]`` (genes in the label), ``var["control_mean"]``, ``layers["delta"]`` = ``X`` minus the
    control mean, and ``uns["perturbation_prediction"] = {"method": method, "params": params}``.
    """
    from anndata import AnnData

    X = np.asarray(X, dtype=np.float64)
    names = [str(p) for p in perturbations]
    var_names = pd.Index([str(g) for g in var_names])
    if X.shape != (len(names), len(var_names)):
        raise ValueError(f"prediction_anndata: X has shape {X.shape}, expected ({len(names)}, {len(var_names)}).")
    if len(set(names)) < len(names):
        raise ValueError("prediction_anndata: the perturbation names are not unique.")
    if isinstance(control_mean, pd.Series):
        missing = var_names.difference(control_mean.index)
        if len(missing):
            raise ValueError(f"prediction_anndata: control_mean lacks {len(missing)} genes (first: {missing[0]!r}).")
        ctrl = control_mean.reindex(var_names).to_numpy(dtype=np.float64)
    else:
        ctrl = np.asarray(control_mean, dtype=np.float64).ravel()
        if ctrl.shape != (len(var_names),):
            raise ValueError(f"prediction_anndata: control_mean has {ctrl.size} values for {len(var_names)} genes.")
    obs = pd.DataFrame({perturbation_key: names}, index=pd.Index(names))
    obs["n_targets"] = [len(n.split("+")) for n in names]
    adata = AnnData(X=X, obs=obs, var=pd.DataFrame({"control_mean": ctrl}, index=var_names))
    adata.layers["delta"] = X - ctrl[None, :]
    adata.uns[PREDICTION_KEY] = {"method": method or params.get("method", "prediction"), "params": dict(params)}
    return adata


# ---------------------------------------------------------------------------- the baselines
def _requested(perturbations, control: str) -> list[str]:
    if isinstance(perturbations, str):
        perturbations = [perturbations]
    names = [perturbation_label(p, control=control) for p in perturbations]
    if not names:
        raise ValueError("perturbation_baseline: no perturbations requested.")
    if control in names:
        raise ValueError(f"perturbation_baseline: the control label {control!r} is not a perturbation to predict.")
    if len(set(names)) < len(names):
        raise ValueError("perturbation_baseline: a perturbation is requested twice.")
    return names


def _training_labels(train, obs_labels: pd.Series, requested: list[str], control: str, key: str) -> list[str]:
    present = set(obs_labels.unique())
    if train is None:
        return sorted(present - {control} - set(requested))
    train = [perturbation_label(t, control=control) for t in ([train] if isinstance(train, str) else train)]
    if control in train:
        raise ValueError(f"perturbation_baseline: train lists the control label {control!r}; list perturbations only.")
    unknown = [t for t in train if t not in present]
    if unknown:
        raise KeyError(_unknown_message(unknown, present, key))
    leaked = sorted(set(train) & set(requested))
    if leaked:
        warn(
            f"perturbation_baseline: train= holds {len(leaked)} of the perturbations to predict "
            f"({', '.join(leaked[:5])}{', ...' if len(leaked) > 5 else ''}): their measured profiles enter the "
            "prediction (leakage), so an evaluation of them overstates the baseline; leave them out of train "
            "(train=None does)."
        )
    return sorted(set(train))


@named()
def perturbation_baseline(
    adata: AnnData,
    perturbations: Sequence[str] | Sequence[Sequence[str]],
    *,
    method: BaselineMethod = "no_change",
    perturbation_key: str = "perturbation",
    control: str = "control",
    train: Sequence[str] | None = None,
    gene_embeddings: pd.DataFrame | None = None,
    n_components: int = 10,
    ridge: float = 0.1,
    seed: int = 0,
    layer: str | None = None,
) -> AnnData:
    """Predict perturbation responses with a baseline (the bar every deep model must clear).

    Profiles are pseudobulk means of ``log1p(normalize_total(counts, 1e4))`` (:func:`pseudobulk`); a
    perturbation's delta is its profile minus the control mean.

    Parameters
    ----------
    adata
        The screen: counts, with the target gene(s) of each cell in ``obs[perturbation_key]`` (one gene
        or several joined by ``"+"``) and control cells labelled ``control``.
    perturbations
        Perturbations to predict: labels (``"JAK2"``, ``"JAK2+STAT1"``) or gene lists (``["JAK2", "STAT1"]``);
        they need not occur in ``adata``.
    method
        - ``"no_change"``: the control mean.
        - ``"train_mean"``: the control mean plus the mean delta of the training perturbations (each
          perturbation weighs the same, whatever its number of cells), i.e. the mean training profile.
        - ``"additive"``: the control mean plus the sum of the observed deltas of the target genes'
          single perturbations in training (Norman-style combinations; a single seen in training gets its
          observed delta). A target gene without a single perturbation in training adds no change, with a
          warning: an unseen single is predicted as ``no_change``.
        - ``"linear"``: Ahlmann-Eltze et al.'s linear model ``Y ~ G W P^T + b``. ``Y`` = training
          pseudobulk (genes x training perturbations); ``b`` = its row means (the ``train_mean`` profile,
          the paper's centring); ``G`` = gene embedding, genes x K: the first K principal-component
          scores of the genes in ``Y - b`` (genes as observations, training perturbations as variables),
          or ``gene_embeddings``; ``P`` = perturbation embedding = the row of ``G`` of the target gene
          (the sum of rows for combinations); ``W`` = ridge solution
          ``(G^T G + ridge I)^-1 G^T (Y - b) P (P^T P + ridge I)^-1``. Prediction ``G W p + b``. A target
          gene with no row in ``G`` contributes nothing, with a warning: a perturbation none of whose
          genes has an embedding is predicted as ``train_mean``; training perturbations without one
          still shape ``b`` and the PCA but not ``W``.
    perturbation_key
        ``obs`` column with the perturbation labels.
    control
        Label of control cells.
    train
        Perturbation labels to learn from; ``None``: every non-control label in ``adata`` except those
        requested. Unknown labels are an error. Not used by ``"no_change"``.
    gene_embeddings
        ``"linear"`` only: a DataFrame genes x d (index = gene names, e.g. scGPT's gene embeddings) used as
        ``G`` instead of the PCA. Genes are matched by name. Genes of ``adata`` missing from it get a zero
        row (their prediction is the ``train_mean`` profile; warned); the perturbation embedding reads any
        gene of the DataFrame, also genes outside ``adata``, so targets outside the measured panel can be
        predicted. The ridge penalty acts on the embedding's own scale.
    n_components
        ``"linear"`` with PCA: K, at most the number of training perturbations minus one (reduced with a
        warning).
    ridge
        ``"linear"``: the ridge penalty (the paper's 0.1).
    seed
        Recorded for reproducibility; every baseline is deterministic (exact SVD).
    layer
        Layer with the counts; ``None`` uses ``adata.X``.

    Returns
    -------
    AnnData, one row per requested perturbation (``obs_names`` = the labels, gene lists joined by ``"+"``),
    genes = ``adata.var_names``: ``X`` = predicted mean profile, ``layers["delta"]`` = prediction minus
    the control mean, ``var["control_mean"]``, ``uns["perturbation_prediction"]`` = ``{"method": method,
    "params": {...}}`` (see :func:`prediction_anndata`). Score it with :func:`scgpt.tl.evaluate_perturbation`.

    Examples
    --------
    >>> split = scgpt.data.split_perturbations(adata.obs["perturbation"], seed=0)
    >>> preds = {
    ...     m: scgpt.tl.perturbation_baseline(adata, split.test, method=m, train=split.train)
    ...     for m in ("no_change", "train_mean", "linear")
    ... }
    >>> scgpt.tl.evaluate_perturbation(adata, preds)
    """
    start = time.perf_counter()
    fn = "perturbation_baseline"
    if method not in METHODS:
        raise ValueError(f"{fn}: method must be one of {METHODS}, got {method!r}.")
    if gene_embeddings is not None and method != "linear":
        raise ValueError(f"{fn}: gene_embeddings applies to method='linear' only.")
    if ridge < 0:
        raise ValueError(f"{fn}: ridge must be non-negative, got {ridge}.")
    if method == "linear" and (isinstance(n_components, bool) or not isinstance(n_components, int | np.integer)
                               or n_components < 1):  # fmt: skip
        raise ValueError(
            f"{fn}: n_components must be a positive integer (gene embedding dimensions), got {n_components!r}."
        )
    obs_labels = perturbation_labels(adata, perturbation_key=perturbation_key, control=control)
    requested = _requested(perturbations, control)
    train_labels = (
        [] if method == "no_change" else _training_labels(train, obs_labels, requested, control, perturbation_key)
    )
    if method != "no_change" and not train_labels:
        raise ValueError(f"{fn}: method={method!r} needs training perturbations and there are none.")
    profiles = pseudobulk(
        adata, perturbation_key=perturbation_key, control=control, labels=[control, *train_labels], layer=layer
    )
    ctrl = profiles.loc[control].to_numpy()
    deltas = profiles.loc[train_labels].to_numpy() - ctrl
    params: dict[str, Any] = {
        "method": method,
        "perturbation_key": perturbation_key,
        "control": control,
        "train": list(train_labels),
        "layer": layer,
        "seed": seed,
    }
    if method == "no_change":
        pred_delta = np.zeros((len(requested), adata.n_vars))
    elif method == "train_mean":
        pred_delta = np.tile(deltas.mean(0), (len(requested), 1))
    elif method == "additive":
        pred_delta = _additive(deltas, train_labels, requested, control)
    else:
        pred_delta, info = _linear(
            profiles.loc[train_labels], train_labels, requested, control, ctrl, gene_embeddings, n_components, ridge
        )
        params.update({"n_components": n_components, "ridge": ridge, **info})
    pred = prediction_anndata(
        ctrl[None, :] + pred_delta, requested, adata.var_names, ctrl, params, perturbation_key=perturbation_key
    )
    logger.info(
        f"{fn}: {method} predictions of {len(requested)} perturbations from {len(train_labels)} training perturbations "
        f"({time.perf_counter() - start:.1f}s)"
    )
    return pred


def _additive(deltas: np.ndarray, train: list[str], requested: list[str], control: str) -> np.ndarray:
    singles = {}
    for label, delta in zip(train, deltas):
        genes = parse_perturbation(label, control=control)
        if len(genes) == 1:
            singles[genes[0]] = delta
    out = np.zeros((len(requested), deltas.shape[1]))
    unseen: dict[str, list[str]] = {}
    for i, label in enumerate(requested):
        for gene in parse_perturbation(label, control=control):
            if gene in singles:
                out[i] += singles[gene]
            else:
                unseen.setdefault(gene, []).append(label)
    if unseen:
        warn(
            f"perturbation_baseline(method='additive'): {len(unseen)} target gene(s) have no single perturbation in "
            f"training ({_examples(unseen)}); they add no change (an unseen single is predicted as no_change)."
        )
    return out


def _examples(missing: dict[str, list[str]]) -> str:
    items = [  # "ATF2", not "ATF2 in ATF2": a label is named only when it is a combination
        g if labels == [g] else f"{g} in {', '.join(labels[:2])}" for g, labels in list(missing.items())[:5]
    ]
    return "; ".join(items) + (" ..." if len(missing) > 5 else "")


def _pca_gene_embedding(centred: np.ndarray, n_components: int) -> tuple[np.ndarray, int]:
    """PCA scores of the genes (rows) of ``centred`` (genes x perturbations), first K components."""
    n_perts = centred.shape[1]
    k = min(n_components, n_perts - 1, centred.shape[0])
    if k < n_components:
        warn(
            f"perturbation_baseline(method='linear'): n_components={n_components} exceeds what {n_perts} training "
            f"perturbations support; {k} components are used."
        )
    cols = centred - centred.mean(0, keepdims=True)
    u, s, _ = np.linalg.svd(cols, full_matrices=False)
    return u[:, :k] * s[:k], k


def _embedding_lookup(
    train_profiles: pd.DataFrame, gene_embeddings: pd.DataFrame | None, centred: np.ndarray, n_components: int
) -> tuple[np.ndarray, pd.DataFrame, dict[str, Any]]:
    """``G`` (genes of ``adata`` x d) and the table the perturbation embedding reads (gene name -> row)."""
    genes = train_profiles.columns
    if gene_embeddings is None:
        G, k = _pca_gene_embedding(centred, n_components)
        return G, pd.DataFrame(G, index=genes), {"gene_embeddings": "pca", "n_components_used": k}
    if not isinstance(gene_embeddings, pd.DataFrame):
        raise TypeError("perturbation_baseline: gene_embeddings must be a DataFrame, genes (index) x dimensions.")
    table = gene_embeddings.astype(np.float64)
    table.index = table.index.astype(str)
    if not table.index.is_unique:
        raise ValueError("perturbation_baseline: gene_embeddings has duplicated gene names in its index.")
    if not np.isfinite(table.to_numpy()).all():
        raise ValueError("perturbation_baseline: gene_embeddings holds NaN or infinite values.")
    absent = genes.difference(table.index)
    if len(absent) == len(genes):
        raise ValueError("perturbation_baseline: no gene of adata.var_names is in the index of gene_embeddings.")
    if len(absent):
        warn(
            f"perturbation_baseline(method='linear'): {len(absent)} of {len(genes)} genes have no row in "
            f"gene_embeddings (first: {absent[0]!r}); their prediction is the train_mean profile."
        )
    G = table.reindex(genes).fillna(0.0).to_numpy()
    info = {
        "gene_embeddings": f"DataFrame ({table.shape[0]} genes x {table.shape[1]})",
        "genes_without_embedding": len(absent),
    }
    return G, table, info


def _perturbation_embedding(labels: list[str], table: pd.DataFrame, control: str) -> tuple[np.ndarray, dict]:
    """Rows of ``table`` summed over each label's genes; genes not in ``table`` contribute zero (returned)."""
    P = np.zeros((len(labels), table.shape[1]))
    missing: dict[str, list[str]] = {}
    for i, label in enumerate(labels):
        for gene in parse_perturbation(label, control=control):
            if gene in table.index:
                P[i] += table.loc[gene].to_numpy()
            else:
                missing.setdefault(gene, []).append(label)
    return P, missing


def _linear(
    train_profiles: pd.DataFrame,
    train: list[str],
    requested: list[str],
    control: str,
    ctrl: np.ndarray,
    gene_embeddings: pd.DataFrame | None,
    n_components: int,
    ridge: float,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Delta predictions of the linear model (see :func:`perturbation_baseline`) and what to record."""
    if len(train) < 2 and gene_embeddings is None:
        raise ValueError("perturbation_baseline(method='linear'): the PCA needs at least two training perturbations.")
    Y = train_profiles.to_numpy().T  # genes x perturbations
    b = Y.mean(1, keepdims=True)
    G, table, info = _embedding_lookup(train_profiles, gene_embeddings, Y - b, n_components)
    P_train, missing_train = _perturbation_embedding(train, table, control)
    P_test, missing_test = _perturbation_embedding(requested, table, control)
    where = "the PCA gene embedding (adata.var_names)" if gene_embeddings is None else "gene_embeddings"
    if missing_train:
        warn(
            f"perturbation_baseline(method='linear'): {len(missing_train)} training target gene(s) are not in {where} "
            f"({_examples(missing_train)}); those perturbations inform b but not W."
        )
    if missing_test:
        warn(
            f"perturbation_baseline(method='linear'): {len(missing_test)} requested target gene(s) are not in {where} "
            f"({_examples(missing_test)}); they contribute nothing (a perturbation without any is predicted as "
            "train_mean)."
        )
    d = G.shape[1]
    left = np.linalg.pinv(G.T @ G + ridge * np.eye(d)) @ G.T  # d x genes (pinv: also ridge=0)
    right = P_train @ np.linalg.pinv(P_train.T @ P_train + ridge * np.eye(d))  # perturbations x d
    W = left @ (Y - b) @ right
    pred = (G @ W @ P_test.T + b).T  # requested x genes
    info["targets_without_embedding"] = sorted(set(missing_test) | set(missing_train))
    return pred - ctrl[None, :], info
