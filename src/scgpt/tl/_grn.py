"""Gene programs from scGPT gene embeddings, and gene networks from gene embeddings or attention.

Two recipes of the official scGPT tutorials, made reproducible and returned as data:

- ``Tutorial_GRN``: gene-token embeddings -> k-NN graph -> Leiden clusters ("gene programs"), scored per
  cell; cosine similarity of gene embeddings as an undirected network.
- ``Tutorial_Attention_GRN``: attention of chosen layers and heads (``q @ k.T``), rank-normalised per cell
  by rows then columns, averaged over heads and over the cells of a group, optionally as the difference
  between two groups. Row = query = target, column = key = source.

Both networks mostly recover co-expression (Kendiukhov 2026; scPRINT 2025): score them with
:func:`scgpt.tl.evaluate_grn` next to the co-expression baseline before reading them as regulation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._docs import doc_params
from .._face import actual_if_view, provenance, record, warn_overwrite
from .._logging import caller, logger, named, warn
from ..data import check_adata, check_layer, gene_names, log_normalized, match_genes, missing_values
from ..model import resolve_model
from ._hvg import check_n_top_genes, variable_genes

if TYPE_CHECKING:
    from anndata import AnnData

    from ..model import ScGPT

GENE_EMBEDDING_KEY = "X_scGPT_gene"


# ---------------------------------------------------------------------------- genes
def _known_genes(
    adata: AnnData,
    model: ScGPT,
    *,
    gene_key: str | None,
    use_aliases: bool,
    organism: str = "human",
    orthologs: str = "one2one",
):
    """``(columns, tokens)`` of the genes of ``adata`` that the vocabulary knows."""
    fn = caller()
    match = match_genes(
        gene_names(adata, gene_key), model.vocab, use_aliases=use_aliases, organism=organism, orthologs=orthologs
    )
    cols = np.flatnonzero(match.matched)
    if not len(cols):
        raise ValueError(f"{fn}: none of the {adata.n_vars} genes is in the model's vocabulary.")
    return cols, np.asarray(model.vocab.lookup_tokens(match.ids[cols]), dtype=object)


def _named_columns(adata: AnnData, names: Sequence[str], known: np.ndarray, *, what: str) -> np.ndarray:
    """Columns of user-named genes, with clear errors for names absent from the data or the vocabulary."""
    fn = caller()
    names = [names] if isinstance(names, str) else [str(n) for n in names]
    if not names:
        raise ValueError(f"{fn}: `{what}` is empty.")
    idx = adata.var_names.get_indexer(names)
    absent = [n for n, i in zip(names, idx, strict=True) if i < 0]
    if absent:
        raise KeyError(f"{fn}: {len(absent)} of the {what} are not genes of the data (adata.var_names): {absent[:10]}.")
    known_set = set(known.tolist())
    unknown = [n for n, i in zip(names, idx, strict=True) if i not in known_set]
    if unknown:
        raise ValueError(
            f"{fn}: {len(unknown)} of the {what} are not in the model's vocabulary, so scGPT has no embedding or "
            f"token for them: {unknown[:10]}."
        )
    return pd.unique(idx)


# ---------------------------------------------------------------------------- programs
@doc_params()
@named()
def gene_programs(
    adata: AnnData,
    model: ScGPT | str | None = None,
    *,
    genes: Sequence[str] | None = None,
    resolution: float = 40.0,
    n_neighbors: int = 15,
    min_size: int = 5,
    ctrl_size: int = 50,
    n_bins: int = 25,
    layer: str | None = None,
    gene_key: str | None = None,
    use_aliases: bool = True,
    organism: str = "human",
    orthologs: str = "one2one",
    seed: int = 0,
    key_added: str = "scgpt_program",
    copy: bool = False,
) -> AnnData | None:
    """Gene programs: Leiden clusters of scGPT gene embeddings, with a score per cell.

    The official ``Tutorial_GRN`` recipe: the gene-token embeddings of the model (embedding + LayerNorm)
    -> cosine k-NN graph -> Leiden at a high resolution (40 in the tutorial, on 1,200 genes) -> clusters of
    at least ``min_size`` genes. Each program is scored in every cell as :func:`scanpy.tl.score_genes` does
    (mean log-normalised expression of its genes minus that of control genes drawn from the same expression
    bins), for all programs in one sparse product.

    Parameters
    ----------
    adata
        Cells x genes, raw counts (or log-normalised values) in ``X`` or ``layer``.
    {model}
    genes
        Genes to cluster (names in ``var_names``, all in the vocabulary); ``None``: every gene of ``adata``
        the vocabulary knows.
    resolution
        Leiden resolution.
    n_neighbors
        Neighbours per gene in the cosine k-NN graph.
    min_size
        Smallest program kept; genes of smaller clusters get no program.
    ctrl_size
        Control genes drawn per expression bin of a program's genes (``sc.tl.score_genes``).
    n_bins
        Expression bins for the control genes.
    layer
        Layer with the expression; ``None``: ``X``.
    {gene_key}
    {use_aliases}
    {organism}
    seed
        Seed of the k-NN graph, Leiden, the UMAP and the control genes.
    key_added
        Name of the programs (see Returns).
    {copy}

    Returns
    -------
    ``None``, or a copy with ``copy=True``; writes

    - ``adata.varm['X_scGPT_gene']``: gene embeddings (NaN rows for genes outside the vocabulary);
    - ``adata.var[key_added]``: program of each gene (categorical ``"0"``, ``"1"``, ... by decreasing size;
      NaN for genes in no program);
    - ``adata.varm[key_added + '_umap']``: 2-D UMAP of the clustered genes (NaN rows for the others);
    - ``adata.obsm[key_added + '_scores']``: DataFrame of program scores, cells x programs;
    - ``adata.uns[key_added]``: ``params`` and ``programs`` (a ``program``, ``gene`` table).

    Examples
    --------
    >>> scgpt.tl.gene_programs(adata, "demo")  # doctest: +SKIP
    >>> scgpt.tl.enrich_programs(adata, gene_sets="hallmark")  # doctest: +SKIP
    """
    import anndata as ad
    import scanpy as sc

    start = time.perf_counter()
    check_adata(adata)
    if min_size < 1 or n_neighbors < 2 or resolution <= 0:
        raise ValueError("gene_programs: min_size must be ≥ 1, n_neighbors ≥ 2 and resolution > 0.")
    adata = adata.copy() if copy else adata
    actual_if_view(adata)
    model_obj, model_name = resolve_model(model)
    known, tokens = _known_genes(
        adata, model_obj, gene_key=gene_key, use_aliases=use_aliases, organism=organism,
        orthologs=orthologs,
    )  # fmt: skip
    cols = known if genes is None else _named_columns(adata, genes, known, what="genes")
    if len(cols) <= n_neighbors:
        raise ValueError(f"gene_programs: {len(cols)} genes are too few for a {n_neighbors}-neighbour graph.")
    token_of = dict(zip(known.tolist(), tokens, strict=True))
    emb = model_obj.get_gene_embeddings([token_of[c] for c in cols]).to_numpy(np.float32)
    logger.info(f"clustering the embeddings of {len(cols)} genes into programs")

    genes_ad = ad.AnnData(X=emb, obs=pd.DataFrame(index=adata.var_names[cols].astype(str)))
    sc.pp.neighbors(genes_ad, n_neighbors=n_neighbors, use_rep="X", metric="cosine", random_state=seed)
    sc.tl.leiden(genes_ad, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2, directed=False)
    sc.tl.umap(genes_ad, random_state=seed)
    clusters = genes_ad.obs["leiden"].astype(int).to_numpy()
    sizes = np.bincount(clusters)
    kept = [c for c in sorted(range(len(sizes)), key=lambda c: (-sizes[c], c)) if sizes[c] >= min_size]
    name_of = {c: str(i) for i, c in enumerate(kept)}
    program = np.array([name_of.get(c) for c in clusters], dtype=object)
    names = [str(i) for i in range(len(kept))]
    if not names:
        warn(
            f"gene_programs: 0 programs: no cluster of the {len(cols)} genes has min_size={min_size} genes or more "
            f"(largest: {int(sizes.max())}); lower min_size or resolution={resolution}. adata.var[{key_added!r}] "
            "is empty and the scores have no column."
        )

    warn_overwrite(adata, "var", key_added, copy=copy)
    full_emb = np.full((adata.n_vars, emb.shape[1]), np.nan, dtype=np.float32)
    full_emb[cols] = emb
    adata.varm[GENE_EMBEDDING_KEY] = full_emb
    labels = np.full(adata.n_vars, None, dtype=object)
    labels[cols] = program
    adata.var[key_added] = pd.Categorical(labels, categories=names)
    umap = np.full((adata.n_vars, 2), np.nan, dtype=np.float32)
    umap[cols] = genes_ad.obsm["X_umap"]
    adata.varm[f"{key_added}_umap"] = umap

    table = pd.DataFrame({"program": labels[cols], "gene": adata.var_names[cols].astype(str)})
    table = table.dropna().astype({"program": int}).sort_values(["program", "gene"]).astype({"program": str})
    table = table.reset_index(drop=True)
    members = {p: adata.var_names.get_indexer(table.loc[table["program"] == p, "gene"]) for p in names}
    adata.obsm[f"{key_added}_scores"] = program_scores(
        adata, members, layer=layer, ctrl_size=ctrl_size, n_bins=n_bins, seed=seed
    )
    params = {
        **provenance(model_obj, model_name),
        "genes": None if genes is None else list(map(str, genes)),
        "resolution": resolution,
        "n_neighbors": n_neighbors,
        "min_size": min_size,
        "ctrl_size": ctrl_size,
        "n_bins": n_bins,
        "layer": layer,
        "seed": seed,
    }
    record(
        adata,
        key_added,
        params,
        start=start,
        added=[
            f"'{GENE_EMBEDDING_KEY}', gene embeddings (adata.varm)",
            f"'{key_added}', {len(names)} programs of {len(table)} genes (adata.var)",
            f"'{key_added}_umap', UMAP of the clustered genes (adata.varm)",
            f"'{key_added}_scores', program scores (adata.obsm)",
        ],
        programs=table,
        n_genes_clustered=len(cols),
    )
    return adata if copy else None


@named()
def program_scores(
    adata: AnnData,
    programs: dict[str, np.ndarray],
    *,
    layer: str | None = None,
    ctrl_size: int = 50,
    n_bins: int = 25,
    seed: int = 0,
) -> pd.DataFrame:
    """Scores of many gene sets per cell, :func:`scanpy.tl.score_genes` for all of them in one sparse product.

    For each set: genes are binned by mean log-normalised expression over all genes (``n_bins`` bins of
    equal gene count, scanpy's cut); from each bin holding a gene of the set, ``ctrl_size`` genes are drawn
    (seeded, all of the bin when it is smaller) and the set's own genes removed; the score is the mean
    expression of the set minus the mean of the control genes. Equal to scanpy's when no drawing is needed.

    Parameters
    ----------
    adata
        Cells x genes.
    programs
        Set name -> column indices of its genes.
    layer, ctrl_size, n_bins, seed
        As :func:`gene_programs`.

    Returns
    -------
    DataFrame, cells x sets.
    """
    X = log_normalized(adata, layer)
    avg = pd.Series(np.asarray(X.mean(0)).ravel())
    per_bin = max(1, int(np.round(adata.n_vars / (n_bins - 1))))
    cut = (avg.rank(method="min") // per_bin).to_numpy()
    weights = np.zeros((adata.n_vars, len(programs)))
    for j, (name, cols) in enumerate(programs.items()):
        rng = np.random.default_rng([seed, j])
        control: set[int] = set()
        for b in np.unique(cut[cols]):
            pool = np.flatnonzero(cut == b)
            if ctrl_size < len(pool):
                pool = rng.choice(pool, ctrl_size, replace=False)
            control.update(pool.tolist())
        control -= set(np.asarray(cols).tolist())
        if not control:
            raise RuntimeError(f"No control genes for the gene set {name!r}: too few genes in its expression bins.")
        weights[cols, j] = 1.0 / len(cols)
        weights[sorted(control), j] -= 1.0 / len(control)
    return pd.DataFrame(np.asarray(X @ weights), index=adata.obs_names.copy(), columns=list(programs))


# ---------------------------------------------------------------------------- networks
def _select_genes(
    adata: AnnData,
    known: np.ndarray,
    *,
    genes: Sequence[str] | None,
    tfs: Sequence[str] | None,
    n_top_genes: int | None,
    layer: str | None,
) -> np.ndarray:
    """Columns of the network's genes: ``genes`` or the most variable known genes; named TFs always kept (#208)."""
    fn = caller()
    if genes is not None:
        cols = _named_columns(adata, genes, known, what="genes")
    elif n_top_genes is None or n_top_genes >= len(known):
        cols = known
    else:
        from ..data import get_matrix

        counts = get_matrix(adata, layer)[:, known]
        cols = known[variable_genes(counts, n_top_genes, None)]
        logger.info(f"    the {len(cols)} most variable of {len(known)} known genes")
    if tfs is not None:
        tf_cols = _named_columns(adata, tfs, known, what="TFs")
        extra = np.setdiff1d(tf_cols, cols)
        if len(extra) and genes is not None:
            raise ValueError(f"{fn}: the TFs {list(adata.var_names[extra])} are not among `genes`; add them.")
        cols = np.union1d(cols, extra)
    return np.sort(cols)


def _source_columns(adata: AnnData, cols: np.ndarray, tfs: Sequence[str] | None, method: str) -> np.ndarray:
    """Positions (within ``cols``) of the genes that may be sources: the TFs."""
    fn = caller()
    if tfs is not None:
        names = [tfs] if isinstance(tfs, str) else list(tfs)
        return np.flatnonzero(np.isin(adata.var_names[cols], names))
    if method == "embedding":
        return np.arange(len(cols))
    from ..datasets import transcription_factors

    pos = np.flatnonzero(np.isin(adata.var_names[cols], transcription_factors()))
    if not len(pos):
        raise ValueError(
            f"{fn}: none of the {len(cols)} genes is a transcription factor of the bundled CollecTRI list; pass "
            "`tfs=` (e.g. tfs=list(adata.var_names) for every gene as a source)."
        )
    logger.info(f"    {len(pos)} of the genes are CollecTRI transcription factors (the sources)")
    return pos


def _top_edges(
    M: np.ndarray, names: np.ndarray, sources: np.ndarray, top_k: int | None, *, by_abs: bool
) -> pd.DataFrame:
    """Edges of a targets x genes weight matrix, the ``top_k`` strongest sources per target, no self-edges."""
    W = M[:, sources].astype(np.float64)
    W[sources, np.arange(len(sources))] = np.nan  # a gene is not its own source
    key = np.abs(W) if by_abs else W.copy()
    key[np.isnan(key)] = -np.inf
    k = W.shape[1] if top_k is None else min(top_k, W.shape[1])
    order = np.argsort(-key, axis=1, kind="stable")[:, :k]
    rows = np.repeat(np.arange(W.shape[0]), k)
    cols = order.ravel()
    weight = W[rows, cols]
    ok = np.isfinite(weight)
    edges = pd.DataFrame(
        {"source": names[sources[cols[ok]]], "target": names[rows[ok]], "weight": weight[ok].astype(np.float32)}
    )
    return edges


def _attention_maps(
    adata: AnnData,
    model: ScGPT,
    cols: np.ndarray,
    tokens: dict[int, str],
    *,
    groups: np.ndarray | None,
    layers: Sequence[int],
    heads: Literal["mean"] | Sequence[int],
    scores: str,
    rank: bool,
    include_zero_genes: bool,
    inference: dict,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean attention maps ``(n_groups, n, n)`` over the genes ``cols`` (row = query), and cells per group."""
    maps = model.get_attention(
        adata[:, cols],
        layers=layers,
        heads=heads,
        softmax=scores == "softmax",
        rank_normalize=rank,
        groups=groups,
        include_zero_genes=include_zero_genes,
        tokens=[tokens[c] for c in cols],
        **inference,
    )
    return maps.mean, maps.n_cells


def _check_options(
    method: str, scores: str, top_k: int | None, groupby: str | None, reference_group: str | None
) -> None:
    """Clear errors for :func:`infer_grn` options that do not fit together, before any work."""
    fn = caller()
    if method not in ("embedding", "attention"):
        raise ValueError(f"{fn}: method must be 'embedding' or 'attention', got {method!r}.")
    if scores not in ("qk", "softmax"):
        raise ValueError(f"{fn}: scores must be 'qk' or 'softmax', got {scores!r}.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"{fn}: top_k must be positive or None, got {top_k}.")
    if method == "embedding" and groupby is not None:
        raise ValueError(f"{fn}: gene embeddings do not depend on cells; `groupby` needs method='attention'.")
    if reference_group is not None and groupby is None:
        raise ValueError(f"{fn}: `reference_group` needs `groupby`.")


def _layers_and_heads(model: ScGPT, layers, heads) -> tuple[list[int], str | list[int]]:
    """The layer indices and head indices (or ``"mean"``) of an attention network, checked against the model."""
    fn = caller()
    n_layers = model.config.n_layers
    layer_list = [layers] if isinstance(layers, int | np.integer) else list(layers)
    bad = [i for i in layer_list if not isinstance(i, int | np.integer) or not -n_layers <= i < n_layers]
    if bad or not layer_list:
        raise ValueError(
            f"{fn}: layers={layers!r} is out of range: the model has {n_layers} layers, indices 0 to {n_layers - 1} "
            f"(or -{n_layers} to -1 from the last)."
        )
    if isinstance(heads, str) and heads != "mean":
        raise ValueError(f"{fn}: heads must be 'mean' or head indices, got {heads!r}.")
    head_list = "mean" if isinstance(heads, str) else ([heads] if isinstance(heads, int | np.integer) else list(heads))
    n_heads = model.config.n_heads
    if head_list != "mean" and (
        not head_list or not all(isinstance(h, int | np.integer) and 0 <= h < n_heads for h in head_list)
    ):
        raise ValueError(
            f"{fn}: heads={heads!r} is out of range: the model has {n_heads} attention heads per layer, indices 0 to "
            f"{n_heads - 1} (or 'mean')."
        )
    return layer_list, head_list


def _edge_tables(maps, labels, names, sources, *, symmetric: bool, top_k: int | None, difference: bool) -> list:
    """One edge table per network map, labelled with its group when there are groups.

    The ``top_k`` sources per target, or the symmetric top-k pairs of an undirected embedding network.
    """
    parts = []
    for M, g in zip(maps, labels, strict=True):
        if symmetric:
            part = _top_edges(_symmetric_top(M, top_k), names, sources, None, by_abs=False)
        else:
            part = _top_edges(M, names, sources, top_k, by_abs=difference)
        if g is not None:
            part["group"] = str(g)
        parts.append(part)
    return parts


@doc_params()
@named()
def infer_grn(
    adata: AnnData,
    model: ScGPT | str | None = None,
    *,
    method: Literal["embedding", "attention"] = "embedding",
    genes: Sequence[str] | None = None,
    tfs: Sequence[str] | None = None,
    n_top_genes: int | None = 1200,
    groupby: str | None = None,
    reference_group: str | None = None,
    layers: int | Sequence[int] = -1,
    heads: Literal["mean"] | int | Sequence[int] = "mean",
    scores: Literal["qk", "softmax"] = "qk",
    rank_normalize: bool = True,
    include_zero_genes: bool = True,
    top_k: int | None = 50,
    key_added: str = "scgpt_grn",
    gene_key: str | None = None,
    use_aliases: bool = True,
    organism: str = "human",
    orthologs: str = "one2one",
    layer: str | None = None,
    batch_key: str | None = None,
    batch_size: int = 16,
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool | None = None,
    copy: bool = False,
) -> AnnData | None:
    """A gene network from scGPT: cosine similarity of gene embeddings, or attention between genes.

    ``method="embedding"`` (``Tutorial_GRN``): cosine similarity of the gene-token embeddings; for each
    gene, its ``top_k`` most similar genes. **Undirected**: each kept pair is written in both directions.

    ``method="attention"`` (``Tutorial_Attention_GRN``): every cell is run with all network genes as tokens
    (``include_zero_genes``), the attention of ``layers`` / ``heads`` is computed explicitly (``q @ k.T`` as
    the official tutorial, or the softmax weights), rank-normalised per cell and head by rows then columns
    (:func:`scgpt.model.rank_normalize`), averaged over heads and over the cells of each group; with
    ``reference_group``, each other group's map minus the reference's. **Directed**: row = query = target,
    column = key = source; an edge ``source -> target`` carries ``map[target, source]``. Maps are computed
    in chunks of query genes, so memory stays bounded, and a cell's map does not depend on the other cells.

    Both networks mostly recover co-expression; score them with :func:`scgpt.tl.evaluate_grn`, which
    computes the co-expression and random baselines in the same call.

    Parameters
    ----------
    adata
        Cells x genes, raw counts (or log-normalised values: binning only uses the order).
    {model}
    method
        ``"embedding"`` or ``"attention"``.
    genes
        Network genes (in ``var_names`` and the vocabulary); ``None``: the ``n_top_genes`` most variable
        genes the vocabulary knows (seurat_v3 on counts), plus ``tfs``.
    tfs
        Genes allowed as sources, never dropped by the gene selection. ``None``: every gene for
        ``"embedding"``; the CollecTRI transcription factors among the network genes for ``"attention"``
        (:func:`scgpt.datasets.transcription_factors`).
    n_top_genes
        Genes kept when ``genes`` is ``None``; ``None`` keeps every known gene.
    groupby
        ``obs`` column: one attention network per group of cells (``"attention"`` only).
    reference_group
        A group of ``groupby``: networks are each other group minus this one ("difference" setting).
    layers
        Layer index or indices (negative from the end; averaged), ``"attention"`` only.
    heads
        ``"mean"`` over all heads, or head indices to average.
    scores
        ``"qk"``: raw ``q @ k.T`` as the official tutorial; ``"softmax"``: the attention weights.
    rank_normalize
        The official rank normalisation (rows, then columns) per cell and head.
    include_zero_genes
        Run every network gene in every cell (official); ``False``: only the genes a cell expresses
        (pairs averaged over the cells where both occur).
    top_k
        Sources kept per target gene (by weight; by absolute weight for differences); ``None`` keeps all.
    key_added
        Name of the network (see Returns).
    {gene_key}
    {use_aliases}
    {organism}
    layer
        Layer with counts; ``None``: ``X``.
    {batch_key}
    batch_size
        Cells per forward pass (an upper bound); results do not depend on it.
    {seed}
    {device}
    {dtype}
    {progress}
    {copy}

    Returns
    -------
    ``None``, or a copy with ``copy=True``; writes

    - ``adata.uns[key_added]``: ``edges`` (DataFrame ``source``, ``target``, ``weight`` and ``group`` for
      grouped networks, sorted by decreasing weight: the ``net`` format of decoupler), ``genes`` (the
      network genes), ``n_cells`` per group and ``params``;
    - ``adata.varp[key_added]``: the network as a sparse ``n_vars x n_vars`` matrix, row = target,
      column = source, when there is one network (no ``groupby``, or two groups with a reference).

    Examples
    --------
    >>> scgpt.tl.infer_grn(adata, "demo", method="attention", tfs=["SPI1", "CEBPB"])  # doctest: +SKIP
    >>> scgpt.tl.evaluate_grn(adata)  # the network in adata.uns["scgpt_grn"]  # doctest: +SKIP
    """
    start = time.perf_counter()
    fn = "infer_grn"
    check_adata(adata)
    _check_options(method, scores, top_k, groupby, reference_group)
    check_n_top_genes(n_top_genes)
    check_layer(adata, layer)
    groups, group_names = _groups(adata, groupby, reference_group)
    adata = adata.copy() if copy else adata
    actual_if_view(adata)
    model_obj, model_name = resolve_model(model)
    layer_list, head_list = _layers_and_heads(model_obj, layers, heads)

    known, tokens = _known_genes(
        adata, model_obj, gene_key=gene_key, use_aliases=use_aliases, organism=organism, orthologs=orthologs
    )
    token_of = dict(zip(known.tolist(), tokens, strict=True))
    cols = _select_genes(adata, known, genes=genes, tfs=tfs, n_top_genes=n_top_genes, layer=layer)
    if len(cols) < 2:
        raise ValueError(f"{fn}: a network needs at least 2 genes, got {len(cols)}.")
    sources = _source_columns(adata, cols, tfs, method)
    names = adata.var_names[cols].astype(str).to_numpy()
    logger.info(f"inferring a gene network ({method}) over {len(cols)} genes, {len(sources)} sources")

    n_cells: dict[str, int] = {}
    if method == "embedding":
        emb = model_obj.get_gene_embeddings([token_of[c] for c in cols]).to_numpy(np.float64)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
        maps, labels = (emb @ emb.T)[None], [None]
    else:
        inference = {
            "gene_key": gene_key, "use_aliases": use_aliases, "layer": layer, "batch_key": batch_key,
            "organism": organism, "orthologs": orthologs,
            "batch_size": batch_size, "seed": seed, "device": device, "dtype": dtype, "progress": progress,
        }  # fmt: skip
        maps, counts = _attention_maps(
            adata, model_obj, cols, token_of, groups=groups, layers=layer_list, heads=head_list, scores=scores,
            rank=rank_normalize, include_zero_genes=include_zero_genes, inference=inference,
        )  # fmt: skip
        labels = group_names if groupby is not None else [None]
        n_cells = {str(g): int(c) for g, c in zip(labels, counts, strict=True)} if groupby else {"all": int(counts[0])}
        if reference_group is not None:
            ref = labels.index(str(reference_group))
            keep = [i for i in range(len(labels)) if i != ref]
            maps, labels = maps[keep] - maps[ref], [labels[i] for i in keep]

    parts = _edge_tables(maps, labels, names, sources, symmetric=method == "embedding" and tfs is None,
                         top_k=top_k, difference=reference_group is not None)  # fmt: skip
    edges = pd.concat(parts, ignore_index=True)
    edges = edges.sort_values("weight", ascending=False, kind="stable").reset_index(drop=True)

    added = []
    if len(parts) == 1:
        warn_overwrite(adata, "varp", key_added, copy=copy)
        t = adata.var_names.get_indexer(edges["target"])
        s = adata.var_names.get_indexer(edges["source"])
        adata.varp[key_added] = sp.csr_matrix(
            (edges["weight"].to_numpy(np.float32), (t, s)), shape=(adata.n_vars, adata.n_vars)
        )
        added.append(f"'{key_added}', the network, row = target, column = source (adata.varp)")
    params = {
        **provenance(model_obj, model_name), "method": method,
        "genes": None if genes is None else list(map(str, genes)),
        "tfs": None if tfs is None else list(map(str, [tfs] if isinstance(tfs, str) else tfs)),
        "n_top_genes": n_top_genes, "groupby": groupby, "reference_group": reference_group,
        "layers": layer_list, "heads": head_list, "scores": scores, "rank_normalize": rank_normalize,
        "include_zero_genes": include_zero_genes, "top_k": top_k, "layer": layer, "seed": seed,
        "directed": method == "attention", "direction": "row = query = target, column = key = source",
    }  # fmt: skip
    if method == "embedding":
        for name in ("groupby", "reference_group", "layers", "heads", "scores", "rank_normalize", "include_zero_genes"):
            params.pop(name)
    warn_overwrite(adata, "uns", key_added, copy=copy)
    record(
        adata,
        key_added,
        params,
        start=start,
        added=added,
        edges=edges,
        genes=list(names),
        n_cells=n_cells,
    )
    logger.info(f"    {len(edges)} edges")
    return adata if copy else None


def _symmetric_top(S: np.ndarray, top_k: int | None) -> np.ndarray:
    """Similarities of pairs where either gene is among the other's ``top_k``; NaN elsewhere and on the diagonal."""
    S = S.astype(np.float64, copy=True)
    np.fill_diagonal(S, -np.inf)
    if top_k is not None and top_k < S.shape[0] - 1:
        order = np.argsort(-S, axis=1, kind="stable")[:, :top_k]
        keep = np.zeros_like(S, dtype=bool)
        np.put_along_axis(keep, order, True, axis=1)
        keep |= keep.T
        S[~keep] = np.nan
    np.fill_diagonal(S, np.nan)
    return S


def _groups(adata: AnnData, groupby: str | None, reference: str | None):
    """Integer group codes per cell (-1 = missing) and the group names, with clear errors."""
    fn = caller()
    if groupby is None:
        return None, None
    if groupby not in adata.obs:
        raise KeyError(f"{fn}: groupby={groupby!r} is not a column of adata.obs; columns: {list(adata.obs.columns)}.")
    values = adata.obs[groupby]
    missing = missing_values(values)
    text = values.astype(str).to_numpy()
    names = sorted(set(text[~missing]))
    if len(names) < 2:
        raise ValueError(
            f"{fn}: adata.obs[{groupby!r}] has {len(names)} group(s) ({names}); grouping needs at least two "
            "(drop `groupby` for one network over all cells)."
        )
    if reference is not None and str(reference) not in names:
        raise KeyError(f"{fn}: reference_group={reference!r} is not a group of adata.obs[{groupby!r}]: {names}.")
    codes = np.where(missing, -1, pd.Index(names).get_indexer(text))
    return codes, names
