"""Match genes of an AnnData to a scGPT vocabulary: symbols, Ensembl ids, previous and alias symbols, other species.

:func:`scgpt.pp.align_vocab` is the face over this module; the model, its sources and the tasks call
:func:`match_genes` (or :func:`match_adata`) directly, and pass ``organism=``/``orthologs=`` on to read the
genes of another species through their human orthologs (:mod:`scgpt.data._orthologs`).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._logging import caller, logger, warn
from ._orthologs import (
    HUMAN_LIKE,
    ORTHOLOGY,
    check_orthologs,
    classify,
    describe,
    likely_organisms,
    ortholog_table,
    pick_human,
    resolve_organism,
    source_symbols,
)
from ._vocab import GeneVocab

if TYPE_CHECKING:
    from anndata import AnnData

_KINDS = ("symbol", "ensembl", "previous", "alias")

#: Below this median share of a cell's counts in genes the model reads, a warning says what to do.
COUNTS_WARN = 0.5

#: Below this share of a dataset's genes recognised as genes of the declared species, ``organism`` is wrong
#: when the genes look like another species'.
SPECIES_MIN = 0.2


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


@lru_cache(maxsize=1)
def _human_names() -> frozenset[str]:
    """The names human genes are recognised by: the whole-human vocabulary and the bundled aliases."""
    return frozenset(default_vocab().itos) | frozenset(_alias_table())


@dataclass
class GeneMatch:
    """Result of matching gene names to a vocabulary.

    For another species (``organism`` not ``"human"``) the names are the species' genes and ``human``,
    ``reason``, ``orthology`` and ``by_id`` say what became of each; several genes may then share a token
    (``orthologs="all"``, many-to-one), and whatever reads rows in vocabulary space sums their counts.
    """

    ids: np.ndarray  # (n_genes,) int64, -1 where unmatched
    kinds: np.ndarray  # (n_genes,) object: "symbol" | "ensembl" | "previous" | "alias" | "" (unmatched)
    names: np.ndarray  # the names that were matched
    organism: str = "human"
    orthologs: str = "one2one"
    human: np.ndarray | None = None  # (n_genes,) object: the vocabulary token (human gene) each gene became, or ""
    reason: np.ndarray | None = None  # (n_genes,) object: the orthology of a used gene, or why a gene is unused
    orthology: np.ndarray | None = None  # (n_genes,) object: orthology of each gene in the table, "" (no ortholog)
    by_id: np.ndarray | None = None  # (n_genes,) bool: the name was an Ensembl id of the species

    @property
    def matched(self) -> np.ndarray:
        """Boolean mask of matched genes."""
        return self.ids >= 0

    @property
    def shared(self) -> np.ndarray:
        """Boolean mask of matched genes whose token is also another gene's (their counts are summed)."""
        ids = self.ids[self.matched]
        uniq, counts = np.unique(ids, return_counts=True)
        out = np.zeros(len(self.ids), dtype=bool)
        out[self.matched] = np.isin(ids, uniq[counts > 1])
        return out

    def gene_of_token(self, n_tokens: int) -> np.ndarray:
        """``(n_tokens,)`` int64: the first gene column of each token (``-1``: no gene of the input)."""
        out = np.full(n_tokens, -1, dtype=np.int64)
        cols = np.flatnonzero(self.matched)[::-1]  # written last to first: the first column wins
        out[self.ids[cols]] = cols
        return out

    def restricted_to(self, ids: np.ndarray) -> GeneMatch:
        """The same match with only the genes whose token is among ``ids`` kept (the others unmatched)."""
        fn = caller()
        keep = np.isin(self.ids, ids[ids >= 0]) & self.matched
        if not keep.any():
            raise ValueError(f"{fn}: none of the genes is in the model's gene panel ({int((ids >= 0).sum())} genes).")
        dropped = self.matched & ~keep
        human = None if self.human is None else np.where(dropped, "", self.human)
        reason = None if self.reason is None else np.where(dropped, "not in the gene panel", self.reason)
        return GeneMatch(
            np.where(keep, self.ids, -1),
            np.where(keep, self.kinds, ""),
            self.names,
            self.organism,
            self.orthologs,
            human,
            reason,
            self.orthology,
            self.by_id,
        )

    def counts_fraction(self, X) -> np.ndarray:
        """Share of each cell's counts (rows of ``X``, columns these genes) in matched genes; NaN for empty cells."""
        X = X.tocsr() if sp.issparse(X) else sp.csr_matrix(np.asarray(X))
        total = np.asarray(X.sum(1), dtype=np.float64).ravel()
        inside = np.asarray(X @ self.matched.astype(np.float64), dtype=np.float64).ravel()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, inside / total, np.nan)

    def report(self, n_examples: int = 10) -> dict:
        """Coverage summary (JSON-friendly).

        Always: ``n_matched``, ``n_genes``, ``coverage``, ``by_kind`` and ``unmatched_examples``. For another
        species also ``organism``, ``orthologs``, ``orthology`` (the species' genes by orthology in the table:
        ``one2one``, ``one2many``, ``many2one``, ``many2many``, ``none``), ``by_reason`` (what became of each
        gene), ``n_by_id`` (genes named by Ensembl id) and ``n_summed`` (genes whose counts are summed with
        other genes' into one token).
        """
        n = len(self.ids)
        k = int(self.matched.sum())
        rep = {
            "n_matched": k,
            "n_genes": n,
            "coverage": k / n if n else 0.0,
            "by_kind": {kind: int((self.kinds == kind).sum()) for kind in _KINDS},
            "unmatched_examples": [str(x) for x in self.names[~self.matched][:n_examples]],
        }
        if self.organism != "human":
            reasons = pd.Series(self.reason).value_counts()
            rep.update(
                organism=self.organism,
                orthologs=self.orthologs,
                orthology={
                    **{kind: int((self.orthology == kind).sum()) for kind in ORTHOLOGY},
                    "none": int((self.orthology == "").sum()),
                },
                by_reason={str(r): int(c) for r, c in reasons.items()},
                n_by_id=int(self.by_id.sum()),
                n_summed=int(self.shared.sum()),
            )
        return rep


