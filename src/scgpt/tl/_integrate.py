"""``scgpt.tl.integrate``: batch integration with scGPT, fine-tuned with the official recipe or zero-shot."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .._docs import doc_params
from .._face import check_key_added, provenance, record, resolve_target, warn_overwrite
from .._logging import logger, named
from ..data import GeneMatch, check_layer, match_adata, missing_values
from ..model import TASKS, ScGPT, modality_names, resolve_model, with_modalities
from ._hvg import check_n_top_genes, variable_genes

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData


def _check_batches(values: pd.Series, batch_key: str, *, training: bool, where: str = "obs") -> None:
    """Every cell has a batch; to train, at least two batches and none with a single cell."""
    missing = missing_values(values)
    if missing.any():
        first = values.index[np.flatnonzero(missing)[0]]
        raise ValueError(f"{where}[{batch_key!r}] has {int(missing.sum())} cells without a batch (first: {first!r}).")
    counts = values.astype(str).value_counts()
    if not training:  # embedding with a model fine-tuned already: any batches, known or not
        return
    if len(counts) < 2:
        raise ValueError(
            f"{where}[{batch_key!r}] holds a single batch ({counts.index[0]!r}); there is nothing to integrate."
        )
    single = counts[counts < 2]
    if len(single):
        raise ValueError(
            f"{where}[{batch_key!r}] has batches with a single cell ({list(single.index[:5])}); batch normalisation "
            "per batch needs at least two cells. Drop them or merge them into another batch."
        )


def _batch_column(adata: AnnData, batch_key: str | None) -> pd.Series:
    if batch_key is None:
        raise ValueError("integrate needs `batch_key=`, the obs column holding each cell's batch (donor, run, ...).")
    if batch_key not in adata.obs:
        raise KeyError(f"batch_key={batch_key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}).")
    return adata.obs[batch_key]


def _panel(
    adata: AnnData,
    model: ScGPT,
    *,
    n_top_genes: int | None,
    batches: pd.Series | None,
    layer: str | None,
    gene_key: str | None = None,
    use_aliases: bool = True,
    organism: str = "human",
    orthologs: str = "one2one",
    match: GeneMatch | None = None,
) -> np.ndarray:
    """Columns of the genes to fine-tune on.

    The ``n_top_genes`` most variable (seurat_v3 on counts, per batch) among those the model knows, as the
    official integration tutorial (1,200 highly variable genes).
    """
    if match is None:
        match = match_adata(
            adata, model.vocab, gene_key=gene_key, use_aliases=use_aliases, organism=organism, orthologs=orthologs,
            )  # fmt: skip
    known = np.flatnonzero(match.matched)
    if n_top_genes is None or n_top_genes >= len(known):
        return known
    view = adata[:, known]
    return known[variable_genes(view.layers[layer] if layer else view.X, n_top_genes, batches)]


@doc_params(
    model="""\
