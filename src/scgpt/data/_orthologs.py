"""Genes of other species mapped to their human orthologs, so a model with a human vocabulary reads them.

The bundled tables (``_resources/orthologs.tsv.xz``, built by ``scripts/build_orthologs.py``; sources and
licences in ``_resources/NOTICE.md``) hold every ortholog pair of a species and human: Ensembl Compara
(mouse: Ensembl 105; macaque, cynomolgus, pig: Ensembl 110) and NCBI HomoloGene for the others. Mouse
Ensembl gene ids (Ensembl 100, version suffix ignored) are read through ``_resources/ortholog_ids.tsv.xz``.

Policy (``orthologs=``):

- ``"one2one"`` (default): a gene is used only when it and its human ortholog have exactly one ortholog
  each in the table; every other gene is left out (and said why).
- ``"all"``: every gene with an ortholog is used. A gene with several human orthologs (one-to-many) gives
  its counts to one of them, never copies them: the one spelled like it (``Cd3e`` -> ``CD3E``), else the
  first in alphabetical order among those in the vocabulary. Several genes with the same human ortholog
  (many-to-one) have their counts summed into that gene's token.

:func:`scgpt.data._genes.match_genes` applies the mapping (``organism=``); this module only reads the tables.
"""

from __future__ import annotations

import lzma
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal

import numpy as np
import pandas as pd

Orthologs = Literal["one2one", "all"]
ORTHOLOGS = ("one2one", "all")
ORTHOLOGY = ("one2one", "one2many", "many2one", "many2many")


@dataclass(frozen=True)
class Organism:
    """A species the bundled tables map to human.

    Attributes
    ----------
    scientific
        Latin name.
    source
        Where its orthologs come from (``"Ensembl 105"``, ``"Ensembl 110"``, ``"HomoloGene"``; ``"human"``).
    file
        The celltypist file of an Ensembl table (build script only).
    id_pattern
        Regular expression of the species' gene ids (Ensembl, FlyBase, WormBase, TAIR), used to recognise
        the species of gene names.
    aliases
        Other accepted spellings of the name (lower case).
    """

    scientific: str
    source: str
    file: str = ""
    id_pattern: str = ""
    aliases: tuple[str, ...] = ()


ORGANISMS: dict[str, Organism] = {
    "human": Organism("Homo sapiens", "human", id_pattern=r"ENSG\d{11}", aliases=("hsapiens", "hs")),
    "mouse": Organism(
        "Mus musculus", "Ensembl 105", "Ensembl105_Human2Mouse_Genes.csv", r"ENSMUSG\d{11}", ("mmusculus", "mm")
    ),
    "macaque": Organism(
        "Macaca mulatta",
        "Ensembl 110",
        "Ensembl110_Human2Rhesus_Genes.csv",
        r"ENSMMUG\d{11}",
        ("rhesus", "rhesus macaque", "mmulatta"),
    ),
    "cynomolgus": Organism(
        "Macaca fascicularis",
        "Ensembl 110",
        "Ensembl110_Human2Cynomolgus_Genes.csv",
        r"ENSMFAG\d{11}",
        ("crab-eating macaque", "cynomolgus macaque", "mfascicularis"),
    ),
    "pig": Organism("Sus scrofa", "Ensembl 110", "Ensembl110_Human2Pig_Genes.csv", r"ENSSSCG\d{11}", ("sscrofa",)),
    "rat": Organism("Rattus norvegicus", "HomoloGene", id_pattern=r"ENSRNOG\d{11}", aliases=("rnorvegicus",)),
    "chimpanzee": Organism("Pan troglodytes", "HomoloGene", id_pattern=r"ENSPTRG\d{11}", aliases=("ptroglodytes",)),
    "dog": Organism("Canis lupus familiaris", "HomoloGene", id_pattern=r"ENSCAFG\d{11}", aliases=("canis familiaris",)),
    "cow": Organism("Bos taurus", "HomoloGene", id_pattern=r"ENSBTAG\d{11}", aliases=("btaurus", "cattle")),
    "chicken": Organism("Gallus gallus", "HomoloGene", id_pattern=r"ENSGALG\d{11}", aliases=("ggallus",)),
    "zebrafish": Organism("Danio rerio", "HomoloGene", id_pattern=r"ENSDARG\d{11}", aliases=("drerio",)),
    "frog": Organism("Xenopus tropicalis", "HomoloGene", id_pattern=r"ENSXETG\d{11}", aliases=("xenopus",)),
    "fly": Organism(
        "Drosophila melanogaster", "HomoloGene", id_pattern=r"FBgn\d{7}", aliases=("drosophila", "dmelanogaster")
    ),
    "worm": Organism(
        "Caenorhabditis elegans", "HomoloGene", id_pattern=r"WBGene\d{8}", aliases=("c. elegans", "celegans")
    ),
    "arabidopsis": Organism(
        "Arabidopsis thaliana", "HomoloGene", id_pattern=r"AT[1-5CM]G\d{5}", aliases=("athaliana",)
    ),
}
"""The species that ``organism=`` accepts (also by Latin name and the aliases), with their sources."""

