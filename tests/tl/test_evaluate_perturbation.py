"""scgpt.tl.evaluate_perturbation: Pearson-delta (control and perturbed-mean references), DE genes, MSE, direction."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scgpt.tl._evaluate_perturbation import (
    METRICS,
    direction_accuracy,
    evaluate_perturbation,
    pearson,
    perturbation_de_genes,
)
from scgpt.tl._perturbation_baselines import perturbation_baseline, prediction_anndata, pseudobulk

EFFECTS = {"A": {0: 6.0, 1: 0.2}, "B": {2: 5.0, 3: 0.1}, "C": {4: 4.0}, "A+B": {0: 6.0, 2: 5.0}}


@pytest.fixture(scope="module")
def screen() -> ad.AnnData:
    """Poisson counts over 30 genes: each perturbation moves a few known genes."""
    rng = np.random.default_rng(0)
    base = rng.uniform(2, 30, 30)
    blocks, labels = [], []
    for label, effect in {"control": {}, **EFFECTS}.items():
        mu = base.copy()
        for g, f in effect.items():
            mu[g] *= f
        n = 40 if label == "control" else 25
        blocks.append(rng.poisson(mu, size=(n, len(base))))
        labels += [label] * n
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    var = pd.DataFrame(index=[f"g{i}" for i in range(len(base))])
    return ad.AnnData(X=sp.csr_matrix(np.vstack(blocks).astype(np.float32)), obs=obs, var=var)


@pytest.fixture(scope="module")
def truth(screen) -> pd.DataFrame:
    return pseudobulk(screen)


def _prediction(truth: pd.DataFrame, labels, values=None, method="model") -> ad.AnnData:
    X = truth.loc[labels].to_numpy() if values is None else values
    return prediction_anndata(X, labels, truth.columns, truth.loc["control"], {"method": method})


def test_pearson_and_direction_kernels():
    assert pearson([1, 2, 3], [2, 4, 6.5]) == pytest.approx(np.corrcoef([1, 2, 3], [2, 4, 6.5])[0, 1])
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([0, 0, 0], [1, 2, 3]) == 0.0  # a zero (constant) vector has no direction
    assert pearson([1, 2, 3], [5, 5, 5 + 1e-9]) == 0.0
    assert np.isnan(pearson([1], [2]))
    assert direction_accuracy(np.array([1.0, -2.0, 0.0, 3.0]), np.array([0.5, 1.0, -1.0, 2.0])) == 0.5
    assert direction_accuracy(np.array([0.0, 0.0]), np.array([0.0, 1.0])) == 0.5


def test_perfect_prediction(screen, truth):
    labels = ["A", "B", "C", "A+B"]
    df = evaluate_perturbation(screen, _prediction(truth, labels))
    assert list(df.columns) == ["method", "perturbation", "n_cells", *METRICS]
    assert list(df["perturbation"]) == [*labels, "mean"]
    assert (df["method"] == "model").all()
    np.testing.assert_allclose(df[["pearson_delta", "pearson_delta_de", "pearson_delta_pertmean"]], 1.0)
    np.testing.assert_allclose(df["pearson_raw"], 1.0)
    np.testing.assert_allclose(df["direction_de"], 1.0)
    np.testing.assert_allclose(df["mse_top1000"], 0.0, atol=1e-20)
    assert list(df["n_cells"]) == [25, 25, 25, 25, 100]


def test_no_change_scores_zero(screen, truth):
    pred = perturbation_baseline(screen, ["A", "B"], method="no_change")
    df = evaluate_perturbation(screen, pred).set_index("perturbation")
    assert (df["method"] == "no_change").all()
    assert (df.loc[["A", "B", "mean"], ["pearson_delta", "pearson_delta_de", "direction_de"]] == 0.0).all().all()
    # against the mean perturbed profile the control profile is not constant: a real number
    pertmean = truth.loc[["A", "A+B", "B", "C"]].mean(0)
    expected = np.corrcoef(truth.loc["control"] - pertmean, truth.loc["A"] - pertmean)[0, 1]
    assert df.loc["A", "pearson_delta_pertmean"] == pytest.approx(expected)
    mse = ((truth.loc["control"] - truth.loc["A"]) ** 2).mean()
    assert df.loc["A", "mse_top1000"] == pytest.approx(mse)


def test_shifted_and_flipped_predictions(screen, truth):
    labels = ["A", "B"]
    shifted = _prediction(truth, labels, truth.loc[labels].to_numpy() + 0.1)
    df = evaluate_perturbation(screen, shifted, methods="shifted").set_index("perturbation")
    assert (df["method"] == "shifted").all()
    np.testing.assert_allclose(df.loc[labels, "pearson_delta"], 1.0)  # a constant shift keeps the correlation
    np.testing.assert_allclose(df.loc[labels, "mse_top1000"], 0.01)
    ctrl = truth.loc["control"].to_numpy()
    flipped = _prediction(truth, labels, 2 * ctrl - truth.loc[labels].to_numpy())  # delta negated
    df = evaluate_perturbation(screen, flipped).set_index("perturbation")
    np.testing.assert_allclose(df.loc[labels, "pearson_delta"], -1.0)
    np.testing.assert_allclose(df.loc[labels, "direction_de"], 0.0)


def test_de_genes(screen):
    de = perturbation_de_genes(screen, ["A", "C"], n_de=2)
    assert set(de["A"]) == {"g0", "g1"}
    assert de["C"][0] == "g4"
    full = perturbation_de_genes(screen, n_de=3)
    assert set(full) == {"A", "B", "C", "A+B"}
    assert set(full["A+B"][:2]) == {"g0", "g2"}
    with pytest.raises(KeyError, match="unknown perturbation label\\(s\\) 'D'"):
        perturbation_de_genes(screen, ["D"])


def test_de_only_metric(screen, truth):
    """Right on the top-2 DE genes of A, wrong elsewhere: the DE metrics see only the former."""
    labels = ["A"]
    de = perturbation_de_genes(screen, labels, n_de=2)["A"]
    ctrl = truth.loc["control"]
    values = ctrl.copy()
    values[de] = truth.loc["A", de]
    other = [g for g in truth.columns if g not in de]
    values[other] = ctrl[other] - (truth.loc["A", other] - ctrl[other])  # every other delta negated
    df = evaluate_perturbation(screen, _prediction(truth, labels, values.to_numpy()[None, :]), n_de=2)
    row = df.set_index("perturbation").loc["A"]
    assert row["pearson_delta_de"] == pytest.approx(1.0)
    assert row["direction_de"] == 1.0
    assert row["pearson_delta"] < 0.99
    assert df.attrs["de_genes"]["A"] == de and df.attrs["n_de"] == 2 and df.attrs["de_method"] == "t-test"


def test_several_methods(screen, truth):
    preds = {
        "perfect": _prediction(truth, ["A", "B", "C"]),
        "train_mean": perturbation_baseline(screen, ["A", "B", "C"], method="train_mean", train=["A+B"]),
    }
    df = evaluate_perturbation(screen, preds)
    assert list(df["method"]) == ["perfect"] * 4 + ["train_mean"] * 4
    means = df[df["perturbation"] == "mean"].set_index("method")
    per = df[(df["method"] == "train_mean") & (df["perturbation"] != "mean")]
    assert means.loc["train_mean", "pearson_delta"] == pytest.approx(per["pearson_delta"].mean())
    assert means.loc["perfect", "pearson_delta"] == pytest.approx(1.0)
    assert means.loc["train_mean", "mse_top1000"] > 0
    only = evaluate_perturbation(screen, preds, methods=["train_mean"])
    assert set(only["method"]) == {"train_mean"}
    with pytest.raises(KeyError, match="not among the predictions"):
        evaluate_perturbation(screen, preds, methods=["linear"])


def test_gene_subset_keeps_the_normalisation(screen, truth):
    """genes= scores on a subset; profiles stay normalised over all genes (a perfect prediction scores 1)."""
    subset = [f"g{i}" for i in range(9, -1, -1)]  # order does not matter
    pred = _prediction(truth, ["A", "B"])[:, subset].copy()
    df = evaluate_perturbation(screen, pred, genes=subset, n_de=3)
    np.testing.assert_allclose(df[["pearson_delta", "pearson_delta_de", "direction_de"]], 1.0)
    np.testing.assert_allclose(df["mse_top1000"], 0.0, atol=1e-20)
    assert set(df.attrs["de_genes"]["A"][:2]) == {"g0", "g1"} and len(df.attrs["de_genes"]["A"]) == 3
    assert set(df.attrs["de_genes"]["B"]) <= set(subset) and df.attrs["de_genes"]["B"][0] in {"g2", "g3"}
    assert sorted(df.attrs["top1000_genes"]) == sorted(subset)


def test_top1000_are_the_most_expressed_control_genes(screen, truth):
    df = evaluate_perturbation(screen, _prediction(truth, ["A"]))
    assert len(df.attrs["top1000_genes"]) == 30  # fewer genes than 1,000: all
    assert df.attrs["top1000_genes"][0] == truth.loc["control"].idxmax()


def test_control_rows_are_ignored_and_bad_input(screen, truth):
    with_ctrl = _prediction(truth, ["control", "A"])
    df = evaluate_perturbation(screen, with_ctrl)
    assert list(df["perturbation"]) == ["A", "mean"]
    labels = ["A", "B"]
    values = np.vstack([truth.loc["A"], truth.loc["B"]])
    unknown = prediction_anndata(values, ["A", "D"], truth.columns, truth.loc["control"], {"method": "m"})
    with pytest.raises(KeyError, match="unknown perturbation label\\(s\\) 'D'.*Only perturbations with observed"):
        evaluate_perturbation(screen, unknown)
    few_genes = _prediction(truth, labels)[:, :10].copy()
    with pytest.raises(ValueError, match="lacks 20 of the 30 scored genes.*pass genes="):
        evaluate_perturbation(screen, few_genes)
    with pytest.raises(KeyError, match="1 genes are not in adata.var_names"):
        evaluate_perturbation(screen, few_genes, genes=["g0", "x"])
    with pytest.raises(TypeError, match="prediction AnnData or a dict"):
        evaluate_perturbation(screen, [with_ctrl])
    with pytest.raises(ValueError, match="no control cells"):
        evaluate_perturbation(screen, with_ctrl, control="NT")
    with pytest.raises(ValueError, match="only control rows"):
        evaluate_perturbation(screen, _prediction(truth, ["control"]))
    with pytest.warns(UserWarning, match="different sets of perturbations"):
        evaluate_perturbation(screen, {"a": _prediction(truth, ["A"]), "b": _prediction(truth, ["A", "B"])})


def test_degenerate_pertmean_score_warns(screen, truth):
    """Catches a train-mean prediction of the one held-out perturbation scored pearson_delta_pertmean -1.000 with
    no word that the -1 comes from the metric's construction (the perturbation mean includes the other targets)."""
    others = truth.loc[["A", "B", "C"]].to_numpy().mean(0, keepdims=True)
    with pytest.warns(UserWarning, match=r"-1\.000 for 1 perturbation\(s\) of \['train_mean'\].*by construction"):
        df = evaluate_perturbation(screen, {"train_mean": _prediction(truth, ["A+B"], others, "train_mean")})
    assert df.loc[df["perturbation"] == "A+B", "pearson_delta_pertmean"].item() == pytest.approx(-1.0)