model
    A pretrained model (path, ``"demo"``, :class:`~scgpt.model.ScGPT`; ``None``: ``scgpt.settings.default_model``),
    fine-tuned here; or a model already fine-tuned with ``model.finetune("integration", ...)``, which is used as
    it is. An :class:`~scgpt.model.ScGPT` object is fine-tuned in place (the caller keeps the fine-tuned model,
    to save it or to embed new cells with ``integrate(new, model, ...)`` without training again); a model given
    by name or path is loaded and its fine-tuned copy discarded."""
)
@named()
def integrate(
    adata: AnnData | MuData,
    model: ScGPT | str | os.PathLike | None = None,
    *,
    batch_key: str | None = None,
    modalities: Sequence[str] | None = None,
    mode: Literal["finetune", "zero_shot"] = "finetune",
    n_top_genes: int | None = 1200,
    binary: Sequence[str] | None = None,
    max_length: int | None = None,
    key_added: str = "X_scGPT_integrated",
    gene_key: str | None = None,
    use_aliases: bool = True,
    organism: str = "human",
    orthologs: str = "one2one",
    layer: str | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool | None = None,
    mod: str = "rna",
    copy: bool = False,
    **finetune_kwargs: Any,
) -> AnnData | MuData | None:
    """Integrate batches (AnnData) or modalities (MuData) with scGPT: cells group by type, not by batch.

    - ``mode="finetune"`` (default): the official integration recipe (``scgpt.model.TASKS["integration"]``):
      the ``n_top_genes`` most variable genes with unexpressed genes included, masked-value prediction from
      tokens and from the cell embedding with explicit zero probabilities, elastic cell similarity (0.8,
      weight 10), an adversarial batch discriminator and domain-specific BatchNorm trained on per-batch
      minibatches; then the cell embeddings of the fine-tuned model. A model already fine-tuned for
      integration is used as it is (cells of batches it never saw get the average of the known batches'
      normalisation statistics, with a warning).
    - ``mode="zero_shot"``: the pretrained model's cell embeddings (:func:`scgpt.tl.embed`), no training —
      the baseline independent evaluations compare with.
    - MuData with ``modalities=("rna", "prot")`` (any names the MuData uses; RNA first): a joint embedding
      (``TASKS["multiomic"]``, the official multi-omic recipe). The features of the other modalities become
      new tokens named ``"<modality>:<feature>"`` (so the protein ``CD4`` and the gene ``CD4`` stay distinct)
      with a modality id, appended to the pretrained vocabulary; values are binned per modality; chromatin
      peaks are binarised and the most variable kept within the token budget (``max_length``). The model is
      fine-tuned (masked-value prediction from tokens and cell embedding; with ``batch_key``, batch labels
      join the decoders and an adversarial discriminator removes batch from the cell embedding) and the
      joint embedding is written to ``mdata.obsm[key_added]``; the modalities are left untouched. Every cell
      must be measured in every modality. Unlike the official tutorial, which trains a new transformer from
      the pretrained gene embeddings, the whole pretrained model is fine-tuned.

    Parameters
    ----------
    adata
        Cells x genes with raw counts, or a MuData whose ``mod`` modality holds them.
    {model}
    batch_key
        ``obs`` column with each cell's batch (required for AnnData, except zero-shot with a model that is not
        batch-conditioned, which does not use it). For a MuData, a column of ``mdata.obs``
        or ``"<modality>:<column>"`` (read from that modality's ``obs``); optional.
    modalities
        MuData modalities to embed jointly, RNA first (``None``: batch integration of the RNA, ``mod``).
    mode
        ``"finetune"`` or ``"zero_shot"``.
    n_top_genes
        Highly variable genes (among those the model knows) to fine-tune on (official: 1,200; ``None``: all).
    binary
        Modalities whose values are binarised (default: those named ``atac``/``peaks`` or whose
        ``var['feature_types']`` are ``"Peaks"``).
    max_length
        Tokens per cell including ``<cls>`` (default: every gene of the panel plus ``<cls>`` when fine-tuning, 1,200
        zero-shot; multi-omic: at most 1,601, i.e. 1,200 genes plus 400 features of the other modalities).
    key_added
        ``obsm`` (and ``uns``) key written.
    {gene_key}
    {use_aliases}
    {organism}
    layer
        Layer with raw counts (of the RNA modality for a MuData; the other modalities are read from ``X``);
        ``None`` uses ``X``.
    batch_size
        Cells per fine-tuning minibatch (default: the task's, 64 for integration, 32 multi-omic); embedding
        runs in minibatches of 64.
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

    For a MuData with ``modalities``: ``mdata.obsm[key_added]`` (the joint embedding) and
    ``mdata.uns[key_added]`` (``params``, ``n_features`` per modality, ``batches``).

    Examples
    --------
    >>> scgpt.tl.integrate(adata, "path/to/scGPT_human", batch_key="donor")  # doctest: +SKIP
    >>> model = scgpt.model.ScGPT.from_pretrained("path/to/scGPT_human")  # doctest: +SKIP
    >>> scgpt.tl.integrate(adata, model, batch_key="donor")  # model is now fine-tuned  # doctest: +SKIP
    >>> scgpt.tl.integrate(new_cells, model, batch_key="donor")  # embeds with it, no training  # doctest: +SKIP
    >>> scgpt.tl.integrate(mdata, "demo", modalities=("rna", "prot"), batch_key="run")  # doctest: +SKIP
    """
    start = time.perf_counter()
    if mode not in ("finetune", "zero_shot"):
        raise ValueError(f"mode must be 'finetune' or 'zero_shot', got {mode!r}.")
    is_mudata = type(adata).__name__ == "MuData"
    if modalities is not None:
        if not is_mudata:
            raise TypeError(f"modalities={modalities!r} needs a MuData; got {type(adata).__name__}.")
        return _integrate_modalities(
            adata, model, modalities=modalities, batch_key=batch_key, mode=mode, n_top_genes=n_top_genes,
            binary=binary, max_length=max_length, key_added=key_added, gene_key=gene_key, use_aliases=use_aliases,
            organism=organism, orthologs=orthologs,
            layer=layer, batch_size=batch_size, seed=seed, device=device, dtype=dtype, progress=progress, copy=copy,
            start=start, finetune_kwargs=finetune_kwargs, inplace=isinstance(model, ScGPT),
        )  # fmt: skip
    target = resolve_target(adata, mod=mod, copy=copy)
    cells = target.adata
    check_key_added(key_added, slot="obsm")
    check_layer(cells, layer)
    check_n_top_genes(n_top_genes)
    model_obj, model_name = resolve_model(model)
    prov = provenance(model_obj, model_name)  # before a fine-tuning in place changes the object
    uses_batches = mode != "zero_shot" or model_obj.config.batch_conditioned  # zero-shot: only to condition on
    batches = _batch_column(cells, batch_key) if uses_batches or batch_key is not None else None
    if batches is not None:
        _check_batches(
            batches, batch_key, training=mode == "finetune" and model_obj.registry_.get("task") != "integration"
        )
    inference = {
        "gene_key": gene_key, "use_aliases": use_aliases, "layer": layer, "batch_size": 64, "seed": seed,
        "device": device, "dtype": dtype, "progress": progress, "max_length": max_length, "organism": organism,
        "orthologs": orthologs,
    }  # fmt: skip
    training = dict(finetune_kwargs)  # batch_size alone is harmless without training
    if batch_size is not None:
        finetune_kwargs["batch_size"] = batch_size
    tuned = model_obj
    if mode == "zero_shot":
        if training:
            raise TypeError(f"mode='zero_shot' takes no training options: {sorted(training)}")
        logger.info(f"embedding {cells.n_obs} cells zero-shot (no fine-tuning)")
        conditioned = model_obj.config.batch_conditioned
        res = model_obj.get_latent_representation(
            cells, batch_key=batch_key if conditioned else None, return_info=True, **inference
        )
    else:
        if model_obj.registry_.get("task") != "integration":
            panel = _panel(
                cells, model_obj, n_top_genes=n_top_genes, batches=batches, layer=layer, gene_key=gene_key,
                use_aliases=use_aliases, organism=organism, orthologs=orthologs,
            )  # fmt: skip
            logger.info(
                f"fine-tuning for integration on {cells.n_obs} cells, {len(panel)} genes, {batches.nunique()} batches"
            )
            tuned = model_obj.finetune(
                "integration", cells[:, panel], batch_key=batch_key, gene_key=gene_key, use_aliases=use_aliases,
                organism=organism, orthologs=orthologs, layer=layer, seed=seed, progress=progress,
                max_length=max_length or len(panel) + 1, inplace=isinstance(model, ScGPT), **finetune_kwargs,
            )  # fmt: skip
            _kept(model, tuned)
        elif training:
            raise TypeError(f"The model is fine-tuned for integration already; training options: {sorted(training)}")
        res = tuned.get_latent_representation(cells, batch_key=batch_key, return_info=True, **inference)
    warn_overwrite(cells, "obsm", key_added, copy=copy)
    what = "zero-shot cell embeddings (not fine-tuned)" if mode == "zero_shot" else "integrated cell embeddings"
    added = target.write_obsm(key_added, res.output, what)
    params = {
        "mode": mode,
        **prov,
        "batch_key": batch_key,
        "n_top_genes": n_top_genes,
        "organism": organism,
        "orthologs": orthologs,
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
        batches=[] if batches is None else [str(b) for b in pd.unique(batches.astype(str))],
    )
    target.write_uns(key_added)
    return target.returned if copy else None


def _integrate_modalities(
    mdata: MuData,
    model: ScGPT | str | os.PathLike | None,
    *,
    modalities: Sequence[str],
    batch_key: str | None,
    mode: str,
    n_top_genes: int | None,
    binary: Sequence[str] | None,
    max_length: int | None,
    key_added: str,
    gene_key: str | None,
    use_aliases: bool,
    organism: str,
    orthologs: str,
    layer: str | None,
    batch_size: int | None,
    seed: int,
    device: str | None,
    dtype: str | None,
    progress: bool | None,
    copy: bool,
    inplace: bool,
    start: float,
    finetune_kwargs: dict[str, Any],
) -> MuData | None:
    """The joint multi-omic embedding of a MuData (see :func:`integrate`)."""
    training = dict(finetune_kwargs)
    if batch_size is not None:
        finetune_kwargs["batch_size"] = batch_size
    from ._multiomic import batch_values, check_modalities, is_binary_modality, joint_cells

    if mode != "finetune":
        raise ValueError(
            "A joint embedding needs a model fine-tuned on the modalities (mode='finetune'); for a zero-shot "
            "embedding of the RNA, leave modalities=None (mod='rna')."
        )
    mods = check_modalities(mdata, modalities)
    check_key_added(key_added, slot="obsm")
    check_layer(mdata.mod[mods[0]], layer)
    check_n_top_genes(n_top_genes)
    model_obj, model_name = resolve_model(model)
    prov = provenance(model_obj, model_name)  # before a fine-tuning in place changes the object
    tuned_already = model_obj.registry_.get("task") == "multiomic"
    if tuned_already:
        _check_tuned_modalities(model_obj, mods, batch_key)
    obs = pd.DataFrame(index=mdata.obs_names)
    batches = None
    if batch_key is not None:
        batches = batch_values(mdata, batch_key)
        _check_batches(batches, batch_key, training=not tuned_already, where="mdata.obs")
        obs["batch"] = np.asarray(batches.astype(str))
    if binary is None:
        binary = [m for m in mods[1:] if is_binary_modality(m, mdata.mod[m])]
    options = {
        "gene_key": gene_key, "use_aliases": use_aliases, "layer": layer, "obs": obs, "binary": binary,
        "organism": organism, "orthologs": orthologs,
    }  # fmt: skip
    if tuned_already:
        if training:
            raise TypeError(f"The model is fine-tuned for 'multiomic' already; options {sorted(training)}")
        tuned = model_obj
        length = max_length or int(tuned.registry_.get("last_recipe", {}).get("max_length", 1601))
        joint, features = joint_cells(
            mdata, tuned, mods, tokens=tuned.registry_["tokens"], rna_panel=None, max_length=length, **options
        )
    else:
        length = max_length or TASKS["multiomic"].recipe.max_length
        rna = mdata.mod[mods[0]]
        rna_batches = None if batches is None else batches.reindex(rna.obs_names)
        match = match_adata(
            rna, model_obj.vocab, gene_key=gene_key, use_aliases=use_aliases, organism=organism, orthologs=orthologs,
            )  # fmt: skip
        panel = _panel(rna, model_obj, n_top_genes=n_top_genes, batches=rna_batches, layer=layer, match=match)
        joint, features = joint_cells(
            mdata, model_obj, mods, tokens=None, rna_panel=panel, max_length=length, match=match, **options
        )
        length = joint.n_vars + 1
        multi = with_modalities(model_obj, features, first=mods[0], binary=binary, seed=seed)
        logger.info(
            f"fine-tuning a multi-omic model on {joint.n_obs} cells: {joint.n_vars - sum(map(len, features.values()))} "
            f"{mods[0]} genes + " + ", ".join(f"{len(v)} {m} features" for m, v in features.items())
        )
        tuned = multi.finetune(
            "multiomic", joint, batch_key="batch" if batches is not None else None, use_aliases=False,
            max_length=length, seed=seed, progress=progress, **finetune_kwargs,
        )  # fmt: skip
        if batches is not None:
            tuned.registry_["batch_key"] = batch_key
        if inplace:
            model_obj._become(tuned)
            tuned = model_obj
        _kept(model, tuned)
    res = tuned.get_latent_representation(
        joint, batch_key="batch" if tuned.config.batch_conditioned else None, max_length=length, use_aliases=False,
        batch_size=64, seed=seed, device=device, dtype=dtype, progress=progress, return_info=True,
    )  # fmt: skip
    out = mdata.copy() if copy else mdata
    warn_overwrite(out, "obsm", key_added, copy=copy)
    out.obsm[key_added] = res.output
    params = {
        "mode": mode,
        **prov,
        "modalities": mods,
        "batch_key": batch_key,
        "n_top_genes": n_top_genes,
        "binary": list(binary),
        "organism": organism,
        "orthologs": orthologs,
        "seed": seed,
        "finetune": {k: v for k, v in finetune_kwargs.items() if isinstance(v, int | float | str | bool)},
    }
    n_features = {mods[0]: joint.n_vars - sum(map(len, features.values())), **{m: len(v) for m, v in features.items()}}
    record(
        out, key_added, params, start=start, added=[f"'{key_added}', joint cell embeddings (mdata.obsm)"],
        n_features=n_features, batches=[] if batches is None else [str(b) for b in pd.unique(batches.astype(str))],
    )  # fmt: skip
    return out if copy else None


def _check_tuned_modalities(model: ScGPT, mods: list[str], batch_key: str | None) -> None:
    """A model fine-tuned on modalities embeds the same modalities (RNA first), with batches if it was trained so."""
    known = modality_names(model)
    if mods[0] != known[0] or set(mods) - set(known):
        raise ValueError(f"The model was fine-tuned on modalities {known}; got {mods}.")
    tuned_batch = model.registry_.get("batch_key")
    if tuned_batch is not None and batch_key is None:
        raise ValueError(
            f"The model was fine-tuned with batch_key={tuned_batch!r} (batch labels join its decoders): pass "
            "batch_key= with each cell's batch."
        )


def _kept(model: ScGPT | str | os.PathLike | None, tuned: ScGPT) -> None:
    """Say where the fine-tuned model is: in the caller's object, or nowhere (loaded by name)."""
    if isinstance(model, ScGPT):
        logger.info("    the ScGPT object passed as `model` is now the fine-tuned model (save it with model.save)")
    else:
        logger.info(
            "    the fine-tuned model is not kept: pass an ScGPT object as `model` (scgpt.model.ScGPT.from_pretrained)"
            " to keep it, or fine-tune with model.finetune"
        )
