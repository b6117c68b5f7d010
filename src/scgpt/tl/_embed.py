"""``scgpt.tl.embed``: zero-shot cell (and gene) embeddings from published scGPT weights."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .._docs import doc_params
from .._face import record, resolve_target, warn_overwrite
from .._logging import logger, named
from ..data import adata_counts_fraction, check_counts, counts_summary, describe_match
from ..model import ScGPT, resolve_model

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData


@doc_params(
    max_length="""\
max_length
    Tokens per cell including ``<cls>``; ``None``: 1,200 (the official default), or the fine-tuning length for a
    model fine-tuned for integration (which reads cells as in its fine-tuning). Cells expressing more genes keep a
    seeded random subset."""
)
@named()
def embed(
    adata: AnnData | MuData,
    model: ScGPT | str | os.PathLike | None = None,
    *,
    gene_key: str | None = None,
    use_aliases: bool = True,
    layer: str | None = None,
    batch_key: str | None = None,
    max_length: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool | None = None,
    organism: str = "human",
    orthologs: str = "one2one",
    devices: int | str | list[int] | None = None,
    num_nodes: int = 1,
    strategy: str | Any | None = None,
    key_added: str = "X_scGPT",
    genes: bool = False,
    mod: str = "rna",
    copy: bool = False,
) -> AnnData | MuData | None:
    """Zero-shot scGPT cell embeddings (and optionally gene embeddings).

    The official zero-shot path (``scgpt.tasks.embed_data``): raw counts, the nonzero genes of each
    cell that are in the model's vocabulary, per-cell value binning, ``<cls>`` first with value
    ``pad_value``, a random subset of genes above ``max_length``, and the ``<cls>`` output,
    L2-normalised. Unlike the official code, every random choice is seeded per cell, so a cell's
    tokens do not depend on ``batch_size``, on the other cells, or on their order, and its embedding
    agrees across them up to floating-point rounding (about 1e-7); cells are
    batched by length (little padding), read in chunks (backed AnnData are streamed) and run
    without gradients.

    Parameters
    ----------
    adata
        Cells x genes with raw counts (in memory, backed, a zarr store on disk, or a TileDB-SOMA experiment
        opened with :func:`scgpt.data.open_soma`), or a MuData whose ``mod`` modality holds them.
    {model}
    {gene_key}
    {use_aliases}
    {layer}
    {batch_key}
    {max_length}
    {batch_size}
    {seed}
    {device}
    {dtype}
    {progress}
    {organism}
    {distributed}
    key_added
        Key of the ``obsm`` (and ``varm``, ``uns``) entries written.
    genes
        Also write gene embeddings (the model's gene-token embeddings) to ``varm[key_added]``.
    mod
        Modality to embed when ``adata`` is a MuData.
    {copy}

    Returns
    -------
    ``None``, or a copy when ``copy=True``. Sets

    ``adata.obsm[key_added]`` : :class:`numpy.ndarray` (n_obs, d_model), float32
        L2-normalised cell embeddings.
    ``adata.varm[key_added]`` : :class:`numpy.ndarray` (n_vars, d_model), float32
        Gene embeddings (``genes=True``); NaN for genes outside the vocabulary.
    ``adata.uns[key_added]`` : dict
        ``params`` (with the provenance: ``scgpt_version``, ``model`` and ``weights_sha256``, the SHA-256 of
        the weights file), the vocabulary coverage (``n_genes_matched``, ``n_genes``), ``mean_tokens_per_cell`` and
        ``counts_fraction`` (``median``, ``p5``, ``min`` over cells of the share of a cell's counts in genes the
        model reads); for another species also ``orthologs_report`` (genes by orthology and by what became of
        them, see :func:`scgpt.pp.align_vocab`).

    For a MuData, the modality gets these fields, ``mdata.obsm[key_added]`` holds the cell
    embeddings aligned to ``mdata.obs_names`` (NaN for cells absent from the modality) and
    ``mdata.uns[key_added]`` the parameters.

    Examples
    --------
    >>> import scgpt
    >>> scgpt.tl.embed(adata, "path/to/scGPT_human")  # doctest: +SKIP
    >>> scgpt.tl.embed(mouse, "path/to/scGPT_human", organism="mouse")  # doctest: +SKIP
    >>> sc.pp.neighbors(adata, use_rep="X_scGPT")  # doctest: +SKIP
    """
    start = time.perf_counter()
    target = resolve_target(adata, mod=mod, copy=copy)
    cells = target.adata
    model_obj, model_name = resolve_model(model)
    logger.info(f"computing scGPT embeddings of {cells.n_obs} cells")
    res = model_obj.get_latent_representation(
        cells,
        gene_key=gene_key,
        use_aliases=use_aliases,
        layer=layer,
        batch_key=batch_key,
        max_length=max_length,
        batch_size=batch_size,
        seed=seed,
        device=device,
        dtype=dtype,
        progress=progress,
        organism=organism,
        orthologs=orthologs,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        return_info=True,
    )
    rep = res.match.report()
    counts = counts_summary(adata_counts_fraction(cells, res.match, layer=layer))
    for line in describe_match(rep, counts):
        logger.info(f"    {line}")
    check_counts(counts, res.match)
    warn_overwrite(cells, "obsm", key_added, copy=copy)
    added = target.write_obsm(key_added, res.output, "cell embeddings")
    if genes:
        gene_emb = np.full((cells.n_vars, model_obj.config.d_model), np.nan, dtype=np.float32)
        matched = res.match.matched
        tokens = model_obj.vocab.lookup_tokens(res.match.ids[matched])
        gene_emb[matched] = model_obj.get_gene_embeddings(tokens).to_numpy()
        cells.varm[key_added] = gene_emb
        added.append(f"'{key_added}', gene embeddings (adata.varm)")
    params = {
        **model_obj.provenance(model_name),  # scgpt_version, model, weights_sha256
        "gene_key": gene_key,
        "use_aliases": use_aliases,
        "layer": layer,
        "batch_key": batch_key,
        "max_length": max_length,
        "batch_size": batch_size,
        "seed": seed,
        "dtype": res.dtype,
        "genes": genes,
        "organism": res.match.organism,
        "orthologs": orthologs,
    }
    extra = {}
    if res.match.organism != "human":
        extra["orthologs_report"] = {k: rep[k] for k in ("orthology", "by_reason", "n_by_id", "n_summed")}
    record(
        cells,
        key_added,
        params,
        start=start,
        added=added,
        n_genes_matched=rep["n_matched"],
        n_genes=rep["n_genes"],
        mean_tokens_per_cell=float(res.n_tokens.mean()),
        counts_fraction=counts,
        **extra,
    )
    target.write_uns(key_added)
    return target.returned if copy else None
