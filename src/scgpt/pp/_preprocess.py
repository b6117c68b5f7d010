"""The official scGPT ``Preprocessor`` steps as scanpy-style functions."""

from __future__ import annotations

import numbers
import time
from typing import TYPE_CHECKING, Literal

import numpy as np
import scipy.sparse as sp

from .._docs import doc_params
from .._face import check_key_added, record, warn_overwrite, writable
from .._logging import logger, named, warn
from ..data import MIN_VARIABLE, check_adata, get_matrix, varying_genes
from ._binning import bin_values

if TYPE_CHECKING:
    from anndata import AnnData


_HVG_FLAVORS = ("seurat_v3", "seurat_v3_paper", "cell_ranger", "seurat")


@named()
def highly_variable_genes(
    adata: AnnData,
    n_top_genes: int = 3000,
    *,
    flavor: Literal["seurat_v3", "seurat_v3_paper", "cell_ranger", "seurat"] = "seurat_v3",
    layer: str | None = None,
    batch_key: str | None = None,
    subset: bool = False,
    key_added: str = "hvg",
    **kwargs,
) -> None:
    """Highly variable genes with the scGPT tutorials' defaults: ``seurat_v3`` on raw counts.

    A thin wrapper of :func:`scanpy.pp.highly_variable_genes` (the zero-shot tutorials use 3,000
    genes, the fine-tuning tutorials 1,200). ``seurat_v3`` expects counts (scanpy warns otherwise;
    the tutorials switch to ``cell_ranger`` for normalised data).

    Parameters
    ----------
    adata
        Annotated data matrix.
    n_top_genes
        Number of genes to keep.
    flavor
        Method, see :func:`scanpy.pp.highly_variable_genes`.
    layer
        Layer with raw counts; ``None`` uses ``adata.X``.
    batch_key
        ``obs`` column with batches (genes are ranked within each batch).
    subset
        Subset ``adata`` to the selected genes.
    key_added
        ``uns`` entry recording the parameters (scanpy's own ``uns['hvg']`` by default).
    **kwargs
        Passed to :func:`scanpy.pp.highly_variable_genes`.

    Returns
    -------
    ``None``. Sets ``adata.var['highly_variable']`` and the other columns scanpy writes
    (and subsets ``adata`` when ``subset=True``), and ``adata.uns[key_added]['params']``.
    """
    import scanpy as sc

    start = time.perf_counter()
    check_adata(adata)
    if flavor not in _HVG_FLAVORS:
        raise ValueError(f"flavor must be one of {list(_HVG_FLAVORS)}, got {flavor!r}.")
    if n_top_genes < 1:
        raise ValueError(f"n_top_genes must be positive, got {n_top_genes}.")
    get_matrix(adata, layer)  # clear error for a missing layer
    if batch_key is not None and batch_key not in adata.obs:
        raise KeyError(f"batch_key={batch_key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}).")
    n_top_genes = min(n_top_genes, adata.n_vars)
    if flavor.startswith("seurat_v3"):  # its loess fit aborts the process on a batch without varying genes
        counts = get_matrix(adata, layer)
        per = varying_genes(counts, None if batch_key is None else adata.obs[batch_key].to_numpy())
        few = {b: n for b, n in per.items() if n < MIN_VARIABLE}
        if few:
            where = f"batches {list(few)[:5]} of {batch_key!r}" if batch_key else "the cells"
            raise ValueError(
                f"highly_variable_genes: {where} have fewer than {MIN_VARIABLE} genes that vary ({few}), e.g. empty "
                "droplets or a batch of one cell; seurat_v3 cannot fit them. Filter such cells first "
                "(scgpt.pp.preprocess(filter_cell_by_counts=...)), merge small batches, or use flavor='seurat'."
            )
    logger.info(f"selecting {n_top_genes} highly variable genes ({flavor})")
    sc.pp.highly_variable_genes(
        adata, n_top_genes=n_top_genes, flavor=flavor, layer=layer, batch_key=batch_key, subset=subset, **kwargs
    )
    params = {"n_top_genes": n_top_genes, "flavor": flavor, "layer": layer, "batch_key": batch_key, "subset": subset}
    scanpy_entry = dict(adata.uns.get(key_added, {})) if key_added == "hvg" else {}
    added = ["'highly_variable', 'means', 'variances', ... (adata.var)"]
    record(adata, key_added, {**params, **kwargs}, start=start, added=added, **scanpy_entry)


