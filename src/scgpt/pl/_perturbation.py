"""Plots of perturbation-response predictions: one perturbation's top DE genes, and the metrics per method.

:func:`perturbation` draws, GEARS-style, the observed change of each perturbed cell on the perturbation's
top differentially expressed genes (box plots) with the predicted changes as dots; :func:`perturbation_metrics`
draws the distribution of one metric of :func:`scgpt.tl.evaluate_perturbation` over perturbations, per method,
against the best baseline. Neither imports torch nor the tools (``scgpt.tl``): the DE genes come from the
same numpy/scanpy kernel :func:`scgpt.tl.perturbation_de_genes` uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .._docs import doc_params, evaluation_key_doc
from .._logging import caller, named
from ..data import log_normalized, parse_perturbation, perturbation_label, perturbation_labels, rank_genes_vs_control
from ._utils import evaluation_entry, finish, missing_evaluation, new_axes

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PREDICTION_KEY = "perturbation_prediction"  # uns entry of a prediction (scgpt.tl.prediction_anndata)
MEAN_ROW = "mean"  # the per-method summary row of scgpt.tl.evaluate_perturbation
BASELINES = ("no_change", "train_mean", "additive", "linear")

OBSERVED_COLOR = "#d9d9d9"  # boxes of observed cells
CONTROL_BAND_COLOR = "#9ecae1"  # the control cells' spread
BASELINE_COLOR = "#bdbdbd"  # baselines in the metrics plot
BEST_BASELINE_COLOR = "#636363"
MEAN_MARKER = {"marker": "D", "s": 36, "facecolor": "white", "edgecolor": "black", "linewidths": 1.0, "zorder": 5}
METHOD_MARKERS = ("o", "D", "s", "^", "v", "P", "X", "*", "<", ">")
CONTROL_QUANTILES = (2.5, 97.5)


def _model_colors(n: int) -> list[str]:
    """Distinct colours for ``n`` methods (tab10, then tab20), none of them grey."""
    import matplotlib as mpl

    tab10 = [mpl.colors.to_hex(c) for c in mpl.colormaps["tab10"].colors]
    palette = [c for i, c in enumerate(tab10) if i != 7]  # index 7 is tab10's grey
    if n > len(palette):
        tab20 = [mpl.colors.to_hex(c) for c in mpl.colormaps["tab20"].colors]
        palette += [c for i, c in enumerate(tab20) if i not in (14, 15)]
    return [palette[i % len(palette)] for i in range(n)]


def _baseline_greys(n: int) -> list[str]:
    """``n`` distinguishable greys for the baselines (one: the usual baseline grey)."""
    import matplotlib as mpl

    if n <= 1:
        return [BASELINE_COLOR] * n
    return [mpl.colors.to_hex((v, v, v)) for v in np.linspace(0.45, 0.85, n)]


# --------------------------------------------------------------------------- perturbation


def _predictions(pred: AnnData | Mapping[str, AnnData] | None) -> dict[str, AnnData]:
    fn = caller()
    from anndata import AnnData

    if pred is None:
        return {}
    if isinstance(pred, AnnData):
        entry = pred.uns.get(PREDICTION_KEY, {})
        name = entry.get("method", "prediction") if isinstance(entry, Mapping) else "prediction"
        return {str(name): pred}
    if isinstance(pred, Mapping):
        preds = {str(k): v for k, v in pred.items()}
        wrong = [k for k, v in preds.items() if not isinstance(v, AnnData)]
        if wrong:
            raise TypeError(f"{fn}: pred[{wrong[0]!r}] is not an AnnData (a prediction of scgpt.tl).")
        return preds
    raise TypeError(f"{fn}: pred must be a prediction AnnData or a dict method -> AnnData, got {type(pred).__name__}.")


def _row_label(name: str, control: str) -> str:
    try:
        return perturbation_label(name, control=control)
    except ValueError:
        return name


def _predicted_values(p: AnnData, name: str, label: str, genes: list[str], control: str) -> np.ndarray:
    """The predicted profile of ``label`` on ``genes`` (a row of ``p.X``)."""
    fn = caller()
    import scipy.sparse as sp

    rows = [i for i, s in enumerate(p.obs_names) if _row_label(str(s), control) == label]
    if not rows:
        shown = ", ".join(repr(str(s)) for s in p.obs_names[:10]) + (" ..." if p.n_obs > 10 else "")
        raise KeyError(f"{fn}: prediction {name!r} has no row for perturbation {label!r} (rows: {shown}).")
    missing = [g for g in genes if g not in p.var_names]
    if missing:
        raise KeyError(f"{fn}: prediction {name!r} lacks {len(missing)} of the shown genes (first: {missing[0]!r}).")
    values = p[rows[0], genes].X
    values = values.toarray() if sp.issparse(values) else np.asarray(values)
    return values.ravel().astype(np.float64)


def _shown_genes(
    de_genes: Sequence[str] | Mapping[str, Sequence[str]] | None,
    label: str,
    var_names: pd.Index,
    n_genes: int,
) -> list[str] | None:
    fn = caller()
    if de_genes is None:
        return None
    if isinstance(de_genes, Mapping):
        if label not in de_genes:
            raise KeyError(f"{fn}: de_genes has no entry for perturbation {label!r} (entries: {list(de_genes)[:10]}).")
        de_genes = de_genes[label]
    genes = [de_genes] if isinstance(de_genes, str) else [str(g) for g in de_genes]
    genes = list(dict.fromkeys(genes))[:n_genes]
    if not genes:
        raise ValueError(f"{fn}: de_genes names no gene.")
    unknown = [g for g in genes if g not in var_names]
    if unknown:
        raise KeyError(f"{fn}: genes of de_genes not in adata.var_names: {unknown}.")
    return genes


@doc_params()
@named("scgpt.pl.perturbation")
def perturbation(
    adata: AnnData,
    perturbation: str | Sequence[str],
    pred: AnnData | Mapping[str, AnnData] | None = None,
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    n_genes: int = 20,
    de_genes: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    layer: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Observed and predicted change of one perturbation on its top differentially expressed genes (GEARS-style).

    For each shown gene, a box plot of the observed change of every perturbed cell: its
    ``log1p(normalize_total(counts, 1e4))`` value minus the mean over the control cells. Each prediction is a
    dot per gene (its own marker and colour, named in the legend) at the predicted profile minus the same
    observed control mean, the deltas :func:`scgpt.tl.evaluate_perturbation` scores. A shaded band, one step
    per gene, spans the 2.5-97.5 % quantiles of the control cells' own deviation from their mean: changes
    inside it are within the control's cell-to-cell spread. A dashed line marks zero. Genes are ordered by DE
    rank, strongest left; the perturbation's target genes are written in bold.

    Parameters
    ----------
    adata
        The observed screen: counts (or log1p data marked by ``uns["log1p"]``) with ``obs[perturbation_key]``.
    perturbation
        The perturbation to show: a label (``"JAK2"``, ``"JAK2+STAT1"``) or a list of target genes; it must have
        cells in ``adata``.
    pred
        A prediction (:func:`scgpt.tl.perturbation_baseline` or :func:`scgpt.tl.predict_perturbation` output,
        named by its ``uns["perturbation_prediction"]["method"]``) or a dict method name -> prediction; each must
        have a row for the perturbation and cover the shown genes. ``None``: observed changes only.
    {perturbation_key}
    control
        Label of control cells (they must occur).
    n_genes
        Number of genes shown.
    de_genes
        The genes to show, strongest first (the first ``n_genes`` of them), or a dict perturbation -> genes such
        as ``df.attrs["de_genes"]`` of :func:`scgpt.tl.evaluate_perturbation` (or its ``uns[key_added]["de_genes"]``).
        ``None``: the top ``n_genes`` of :func:`scgpt.tl.perturbation_de_genes` (Welch t-test against the control
        cells, ranked by absolute score).
    layer
        Layer of ``adata`` with the counts; ``None`` uses ``adata.X``.
    {plot}

    Returns
    -------
    {plot_returns}
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fn = "scgpt.pl.perturbation"
    if n_genes < 1:
        raise ValueError(f"{fn}: n_genes must be positive, got {n_genes}.")
    labels = perturbation_labels(adata, perturbation_key=perturbation_key, control=control)
    label = perturbation_label(perturbation, control=control)
    if label == control:
        raise ValueError(f"{fn}: {control!r} is the control label; choose a perturbation.")
    present = labels.value_counts()
    if label not in present.index:
        others = sorted(set(present.index) - {control})
        shown = ", ".join(repr(s) for s in others[:10]) + (" ..." if len(others) > 10 else "")
        raise KeyError(
            f"{fn}: perturbation {label!r} has no cells in adata.obs[{perturbation_key!r}] (labels: {shown})."
        )
    preds = _predictions(pred)
    genes = _shown_genes(de_genes, label, adata.var_names, n_genes)

    cells = labels.isin([control, label]).to_numpy()
    names = labels.to_numpy()[cells]
    X = log_normalized(adata[cells] if not cells.all() else adata, layer)
    if genes is None:
        ranked = rank_genes_vs_control(X, names, [label], control, n_genes=n_genes)[label]
        genes = [str(g) for g in adata.var_names[ranked]]
    cols = adata.var_names.get_indexer(genes)
    values = X[:, cols].toarray()
    is_control = names == control
    ctrl_mean = values[is_control].mean(0)
    observed = values[names == label] - ctrl_mean
    band_low, band_high = np.percentile(values[is_control] - ctrl_mean, CONTROL_QUANTILES, axis=0)
    predicted = {name: _predicted_values(p, name, label, genes, control) - ctrl_mean for name, p in preds.items()}

    n = len(genes)
    fig, ax = new_axes(ax, (max(4.0, 1.2 + 0.38 * n), 4.0))
    positions = np.arange(n)
    edges = np.arange(n + 1) - 0.5
    band_label = f"control {CONTROL_QUANTILES[0]:g}-{CONTROL_QUANTILES[1]:g} %"
    ax.fill_between(
        edges,
        np.r_[band_low, band_low[-1]],
        np.r_[band_high, band_high[-1]],
        step="post",
        color=CONTROL_BAND_COLOR,
        alpha=0.35,
        linewidth=0,
        zorder=0,
        label=band_label,
    )
    ax.axhline(0.0, color="black", linestyle="--", linewidth=0.8, zorder=1)
    ax.boxplot(
        list(observed.T),
        positions=positions,
        widths=0.6,
        patch_artist=True,
        manage_ticks=False,
        showfliers=True,
        boxprops={"facecolor": OBSERVED_COLOR, "edgecolor": "black", "linewidth": 0.8},
        medianprops={"color": "black", "linewidth": 1.0},
        whiskerprops={"linewidth": 0.8},
        capprops={"linewidth": 0.8},
        flierprops={"marker": ".", "markersize": 3, "markerfacecolor": "grey", "markeredgecolor": "none"},
        zorder=2,
    )
    handles: list = [
        Patch(facecolor=OBSERVED_COLOR, edgecolor="black", label=f"observed ({int(present[label])} cells)"),
        Patch(facecolor=CONTROL_BAND_COLOR, alpha=0.35, label=band_label),
    ]
    colours = _model_colors(len(predicted))
    spread = 0.5 if len(predicted) > 1 else 0.0
    offsets = np.linspace(-spread / 2, spread / 2, len(predicted)) if predicted else []
    for k, (name, delta) in enumerate(predicted.items()):
        marker = METHOD_MARKERS[k % len(METHOD_MARKERS)]
        ax.scatter(
            positions + offsets[k],
            delta,
            marker=marker,
            s=30,
            color=colours[k],
            edgecolors="black",
            linewidths=0.5,
            zorder=4,
            label=name,
        )
        handles.append(
            Line2D(
                [], [], ls="", marker=marker, ms=6, mfc=colours[k], mec="black", mew=0.5, label=f"{name} (predicted)"
            )
        )
    targets = set(parse_perturbation(label, control=control))
    ax.set_xticks(positions, genes, rotation=90, fontsize="small")
    for tick in ax.get_xticklabels():
        if tick.get_text() in targets:
            tick.set_fontweight("bold")
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xlabel(f"top {n} DE genes" if de_genes is None else "genes")
    ax.set_ylabel("change vs control mean (log1p)")
    ax.set_title(label)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize="small")
    return finish(fig, ax, show=show, return_fig=return_fig)


# --------------------------------------------------------------------------- perturbation_metrics


def _lower_is_better(metric: str) -> bool:
    """Errors (``mse_*``, ``mae_*``, ...) are best low; correlations and accuracies best high."""
    name = metric.lower()
    return any(word in name for word in ("mse", "mae", "rmse", "error", "distance", "loss"))


def _results_table(data: AnnData | pd.DataFrame, key: str | None) -> pd.DataFrame:
    fn = caller()
    if isinstance(data, pd.DataFrame):
        table = data
    else:
        uns = getattr(data, "uns", None)
        if uns is None:
            raise TypeError(f"{fn}: data must be the DataFrame of scgpt.tl.evaluate_perturbation or an AnnData.")
        entry = uns.get(key) if key is not None else None
        if isinstance(entry, pd.DataFrame):  # a table stored by hand
            table = entry
        else:
            entry = evaluation_entry(data, key, "evaluate_perturbation", needs=("results",))
            table = entry["results"]
            if not isinstance(table, pd.DataFrame):
                raise missing_evaluation(data, key, "evaluate_perturbation")
    missing = [c for c in ("method", "perturbation") if c not in table.columns]
    if missing:
        raise KeyError(f"{fn}: the results lack the columns {missing} (the table of scgpt.tl.evaluate_perturbation).")
    return table


@doc_params(key=evaluation_key_doc("evaluate_perturbation"))
@named("scgpt.pl.perturbation_metrics")
def perturbation_metrics(
    data: pd.DataFrame | AnnData,
    *,
    metric: str = "pearson_delta",
    methods: str | Sequence[str] | None = None,
    baselines: str | Sequence[str] = BASELINES,
    kind: Literal["box", "strip", "bar"] = "box",
    key: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """One metric of :func:`scgpt.tl.evaluate_perturbation` per method, over the scored perturbations.

    One column per method, in the order of ``methods`` (default: of the table): a box plot, a strip of points
    (one per perturbation) or a bar at the mean with the standard deviation. The mean over perturbations
    (NaN skipped, the value of the table's ``"mean"`` row) is marked by a white diamond; the ``"mean"`` rows
    themselves are not drawn as perturbations. Baselines are grey, model methods coloured. A dashed line marks
    the best baseline's mean (highest, or lowest for errors such as ``mse_top1000``), the bar a model must
    clear.

    Parameters
    ----------
    data
        The table :func:`scgpt.tl.evaluate_perturbation` returned (columns ``method``, ``perturbation`` and the
        metrics), or an AnnData holding its results in ``uns[key]`` (``evaluate_perturbation(...,
        key_added=key)``, or the table itself).
    metric
        Column to show, e.g. ``"pearson_delta"``, ``"pearson_delta_pertmean"``, ``"mse_top1000"``.
    methods
        Methods to show, in this order (``None``: all, in the table's order).
    baselines
        Names of the baseline methods (drawn grey, and the reference line).
    kind
        ``"box"`` (boxes with the perturbations as points), ``"strip"`` (the points only) or ``"bar"`` (the
        mean with the standard deviation, and the points).
    {key}
    {plot}

    Returns
    -------
    {plot_returns}
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fn = "scgpt.pl.perturbation_metrics"
    if kind not in ("box", "strip", "bar"):
        raise ValueError(f"{fn}: kind must be 'box', 'strip' or 'bar', got {kind!r}.")
    table = _results_table(data, key)
    available = [
        c
        for c in table.columns
        if c not in ("method", "perturbation", "n_cells") and pd.api.types.is_numeric_dtype(table[c])
    ]
    if metric not in available:
        raise KeyError(f"{fn}: unknown metric {metric!r}; the results hold {available}.")
    rows = table[table["perturbation"].astype(str) != MEAN_ROW]
    present = list(dict.fromkeys(rows["method"].astype(str)))
    if methods is None:
        chosen = present
    else:
        chosen = list(dict.fromkeys([methods] if isinstance(methods, str) else [str(m) for m in methods]))
        unknown = [m for m in chosen if m not in present]
        if unknown:
            raise KeyError(f"{fn}: unknown methods {unknown}; the results hold {present}.")
    if not chosen:
        raise ValueError(f"{fn}: the results hold no scored perturbation (only 'mean' rows).")
    baseline_names = {baselines} if isinstance(baselines, str) else {str(b) for b in baselines}
    method_of = rows["method"].astype(str).to_numpy()
    metric_values = pd.to_numeric(rows[metric], errors="coerce").to_numpy(dtype=float)
    data = [metric_values[(method_of == m) & np.isfinite(metric_values)] for m in chosen]
    means = np.array([d.mean() if d.size else np.nan for d in data])
    is_baseline = [m in baseline_names for m in chosen]
    model_colours = iter(_model_colors(sum(not b for b in is_baseline)))
    n_base = sum(is_baseline)
    greys = iter(_baseline_greys(n_base))
    colours = [next(greys) if b else next(model_colours) for b in is_baseline]

    n = len(chosen)
    fig, ax = new_axes(ax, (max(3.5, 1.5 + 0.7 * n), 4.0))
    positions = np.arange(n)
    if kind == "box":
        boxes = ax.boxplot(
            data,
            positions=positions,
            widths=0.6,
            patch_artist=True,
            manage_ticks=False,
            showfliers=False,
            medianprops={"color": "black", "linewidth": 1.0},
            zorder=2,
        )
        for patch, colour in zip(boxes["boxes"], colours):
            patch.set_facecolor(colour)
            patch.set_edgecolor("black")
    elif kind == "bar":
        spread = [d.std(ddof=1) if d.size > 1 else 0.0 for d in data]
        ax.bar(positions, np.nan_to_num(means), width=0.6, color=colours, edgecolor="black", linewidth=0.8, zorder=2)
        ax.errorbar(positions, means, yerr=spread, fmt="none", ecolor="black", capsize=3, linewidth=0.8, zorder=3)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data):
        if d.size == 0:
            continue
        jitter = rng.uniform(-0.15, 0.15, d.size)
        strip = kind == "strip"
        ax.scatter(
            np.full(d.size, positions[i]) + jitter,
            d,
            s=22 if strip else 10,
            color=colours[i] if strip else "black",
            edgecolors="black" if strip else "none",
            linewidths=0.4,
            alpha=0.9 if strip else 0.6,
            zorder=3,
        )
    ax.scatter(positions, means, **MEAN_MARKER)

    handles: list = [  # one entry per method, in its colour: models in colour, baselines in greys
        Patch(facecolor=c, edgecolor="black", label=f"{m} (baseline)" if b else m)
        for m, c, b in zip(chosen, colours, is_baseline)
    ]
    handles.append(Line2D([], [], ls="", marker="D", ms=6, mfc="white", mec="black", label="mean"))
    scored_baselines = [(m, v) for m, v, b in zip(chosen, means, is_baseline) if b and np.isfinite(v)]
    if scored_baselines:
        pick = min if _lower_is_better(metric) else max
        best, value = pick(scored_baselines, key=lambda mv: mv[1])
        text = f"best baseline ({best}): {value:.3f}"
        ax.axhline(value, color=BEST_BASELINE_COLOR, linestyle="--", linewidth=1.0, zorder=1, label=text)
        handles.append(Line2D([], [], color=BEST_BASELINE_COLOR, linestyle="--", linewidth=1.0, label=text))
    ax.set_xticks(positions, chosen, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel(metric)
    n_perturbations = int(rows.loc[rows["method"].astype(str).isin(chosen), "perturbation"].nunique())
    ax.set_title(f"{metric} over {n_perturbations} perturbations")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize="small")
    return finish(fig, ax, show=show, return_fig=return_fig)
