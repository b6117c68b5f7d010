"""Scores of perturbation-response predictions against the observed screen (the metrics the field now requires).

Pearson of deltas against the control and against the mean perturbed profile (Systema), on all genes and
on the top differentially expressed genes, MSE on the 1,000 most expressed genes (Ahlmann-Eltze et al.)
and direction accuracy; raw-expression Pearson comes last, since the mean profile alone makes it high.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._docs import doc_params
from .._face import record, warn_overwrite
from .._logging import describing, log_added, logger, named, warn
from ..data import check_adata, log_normalized, perturbation_label, perturbation_labels, rank_genes_vs_control
from ._perturbation_baselines import PREDICTION_KEY, _mean_by_label, _unknown_message

if TYPE_CHECKING:
    from anndata import AnnData

METRICS = (
    "pearson_delta",
    "pearson_delta_de",
    "pearson_delta_pertmean",
    "mse_top1000",
    "direction_de",
    "pearson_raw",
)
MEAN_ROW = "mean"
EVALUATOR = "scgpt.tl.evaluate_perturbation"
DE_METHOD = "t-test"
#: Changes at most this large (log1p units) count as no change: Pearson of such a vector is 0, its sign 0.
ZERO_TOL = 1e-6


# ---------------------------------------------------------------------------- metric kernels
def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0.0 when either vector is constant (a prediction of no change has no direction).

    A vector is constant when all its values lie within :data:`ZERO_TOL` of their mean. Returns NaN for
    fewer than two values.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    if np.abs(xc).max() <= ZERO_TOL or np.abs(yc).max() <= ZERO_TOL:
        return 0.0
    return float(np.clip((xc @ yc) / np.sqrt((xc @ xc) * (yc @ yc)), -1.0, 1.0))


def _sign(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) <= ZERO_TOL, 0, np.sign(x))


def direction_accuracy(pred_delta: np.ndarray, true_delta: np.ndarray) -> float:
    """Share of genes whose predicted change has the observed sign (a predicted zero is wrong unless truth is zero)."""
    if len(pred_delta) == 0:
        return float("nan")
    return float(np.mean(_sign(pred_delta) == _sign(true_delta)))


# ---------------------------------------------------------------------------- DE genes
@doc_params()
@named()
def perturbation_de_genes(
    adata: AnnData,
    perturbations: Sequence[str] | None = None,
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    n_de: int = 20,
    layer: str | None = None,
) -> dict[str, list[str]]:
    """Top differentially expressed genes of each perturbation against the control cells.

    scanpy's ``rank_genes_groups(method="t-test", rankby_abs=True)`` (Welch t-test, the test GEARS uses for its
    top-20 DE genes) on ``log1p(normalize_total(counts, 1e4))``, each perturbation against the control cells,
    genes ranked by absolute score. A perturbation (or control) of one cell is ranked by absolute mean
    difference. :func:`evaluate_perturbation` scores on the same genes.

    Parameters
    ----------
    adata
        The screen: counts with ``obs[perturbation_key]``.
    perturbations
        Labels to rank (``None``: every non-control label present).
    {perturbation_key}
    {control}
    n_de
        Genes returned per perturbation.
    {layer}

    Returns
    -------
    Perturbation label -> the ``n_de`` top genes (``var_names``), strongest first: a lookup of gene lists (the
    ``de_genes`` that :func:`evaluate_perturbation` returns in ``df.attrs`` and :func:`scgpt.pl.perturbation`
    takes), not a table of scores, so not a DataFrame.
    """
    labels = perturbation_labels(adata, perturbation_key=perturbation_key, control=control)
    present = set(labels.unique()) - {control}
    groups = (
        sorted(present) if perturbations is None else [perturbation_label(p, control=control) for p in perturbations]
    )
    unknown = [g for g in groups if g not in present]
    if unknown:
        raise KeyError(_unknown_message(unknown, present, perturbation_key))
    cells = labels.isin([control, *groups]).to_numpy()
    X = log_normalized(adata[cells] if not cells.all() else adata, layer=layer)
    ranked = rank_genes_vs_control(X, labels.to_numpy()[cells], groups, control, n_genes=n_de)
    return {g: list(adata.var_names[ranked[g]]) for g in groups}


# ---------------------------------------------------------------------------- the evaluation
def _predictions(pred, methods) -> dict[str, AnnData]:
    from anndata import AnnData

    if isinstance(pred, AnnData):
        name = str(pred.uns.get(PREDICTION_KEY, {}).get("method", "prediction"))
        preds = {name: pred}
    elif isinstance(pred, Mapping):
        preds = {str(k): v for k, v in pred.items()}
    else:
        raise TypeError(
            f"evaluate_perturbation: pred must be a prediction AnnData or a dict method -> AnnData, got {type(pred)}."
        )
    if not preds:
        raise ValueError("evaluate_perturbation: no predictions given.")
    if methods is not None:
        methods = [methods] if isinstance(methods, str) else list(methods)
        if len(preds) == 1 and len(methods) == 1 and isinstance(pred, AnnData):
            preds = {methods[0]: next(iter(preds.values()))}  # a single prediction renamed
        unknown = [m for m in methods if m not in preds]
        if unknown:
            raise KeyError(f"evaluate_perturbation: methods {unknown} are not among the predictions ({list(preds)}).")
        preds = {m: preds[m] for m in methods}
    for name, p in preds.items():
        with describing(f"prediction {name!r}"):
            check_adata(p)
    return preds


def _aligned_rows(name: str, p: AnnData, var_names: pd.Index, present: set[str], control: str, key: str):
    """Labels and predicted profiles (rows aligned to ``var_names``) of one prediction; control rows dropped."""
    import scipy.sparse as sp

    missing = var_names.difference(p.var_names)
    if len(missing):
        raise ValueError(
            f"evaluate_perturbation: prediction {name!r} lacks {len(missing)} of the {len(var_names)} scored genes "
            f"(first: {missing[0]!r}); pass genes= (the predicted genes) to score on those only."
        )
    if not p.obs_names.is_unique:
        raise ValueError(f"evaluate_perturbation: prediction {name!r} has duplicated perturbation names.")
    labels = [perturbation_label(s, control=control) for s in p.obs_names]
    keep = [i for i, s in enumerate(labels) if s != control]
    unknown = [labels[i] for i in keep if labels[i] not in present]
    if unknown:
        with describing(f"prediction {name!r}"):
            message = _unknown_message(unknown, present, key)
        raise KeyError(message + " Only perturbations with observed cells can be scored.")
    X = p[:, var_names].X
    X = X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    X = X[keep].astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if len(bad):
        raise ValueError(
            f"evaluate_perturbation: prediction {name!r} holds NaN or infinite values for {len(bad)} of the "
            f"{len(keep)} perturbations (first: {labels[keep[bad[0]]]!r}); a NaN prediction cannot be scored (was "
            "the model's training diverged?). Drop those rows to score the others: pred[np.isfinite(pred.X).all(1)]."
        )
    return [labels[i] for i in keep], X


def _score(y: np.ndarray, t: np.ndarray, ctrl: np.ndarray, pertmean: np.ndarray, de: np.ndarray, top: np.ndarray):
    dy, dt = y - ctrl, t - ctrl
    return {
        "pearson_delta": pearson(dy, dt),
        "pearson_delta_de": pearson(dy[de], dt[de]),
        "pearson_delta_pertmean": pearson(y - pertmean, t - pertmean),
        "mse_top1000": float(np.mean((y[top] - t[top]) ** 2)),
        "direction_de": direction_accuracy(dy[de], dt[de]),
        "pearson_raw": pearson(y, t),
    }


def _warn_leakage(preds: Mapping[str, AnnData], rows: Mapping[str, tuple[list[str], object]]) -> None:
    """Warn when a prediction was made from training perturbations that it is scored on (leakage)."""
    for name, p in preds.items():
        entry = p.uns.get("perturbation_prediction")
        params = entry.get("params") if isinstance(entry, Mapping) else None
        train = params.get("train") if isinstance(params, Mapping) else None
        if train is None or isinstance(train, str):
            continue
        leaked = sorted(set(map(str, train)) & set(rows[name][0]))
        if leaked:
            warn(
                f"evaluate_perturbation: prediction {name!r} was trained on {len(leaked)} of the perturbations it is "
                f"scored on ({', '.join(leaked[:5])}{', ...' if len(leaked) > 5 else ''}): leakage, its scores on "
                "them are not those of unseen perturbations; predict from a train= that leaves them out."
            )


@doc_params()
@named()
def evaluate_perturbation(
    adata: AnnData,
    pred: AnnData | Mapping[str, AnnData],
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    n_de: int = 20,
    methods: Sequence[str] | str | None = None,
    genes: Sequence[str] | None = None,
    layer: str | None = None,
    key_added: str | None = None,
) -> pd.DataFrame:
    """Score perturbation predictions against the observed screen, per perturbation and method.

    The observed profile of a perturbation is the mean of ``log1p(normalize_total(counts, 1e4))`` over its
    cells; the control profile is the mean over the control cells of ``adata``; deltas are profiles minus
    the control profile, for predictions and truth alike.

    Parameters
    ----------
    adata
        The observed screen: counts with ``obs[perturbation_key]``; every predicted perturbation must
        have cells in it.
    pred
        One prediction AnnData (:func:`scgpt.tl.perturbation_baseline` format: one row per perturbation,
        ``X`` = predicted mean profile) or a dict method name -> prediction. Predictions must cover the
        scored genes (extra genes are ignored); a row named like the control is ignored.
    {perturbation_key}
    {control}
    n_de
        Number of top differentially expressed genes per perturbation (:func:`perturbation_de_genes`:
        t-test against the control cells, ranked by absolute score; computed once per perturbation and
        shared by all methods).
    methods
        Which predictions of the dict to score, in this order (``None``: all). For a single AnnData, one
        name to label it with (default: its ``uns["perturbation_prediction"]["method"]``, else
        ``"prediction"``).
    genes
        Genes to score on (``None``: all of ``adata.var_names``), e.g. the genes a model predicts.
        Profiles are still normalised over all genes of ``adata`` (do not subset ``adata`` instead: that
        changes ``normalize_total``); DE genes and the top-1000 genes are chosen among these genes.
    {layer}
    {eval_key_added}

    Returns
    -------
    A tidy DataFrame, one row per (method, perturbation), with columns ``method``, ``perturbation``,
    ``n_cells`` (observed cells) and the metrics:

    - ``pearson_delta``: Pearson of predicted and observed deltas over all genes;
    - ``pearson_delta_de``: the same over the top ``n_de`` DE genes of the perturbation;
    - ``pearson_delta_pertmean``: Pearson of profiles minus the mean perturbed profile (the mean over all
      non-control labels of ``adata`` of their profiles, each label weighing the same: Systema's reference,
      which removes the shift shared by all perturbations);
    - ``mse_top1000``: mean squared error of the profiles over the 1,000 genes with the highest control mean
      (all genes when fewer);
    - ``direction_de``: share of the DE genes whose predicted delta has the observed sign;
    - ``pearson_raw``: Pearson of the profiles themselves; high for any prediction near the mean
      profile, never a headline number.

    Pearson of a constant vector (a ``no_change`` prediction's deltas, all within ``1e-6``) is 0.0, not NaN:
    such a prediction carries no direction. A predicted delta within ``1e-6`` of zero counts as a wrong
    direction unless the observed one is also zero. After the rows of each method comes a row with
    ``perturbation == "mean"``: the mean of each metric over all of that method's perturbations (NaN where the
    metric is undefined, e.g. ``pearson_delta_de`` with ``n_de=1``) and the total ``n_cells``. Predictions with NaN
    or infinite values are refused (a diverged model), not left out of the mean. ``df.attrs`` holds
    ``de_genes`` (perturbation -> DE genes), ``n_de``,
    ``de_method`` and ``top1000_genes``. With ``key_added``:

    ``adata.uns[key_added]`` : dict
        ``params`` (``perturbation_key``, ``control``, ``n_de``, ``methods``, ``genes``, ``layer``), ``results``
        (the DataFrame), ``de_genes``, ``de_method`` and ``top1000_genes`` (as in ``df.attrs``) and
        ``evaluator`` (``"scgpt.tl.evaluate_perturbation"``).

    Examples
    --------
    >>> df = scgpt.tl.evaluate_perturbation(adata, {"linear": lin, "train_mean": mean})
    >>> df[df.perturbation == "mean"].set_index("method")[["pearson_delta", "pearson_delta_pertmean"]]
    """
    start = time.perf_counter()
    _check_order(adata)
    check_adata(adata)
    if n_de < 1:
        raise ValueError(f"evaluate_perturbation: n_de must be positive, got {n_de}.")
    preds = _predictions(pred, methods)
    labels = perturbation_labels(adata, perturbation_key=perturbation_key, control=control)
    present = sorted(set(labels.unique()) - {control})
    if not present:
        raise ValueError("evaluate_perturbation: adata holds control cells only; there is nothing to score.")
    gene_names = _scored_genes(adata, genes)
    cols = adata.var_names.get_indexer(gene_names)
    rows = {
        name: _aligned_rows(name, p, gene_names, set(present), control, perturbation_key) for name, p in preds.items()
    }
    scored = sorted({s for names, _ in rows.values() for s in names})
    if not scored:
        raise ValueError("evaluate_perturbation: the predictions hold no perturbation (only control rows).")
    X = log_normalized(adata, layer=layer)
    order = [control, *present]
    profiles = _mean_by_label(X, labels.to_numpy(), order)[:, cols]
    profile_of = dict(zip(order, profiles))
    ctrl, pertmean = profile_of[control], profiles[1:].mean(0)
    n_cells = labels.value_counts()
    ranked = _de_positions(X, labels.to_numpy(), scored, control, n_de, cols)
    top = np.argsort(-ctrl, kind="stable")[: min(1000, len(cols))]
    records = []
    for name, (names, Y) in rows.items():
        method_rows = [
            {
                "method": name,
                "perturbation": s,
                "n_cells": int(n_cells[s]),
                **_score(y, profile_of[s], ctrl, pertmean, ranked[s], top),
            }
            for s, y in zip(names, Y)
        ]
        if not method_rows:
            warn(f"evaluate_perturbation: prediction {name!r} holds control rows only; it gets no rows.")
            continue
        frame = pd.DataFrame(method_rows)
        mean = {
            "method": name,
            "perturbation": MEAN_ROW,
            "n_cells": int(frame["n_cells"].sum()),
            **frame[list(METRICS)].mean(skipna=False).to_dict(),  # a metric undefined for one is undefined here
        }
        records += [*method_rows, mean]
    df = pd.DataFrame(records, columns=["method", "perturbation", "n_cells", *METRICS])
    _warn_differing_sets(rows)
    _warn_leakage(preds, rows)
    _warn_degenerate_pertmean(df)
    df.attrs.update(
        {
            "de_genes": {s: list(gene_names[ranked[s]]) for s in scored},
            "n_de": n_de,
            "de_method": DE_METHOD,
            "top1000_genes": list(gene_names[top]),
        }
    )
    _log_summary(df)
    if key_added is None:
        log_added(start, [])
    else:
        warn_overwrite(adata, "uns", key_added)
        params = {
            "perturbation_key": perturbation_key,
            "control": control,
            "n_de": n_de,
            "methods": None if methods is None else ([methods] if isinstance(methods, str) else list(methods)),
            "genes": None if genes is None else [str(g) for g in gene_names],
            "layer": layer,
        }
        extra = {k: df.attrs[k] for k in ("de_genes", "de_method", "top1000_genes")}
        record(adata, key_added, params, start=start, added=[], results=df, **extra, evaluator=EVALUATOR)
    return df


def _check_order(adata: object) -> None:
    """A clear error for the order of the pre-releases, ``evaluate_perturbation(pred, adata)``."""
    from anndata import AnnData

    if isinstance(adata, Mapping) or (isinstance(adata, AnnData) and PREDICTION_KEY in adata.uns):
        raise TypeError(
            "evaluate_perturbation takes the observed screen first and the prediction(s) second: "
            "evaluate_perturbation(adata, pred); the first argument is a prediction (uns['perturbation_prediction'])"
            " or a dict of them."
        )


def _scored_genes(adata: AnnData, genes: Sequence[str] | None) -> pd.Index:
    if genes is None:
        return adata.var_names
    chosen = pd.Index([str(g) for g in ([genes] if isinstance(genes, str) else genes)])
    missing = chosen.difference(adata.var_names)
    if len(missing):
        raise KeyError(
            f"evaluate_perturbation: {len(missing)} genes are not in adata.var_names (first: {missing[0]!r})."
        )
    if not chosen.is_unique or len(chosen) < 2:
        raise ValueError("evaluate_perturbation: genes must name at least two distinct genes.")
    return adata.var_names[np.sort(adata.var_names.get_indexer(chosen))]


def _de_positions(X, labels: np.ndarray, scored: list[str], control: str, n_de: int, cols: np.ndarray):
    """Top ``n_de`` DE genes of each perturbation among the scored genes, as positions in ``cols``."""
    full = len(cols) == X.shape[1]
    ranked = rank_genes_vs_control(X, labels, scored, control, n_genes=n_de if full else None)
    if full:
        return ranked
    position = np.full(X.shape[1], -1)
    position[cols] = np.arange(len(cols))
    return {s: position[order][position[order] >= 0][:n_de] for s, order in ranked.items()}


def _warn_differing_sets(rows: dict[str, tuple[list[str], np.ndarray]]) -> None:
    sets = {name: frozenset(names) for name, (names, _) in rows.items()}
    if len(set(sets.values())) > 1:
        warn(
            "evaluate_perturbation: the methods predict different sets of perturbations "
            f"({ {k: len(v) for k, v in sets.items()} }); their 'mean' rows average over different perturbations."
        )


def _warn_degenerate_pertmean(df: pd.DataFrame) -> None:
    """Warn about methods whose ``pearson_delta_pertmean`` is -1 by construction, not by what they predict."""
    rows = df[(df["perturbation"] != MEAN_ROW) & (df["pearson_delta_pertmean"] <= -1 + 1e-6)]
    if len(rows):
        methods = sorted(set(rows["method"]))
        warn(
            f"evaluate_perturbation: pearson_delta_pertmean is -1.000 for {len(rows)} perturbation(s) of {methods}: "
            "a degenerate score, not a finding. The perturbation mean is over the observed perturbations of adata; "
            "when a prediction is the mean of the others (e.g. method='train_mean' with one held-out perturbation) "
            "it is -1 by construction. Score more held-out perturbations, or read pearson_delta and "
            "pearson_delta_de instead."
        )


def _log_summary(df: pd.DataFrame) -> None:
    means = df[df["perturbation"] == MEAN_ROW].set_index("method")
    for method, row in means.iterrows():
        logger.info(
            f"{method}: pearson_delta {row['pearson_delta']:.3f}, pearson_delta_de {row['pearson_delta_de']:.3f}, "
            f"pearson_delta_pertmean {row['pearson_delta_pertmean']:.3f}, mse_top1000 {row['mse_top1000']:.4f}, "
            f"direction_de {row['direction_de']:.3f}"
        )
