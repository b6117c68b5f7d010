"""scgpt.data perturbation conventions: label parsing, GEARS converters, seeded perturbation splits."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scgpt.data._perturbation import (
    GEARS_DE_KEYS,
    from_gears,
    log_normalize_counts,
    parse_perturbation,
    perturbation_label,
    perturbation_labels,
    split_perturbations,
    to_gears,
)


def _screen(seed: int = 0, n_per: int = 12) -> ad.AnnData:
    """Counts for control, A, B and A+B over 6 genes; A raises g0 x8, B silences g1, g5 is zero everywhere."""
    rng = np.random.default_rng(seed)
    base = np.array([5.0, 20.0, 10.0, 10.0, 3.0, 0.0])
    effects = {"control": {}, "A": {0: 8.0}, "B": {1: 0.0}, "A+B": {0: 8.0, 1: 0.0}}
    blocks, labels = [], []
    for label, eff in effects.items():
        mu = base.copy()
        for g, f in eff.items():
            mu[g] *= f
        blocks.append(rng.poisson(mu, size=(n_per, len(base))))
        labels += [label] * n_per
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(
        X=sp.csr_matrix(np.vstack(blocks).astype(np.float32)),
        obs=obs,
        var=pd.DataFrame(index=[f"g{i}" for i in range(len(base))]),
    )


# ---------------------------------------------------------------------------- labels
def test_parse_perturbation():
    assert parse_perturbation("A+B") == ("A", "B")
    assert parse_perturbation(" JAK2 ") == ("JAK2",)
    assert parse_perturbation("control") == ()
    assert parse_perturbation("ctrl", control="ctrl") == ()
    assert parse_perturbation(["KLF1", "MAP2K6"]) == ("KLF1", "MAP2K6")
    assert perturbation_label(["KLF1", "MAP2K6"]) == "KLF1+MAP2K6"
    assert perturbation_label([]) == "control"
    assert perturbation_label(" A+B ") == "A+B"


@pytest.mark.parametrize("bad", ["", "A+", "A++B", "+A", "A+A", "A+control", "A+ctrl"])
def test_parse_perturbation_rejects(bad):
    with pytest.raises(ValueError, match="Invalid perturbation label"):
        parse_perturbation(bad)


def test_perturbation_labels_errors():
    adata = _screen()
    with pytest.raises(KeyError, match="'condition' is not a column"):
        perturbation_labels(adata, perturbation_key="condition")
    with pytest.raises(ValueError, match="no control cells.*'ctrl'"):
        perturbation_labels(adata, control="ctrl")
    gears_style = adata.copy()
    gears_style.obs["perturbation"] = gears_style.obs["perturbation"].replace({"control": "ctrl"})
    with pytest.raises(ValueError, match="from_gears"):
        perturbation_labels(gears_style)
    holes = adata.copy()
    holes.obs.loc["c3", "perturbation"] = np.nan
    with pytest.raises(ValueError, match="1 cells have no label"):
        perturbation_labels(holes)
    malformed = adata.copy()
    malformed.obs.loc["c3", "perturbation"] = "A++B"
    with pytest.raises(ValueError, match="Invalid perturbation label 'A\\+\\+B'"):
        perturbation_labels(malformed)


# ---------------------------------------------------------------------------- GEARS
def test_to_gears_schema():
    adata = _screen()
    g = to_gears(adata, cell_type="K562")
    assert list(g.obs["condition"].cat.categories) == sorted(["ctrl", "A+ctrl", "B+ctrl", "A+B"])
    first = g.obs.groupby("perturbation", observed=True).first()
    assert first.loc["A", "condition"] == "A+ctrl"
    assert first.loc["A+B", "condition"] == "A+B"
    assert first.loc["control", "condition"] == "ctrl"
    assert first.loc["A", "condition_name"] == "K562_A+ctrl_1+1"
    assert first.loc["A+B", "condition_name"] == "K562_A+B_1+1"
    assert first.loc["control", "condition_name"] == "K562_ctrl_1"
    assert first.loc["control", "dose_val"] == "1" and first.loc["B", "dose_val"] == "1+1"
    assert g.obs["control"].sum() == 12 and set(g.obs["control"]) == {0, 1}
    assert list(g.var["gene_name"]) == list(adata.var_names)
    assert (g.obs["cell_type"] == "K562").all()
    # X = log1p(normalize_total 1e4) of the counts, counts kept
    counts = adata.X.toarray().astype(np.float64)
    expected = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(g.X.toarray(), expected, rtol=1e-6)
    np.testing.assert_array_equal(g.layers["counts"].toarray(), counts)
    assert "log1p" in g.uns
    # DE keys of every non-control condition
    names = {"K562_A+ctrl_1+1", "K562_B+ctrl_1+1", "K562_A+B_1+1"}
    for key in GEARS_DE_KEYS:
        assert set(g.uns[key]) == names
    assert g.uns["rank_genes_groups_cov_all"]["K562_A+ctrl_1+1"][0] == "g0"
    assert g.uns["rank_genes_groups_cov_all"]["K562_B+ctrl_1+1"][0] == "g1"
    assert len(g.uns["rank_genes_groups_cov_all"]["K562_A+B_1+1"]) == 6
    # B silences g1: a dropout (zero in B, non-zero in control); g5 is zero in both (a true zero)
    assert list(g.uns["non_zeros_gene_idx"]["K562_B+ctrl_1+1"]) == [0, 2, 3, 4]
    assert list(g.uns["non_dropout_gene_idx"]["K562_B+ctrl_1+1"]) == [0, 2, 3, 4, 5]
    assert "g1" not in g.uns["top_non_dropout_de_20"]["K562_B+ctrl_1+1"]
    assert len(g.uns["top_non_dropout_de_20"]["K562_A+ctrl_1+1"]) == 6  # at most 20, all genes here


def test_to_gears_cell_type_column_and_default():
    adata = _screen()
    assert (to_gears(adata, compute_de=False).obs["cell_type"] == "cell").all()
    adata.obs["line"] = "RPE1"
    g = to_gears(adata, cell_type="line", compute_de=False)
    assert (g.obs["cell_type"] == "RPE1").all()
    assert not any(k in g.uns for k in GEARS_DE_KEYS)


def test_to_gears_rejects_non_counts_and_warns_on_triples():
    adata = _screen()
    logged = adata.copy()
    logged.X = log_normalize_counts(logged.X).astype(np.float32)
    with pytest.raises(ValueError, match="expects raw counts"):
        to_gears(logged)
    triple = adata.copy()
    triple.obs["perturbation"] = triple.obs["perturbation"].replace({"A+B": "A+B+C"})
    with pytest.warns(UserWarning, match="more than two genes"):
        g = to_gears(triple, compute_de=False)
    assert "A+B+C" in set(g.obs["condition"])


def _gears_file(tmp_path) -> ad.AnnData:
    """A small AnnData with GEARS' schema, written and read back as a perturb_processed.h5ad would be."""
    rng = np.random.default_rng(3)
    conditions = ["ctrl"] * 5 + ["KLF1+ctrl"] * 4 + ["ctrl+MAP2K6"] * 3 + ["KLF1+MAP2K6"] * 3
    counts = rng.poisson(4.0, size=(len(conditions), 5)).astype(np.float64)
    X = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    obs = pd.DataFrame(
        {"condition": conditions, "cell_type": "K562"}, index=[f"AAAC-{i}" for i in range(len(conditions))]
    )
    obs["condition_name"] = "K562_" + obs["condition"] + "_" + np.where(obs["condition"] == "ctrl", "1", "1+1")
    var = pd.DataFrame(
        {"gene_name": ["KLF1", "MAP2K6", "GATA1", "HBG1", "TAL1"]}, index=[f"ENSG0000000000{i}" for i in range(5)]
    )
    g = ad.AnnData(X=sp.csr_matrix(X.astype(np.float32)), obs=obs, var=var)
    g.uns["rank_genes_groups_cov_all"] = {"K562_KLF1+ctrl_1+1": np.array(var.index[:3])}
    g.write_h5ad(tmp_path / "perturb_processed.h5ad")
    return ad.read_h5ad(tmp_path / "perturb_processed.h5ad")


