"""scgpt.tl.evaluate_grn (BEELINE metrics, baselines) and scgpt.tl.enrich_programs (hypergeometric test, BH FDR)."""

from __future__ import annotations

import itertools

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from scipy.stats import hypergeom, rankdata, spearmanr

from scgpt.tl._grn_eval import (
    EXPECTED_RANDOM,
    _coexpression,
    _rank_columns,
    enrich_programs,
    evaluate_grn,
    expected_average_precision,
    precision_at_k,
)

GENES = list("ABCDE")


def _net(pairs: dict[tuple[str, str], float]) -> pd.DataFrame:
    return pd.DataFrame([(s, t, w) for (s, t), w in pairs.items()], columns=["source", "target", "weight"])


@pytest.fixture
def reference() -> pd.DataFrame:
    """3 TFs (A, B, C) among 5 genes: 3 x 4 = 12 candidate pairs, 4 true (density 1/3).

    X -> A (X not in the gene set), the self-loop C -> C and the duplicate A -> B fall out of the universe.
    """
    pairs = [("A", "B"), ("A", "D"), ("B", "E"), ("C", "A"), ("X", "A"), ("C", "C"), ("A", "B")]
    return pd.DataFrame(pairs, columns=["source", "target"]).assign(weight=[1, -1, 1, 1, 1, 1, -1])


def _all_pairs(sources=("A", "B", "C")) -> list[tuple[str, str]]:
    return [(s, t) for s in sources for t in GENES if s != t]


# ------------------------------------------------------------------------------------------- exact metrics
def test_hand_computed_example(reference):
    # ranked: A->B (true), B->C, B->E (true), C->D, A->E; the 7 unlisted pairs (2 true: A->D, C->A) tie below.
    # D->A is outside the universe (D is not a TF of the reference), A->A a self-pair.
    edges = _net({("A", "B"): 0.9, ("B", "C"): 0.8, ("B", "E"): 0.7, ("C", "D"): 0.6, ("A", "E"): 0.5})
    edges = pd.concat([edges, _net({("D", "A"): 0.95, ("A", "A"): 2.0})], ignore_index=True)
    res = evaluate_grn(edges=edges, reference=reference, baselines=())
    row = res.loc["scGPT"]
    assert row["n_edges"] == 5 and row["n_true"] == 4
    assert row["density"] == pytest.approx(1 / 3)
    # AP = 1/4 * 1 (rank 1) + 1/4 * 2/3 (rank 3) + 2/4 * 4/12 (the tied block, at its end) = 7/12
    assert row["auprc"] == pytest.approx(7 / 12)
    assert row["auprc_ratio"] == pytest.approx(7 / 4)
    # top 4: A->B, B->C, B->E, C->D -> 2 true
    assert row["precision_at_k"] == pytest.approx(0.5)
    assert row["epr"] == pytest.approx(1.5)
    # positives beat 8 + 7 negatives; the 2 unlisted positives tie with the 5 unlisted negatives: (15 + 5) / 32
    assert row["auroc"] == pytest.approx(20 / 32)
    assert list(res.index) == ["scGPT"]


def test_tfs_only_false_widens_the_sources(reference):
    edges = _net({("A", "B"): 0.9, ("D", "A"): 0.95})
    res = evaluate_grn(edges=edges, reference=reference, baselines=(), tfs_only=False, genes=GENES, name="net")
    assert res.loc["net", "n_edges"] == 2 and res.loc["net", "n_true"] == 4
    assert res.loc["net", "density"] == pytest.approx(4 / 20)


def test_perfect_predictor_reaches_one_over_density(reference):
    edges = _net({("A", "B"): 1.0, ("A", "D"): 1.0, ("B", "E"): 1.0, ("C", "A"): 1.0})
    row = evaluate_grn(edges=edges, reference=reference, baselines=(), genes=GENES).loc["scGPT"]
    assert row["auprc"] == pytest.approx(1.0)
    assert row["auprc_ratio"] == pytest.approx(1 / row["density"]) == pytest.approx(3.0)
    assert row["epr"] == pytest.approx(1 / row["density"])
    assert row["auroc"] == pytest.approx(1.0)


