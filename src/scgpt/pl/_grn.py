"""Plots of gene networks (:func:`scgpt.tl.infer_grn`) and gene programs (:func:`scgpt.tl.gene_programs`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .._docs import doc_params
from .._logging import named
from ._utils import finish, new_axes

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

POSITIVE = "#d62728"  # red: edges with a positive weight
NEGATIVE = "#1f77b4"  # blue: edges with a negative weight
TF_COLOR = "#ff7f0e"
TARGET_COLOR = "#d9d9d9"
NO_PROGRAM = "#d3d3d3"


# --------------------------------------------------------------------------- inputs


def _as_list(names: str | Sequence[str]) -> list[str]:
    return [names] if isinstance(names, str) else [str(n) for n in names]


def _network(data: AnnData | pd.DataFrame, key: str, group: str | None) -> tuple[pd.DataFrame, str | None, str | None]:
    """The edges of one network (one group), its method and its name.

    The name is the group's, or ``"<group> minus <reference>"`` for a difference network (``reference_group=``).
    """
    edges, method, group = _network_edges(data, key, group)
    reference = None if isinstance(data, pd.DataFrame) else data.uns[key].get("params", {}).get("reference_group")
    if group is not None and reference is not None:
        group = f"{group} minus {reference}"
    return edges, method, group


def _titled(title: str, group: str | None) -> str:
    """``title`` for one group's network; a difference network is named as a difference."""
    if group is None:
        return title
    return f"{title}: {group}" + (" (difference)" if " minus " in group else "")


def _network_edges(
    data: AnnData | pd.DataFrame, key: str, group: str | None
) -> tuple[pd.DataFrame, str | None, str | None]:
    """The edges of one network (one group), its method and the group's name."""
    if isinstance(data, pd.DataFrame):
        edges, method = data, None
    else:
        entry = data.uns.get(key)
        if not isinstance(entry, dict) or "edges" not in entry:
            networks = [str(k) for k, v in data.uns.items() if isinstance(v, dict) and "edges" in v]
            where = (
                f"the networks are under {networks}: pass key= (one of them)"
                if networks
                else ("run scgpt.tl.infer_grn first")
            )
            raise KeyError(f"adata.uns[{key!r}] has no network edges; {where}.")
        edges, method = entry["edges"], entry.get("params", {}).get("method")
    missing = [c for c in ("source", "target", "weight") if c not in edges.columns]
    if missing:
        raise KeyError(f"The edge table lacks the columns {missing} (needs 'source', 'target' and 'weight').")
    if "group" not in edges.columns:
        if group is not None:
            raise ValueError(f"group={group!r} given, but the network was not computed per group of cells.")
        return edges, method, None
    labels = edges["group"].astype(str)
    groups = list(dict.fromkeys(labels))
    if group is None:
        if len(groups) != 1:
            raise ValueError(f"The network was computed per group of cells; choose one with group=, one of {groups}.")
        group = groups[0]
    if str(group) not in groups:
        raise KeyError(f"No network for group {group!r}; the groups are {groups}.")
    return edges[labels.to_numpy() == str(group)], method, str(group)


def _palette(n: int, stored: object = None) -> list[str]:
    """Scanpy's colours for ``n`` categories (those stored in ``uns[f'{key}_colors']`` first)."""
    if stored is not None and len(stored) >= n:
        return [str(c) for c in stored][:n]
    from scanpy.plotting.palettes import default_20, default_102

    palette = default_20 if n <= 20 else default_102
    return [palette[i % len(palette)] for i in range(n)]


# --------------------------------------------------------------------------- attention


