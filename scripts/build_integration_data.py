"""Build the two integration data sets shipped in ``src/scgpt/datasets/_resources/``.

``pbmc_two_sources.h5ad``: two real PBMC sources on the genes they share.

- ``pbmc68k_reduced``: the 700 cells of scanpy's bundled ``pbmc68k_reduced`` (10x Genomics PBMC 68k,
  BSD-3 via scanpy) with raw counts recovered exactly by :func:`scgpt.datasets.pbmc68k_counts`; the
  annotated ``bulk_labels`` are mapped to coarse classes and the 13 ``CD34+`` cells are dropped.
- ``celltypist_sample``: the 559-cell example matrix of celltypist 1.7.1
  (``celltypist/data/samples/sample_cell_by_gene.csv`` in the wheel, MIT licence, Teichmann Lab), raw
  UMI counts stored as floats (rounded here). It has no labels: each cell gets the coarse class whose
  canonical marker genes score highest (mean log-normalised expression, see :func:`marker_labels`).
  Cells with a low or ambiguous best score are dropped.

``pbmc_cite_seq.h5mu``: two real 10x PBMC CITE-seq runs (TotalSeq-B), 200 cells each, from scvi-tools'
test data (github.com/scverse/scvi-tools, ``tests/test_data/``, BSD-3), as copied to
``$SCGPT_SHARED/data/scvi_pbmc_{5k,10k}_protein_v3_200cells.h5ad`` (default ``../shared`` beside the
repository). RNA on the genes both runs have (dropping genes with no count in the 400 cells), proteins
on the 14 antibodies both panels have; labels from gates on CLR-normalised proteins (see
:func:`protein_labels`).

Usage::

    pip download --no-deps celltypist==1.7.1 -d wheels/
    python scripts/build_integration_data.py --wheels wheels/

Re-running gives the same matrices and labels (no randomness anywhere).
"""

from __future__ import annotations

import argparse
import io
import os
import warnings
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
RES = REPO / "src/scgpt/datasets/_resources"
SHARED = Path(os.environ.get("SCGPT_SHARED", REPO.parent / "shared"))
CELLTYPIST_MEMBER = "celltypist/data/samples/sample_cell_by_gene.csv"

CELL_TYPES = ["T cell", "NK cell", "B cell", "CD14 monocyte", "dendritic cell"]
BULK_TO_COARSE = {
    "CD4+/CD25 T Reg": "T cell",
    "CD4+/CD45RO+ Memory": "T cell",
    "CD4+/CD45RA+/CD25- Naive T": "T cell",
    "CD8+ Cytotoxic T": "T cell",
    "CD8+/CD45RA+ Naive Cytotoxic": "T cell",
    "CD56+ NK": "NK cell",
    "CD19+ B": "B cell",
    "CD14+ Monocyte": "CD14 monocyte",
    "Dendritic": "dendritic cell",
    # "CD34+" (progenitors): no coarse class, dropped
}
MARKERS = {
    "T cell": ["CD3D", "CD3E", "CD2", "IL7R"],
    "NK cell": ["NKG7", "GNLY", "KLRD1"],
    "B cell": ["MS4A1", "CD79A", "CD79B"],
    "CD14 monocyte": ["CD14", "LYZ", "S100A8", "S100A9", "FCN1"],
    "dendritic cell": ["FCER1A", "CST3", "CLEC10A"],
}
CD3_GENES = ["CD3D", "CD3E", "CD3G"]  # subtracted from the NK score: NK cells are CD3-negative
MIN_SCORE = 0.75  # best class score (mean log1p(CP10k) over the class markers)
MIN_MARGIN = 0.25  # best minus second-best class score

RUNS = {"pbmc5k": "scvi_pbmc_5k_protein_v3_200cells.h5ad", "pbmc10k": "scvi_pbmc_10k_protein_v3_200cells.h5ad"}
PROTEIN_LABELS = ["CD4 T", "CD8 T", "CD14 monocyte", "B cell", "NK cell", "other"]
GATED = ["CD3", "CD4", "CD8a", "CD14", "CD19", "CD56"]
KDE_BANDWIDTH = 0.25
VALLEY_WINDOW = (0.0, 2.5)  # CLR units; the negative populations peak below 0, the positive ones above 2


