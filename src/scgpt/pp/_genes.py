"""``scgpt.pp.align_vocab``: match the genes of an AnnData to the vocabulary of the model that will be used."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import pandas as pd

from .._docs import doc_params
from .._face import check_key_added, record, warn_overwrite, writable
from .._logging import logger, named
from .._settings import settings
from ..data import (
    GeneVocab,
    adata_counts_fraction,
    check_counts,
    counts_summary,
    default_vocab,
    describe_match,
    match_adata,
)
from ..model import ScGPT, resolve_model

if TYPE_CHECKING:
    from anndata import AnnData


def _vocabulary(model, vocab) -> tuple[GeneVocab, dict[str, str | None]]:
    """The vocabulary to match against, and how it was chosen (for ``params``)."""
    if model is not None and vocab is not None:
        raise ValueError("Pass either `model` or `vocab`, not both.")
    if vocab is not None:
        if isinstance(vocab, GeneVocab):
            return vocab, {"vocab": "custom"}
        return GeneVocab.from_file(os.path.expanduser(vocab)), {"vocab": str(vocab)}
    if model is None and settings.default_model is None:
        return default_vocab(), {"vocab": "default"}
    model_obj, name = resolve_model(model)
    return model_obj.vocab, {"model": name}


@doc_params(
    model="""\