def _to_vocab(names: np.ndarray, vocab: GeneVocab, use_aliases: bool) -> tuple[np.ndarray, np.ndarray]:
    """Vocabulary id and evidence kind of each human gene name (exact token, then the bundled alias table)."""
    ids = vocab.lookup(names)
    kinds = np.where(ids >= 0, "symbol", "").astype(object)
    if use_aliases:
        table = _alias_table()
        for i in np.flatnonzero(ids < 0):
            name = names[i]
            hit = table.get(name) or (table.get(name.split(".")[0]) if name.startswith("ENS") else None)
            if hit is not None and hit[0] in vocab:
                ids[i], kinds[i] = vocab[hit[0]], hit[1]
    return ids, kinds


def _losers(ids: np.ndarray, kinds: np.ndarray, extra_rank: np.ndarray | None = None) -> np.ndarray:
    """Columns that share a token with a gene of stronger evidence (exact > Ensembl > previous > alias, then first)."""
    if (ids >= 0).sum() == len(np.unique(ids[ids >= 0])):
        return np.zeros(0, dtype=np.int64)
    rank = np.array([_KINDS.index(k) if k else 99 for k in kinds])
    keys = (np.arange(len(ids)), rank) if extra_rank is None else (np.arange(len(ids)), extra_rank, rank)
    order = np.lexsort((*keys, ids))
    first = np.ones(len(order), dtype=bool)
    first[1:] = ids[order][1:] != ids[order][:-1]
    return order[~first & (ids[order] >= 0)]