def test_inverted_predictor_is_worse_than_random(reference):
    true = {("A", "B"), ("A", "D"), ("B", "E"), ("C", "A")}
    # every false pair above every true one, all weights distinct: true pairs at ranks 9-12
    order = sorted(_all_pairs(), key=lambda p: p in true)
    edges = _net({p: 12.0 - i for i, p in enumerate(order)})
    res = evaluate_grn(edges=edges, reference=reference, genes=GENES)
    row, expected = res.loc["scGPT"], res.loc[EXPECTED_RANDOM]
    assert row["epr"] == 0.0 and row["auroc"] == 0.0
    assert row["auprc"] == pytest.approx((1 / 9 + 2 / 10 + 3 / 11 + 4 / 12) / 4)
    assert row["auprc_ratio"] < 1 < expected["auprc_ratio"]


def test_signed_false_ranks_by_absolute_weight(reference):
    pairs = {("A", "B"): -0.9, ("B", "C"): 0.8, ("B", "E"): -0.7, ("C", "D"): 0.6, ("A", "E"): -0.5}
    as_given = evaluate_grn(edges=_net(pairs), reference=reference, baselines=(), genes=GENES).loc["scGPT"]
    absolute = evaluate_grn(edges=_net(pairs), reference=reference, baselines=(), genes=GENES, signed=False).loc[
        "scGPT"
    ]
    assert absolute["auprc"] == pytest.approx(7 / 12) and absolute["epr"] == pytest.approx(1.5)
    assert as_given["auprc"] != pytest.approx(7 / 12)


def test_ties_at_the_cut_count_pro_rata(reference):
    # 1 pair above the cut (true), a block of 4 tied at the cut with 1 true; k = 4 takes 3 of the 4
    edges = _net({("A", "B"): 1.0, ("B", "C"): 0.5, ("B", "E"): 0.5, ("C", "D"): 0.5, ("A", "E"): 0.5})
    row = evaluate_grn(edges=edges, reference=reference, baselines=(), genes=GENES).loc["scGPT"]
    assert row["precision_at_k"] == pytest.approx((1 + 3 * 1 / 4) / 4)
    assert row["epr"] == pytest.approx(3 * (1 + 3 / 4) / 4)
    # fewer listed pairs than k: the unlisted block (11 pairs, 3 true) fills the cut at random
    row = evaluate_grn(edges=_net({("A", "B"): 1.0}), reference=reference, baselines=(), genes=GENES).loc["scGPT"]
    assert row["precision_at_k"] == pytest.approx((1 + 3 * 3 / 11) / 4)


def test_precision_at_k_does_not_depend_on_the_order_of_ties():
    y = np.array([1, 0, 0, 1, 0, 1], dtype=bool)
    s = np.array([3, 2, 2, 2, 2, 1.0])
    for perm in itertools.permutations(range(6)):
        p = list(perm)
        assert precision_at_k(y[p], s[p], 3) == pytest.approx((1 + 2 * 1 / 4) / 3)


@pytest.mark.parametrize(("n", "r"), [(6, 1), (6, 2), (7, 3), (8, 8)])
def test_expected_average_precision_is_exact(n, r):
    aps = []
    for true_ranks in itertools.combinations(range(1, n + 1), r):
        aps.append(np.mean([(i + 1) / rank for i, rank in enumerate(true_ranks)]))
    assert expected_average_precision(n, r) == pytest.approx(np.mean(aps))


def test_random_baseline_is_reproducible_by_seed(reference):
    edges = _net({("A", "B"): 1.0})
    a = evaluate_grn(edges=edges, reference=reference, genes=GENES, seed=3)
    b = evaluate_grn(edges=edges, reference=reference, genes=GENES, seed=3)
    pd.testing.assert_series_equal(a.loc["random"], b.loc["random"])
    aucs = {
        evaluate_grn(edges=edges, reference=reference, genes=GENES, seed=s).loc["random", "auroc"] for s in range(5)
    }
    assert len(aucs) > 1
    assert list(a.index) == ["scGPT", "random", EXPECTED_RANDOM]
    assert a.loc[EXPECTED_RANDOM, "epr"] == 1.0 and a.loc[EXPECTED_RANDOM, "auroc"] == 0.5
    assert a.loc[EXPECTED_RANDOM, "auprc"] == pytest.approx(expected_average_precision(12, 4))
    assert a.loc["random", "n_edges"] == 12


# ------------------------------------------------------------------------------------ co-expression baselines
NET_GENES = ["TF1", "TF2", "G1", "G2", "G3", "G4"]