#: Species whose gene symbols are spelled like human ones (upper case), so that their names alone do not tell them
#: from human.
HUMAN_LIKE = ("macaque", "cynomolgus", "pig", "chimpanzee", "dog", "cow")


def resolve_organism(organism: str) -> str:
    """The registry name of ``organism`` (a name of :data:`ORGANISMS`, a Latin name or an alias; any case)."""
    if not isinstance(organism, str):
        raise TypeError(f"organism must be a species name (str), got {type(organism).__name__}.")
    key = " ".join(organism.strip().lower().replace("_", " ").split())
    for name, org in ORGANISMS.items():
        if key == name or key == org.scientific.lower() or key in org.aliases:
            return name
    raise ValueError(
        f"organism={organism!r} is not a species with a bundled ortholog table; known: {', '.join(ORGANISMS)} "
        "(or their Latin names)."
    )


def check_orthologs(orthologs: str) -> str:
    """``orthologs`` if it is a known policy, else a clear error."""
    if orthologs not in ORTHOLOGS:
        raise ValueError(f"orthologs must be 'one2one' or 'all', got {orthologs!r}.")
    return orthologs


def _read(name: str) -> pd.DataFrame:
    ref = resources.files("scgpt.data").joinpath(f"_resources/{name}")
    with ref.open("rb") as raw, lzma.open(raw, "rt") as f:
        return pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False)


@lru_cache(maxsize=1)
def _all_pairs() -> pd.DataFrame:
    return _read("orthologs.tsv.xz")


@lru_cache(maxsize=1)
def _all_ids() -> pd.DataFrame:
    return _read("ortholog_ids.tsv.xz")


def classify(pairs: pd.DataFrame) -> pd.DataFrame:
    """The pairs ``(gene, human)`` with the orthology of each pair: one2one, one2many, many2one or many2many.

    One-to-many: the gene has several human orthologs, each of which has only this gene; many-to-one: the
    human gene has several orthologs in the species, each of which has only it; many-to-many: the rest.
    """
    pairs = pairs[["gene", "human"]].astype(str).drop_duplicates().reset_index(drop=True)
    n_human = pairs.gene.map(pairs.gene.value_counts()).to_numpy()  # human orthologs of the pair's gene
    n_gene = pairs.human.map(pairs.human.value_counts()).to_numpy()  # species orthologs of the pair's human gene
    # a gene is one2many only if none of its human orthologs has another ortholog (and conversely)
    max_gene = pairs.assign(n=n_gene).groupby("gene")["n"].transform("max").to_numpy()
    max_human = pairs.assign(n=n_human).groupby("human")["n"].transform("max").to_numpy()
    kind = np.where(
        (max_gene == 1) & (max_human == 1),
        "one2one",
        np.where(max_gene == 1, "one2many", np.where(max_human == 1, "many2one", "many2many")),
    )
    return pairs.assign(orthology=kind)


