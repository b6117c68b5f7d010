"""``scgpt.tl.evaluate_grn`` and ``scgpt.tl.enrich_programs``: how good a gene network or gene program is.

:func:`evaluate_grn` scores a network against a reference (BEELINE's AUPRC ratio and early precision ratio,
AUROC) next to random and co-expression baselines computed on the same candidate pairs.
:func:`enrich_programs` tests gene programs for over-representation of gene sets (hypergeometric test,
Benjamini-Hochberg FDR).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._docs import doc_params
from .._face import check_key_added, record, warn_overwrite
from .._logging import caller, log_added, logger, named, warn
from ..data import check_adata, missing_values

if TYPE_CHECKING:
    from anndata import AnnData

BASELINES = ("random", "pearson", "spearman")
"""The baselines of :func:`evaluate_grn`; ``pearson`` and ``spearman`` need the cells' expression."""

EXPECTED_RANDOM = "random (expected)"
"""Row of :func:`evaluate_grn` with the analytic expectation of a uniformly random ranking."""

METRICS = ("n_edges", "n_true", "density", "auprc", "auprc_ratio", "auroc", "epr", "precision_at_k")


# ------------------------------------------------------------------------------------------------ evaluate_grn
@doc_params()
@named()
def evaluate_grn(
    adata: AnnData | None = None,
    edges: pd.DataFrame | None = None,
    *,
    key: str = "scgpt_grn",
    reference: pd.DataFrame | Literal["collectri"] = "collectri",
    tfs_only: bool = True,
    baselines: Sequence[Literal["random", "pearson", "spearman"]] | None = None,
    group: str | None = None,
    layer: str | None = None,
    genes: Sequence[str] | None = None,
    signed: bool = True,
    name: str = "scGPT",
    seed: int = 0,
    key_added: str | None = None,
) -> pd.DataFrame:
    """Score a gene network against a reference, next to random and co-expression baselines.

    The network is the one :func:`scgpt.tl.infer_grn` wrote to ``adata.uns[key]["edges"]``
    (``evaluate_grn(adata)``), or any edge table passed as ``edges``: with ``adata`` (e.g. the cells of another
    call, or a network from another tool) the co-expression baselines are computed on ``adata``'s cells; without
    (``evaluate_grn(edges=edges)``) only the random baseline is.

    Every method ranks the same candidate pairs (the *universe*): sources are the transcription factors
    of the reference found in the gene set (every gene of it with ``tfs_only=False``), targets are all
    genes of the gene set, self-pairs excluded. A pair is true when the reference lists it (in that
    direction; signs of the reference are ignored). The metrics are those of BEELINE (Pratapa et al.,
    *Nat Methods* 2020):

    - ``auprc``: average precision (:func:`sklearn.metrics.average_precision_score`); ``auprc_ratio``:
      divided by the density (``n_true / n_pairs``, the precision of a random ranking);
    - ``auroc``: area under the ROC curve (:func:`sklearn.metrics.roc_auc_score`);
    - ``precision_at_k``: precision of the ``k = n_true`` best-ranked pairs; ``epr`` (early precision
      ratio): divided by the density. 1 is random for both ratios.

    Scores: a pair the network lists is ranked by its ``weight`` (larger = more confident; by
    ``|weight|`` with ``signed=False``); pairs it does not list rank below all listed ones, tied with each
    other. Ties are scored without any order among the tied pairs: sklearn counts a tied block at the
    precision reached at its end (average precision) and as half-correct pairs (AUROC), and when the ``k``
    cut falls inside a tied block, the block contributes its expected number of true pairs (the cut takes
    ``m`` of its ``b`` pairs, of which ``t`` are true: ``m * t / b``), so a network with fewer than ``k``
    edges, or with tied weights, is neither helped nor hurt by an arbitrary order.

    Baselines, computed on the same universe:

    - ``"random"``: uniform scores drawn with ``seed`` for every pair. A row ``"random (expected)"``
      gives the analytic expectation of a uniformly random ranking: ``epr = 1``, ``auroc = 0.5`` and the
      exact expected average precision ``(H_N + (R - 1)(N - H_N) / (N - 1)) / N`` for ``R`` true pairs
      among ``N`` (``H_N`` the harmonic number), whose ratio to the density is above 1 when ``R`` is small.
    - ``"pearson"``, ``"spearman"``: absolute Pearson / Spearman correlation of source and target over the
      cells of ``adata``, on ``log1p(normalize_total(counts, 1e4))`` (log-normalised values marked by
      ``uns['log1p']``, as ``sc.pp.log1p`` leaves them, are used as they are). Genes that do not vary get 0.
      Spearman is Pearson of the ranks of each gene over the cells, ties averaged.

    scGPT networks (attention and embedding similarity alike) mostly recover co-expression (Kendiukhov,
    arXiv 2602.17532, 2026): compare with the ``pearson`` row before reading the edges as regulation.

    Parameters
    ----------
    adata
        Cells x genes with counts (or log-normalised values) in ``X`` or ``layer``: the network in
        ``adata.uns[key]["edges"]`` unless ``edges`` is given, and the cells of the ``pearson`` and ``spearman``
        baselines. ``None`` (only with ``edges``): no co-expression baselines, nothing stored.
    edges
        A network instead of ``adata.uns[key]["edges"]``: a DataFrame with columns ``source``, ``target``,
        ``weight`` (decoupler's ``net`` and geneRNIB's format, as :func:`scgpt.tl.infer_grn` writes),
        optionally ``group``. Attention networks are directed (source = key, target = query);
        embedding-similarity networks are undirected and list both directions. Each (source, target) pair may
        appear once.
    key
        The ``key_added`` of :func:`scgpt.tl.infer_grn`: the network is ``adata.uns[key]["edges"]`` (when
        ``edges`` is not given).
    reference
        The true edges: a DataFrame with ``source`` and ``target`` columns (``weight`` is ignored), or
        ``"collectri"`` for the bundled CollecTRI network (:func:`scgpt.datasets.collectri`).
    tfs_only
        Sources restricted to the reference's sources (its transcription factors), as BEELINE and geneRNIB
        do; ``False``: every gene of the gene set may be a source.
    baselines
        Baselines to compute, among ``"random"``, ``"pearson"``, ``"spearman"``. ``None``: all three when
        ``adata`` is given, only ``"random"`` otherwise; asking for ``"pearson"`` or ``"spearman"``
        explicitly without ``adata`` is an error.
    group
        With a ``group`` column in the edges (networks per group of cells): the group to score. Needed when
        there are several groups.
    layer
        Layer with the expression for the co-expression baselines; ``None`` uses ``adata.X``.
    genes
        The gene set (e.g. the network genes, ``adata.uns[key]['genes']`` of :func:`scgpt.tl.infer_grn`).
        ``None``: the genes appearing in the edges. With co-expression baselines, genes not in
        ``adata.var_names`` are left out of the universe (with a warning), for every row alike.
    signed
        ``True`` ranks edges by ``weight`` as given; ``False`` by ``|weight|`` (for networks whose negative
        weights are as confident as positive ones, e.g. attention differences between two groups).
    name
        Row name of the network in the result.
    seed
        Seed of the ``random`` baseline.
    {eval_key_added}

    Returns
    -------
    One row per method (``name``, then the baselines, and ``"random (expected)"`` with ``"random"``),
    indexed by ``method``, with columns ``n_edges`` (pairs the method scores in the universe), ``n_true``
    (reference edges in the universe), ``density``, ``auprc``, ``auprc_ratio``, ``auroc``, ``epr``,
    ``precision_at_k``. With ``key_added``:

    ``adata.uns[key_added]`` : dict
        ``params``, ``results`` (the DataFrame), ``universe`` (numbers of sources, genes, pairs and true pairs)
        and ``evaluator`` (``"scgpt.tl.evaluate_grn"``).

    Examples
    --------
    >>> scgpt.tl.infer_grn(adata, "demo", method="attention")  # doctest: +SKIP
    >>> scgpt.tl.evaluate_grn(adata)  # adata.uns["scgpt_grn"]["edges"] vs CollecTRI  # doctest: +SKIP
    >>> scgpt.tl.evaluate_grn(adata, cells.uns["scgpt_grn"]["edges"])  # another call's network  # doctest: +SKIP
    """
    start = time.perf_counter()
    fn = "evaluate_grn"
    from_uns = edges is None
    edges = _network(adata, edges, key, key_added)
    net = _check_edges(edges, group=group, signed=signed)
    ref = _reference(reference)
    todo = _baselines(baselines, adata)
    expression = [b for b in todo if b in ("pearson", "spearman")]

    gene_set = _gene_set(genes, net)
    if expression:
        if not adata.var_names.is_unique:
            raise ValueError(f"{fn}: adata.var_names are not unique; call adata.var_names_make_unique() first.")
        present = gene_set.isin(adata.var_names)
        if not present.any():
            raise ValueError(
                f"{fn}: none of the {len(gene_set)} genes is in adata.var_names (first genes: "
                f"{_names(gene_set)}; first var_names: {_names(adata.var_names)}); the co-expression baselines "
                "need the network's gene names in adata.var_names."
            )
        if not present.all():
            warn(
                f"{fn}: {int((~present).sum())} of {len(gene_set)} genes are not in adata.var_names "
                f"({_names(gene_set[~present])}); they are left out of the evaluation of every method."
            )
            gene_set = gene_set[present]

    sources = gene_set[gene_set.isin(pd.Index(ref["source"].unique()))] if tfs_only else gene_set
    if len(sources) == 0:
        raise ValueError(
            f"{fn}: none of the {len(gene_set)} genes ({_names(gene_set)}) is a source (TF) of the reference "
            f"(first sources: {_names(pd.Index(ref['source'].unique()))}). Check that both use the same gene "
            "names (symbols), pass `genes=` with the TFs included, or tfs_only=False."
        )
    if len(gene_set) < 2:
        raise ValueError(f"{fn}: the gene set has {len(gene_set)} gene; a network needs at least 2.")
    valid = np.ones((len(sources), len(gene_set)), dtype=bool)
    valid[np.arange(len(sources)), gene_set.get_indexer(sources)] = False  # no self-pairs
    truth = _pair_matrix(ref["source"], ref["target"], None, sources, gene_set, valid).astype(bool)
    y = truth[valid]
    n_pairs, n_true = int(y.size), int(y.sum())
    if n_true == 0:
        in_targets = pd.Index(ref.loc[ref["source"].isin(sources), "target"].unique())
        raise ValueError(
            f"{fn}: no reference edge falls among the {n_pairs} candidate pairs ({len(sources)} sources x "
            f"{len(gene_set)} genes). Sources (TFs) in the gene set: {_names(sources)}; their reference targets "
            f"({len(in_targets)}, e.g. {_names(in_targets)}) are not in the gene set. Pass `genes=` with a larger "
            "gene set (e.g. all network genes), or a reference that covers these genes."
        )
    if n_true == n_pairs:
        raise ValueError(f"{fn}: every one of the {n_pairs} candidate pairs is a reference edge; nothing to rank.")

    listed = _pair_matrix(net["source"], net["target"], net["weight"], sources, gene_set, valid)[valid]
    n_listed = int(np.isfinite(listed).sum())
    logger.info(
        f"evaluating a network on {n_pairs} candidate pairs ({len(sources)} sources x {len(gene_set)} genes), "
        f"{n_true} of them reference edges (density {n_true / n_pairs:.3g}); {n_listed} of its {len(net)} edges "
        "fall among them"
    )
    rows = {name: _metrics(y, _listed_scores(listed), n_edges=n_listed)}
    if "random" in todo:
        rng = np.random.default_rng(seed)
        rows["random"] = _metrics(y, rng.random(n_pairs), n_edges=n_pairs)
    if expression:
        corr = _coexpression(adata, gene_set, sources, layer=layer, methods=expression)
        for method in expression:
            scores = np.abs(np.nan_to_num(corr[method], nan=0.0))[valid]
            rows[method] = _metrics(y, scores, n_edges=n_pairs)
    if "random" in todo:
        rows[EXPECTED_RANDOM] = _expected_random(n_pairs, n_true)
    table = pd.DataFrame.from_dict(rows, orient="index")[list(METRICS)]
    table.index.name = "method"
    table = table.astype({"n_edges": int, "n_true": int})
    _log_scores(table, name)
    if key_added is not None:
        warn_overwrite(adata, "uns", key_added)
        params = {
            "key": key if from_uns else None,
            "edges": None if from_uns else f"DataFrame ({len(edges)} edges)",
            "reference": reference if isinstance(reference, str) else f"DataFrame ({len(ref)} edges)",
            "tfs_only": tfs_only,
            "baselines": list(todo),
            "group": group,
            "layer": layer,
            "genes": None if genes is None else [str(g) for g in gene_set],
            "signed": signed,
            "name": name,
            "seed": seed,
        }
        universe = {"n_sources": len(sources), "n_genes": len(gene_set), "n_pairs": n_pairs, "n_true": n_true}
        extra = {"results": table, "universe": universe, "evaluator": f"scgpt.tl.{fn}"}
        record(adata, key_added, params, start=start, added=[], **extra)
    else:
        log_added(start, [])
    return table