@pytest.fixture(scope="module")
def counts() -> ad.AnnData:
    """300 cells: TF1 and G1 share a cell factor, TF2 and G2 another; G3, G4 and 4 more genes are independent."""
    rng = np.random.default_rng(0)
    n = 300
    z1, z2 = rng.lognormal(0, 0.8, n), rng.lognormal(0, 0.8, n)
    lib = rng.uniform(0.5, 2.0, n)
    rates = np.column_stack([4 * z1, 4 * z2, 4 * z1, 4 * z2, *(np.full(n, 3.0) for _ in range(6))]) * lib[:, None]
    X = rng.poisson(rates).astype(np.float32)
    names = [*NET_GENES, "O1", "O2", "O3", "O4"]
    return ad.AnnData(X=sp.csr_matrix(X), var=pd.DataFrame(index=names), obs=pd.DataFrame(index=map(str, range(n))))


@pytest.fixture(scope="module")
def lognorm(counts) -> ad.AnnData:
    out = counts.copy()
    out.X = out.X.astype(np.float64)
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out


CO_REF = pd.DataFrame({"source": ["TF1", "TF2"], "target": ["G1", "G2"]})
SOME_EDGES = _net({("TF1", "G3"): 1.0, ("TF2", "G1"): 0.5})


def test_coexpression_recovers_the_planted_pairs(counts):
    res = evaluate_grn(counts, SOME_EDGES, reference=CO_REF, genes=NET_GENES)
    assert list(res.index) == ["scGPT", "random", "pearson", "spearman", EXPECTED_RANDOM]
    for method in ("pearson", "spearman"):
        row = res.loc[method]
        assert row["n_true"] == 2 and row["n_edges"] == 10
        assert row["precision_at_k"] == 1.0 and row["auroc"] == 1.0
        assert row["epr"] == pytest.approx(5.0) and row["auprc_ratio"] == pytest.approx(5.0)


def test_coexpression_matches_numpy_and_scipy(lognorm):
    genes, sources = pd.Index(NET_GENES), pd.Index(["TF1", "TF2"])
    corr = _coexpression(lognorm, genes, sources, layer=None, methods=["pearson", "spearman"])
    dense = lognorm[:, NET_GENES].X.toarray()
    np.testing.assert_allclose(corr["pearson"], np.corrcoef(dense.T)[:2], atol=1e-12)
    # values equal but for the last bits (2/100 and 1/50 normalised) are ties: round before scipy ranks them
    np.testing.assert_allclose(corr["spearman"], spearmanr(dense.round(9)).statistic[:2], atol=1e-12)


def test_counts_and_log_normalised_input_give_the_same_baselines(counts, lognorm):
    a = evaluate_grn(counts, SOME_EDGES, reference=CO_REF, genes=NET_GENES)
    b = evaluate_grn(lognorm, SOME_EDGES, reference=CO_REF, genes=NET_GENES)
    pd.testing.assert_frame_equal(a, b)
    genes, sources = pd.Index(NET_GENES), pd.Index(["TF1", "TF2"])
    ca = _coexpression(counts, genes, sources, layer=None, methods=["pearson", "spearman"])
    cb = _coexpression(lognorm, genes, sources, layer=None, methods=["pearson", "spearman"])
    for m in ("pearson", "spearman"):
        np.testing.assert_allclose(ca[m], cb[m], atol=1e-10)
    # the counts in a layer, dense: same numbers
    dense = counts.copy()
    dense.layers["counts"] = dense.X.toarray()
    dense.X = None
    c = evaluate_grn(dense, SOME_EDGES, reference=CO_REF, genes=NET_GENES, layer="counts")
    pd.testing.assert_frame_equal(a, c)


def test_spearman_is_invariant_to_monotone_transforms(lognorm):
    genes, sources = pd.Index(NET_GENES), pd.Index(["TF1", "TF2"])
    bent = lognorm.copy()
    bent.X = bent.X.power(3) + bent.X
    a = _coexpression(lognorm, genes, sources, layer=None, methods=["pearson", "spearman"])
    b = _coexpression(bent, genes, sources, layer=None, methods=["pearson", "spearman"])
    np.testing.assert_allclose(a["spearman"], b["spearman"], atol=1e-12)
    assert not np.allclose(a["pearson"], b["pearson"], atol=1e-3)