@doc_params()
@named("scgpt.pl.attention")
def attention(
    adata: AnnData,
    key: str = "scgpt_grn",
    *,
    genes: Sequence[str] | None = None,
    group: str | None = None,
    n_genes: int = 30,
    cluster: bool = True,
    cmap: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Heatmap of a gene network's weights between a few genes (rows: targets, columns: sources).

    Rows are target genes (the queries of an attention network), columns source genes (its keys):
    cell ``(i, j)`` is the weight of the edge from ``genes[j]`` to ``genes[i]``. Pairs absent from the
    edge table are drawn light grey. Negative weights (differences between groups) get a diverging colour
    map centred at 0; otherwise the map is sequential.

    Parameters
    ----------
    adata
        Annotated data holding ``adata.uns[key]['edges']``.
    key
        ``uns`` entry written by :func:`scgpt.tl.infer_grn`.
    genes
        Genes to show (rows and columns alike); each must occur in the network. ``None``: the ``n_genes``
        genes with the largest total absolute weight (as source and as target).
    group
        The group of cells whose network to show, for networks computed per group (required then, unless
        there is one group only).
    n_genes
        Number of genes when ``genes`` is ``None``.
    cluster
        Order the genes by hierarchical clustering (average linkage on each gene's weights as target and as
        source); rows and columns share the order. ``False`` keeps the order of ``genes`` (or of the total
        absolute weight).
    cmap
        Colour map (default: ``"RdBu_r"`` with negative weights, else ``"Reds"``).
    vmin, vmax
        Colour limits (default: symmetric around 0 with negative weights, else the data's range).
    {plot}

    Returns
    -------
    {plot_returns}
    """
    import matplotlib as mpl

    edges, method, group = _network(adata, key, group)
    totals = (
        pd.concat(
            [
                edges["weight"].abs().groupby(edges["source"].astype(str)).sum(),
                edges["weight"].abs().groupby(edges["target"].astype(str)).sum(),
            ]
        )
        .groupby(level=0)
        .sum()
        .sort_values(ascending=False, kind="stable")
    )
    if genes is None:
        chosen = list(totals.index[:n_genes])
    else:
        chosen = list(dict.fromkeys(_as_list(genes)))
        absent = [g for g in chosen if g not in totals.index]
        if absent:
            raise KeyError(f"Genes not in the network{'' if group is None else f' of group {group!r}'}: {absent}.")
    if not chosen:
        raise ValueError("The network has no edges.")
    table = edges.assign(source=edges["source"].astype(str), target=edges["target"].astype(str))
    table = table[table["source"].isin(chosen) & table["target"].isin(chosen)]
    matrix = (
        table.groupby(["target", "source"])["weight"].mean().unstack().reindex(index=chosen, columns=chosen)
    ).to_numpy(dtype=float)
    if cluster and len(chosen) > 2:
        from scipy.cluster.hierarchy import leaves_list, linkage

        filled = np.nan_to_num(matrix)
        # a gene is closest to itself: a self-pair absent from the table counts as the strongest weight
        missing_self = np.isnan(np.diag(matrix))
        filled[missing_self, missing_self] = np.nanmax(np.abs(matrix)) if np.isfinite(matrix).any() else 0.0
        order = leaves_list(linkage(np.hstack([filled, filled.T]), method="average", optimal_ordering=True))
        chosen = [chosen[i] for i in order]
        matrix = matrix[np.ix_(order, order)]

    finite = matrix[np.isfinite(matrix)]
    if finite.size == 0:
        raise ValueError(f"No edges among the genes {chosen}.")
    diverging = bool((finite < 0).any())
    if diverging:
        bound = float(np.abs(finite).max()) or 1.0
        low, high = (-bound if vmin is None else vmin), (bound if vmax is None else vmax)
    else:
        low, high = (float(finite.min()) if vmin is None else vmin), (float(finite.max()) if vmax is None else vmax)
    colours = mpl.colormaps[cmap or ("RdBu_r" if diverging else "Reds")].with_extremes(bad="lightgrey")

    n = len(chosen)
    side = max(3.0, 0.22 * n)
    fig, ax = new_axes(ax, (side + 1.6, side + 0.9))
    im = ax.imshow(
        np.ma.masked_invalid(matrix), cmap=colours, vmin=low, vmax=high, aspect="auto", interpolation="nearest"
    )
    fontsize = "small" if n <= 40 else "xx-small"
    ax.set_xticks(range(n), chosen, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), chosen, fontsize=fontsize)
    attention_net = method == "attention"
    ax.set_xlabel("source gene (key)" if attention_net else "source gene")
    ax.set_ylabel("target gene (query)" if attention_net else "target gene")
    ax.grid(False)
    label = f"{method} weight" if method else "weight"
    if group is not None and " minus " in group:
        label = f"{label} difference"
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
    ax.set_title(_titled(f"{method} network" if method else "gene network", group))
    return finish(fig, ax, show=show, return_fig=return_fig)


# --------------------------------------------------------------------------- grn


@doc_params()
@named("scgpt.pl.grn")
def grn(
    adata_or_edges: AnnData | pd.DataFrame,
    key: str = "scgpt_grn",
    *,
    tfs: str | Sequence[str],
    group: str | None = None,
    top: int = 10,
    layout: Literal["spring", "circular", "shell", "kamada_kawai"] = "spring",
    seed: int = 0,
    node_size: float = 300,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """The strongest edges out of a few transcription factors, drawn as a network.

    For each gene of ``tfs`` the ``top`` edges with the largest absolute weight where it is the source
    (self-edges left out) are drawn as arrows from it to the targets: width proportional to the absolute
    weight, red for positive and blue for negative weights. The chosen genes are drawn larger and in orange,
    their targets in grey; every node is labelled.

    Parameters
    ----------
    adata_or_edges
        Annotated data holding ``adata.uns[key]['edges']``, or an edge table with columns ``source``,
        ``target``, ``weight`` (and ``group``).
    key
        ``uns`` entry written by :func:`scgpt.tl.infer_grn` (ignored for an edge table).
    tfs
        Source genes (e.g. transcription factors) whose edges to draw; each needs an outgoing edge.
    group
        The group of cells whose network to show, for networks computed per group (required then, unless
        there is one group only).
    top
        Edges kept per source gene.
    layout
        Node placement: ``"spring"`` (seeded force-directed, stronger edges pull harder), ``"circular"``,
        ``"shell"`` (sources inside, targets around them) or ``"kamada_kawai"``.
    seed
        Seed of the spring layout.
    node_size
        Marker area of target nodes; source nodes are twice as large.
    {plot}

    Returns
    -------
    {plot_returns}
    """
    import networkx as nx
    from matplotlib.lines import Line2D

    if layout not in ("spring", "circular", "shell", "kamada_kawai"):
        raise ValueError(f"layout must be 'spring', 'circular', 'shell' or 'kamada_kawai', got {layout!r}.")
    edges, _, group = _network(adata_or_edges, key, group)
    sources = list(dict.fromkeys(_as_list(tfs)))
    if not sources:
        raise ValueError("Give at least one source gene in tfs.")
    table = edges.assign(source=edges["source"].astype(str), target=edges["target"].astype(str))
    table = table[table["source"] != table["target"]]
    where = "" if group is None else f" of {group!r}"
    lonely = [tf for tf in sources if not (table["source"] == tf).any()]
    if lonely:
        raise KeyError(f"No outgoing edge from {lonely} in the network{where}.")
    picked = []
    for tf in sources:
        out = table[table["source"] == tf]
        picked.append(out.loc[out["weight"].abs().sort_values(ascending=False, kind="stable").index[:top]])
    kept = pd.concat(picked)

    graph = nx.DiGraph()
    graph.add_nodes_from(sources)
    strongest = float(kept["weight"].abs().max()) or 1.0
    for s, t, w in kept[["source", "target", "weight"]].itertuples(index=False):
        graph.add_edge(s, t, weight=float(w), strength=abs(float(w)) / strongest)
    targets = [n for n in graph.nodes if n not in sources]
    if layout == "spring":
        pos = nx.spring_layout(graph, weight="strength", seed=seed)
    elif layout == "circular":
        pos = nx.circular_layout(graph)
    elif layout == "shell":
        pos = nx.shell_layout(graph, nlist=[sources, targets] if targets else [sources])
    else:
        pos = nx.kamada_kawai_layout(graph, weight=None)

    n_nodes = graph.number_of_nodes()
    side = min(12.0, max(5.0, 1.2 * np.sqrt(n_nodes)))
    fig, ax = new_axes(ax, (side, side))
    nx.draw_networkx_nodes(
        graph,
        pos,
        nodelist=targets,
        node_size=node_size,
        node_color=TARGET_COLOR,
        edgecolors="grey",
        linewidths=0.5,
        ax=ax,
        label="target",
    )
    nx.draw_networkx_nodes(
        graph,
        pos,
        nodelist=sources,
        node_size=2 * node_size,
        node_color=TF_COLOR,
        edgecolors="black",
        linewidths=0.8,
        ax=ax,
        label="source (TF)",
    )
    edge_list = list(graph.edges)
    sizes = {n: (2 * node_size if n in sources else node_size) for n in graph.nodes}
    weights = [graph.edges[e]["weight"] for e in edge_list]
    nx.draw_networkx_edges(
        graph,
        pos,
        edgelist=edge_list,
        width=[0.4 + 3.6 * abs(w) / strongest for w in weights],
        edge_color=[POSITIVE if w >= 0 else NEGATIVE for w in weights],
        arrows=True,
        arrowstyle="-|>",
        arrowsize=10,
        nodelist=list(graph.nodes),
        node_size=[sizes[n] for n in graph.nodes],
        connectionstyle="arc3,rad=0.08",
        ax=ax,
    )
    _node_labels(ax, pos, sizes)
    handles = [
        Line2D([], [], ls="", marker="o", ms=9, mfc=TF_COLOR, mec="black", label="source (TF)"),
        Line2D([], [], ls="", marker="o", ms=7, mfc=TARGET_COLOR, mec="grey", label="target"),
        Line2D([], [], color=POSITIVE, lw=2, label="positive weight"),
    ]
    if any(w < 0 for w in weights):
        handles.append(Line2D([], [], color=NEGATIVE, lw=2, label="negative weight"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize="small")
    ax.margins(0.08)
    ax.set_axis_off()
    ax.set_title(_titled(f"top {top} edges per source", group))
    return finish(fig, ax, show=show, return_fig=return_fig)


def _node_labels(ax: Axes, pos: dict, sizes: dict) -> None:
    """Each node's name beside it, away from the layout's centre, on a white halo.

    Names then neither sit on the markers nor run into the arrows and each other as centred labels do.
    """
    from matplotlib import patheffects

    centre = np.mean(np.array(list(pos.values())), axis=0)
    halo = [patheffects.withStroke(linewidth=2.5, foreground="white")]
    for node, (x, y) in pos.items():
        radius = np.sqrt(sizes[node] / np.pi)  # marker radius in points
        dx, dy = x - centre[0], y - centre[1]
        sx = 1 if dx >= 0 else -1
        sy = 1 if dy >= 0 else -1
        ax.annotate(
            str(node), (x, y), xytext=(sx * 0.8 * radius, sy * 0.8 * radius), textcoords="offset points",
            ha="left" if sx > 0 else "right", va="bottom" if sy > 0 else "top", fontsize=8, zorder=4,
            path_effects=halo,
        )  # fmt: skip


# --------------------------------------------------------------------------- gene programs


def _program_names(adata: AnnData, key: str) -> list[str]:
    if key not in adata.var:
        raise KeyError(f"adata.var has no column {key!r}; run scgpt.tl.gene_programs first.")
    column = adata.var[key]
    if isinstance(column.dtype, pd.CategoricalDtype):
        return [str(c) for c in column.cat.categories]
    return sorted({str(c) for c in column.dropna()}, key=lambda c: (not c.isdigit(), int(c) if c.isdigit() else 0, c))


def _chosen_programs(names: list[str], programs: str | Sequence[str] | None) -> list[str]:
    if programs is None:
        return names
    chosen = list(dict.fromkeys(_as_list(programs)))
    unknown = [p for p in chosen if p not in names]
    if unknown:
        raise KeyError(f"Unknown programs {unknown}; the programs are {names}.")
    return chosen


@doc_params()
@named("scgpt.pl.gene_programs")
def gene_programs(
    adata: AnnData,
    groupby: str,
    key: str = "scgpt_program",
    *,
    programs: str | Sequence[str] | None = None,
    kind: Literal["dotplot", "heatmap"] = "dotplot",
    standard_scale: Literal["var", "group"] | None = "var",
    cmap: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Gene-program activity per group of cells: the mean program score of each group.

    Rows are programs, columns groups of ``adata.obs[groupby]``. As a dot plot, the colour is the mean
    score and the dot's area the fraction of the group's cells with a score above 0. As a heat map, the
    colour is the mean score and the unscaled mean is written in each cell.

    Parameters
    ----------
    adata
        Annotated data holding the scores ``adata.obsm[key + '_scores']``.
    groupby
        ``obs`` column with the groups of cells.
    key
        ``var`` column written by :func:`scgpt.tl.gene_programs` (the scores are in ``obsm[key + '_scores']``).
    programs
        Programs to show (names as in the scores' columns); ``None``: all.
    kind
        ``"dotplot"`` or ``"heatmap"``.
    standard_scale
        Scale the colours to 0-1 per program (``"var"``, as scanpy scales each gene) or per group
        (``"group"``); ``None``: the mean scores themselves.
    cmap
        Colour map (default: ``"Reds"`` for dots, ``"viridis"`` for the heat map).
    {plot}

    Returns
    -------
    {plot_returns}
    """
    if kind not in ("dotplot", "heatmap"):
        raise ValueError(f"kind must be 'dotplot' or 'heatmap', got {kind!r}.")
    if standard_scale not in ("var", "group", None):
        raise ValueError(f"standard_scale must be 'var', 'group' or None, got {standard_scale!r}.")
    if groupby not in adata.obs:
        raise KeyError(f"adata.obs has no column {groupby!r}.")
    score_key = f"{key}_scores"
    if score_key not in adata.obsm:
        raise KeyError(f"adata.obsm has no {score_key!r}; run scgpt.tl.gene_programs first.")
    scores = adata.obsm[score_key]
    if not isinstance(scores, pd.DataFrame):
        values = np.asarray(scores)
        names = _program_names(adata, key) if key in adata.var else []
        if len(names) != values.shape[1]:
            names = [str(i) for i in range(values.shape[1])]
        scores = pd.DataFrame(values, index=adata.obs_names, columns=names)
    scores = scores.set_axis([str(c) for c in scores.columns], axis=1)
    chosen = _chosen_programs(list(scores.columns), programs)
    labels = adata.obs[groupby]
    grouped = scores[chosen].set_axis(adata.obs_names, axis=0).groupby(labels.to_numpy(), observed=True, sort=False)
    if isinstance(labels.dtype, pd.CategoricalDtype):
        groups = [g for g in labels.cat.categories if g in set(labels)]
    else:
        groups = sorted(labels.dropna().unique(), key=str)
    mean = grouped.mean().reindex(groups).T  # programs x groups
    fraction = (scores[chosen].set_axis(adata.obs_names, axis=0) > 0).groupby(labels.to_numpy(), sort=False)
    fraction = fraction.mean().reindex(groups).T.to_numpy(dtype=float)
    values = mean.to_numpy(dtype=float)
    shown = values
    if standard_scale is not None:
        axis = 1 if standard_scale == "var" else 0
        low, high = np.nanmin(values, axis, keepdims=True), np.nanmax(values, axis, keepdims=True)
        shown = (values - low) / np.where(high > low, high - low, 1.0)
    label = "mean score" + {"var": " (scaled per program)", "group": " (scaled per group)", None: ""}[standard_scale]

    n_programs, n_groups = values.shape
    group_names = [str(g) for g in groups]
    fig, ax = new_axes(ax, (2.2 + 0.45 * n_groups, 1.4 + 0.35 * n_programs))
    if kind == "dotplot":
        x, y = np.meshgrid(np.arange(n_groups), np.arange(n_programs))
        biggest = 200.0
        dots = ax.scatter(
            x.ravel(),
            y.ravel(),
            s=biggest * fraction.ravel(),
            c=shown.ravel(),
            cmap=cmap or "Reds",
            edgecolors="grey",
            linewidths=0.3,
            zorder=3,
        )
        ax.set_xlim(-0.6, n_groups - 0.4)
        ax.set_ylim(n_programs - 0.4, -0.6)
        from matplotlib.lines import Line2D

        handles = [
            Line2D([], [], ls="", marker="o", ms=np.sqrt(biggest * f), mfc="grey", mec="grey", label=f"{f:.0%}")
            for f in (0.25, 0.5, 0.75, 1.0)
        ]
        ax.legend(
            handles=handles,
            title="cells with score > 0",
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
            ncol=4,
            frameon=False,
            fontsize="small",
            title_fontsize="small",
        )
        mappable = dots
    else:
        mappable = ax.imshow(shown, cmap=cmap or "viridis", aspect="auto", interpolation="nearest")
        low, high = np.nanmin(shown), np.nanmax(shown)
        for i in range(n_programs):
            for j in range(n_groups):
                light = (shown[i, j] - low) / (high - low) > 0.5 if high > low else False
                ax.text(
                    j,
                    i,
                    f"{values[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize="small",
                    color="black" if light else "white",
                )
        ax.set_title(f"gene programs per {groupby}")
    ax.set_xticks(range(n_groups), group_names, rotation=90)
    ax.set_yticks(range(n_programs), chosen)
    ax.set_xlabel(groupby)
    ax.set_ylabel("program")
    ax.grid(False)
    fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.04, label=label)
    return finish(fig, ax, show=show, return_fig=return_fig)


@doc_params()
@named("scgpt.pl.gene_embedding")
def gene_embedding(
    adata: AnnData,
    key: str = "scgpt_program",
    *,
    programs: str | Sequence[str] | None = None,
    max_programs: int = 12,
    label_genes: str | Sequence[str] | None = None,
    size: float | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """The genes' 2-d embedding (``adata.varm[key + '_umap']``) coloured by gene program.

    Every embedded gene is a point; genes in no program (or in a program not shown) are light grey, drawn
    beneath the others and left out of the legend. Colours come from ``adata.uns[key + '_colors']`` when
    it holds one per program, else from scanpy's palettes, so a program keeps its colour when others are
    hidden.

    Parameters
    ----------
    adata
        Annotated data holding ``adata.varm[key + '_umap']`` and ``adata.var[key]``.
    key
        ``var`` column written by :func:`scgpt.tl.gene_programs`.
    programs
        Programs to colour; ``None``: the ``max_programs`` largest (a legend of 89 programs is unreadable).
    max_programs
        With ``programs=None``, how many of the largest programs to colour (the title says how many there are).
    label_genes
        Genes to write next to their points; each must be in ``adata.var_names`` and embedded.
    size
        Marker area (default: from the number of points, as in scanpy).
    {plot}

    Returns
    -------
    {plot_returns}
    """
    umap_key = f"{key}_umap"
    if umap_key not in adata.varm:
        found = [str(k)[: -len("_umap")] for k in adata.varm if str(k).endswith("_umap")]
        where = f"programs are under {found}: pass key= (one of them)" if found else "run scgpt.tl.gene_programs first"
        raise KeyError(f"adata.varm has no {umap_key!r}; {where}.")
    names = _program_names(adata, key)
    if programs is None and max_programs < 1:
        raise ValueError(f"max_programs must be at least 1, got {max_programs}.")
    if programs is None and len(names) > max_programs:
        sizes = adata.var[key].astype("string").value_counts()
        largest = sorted(names, key=lambda name: (-int(sizes.get(name, 0)), names.index(name)))[:max_programs]
        chosen = set(largest)
        title = f"gene programs ({max_programs} largest of {len(names)})"
    else:
        chosen = set(_chosen_programs(names, programs))
        title = "gene programs" if len(chosen) == len(names) else f"gene programs ({len(chosen)} of {len(names)})"
    coords = np.asarray(adata.varm[umap_key], dtype=float)
    embedded = np.isfinite(coords).all(1)
    labels = adata.var[key].astype("string").fillna("").to_numpy(dtype=object)
    colours = dict(zip(names, _palette(len(names), adata.uns.get(f"{key}_colors")), strict=True))
    to_label = [] if label_genes is None else list(dict.fromkeys(_as_list(label_genes)))
    unknown = [g for g in to_label if g not in adata.var_names]
    if unknown:
        raise KeyError(f"Genes not in adata.var_names: {unknown}.")
    index = adata.var_names.get_indexer(to_label)
    outside = [g for g, i in zip(to_label, index) if not embedded[i]]
    if outside:
        raise ValueError(f"Genes without a position in adata.varm[{umap_key!r}]: {outside}.")

    n = int(embedded.sum())
    size = size if size is not None else float(np.clip(120000 / max(n, 1), 2.0, 60.0))
    fig, ax = new_axes(ax, (5.5, 4.5))
    coloured = np.array([lab in chosen for lab in labels])
    grey = embedded & ~coloured
    ax.scatter(coords[grey, 0], coords[grey, 1], s=size, c=NO_PROGRAM, linewidths=0, zorder=1, label="_no program")
    for name in names:
        if name not in chosen:
            continue
        mask = embedded & (labels == name)
        ax.scatter(coords[mask, 0], coords[mask, 1], s=size, c=colours[name], linewidths=0, zorder=2, label=name)
    for gene, i in zip(to_label, index):
        ax.annotate(gene, coords[i], xytext=(3, 3), textcoords="offset points", fontsize="small", zorder=3)
    n_shown = len(chosen)
    ncol = 1 if n_shown <= 14 else 2 if n_shown <= 30 else 3
    ax.legend(
        title="program",
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        frameon=False,
        fontsize="small",
        markerscale=max(1.0, 6.0 / np.sqrt(size)),
        ncol=ncol,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP1")
    ax.set_ylabel("UMAP2")
    ax.grid(False)
    ax.set_title(title)
    return finish(fig, ax, show=show, return_fig=return_fig)
