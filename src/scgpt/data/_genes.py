"""Match genes of an AnnData to a scGPT vocabulary: symbols, Ensembl ids, previous and alias symbols."""

from __future__ import annotations

import gzip
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._anndata import check_adata
from .._logging import log_added, logger
from ..data import GeneVocab

if TYPE_CHECKING:
    from anndata import AnnData

_KINDS = ("symbol", "ensembl", "previous", "alias")


@lru_cache(maxsize=1)
def _alias_table() -> dict[str, tuple[str, str]]:
    """Bundled map name -> (census token, kind), built by ``scripts/build_gene_aliases.py``."""
    ref = resources.files("scgpt.data").joinpath("_resources/gene_aliases.tsv.gz")
    with ref.open("rb") as raw, gzip.open(raw, "rt") as f:
        df = pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False)
    return dict(zip(df["name"], zip(df["token"], df["kind"])))


@lru_cache(maxsize=4)
def default_vocab() -> GeneVocab:
    """The bundled whole-human vocabulary (cached)."""
    return GeneVocab.default()


@dataclass
class GeneMatch:
    """Result of matching gene names to a vocabulary."""

    ids: np.ndarray  # (n_genes,) int64, -1 where unmatched
    kinds: np.ndarray  # (n_genes,) object: "symbol" | "ensembl" | "previous" | "alias" | "" (unmatched)
    names: np.ndarray  # the names that were matched

    @property
    def matched(self) -> np.ndarray:
        """Boolean mask of matched genes."""
        return self.ids >= 0

    def report(self, n_examples: int = 10) -> dict:
        """Coverage summary (JSON-friendly)."""
        n = len(self.ids)
        k = int(self.matched.sum())
        return {
            "n_matched": k,
            "n_genes": n,
            "coverage": k / n if n else 0.0,
            "by_kind": {kind: int((self.kinds == kind).sum()) for kind in _KINDS},
            "unmatched_examples": [str(x) for x in self.names[~self.matched][:n_examples]],
        }


def match_genes(names: pd.Index | np.ndarray | list, vocab: GeneVocab, *, use_aliases: bool = True) -> GeneMatch:
    """Vocabulary id of each gene name.

    Exact tokens first; then (with ``use_aliases``, for the bundled human vocabulary's gene space)
    Ensembl ids (version suffix ignored), previous HGNC symbols and aliases, each only when it
    points to exactly one vocabulary token. When several genes land on the same token, the one
    with the strongest evidence (exact > Ensembl > previous > alias, then first) keeps it and the
    others are unmatched, so no token is fed twice.
    """
    names = np.asarray(pd.Index(names).astype(str))
    ids = vocab.lookup(names)
    kinds = np.where(ids >= 0, "symbol", "").astype(object)
    if use_aliases:
        table = _alias_table()
        for i in np.flatnonzero(ids < 0):
            name = names[i]
            hit = table.get(name) or (table.get(name.split(".")[0]) if name.startswith("ENS") else None)
            if hit is not None and hit[0] in vocab:
                ids[i], kinds[i] = vocab[hit[0]], hit[1]
    # one gene per token: strongest evidence wins, then the first column
    if (ids >= 0).sum() > len(np.unique(ids[ids >= 0])):
        rank = np.array([_KINDS.index(k) if k else 99 for k in kinds])
        order = np.lexsort((np.arange(len(ids)), rank, ids))
        first = np.ones(len(order), dtype=bool)
        first[1:] = ids[order][1:] != ids[order][:-1]
        dup = order[~first & (ids[order] >= 0)]
        if len(dup):
            warnings.warn(
                f"{len(dup)} genes map to a vocabulary token already taken by another gene (e.g. "
                f"{names[dup[0]]!r}); only the best-matching gene of each token is used.",
                UserWarning,
                stacklevel=3,
            )
            ids[dup], kinds[dup] = -1, ""
    return GeneMatch(ids, kinds, names)


def gene_names(adata: AnnData, gene_key: str | None) -> pd.Index:
    """``var_names`` or ``var[gene_key]``, with clear errors for missing keys and duplicated names."""
    if gene_key is None:
        names = adata.var_names
        where = "var_names"
    else:
        if gene_key not in adata.var:
            raise KeyError(f"gene_key={gene_key!r} is not a column of adata.var (columns: {list(adata.var.columns)}).")
        names = pd.Index(adata.var[gene_key].astype(str))
        where = f"var[{gene_key!r}]"
    if names.has_duplicates:
        dup = names[names.duplicated()].unique()
        raise ValueError(
            f"{where} has {len(dup)} duplicated gene names (e.g. {list(dup[:3])}); each gene must appear once. "
            "Use `adata.var_names_make_unique()` or aggregate the duplicated columns first."
        )
    return names


def check_coverage(match: GeneMatch, *, fn: str) -> None:
    """Error at zero overlap, warning below 50 %."""
    rep = match.report()
    if rep["n_matched"] == 0:
        raise ValueError(
            f"{fn}: none of the {rep['n_genes']} genes is in the model's vocabulary (examples: "
            f"{rep['unmatched_examples'][:5]}). scGPT expects human gene symbols or Ensembl ids; pass `gene_key=` "
            "if the symbols are in a var column."
        )
    if rep["coverage"] < 0.5:
        warnings.warn(
            f"{fn}: only {rep['n_matched']} of {rep['n_genes']} genes ({rep['coverage']:.0%}) are in the model's "
            f"vocabulary (unmatched examples: {rep['unmatched_examples'][:5]}).",
            UserWarning,
            stacklevel=3,
        )


def align_vocab(
    adata: AnnData,
    vocab: GeneVocab | str | None = None,
    *,
    gene_key: str | None = None,
    key_added: str = "id_in_vocab",
    use_aliases: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Map genes to scGPT vocabulary ids and report the coverage.

    Genes are matched by exact token, then by Ensembl id, previous HGNC symbol or alias
    (``use_aliases``; bundled table from GENCODE v44 and Ensembl 100/HGNC, see
    ``scgpt/data/_resources/NOTICE.md``).

    Parameters
    ----------
    adata
        Annotated data matrix.
    vocab
        A :class:`~scgpt.data.GeneVocab`, a path to a ``vocab.json``, or ``None`` for the bundled
        whole-human vocabulary (the one of the released scGPT models).
    gene_key
        Column of ``adata.var`` with gene names; ``None`` uses ``var_names``.
    key_added
        Name of the ``var`` column and ``uns`` entry written.
    use_aliases
        Also match Ensembl ids, previous symbols and aliases.
    copy
        Return a modified copy instead of writing to ``adata``.

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
    check_adata(adata, fn="align_vocab")
    adata = adata.copy() if copy else adata
    vocab_obj = (
        default_vocab() if vocab is None else (vocab if isinstance(vocab, GeneVocab) else GeneVocab.from_file(vocab))
    )
    logger.info("matching genes to the scGPT vocabulary")
    match = match_genes(gene_names(adata, gene_key), vocab_obj, use_aliases=use_aliases)
    check_coverage(match, fn="align_vocab")
    adata.var[key_added] = match.ids
    report = match.report()
    report["params"] = {
        "vocab": "default" if vocab is None else (str(vocab) if not isinstance(vocab, GeneVocab) else "custom"),
        "gene_key": gene_key,
        "use_aliases": use_aliases,
    }
    adata.uns[key_added] = report
    logger.info(f"    {report['n_matched']} of {report['n_genes']} genes matched ({report['coverage']:.1%})")
    log_added(start, "", [f"'{key_added}', vocabulary ids (adata.var)", f"'{key_added}', coverage report (adata.uns)"])
    return adata if copy else None
