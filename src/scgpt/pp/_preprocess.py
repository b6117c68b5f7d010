"""The official scGPT ``Preprocessor`` steps as scanpy-style functions."""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np
import scipy.sparse as sp

from .._anndata import actual_if_view, check_adata, get_matrix
from .._logging import log_added, logger
from ._binning import bin_values

if TYPE_CHECKING:
    from anndata import AnnData


def highly_variable_genes(
    adata: AnnData,
    n_top_genes: int = 3000,
    *,
    flavor: Literal["seurat_v3", "seurat_v3_paper", "cell_ranger", "seurat"] = "seurat_v3",
    layer: str | None = None,
    batch_key: str | None = None,
    subset: bool = False,
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
    **kwargs
        Passed to :func:`scanpy.pp.highly_variable_genes`.

    Returns
    -------
    ``None``. Sets ``adata.var['highly_variable']`` and the other columns scanpy writes
    (and subsets ``adata`` when ``subset=True``).
    """
    import scanpy as sc

    check_adata(adata, fn="highly_variable_genes")
    get_matrix(adata, layer)  # clear error for a missing layer
    n_top_genes = min(n_top_genes, adata.n_vars)
    sc.pp.highly_variable_genes(
        adata, n_top_genes=n_top_genes, flavor=flavor, layer=layer, batch_key=batch_key, subset=subset, **kwargs
    )


def preprocess(
    adata: AnnData,
    *,
    layer: str | None = None,
    filter_gene_by_counts: int | bool = False,
    filter_cell_by_counts: int | bool = False,
    normalize_total: float | bool | None = 1e4,
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
        Drop genes with fewer counts (``True`` means 1), :func:`scanpy.pp.filter_genes`.
    filter_cell_by_counts
        Drop cells with fewer counts (only when > 0), :func:`scanpy.pp.filter_cells`.
    normalize_total
        Target total per cell; ``True`` or an integer means the median total (as in the official
        code), ``None``/``False`` skips normalisation.
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
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy when ``copy=True``. Sets the layers named by the ``result_*_key``
    arguments of the steps that ran (and ``var['highly_variable']``); may subset ``adata``.
    """
    import scanpy as sc

    start = time.perf_counter()
    check_adata(adata, fn="preprocess")
    if copy:
        adata = adata.copy()
    else:
        actual_if_view(adata, fn="preprocess")
    added = []
    counts_key = layer
    if filter_gene_by_counts:  # on the counts (layer or X); official: True means 1
        counts = get_matrix(adata, counts_key)
        keep, _ = sc.pp.filter_genes(counts, min_counts=int(filter_gene_by_counts), inplace=False)
        adata._inplace_subset_var(keep)
        logger.info(f"    kept {adata.n_vars} genes with >= {int(filter_gene_by_counts)} counts")
    if (
        isinstance(filter_cell_by_counts, int)
        and not isinstance(filter_cell_by_counts, bool)
        and filter_cell_by_counts > 0
    ):
        keep, _ = sc.pp.filter_cells(get_matrix(adata, counts_key), min_counts=filter_cell_by_counts, inplace=False)
        adata._inplace_subset_obs(keep)
        logger.info(f"    kept {adata.n_obs} cells with >= {filter_cell_by_counts} counts")
    last = counts_key
    if normalize_total is not None and normalize_total is not False:
        target = float(normalize_total) if isinstance(normalize_total, float) else None  # official semantics
        get_matrix(adata, counts_key)  # clear error for a missing layer
        adata.layers[result_normed_key] = sc.pp.normalize_total(
            adata, target_sum=target, layer=counts_key, inplace=False
        )["X"]
        last = result_normed_key
        added.append(f"'{result_normed_key}', normalised values (adata.layers)")
    if log1p:
        src = get_matrix(adata, last)
        if _looks_logged(src):
            warnings.warn("The data look already log-transformed; applying log1p again.", UserWarning, stacklevel=2)
        if sp.issparse(src):
            logged = src.copy()
            np.log1p(logged.data, out=logged.data)
        else:
            logged = np.log1p(np.asarray(src, dtype=np.float32))
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
    log_added(start, "", added)
    return adata if copy else None


def _looks_logged(X) -> bool:
    """The official ``check_logged``: max <= 30, min >= 0 and smallest nonzero < 1."""
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    if not len(data):
        return False
    nz = data[data > 0]
    return bool(data.max() <= 30 and data.min() >= 0 and len(nz) and nz.min() < 1)