def test_from_gears(tmp_path):
    g = _gears_file(tmp_path)
    ours = from_gears(g)
    counts = ours.obs["perturbation"].value_counts().to_dict()
    assert counts == {"control": 5, "KLF1": 4, "MAP2K6": 3, "KLF1+MAP2K6": 3}
    assert list(ours.var_names) == ["KLF1", "MAP2K6", "GATA1", "HBG1", "TAL1"]
    assert ours.var["gears_var_name"].iloc[0] == "ENSG00000000000"
    assert ours.uns["log1p"] == {"base": None}  # X is GEARS' log data, marked as such
    np.testing.assert_array_equal(ours.X.toarray(), g.X.toarray())
    assert "rank_genes_groups_cov_all" in ours.uns
    ours_ctrl = from_gears(g, perturbation_key="pert", control="NT")
    assert set(ours_ctrl.obs["pert"]) == {"NT", "KLF1", "MAP2K6", "KLF1+MAP2K6"}


def test_from_gears_errors(tmp_path):
    g = _gears_file(tmp_path)
    bare = ad.AnnData(X=g.X, obs=g.obs.drop(columns="condition"), var=g.var)
    with pytest.raises(KeyError, match="'condition' is not a column"):
        from_gears(bare)
    no_ctrl = g[g.obs["condition"] != "ctrl"].copy()
    with pytest.raises(ValueError, match="no control cells"):
        from_gears(no_ctrl)