def _log_scores(table: pd.DataFrame, name: str) -> None:
    row = table.loc[name]
    logger.info(
        f"    {name}: AUPRC ratio {row['auprc_ratio']:.3g}, EPR {row['epr']:.3g}, AUROC {row['auroc']:.3g}"
        + "".join(f"; {m}: EPR {table.loc[m, 'epr']:.3g}" for m in table.index[1:] if m != EXPECTED_RANDOM)
        + (
            f" (random expectation: AUPRC ratio {table.loc[EXPECTED_RANDOM, 'auprc_ratio']:.3g}, EPR 1)"
            if EXPECTED_RANDOM in table.index
            else ""
        )
    )


def _network(adata: AnnData | None, edges: pd.DataFrame | None, key: str, key_added: str | None) -> pd.DataFrame:
    """The edges to score: ``edges``, or those :func:`scgpt.tl.infer_grn` wrote to ``adata.uns[key]``.

    Errors name the networks present, and the new order of the arguments to a call in the old one.
    """
    fn = caller()
    if isinstance(adata, pd.DataFrame):
        raise TypeError(
            f"{fn} takes the AnnData first: evaluate_grn(adata) scores adata.uns[key]['edges'] (written by "
            "scgpt.tl.infer_grn), evaluate_grn(adata, edges) an edge table with adata's cells for the co-expression "
            "baselines, evaluate_grn(edges=edges, reference=...) an edge table without cells."
        )
    if key_added is not None and adata is None:
        raise ValueError(f"{fn}: key_added={key_added!r} stores the results in adata.uns; pass `adata` too.")
    if adata is not None:
        check_adata(adata)
    if edges is not None:
        return edges
    if adata is None:
        raise ValueError(
            f"{fn}: nothing to score; pass `adata` holding a network of scgpt.tl.infer_grn (adata.uns[key]['edges']), "
            "or `edges=` (a source, target, weight table)."
        )
    if key_added is not None:
        check_key_added(key_added, reads=(key,), slot="uns")
    entry = adata.uns.get(key)
    if isinstance(entry, Mapping) and isinstance(entry.get("edges"), pd.DataFrame):
        return entry["edges"]
    networks = [
        str(k) for k, v in adata.uns.items() if isinstance(v, Mapping) and isinstance(v.get("edges"), pd.DataFrame)
    ]
    present = f"networks in adata.uns: {networks}; pass key= naming one" if networks else "adata.uns holds no network"
    raise KeyError(
        f"{fn}: adata.uns[{key!r}] holds no network ('edges'); {present}, run scgpt.tl.infer_grn(adata, ..., "
        f"key_added={key!r}) first, or pass `edges=`."
    )