def test_sparse_ranks_are_shifted_ranks():
    X = np.array([[0, 2.0, -1], [1, 0, 0], [1, 0, 3], [0, 5, -1], [2, 0, 0]])
    R = _rank_columns(sp.csc_matrix(X)).toarray()
    full = rankdata(X, axis=0)
    np.testing.assert_allclose(R[X == 0], 0.0)
    np.testing.assert_allclose(R - full, np.broadcast_to((R - full)[0], R.shape))  # a shift per column


def test_genes_missing_from_adata_are_left_out_with_a_warning(counts):
    with pytest.warns(UserWarning, match=r"1 of 7 genes are not in adata.var_names \(NOPE\)"):
        res = evaluate_grn(counts, SOME_EDGES, reference=CO_REF, genes=[*NET_GENES, "NOPE"])
    assert res.loc["pearson", "n_edges"] == 10


def test_key_added_stores_results_and_params(counts):
    adata = counts.copy()
    res = evaluate_grn(
        adata, SOME_EDGES, reference=CO_REF, genes=NET_GENES, baselines=["pearson"], key_added="grn_eval"
    )
    entry = adata.uns["grn_eval"]
    pd.testing.assert_frame_equal(entry["results"], res)
    assert entry["params"]["baselines"] == ["pearson"] and entry["params"]["tfs_only"] is True
    assert entry["universe"] == {"n_sources": 2, "n_genes": 6, "n_pairs": 10, "n_true": 2}
    assert entry["evaluator"] == "scgpt.tl.evaluate_grn" and entry["params"]["edges"] == "DataFrame (2 edges)"
    assert list(res.index) == ["scGPT", "pearson"]


def test_without_adata_the_default_baselines_drop_coexpression(reference):
    res = evaluate_grn(edges=_net({("A", "B"): 1.0}), reference=reference, genes=GENES)
    assert list(res.index) == ["scGPT", "random", EXPECTED_RANDOM]
    with pytest.raises(ValueError, match="need the cells' expression; pass `adata`"):
        evaluate_grn(edges=_net({("A", "B"): 1.0}), reference=reference, baselines=["spearman"])


# ------------------------------------------------------------------------------------------------ groups
def test_groups_are_selected(reference):
    edges = pd.concat(
        [
            _net({("A", "B"): 1.0, ("A", "D"): 1.0, ("B", "E"): 1.0, ("C", "A"): 1.0}).assign(group="good"),
            _net({("A", "C"): 1.0}).assign(group="bad"),
        ],
        ignore_index=True,
    )
    good = evaluate_grn(edges=edges, reference=reference, baselines=(), genes=GENES, group="good").loc["scGPT"]
    bad = evaluate_grn(edges=edges, reference=reference, baselines=(), genes=GENES, group="bad").loc["scGPT"]
    assert good["epr"] == pytest.approx(3.0) and bad["n_edges"] == 1
    with pytest.raises(ValueError, match=r"2 groups \(good, bad\); pass `group=`"):
        evaluate_grn(edges=edges, reference=reference)
    with pytest.raises(KeyError, match=r"group 'ugly' is not in edges\['group'\] \(groups: good, bad\)"):
        evaluate_grn(edges=edges, reference=reference, group="ugly")
    with pytest.raises(KeyError, match="no 'group' column"):
        evaluate_grn(edges=_net({("A", "B"): 1.0}), reference=reference, group="good")


# ------------------------------------------------------------------------------------------------ errors
def test_errors_say_what_to_do(reference):
    with pytest.raises(KeyError, match=r"edges lacks the columns \['weight'\]"):
        evaluate_grn(edges=pd.DataFrame({"source": ["A"], "target": ["B"]}), reference=reference)
    with pytest.raises(KeyError, match=r"reference lacks the columns \['target'\]"):
        evaluate_grn(edges=_net({("A", "B"): 1.0}), reference=pd.DataFrame({"source": ["A"]}))
    with pytest.raises(ValueError, match="no reference edge falls among the 4 candidate pairs.*Sources"):
        evaluate_grn(edges=_net({("B", "C"): 1.0, ("C", "D"): 1.0}), reference=reference)
    with pytest.raises(ValueError, match=r"none of the 2 genes \(Y, Z\) is a source \(TF\)"):
        evaluate_grn(edges=_net({("Y", "Z"): 1.0}), reference=reference)
    with pytest.raises(ValueError, match="more than once.*A -> B"):
        evaluate_grn(edges=_net({("A", "B"): 1.0, ("B", "C"): 2.0}).iloc[[0, 1, 0]], reference=reference)
    with pytest.raises(ValueError, match="NaN or infinite"):
        evaluate_grn(edges=_net({("A", "B"): np.nan}), reference=reference)
    with pytest.raises(ValueError, match="pass `adata` too"):
        evaluate_grn(edges=_net({("A", "B"): 1.0}), reference=reference, key_added="x")
    with pytest.raises(ValueError, match=r"unknown baselines \['genie3'\]"):
        evaluate_grn(edges=_net({("A", "B"): 1.0}), reference=reference, baselines=["genie3"])
    with pytest.raises(ValueError, match="'collectri' or a DataFrame"):
        evaluate_grn(edges=_net({("A", "B"): 1.0}), reference="dorothea")