def _min_counts(value: int | bool | None, name: str) -> int:
    """A count filter's threshold: ``True`` means 1; ``None``/``False``/0 means no filter (0)."""
    if value is None or value is False:
        return 0
    if value is True:
        return 1
    if not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, True, False or None; got {value!r}.")
    return int(value)


@doc_params()
@named()
def preprocess(
    adata: AnnData,
    *,
    layer: str | None = None,
    filter_gene_by_counts: int | bool | None = None,
    filter_cell_by_counts: int | bool | None = None,
    normalize_total: float | Literal["median"] | None = 1e4,
    result_normed_key: str = "X_normed",
    log1p: bool = False,
    result_log1p_key: str = "X_log1p",
    subset_hvg: int | bool = False,
    hvg_layer: str | None = None,
    hvg_flavor: Literal["seurat_v3", "cell_ranger", "seurat"] = "seurat_v3",
    binning: int | None = None,
    result_binned_key: str = "X_binned",
    batch_key: str | None = None,
    seed: int = 0,
    overwrite_X: bool = False,
    key_added: str = "scgpt_preprocess",
    copy: bool = False,
) -> AnnData | None:
    """The official scGPT ``Preprocessor``: filter, normalise, log1p, select HVGs, bin.

    Defaults are the official ones. Steps write layers and leave ``adata.X`` (the raw counts)
    untouched unless ``overwrite_X=True``.

    Parameters
    ----------
    adata
        Annotated data matrix with raw counts in ``adata.X`` or ``layer``.
    layer
        Layer holding the raw counts; ``None`` uses ``adata.X``.
    filter_gene_by_counts
        Drop genes with fewer counts (``True`` means 1; ``None``, ``False`` or 0 keeps all),
        :func:`scanpy.pp.filter_genes`.
    filter_cell_by_counts
        Drop cells with fewer counts (``True`` means 1; ``None``, ``False`` or 0 keeps all),
        :func:`scanpy.pp.filter_cells`.
    normalize_total
        Target total per cell (a number), ``"median"`` for the median total, ``None`` to skip. (The
        official ``Preprocessor`` reads an integer or ``True`` as "median"; here a number is always the
        target.)
    result_normed_key
        Layer for normalised values.
    log1p
        Also write ``log1p`` of the normalised values.
    result_log1p_key
        Layer for log-normalised values.
    subset_hvg
        Number of highly variable genes to subset to (``False`` keeps all genes).
    hvg_layer
        Layer for HVG selection; ``None`` uses the raw counts.
    hvg_flavor
        HVG method (``seurat_v3`` on counts, as the tutorials).
    binning
        Number of bins (51 for the released models); ``None`` skips binning. Bins the last layer
        written (log1p, else normalised, else counts); see :func:`scgpt.pp.bin_values`.
    result_binned_key
        Layer for bins.
    batch_key
        ``obs`` column with batches, for HVG selection.
    seed
        Seed of the binning tie-break.
    overwrite_X
        Also put the last processed values in ``adata.X``.
    key_added
        ``uns`` entry recording the parameters.
    {copy}

    Returns
    -------
    ``None``, or a copy when ``copy=True``. Sets the layers named by the ``result_*_key``
    arguments of the steps that ran (and ``var['highly_variable']``), and ``adata.uns[key_added]['params']``;
    may subset ``adata``.
    """
    import scanpy as sc

    start = time.perf_counter()
    adata = writable(adata, copy=copy, in_memory=True)
    for param, key in (
        ("result_normed_key", result_normed_key),
        ("result_log1p_key", result_log1p_key),
        ("result_binned_key", result_binned_key),
    ):
        check_key_added(key, reads=(layer, hvg_layer), slot="layers", param=param)
    number = isinstance(normalize_total, numbers.Real) and not isinstance(normalize_total, bool)
    if not (normalize_total is None or normalize_total == "median" or (number and normalize_total > 0)):
        raise ValueError(f"normalize_total must be a positive number, 'median' or None; got {normalize_total!r}.")
    min_gene_counts = _min_counts(filter_gene_by_counts, "filter_gene_by_counts")
    min_cell_counts = _min_counts(filter_cell_by_counts, "filter_cell_by_counts")
    added = []
    counts_key = layer
    get_matrix(adata, counts_key)  # clear error for a missing layer
    if min_gene_counts:  # on the counts (layer or X)
        keep, _ = sc.pp.filter_genes(get_matrix(adata, counts_key), min_counts=min_gene_counts, inplace=False)
        adata._inplace_subset_var(keep)
        logger.info(f"    kept {adata.n_vars} genes with >= {min_gene_counts} counts")
    if min_cell_counts:
        keep, _ = sc.pp.filter_cells(get_matrix(adata, counts_key), min_counts=min_cell_counts, inplace=False)
        adata._inplace_subset_obs(keep)
        logger.info(f"    kept {adata.n_obs} cells with >= {min_cell_counts} counts")
    last = counts_key
    if normalize_total is not None:
        target = None if normalize_total == "median" else float(normalize_total)
        warn_overwrite(adata, "layers", result_normed_key, copy=copy)
        adata.layers[result_normed_key] = sc.pp.normalize_total(
            adata, target_sum=target, layer=counts_key, inplace=False
        )["X"]
        last = result_normed_key
        added.append(f"'{result_normed_key}', normalised values (adata.layers)")
    if log1p:
        src = get_matrix(adata, last)
        if _looks_logged(src):
            warn("The data look already log-transformed; applying log1p again.")
        if sp.issparse(src):
            logged = src.copy()
            np.log1p(logged.data, out=logged.data)
        else:
            logged = np.log1p(np.asarray(src, dtype=np.float32))
        warn_overwrite(adata, "layers", result_log1p_key, copy=copy)
        adata.layers[result_log1p_key] = logged
        last = result_log1p_key
        added.append(f"'{result_log1p_key}', log1p of normalised values (adata.layers)")
    if subset_hvg:
        n_top = adata.n_vars if subset_hvg is True else int(subset_hvg)
        hvg_on = counts_key if hvg_layer is None else hvg_layer
        highly_variable_genes(adata, n_top, flavor=hvg_flavor, layer=hvg_on, batch_key=batch_key, subset=True)
        logger.info(f"    subset to {adata.n_vars} highly variable genes")
    if binning:
        bin_values(adata, n_bins=int(binning), layer=last, key_added=result_binned_key, seed=seed)
        last = result_binned_key
        added.append(f"'{result_binned_key}', bins (adata.layers)")
    if overwrite_X and last is not None:
        adata.X = adata.layers[last].copy()
        added.append("X, overwritten with the last processed values")
    params = {
        "layer": layer,
        "filter_gene_by_counts": min_gene_counts,
        "filter_cell_by_counts": min_cell_counts,
        "normalize_total": normalize_total,
        "log1p": log1p,
        "subset_hvg": subset_hvg,
        "hvg_layer": hvg_layer,
        "hvg_flavor": hvg_flavor,
        "binning": binning,
        "batch_key": batch_key,
        "seed": seed,
    }
    record(adata, key_added, params, start=start, added=added)
    return adata if copy else None


def _looks_logged(X) -> bool:
    """The official ``check_logged``: max <= 30, min >= 0 and smallest nonzero < 1."""
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    if not len(data):
        return False
    nz = data[data > 0]
    return bool(data.max() <= 30 and data.min() >= 0 and len(nz) and nz.min() < 1)