def _names(names: Iterable, shown: int = 5) -> str:
    names = [str(n) for n in names]
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _check_columns(df: object, columns: Sequence[str], *, what: str) -> None:
    fn = caller()
    if not isinstance(df, pd.DataFrame):
        raise TypeError(
            f"{fn}: {what} must be a pandas DataFrame with columns {list(columns)}, got {type(df).__name__}."
        )
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(
            f"{fn}: {what} lacks the columns {missing} (it has {list(df.columns)}); an edge table has columns "
            "'source', 'target', 'weight' (decoupler's net format)."
        )


def _check_edges(edges: object, *, group: str | None, signed: bool) -> pd.DataFrame:
    """The network's ``source``, ``target``, ``weight`` (of ``group``), checked: numeric, finite, no duplicates."""
    fn = caller()
    _check_columns(edges, ("source", "target", "weight"), what="edges")
    net = edges
    if "group" in edges.columns:
        groups = list(pd.unique(edges["group"].astype(str)))
        if group is None:
            if len(groups) > 1:
                raise ValueError(f"{fn}: edges has {len(groups)} groups ({_names(groups, 10)}); pass `group=`.")
        elif str(group) not in groups:
            raise KeyError(f"{fn}: group {group!r} is not in edges['group'] (groups: {_names(groups, 10)}).")
        else:
            net = edges[edges["group"].astype(str) == str(group)]
    elif group is not None:
        raise KeyError(f"{fn}: group={group!r} was given but edges has no 'group' column.")
    if not pd.api.types.is_numeric_dtype(net["weight"]):
        raise ValueError(f"{fn}: edges['weight'] must be numeric, got dtype {net['weight'].dtype}.")
    weight = net["weight"].to_numpy(dtype=np.float64)
    if not np.isfinite(weight).all():
        raise ValueError(
            f"{fn}: edges['weight'] holds {int((~np.isfinite(weight)).sum())} NaN or infinite values; "
            "drop or fill them."
        )
    out = pd.DataFrame(
        {
            "source": net["source"].astype(str).to_numpy(),
            "target": net["target"].astype(str).to_numpy(),
            "weight": weight if signed else np.abs(weight),
        }
    )
    dup = out.duplicated(["source", "target"])
    if dup.any():
        first = out.loc[dup.idxmax()]
        raise ValueError(
            f"{fn}: edges lists {int(dup.sum())} (source, target) pairs more than once (first: {first['source']} -> "
            f"{first['target']}); keep one weight per pair, e.g. "
            "edges.groupby(['source', 'target'], as_index=False)['weight'].max()."
        )
    if out.empty:
        raise ValueError(f"{fn}: edges is empty.")
    return out