@lru_cache(maxsize=32)
def ortholog_table(organism: str) -> pd.DataFrame:
    """The bundled ortholog pairs of a species and human.

    Parameters
    ----------
    organism
        A species of :data:`ORGANISMS` (not human).

    Returns
    -------
    DataFrame with columns ``gene`` (the species' symbol), ``human`` (the human symbol) and ``orthology``
    (``"one2one"``, ``"one2many"``, ``"many2one"`` or ``"many2many"``), one row per pair.
    """
    name = resolve_organism(organism)
    if name == "human":
        raise ValueError("organism='human' needs no ortholog table.")
    table = _all_pairs()
    return classify(table[table.organism == name])


@lru_cache(maxsize=32)
def gene_ids(organism: str) -> dict[str, str]:
    """Ensembl gene id (no version) -> the species' symbol in :func:`ortholog_table` (bundled for mouse)."""
    ids = _all_ids()
    ids = ids[ids.organism == resolve_organism(organism)]
    return dict(zip(ids["id"], ids["gene"]))


def source_symbols(names: np.ndarray, organism: str, symbols: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """The species' symbol of each name (in ``symbols``, or by the species' Ensembl id) and whether it was an id.

    Names found neither way get ``""``.
    """
    ids = gene_ids(organism)
    out = np.empty(len(names), dtype=object)
    by_id = np.zeros(len(names), dtype=bool)
    for i, name in enumerate(names):
        if name in symbols:
            out[i] = name
            continue
        hit = ids.get(name.split(".")[0]) if ids else None
        out[i], by_id[i] = (hit, True) if hit is not None else ("", False)
    return out, by_id


@lru_cache(maxsize=1)
def _species_names() -> dict[str, frozenset[str]]:
    """The gene names each species but human is recognised by: its table symbols (and bundled ids)."""
    pairs = _all_pairs()
    out: dict[str, frozenset[str]] = {}
    for name, group in pairs.groupby("organism"):
        out[str(name)] = frozenset(group["gene"])
    ids = _all_ids()
    for name, group in ids.groupby("organism"):
        out[str(name)] = out.get(str(name), frozenset()) | frozenset(group["id"])
    return out


def species_shares(names: np.ndarray | list[str], human: frozenset[str]) -> dict[str, float]:
    """Share of ``names`` recognised as genes of each species (its symbols, its ids), highest first.

    ``human`` holds the names human genes are recognised by (the vocabulary and the aliases of
    :mod:`scgpt.data._genes`, which passes them).
    """
    names = [str(n) for n in names]
    if not names:
        return {}
    known = {**_species_names(), "human": human}
    shares = {}
    for name, org in ORGANISMS.items():
        pattern = re.compile(org.id_pattern + r"(\.\d+)?$") if org.id_pattern else None
        words = known.get(name, frozenset())
        hits = sum(1 for n in names if n in words or (pattern is not None and pattern.match(n)))
        shares[name] = hits / len(names)
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def likely_organisms(names: np.ndarray | list[str], human: frozenset[str], *, min_share: float = 0.2) -> list[str]:
    """The species whose genes ``names`` most look like (the best and those within 80 % of it); ``[]`` if none."""
    shares = species_shares(names, human)
    if not shares:
        return []
    best = next(iter(shares.values()))
    if best < min_share:
        return []
    return [name for name, s in shares.items() if s >= 0.8 * best]


def describe(organisms: list[str]) -> str:
    """``"mouse"``, ``"mouse or rat"``: the likely species of some genes, for messages."""
    names = list(organisms)
    if "human" in names:  # human-like symbols: name human first, the look-alikes after it
        names = ["human"] + [n for n in names if n != "human" and n not in HUMAN_LIKE]
    return " or ".join(f"{n!r}" for n in names[:3])


def pick_human(gene: str, candidates: list[str]) -> str:
    """The human ortholog a one-to-many gene gives its counts to: the one spelled like it, else the first."""
    upper = gene.upper()
    for c in candidates:
        if c.upper() == upper:
            return c
    return sorted(candidates)[0]
