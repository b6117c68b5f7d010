"""SYNTHETIC perturbation screens: knock-downs propagated through a real signed TF -> target network."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._logging import logger, warn

if TYPE_CHECKING:
    from anndata import AnnData

SYNTHETIC_NOTE = (
    "SYNTHETIC data from scgpt.datasets.simulate_perturbations: counts sampled from a model, not measured. "
    "Knock-downs propagate through a signed TF->target network as a linear model on log expression."
)


def _check_network(network: pd.DataFrame) -> pd.DataFrame:
    """Signed edges ``source, target, weight (+1/-1)``: self-loops, missing and zero weights and duplicates dropped."""
    if not isinstance(network, pd.DataFrame) or not {"source", "target", "weight"} <= set(network.columns):
        raise ValueError(
            "simulate_perturbations: network must be a DataFrame with columns 'source', 'target' and 'weight' "
            "(signed, e.g. +1 activation, -1 repression), as scgpt.datasets.collectri() returns."
        )
    net = network[["source", "target", "weight"]].dropna().copy()
    net["source"], net["target"] = net["source"].astype(str), net["target"].astype(str)
    net["weight"] = np.sign(net["weight"].astype(float))
    net = net[(net["source"] != net["target"]) & (net["weight"] != 0)]
    net = net.drop_duplicates(["source", "target"]).reset_index(drop=True)
    if net.empty:
        raise ValueError("simulate_perturbations: the network has no usable edge (non-zero weight, no self-loop).")
    return net


def _requested_genes(singles, doubles) -> tuple[list[str], list[tuple[str, str]]]:
    named_singles = [] if isinstance(singles, int) else [str(g) for g in singles]
    named_doubles: list[tuple[str, str]] = []
    if not isinstance(doubles, int):
        for d in doubles:
            pair = tuple(p.strip() for p in d.split("+")) if isinstance(d, str) else tuple(str(p) for p in d)
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"simulate_perturbations: a double must name two different genes, got {d!r}.")
            named_doubles.append(pair)
    return named_singles, named_doubles


def _select_genes(net: pd.DataFrame, n_genes: int, required: list[str], rng: np.random.Generator) -> list[str]:
    """``required`` genes, randomly drawn well-connected TFs, then their targets (most co-regulated first)."""
    all_genes = pd.unique(pd.concat([net["source"], net["target"]]))
    unknown = [g for g in required if g not in set(all_genes)]
    if unknown:
        raise ValueError(f"simulate_perturbations: genes {unknown} are not in the network.")
    if n_genes >= len(all_genes):
        if n_genes > len(all_genes):
            warn(f"simulate_perturbations: the network has {len(all_genes)} genes; all are used (n_genes={n_genes}).")
        return sorted(all_genes)
    degree = net["source"].value_counts()
    n_tf = max(1, n_genes // 10)
    pool = [g for g in degree.index[: 5 * n_tf] if g not in required]
    genes = list(dict.fromkeys(required))
    genes += [pool[i] for i in rng.permutation(len(pool))[: max(0, n_tf - len(genes))]]
    genes = genes[:n_genes]
    regulators = set(genes)
    targets = net[net["source"].isin(regulators) & ~net["target"].isin(regulators)]
    support = targets["target"].value_counts()
    tiebreak = pd.Series(rng.random(len(support)), index=support.index)
    ranked = sorted(support.index, key=lambda g: (-support[g], tiebreak[g]))
    genes += ranked[: n_genes - len(genes)]
    if len(genes) < n_genes:
        rest = sorted(set(all_genes) - set(genes))
        genes += [rest[i] for i in rng.permutation(len(rest))[: n_genes - len(genes)]]
    return sorted(genes)


def _effect_matrix(edges: pd.DataFrame, genes: list[str]) -> np.ndarray:
    """``A[s, t]`` = signed strength of edge s -> t, divided by sqrt(in-degree of t) so hubs stay bounded."""
    index = {g: i for i, g in enumerate(genes)}
    A = np.zeros((len(genes), len(genes)))
    s, t = edges["source"].map(index).to_numpy(), edges["target"].map(index).to_numpy()
    A[s, t] = edges["weight"].to_numpy() * edges["strength"].to_numpy()
    in_degree = np.maximum((A != 0).sum(0), 1)
    return A / np.sqrt(in_degree)[None, :]


def _propagate(A: np.ndarray, clamp: dict[int, float], n_steps: int, damping: float) -> np.ndarray:
    """Change of log expression: knocked-down genes fixed, the rest ``damping * A^T d`` for ``n_steps`` steps."""
    fixed = np.zeros(A.shape[0])
    idx = np.array(list(clamp), dtype=int)
    fixed[idx] = list(clamp.values())
    d = fixed.copy()
    for _ in range(n_steps):
        d = damping * (A.T @ d)
        d[idx] = fixed[idx]
    return d


def _conditions(singles, doubles, named_singles, named_doubles, candidates, rng) -> list[tuple[str, ...]]:
    if isinstance(singles, int):
        if singles > len(candidates):
            raise ValueError(
                f"simulate_perturbations: {singles} singles requested but only {len(candidates)} simulated genes "
                "regulate another simulated gene; lower singles or raise n_genes."
            )
        named_singles = sorted(candidates[i] for i in rng.permutation(len(candidates))[:singles])
    conditions = [(g,) for g in named_singles]
    if isinstance(doubles, int):
        pool = named_singles if len(named_singles) >= 2 else candidates
        pairs = [(a, b) for i, a in enumerate(pool) for b in pool[i + 1 :]]
        if doubles > len(pairs):
            raise ValueError(
                f"simulate_perturbations: {doubles} doubles requested but {len(pairs)} pairs are possible."
            )
        named_doubles = [pairs[i] for i in sorted(rng.permutation(len(pairs))[:doubles])]
    return conditions + [tuple(p) for p in named_doubles]


def _sample_counts(log_mean: np.ndarray, n_cells: int, dispersion: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Negative binomial counts (gamma-Poisson; variance mu + dispersion mu^2) with log-normal size factors."""
    size = np.exp(rng.normal(0.0, 0.25, n_cells))
    mu = size[:, None] * np.exp(log_mean)[None, :]
    lam = rng.gamma(1.0 / dispersion, mu * dispersion) if dispersion > 0 else mu
    return rng.poisson(lam).astype(np.float32), size