def match_genes(
    names: pd.Index | np.ndarray | list,
    vocab: GeneVocab,
    *,
    use_aliases: bool = True,
    organism: str | pd.DataFrame = "human",
    orthologs: str = "one2one",
) -> GeneMatch:
    """Vocabulary id of each gene name.

    Human genes (``organism="human"``): exact tokens first; then (with ``use_aliases``, for the bundled
    human vocabulary's gene space) Ensembl ids (version suffix ignored), previous HGNC symbols and aliases,
    each only when it points to exactly one vocabulary token. When several genes land on the same token,
    the one with the strongest evidence (exact > Ensembl > previous > alias, then first) keeps it and the
    others are unmatched, so no token is fed twice.

    Another species: each name (the species' symbol, or its Ensembl id with or without version) is mapped
    to its human ortholog through the bundled table (:func:`scgpt.data.ortholog_table`), and the human gene
    to the vocabulary as above. ``orthologs="one2one"`` uses one-to-one orthologs only; ``"all"`` also
    one-to-many (the counts go to one of the human genes) and many-to-one orthologs (several genes on one
    token: their counts are summed where rows are read in vocabulary space). ``organism`` may also be a
    table of one's own, a DataFrame with columns ``gene`` and ``human``.
    """
    names = np.asarray(pd.Index(names).astype(str))
    orthologs = check_orthologs(orthologs)
    if isinstance(organism, pd.DataFrame):
        missing = {"gene", "human"} - set(organism.columns)
        if missing:
            raise ValueError(f"an ortholog table needs the columns 'gene' and 'human' (missing: {sorted(missing)}).")
        return _match_orthologs(names, vocab, classify(organism), "custom", use_aliases, orthologs)
    name = resolve_organism(organism)
    if name != "human":
        return _match_orthologs(names, vocab, ortholog_table(name), name, use_aliases, orthologs)
    ids, kinds = _to_vocab(names, vocab, use_aliases)
    dup = _losers(ids, kinds)
    if len(dup):
        _report_losers(names, ids, kinds, dup)
        ids[dup], kinds[dup] = -1, ""
    return GeneMatch(ids, kinds, names)


def _report_losers(names: np.ndarray, ids: np.ndarray, kinds: np.ndarray, dup: np.ndarray) -> None:
    """Say which genes lose their token to another gene.

    A warning when the evidence is equal (ambiguous); a log line when a stronger match keeps it (an old alias of a
    gene that is in the data under its own name: routine).
    """
    rank = {k: i for i, k in enumerate(_KINDS)}
    kept = np.setdiff1d(np.flatnonzero(ids >= 0), dup)
    winner = dict(zip(ids[kept].tolist(), kept.tolist()))
    weaker = [i for i in dup if rank.get(kinds[i], 99) > rank.get(kinds[winner[int(ids[i])]], 99)]
    ambiguous = [i for i in dup if i not in set(weaker)]
    if weaker:
        i = weaker[0]
        w = winner[int(ids[i])]
        logger.info(
            f"    {len(weaker)} genes are weaker matches ({kinds[i]} ...) of a vocabulary token that another gene of "
            f"the data matches better (e.g. {names[i]!r}, {kinds[i]} of {names[w]!r}, kept); they are not used"
        )
    if ambiguous:
        i = ambiguous[0]
        warn(
            f"{len(ambiguous)} genes map to a vocabulary token already taken by another gene with equal evidence "
            f"(e.g. {names[i]!r} and {names[winner[int(ids[i])]]!r}, {kinds[i]}); only the first gene of each token "
            "is used."
        )