model
    The model whose vocabulary is used: as in :func:`scgpt.tl.embed` (a path, ``"demo"``, an
    :class:`~scgpt.model.ScGPT`); ``None`` uses ``scgpt.settings.default_model`` when it is set, else the
    bundled whole-human vocabulary (that of the released scGPT models)."""
)
@named()
def align_vocab(
    adata: AnnData,
    model: ScGPT | str | os.PathLike | None = None,
    *,
    vocab: GeneVocab | str | os.PathLike | None = None,
    gene_key: str | None = None,
    organism: str | pd.DataFrame = "human",
    orthologs: str = "one2one",
    layer: str | None = None,
    key_added: str = "id_in_vocab",
    use_aliases: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Map genes to the vocabulary ids of a scGPT model and report the coverage.

    Genes are matched by exact token, then by Ensembl id, previous HGNC symbol or alias
    (``use_aliases``; bundled table from GENCODE v44 and Ensembl 100/HGNC, see
    ``scgpt/data/_resources/NOTICE.md``), exactly as :func:`scgpt.tl.embed` and the other tools match
    them, so the report tells how many genes the model will see and how much of each cell's counts.

    Genes of another species (``organism="mouse"``, ``"macaque"``, ``"pig"``, ...; see
    :data:`scgpt.data.ORGANISMS`) are read through their human orthologs (bundled tables: Ensembl Compara
    for mouse, macaque, cynomolgus and pig, NCBI HomoloGene for the others; no download): the species'
    symbols, or mouse Ensembl ids with or without version suffix, become the human gene of the vocabulary
    they are orthologous to. ``orthologs="one2one"`` (default) uses one-to-one orthologs only;
    ``orthologs="all"`` also gives a one-to-many gene's counts to one of its human genes (the one spelled
    like it, else the first alphabetically) and sums the counts of several genes with the same human
    ortholog (many-to-one) into its token. A wrong ``organism`` (the genes look like another species') is
    an error naming the likely species; human-gene coverage that looks like mouse data warns with the
    suggestion ``organism="mouse"``.

    Parameters
    ----------
    adata
        Annotated data matrix (counts in ``X`` or ``layer``, for the share of counts per cell).
    {model}
    vocab
        A :class:`~scgpt.data.GeneVocab` or a path to a ``vocab.json``, instead of a model.
    {gene_key}
    organism
        Species of the genes: ``"human"`` (default), or a species of :data:`scgpt.data.ORGANISMS` (by name
        or Latin name), or an ortholog table of one's own (a DataFrame with columns ``gene`` and ``human``).
    orthologs
        ``"one2one"``: one-to-one orthologs only; ``"all"``: also one-to-many and many-to-one (summed).
    layer
        Layer with counts; ``None`` uses ``adata.X``.
    key_added
        Name of the ``var`` column and ``uns`` entry written (and the prefix of the other columns).
    use_aliases
        Also match Ensembl ids, previous symbols and aliases (of the human genes).
    {copy}

    Returns
    -------
    ``None``, or a copy when ``copy=True``. Sets

    ``adata.var[key_added]`` : int64
        Vocabulary id of each gene, ``-1`` when unmatched.
    ``adata.var[key_added + "_human"]`` : str
        Another species only: the human gene (vocabulary token) each gene became, ``""`` for none.
    ``adata.var[key_added + "_reason"]`` : categorical
        Another species only: the orthology of each gene read (``one2one``, ``one2many``, ``many2one``,
        ``many2many``, `` (summed)`` appended when its counts are summed with other genes'), or why it is not
        read (``no ortholog``, ``one2many, not used`` ... with ``orthologs="one2one"``, ``not in vocabulary``,
        ``token taken``: another name of the same gene is read).
    ``adata.obs[key_added + "_fraction"]`` : float
        Share of each cell's counts in the genes the model reads (NaN for cells without counts).
    ``adata.uns[key_added]`` : dict
        ``n_matched``, ``n_genes``, ``coverage``, ``by_kind`` (counts per evidence), up to 10
        ``unmatched_examples``, ``counts_fraction`` (``median``, ``p5``, ``min`` of the per-cell share)
        and ``params``; for another species also ``organism``, ``orthologs``, ``orthology`` (genes by
        orthology: ``one2one``, ``one2many``, ``many2one``, ``many2many``, ``none``), ``by_reason``,
        ``n_by_id`` and ``n_summed``.

    Warns below 50 % of the genes (25 % for another species) and when the median cell has less than half
    of its counts in genes the model reads; raises when no gene matches or the genes are of another species
    than ``organism``.

    Examples
    --------
    >>> scgpt.pp.align_vocab(mouse_adata, "path/to/scGPT_human", organism="mouse")  # doctest: +SKIP
    >>> mouse_adata.uns["id_in_vocab"]["counts_fraction"]  # doctest: +SKIP
    """
    start = time.perf_counter()
    adata = writable(adata, copy=copy)
    check_key_added(key_added, reads=(gene_key,), slot="var")
    voc, source = _vocabulary(model, vocab)
    how = "" if isinstance(organism, str) and organism == "human" else f" through {_organism_name(organism)} orthologs"
    logger.info(f"matching genes to the scGPT vocabulary ({len(voc):,} tokens){how}")
    match = match_adata(
        adata, voc, gene_key=gene_key, use_aliases=use_aliases, organism=organism, orthologs=orthologs,
        )  # fmt: skip
    fraction = adata_counts_fraction(adata, match, layer=layer)
    counts = counts_summary(fraction)
    report = match.report()
    for line in describe_match(report, counts):
        logger.info(f"    {line}")
    check_counts(counts, match)
    warn_overwrite(adata, "var", key_added, copy=copy)
    adata.var[key_added] = match.ids
    added = [f"'{key_added}', vocabulary ids (adata.var)"]
    if match.organism != "human":
        for col, values, what in (
            (f"{key_added}_human", match.human.astype(str), "the human gene of each gene"),
            (f"{key_added}_reason", pd.Categorical(match.reason.astype(str)), "what became of each gene"),
        ):
            warn_overwrite(adata, "var", col, copy=copy)
            adata.var[col] = values
            added.append(f"'{col}', {what} (adata.var)")
    warn_overwrite(adata, "obs", f"{key_added}_fraction", copy=copy)
    adata.obs[f"{key_added}_fraction"] = fraction
    added.append(f"'{key_added}_fraction', share of each cell's counts the model reads (adata.obs)")
    params = {
        **source,
        "gene_key": gene_key,
        "use_aliases": use_aliases,
        "organism": _organism_name(organism),
        "orthologs": orthologs,
        "layer": layer,
    }
    record(adata, key_added, params, start=start, added=added, **report, counts_fraction=counts)
    return adata if copy else None


def _organism_name(organism: str | pd.DataFrame) -> str:
    """The species as recorded in ``params``: its registry name, or ``"custom table"``."""
    from ..data import resolve_organism

    return "custom table" if isinstance(organism, pd.DataFrame) else resolve_organism(organism)