def _reference(reference: object) -> pd.DataFrame:
    """The reference's unique (source, target) pairs, without self-loops."""
    fn = caller()
    if isinstance(reference, str):
        if reference != "collectri":
            raise ValueError(f"{fn}: reference must be 'collectri' or a DataFrame, got {reference!r}.")
        from ..datasets import collectri

        reference = collectri()
    _check_columns(reference, ("source", "target"), what="reference")
    ref = pd.DataFrame({"source": reference["source"].astype(str), "target": reference["target"].astype(str)})
    ref = ref[ref["source"] != ref["target"]].drop_duplicates(ignore_index=True)
    if ref.empty:
        raise ValueError(f"{fn}: the reference has no edges (self-loops do not count).")
    return ref


def _baselines(baselines: Sequence[str] | None, adata: AnnData | None) -> list[str]:
    fn = caller()
    if baselines is None:
        if adata is None:
            logger.info("    no adata: the pearson and spearman baselines are left out (pass adata to compute them)")
            return ["random"]
        return list(BASELINES)
    todo = [baselines] if isinstance(baselines, str) else list(dict.fromkeys(baselines))
    unknown = [b for b in todo if b not in BASELINES]
    if unknown:
        raise ValueError(f"{fn}: unknown baselines {unknown}; choose from {list(BASELINES)}.")
    if adata is None and {"pearson", "spearman"} & set(todo):
        raise ValueError(f"{fn}: the pearson and spearman baselines need the cells' expression; pass `adata`.")
    return todo


