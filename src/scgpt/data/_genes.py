"""Match genes of an AnnData to a scGPT vocabulary: symbols, Ensembl ids, previous and alias symbols.

:func:`scgpt.pp.align_vocab` is the face over this module; the model, its sources and the tasks call
:func:`match_genes` directly.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._logging import warn
from ._vocab import GeneVocab

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

    def restricted_to(self, ids: np.ndarray, *, fn: str) -> GeneMatch:
        """The same match with only the genes whose token is among ``ids`` kept (the others unmatched)."""
        keep = np.isin(self.ids, ids[ids >= 0]) & self.matched
        if not keep.any():
            raise ValueError(f"{fn}: none of the genes is in the model's gene panel ({int((ids >= 0).sum())} genes).")
        return GeneMatch(np.where(keep, self.ids, -1), np.where(keep, self.kinds, ""), self.names)

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
            warn(
                f"{len(dup)} genes map to a vocabulary token already taken by another gene (e.g. "
                f"{names[dup[0]]!r}); only the best-matching gene of each token is used."
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


def check_coverage(match: GeneMatch, *, fn: str) -> GeneMatch:
    """Error at zero overlap, warning below 50 %."""
    rep = match.report()
    if rep["n_matched"] == 0:
        raise ValueError(
            f"{fn}: none of the {rep['n_genes']} genes is in the model's vocabulary (examples: "
            f"{rep['unmatched_examples'][:5]}). scGPT expects human gene symbols or Ensembl ids; pass `gene_key=` "
            "if the symbols are in a var column."
        )
    if rep["coverage"] < 0.5:
        warn(
            f"{fn}: only {rep['n_matched']} of {rep['n_genes']} genes ({rep['coverage']:.0%}) are in the model's "
            f"vocabulary (unmatched examples: {rep['unmatched_examples'][:5]})."
        )
    return match


def match_adata(
    adata: AnnData, vocab: GeneVocab, *, gene_key: str | None = None, use_aliases: bool = True, fn: str
) -> GeneMatch:
    """The genes of ``adata`` matched to ``vocab``, with :func:`check_coverage`'s errors and warnings from ``fn``."""
    return check_coverage(match_genes(gene_names(adata, gene_key), vocab, use_aliases=use_aliases), fn=fn)
