"""Perturbation screens: label conventions, GEARS converters and seeded perturbation splits.

Our convention (pertpy / scPerturb): an AnnData of counts whose ``obs[perturbation_key]`` (default
``"perturbation"``) holds the target gene of each cell, or several target genes joined by ``"+"``
(``"JAK2"``, ``"JAK2+STAT1"``), and a control label (default ``"control"``) for unperturbed cells.

GEARS' convention (``gears.PertData``): ``obs["condition"]`` is ``"ctrl"`` for controls, ``"A+ctrl"``
(or ``"ctrl+A"``) for single perturbations and ``"A+B"`` for pairs; ``obs["cell_type"]``,
``obs["condition_name"]`` (``"{cell_type}_{condition}_{dose_val}"``), ``var["gene_name"]``; ``X`` holds
log1p(normalize_total) values; ``uns`` holds the differential-expression keys
(``rank_genes_groups_cov_all``, ``top_non_dropout_de_20``, ...). :func:`to_gears` and :func:`from_gears`
convert between the two without importing GEARS or torch-geometric.

This module imports nothing above :mod:`scgpt.nn` (it is part of the data layer).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .._logging import caller, logger, named, warn
from ._matrix import as_csr as _as_csr
from ._matrix import check_adata, check_values, get_matrix, log_normalize_counts, looks_like_counts, missing_values

if TYPE_CHECKING:
    from anndata import AnnData

SEP = "+"
GEARS_CONTROL = "ctrl"
GEARS_DE_KEYS = (
    "rank_genes_groups_cov_all",
    "top_non_dropout_de_20",
    "top_non_zero_de_20",
    "non_zeros_gene_idx",
    "non_dropout_gene_idx",
)


# ---------------------------------------------------------------------------- labels
def parse_perturbation(label: str | Sequence[str], *, control: str = "control") -> tuple[str, ...]:
    """The target genes of a perturbation label.

    Parameters
    ----------
    label
        ``"A"``, ``"A+B"`` (genes joined by ``"+"``), the control label, or a sequence of gene names
        (``["A", "B"]``).
    control
        The control label; it parses to ``()``.

    Returns
    -------
    The target genes in the order given, e.g. ``("A", "B")``; ``()`` for the control.

    Raises
    ------
    ValueError
        For empty labels or parts (``""``, ``"A+"``, ``"A++B"``), a gene repeated in one label, the
        control label used as a part of a combination, or GEARS' ``"ctrl"`` token in a label (``"A+ctrl"``).
    """
    if isinstance(label, str):
        text = label.strip()
        if text == control:
            return ()
        parts = [p.strip() for p in text.split(SEP)]
    else:
        parts = [str(p).strip() for p in label]
    if not parts or any(p == "" for p in parts):
        raise ValueError(
            f"Invalid perturbation label {label!r}: expected a gene name, genes joined by {SEP!r} "
            f"(e.g. 'JAK2+STAT1') or the control label {control!r}."
        )
    if control in parts:
        raise ValueError(
            f"Invalid perturbation label {label!r}: the control label {control!r} cannot be part of a combination."
        )
    if len(set(parts)) < len(parts):
        raise ValueError(f"Invalid perturbation label {label!r}: a gene is repeated.")
    if GEARS_CONTROL in parts:
        raise ValueError(
            f"Invalid perturbation label {label!r}: {GEARS_CONTROL!r} is GEARS' control token, not a gene; GEARS "
            "conditions ('A+ctrl') convert with scgpt.data.from_gears (or pass control='ctrl' for that label)."
        )
    return tuple(parts)


def perturbation_label(genes: str | Sequence[str], *, control: str = "control") -> str:
    """The label of a perturbation in our convention: genes joined by ``"+"``; no gene gives ``control``.

    Parameters
    ----------
    genes
        A label (validated with :func:`parse_perturbation`, returned without surrounding spaces) or a
        sequence of gene names.
    control
        The control label.

    Returns
    -------
    ``"A"``, ``"A+B"`` or ``control``.
    """
    if isinstance(genes, str):
        parts = parse_perturbation(genes, control=control)
        return control if not parts else SEP.join(parts)
    if len(genes) == 0:
        return control
    return SEP.join(parse_perturbation(genes, control=control))


def perturbation_labels(
    adata: AnnData, *, perturbation_key: str = "perturbation", control: str = "control"
) -> pd.Series:
    """The checked ``obs[perturbation_key]`` of a screen as strings.

    Parameters
    ----------
    adata
        The screen.
    perturbation_key
        ``obs`` column with the perturbation labels.
    control
        Label of control cells; it must occur.

    Returns
    -------
    Series of labels (stripped strings) indexed by ``obs_names``. Raises clear errors for a missing column,
    missing values, no control cells and malformed labels.
    """
    fn = caller()
    check_adata(adata)
    if perturbation_key not in adata.obs:
        raise KeyError(
            f"{fn}: {perturbation_key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}); pass "
            "perturbation_key= naming the column with the target gene(s) of each cell. GEARS data (obs['condition'])"
            " convert with scgpt.data.from_gears."
        )
    values = adata.obs[perturbation_key]
    missing = missing_values(values)
    if missing.any():
        first = adata.obs_names[np.flatnonzero(missing)[0]]
        raise ValueError(
            f"{fn}: {int(missing.sum())} cells have no label in obs[{perturbation_key!r}] (first: {first!r}); label "
            f"them (control cells: {control!r}) or remove them."
        )
    labels = values.astype(str).str.strip()
    if not (labels == control).any():
        examples = ", ".join(repr(v) for v in labels.value_counts().index[:5])
        hint = " (GEARS' 'ctrl'? convert with scgpt.data.from_gears)" if (labels == GEARS_CONTROL).any() else ""
        raise ValueError(
            f"{fn}: no control cells: the control label {control!r} does not occur in obs[{perturbation_key!r}] "
            f"(most frequent labels: {examples}){hint}. Pass control= naming the label of unperturbed cells."
        )
    seen: dict[frozenset[str], str] = {}
    for label in labels.unique():
        genes = frozenset(parse_perturbation(label, control=control))
        if genes in seen:  # 'A+B' and 'B+A': one perturbation under two labels would be scored as two
            raise ValueError(
                f"{fn}: obs[{perturbation_key!r}] names one perturbation twice, as {seen[genes]!r} and {label!r}; "
                f"relabel the cells of one of them (e.g. obs[{perturbation_key!r}] = obs[{perturbation_key!r}]"
                f".replace({label!r}, {seen[genes]!r}))."
            )
        seen[genes] = label
    return pd.Series(labels.to_numpy(), index=adata.obs_names, name=perturbation_key)


def perturbed_genes(labels: Iterable[str], *, control: str = "control") -> list[str]:
    """Sorted unique target genes of the labels (the control label adds none)."""
    return sorted({g for label in labels for g in parse_perturbation(label, control=control)})


# ---------------------------------------------------------------------------- GEARS
def _gears_condition(label: str, control: str) -> str:
    genes = parse_perturbation(label, control=control)
    if not genes:
        return GEARS_CONTROL
    if len(genes) == 1:
        return f"{genes[0]}{SEP}{GEARS_CONTROL}"
    return SEP.join(genes)


def _from_gears_condition(condition: str, control: str) -> str:
    parts = [p.strip() for p in str(condition).split(SEP)]
    genes = [p for p in parts if p != GEARS_CONTROL]
    if any(p == "" for p in parts):
        raise ValueError(f"Invalid GEARS condition {condition!r}: expected 'ctrl', 'A+ctrl' or 'A+B'.")
    return perturbation_label(genes, control=control)


def _resolve_cell_type(adata: AnnData, cell_type: str | None) -> pd.Series:
    if cell_type is None:
        if "cell_type" in adata.obs:
            return adata.obs["cell_type"].astype(str)
        return pd.Series("cell", index=adata.obs_names)
    if cell_type in adata.obs:
        return adata.obs[cell_type].astype(str)
    return pd.Series(str(cell_type), index=adata.obs_names)


@named()
def to_gears(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    cell_type: str | None = None,
    layer: str | None = None,
    compute_de: bool = True,
) -> AnnData:
    """A screen in our convention as an AnnData in GEARS' ``PertData`` format (a new object).

    Parameters
    ----------
    adata
        The screen: counts, with the target gene(s) of each cell in ``obs[perturbation_key]``.
    perturbation_key
        ``obs`` column with the perturbation labels.
    control
        Label of control cells.
    cell_type
        An ``obs`` column with the cell type, or one cell-type name for all cells; ``None`` uses
        ``obs["cell_type"]`` when present, else ``"cell"``. A name that is an ``obs`` column is read as one.
    layer
        Layer with the counts; ``None`` uses ``adata.X``.
    compute_de
        Also write GEARS' differential-expression keys to ``uns`` (one t-test per condition against the
        control cells of its cell type; the slow part on large screens).

    Returns
    -------
    AnnData with ``X`` = log1p(normalize_total 1e4) (float32, what GEARS trains on), ``layers["counts"]``
    = the counts, ``var["gene_name"]`` = ``var_names`` and ``obs`` columns ``condition`` (``"ctrl"``,
    ``"A+ctrl"``, ``"A+B"``), ``cell_type``, ``dose_val`` (``"1+1"`` for two-part conditions, else
    ``"1"``), ``control`` (1 for ``"ctrl"``, else 0) and ``condition_name``
    (``"{cell_type}_{condition}_{dose_val}"``), besides the input's other columns. With ``compute_de``,
    ``uns`` holds, keyed by ``condition_name`` of every non-control condition:

    - ``rank_genes_groups_cov_all``: all genes ranked by absolute t-test score against the control
      cells of the same cell type (scanpy ``rank_genes_groups(method="t-test", rankby_abs=True)``);
    - ``non_zeros_gene_idx``: indices of genes with a non-zero mean in the condition;
    - ``non_dropout_gene_idx``: the same plus genes with a zero mean in both the condition and its
      controls (i.e. all but the genes that drop to zero);
    - ``top_non_zero_de_20`` / ``top_non_dropout_de_20``: the first 20 ranked genes among those.

    Combinations of more than two genes are kept (``"A+B+C"``) with a warning: GEARS handles at most two.
    """
    from anndata import AnnData

    labels = perturbation_labels(adata, perturbation_key=perturbation_key, control=control)
    counts = _as_csr(get_matrix(adata, layer))
    _check_counts(counts)
    n_parts = labels.map(lambda s: len(parse_perturbation(s, control=control)))
    if (n_parts > 2).any():
        warn(
            f"to_gears: {int((n_parts > 2).sum())} cells carry combinations of more than two genes; GEARS handles "
            "at most two, so its model will not accept them."
        )
    obs = adata.obs.copy()
    condition = labels.map(lambda s: _gears_condition(s, control))
    obs["condition"] = pd.Categorical(condition)
    obs["cell_type"] = pd.Categorical(_resolve_cell_type(adata, cell_type))
    obs["dose_val"] = pd.Categorical(np.where(condition.str.count(r"\+") == 1, "1+1", "1"))
    obs["control"] = (condition == GEARS_CONTROL).astype(int).to_numpy()
    obs["condition_name"] = pd.Categorical(
        obs["cell_type"].astype(str) + "_" + condition.astype(str) + "_" + obs["dose_val"].astype(str)
    )
    var = adata.var.copy()
    var["gene_name"] = adata.var_names.astype(str)
    out = AnnData(X=log_normalize_counts(counts).astype(np.float32), obs=obs, var=var)
    out.layers["counts"] = counts.copy()
    out.uns["log1p"] = {"base": None}
    if compute_de:
        out.uns.update(gears_de_keys(out))
    logger.info(
        f"to_gears: {int((condition != GEARS_CONTROL).sum())} perturbed and {int(out.obs['control'].sum())} control"
        f" cells, {condition.nunique()} conditions"
    )
    return out


@named()
def from_gears(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    condition_key: str = "condition",
) -> AnnData:
    """A GEARS ``PertData`` AnnData in our convention (a new object).

    Parameters
    ----------
    adata
        AnnData with ``obs[condition_key]`` in GEARS' format (``"ctrl"``, ``"A+ctrl"``, ``"ctrl+A"``,
        ``"A+B"``) and optionally ``var["gene_name"]``.
    perturbation_key
        ``obs`` column written with our labels (``"A"``, ``"A+B"``, ``control``).
    control
        Label written for GEARS' ``"ctrl"``.
    condition_key
        ``obs`` column with GEARS' conditions.

    Returns
    -------
    AnnData with ``obs[perturbation_key]`` and all other ``obs`` columns kept; ``var_names`` = ``var["gene_name"]``
    when present (made unique with a warning if needed; the previous names go to ``var["gears_var_name"]``).
    ``X`` = ``layers["counts"]`` when the input has that layer (as :func:`to_gears` writes it), else the input's
    ``X``; a non-count ``X`` is taken as log1p(normalize_total) values, as GEARS stores them, and marked with
    ``uns["log1p"]`` (scanpy's marker) so that :func:`scgpt.tl.perturbation_baseline` and
    :func:`scgpt.tl.evaluate_perturbation` use it as such. GEARS' ``uns`` keys are kept; they are keyed by
    GEARS' condition names and gene names as they were.
    """
    import anndata as ad

    check_adata(adata)
    if condition_key not in adata.obs:
        raise KeyError(
            f"from_gears: {condition_key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}); GEARS "
            "data have obs['condition'] with values like 'ctrl', 'KLF1+ctrl', 'KLF1+MAP2K6'."
        )
    missing = missing_values(adata.obs[condition_key])
    if missing.any():
        raise ValueError(f"from_gears: {int(missing.sum())} cells have no value in obs[{condition_key!r}].")
    conditions = adata.obs[condition_key].astype(str)
    mapping = {c: _from_gears_condition(c, control) for c in conditions.unique()}
    if control not in mapping.values():
        raise ValueError(f"from_gears: no control cells ('{GEARS_CONTROL}') in obs[{condition_key!r}].")
    has_counts = "counts" in adata.layers
    X = adata.layers["counts"] if has_counts else adata.X
    obs = adata.obs.copy()
    obs[perturbation_key] = pd.Categorical(conditions.map(mapping))
    var = adata.var.copy()
    out = ad.AnnData(X=X.copy(), obs=obs, var=var, uns=dict(adata.uns))
    if "gene_name" in var:
        names = var["gene_name"].astype(str)
        if not (names.to_numpy() == adata.var_names.to_numpy()).all():
            out.var["gears_var_name"] = adata.var_names.astype(str)
            out.var_names = pd.Index(names.to_numpy())
            if not out.var_names.is_unique:
                warn("from_gears: var['gene_name'] has duplicates; they are made unique (suffixes -1, -2, ...).")
                out.var_names_make_unique()
    if has_counts:
        out.uns.pop("log1p", None)
    elif not looks_like_counts(_as_csr(X)):
        out.uns["log1p"] = {"base": None}
    return out


def gears_de_keys(gears: AnnData) -> dict[str, dict]:
    """GEARS' differential-expression ``uns`` keys of an AnnData in GEARS format (see :func:`to_gears`).

    ``gears.X`` must hold log1p(normalize_total) values; conditions are compared with the ``"ctrl"`` cells
    of their cell type. Conditions of one cell are ranked by absolute mean difference (no t-test possible).
    """
    out: dict[str, dict] = {key: {} for key in GEARS_DE_KEYS}
    X = _as_csr(get_matrix(gears, None))
    gene_ids = gears.var_names.to_numpy()
    names = gears.obs["condition_name"].astype(str).to_numpy()
    cell_types = gears.obs["cell_type"].astype(str).to_numpy()
    for cell_type in pd.unique(cell_types):
        in_type = cell_types == cell_type
        ctrl_name = f"{cell_type}_{GEARS_CONTROL}_1"
        if not (in_type & (names == ctrl_name)).any():
            warn(f"gears_de_keys: no control cells of cell type {cell_type!r}; its conditions get no DE keys.")
            continue
        groups = sorted(set(names[in_type]) - {ctrl_name})
        ranked = rank_genes_vs_control(X[in_type], names[in_type], groups, ctrl_name)
        ctrl_mean = _group_mean(X[in_type], names[in_type], ctrl_name)
        for group in groups:
            mean, order = _group_mean(X[in_type], names[in_type], group), ranked[group]
            non_zero = mean != 0
            non_dropout = non_zero | (ctrl_mean == 0)
            out["rank_genes_groups_cov_all"][group] = gene_ids[order]
            out["non_zeros_gene_idx"][group] = np.flatnonzero(non_zero)
            out["non_dropout_gene_idx"][group] = np.flatnonzero(non_dropout)
            out["top_non_zero_de_20"][group] = gene_ids[order[non_zero[order]][:20]]
            out["top_non_dropout_de_20"][group] = gene_ids[order[non_dropout[order]][:20]]
    return out


def _group_mean(X, names: np.ndarray, group: str) -> np.ndarray:
    return np.asarray(X[names == group].mean(0), dtype=np.float64).ravel()


def rank_genes_vs_control(
    X, names: np.ndarray, groups: Sequence[str], reference: str, *, n_genes: int | None = None
) -> dict[str, np.ndarray]:
    """Gene indices of each group ranked by differential expression against the reference cells, strongest first.

    Parameters
    ----------
    X
        Cells x genes, log1p(normalize_total) values.
    names
        Group of each cell.
    groups
        Groups to rank (each against ``reference``).
    reference
        Group of the control cells.
    n_genes
        Genes returned per group (``None``: all).

    Returns
    -------
    Per group, gene indices in the order of scanpy's ``rank_genes_groups(method="t-test", rankby_abs=True)``
    (Welch t-test of the group against the reference, ranked by absolute score; genes constant in both
    groups score 0). Groups of one cell, or a reference of one cell, are ranked by the absolute difference
    of means instead (no variance to test with).
    """
    import warnings

    import scanpy as sc
    from anndata import AnnData

    n_genes = X.shape[1] if n_genes is None else min(n_genes, X.shape[1])
    sizes = pd.Series(names).value_counts()
    if sizes.get(reference, 0) == 0:
        raise ValueError(f"rank_genes_vs_control: no cells of the reference group {reference!r}.")
    testable = [g for g in groups if sizes.get(g, 0) >= 2] if sizes[reference] >= 2 else []
    ranked: dict[str, np.ndarray] = {}
    if testable:
        keep = np.isin(names, [*testable, reference])
        obs = pd.DataFrame({"group": pd.Categorical(names[keep])}, index=np.arange(keep.sum()).astype(str))
        sub = AnnData(X=X[keep], obs=obs, var=pd.DataFrame(index=np.arange(X.shape[1]).astype(str)))
        sub.uns["log1p"] = {"base": None}
        with warnings.catch_warnings():  # genes constant in both groups: 0/0 statistics, ranked as 0
            warnings.simplefilter("ignore", RuntimeWarning)
            sc.tl.rank_genes_groups(
                sub, "group", groups=testable, reference=reference, method="t-test", rankby_abs=True, n_genes=n_genes
            )
        result = sub.uns["rank_genes_groups"]["names"]
        ranked = {g: result[g].astype(int) for g in testable}
    ref_mean = _group_mean(X, names, reference)
    for g in groups:
        if g not in ranked:
            if sizes.get(g, 0) == 0:
                raise ValueError(f"rank_genes_vs_control: no cells of group {g!r}.")
            diff = np.abs(_group_mean(X, names, g) - ref_mean)
            ranked[g] = np.argsort(-diff, kind="stable")[:n_genes]
    return ranked


# ---------------------------------------------------------------------------- expression helpers (numpy only)
def _check_counts(X) -> None:
    fn = caller()
    check_values(X, what=f"{fn}: the expression matrix")
    if not looks_like_counts(X):
        raise ValueError(
            f"{fn} expects raw counts (non-negative integers) and the matrix holds non-integer values. Pass the "
            "counts (layer= naming the layer that holds them)."
        )


# ---------------------------------------------------------------------------- splits
SplitMode = Literal["single", "combo"]


@dataclass
class PerturbationSplit:
    """Train / validation / test perturbation labels of a seeded split (:func:`split_perturbations`).

    Attributes
    ----------
    train, val, test
        Sorted perturbation labels (the control label is in none of them).
    subgroup
        Category of each validation and test label: ``"unseen_single"`` (a single perturbation whose gene
        is in no training label), ``"combo_seen0"``, ``"combo_seen1"``, ``"combo_seen2"`` (a combination
        with 0, 1 or 2 genes seen in training) or ``"seen_single"``.
    unused
        Labels left out of all three sets (a ``combo`` split with ``n_seen`` drops the labels that
        would put held-out genes into training without belonging to the requested category).
    seed
        The seed of the split.
    """

    train: list[str]
    val: list[str]
    test: list[str]
    subgroup: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    seed: int = 0

    def __iter__(self):
        """Unpack as ``train, val, test = split``."""
        return iter((self.train, self.val, self.test))


def _category(genes: tuple[str, ...], seen: set[str]) -> str:
    n_seen = sum(g in seen for g in genes)
    if len(genes) == 1:
        return "seen_single" if n_seen else "unseen_single"
    return f"combo_seen{n_seen}" if len(genes) == 2 else f"combo{len(genes)}_seen{n_seen}"


def _check_fraction(value: float, name: str) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"split_perturbations: {name} must be in [0, 1), got {value}.")


def split_perturbations(
    labels: Iterable[str],
    *,
    mode: SplitMode = "single",
    test_size: float = 0.2,
    val_size: float = 0.1,
    seed: int = 0,
    n_seen: int | None = None,
    control: str = "control",
    max_tries: int = 1000,
) -> PerturbationSplit:
    """Seeded, reproducible train/validation/test split of perturbation labels.

    Parameters
    ----------
    labels
        Perturbation labels (e.g. ``adata.obs["perturbation"]``; repeats and the control label are ignored).
        The split depends only on the set of labels and ``seed``, not on their order.
    mode
        ``"single"``: unseen single perturbations. Target genes are held out whole: a seeded
        ``test_size`` share of the genes (at least one) goes to test, a ``val_size`` share of the rest to
        validation. A label goes to test if any of its genes is a test gene, else to validation if any
        is a validation gene, else to training, so no test or validation gene occurs in a training label.

        ``"combo"``: unseen combinations with 0, 1 or 2 genes seen in training (GEARS' "simulation"
        split). A seeded ``test_size`` share of the genes (at least one) is held out as unseen; singles
        of unseen genes go to test (``unseen_single``), combinations to test as ``combo_seen0`` (both
        genes unseen) or ``combo_seen1``; of the combinations whose genes are all seen, a ``test_size``
        share goes to test (``combo_seen2``) and a ``val_size`` share to validation, the rest trains
        with the seen singles. A gene counts as seen when it occurs in a training label (single or
        combination); categories are computed from the final training set. The held-out gene set is
        redrawn (from the same seeded generator) until every combination category is non-empty; an error
        says when ``max_tries`` draws cannot do so.
    test_size
        Share of genes (and, in ``combo`` mode, of the all-seen combinations) held out for testing, in [0, 1).
    val_size
        Share of the remaining genes (``single``) or all-seen combinations (``combo``) for validation.
    seed
        Seed of :func:`numpy.random.default_rng`.
    n_seen
        ``combo`` mode only: test on one category, combinations with exactly ``n_seen`` (0, 1 or 2) seen
        genes (GEARS' ``combo_seen{n}`` splits). Labels with held-out genes outside that category are
        left out (:attr:`PerturbationSplit.unused`); for ``n_seen=2`` no gene is held out.
    control
        The control label.
    max_tries
        Draws of the held-out genes in ``combo`` mode before giving up.

    Returns
    -------
    :class:`PerturbationSplit` with sorted ``train``, ``val`` and ``test`` lists (disjoint), the category of
    each held-out label and the labels left out. Unpacks as ``train, val, test``.
    """
    unique = sorted({str(s).strip() for s in labels} - {control})
    parsed = {label: parse_perturbation(label, control=control) for label in unique}
    if not parsed:
        raise ValueError(f"split_perturbations: no perturbation labels besides the control {control!r}.")
    _check_fraction(test_size, "test_size")
    _check_fraction(val_size, "val_size")
    rng = np.random.default_rng(seed)
    if mode == "single":
        if n_seen is not None:
            raise ValueError("split_perturbations: n_seen applies to mode='combo' only.")
        return _split_single(parsed, test_size, val_size, rng, seed)
    if mode == "combo":
        if n_seen not in (None, 0, 1, 2):
            raise ValueError(f"split_perturbations: n_seen must be None, 0, 1 or 2, got {n_seen!r}.")
        return _split_combo(parsed, test_size, val_size, rng, seed, n_seen, max_tries)
    raise ValueError(f"split_perturbations: mode must be 'single' or 'combo', got {mode!r}.")


def _split_single(parsed, test_size, val_size, rng, seed) -> PerturbationSplit:
    genes = sorted({g for gs in parsed.values() for g in gs})
    if len(genes) < 2:
        raise ValueError("split_perturbations: a split by target gene needs at least two target genes.")
    order = [genes[i] for i in rng.permutation(len(genes))]
    n_test = min(max(1, int(round(test_size * len(genes)))), len(genes) - 1)
    n_val = min(int(round(val_size * (len(genes) - n_test))), len(genes) - n_test - 1)
    test_genes, val_genes = set(order[:n_test]), set(order[n_test : n_test + n_val])
    train, val, test = [], [], []
    for label, gs in parsed.items():
        if test_genes.intersection(gs):
            test.append(label)
        elif val_genes.intersection(gs):
            val.append(label)
        else:
            train.append(label)
    seen = {g for label in train for g in parsed[label]}
    subgroup = {label: _category(parsed[label], seen) for label in (*val, *test)}
    split = PerturbationSplit(sorted(train), sorted(val), sorted(test), subgroup, [], seed)
    logger.info(f"split_perturbations: {len(train)} train, {len(val)} validation, {len(test)} test perturbations")
    return split


def _split_combo(parsed, test_size, val_size, rng, seed, n_seen, max_tries) -> PerturbationSplit:
    combos = {label: gs for label, gs in parsed.items() if len(gs) == 2}
    if not combos:
        raise ValueError("split_perturbations: mode='combo' needs combinations of two genes ('A+B') among the labels.")
    if any(len(gs) > 2 for gs in parsed.values()):
        raise ValueError("split_perturbations: mode='combo' handles single genes and pairs only.")
    genes = sorted({g for gs in parsed.values() for g in gs})
    n_unseen = 0 if n_seen == 2 else min(max(1, int(round(test_size * len(genes)))), len(genes) - 1)
    wanted = {f"combo_seen{n_seen}"} if n_seen is not None else {"combo_seen0", "combo_seen1", "combo_seen2"}
    for _ in range(max_tries):
        unseen = _draw_unseen(combos, genes, n_unseen, rng, need_pair=n_seen in (None, 0))
        split = _assign_combo(parsed, unseen, test_size, val_size, rng, n_seen)
        if wanted <= set(split.subgroup.values()) and split.train:
            split.seed = seed
            categories = pd.Series([split.subgroup[s] for s in split.test]).value_counts().to_dict()
            logger.info(
                f"split_perturbations: {len(split.train)} train, {len(split.val)} validation, {len(split.test)} test "
                f"perturbations (test: {categories})"
            )
            return split
    raise ValueError(
        f"split_perturbations: no draw of {n_unseen} held-out genes out of {len(genes)} gives test combinations "
        f"of every category {sorted(wanted)} in {max_tries} tries; change test_size or n_seen, or add combinations."
    )


def _draw_unseen(combos, genes, n_unseen, rng, *, need_pair: bool) -> set[str]:
    """``n_unseen`` random genes; with ``need_pair``, both genes of a random combination are among them."""
    if n_unseen == 0:
        return set()
    unseen: list[str] = []
    if need_pair and n_unseen >= 2:
        pairs = sorted(combos.values())
        unseen = list(pairs[rng.integers(len(pairs))])
    rest = [g for g in genes if g not in unseen]
    unseen += [rest[i] for i in rng.permutation(len(rest))[: n_unseen - len(unseen)]]
    return set(unseen)


def _assign_combo(parsed, unseen, test_size, val_size, rng, n_seen) -> PerturbationSplit:
    """Labels with held-out genes to test; a share of the all-seen combinations to test and validation."""
    held, singles, combos, unused = [], [], [], []
    for label, genes in parsed.items():
        n_unseen = sum(g in unseen for g in genes)
        if n_unseen == 0:
            (combos if len(genes) == 2 else singles).append(label)
        elif n_seen is None or (len(genes) == 2 and 2 - n_unseen == n_seen):
            held.append(label)
        else:
            unused.append(label)
    order = [combos[i] for i in rng.permutation(len(combos))]
    n_test = 0
    if n_seen in (None, 2) and order and test_size > 0:
        n_test = max(1, int(round(test_size * len(order))))
    n_val = min(int(round(val_size * len(order))), max(0, len(order) - n_test - 1))
    train = singles + order[n_test + n_val :]
    val, test = order[n_test : n_test + n_val], held + order[:n_test]
    seen = {g for label in train for g in parsed[label]}
    subgroup = {label: _category(parsed[label], seen) for label in (*val, *test)}
    if n_seen is not None:  # a held-out label whose other gene never trains is not of the requested category
        off = [label for label in test if subgroup[label] != f"combo_seen{n_seen}"]
        unused += off
        test = [label for label in test if label not in off]
        subgroup = {label: c for label, c in subgroup.items() if label not in off}
    return PerturbationSplit(sorted(train), sorted(val), sorted(test), subgroup, sorted(unused))