# --------------------------------------------------------------------------------------------------
# pbmc_two_sources.h5ad
# --------------------------------------------------------------------------------------------------


def read_celltypist_sample(wheel_dir: Path) -> ad.AnnData:
    wheel = next(wheel_dir.glob("celltypist-1.7.1-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        df = pd.read_csv(io.BytesIO(z.read(CELLTYPIST_MEMBER)), index_col=0)
    values = df.to_numpy(dtype=np.float64)
    counts = np.rint(values)
    assert np.abs(values - counts).max() < 1e-6, "celltypist sample is not integer counts"
    return ad.AnnData(
        X=sp.csr_matrix(counts.astype(np.float32)),
        obs=pd.DataFrame(index=df.index.astype(str)),
        var=pd.DataFrame(index=df.columns.astype(str)),
    )


def marker_labels(adata: ad.AnnData) -> tuple[pd.Series, pd.DataFrame]:
    """Coarse class per cell from marker scores on all 32,786 genes (before subsetting to shared genes).

    Score of a class = mean over its marker genes of ``log1p(counts / total * 1e4)``; the NK score
    minus the mean CD3D/CD3E/CD3G expression. Label = argmax, or NaN where the best score is below
    MIN_SCORE or exceeds the second best by less than MIN_MARGIN.
    """
    X = adata.X.toarray()
    lognorm = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    genes = adata.var_names

    def mean_expr(names: list[str]) -> np.ndarray:
        idx = genes.get_indexer([g for g in names if g in genes])
        return lognorm[:, idx].mean(1)

    scores = pd.DataFrame({k: mean_expr(v) for k, v in MARKERS.items()}, index=adata.obs_names)
    scores["NK cell"] -= mean_expr(CD3_GENES)
    s = scores.to_numpy()
    order = np.argsort(-s, axis=1, kind="stable")
    rows = np.arange(len(s))
    best, second = s[rows, order[:, 0]], s[rows, order[:, 1]]
    label = pd.Series(np.asarray(scores.columns)[order[:, 0]], index=adata.obs_names, dtype=object)
    label[(best < MIN_SCORE) | (best - second < MIN_MARGIN)] = np.nan
    return label, scores


def build_two_sources(wheel_dir: Path) -> ad.AnnData:
    from scgpt.datasets import pbmc68k_counts

    p68 = pbmc68k_counts()
    ct = read_celltypist_sample(wheel_dir)
    ct_label, _ = marker_labels(ct)

    shared = [g for g in p68.var_names if g in set(ct.var_names)]
    p68 = p68[p68.obs["bulk_labels"].astype(str).isin(BULK_TO_COARSE.keys()), shared]
    ct = ct[ct_label.notna().to_numpy(), shared]
    ct_label = ct_label[ct.obs_names]

    obs68 = pd.DataFrame(
        {
            "source": "pbmc68k_reduced",
            "cell_type": p68.obs["bulk_labels"].astype(str).map(BULK_TO_COARSE).to_numpy(),
            "label_origin": "annotated",
            "original_label": p68.obs["bulk_labels"].astype(str).to_numpy(),
        },
        index="pbmc68k_reduced_" + p68.obs_names.astype(str),
    )
    obsct = pd.DataFrame(
        {
            "source": "celltypist_sample",
            "cell_type": ct_label.to_numpy(),
            "label_origin": "marker-derived",
            "original_label": np.nan,
        },
        index="celltypist_sample_" + ct.obs_names.astype(str),
    )
    obs = pd.concat([obs68, obsct])
    obs["source"] = pd.Categorical(obs["source"], categories=["pbmc68k_reduced", "celltypist_sample"])
    obs["cell_type"] = pd.Categorical(obs["cell_type"], categories=CELL_TYPES)
    obs["label_origin"] = pd.Categorical(obs["label_origin"], categories=["annotated", "marker-derived"])
    obs["original_label"] = pd.Categorical(obs["original_label"])

    X = sp.vstack([sp.csr_matrix(p68.X), sp.csr_matrix(ct.X)]).tocsr().astype(np.float32)
    X.sort_indices()
    out = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(shared, dtype=str)))
    out.uns["sources"] = {
        "pbmc68k_reduced": "scanpy.datasets.pbmc68k_reduced (10x Genomics PBMC 68k; scanpy BSD-3), "
        "counts recovered from .raw",
        "celltypist_sample": f"celltypist==1.7.1 wheel, {CELLTYPIST_MEMBER} (MIT)",
    }
    out.uns["cell_type_markers"] = {k: list(v) for k, v in MARKERS.items()}
    out.uns["marker_label_thresholds"] = {"min_score": MIN_SCORE, "min_margin": MIN_MARGIN}
    return out


