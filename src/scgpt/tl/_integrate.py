"""``scgpt.tl.integrate``: batch integration with scGPT, fine-tuned with the official recipe or zero-shot."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .._anndata import check_key_added, missing_values, record, resolve_target, warn_overwrite
from .._docs import doc_params
from .._logging import logger
from ..data._genes import match_adata
from ..model import TASKS, CellRows, ScGPT, resolve_model, run_inference

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData


def _check_batches(adata: AnnData, batch_key: str | None, *, training: bool) -> pd.Series:
    if batch_key is None:
        raise ValueError("integrate needs `batch_key=`, the obs column holding each cell's batch (donor, run, ...).")
    if batch_key not in adata.obs:
        raise KeyError(f"batch_key={batch_key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}).")
    values = adata.obs[batch_key]
    missing = missing_values(values)
    if missing.any():
        first = adata.obs_names[np.flatnonzero(missing)[0]]
        raise ValueError(f"obs[{batch_key!r}] has {int(missing.sum())} cells without a batch (first: {first!r}).")
    counts = values.astype(str).value_counts()
    if not training:  # embedding with a model fine-tuned already: any batches, known or not
        return values
    if len(counts) < 2:
        raise ValueError(
            f"obs[{batch_key!r}] holds a single batch ({counts.index[0]!r}); there is nothing to integrate."
        )
    single = counts[counts < 2]
    if len(single):
        raise ValueError(
            f"obs[{batch_key!r}] has batches with a single cell ({list(single.index[:5])}); batch normalisation per "
            "batch needs at least two cells. Drop them or merge them into another batch."
        )
    return values


def _panel(adata: AnnData, model: ScGPT, *, n_top_genes: int | None, batch_key: str, layer, gene_key, use_aliases):
    """Columns of the genes to fine-tune on.

    The ``n_top_genes`` most variable (seurat_v3 on counts, per batch) among those the model knows, as the
    official integration tutorial (1,200 highly variable genes).
    """
    import scanpy as sc

    match = match_adata(adata, model.vocab, gene_key=gene_key, use_aliases=use_aliases, fn="integrate")
    known = np.flatnonzero(match.matched)
    if n_top_genes is None or n_top_genes >= len(known):
        return known
    view = adata[:, known]
    tmp = sc.AnnData(X=view.layers[layer] if layer else view.X, obs=adata.obs[[batch_key]].copy())
    tmp.var_names = adata.var_names[known]
    hvg = sc.pp.highly_variable_genes(
        tmp, n_top_genes=n_top_genes, flavor="seurat_v3", batch_key=batch_key, inplace=False
    )
    return known[np.flatnonzero(hvg["highly_variable"].to_numpy())]


@doc_params(
    model="""\