def test_gears_round_trip(tmp_path):
    adata = _screen(seed=5)
    adata.obs["batch"] = "b1"
    g = to_gears(adata)
    g.write_h5ad(tmp_path / "g.h5ad")
    back = from_gears(ad.read_h5ad(tmp_path / "g.h5ad"))
    np.testing.assert_array_equal(back.X.toarray(), adata.X.toarray())
    assert list(back.obs["perturbation"].astype(str)) == list(adata.obs["perturbation"])
    assert list(back.var_names) == list(adata.var_names)
    assert list(back.obs_names) == list(adata.obs_names)
    assert (back.obs["batch"] == "b1").all()
    assert "log1p" not in back.uns  # counts again


# ---------------------------------------------------------------------------- splits
SINGLES = [f"G{i}" for i in range(10)]
COMBOS = ["G0+G1", "G2+G3", "G4+G5", "G6+G7", "G8+G9", "G0+G5", "G1+G6", "G2+G7", "G3+G8", "G4+G9", "G0+G9", "G1+G2"]
LABELS = ["control", *SINGLES, *COMBOS]


def _genes(labels):
    return {g for s in labels for g in parse_perturbation(s)}


def test_single_split_reproducible_disjoint_whole_targets():
    labels = np.repeat(["control", *SINGLES], 3)  # repeats as in an obs column
    a = split_perturbations(labels, seed=7)
    b = split_perturbations(list(reversed(labels)), seed=7)
    assert (a.train, a.val, a.test) == (b.train, b.val, b.test)
    c = split_perturbations(labels, seed=8)
    assert a.test != c.test
    train, val, test = a
    assert len(test) == 2 and len(val) == 1 and len(train) == 7  # 20% of 10 genes, 10% of the other 8
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert sorted(train + val + test) == SINGLES
    assert set(a.subgroup.values()) == {"unseen_single"}


def test_single_split_holds_out_combinations_with_test_genes():
    split = split_perturbations(LABELS, mode="single", seed=1, test_size=0.2, val_size=0.0)
    test_genes = {s for s in split.test if "+" not in s}
    assert _genes(split.train).isdisjoint(test_genes)
    assert all(_genes([s]) & test_genes for s in split.test)
    assert sorted(split.train + split.test) == sorted(LABELS[1:])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_combo_split_has_every_category(seed):
    split = split_perturbations(LABELS, mode="combo", seed=seed, test_size=0.3)
    assert split == split_perturbations(LABELS, mode="combo", seed=seed, test_size=0.3)
    assert not set(split.train) & set(split.test) and not set(split.val) & set(split.test)
    seen = _genes(split.train)
    for label in split.test:
        genes = parse_perturbation(label)
        n_seen = sum(g in seen for g in genes)
        expected = ("seen_single" if n_seen else "unseen_single") if len(genes) == 1 else f"combo_seen{n_seen}"
        assert split.subgroup[label] == expected
    assert {"combo_seen0", "combo_seen1", "combo_seen2"} <= set(split.subgroup.values())
    assert sorted(split.train + split.val + split.test + split.unused) == sorted(LABELS[1:])


@pytest.mark.parametrize("n_seen", [0, 1, 2])
def test_combo_split_one_category(n_seen):
    split = split_perturbations(LABELS, mode="combo", seed=0, n_seen=n_seen, test_size=0.3)
    assert split.test and {split.subgroup[s] for s in split.test} == {f"combo_seen{n_seen}"}
    seen = _genes(split.train)
    assert all(sum(g in seen for g in parse_perturbation(s)) == n_seen for s in split.test)
    assert sorted(split.train + split.val + split.test + split.unused) == sorted(LABELS[1:])
    if n_seen == 2:
        assert split.unused == [] and set(SINGLES) <= set(split.train)


def test_split_errors():
    with pytest.raises(ValueError, match="mode must be"):
        split_perturbations(LABELS, mode="double")
    with pytest.raises(ValueError, match="needs combinations"):
        split_perturbations(SINGLES, mode="combo")
    with pytest.raises(ValueError, match="n_seen applies to mode='combo'"):
        split_perturbations(LABELS, n_seen=1)
    with pytest.raises(ValueError, match="test_size must be in"):
        split_perturbations(LABELS, test_size=1.5)
    with pytest.raises(ValueError, match="no perturbation labels"):
        split_perturbations(["control"])
    with pytest.raises(ValueError, match="no draw of"):
        split_perturbations(["A", "B", "A+B"], mode="combo", n_seen=0, test_size=0.3, max_tries=5)
