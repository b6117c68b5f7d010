"""Real cells available offline, their fixed splits, and the demo-model pretraining corpus.

Shared by ``scripts/build_demo_model.py`` and ``benchmarks/annotate.py`` so that the cells held
out for the annotation benchmark are never seen in pretraining.

Sources (see ``../shared/data/README.md`` and ``../shared/reference/offline_data.md``):

- OneK1K PBMCs of 30 donors (Yazar et al. 2022; via scDesignPop, MIT), Ensembl ids, 4 cell types;
- scanpy's ``pbmc68k_reduced`` (10x Genomics; BSD-3), counts recovered exactly, 10 cell types;
- a CRISPR screen in THP-1 cells (Papalexi et al. 2021; via sceptredata, MIT), 299-gene panel;
- two 10x PBMC CITE-seq runs, RNA part (scvi-tools test data, BSD-3);
- the celltypist sample of 559 immune cells (MIT), from the ``celltypist`` wheel on PyPI.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SCGPT_SHARED", REPO.parent / "shared"))


def onek1k_split():
    """(reference, query): 20 reference donors and the 10 ``scgpt.datasets.ONEK1K_QUERY_DONORS``."""
    from scgpt.datasets import ONEK1K_QUERY_DONORS, onek1k

    a = onek1k()
    query = a.obs["indiv"].isin(ONEK1K_QUERY_DONORS).to_numpy()
    return a[~query].copy(), a[query].copy()


def pbmc68k_split(seed: int = 0):
    """(train, test): a stratified 70/30 split of ``scgpt.datasets.pbmc68k_counts()`` by ``bulk_labels``."""
    from sklearn.model_selection import train_test_split

    import scgpt

    a = scgpt.datasets.pbmc68k_counts()
    train, test = train_test_split(np.arange(a.n_obs), test_size=0.3, stratify=a.obs["bulk_labels"], random_state=seed)
    return a[np.sort(train)].copy(), a[np.sort(test)].copy()


def papalexi():
    """15,429 THP-1 cells x 299 genes (CRISPR screen), raw counts."""
    import anndata as ad

    return ad.read_h5ad(SHARED / "data" / "papalexi2021_thp1_crispr_rep1_rep2.h5ad")


def cite_rna():
    """RNA of two 10x PBMC CITE-seq runs, 200 cells each."""
    import anndata as ad

    runs = [ad.read_h5ad(SHARED / "data" / f"scvi_pbmc_{k}_protein_v3_200cells.h5ad") for k in ("5k", "10k")]
    return [ad.AnnData(r.X, obs=r.obs[[]], var=r.var[[]]) for r in runs]


def celltypist_sample(cache: Path | None = None):
    """The celltypist sample (559 immune cells x 32,786 genes, counts), from the ``celltypist==1.7.1`` wheel."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    cache = cache or Path(tempfile.gettempdir()) / "scgpt_celltypist"
    cache.mkdir(parents=True, exist_ok=True)
    wheels = list(cache.glob("celltypist-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "celltypist==1.7.1", "-d", str(cache), "-q"],
            check=True,
        )
        wheels = list(cache.glob("celltypist-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        df = pd.read_csv(io.BytesIO(z.read("celltypist/data/samples/sample_cell_by_gene.csv")), index_col=0)
    X = sp.csr_matrix(np.rint(df.to_numpy()).astype(np.float32))
    return ad.AnnData(X, obs=pd.DataFrame(index=df.index.astype(str)), var=pd.DataFrame(index=df.columns.astype(str)))


def pretraining_parts() -> dict:
    """The demo-model corpus: every source above except the annotation held-out cells."""
    onek_ref, _ = onek1k_split()
    pbmc_train, _ = pbmc68k_split()
    parts = {"onek1k_reference": onek_ref, "pbmc68k_train": pbmc_train, "papalexi2021": papalexi()}
    for i, run in enumerate(cite_rna()):
        parts[f"cite_pbmc_run{i + 1}"] = run
    parts["celltypist_sample"] = celltypist_sample()
    return parts