def simulate_perturbations(
    *,
    n_genes: int = 200,
    n_cells_per_condition: int = 50,
    n_control_cells: int | None = None,
    singles: int | Sequence[str] = 10,
    doubles: int | Sequence[str | Sequence[str]] = 5,
    network: pd.DataFrame | None = None,
    knockdown: float = 0.9,
    n_steps: int = 3,
    damping: float = 0.5,
    strength: tuple[float, float] = (0.5, 1.0),
    dispersion: float = 0.2,
    seed: int = 0,
) -> AnnData:
    """A SYNTHETIC CRISPR knock-down screen: controls, single and double knock-downs on a real signed network.

    **The counts are simulated, not measured.** The model, per gene g (natural-log expected count at
    size factor 1):

    - baseline ``b_g ~ Normal(0, 1)`` (regulators ``Normal(0.5, 0.5)``, so knock-downs are visible);
    - a knock-down of gene k sets its change to ``log(1 - knockdown)`` (0.9: 10% of the expression left);
    - the change spreads along the edges, a linear structural model on log expression:
      ``d <- damping * A^T d`` for ``n_steps`` steps with knocked-down genes held at their value, where
      ``A[s, t]`` = sign of the edge (±1) x strength ~ Uniform(``strength``) / sqrt(in-degree of t);
    - counts ~ negative binomial with mean ``size_factor x exp(b + d)`` (size factor log-normal, sd 0.25)
      and variance ``mu + dispersion mu^2``.

    Doubles are additive in log space except where one target regulates the other (the regulated one
    is held at its knocked-down value): the additive baseline is close to the truth by construction.

    Parameters
    ----------
    n_genes
        Genes simulated: the named perturbed genes, randomly drawn TFs among the most connected (n_genes
        // 10 in all), then their targets (most co-regulated first).
    n_cells_per_condition
        Cells per perturbation.
    n_control_cells
        Control cells (default ``n_cells_per_condition``).
    singles
        Number of single knock-downs (random simulated genes with a target among the simulated genes)
        or their gene names.
    doubles
        Number of double knock-downs (random pairs of the singles) or the pairs (``"A+B"`` or ``("A", "B")``).
    network
        Signed edges, a DataFrame with ``source``, ``target``, ``weight`` (sign used); default
        :func:`scgpt.datasets.collectri` (real CollecTRI TF -> target edges).
    knockdown
        Share of expression a knock-down removes, in (0, 1).
    n_steps
        Propagation steps (how far along the network effects travel).
    damping
        Factor per step (< 1 keeps effects decaying with distance).
    strength
        Range of the edge strengths.
    dispersion
        Negative binomial dispersion (0: Poisson).
    seed
        Seed of every random choice; the same arguments give the same data.

    Returns
    -------
    AnnData of counts (CSR float32), genes = gene symbols of the network, with ``obs["perturbation"]``
    (``"control"``, ``"A"``, ``"A+B"``), ``obs["synthetic"] = True`` and ``obs["size_factor"]``;
    ``var["baseline_log_mean"]``, ``var["regulator"]`` (has a target among the genes) and
    ``var["perturbed"]``; ``uns["simulation"]``: ``synthetic`` (True), ``note``, ``params``,
    ``true_log_mean`` (DataFrame conditions x genes, ``b + d``), ``true_mean`` (its exponential: expected
    counts at size factor 1) and ``edges`` (the edges among the genes with their strengths).

    Examples
    --------
    >>> adata = scgpt.datasets.simulate_perturbations(n_genes=300, singles=12, doubles=6, seed=1)
    >>> adata.obs["perturbation"].value_counts().head(3)
    """
    import scipy.sparse as sp
    from anndata import AnnData

    if n_genes < 2 or n_cells_per_condition < 1:
        raise ValueError("simulate_perturbations: n_genes must be at least 2 and n_cells_per_condition at least 1.")
    if not 0 < knockdown < 1:
        raise ValueError(f"simulate_perturbations: knockdown must be in (0, 1), got {knockdown}.")
    if dispersion < 0 or n_steps < 0 or not 0 <= damping:
        raise ValueError("simulate_perturbations: dispersion, n_steps and damping must be non-negative.")
    rng = np.random.default_rng(seed)
    source = "user"
    if network is None:
        from ._grn import collectri

        network, source = collectri(), "CollecTRI (scgpt.datasets.collectri)"
    net = _check_network(network)
    named_singles, named_doubles = _requested_genes(singles, doubles)
    required = list(dict.fromkeys([*named_singles, *(g for p in named_doubles for g in p)]))
    genes = _select_genes(net, n_genes, required, rng)
    edges = net[net["source"].isin(genes) & net["target"].isin(genes)].reset_index(drop=True)
    edges["strength"] = rng.uniform(*strength, len(edges))
    A = _effect_matrix(edges, genes)
    regulators = sorted(set(edges["source"]))
    conditions = _conditions(singles, doubles, named_singles, named_doubles, regulators, rng)
    is_reg = np.isin(genes, regulators)
    baseline = np.where(is_reg, rng.normal(0.5, 0.5, len(genes)), rng.normal(0.0, 1.0, len(genes)))
    index = {g: i for i, g in enumerate(genes)}
    labels = ["control", *("+".join(c) for c in conditions)]
    log_means = [baseline] + [
        baseline + _propagate(A, {index[g]: np.log1p(-knockdown) for g in c}, n_steps, damping) for c in conditions
    ]
    n_ctrl = n_cells_per_condition if n_control_cells is None else n_control_cells
    blocks, sizes, obs_labels = [], [], []
    for label, log_mean in zip(labels, log_means):
        n = n_ctrl if label == "control" else n_cells_per_condition
        counts, size = _sample_counts(log_mean, n, dispersion, rng)
        blocks.append(counts)
        sizes.append(size)
        obs_labels += [label] * n
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(obs_labels, categories=labels),
            "synthetic": True,
            "size_factor": np.concatenate(sizes),
        },
        index=[f"cell_{i}" for i in range(len(obs_labels))],
    )
    perturbed = {g for c in conditions for g in c}
    var = pd.DataFrame(
        {"baseline_log_mean": baseline, "regulator": is_reg, "perturbed": np.isin(genes, sorted(perturbed))},
        index=pd.Index(genes),
    )
    adata = AnnData(X=sp.csr_matrix(np.vstack(blocks)), obs=obs, var=var)
    true_log_mean = pd.DataFrame(np.vstack(log_means), index=labels, columns=genes)
    params: dict[str, Any] = {
        "n_genes": len(genes),
        "n_cells_per_condition": n_cells_per_condition,
        "n_control_cells": n_ctrl,
        "singles": [c[0] for c in conditions if len(c) == 1],
        "doubles": ["+".join(c) for c in conditions if len(c) == 2],
        "network": source,
        "knockdown": knockdown,
        "n_steps": n_steps,
        "damping": damping,
        "strength": list(strength),
        "dispersion": dispersion,
        "seed": seed,
    }
    adata.uns["simulation"] = {
        "synthetic": True,
        "note": SYNTHETIC_NOTE,
        "params": params,
        "true_log_mean": true_log_mean,
        "true_mean": np.exp(true_log_mean),
        "edges": edges,
    }
    logger.info(
        f"simulate_perturbations: SYNTHETIC screen of {adata.n_obs} cells x {len(genes)} genes, {len(edges)} edges, "
        f"{len(conditions)} perturbations"
    )
    return adata