def _gene_set(genes: Sequence[str] | None, net: pd.DataFrame) -> pd.Index:
    fn = caller()
    if genes is None:
        return pd.Index(sorted(set(net["source"]) | set(net["target"])))
    genes = [genes] if isinstance(genes, str) else list(genes)
    out = pd.Index(pd.unique(pd.Series([str(g) for g in genes], dtype=object)))
    if out.empty:
        raise ValueError(f"{fn}: `genes` is empty.")
    return out


def _pair_matrix(
    source: pd.Series,
    target: pd.Series,
    weight: pd.Series | None,
    sources: pd.Index,
    genes: pd.Index,
    valid: np.ndarray,
) -> np.ndarray:
    """Sources x genes matrix of the weights of the pairs in the universe (1 without weights); NaN elsewhere."""
    i = sources.get_indexer(source.astype(str))
    j = genes.get_indexer(target.astype(str))
    keep = (i >= 0) & (j >= 0)
    i, j = i[keep], j[keep]
    w = np.ones(len(i)) if weight is None else np.asarray(weight, dtype=np.float64)[keep]
    keep = valid[i, j]
    M = np.full(valid.shape, np.nan)
    M[i[keep], j[keep]] = w[keep]
    if weight is None:
        M = np.nan_to_num(M, nan=0.0)
    return M


def _listed_scores(listed: np.ndarray) -> np.ndarray:
    """Dense ranks of the listed weights (1, 2, ...; ties kept), 0 for the unlisted pairs (NaN)."""
    from scipy.stats import rankdata

    scores = np.zeros(listed.shape)
    ok = np.isfinite(listed)
    if ok.any():
        scores[ok] = rankdata(listed[ok], method="dense")
    return scores