def _match_orthologs(
    names: np.ndarray, vocab: GeneVocab, table: pd.DataFrame, organism: str, use_aliases: bool, orthologs: str
) -> GeneMatch:
    """:func:`match_genes` for the genes of another species, through the classified ortholog ``table``."""
    n = len(names)
    candidates = table.groupby("gene", sort=False)["human"].agg(list).to_dict()
    orthology_of = dict(zip(table["gene"], table["orthology"]))
    if organism == "custom":
        source = np.array([nm if nm in candidates else "" for nm in names], dtype=object)
        by_id = np.zeros(n, dtype=bool)
    else:
        source, by_id = source_symbols(names, organism, set(candidates))
    needed = sorted({h for s in set(source) if s for h in candidates[s]})
    h_ids, h_kinds = _to_vocab(np.asarray(needed, dtype=object), vocab, use_aliases)
    to_vocab = {h: (int(i), k) for h, i, k in zip(needed, h_ids, h_kinds)}
    ids = np.full(n, -1, dtype=np.int64)
    kinds = np.full(n, "", dtype=object)
    reason = np.full(n, "no ortholog", dtype=object)
    orthology = np.full(n, "", dtype=object)
    for i, s in enumerate(source):
        if not s:
            continue
        kind = orthology_of[s]
        orthology[i] = kind
        if orthologs == "one2one" and kind != "one2one":
            reason[i] = f"{kind}, not used"
            continue
        usable = [h for h in candidates[s] if to_vocab[h][0] >= 0]
        if not usable:
            reason[i] = "not in vocabulary"
            continue
        h = usable[0] if len(usable) == 1 else pick_human(s, usable)
        ids[i], kinds[i] = to_vocab[h]
        reason[i] = kind
    if orthologs == "one2one":  # one gene per token (two names of one gene, two symbols of one token)
        dup = _losers(ids, kinds, extra_rank=by_id.astype(np.int64))
        ids[dup], kinds[dup], reason[dup] = -1, "", "token taken"
    human = np.full(n, "", dtype=object)
    human[ids >= 0] = vocab.lookup_tokens(ids[ids >= 0])
    match = GeneMatch(ids, kinds, names, organism, orthologs, human, reason, orthology, by_id)
    if orthologs == "all":
        summed = match.shared
        reason[summed] = [f"{r} (summed)" for r in reason[summed]]
    return match


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


def _species_hint(names: np.ndarray) -> str:
    """`` The genes look like mouse genes ...: pass organism='mouse' ...`` when they do, else ``""``."""
    likely = [o for o in likely_organisms(names, _human_names()) if o != "human"]
    if not likely or "human" in likely_organisms(names, _human_names()):
        return ""
    return (
        f" The genes look like {describe(likely)} genes: pass organism={likely[0]!r} to map them to their human "
        "orthologs (see scgpt.pp.align_vocab)."
    )


def _gene_threshold(match: GeneMatch) -> float:
    """Below this share of matched genes :func:`check_coverage` warns (another species: many genes have no ortholog)."""
    return 0.5 if match.organism == "human" else 0.25


def check_coverage(match: GeneMatch) -> GeneMatch:
    """Errors at zero overlap and for a wrong ``organism``; warns when few genes match (50 %, other species 25 %)."""
    fn = caller()
    rep = match.report()
    if match.organism not in ("human", "custom"):
        known = float((match.orthology != "").mean()) if len(match.names) else 0.0
        if known < SPECIES_MIN:
            likely = likely_organisms(match.names, _human_names())
            if likely and match.organism not in likely:
                fix = (
                    "organism='human' (the default)"
                    if "human" in likely
                    else f"organism={[o for o in likely if o != 'human'][0]!r}"
                )
                case = (
                    f" If they are {match.organism} genes written in upper case, spell them as the species does "
                    "(e.g. Cd3e) first."
                    if "human" in likely and match.organism not in HUMAN_LIKE
                    else ""
                )
                raise ValueError(
                    f"{fn}: organism={match.organism!r}, but only {known:.0%} of the {rep['n_genes']} genes are "
                    f"{match.organism} genes of the ortholog table; they look like {describe(likely)} genes (e.g. "
                    f"{[str(x) for x in match.names[:3]]}). Pass {fix}.{case}"
                )
    if rep["n_matched"] == 0:
        if match.organism == "human":
            hint = _species_hint(match.names) or (
                " scGPT expects human gene symbols or Ensembl ids (pass `organism=` for another species); pass "
                "`gene_key=` if the symbols are in a var column."
            )
        else:
            hint = f" What became of them: {rep['by_reason']}. Pass `gene_key=` if the symbols are in a var column."
        raise ValueError(
            f"{fn}: none of the {rep['n_genes']} genes is in the model's vocabulary (examples: "
            f"{rep['unmatched_examples'][:5]}).{hint}"
        )
    if rep["coverage"] < _gene_threshold(match):
        hint = _species_hint(match.names) if match.organism == "human" else f" ({rep['by_reason']})"
        warn(
            f"{fn}: only {rep['n_matched']} of {rep['n_genes']} genes ({rep['coverage']:.0%}) are in the model's "
            f"vocabulary (unmatched examples: {rep['unmatched_examples'][:5]}).{hint}"
        )
    return match