def test_collectri_reference_is_the_bundled_network():
    """reference="collectri" loads scgpt.datasets._grn.collectri() (STAT1 -> IRF1 and CXCL10 are in it)."""
    from scgpt.datasets._grn import collectri

    edges = _net({("STAT1", "IRF1"): 1.0, ("STAT1", "CXCL10"): 0.9, ("IRF1", "GAPDH"): 0.8, ("GAPDH", "ACTB"): 0.7})
    by_name = evaluate_grn(edges=edges, reference="collectri")
    pd.testing.assert_frame_equal(by_name, evaluate_grn(edges=edges, reference=collectri()))
    assert by_name.loc["scGPT", "n_true"] >= 2


# --------------------------------------------------------------------------------------------- enrichment
@pytest.fixture
def programs() -> ad.AnnData:
    """20 genes: program "0" = g0..g4, program "1" = g5..g9, no program for g10..g19."""
    names = [f"g{i}" for i in range(20)]
    labels = ["0"] * 5 + ["1"] * 5 + [None] * 10
    var = pd.DataFrame({"scgpt_program": pd.Categorical(labels, categories=["0", "1"])}, index=names)
    return ad.AnnData(X=np.zeros((3, 20), dtype=np.float32), var=var)


SETS = {"S1": ["g0", "g1", "g2", "g15", "NOTAGENE"], "S2": ["g5", "g6", "g0"], "S3": ["g19"]}


def test_enrichment_pvalues_fdr_and_table(programs):
    res = enrich_programs(programs, gene_sets=SETS, key_added="enrichment")
    # background: the 10 genes with a program; S1 has 3 genes in it, S2 3, S3 none (not tested).
    # tests: (0,S1) x=3, (0,S2) x=1, (1,S1) x=0, (1,S2) x=2; M=10, program size 5, set size 3
    p = {
        ("0", "S1"): 21 / 252,  # C(3,3) C(7,2) / C(10,5)
        ("0", "S2"): 231 / 252,  # 1 - C(7,5) / C(10,5)
        ("1", "S1"): 1.0,
        ("1", "S2"): 126 / 252,  # (C(3,2) C(7,3) + C(3,3) C(7,2)) / C(10,5)
    }
    assert p[("0", "S1")] == pytest.approx(hypergeom.sf(2, 10, 3, 5))
    assert p[("1", "S2")] == pytest.approx(hypergeom.sf(1, 10, 3, 5))
    # BH over the 4 tests by hand: sorted p = 1/12, 1/2, 11/12, 1 -> q = min over j >= i of p_(j) * 4 / j
    # q(1/12) = min(1/3, 1, 1.22, 1) = 1/3; q(1/2) = min(1, 1.22, 1) = 1
    assert list(res.columns) == [
        "program",
        "gene_set",
        "overlap",
        "program_size",
        "set_size",
        "genes",
        "odds_ratio",
        "pval",
        "fdr",
        "significant",
    ]
    assert res[["program", "gene_set"]].values.tolist() == [["0", "S1"], ["1", "S2"]]
    assert res["pval"].tolist() == pytest.approx([p[("0", "S1")], p[("1", "S2")]])
    assert res["fdr"].tolist() == pytest.approx([1 / 3, 1.0])
    assert res["overlap"].tolist() == [3, 2] and res["program_size"].tolist() == [5, 5]
    assert res["set_size"].tolist() == [3, 3]
    assert res["genes"].tolist() == ["g0,g1,g2", "g5,g6"]
    assert res["odds_ratio"].iloc[0] == np.inf and res["odds_ratio"].iloc[1] == pytest.approx(2 * 4 / (3 * 1))
    assert res["significant"].tolist() == [False, False]
    stored = programs.uns["enrichment"]
    pd.testing.assert_frame_equal(stored["results"], res)
    assert stored["params"]["n_tests"] == 4 and stored["params"]["n_background"] == 10
    assert stored["evaluator"] == "scgpt.tl.enrich_programs"
    with pytest.warns(UserWarning, match=r"adata.uns\['enrichment'\] exists and is overwritten"):
        again = enrich_programs(programs, gene_sets=SETS, fdr=0.5, key_added="enrichment")
    assert again["significant"].tolist() == [True, False]