def precision_at_k(y: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Expected precision of the ``k`` best-scored pairs, a tied block at the cut contributing pro rata.

    With ``a`` pairs scored above the ``k``-th score and a block of ``b`` pairs tied with it (``t`` of them
    true), the cut takes ``k - a`` of the block, on average ``(k - a) * t / b`` true pairs.
    """
    y = np.asarray(y, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if not 1 <= k <= len(scores):
        raise ValueError(f"k must be between 1 and the number of pairs ({len(scores)}), got {k}.")
    cut = np.partition(scores, len(scores) - k)[len(scores) - k]
    above, tied = scores > cut, scores == cut
    hits = y[above].sum() + (k - above.sum()) * y[tied].sum() / tied.sum()
    return float(hits / k)


def _metrics(y: np.ndarray, scores: np.ndarray, *, n_edges: int) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    n_true = int(y.sum())
    density = n_true / len(y)
    auprc = float(average_precision_score(y, scores))
    p_at_k = precision_at_k(y, scores, n_true)
    return {
        "n_edges": n_edges,
        "n_true": n_true,
        "density": density,
        "auprc": auprc,
        "auprc_ratio": auprc / density,
        "auroc": float(roc_auc_score(y, scores)),
        "epr": p_at_k / density,
        "precision_at_k": p_at_k,
    }


def expected_average_precision(n_pairs: int, n_true: int) -> float:
    """Expected average precision of a uniformly random ranking of ``n_pairs`` pairs, ``n_true`` of them true.

    ``E[AP] = (H_N + (R - 1) (N - H_N) / (N - 1)) / N`` with ``H_N`` the ``N``-th harmonic number: the
    precision at the rank ``n`` of a true pair is ``(1 + #true above) / n``, and each of the ``n - 1`` pairs
    above is true with probability ``(R - 1) / (N - 1)``.
    """
    N, R = n_pairs, n_true
    if N == 1:
        return float(R)
    harmonic = float(np.sum(1.0 / np.arange(1, N + 1)))
    return (harmonic + (R - 1) * (N - harmonic) / (N - 1)) / N


def _expected_random(n_pairs: int, n_true: int) -> dict[str, float]:
    density = n_true / n_pairs
    auprc = expected_average_precision(n_pairs, n_true)
    return {
        "n_edges": n_pairs,
        "n_true": n_true,
        "density": density,
        "auprc": auprc,
        "auprc_ratio": auprc / density,
        "auroc": 0.5,
        "epr": 1.0,
        "precision_at_k": density,
    }


def _coexpression(
    adata: AnnData, genes: pd.Index, sources: pd.Index, *, layer: str | None, methods: Sequence[str]
) -> dict[str, np.ndarray]:
    """Pearson / Spearman correlation (sources x genes) of log-normalised expression over the cells."""
    from ..data import log_normalized

    logger.info(f"    co-expression baselines ({', '.join(methods)}) over {adata.n_obs} cells")
    X = log_normalized(adata, layer)[:, adata.var_names.get_indexer(genes)].tocsc()
    src = genes.get_indexer(sources)
    out = {}
    if "pearson" in methods:
        out["pearson"] = _pearson(X, src)
    if "spearman" in methods:
        out["spearman"] = _pearson(_rank_columns(X), src)
    return out


def _pearson(X: sp.csc_matrix, src: np.ndarray) -> np.ndarray:
    """Pearson correlation of the columns ``src`` of ``X`` (cells x genes, sparse) with every column.

    NaN where a gene does not vary.
    """
    n = X.shape[0]
    mean = np.asarray(X.mean(0)).ravel()
    sq = np.asarray(X.multiply(X).mean(0)).ravel()
    var = np.clip(sq - mean**2, 0.0, None)
    constant = var <= 1e-12 * np.maximum(sq, 1.0)
    cross = np.asarray((X[:, src].T @ X).todense()) / n
    cov = cross - np.outer(mean[src], mean)
    std = np.sqrt(np.where(constant, np.nan, var))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(std[src], std)
    return np.clip(corr, -1.0, 1.0)


def _tied_ranks(v: np.ndarray, rtol: float = 1e-9) -> np.ndarray:
    """Ranks 1..n of ``v``, values equal up to ``rtol`` tied (average rank).

    The tolerance makes ties exact whatever the floating-point path: ``2/100`` and ``1/50`` normalised by
    different code can differ in the last bit, and would otherwise be ranked apart.
    """
    order = np.argsort(v, kind="stable")
    sv = v[order]
    new = np.ones(len(sv), dtype=bool)
    new[1:] = np.diff(sv) > rtol * np.maximum(1.0, np.abs(sv[1:]))
    block = np.cumsum(new) - 1
    average = np.bincount(block, weights=np.arange(1, len(sv) + 1)) / np.bincount(block)
    ranks = np.empty(len(sv))
    ranks[order] = average[block]
    return ranks


def _rank_columns(X: sp.csc_matrix) -> sp.csc_matrix:
    """Ranks of each column over the rows (ties averaged), minus the rank of a zero: sparse like ``X``.

    A shift per column does not change correlations, so Pearson of these is Spearman of ``X``.
    """
    X = sp.csc_matrix(X, dtype=np.float64, copy=True)
    X.eliminate_zeros()
    n = X.shape[0]
    for j in range(X.shape[1]):
        lo, hi = X.indptr[j], X.indptr[j + 1]
        v = X.data[lo:hi]
        if not len(v):
            continue
        n_zero = n - len(v)
        ranks = _tied_ranks(v) + n_zero * (v > 0)
        zero_rank = (v < 0).sum() + (n_zero + 1) / 2
        X.data[lo:hi] = ranks - zero_rank
    return X


# -------------------------------------------------------------------------------------------- enrich_programs
def _background(background, var_names: pd.Index, programs: dict[str, set]) -> set:
    """The genes of ``background`` that are measured; an error when it holds no gene of the programs."""
    fn = caller()
    extra = pd.Index([background] if isinstance(background, str) else list(background)).astype(str)
    unknown = ~extra.isin(var_names)
    if unknown.any():
        logger.info(f"    {int(unknown.sum())} background genes are not in adata.var_names and are ignored")
    given = set(extra[~unknown])
    in_programs = set().union(*programs.values())
    lacking = sorted(in_programs - given)
    if len(lacking) == len(in_programs):
        raise ValueError(
            f"{fn}: background= holds none of the {len(in_programs)} genes of the programs (e.g. "
            f"{_names(lacking)}; {int(unknown.sum())} of its {len(extra)} names are not in adata.var_names). The "
            "background is every gene that could have been in a program: pass the genes measured (named as "
            "adata.var_names), or leave background=None for the clustered genes."
        )
    if lacking:
        warn(
            f"{fn}: background= lacks {len(lacking)} of the {len(in_programs)} genes of the programs (e.g. "
            f"{_names(lacking)}); they are added to it, as every gene clustered into programs is."
        )
    return given


@doc_params()
@named()
def enrich_programs(
    adata: AnnData,
    *,
    gene_sets: Mapping[str, Iterable[str]] | pd.DataFrame | str | PathLike[str] = "hallmark",
    key: str = "scgpt_program",
    background: Iterable[str] | None = None,
    min_overlap: int = 2,
    fdr: float = 0.05,
    key_added: str | None = None,
) -> pd.DataFrame:
    """Over-representation of gene sets in gene programs: hypergeometric test, Benjamini-Hochberg FDR.

    For each program and gene set, the probability of an overlap at least as large if the program's genes
    were drawn at random from the background: ``scipy.stats.hypergeom.sf(overlap - 1, M, set_size,
    program_size)``, with ``M`` genes in the background and ``set_size`` genes of the set in it. The
    FDR is Benjamini-Hochberg over every test whose sizes allow ``min_overlap`` (program and set in the
    background both of at least ``min_overlap`` genes), so leaving the others out of the table does not
    make it less strict.

    Parameters
    ----------
    adata
        Data with the programs in ``adata.var[key]`` (categorical; NaN for genes in no program), as
        :func:`scgpt.tl.gene_programs` writes them.
    gene_sets
        A dict from set name to genes, a DataFrame with ``source`` (set name) and ``target`` (gene) columns
        (decoupler's format), a path to a ``.gmt`` file, or ``"hallmark"`` for the 50 bundled MSigDB
        Hallmark sets (human symbols; :func:`scgpt.datasets.hallmark`).
    key
        ``var`` column with the programs: the ``key_added`` of :func:`scgpt.tl.gene_programs`.
    background
        Genes added to the background (those of ``adata.var_names``; others are ignored). The default
        background is the genes that were clustered: the rows of ``adata.varm[key + '_umap']`` that are not
        NaN, as :func:`scgpt.tl.gene_programs` writes them (genes of clusters below its ``min_size`` included,
        genes outside the vocabulary not), or the genes with a program when that entry is missing. Pass e.g.
        ``adata.var_names`` to test against every measured gene instead. A background that lacks genes of the
        programs is warned about (they are added to it), one that holds none of them is an error (another
        naming of the genes, or the wrong list).
    min_overlap
        Smallest overlap reported (and smallest program / set size tested).
    fdr
        Threshold of the ``significant`` column.
    {eval_key_added}

    Returns
    -------
    One row per (program, gene set) with at least ``min_overlap`` shared genes, sorted by ``fdr`` then
    ``pval``: ``program``, ``gene_set``, ``overlap``, ``program_size`` (genes of the program),
    ``set_size`` (genes of the set in the background), ``genes`` (the shared genes, comma-separated),
    ``odds_ratio`` (sample odds ratio of the 2 x 2 table, ``inf`` when the program or set lies inside the
    other), ``pval``, ``fdr``, ``significant`` (``fdr < fdr``). With ``key_added``:

    ``adata.uns[key_added]`` : dict
        ``params``, ``results`` (the DataFrame) and ``evaluator`` (``"scgpt.tl.enrich_programs"``).

    Examples
    --------
    >>> scgpt.tl.gene_programs(adata, "demo")  # doctest: +SKIP
    >>> scgpt.tl.enrich_programs(adata, gene_sets="hallmark").head()  # doctest: +SKIP
    """
    from scipy.stats import false_discovery_control, hypergeom

    start = time.perf_counter()
    fn = "enrich_programs"
    check_adata(adata)
    if key not in adata.var.columns:
        raise KeyError(
            f"{fn}: adata.var has no {key!r} column; run scgpt.tl.gene_programs first (it writes the programs to "
            f"adata.var[{key!r}]), or pass key= naming the column that holds them."
        )
    if key_added is not None:
        check_key_added(key_added, reads=(key,), slot="uns")
    if min_overlap < 1:
        raise ValueError(f"{fn}: min_overlap must be at least 1, got {min_overlap}.")
    if not 0 < fdr <= 1:
        raise ValueError(f"{fn}: fdr must be in (0, 1], got {fdr}.")
    if not adata.var_names.is_unique:
        raise ValueError(f"{fn}: adata.var_names are not unique; call adata.var_names_make_unique() first.")
    labels = adata.var[key]
    has = ~missing_values(labels)
    if not has.any():
        raise ValueError(f"{fn}: no gene has a program in adata.var[{key!r}]; nothing to test.")
    var_names = adata.var_names.astype(str)
    names = list(labels.cat.categories) if isinstance(labels.dtype, pd.CategoricalDtype) else sorted(set(labels[has]))
    programs = {str(p): set(var_names[has & (labels == p).to_numpy()]) for p in names}
    programs = {p: g for p, g in programs.items() if g}
    sets = _gene_sets(gene_sets)

    clustered = has.copy()
    if f"{key}_umap" in adata.varm:  # gene_programs' UMAP: a row for every gene it clustered, NaN for the others
        clustered |= ~np.isnan(np.asarray(adata.varm[f"{key}_umap"], dtype=np.float64)).any(1)
    universe = set(var_names[clustered])
    if background is not None:
        universe |= _background(background, var_names, programs)
    M = len(universe)
    in_bg = {s: set(g) & universe for s, g in sets.items()}
    if not any(in_bg.values()):
        raise ValueError(
            f"{fn}: no gene of the {len(sets)} gene sets is in the background of {M} genes (first: "
            f"{_names(sorted(universe))}); do the gene sets use the same names (e.g. human symbols)?"
        )

    rows, pvals = [], []
    for p, members in programs.items():
        for s, set_genes in in_bg.items():
            N, K = len(members), len(set_genes)
            if N < min_overlap or K < min_overlap:
                continue
            shared = members & set_genes
            x = len(shared)
            pvals.append(float(np.clip(hypergeom.sf(x - 1, M, K, N), 0.0, 1.0)))
            a, b, c, d = x, N - x, K - x, M - N - K + x
            with np.errstate(divide="ignore", invalid="ignore"):
                odds = np.float64(a * d) / np.float64(b * c)
            rows.append((p, s, x, N, K, ",".join(sorted(shared)), float(odds)))
    n_tests = len(rows)
    columns = ["program", "gene_set", "overlap", "program_size", "set_size", "genes", "odds_ratio", "pval", "fdr"]
    if n_tests:
        table = pd.DataFrame(rows, columns=columns[:7])
        table["pval"] = pvals
        table["fdr"] = false_discovery_control(np.asarray(pvals), method="bh")
        table = table[table["overlap"] >= min_overlap]
    else:
        table = pd.DataFrame(
            {c: pd.Series(dtype=float if c in ("odds_ratio", "pval", "fdr") else object) for c in columns}
        )
    table = table.sort_values(["fdr", "pval", "program", "gene_set"], kind="stable").reset_index(drop=True)
    table = table.astype({"overlap": int, "program_size": int, "set_size": int})
    table["significant"] = (table["fdr"] < fdr).to_numpy(dtype=bool)

    n_sig = int(table["significant"].sum())
    logger.info(
        f"enrichment of {len(programs)} programs in {len(sets)} gene sets on a background of {M} genes: "
        f"{n_tests} tests, {len(table)} with overlap >= {min_overlap}, {n_sig} at FDR < {fdr}"
    )
    for r in table.head(min(n_sig, 5)).itertuples():
        logger.info(f"    program {r.program}: {r.gene_set} ({r.overlap}/{r.program_size} genes, FDR {r.fdr:.2g})")
    params = {
        "gene_sets": str(gene_sets) if isinstance(gene_sets, str | PathLike) else f"{len(sets)} sets",
        "key": key,
        "background": None if background is None else "given",
        "n_background": M,
        "min_overlap": min_overlap,
        "fdr": fdr,
        "n_tests": n_tests,
    }
    if key_added is not None:
        warn_overwrite(adata, "uns", key_added)
        record(adata, key_added, params, start=start, added=[], results=table, evaluator=f"scgpt.tl.{fn}")
    else:
        log_added(start, [])
    return table


def _gene_sets(gene_sets: object) -> dict[str, list[str]]:
    """Gene sets as a dict from name to unique genes, from a dict, a DataFrame, a GMT path or ``"hallmark"``."""
    fn = caller()
    if isinstance(gene_sets, str) and gene_sets == "hallmark":
        from ..datasets import hallmark

        sets = hallmark()
    elif isinstance(gene_sets, str | PathLike):
        path = Path(gene_sets)
        if not path.is_file():
            raise FileNotFoundError(
                f"{fn}: gene_sets={str(gene_sets)!r} is neither 'hallmark' nor an existing .gmt file; pass a path, "
                "a dict from set name to genes, or a DataFrame with 'source' (set) and 'target' (gene) columns."
            )
        from ..datasets import read_gmt

        sets = read_gmt(path)
    elif isinstance(gene_sets, pd.DataFrame):
        _check_columns(gene_sets, ("source", "target"), what="gene_sets")
        sets = {str(s): list(g) for s, g in gene_sets.groupby("source", sort=False, observed=True)["target"]}
    elif isinstance(gene_sets, Mapping):
        sets = {}
        for s, g in gene_sets.items():
            if isinstance(g, str):
                raise TypeError(f"{fn}: gene set {s!r} is a string; give its genes as a list.")
            sets[str(s)] = list(g)
    else:
        raise TypeError(
            f"{fn}: gene_sets must be 'hallmark', a .gmt path, a dict or a DataFrame, got {type(gene_sets).__name__}."
        )
    out = {s: list(dict.fromkeys(str(x) for x in g)) for s, g in sets.items()}
    out = {s: g for s, g in out.items() if g}
    if not out:
        raise ValueError(f"{fn}: no gene set has any gene.")
    return out