def counts_summary(fraction: np.ndarray) -> dict[str, float]:
    """Median, 5th percentile and minimum of the per-cell share of counts in matched genes (empty cells left out)."""
    f = np.asarray(fraction, dtype=np.float64)
    f = f[~np.isnan(f)]
    if not len(f):
        return {"median": float("nan"), "p5": float("nan"), "min": float("nan")}
    return {"median": float(np.median(f)), "p5": float(np.percentile(f, 5)), "min": float(f.min())}


def check_counts(summary: dict[str, float], match: GeneMatch) -> None:
    """Warn when the median cell has less than :data:`COUNTS_WARN` of its counts in genes the model reads.

    Silent when :func:`check_coverage` warned already (few genes matched: the same advice).
    """
    fn = caller()
    if not summary["median"] < COUNTS_WARN or match.report()["coverage"] < _gene_threshold(match):
        return
    if match.organism == "human":
        todo = _species_hint(match.names) or (
            " Check that the genes are human symbols or Ensembl ids (`gene_key=` names a var column with them)."
        )
    elif match.orthologs == "one2one":
        todo = " orthologs='all' also reads one-to-many and many-to-one orthologs; check `organism=` and `gene_key=`."
    else:
        todo = " Check `organism=` and `gene_key=`."
    warn(
        f"{fn}: the median cell has only {summary['median']:.0%} of its counts in genes the model reads (5th "
        f"percentile {summary['p5']:.0%}); its representation rests on few genes.{todo}"
    )


def match_adata(
    adata: AnnData,
    vocab: GeneVocab,
    *,
    gene_key: str | None = None,
    use_aliases: bool = True,
    organism: str | pd.DataFrame = "human",
    orthologs: str = "one2one",
) -> GeneMatch:
    """The genes of ``adata`` matched to ``vocab``, with :func:`check_coverage`'s errors and warnings from ``fn``."""
    match = match_genes(gene_names(adata, gene_key), vocab, use_aliases=use_aliases, organism=organism,
                        orthologs=orthologs)  # fmt: skip
    return check_coverage(match)


def adata_counts_fraction(adata: AnnData, match: GeneMatch, *, layer: str | None = None) -> np.ndarray:
    """Per cell, the share of its counts (``X`` or ``layer``) in the genes ``match`` uses; read in row chunks."""
    from ._matrix import iter_row_chunks

    out = np.full(adata.n_obs, np.nan)
    for start, X in iter_row_chunks(adata, layer, 8192):
        out[start : start + X.shape[0]] = match.counts_fraction(X)
    return out


def describe_match(rep: dict, counts: dict[str, float] | None = None) -> list[str]:
    """Lines of the coverage report for the log (genes by what became of them, the share of counts read)."""
    lines = []
    if "organism" in rep:
        o = rep["orthology"]
        lines.append(
            f"{rep['n_genes']:,} {rep['organism']} genes: {o['one2one']:,} with a one-to-one human ortholog, "
            f"{o['one2many']:,} one-to-many, {o['many2one']:,} many-to-one, {o['many2many']:,} many-to-many, "
            f"{o['none']:,} without (orthologs={rep['orthologs']!r})"
        )
        lines.append(
            f"{rep['n_matched']:,} read by the model as human genes ({rep['coverage']:.1%}); "
            + ", ".join(f"{r}: {n:,}" for r, n in rep["by_reason"].items())
        )
        if rep["n_summed"]:
            lines.append(f"{rep['n_summed']:,} genes share a human gene with others: their counts are summed")
    else:
        lines.append(f"{rep['n_matched']:,} of {rep['n_genes']:,} genes matched ({rep['coverage']:.1%})")
    if counts is not None:
        lines.append(
            f"share of each cell's counts the model reads: median {counts['median']:.1%}, 5th percentile "
            f"{counts['p5']:.1%}"
        )
    return lines