def test_enrichment_background(programs):
    res = enrich_programs(programs, gene_sets=SETS, background=programs.var_names, min_overlap=1, key_added="all")
    row = res.set_index(["program", "gene_set"]).loc[("0", "S1")]
    assert row["set_size"] == 4 and row["pval"] == pytest.approx(hypergeom.sf(2, 20, 4, 5))
    assert ("0", "S3") not in res.set_index(["program", "gene_set"]).index  # overlap 0 is never reported
    assert programs.uns["all"]["params"]["n_tests"] == 2 * 3
    # the genes gene_programs clustered (non-NaN UMAP rows) are the default background
    umap = np.full((20, 2), np.nan)
    umap[:15] = 0.0
    programs.varm["scgpt_program_umap"] = umap
    res = enrich_programs(programs, gene_sets=SETS, key_added="enr")
    row = res.set_index(["program", "gene_set"]).loc[("0", "S1")]
    assert row["set_size"] == 3 and row["pval"] == pytest.approx(hypergeom.sf(2, 15, 3, 5))
    assert programs.uns["enr"]["params"]["n_background"] == 15


def test_gmt_path_gives_the_same_table(programs, tmp_path):
    path = tmp_path / "sets.gmt"
    path.write_text("".join(f"{name}\tdescription\t" + "\t".join(genes) + "\n" for name, genes in SETS.items()))
    from_dict = enrich_programs(programs, gene_sets=SETS, key_added="a")
    pd.testing.assert_frame_equal(enrich_programs(programs, gene_sets=path, key_added="b"), from_dict)
    pd.testing.assert_frame_equal(enrich_programs(programs, gene_sets=str(path), key_added="c"), from_dict)
    frame = pd.DataFrame([(s, g) for s, genes in SETS.items() for g in genes], columns=["source", "target"])
    pd.testing.assert_frame_equal(enrich_programs(programs, gene_sets=frame, key_added="d"), from_dict)


def test_enrichment_errors(programs):
    with pytest.raises(FileNotFoundError, match="neither 'hallmark' nor an existing .gmt file"):
        enrich_programs(programs, gene_sets="no_such_file.gmt")
    with pytest.raises(TypeError, match="gene set 'S' is a string; give its genes as a list"):
        enrich_programs(programs, gene_sets={"S": "g0"})
    with pytest.raises(ValueError, match="no gene of the 1 gene sets is in the background"):
        enrich_programs(programs, gene_sets={"S": ["TP53"]})
    del programs.var["scgpt_program"]
    with pytest.raises(KeyError, match=r"run scgpt.tl.gene_programs first"):
        enrich_programs(programs, gene_sets=SETS)


def test_enrichment_with_the_bundled_hallmark_sets():
    from scgpt.datasets._grn import hallmark

    sets = hallmark()
    ifng = [
        g for g in sets["HALLMARK_INTERFERON_GAMMA_RESPONSE"] if g not in sets["HALLMARK_INTERFERON_ALPHA_RESPONSE"]
    ]
    other = sorted({g for s in ("HALLMARK_MYOGENESIS", "HALLMARK_HEME_METABOLISM") for g in sets[s]} - set(ifng))
    names = ifng[:10] + other[:190]
    labels = ["0"] * 10 + ["1"] * 10 + [None] * 180
    var = pd.DataFrame({"scgpt_program": pd.Categorical(labels, categories=["0", "1"])}, index=names)
    adata = ad.AnnData(X=np.zeros((2, 200), dtype=np.float32), var=var)
    res = enrich_programs(adata, background=adata.var_names)
    top = res.iloc[0]
    assert (top["program"], top["gene_set"], top["overlap"]) == ("0", "HALLMARK_INTERFERON_GAMMA_RESPONSE", 10)
    assert top["significant"]
    pd.testing.assert_frame_equal(
        res, enrich_programs(adata, gene_sets=sets, background=adata.var_names, key_added="b")
    )
