"""The shipped integration data sets (two PBMC sources; CITE-seq) and the RNA + ATAC test fixture."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scgpt

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

TWO_SOURCES_COUNTS = {  # cell type -> (pbmc68k_reduced, celltypist_sample)
    "T cell": (192, 71),
    "NK cell": (31, 50),
    "B cell": (95, 14),
    "CD14 monocyte": (129, 380),
    "dendritic cell": (240, 0),
}
CITE_COUNTS = {  # protein label -> (pbmc5k, pbmc10k)
    "CD4 T": (88, 72),
    "CD8 T": (14, 29),
    "CD14 monocyte": (56, 52),
    "B cell": (14, 15),
    "NK cell": (12, 22),
    "other": (16, 10),
}
PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD15", "CD16", "CD19", "CD25", "CD45RA", "CD45RO", "CD56", "CD127"]
PROTEINS += ["PD-1", "TIGIT"]
GATES = {"CD3": 1.18, "CD4": 0.77, "CD8a": 1.96, "CD14": 1.88, "CD19": 1.07, "CD56": 1.26}


@pytest.fixture(scope="module")
def two():
    return scgpt.datasets.pbmc_two_sources()


@pytest.fixture(scope="module")
def cite():
    return scgpt.datasets.pbmc_cite_seq()


def _is_count_matrix(X) -> bool:
    values = X.data if sp.issparse(X) else np.asarray(X)
    return bool(np.all(values == np.rint(values)) and values.min() >= 0)


def _lognorm(X) -> np.ndarray:
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    return np.log1p(X / X.sum(1, keepdims=True) * 1e4)


# ---------------------------------------------------------------------------------------------- two sources


def test_two_sources_shape_and_counts(two):
    assert two.shape == (1202, 764)
    assert sp.isspmatrix_csr(two.X) and two.X.dtype == np.float32
    assert _is_count_matrix(two.X)
    by_source = {s: two[(two.obs["source"] == s).to_numpy()].X for s in ("pbmc68k_reduced", "celltypist_sample")}
    assert {s: int(X.sum()) for s, X in by_source.items()} == {"pbmc68k_reduced": 478221, "celltypist_sample": 653987}
    assert {s: int(X.max()) for s, X in by_source.items()} == {"pbmc68k_reduced": 259, "celltypist_sample": 1297}
    assert "TMBIM4-1" not in two.var_names and {"CD3E", "MS4A1", "LYZ", "NKG7"} <= set(two.var_names)


def test_two_sources_labels_per_source(two):
    obs = two.obs
    assert list(obs["source"].cat.categories) == ["pbmc68k_reduced", "celltypist_sample"]
    assert list(obs["cell_type"].cat.categories) == list(TWO_SOURCES_COUNTS)
    assert obs["cell_type"].notna().all()
    table = pd.crosstab(obs["cell_type"], obs["source"])
    for cell_type, (n68k, nct) in TWO_SOURCES_COUNTS.items():
        assert table.loc[cell_type, "pbmc68k_reduced"] == n68k
        assert table.loc[cell_type, "celltypist_sample"] == nct
    assert obs["source"].value_counts().to_dict() == {"pbmc68k_reduced": 687, "celltypist_sample": 515}
    origin = pd.crosstab(obs["label_origin"], obs["source"])
    assert (
        origin.loc["annotated", "pbmc68k_reduced"] == 687 and origin.loc["marker-derived", "celltypist_sample"] == 515
    )
    assert origin.loc["annotated", "celltypist_sample"] == 0 and origin.loc["marker-derived", "pbmc68k_reduced"] == 0
    # annotated labels: coarse classes of pbmc68k's bulk_labels, no CD34+ progenitors
    p68 = obs[obs["source"] == "pbmc68k_reduced"]
    assert "CD34+" not in set(p68["original_label"].astype(str))
    assert (p68.loc[p68["original_label"] == "CD8+ Cytotoxic T", "cell_type"] == "T cell").all()
    assert (p68.loc[p68["original_label"] == "Dendritic", "cell_type"] == "dendritic cell").all()
    assert obs.loc[obs["source"] == "celltypist_sample", "original_label"].isna().all()


def test_two_sources_obs_names_unique_and_prefixed(two):
    assert two.obs_names.is_unique and two.var_names.is_unique
    sources = two.obs["source"].astype(str).to_numpy()
    assert all(name.startswith(source + "_") for name, source in zip(two.obs_names, sources))
    assert "celltypist_sample_Cell_1" in two.obs_names and "pbmc68k_reduced_AAAGCCTGGCTAAC-1" in two.obs_names


def test_marker_derived_labels_follow_markers(two):
    ct = two[(two.obs["source"] == "celltypist_sample").to_numpy()]
    lognorm = _lognorm(ct.X)
    labels = ct.obs["cell_type"].to_numpy()

    def mean(gene, mask):
        return lognorm[mask, ct.var_names.get_loc(gene)].mean()

    t = labels == "T cell"
    assert mean("CD3E", t) > 1.5 and mean("CD3E", ~t) < 0.15  # 1.68 vs 0.10
    assert (ct[t].X[:, ct.var_names.get_loc("CD3E")].toarray() > 0).mean() > 0.4
    nk, b, mono = labels == "NK cell", labels == "B cell", labels == "CD14 monocyte"
    assert mean("NKG7", nk) > 3 * max(mean("NKG7", ~nk), 0.5)
    assert mean("MS4A1", b) > 4 and mean("MS4A1", ~b) < 0.2
    assert mean("LYZ", mono) > mean("LYZ", ~mono) + 2
    assert mean("CD3E", nk) < 0.3  # NK cells were scored against CD3


def test_annotated_labels_agree_with_markers(two):
    p68 = two[(two.obs["source"] == "pbmc68k_reduced").to_numpy()]
    lognorm = _lognorm(p68.X)
    labels = p68.obs["cell_type"].to_numpy()
    cd3e = lognorm[:, p68.var_names.get_loc("CD3E")]
    assert cd3e[labels == "T cell"].mean() > 3 * cd3e[labels != "T cell"].mean()


def test_two_sources_fresh_object_each_call(two):
    again = scgpt.datasets.pbmc_two_sources()
    assert again is not two
    again.obs["scratch"] = 1
    again.X.data[:] = 0
    assert "scratch" not in two.obs and two.X.sum() > 0


# ---------------------------------------------------------------------------------------------- CITE-seq


def test_cite_seq_modalities_and_counts(cite):
    import mudata as md

    assert isinstance(cite, md.MuData)
    assert set(cite.mod) == {"rna", "prot"}
    rna, prot = cite["rna"], cite["prot"]
    assert cite.n_obs == 400 and rna.shape == (400, 14520) and prot.shape == (400, 14)
    assert list(prot.var_names) == PROTEINS
    assert sp.isspmatrix_csr(rna.X) and _is_count_matrix(rna.X) and _is_count_matrix(prot.X)
    assert np.asarray(rna.X.sum(0)).ravel().min() > 0  # genes with no count were dropped
    assert int(rna.X.sum()) == 2258575 and int(prot.X.sum()) == 1571424
    assert int(rna.X.max()) == 3117 and int(prot.X.max()) == 10279


def test_cite_seq_paired_and_unique_names(cite):
    rna, prot = cite["rna"], cite["prot"]
    assert cite.obs_names.is_unique
    assert (rna.obs_names == prot.obs_names).all() and (cite.obs_names == rna.obs_names).all()
    assert rna.var_names.is_unique and prot.var_names.is_unique
    assert (cite.obs_names.str.split("_").str[0] == cite.obs["run"].astype(str).to_numpy()).all()
    for mod in (rna, prot):
        assert (mod.obs["run"].to_numpy() == cite.obs["run"].to_numpy()).all()
    assert (rna.obs["protein_label"].to_numpy() == cite.obs["protein_label"].to_numpy()).all()
    assert list(cite.obs.columns) == ["run", "protein_label"]  # no "rna:run"-style copies


def test_cite_seq_labels_per_run(cite):
    obs = cite.obs
    assert list(obs["run"].cat.categories) == ["pbmc5k", "pbmc10k"]
    assert obs["run"].value_counts().to_dict() == {"pbmc5k": 200, "pbmc10k": 200}
    assert list(obs["protein_label"].cat.categories) == list(CITE_COUNTS)
    table = pd.crosstab(obs["protein_label"], obs["run"])
    for label, (n5k, n10k) in CITE_COUNTS.items():
        assert table.loc[label, "pbmc5k"] == n5k and table.loc[label, "pbmc10k"] == n10k


def test_cite_seq_gates_reproduce_labels(cite):
    prot = cite["prot"]
    assert cite.uns["protein_gates"]["thresholds"] == GATES
    lg = np.log1p(np.asarray(prot.X, dtype=np.float64))
    clr = lg - lg.mean(1, keepdims=True)
    np.testing.assert_allclose(prot.layers["clr"], clr, atol=1e-5)
    pos = {p: clr[:, prot.var_names.get_loc(p)] > t for p, t in GATES.items()}
    label = cite.obs["protein_label"].to_numpy()
    assert ((label == "CD4 T") == (pos["CD3"] & pos["CD4"] & ~pos["CD8a"])).all()
    assert ((label == "CD8 T") == (pos["CD3"] & pos["CD8a"] & ~pos["CD4"])).all()
    single = ~pos["CD3"] & (pos["CD14"].astype(int) + pos["CD19"] + pos["CD56"] == 1)
    assert ((label == "B cell") == (single & pos["CD19"])).all()
    assert ((label == "NK cell") == (single & pos["CD56"])).all()
    assert ((label == "CD14 monocyte") == (single & pos["CD14"])).all()


def test_cite_seq_protein_labels_follow_proteins(cite):
    prot = cite["prot"]
    label = cite.obs["protein_label"].to_numpy()
    raw = pd.DataFrame(np.asarray(prot.X), columns=prot.var_names)
    clr = pd.DataFrame(prot.layers["clr"], columns=prot.var_names)
    cd4, cd8 = label == "CD4 T", label == "CD8 T"
    assert raw.loc[cd4, "CD4"].median() > 20 * raw.loc[cd8, "CD4"].median()  # 1501.5 vs 22
    assert clr.loc[cd4, "CD4"].min() > clr.loc[cd8, "CD4"].max()
    assert raw.loc[cd8, "CD8a"].median() > 100 * raw.loc[cd4, "CD8a"].median()  # 3004 vs 9
    means = clr.groupby(label).mean()
    assert means.loc["B cell", "CD19"] > 3 and means.loc["CD14 monocyte", "CD14"] > 3
    assert means.loc["NK cell", "CD56"] > 2 and means.loc["NK cell", "CD16"] > 2  # CD56+ NK are mostly CD16+
    # RNA agrees with the protein gates
    rna = cite["rna"]
    lognorm = _lognorm(rna.X)
    cd8a_rna = lognorm[:, rna.var_names.get_loc("CD8A")]
    assert cd8a_rna[cd8].mean() > 5 * cd8a_rna[cd4].mean()
    ms4a1 = lognorm[:, rna.var_names.get_loc("MS4A1")]
    assert ms4a1[label == "B cell"].mean() > 5 * ms4a1[label != "B cell"].mean()


def test_cite_seq_fresh_object_each_call(cite):
    again = scgpt.datasets.pbmc_cite_seq()
    assert again is not cite
    again.obs["scratch"] = 1
    again["prot"].X[:] = 0
    assert "scratch" not in cite.obs and cite["prot"].X.sum() > 0


# ---------------------------------------------------------------------------------------------- fixture


def test_rna_atac_fixture_reads():
    import mudata as md

    # written by an old muon: no MuData header and no anndata encoding metadata, so reading it warns
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mdata = md.read_h5mu(FIXTURES / "muon_rna_atac_1000cells.h5mu")
    messages = {str(w.message) for w in caught}
    assert any("not created by muon/mudata" in m for m in messages)
    assert {type(w.message).__name__ for w in caught} <= {"UserWarning", "OldFormatWarning"}
    assert set(mdata.mod) == {"rna", "atac"}
    rna, atac = mdata["rna"], mdata["atac"]
    assert mdata.n_obs == 1000 and rna.shape == (1000, 45) and atac.shape == (1000, 174)
    assert (rna.obs_names == atac.obs_names).all() and rna.obs_names.is_unique
    assert _is_count_matrix(rna.X) and _is_count_matrix(atac.X)
    assert int(rna.X.sum()) == 63338 and int(atac.X.sum()) == 43888
    assert atac.var_names[0] == "chr1:100350982-100353664" and "CD2" in rna.var_names