def check_two_sources(adata: ad.AnnData) -> None:
    X = adata.X
    assert np.all(X.data == np.rint(X.data)) and X.data.min() >= 0
    assert adata.obs_names.is_unique
    print(f"pbmc_two_sources: {adata.n_obs} cells x {adata.n_vars} genes")
    print(pd.crosstab(adata.obs["cell_type"], adata.obs["source"]).to_string())
    lognorm = np.log1p(X.toarray() / np.asarray(X.sum(1)) * 1e4)
    for source in adata.obs["source"].cat.categories:
        sub = (adata.obs["source"] == source).to_numpy()
        table = {}
        for gene in ["CD3E", "NKG7", "MS4A1", "LYZ", "FCER1A"]:
            g = adata.var_names.get_loc(gene)
            table[gene] = (
                pd.Series(lognorm[sub, g]).groupby(adata.obs["cell_type"].to_numpy()[sub], observed=True).mean()
            )
        print(f"mean log1p(CP10k, shared genes) per class, {source}:")
        print(pd.DataFrame(table).round(2).to_string())


# --------------------------------------------------------------------------------------------------
# pbmc_cite_seq.h5mu
# --------------------------------------------------------------------------------------------------


def clr(counts: np.ndarray) -> np.ndarray:
    """Per-cell centred log ratio: ``log1p(x)`` minus its mean over the cell's proteins."""
    lg = np.log1p(counts.astype(np.float64))
    return lg - lg.mean(1, keepdims=True)


def kde_valley(values: np.ndarray) -> float:
    """Deepest point of a Gaussian KDE (bandwidth KDE_BANDWIDTH) of ``values`` inside VALLEY_WINDOW."""
    grid = np.round(np.arange(VALLEY_WINDOW[0], VALLEY_WINDOW[1] + 1e-9, 0.01), 2)
    density = np.exp(-0.5 * ((grid[:, None] - values[None, :]) / KDE_BANDWIDTH) ** 2).sum(1)
    return float(grid[np.argmin(density)])


def protein_labels(clr_df: pd.DataFrame) -> tuple[np.ndarray, dict[str, float]]:
    """Gate CLR values: thresholds = KDE valleys of the values pooled over both runs."""
    thresholds = {p: kde_valley(clr_df[p].to_numpy()) for p in GATED}
    pos = {p: (clr_df[p] > t).to_numpy() for p, t in thresholds.items()}
    label = np.full(len(clr_df), "other", dtype=object)
    t = pos["CD3"]
    label[t & pos["CD4"] & ~pos["CD8a"]] = "CD4 T"
    label[t & pos["CD8a"] & ~pos["CD4"]] = "CD8 T"
    n_lineage = pos["CD14"].astype(int) + pos["CD19"].astype(int) + pos["CD56"].astype(int)
    single = ~t & (n_lineage == 1)  # CD3- and positive for exactly one of CD14, CD19, CD56
    label[single & pos["CD14"]] = "CD14 monocyte"
    label[single & pos["CD19"]] = "B cell"
    label[single & pos["CD56"]] = "NK cell"
    return label, thresholds


