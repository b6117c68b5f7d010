"""``scgpt.tl.embed``: zero-shot cell (and gene) embeddings from published scGPT weights."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._anndata import actual_if_view, check_adata, check_values, get_matrix, iter_row_chunks, looks_like_counts
from .._logging import log_added, logger
from .._settings import settings
from ..model import ScGPT, resolve_device, resolve_dtype
from ..model._embed import embed_chunks, inference_net
from ..pp._genes import GeneMatch, check_coverage, gene_names, match_genes
from ._models import resolve_model

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData


@dataclass
class EmbeddingResult:
    """Cell embeddings with what was used to compute them."""

    embeddings: np.ndarray
    n_tokens: np.ndarray
    match: GeneMatch
    dtype: str


def _chunk_size(batch_size: int) -> int:
    return max(2048, 16 * batch_size)


def batch_label_codes(model: ScGPT, adata: AnnData, batch_key: str | None) -> np.ndarray | None:
    """Integer batch labels for models conditioned on batches, with the categories the model was trained on."""
    c = model.config
    if not (c.use_batch_labels or c.batch_norm == "dsbn"):
        if batch_key is not None:
            warnings.warn("batch_key is ignored: this model is not conditioned on batches.", UserWarning, stacklevel=3)
        return None
    if batch_key is None:
        raise ValueError(
            f"This model is conditioned on {c.n_batch_labels} batches (batch encoder or DSBN); pass `batch_key=`, "
            "the obs column holding each cell's batch."
        )
    if batch_key not in adata.obs:
        raise KeyError(f"batch_key={batch_key!r} is not a column of adata.obs.")
    known = model.registry_.get("batch_categories")
    values = adata.obs[batch_key].astype(str).to_numpy()
    if known is None:
        known = sorted(set(values))
    codes = pd.Index(known).get_indexer(values).astype(np.int64)
    if (codes < 0).any():
        unknown = sorted(set(values[codes < 0]))
        raise ValueError(f"Batches {unknown[:5]} were not seen by the model (known: {list(known)[:10]}).")
    if codes.max(initial=0) >= c.n_batch_labels:
        raise ValueError(f"batch_key={batch_key!r} has more batches than the {c.n_batch_labels} the model knows.")
    return codes


def compute_embeddings(
    model: ScGPT,
    adata: AnnData,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    batch_key: str | None = None,
    max_length: int = 1200,
    batch_size: int = 64,
    seed: int = 0,
    device=None,
    dtype: str | None = None,
    progress: bool | None = None,
    use_aliases: bool = True,
    fn: str = "embed",
    **engine: Any,
) -> EmbeddingResult:
    """Validated zero-shot embedding of an AnnData (in memory or backed) with a loaded model.

    ``engine`` options go to :func:`scgpt.model._embed.embed_chunks` (``cls_value``, ``head``,
    ``out_dim``, ``normalize``) to compute other per-cell outputs, e.g. classifier logits.
    """
    check_adata(adata, fn=fn)
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (<cls> and one gene), got {max_length}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    get_matrix(adata, layer)
    match = match_genes(gene_names(adata, gene_key), model.vocab, use_aliases=use_aliases)
    check_coverage(match, fn=fn)
    keys = np.zeros(adata.n_vars, dtype=np.uint64)
    keys[match.matched] = model.vocab.gene_keys()[match.ids[match.matched]]
    labels = batch_label_codes(model, adata, batch_key)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    net = inference_net(model.net, dev, dt)
    chunks = iter_row_chunks(adata, layer, _chunk_size(batch_size))
    what = f"layer {layer!r}" if layer else "adata.X"

    def checked(chunks):
        first = True
        for start, X in chunks:
            check_values(X, what=what, start=start)
            if first and not looks_like_counts(X):
                warnings.warn(
                    "The expression values do not look like raw counts; scGPT's zero-shot embedding expects raw "
                    "counts (pass `layer=` if counts are in a layer). Results from normalised values differ only by "
                    "binning ties, but scaled or centred values cannot be used.",
                    UserWarning,
                    stacklevel=4,
                )
            first = False
            yield start, X

    was_training = model.net.training
    try:
        emb, n_tokens = embed_chunks(
            net,
            checked(chunks),
            adata.n_obs,
            match.ids,
            keys,
            cls_id=model.vocab.cls_id,
            pad_id=model.vocab.pad_id,
            max_length=max_length,
            batch_size=batch_size,
            n_bins=int(model.args_.get("n_bins", 51)),
            seed=seed,
            device=dev,
            dtype=dt,
            batch_labels=labels,
            progress=settings.progress if progress is None else progress,
            **engine,
        )
    finally:
        model.net.train(was_training)
    n_empty = int((n_tokens == 1).sum())
    if n_empty:
        warnings.warn(
            f"{n_empty} cells express none of the model's genes; they are embedded from <cls> alone (all such cells "
            "get the same embedding).",
            UserWarning,
            stacklevel=3,
        )
    return EmbeddingResult(emb, n_tokens, match, str(dt).replace("torch.", ""))


def embed(
    adata: AnnData | MuData,
    model: ScGPT | str | os.PathLike | None = None,
    *,
    gene_key: str | None = None,
    use_aliases: bool = True,
    layer: str | None = None,
    batch_key: str | None = None,
    max_length: int = 1200,
    batch_size: int = 64,
    key_added: str = "X_scGPT",
    genes: bool = False,
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    mod: str = "rna",
    progress: bool | None = None,
    copy: bool = False,
) -> AnnData | MuData | None:
    """Zero-shot scGPT cell embeddings (and optionally gene embeddings).

    The official zero-shot path (``scgpt.tasks.embed_data``): raw counts, the nonzero genes of each
    cell that are in the model's vocabulary, per-cell value binning, ``<cls>`` first with value
    ``pad_value``, a random subset of genes above ``max_length``, and the ``<cls>`` output,
    L2-normalised. Unlike the official code, every random choice is seeded per cell, so a cell's
    embedding does not depend on ``batch_size``, on the other cells, or on their order; cells are
    batched by length (little padding), read in chunks (backed AnnData are streamed) and run
    without gradients.

    Parameters
    ----------
    adata
        Cells x genes with raw counts (in memory or backed), or a MuData whose ``mod`` modality holds them.
    model
        Path to an official scGPT folder (e.g. ``scGPT_human``), a folder written by
        :meth:`scgpt.model.ScGPT.save`, ``"demo"``, an :class:`~scgpt.model.ScGPT`, or ``None`` for
        ``scgpt.settings.default_model`` (``SCGPT_MODEL`` environment variable).
    gene_key
        ``var`` column with gene names (symbols or Ensembl ids); ``None`` uses ``var_names``.
    use_aliases
        Also match genes by Ensembl id, previous symbol or alias (see :func:`scgpt.pp.align_vocab`).
        ``False`` matches names exactly, as the official code does (same genes, same numbers).
    layer
        Layer with raw counts; ``None`` uses ``adata.X``.
    batch_key
        ``obs`` column with batches, only for models conditioned on batches (e.g. fine-tuned for integration).
    max_length
        Tokens per cell including ``<cls>`` (official default 1200). Cells expressing more genes keep
        a seeded random subset.
    batch_size
        Cells per forward pass, an upper bound (on CPU fewer are used per pass when cells are long);
        results do not depend on it.
    key_added
        Key of the ``obsm`` (and ``varm``, ``uns``) entries written.
    genes
        Also write gene embeddings (the model's gene-token embeddings) to ``varm[key_added]``.
    seed
        Seed of the binning tie-break and of gene sampling.
    device
        ``"cuda"``, ``"mps"`` or ``"cpu"``; ``None`` picks the best available.
    dtype
        ``None``/``"float32"`` reproduces the official numbers; ``"bfloat16"`` is faster (per-cell
        cosine to float32 ≥ 0.999); ``"float16"`` on GPU.
    mod
        Modality to embed when ``adata`` is a MuData.
    progress
        Show a progress bar (default: ``scgpt.settings.progress``).
    copy
        Return a copy with the results instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy when ``copy=True``. Sets

    ``adata.obsm[key_added]`` : :class:`numpy.ndarray` (n_obs, d_model), float32
        L2-normalised cell embeddings.
    ``adata.varm[key_added]`` : :class:`numpy.ndarray` (n_vars, d_model), float32
        Gene embeddings (``genes=True``); NaN for genes outside the vocabulary.
    ``adata.uns[key_added]`` : dict
        ``params`` and the vocabulary coverage (``n_genes_matched``, ``n_genes``).

    For a MuData, the modality gets these fields and ``mdata.obsm[key_added]`` holds the cell
    embeddings aligned to ``mdata.obs_names`` (NaN for cells absent from the modality).

    Examples
    --------
    >>> import scgpt
    >>> scgpt.tl.embed(adata, "path/to/scGPT_human")  # doctest: +SKIP
    >>> sc.pp.neighbors(adata, use_rep="X_scGPT")  # doctest: +SKIP
    """
    from anndata import AnnData

    start = time.perf_counter()
    mdata = None
    if type(adata).__name__ == "MuData":  # avoid importing mudata for AnnData input
        mdata = adata.copy() if copy else adata
        if mod not in mdata.mod:
            raise KeyError(f"mod={mod!r} is not a modality of the MuData (modalities: {list(mdata.mod)}).")
        target = mdata.mod[mod]
    else:
        if not isinstance(adata, AnnData):
            raise TypeError(f"embed expects an AnnData or MuData, got {type(adata).__name__}.")
        target = adata.copy() if copy else adata
    check_adata(target, fn="embed")
    if not copy:
        actual_if_view(target, fn="embed")
    model_obj, model_name = resolve_model(model)
    logger.info(f"computing scGPT embeddings of {target.n_obs} cells")
    res = compute_embeddings(
        model_obj,
        target,
        layer=layer,
        gene_key=gene_key,
        batch_key=batch_key,
        max_length=max_length,
        batch_size=batch_size,
        seed=seed,
        device=device,
        dtype=dtype,
        progress=progress,
        use_aliases=use_aliases,
    )
    target.obsm[key_added] = res.embeddings
    added = [f"'{key_added}', cell embeddings (adata.obsm)"]
    if genes:
        gene_emb = np.full((target.n_vars, model_obj.config.d_model), np.nan, dtype=np.float32)
        matched = res.match.matched
        tokens = model_obj.vocab.lookup_tokens(res.match.ids[matched])
        gene_emb[matched] = model_obj.get_gene_embeddings(tokens).to_numpy()
        target.varm[key_added] = gene_emb
        added.append(f"'{key_added}', gene embeddings (adata.varm)")
    rep = res.match.report()
    target.uns[key_added] = {
        "params": {
            "model": model_name,
            "gene_key": gene_key,
            "use_aliases": use_aliases,
            "layer": layer,
            "batch_key": batch_key,
            "max_length": max_length,
            "batch_size": batch_size,
            "seed": seed,
            "dtype": res.dtype,
            "genes": genes,
        },
        "n_genes_matched": rep["n_matched"],
        "n_genes": rep["n_genes"],
        "mean_tokens_per_cell": float(res.n_tokens.mean()),
    }
    added.append(f"'{key_added}', parameters (adata.uns)")
    if mdata is not None:
        full = np.full((mdata.n_obs, res.embeddings.shape[1]), np.nan, dtype=np.float32)
        pos = mdata.obs_names.get_indexer(target.obs_names)
        full[pos[pos >= 0]] = res.embeddings[pos >= 0]
        mdata.obsm[key_added] = full
        mdata.uns[key_added] = target.uns[key_added]
        added.append(f"'{key_added}', cell embeddings aligned to mdata.obs (mdata.obsm)")
    log_added(start, "", added)
    if copy:
        return mdata if mdata is not None else target
    return None