model
    A pretrained model (path, ``"demo"``, :class:`~scgpt.model.ScGPT`; ``None``: ``scgpt.settings.default_model``),
    fine-tuned here; or a model already fine-tuned with ``model.finetune("integration", ...)``, which is used as
    it is."""
)
def integrate(
    adata: AnnData | MuData,
    model: ScGPT | str | os.PathLike | None = None,
    *,
    batch_key: str | None = None,
    mode: Literal["finetune", "zero_shot"] = "finetune",
    n_top_genes: int | None = 1200,
    key_added: str = "X_scGPT_integrated",
    gene_key: str | None = None,
    use_aliases: bool = True,
    layer: str | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool | None = None,
    mod: str = "rna",
    copy: bool = False,
    **finetune_kwargs: Any,
) -> AnnData | MuData | None:
    """Integrate batches with scGPT: an embedding in which cells group by type, not by batch.

    - ``mode="finetune"`` (default): the official integration recipe (``scgpt.model.TASKS["integration"]``):
      the ``n_top_genes`` most variable genes with unexpressed genes included, masked-value prediction from
      tokens and from the cell embedding with explicit zero probabilities, elastic cell similarity (0.8,
      weight 10), an adversarial batch discriminator and domain-specific BatchNorm trained on per-batch
      minibatches; then the cell embeddings of the fine-tuned model. A model already fine-tuned for
      integration is used as it is (cells of batches it never saw get the average of the known batches'
      normalisation statistics, with a warning).
    - ``mode="zero_shot"``: the pretrained model's cell embeddings (:func:`scgpt.tl.embed`), no training —
      the baseline independent evaluations compare with.

    Parameters
    ----------
    adata
        Cells x genes with raw counts, or a MuData whose ``mod`` modality holds them.
    {model}
    batch_key
        ``obs`` column with each cell's batch (required).
    mode
        ``"finetune"`` or ``"zero_shot"``.
    n_top_genes
        Highly variable genes (among those the model knows) to fine-tune on (official: 1,200; ``None``: all).
    key_added
        ``obsm`` (and ``uns``) key written.
    {gene_key}
    {use_aliases}
    {layer}
    {batch_size}
    seed
        Seed of the fine-tuning (heads, split, order, masks) and of the tokenisation.
    {device}
    {dtype}
    {progress}
    mod
        Modality to integrate when ``adata`` is a MuData (its RNA).
    {copy}
    **finetune_kwargs
        Passed to :meth:`scgpt.model.ScGPT.finetune` (``max_epochs``, ``lr``, ``batch_size``, ``checkpoint_dir``, ...).

    Returns
    -------
    ``None``, or a copy when ``copy=True``. Sets

    ``adata.obsm[key_added]`` : :class:`numpy.ndarray` (n_obs, d_model), float32
        L2-normalised integrated cell embeddings (use with ``sc.pp.neighbors(adata, use_rep=key_added)``).
    ``adata.uns[key_added]`` : dict
        ``params``, the number of genes used (``n_genes``) and the batches.

    Examples
    --------
    >>> scgpt.tl.integrate(adata, "path/to/scGPT_human", batch_key="donor")  # doctest: +SKIP
    >>> tuned = model.finetune("integration", adata, batch_key="donor")  # doctest: +SKIP
    >>> scgpt.tl.integrate(new_cells, tuned, batch_key="donor")  # embeds with the fine-tuned model  # doctest: +SKIP
    """
    start = time.perf_counter()
    if mode not in ("finetune", "zero_shot"):
        raise ValueError(f"mode must be 'finetune' or 'zero_shot', got {mode!r}.")
    if type(adata).__name__ == "MuData" and mod != "rna":
        raise ValueError(
            f"mod={mod!r}: integrate embeds the RNA of a MuData; joint multi-omic models are not here yet."
        )
    target = resolve_target(adata, mod=mod, fn="integrate", copy=copy)
    cells = target.adata
    check_key_added(key_added, slot="obsm", fn="integrate")
    model_obj, model_name = resolve_model(model)
    batches = _check_batches(
        cells, batch_key, training=mode == "finetune" and model_obj.registry_.get("task") != "integration"
    )
    inference = {
        "gene_key": gene_key, "use_aliases": use_aliases, "layer": layer, "batch_size": batch_size, "seed": seed,
        "device": device, "dtype": dtype, "progress": progress,
    }  # fmt: skip
    tuned = model_obj
    if mode == "zero_shot":
        if finetune_kwargs:
            raise TypeError(f"mode='zero_shot' takes no training options: {sorted(finetune_kwargs)}")
        logger.info(f"embedding {cells.n_obs} cells zero-shot (no fine-tuning)")
        conditioned = model_obj.config.batch_conditioned
        res = run_inference(
            model_obj, cells, CellRows(normalize=True), batch_key=batch_key if conditioned else None,
            fn="integrate", **inference,
        )  # fmt: skip
    else:
        if model_obj.registry_.get("task") != "integration":
            panel = _panel(
                cells, model_obj, n_top_genes=n_top_genes, batch_key=batch_key, layer=layer, gene_key=gene_key,
                use_aliases=use_aliases,
            )  # fmt: skip
            logger.info(
                f"fine-tuning for integration on {cells.n_obs} cells, {len(panel)} genes, {batches.nunique()} batches"
            )
            tuned = model_obj.finetune(
                "integration", cells[:, panel], batch_key=batch_key, gene_key=gene_key, use_aliases=use_aliases,
                layer=layer, seed=seed, progress=progress, **finetune_kwargs,
            )  # fmt: skip
        elif finetune_kwargs:
            raise TypeError(
                f"The model is fine-tuned for integration already; training options: {sorted(finetune_kwargs)}"
            )
        recipe = TASKS["integration"].recipe
        res = run_inference(
            tuned, cells, CellRows(normalize=True), batch_key=batch_key, include_zero_genes=True, cls_value=0.0,
            max_length=int(tuned.registry_.get("last_recipe", {}).get("max_length", recipe.max_length)),
            tokens=tuned.registry_.get("tokens"), expect_counts=True, fn="integrate", **inference,
        )  # fmt: skip
    warn_overwrite(cells, "obsm", key_added, fn="integrate", copy=copy)
    added = target.write_obsm(key_added, res.output, "integrated cell embeddings")
    params = {
        "mode": mode,
        "model": model_name,
        "batch_key": batch_key,
        "n_top_genes": n_top_genes,
        "seed": seed,
        "finetune": {k: v for k, v in finetune_kwargs.items() if isinstance(v, int | float | str | bool)},
    }
    record(
        cells,
        key_added,
        params,
        start=start,
        added=added,
        n_genes=int(res.match.matched.sum()),
        batches=[str(b) for b in pd.unique(batches.astype(str))],
    )
    target.write_uns(key_added)
    return target.returned if copy else None
