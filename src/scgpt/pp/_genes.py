"""``scgpt.pp.align_vocab``: match the genes of an AnnData to the vocabulary of the model that will be used."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from .._anndata import check_key_added, record, warn_overwrite, writable
from .._docs import doc_params
from .._logging import logger
from .._settings import settings
from ..data import GeneVocab, default_vocab, match_adata
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
def align_vocab(
    adata: AnnData,
    model: ScGPT | str | os.PathLike | None = None,
    *,
    vocab: GeneVocab | str | os.PathLike | None = None,
    gene_key: str | None = None,
    key_added: str = "id_in_vocab",
    use_aliases: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Map genes to the vocabulary ids of a scGPT model and report the coverage.

    Genes are matched by exact token, then by Ensembl id, previous HGNC symbol or alias
    (``use_aliases``; bundled table from GENCODE v44 and Ensembl 100/HGNC, see
    ``scgpt/data/_resources/NOTICE.md``), exactly as :func:`scgpt.tl.embed` and the other tools match
    them, so the report tells how many genes the model will see.

    Parameters
    ----------
    adata
        Annotated data matrix.
    {model}
    vocab
        A :class:`~scgpt.data.GeneVocab` or a path to a ``vocab.json``, instead of a model.
    {gene_key}
    key_added
        Name of the ``var`` column and ``uns`` entry written.
    use_aliases
        Also match Ensembl ids, previous symbols and aliases.
    {copy}

    Returns
    -------
    ``None``, or a copy when ``copy=True``. Sets

    ``adata.var[key_added]`` : int64
        Vocabulary id of each gene, ``-1`` when unmatched.
    ``adata.uns[key_added]`` : dict
        ``n_matched``, ``n_genes``, ``coverage``, ``by_kind`` (counts per evidence), up to 10
        ``unmatched_examples`` and ``params``.

    Warns below 50 % coverage; raises when no gene matches.
    """
    start = time.perf_counter()
    adata = writable(adata, fn="align_vocab", copy=copy)
    check_key_added(key_added, reads=(gene_key,), slot="var", fn="align_vocab")
    voc, source = _vocabulary(model, vocab)
    logger.info(f"matching genes to the scGPT vocabulary ({len(voc):,} tokens)")
    match = match_adata(adata, voc, gene_key=gene_key, use_aliases=use_aliases, fn="align_vocab")
    warn_overwrite(adata, "var", key_added, fn="align_vocab", copy=copy)
    adata.var[key_added] = match.ids
    report = match.report()
    logger.info(f"    {report['n_matched']} of {report['n_genes']} genes matched ({report['coverage']:.1%})")
    params = {**source, "gene_key": gene_key, "use_aliases": use_aliases}
    record(adata, key_added, params, start=start, added=[f"'{key_added}', vocabulary ids (adata.var)"], **report)
    return adata if copy else None
