"""``scgpt.tl.benchmark_integration``: an integration next to PCA, Harmony and scVI in one scib-metrics table."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._docs import doc_params
from .._face import record, warn_overwrite
from .._logging import log_added, logger, named, warn
from .._settings import settings
from ..data import check_adata, get_matrix, missing_values
from ._hvg import variable_genes

if TYPE_CHECKING:
    from anndata import AnnData

BASELINES = {"pca": "X_pca", "harmony": "X_pca_harmony", "scvi": "X_scVI"}
"""The baselines and the ``obsm`` keys they are written to (the keys scanpy and scvi-tools use)."""

AVG_BIO = ("KMeans NMI", "KMeans ARI", "Silhouette label")
AVG_BATCH = ("BRAS", "Graph connectivity")


def _need(module: str, extra: str = "eval"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f'benchmark_integration needs {module.split(".")[0]}: pip install "scib-metrics>=0.5.1" harmonypy '
            f'(or pip install ".[{extra}]" in a clone of scgpt-scverse).'
        ) from e


def _log_normalised_hvg(adata: AnnData, *, layer: str | None, batch_key: str, n_top_genes: int) -> AnnData:
    """A log-normalised copy restricted to ``n_top_genes`` highly variable genes.

    Genes are ranked by seurat_v3 on the counts, per batch; the counts stay in ``layers['counts']``.
    """
    import anndata as ad
    import scanpy as sc

    counts = get_matrix(adata, layer)
    cols = variable_genes(counts, n_top_genes, adata.obs[batch_key].to_numpy())
    tmp = ad.AnnData(
        X=sp.csr_matrix(counts[:, cols], dtype=np.float32),
        obs=adata.obs[[batch_key]].copy(),
        var=pd.DataFrame(index=adata.var_names[cols]),
    )
    tmp.layers["counts"] = tmp.X.copy()
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    return tmp


def _check_inputs(
    adata: AnnData,
    *,
    batch_key: str,
    labels_key: str,
    obsm_keys: Sequence[str] | None,
    baselines: Sequence[str],
    layer: str | None,
    n_top_genes: int,
    n_comps: int,
) -> tuple[list[str], np.ndarray]:
    """Every check of :func:`benchmark_integration`, before anything is computed or written.

    Returns the embeddings to score besides the baselines and the mask of the cells scored (those with a label).
    Missing labels (also the strings "nan"/"None") are left out with a warning naming the first cell, missing batches
    are an error, and what scib-metrics cannot score (one batch, one cell type, no cell type in two batches) is an
    error here rather than a pandas or scikit-learn traceback after the baselines were written.
    """
    fn = "benchmark_integration"
    for key, what in ((batch_key, "batch_key"), (labels_key, "labels_key")):
        if key not in adata.obs:
            raise KeyError(f"{fn}: {what}={key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}).")
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"{fn}: unknown baselines {unknown}; choose from {sorted(BASELINES)}.")
    keys = list(obsm_keys) if obsm_keys is not None else [k for k in adata.obsm if k.startswith("X_scGPT")]
    missing = [k for k in keys if k not in adata.obsm]
    if missing:
        raise KeyError(f"{fn}: obsm_keys {missing} are not in adata.obsm (keys: {list(adata.obsm)}).")
    for k in dict.fromkeys([*keys, *(BASELINES[b] for b in ("pca", *baselines) if BASELINES[b] in adata.obsm)]):
        values = np.asarray(adata.obsm[k])
        if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
            raise ValueError(f"{fn}: adata.obsm[{k!r}] is not a numeric cells x dimensions array.")
        bad = ~np.isfinite(values).all(1)
        if bad.any():
            raise ValueError(
                f"{fn}: adata.obsm[{k!r}] holds NaN or infinite values in {int(bad.sum())} cells (first: "
                f"{adata.obs_names[np.flatnonzero(bad)[0]]!r}); every scored cell needs an embedding."
            )
    for value, what in ((n_top_genes, "n_top_genes"), (n_comps, "n_comps")):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{fn}: {what} must be a positive integer, got {value!r}.")
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"{fn}: layer={layer!r} is not a layer of adata (layers: {list(adata.layers)}).")
    batches, labels = adata.obs[batch_key], adata.obs[labels_key]
    no_batch = missing_values(batches)
    if no_batch.any():
        first = adata.obs_names[np.flatnonzero(no_batch)[0]]
        raise ValueError(
            f"{fn}: obs[{batch_key!r}] has {int(no_batch.sum())} cells without a batch (first: {first!r}); give every "
            "cell a batch or drop those cells."
        )
    no_label = missing_values(labels)
    if no_label.all():
        raise ValueError(f"{fn}: obs[{labels_key!r}] holds no labels (all missing).")
    if no_label.any():
        first = adata.obs_names[np.flatnonzero(no_label)[0]]
        warn(
            f"{fn}: {int(no_label.sum())} cells have no label in obs[{labels_key!r}] (first: {first!r}); they are left "
            "out of the scores (the baselines are computed on every cell)."
        )
    scored = ~no_label
    b, y = batches[scored].astype(str).to_numpy(), labels[scored].astype(str).to_numpy()
    n_batches, n_labels = len(set(b)), len(set(y))
    if n_batches < 2:
        raise ValueError(
            f"{fn}: the scored cells hold a single batch in obs[{batch_key!r}] ({b[0]!r}); batch correction is "
            "scored between two or more batches."
        )
    if n_labels < 2:
        raise ValueError(
            f"{fn}: the scored cells hold a single cell type in obs[{labels_key!r}] ({y[0]!r}); bio conservation "
            "(clusterings, silhouettes) needs two or more."
        )
    if len(y) <= n_labels:
        raise ValueError(
            f"{fn}: {len(y)} scored cells for {n_labels} cell types; the silhouette and k-means scores need more cells "
            "than cell types."
        )
    pairs = pd.DataFrame({"label": y, "batch": b})
    per_label = pairs.groupby("label", observed=True).agg(cells=("batch", "size"), batches=("batch", "nunique"))
    if not ((per_label["batches"] > 1) & (per_label["cells"] > per_label["batches"])).any():
        raise ValueError(
            f"{fn}: no cell type of obs[{labels_key!r}] has cells in two batches of obs[{batch_key!r}]; the batch "
            "silhouette (BRAS) compares batches within a cell type. Score more cells."
        )
    return keys, scored


@doc_params()
@named()
def benchmark_integration(
    adata: AnnData,
    *,
    batch_key: str,
    labels_key: str,
    obsm_keys: Sequence[str] | None = None,
    baselines: Sequence[Literal["pca", "harmony", "scvi"]] = ("pca", "harmony", "scvi"),
    layer: str | None = None,
    n_top_genes: int = 2000,
    n_comps: int = 50,
    scvi_max_epochs: int | None = None,
    seed: int = 0,
    key_added: str | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Score integrated embeddings with scib-metrics, next to the baselines computed in the same call.

    The baselines missing from ``adata.obsm`` are computed on log-normalised highly variable genes:
    unintegrated PCA (``X_pca``), Harmony on it (``X_pca_harmony``, harmonypy as in
    :func:`scanpy.external.pp.harmony_integrate`)
    and scVI on the counts (``X_scVI``, scvi-tools). Then scib-metrics' ``Benchmarker`` scores every embedding
    (bio conservation: isolated labels, k-means NMI/ARI, label silhouette, cLISI; batch correction: BRAS, iLISI,
    kBET, graph connectivity, PCR comparison against the PCA), and the scGPT paper's AvgBIO (mean of NMI,
    ARI and label silhouette) and AvgBATCH (mean of the batch silhouette — BRAS in scib-metrics 0.5 — and
    graph connectivity) are added, so numbers compare with the paper.

    Cells without a label in ``labels_key`` (missing, or the strings "nan"/"None") are left out of the scores
    with a warning; cells without a batch are an error. Inputs scib-metrics cannot score (a single batch or cell
    type, no cell type in two batches, NaN embeddings) are refused before anything is computed, and the baselines
    are written into ``adata`` only once the scores are computed.

    Needs scib-metrics and harmonypy: ``pip install "scib-metrics>=0.5.1" harmonypy`` (or the ``eval`` extra,
    ``pip install ".[eval]"`` in a clone of scgpt-scverse).

    Parameters
    ----------
    adata
        Cells with raw counts (``X`` or ``layer``) and the embeddings to score in ``obsm``.
    batch_key
        ``obs`` column with batches.
    {labels_key}
    obsm_keys
        Embeddings to score besides the baselines, e.g. ``["X_scGPT_integrated", "X_scGPT"]`` (default: every
        ``obsm`` key starting with ``X_scGPT``).
    baselines
        Which baselines to include (computed when missing from ``obsm``).
    {layer}
    n_top_genes, n_comps
        Highly variable genes and principal components of the baselines.
    scvi_max_epochs
        Training length of scVI (default: scvi-tools' own, by data size).
    seed
        Seed of Harmony, scVI and the k-means clusterings.
    {eval_key_added}
    {progress}

    Returns
    -------
    The results: one row per embedding (index ``embedding``), one column per metric, the aggregates
    (``Batch correction``, ``Bio conservation``, ``Total``), ``AvgBIO`` and ``AvgBATCH``. Baselines computed
    here are written whatever ``key_added`` (inputs of the scores, reused by the next call):

    ``adata.obsm["X_pca"]``, ``["X_pca_harmony"]``, ``["X_scVI"]`` : float32
        The baselines that were missing.
    ``adata.uns[key_added]`` : dict
        With ``key_added``: ``params``, ``results`` (the DataFrame) and ``evaluator``
        (``"scgpt.tl.benchmark_integration"``).
    """
    start = time.perf_counter()
    check_adata(adata)
    keys, scored = _check_inputs(
        adata, batch_key=batch_key, labels_key=labels_key, obsm_keys=obsm_keys, baselines=baselines,
        layer=layer, n_top_genes=n_top_genes, n_comps=n_comps,
    )  # fmt: skip
    show = settings.progress if progress is None else progress
    scib = _need("scib_metrics.benchmark")
    todo = [b for b in dict.fromkeys(("pca", *baselines)) if BASELINES[b] not in adata.obsm]
    if "harmony" in todo:
        harmonypy = _need("harmonypy")
    computed: dict[str, np.ndarray] = {}  # written into adata once everything is scored
    if todo:
        tmp = _log_normalised_hvg(adata, layer=layer, batch_key=batch_key, n_top_genes=n_top_genes)
        import scanpy as sc

        n_comps = min(n_comps, tmp.n_vars - 1, tmp.n_obs - 1)
        if "pca" in todo:
            logger.info(f"unintegrated PCA ({n_comps} components of {tmp.n_vars} highly variable genes)")
            sc.pp.pca(tmp, n_comps=n_comps, random_state=seed)
            computed["X_pca"] = np.asarray(tmp.obsm["X_pca"])
        tmp.obsm["X_pca"] = np.asarray(computed["X_pca"] if "X_pca" in computed else adata.obsm["X_pca"])
        if "harmony" in todo:
            logger.info("Harmony on the PCA")
            pcs = np.asarray(tmp.obsm["X_pca"], dtype=np.float64)
            out = harmonypy.run_harmony(pcs, tmp.obs, batch_key, random_state=seed, verbose=False)
            corrected = np.asarray(out.Z_corr)  # (dims, cells) up to harmonypy 0.0.x, (cells, dims) from 2.0
            corrected = corrected if corrected.shape[0] == tmp.n_obs else corrected.T
            computed["X_pca_harmony"] = corrected.astype(np.float32)
        if "scvi" in todo:
            import scvi

            logger.info("scVI on the counts of the highly variable genes")
            scvi.settings.seed = seed
            counts = tmp.copy()
            counts.X = counts.layers["counts"]
            scvi.model.SCVI.setup_anndata(counts, batch_key=batch_key)
            from ..train import quiet_training

            vae = scvi.model.SCVI(counts, n_latent=30)
            with quiet_training():
                vae.train(max_epochs=scvi_max_epochs, accelerator="cpu", enable_progress_bar=show)
            computed["X_scVI"] = vae.get_latent_representation().astype(np.float32)
    embeddings = list(dict.fromkeys(["X_pca", *(BASELINES[b] for b in baselines), *keys]))  # PCA: the reference
    logger.info(f"scib-metrics on {len(embeddings)} embeddings of {int(scored.sum())} cells")
    import anndata as ad

    view = ad.AnnData(obs=adata.obs.loc[scored, [batch_key, labels_key]].astype(str).astype("category"))
    for k in embeddings:  # copies: scib-metrics works on them in place
        view.obsm[k] = np.array(computed[k] if k in computed else adata.obsm[k], dtype=np.float32)[scored]
    bench = scib.Benchmarker(
        view,
        batch_key=batch_key,
        label_key=labels_key,
        embedding_obsm_keys=embeddings,
        pre_integrated_embedding_obsm_key="X_pca",
        n_jobs=1,
        progress_bar=show,
    )
    bench.benchmark()
    table = bench.get_results(min_max_scale=False)
    table = table.drop(index="Metric Type", errors="ignore").apply(pd.to_numeric)
    table["AvgBIO"] = table[list(AVG_BIO)].mean(1)
    table["AvgBATCH"] = table[list(AVG_BATCH)].mean(1)
    table.index.name = "embedding"
    for k, values in computed.items():
        adata.obsm[k] = values
    added = [f"'{BASELINES[b]}', baseline embedding (adata.obsm)" for b in todo]
    if key_added is None:
        log_added(start, added)
        return table
    warn_overwrite(adata, "uns", key_added)
    params = {
        "batch_key": batch_key,
        "labels_key": labels_key,
        "embeddings": embeddings,
        "baselines": list(baselines),
        "n_top_genes": n_top_genes,
        "n_comps": n_comps,
        "seed": seed,
    }
    evaluator = "scgpt.tl.benchmark_integration"
    record(adata, key_added, params, start=start, added=added, results=table, evaluator=evaluator)
    return table