def build_cite_seq(shared_dir: Path):
    import mudata as md

    runs = {r: ad.read_h5ad(shared_dir / "data" / f) for r, f in RUNS.items()}
    first, second = runs.values()
    genes = [g for g in first.var_names if g in set(second.var_names)]
    prot_names = {r: [str(n).removesuffix("_TotalSeqB") for n in a.uns["protein_names"]] for r, a in runs.items()}
    proteins = [p for p in prot_names["pbmc5k"] if p in set(prot_names["pbmc10k"])]

    rna_X, prot_X, obs = [], [], []
    for r, a in runs.items():
        X = a[:, genes].X
        rna_X.append(sp.csr_matrix(X))
        pe = pd.DataFrame(np.asarray(a.obsm["protein_expression"]), columns=prot_names[r])
        prot_X.append(pe[proteins].to_numpy())
        obs.append(pd.DataFrame({"run": r}, index=r + "_" + a.obs_names.astype(str)))
    rna = sp.vstack(rna_X).tocsr()
    assert np.all(rna.data == np.rint(rna.data))
    keep = np.asarray(rna.sum(0)).ravel() > 0
    rna = rna[:, keep].astype(np.float32)
    rna.sort_indices()
    genes = list(np.asarray(genes)[keep])
    prot = np.vstack(prot_X).astype(np.float32)
    obs = pd.concat(obs)
    obs["run"] = pd.Categorical(obs["run"], categories=list(RUNS))

    clr_values = clr(prot)
    label, thresholds = protein_labels(pd.DataFrame(clr_values, columns=proteins))
    obs["protein_label"] = pd.Categorical(label, categories=PROTEIN_LABELS)

    rna_ad = ad.AnnData(X=rna, obs=obs.copy(), var=pd.DataFrame(index=pd.Index(genes, dtype=str)))
    prot_ad = ad.AnnData(X=prot, obs=obs.copy(), var=pd.DataFrame(index=pd.Index(proteins, dtype=str)))
    prot_ad.layers["clr"] = clr_values.astype(np.float32)
    with warnings.catch_warnings():  # CD4, CD14, CD19 and TIGIT are both gene and protein names
        warnings.filterwarnings("ignore", message="var_names are not unique", category=UserWarning)
        mdata = md.MuData({"rna": rna_ad, "prot": prot_ad})
    mdata.obs = obs.copy()
    mdata.uns["sources"] = {
        "pbmc5k": "10x Genomics pbmc_5k_protein_v3 via scvi-tools tests/test_data (BSD-3), 200 cells",
        "pbmc10k": "10x Genomics pbmc_10k_protein_v3 via scvi-tools tests/test_data (BSD-3), 200 cells",
    }
    mdata.uns["protein_gates"] = {
        "normalisation": "CLR per cell over the 14 proteins: log1p(x) - mean(log1p(x))",
        "thresholds": thresholds,
    }
    return mdata


def check_cite_seq(mdata) -> None:
    rna, prot = mdata["rna"], mdata["prot"]
    assert (rna.obs_names == prot.obs_names).all() and (mdata.obs_names == rna.obs_names).all()
    print(f"pbmc_cite_seq: {mdata.n_obs} cells; rna {rna.n_vars} genes, prot {prot.n_vars} proteins")
    print("proteins:", list(prot.var_names))
    print("thresholds (CLR):", mdata.uns["protein_gates"]["thresholds"])
    print(pd.crosstab(mdata.obs["protein_label"], mdata.obs["run"]).to_string())
    clr_df = pd.DataFrame(prot.layers["clr"], columns=prot.var_names, index=prot.obs_names)
    print("mean CLR per label:")
    print(clr_df[GATED + ["CD16"]].groupby(mdata.obs["protein_label"].to_numpy()).mean().round(2).to_string())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", type=Path, default=Path("wheels"), help="folder holding the celltypist wheel")
    parser.add_argument("--shared", type=Path, default=SHARED, help="shared folder with data/scvi_pbmc_*.h5ad")
    args = parser.parse_args(argv)

    two = build_two_sources(args.wheels)
    check_two_sources(two)
    two.write_h5ad(RES / "pbmc_two_sources.h5ad", compression="gzip")

    import mudata as md

    with md.set_options(pull_on_update=False):  # global obs = exactly run + protein_label, no "rna:run" copies
        cite = build_cite_seq(args.shared)
        check_cite_seq(cite)
        cite.write_h5mu(RES / "pbmc_cite_seq.h5mu", compression="gzip")
    for name in ["pbmc_two_sources.h5ad", "pbmc_cite_seq.h5mu"]:
        print(f"{name}: {(RES / name).stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
