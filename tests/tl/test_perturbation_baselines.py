"""scgpt.tl perturbation baselines (no_change, train_mean, additive, linear) and the shared prediction format."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scgpt.tl._perturbation_baselines import (
    PREDICTION_KEY,
    control_mean,
    perturbation_baseline,
    prediction_anndata,
    pseudobulk,
)

# Every cell of a label has the same counts and every cell sums to 1e4, so that the profile of a label
# is exactly log1p(its counts): the expected predictions can be written down by hand.
PROFILES = {
    "control": [5000, 3000, 2000, 0],
    "A": [2000, 6000, 2000, 0],
    "B": [5000, 1000, 3000, 1000],
    "C": [4000, 3000, 1000, 2000],
    "A+B": [1000, 2000, 3000, 4000],
}
GENES = ["A", "g1", "B", "g3"]  # A and B are measured genes, C is not


LEAK = "leakage"  # predicting a perturbation of train= is allowed (the tests check the fit on it) and warned


def _screen(n_per: int = 3) -> ad.AnnData:
    labels = [label for label in PROFILES for _ in range(n_per)]
    X = np.array([PROFILES[label] for label in labels], dtype=np.float32)
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=GENES))


def _log(label: str) -> np.ndarray:
    return np.log1p(np.array(PROFILES[label], dtype=np.float64))


def _delta(label: str) -> np.ndarray:
    return _log(label) - _log("control")


@pytest.fixture
def screen() -> ad.AnnData:
    return _screen()


def test_pseudobulk_and_control_mean(screen):
    pb = pseudobulk(screen)
    assert list(pb.index) == ["control", "A", "A+B", "B", "C"]
    assert list(pb.columns) == GENES
    for label in PROFILES:
        np.testing.assert_allclose(pb.loc[label], _log(label))
    assert pb.attrs["n_cells"] == {"control": 3, "A": 3, "A+B": 3, "B": 3, "C": 3}
    np.testing.assert_allclose(control_mean(screen), _log("control"))
    assert list(pseudobulk(screen, labels=["B", "control"]).index) == ["B", "control"]


def test_pseudobulk_normalises_depth():
    adata = _screen()
    adata.X = adata.X.multiply(2).tocsr()  # twice the depth: the same normalised profiles
    np.testing.assert_allclose(pseudobulk(adata).loc["A"], _log("A"))


def test_no_change(screen):
    pred = perturbation_baseline(screen, ["A", "D", "A+D"])
    assert list(pred.obs_names) == ["A", "D", "A+D"]
    np.testing.assert_allclose(pred.X, np.tile(_log("control"), (3, 1)))
    np.testing.assert_array_equal(pred.layers["delta"], 0.0)
    assert pred.uns[PREDICTION_KEY]["method"] == "no_change"


def test_train_mean(screen):
    pred = perturbation_baseline(screen, ["C"], method="train_mean", train=["A", "B"])
    np.testing.assert_allclose(pred.X[0], _log("control") + (_delta("A") + _delta("B")) / 2)
    np.testing.assert_allclose(pred.layers["delta"][0], (_delta("A") + _delta("B")) / 2)
    # default training set: every other label present, equally weighted
    default = perturbation_baseline(screen, ["C"], method="train_mean")
    assert default.uns[PREDICTION_KEY]["params"]["train"] == ["A", "A+B", "B"]
    np.testing.assert_allclose(default.layers["delta"][0], (_delta("A") + _delta("B") + _delta("A+B")) / 3)


def test_additive(screen):
    with pytest.warns(UserWarning, match=LEAK):
        pred = perturbation_baseline(screen, ["A+B", "A", "B+C"], method="additive", train=["A", "B", "C"])
    np.testing.assert_allclose(pred.X[0], _log("control") + _delta("A") + _delta("B"))
    np.testing.assert_allclose(pred.X[1], _log("A"))  # a single seen in training: its observed profile
    np.testing.assert_allclose(pred.X[2], _log("control") + _delta("B") + _delta("C"))


def test_additive_unseen_gene_adds_no_change(screen):
    with pytest.warns(UserWarning, match="1 target gene\\(s\\) have no single perturbation in training \\(C in"):
        pred = perturbation_baseline(screen, ["C", "A+C"], method="additive", train=["A", "B"])
    np.testing.assert_allclose(pred.X[0], _log("control"))
    np.testing.assert_allclose(pred.X[1], _log("A"))


def test_linear_one_hot_embeddings_by_hand(screen):
    """G = identity (one-hot genes) makes the ridge solution explicit: b + (y - b) / (1 + ridge)^2."""
    emb = pd.DataFrame(np.eye(4), index=GENES)
    train = ["A", "B"]
    b = (_log("A") + _log("B")) / 2
    with pytest.warns(UserWarning, match=LEAK):
        exact = perturbation_baseline(screen, ["A", "B"], method="linear", train=train, gene_embeddings=emb, ridge=0.0)
    np.testing.assert_allclose(exact.X, np.vstack([_log("A"), _log("B")]), atol=1e-10)
    ridge = 0.5
    with pytest.warns(UserWarning, match=LEAK):
        shrunk = perturbation_baseline(
            screen, ["A", "A+B"], method="linear", train=train, gene_embeddings=emb, ridge=ridge
        )
    np.testing.assert_allclose(shrunk.X[0], b + (_log("A") - b) / (1 + ridge) ** 2, atol=1e-10)
    # a combination sums the embeddings of its genes: both responses added to b
    both = b + ((_log("A") - b) + (_log("B") - b)) / (1 + ridge) ** 2
    np.testing.assert_allclose(shrunk.X[1], both, atol=1e-10)
    params = shrunk.uns[PREDICTION_KEY]["params"]
    assert params["ridge"] == ridge and params["gene_embeddings"].startswith("DataFrame (4 genes x 4)")


def test_linear_embedding_reaches_genes_outside_the_panel(screen):
    """Target C is not measured, but has an embedding: the linear map still predicts it."""
    emb = pd.DataFrame(np.eye(5), index=[*GENES, "C"])
    with pytest.warns(UserWarning, match=LEAK):
        pred = perturbation_baseline(
            screen, ["C"], method="linear", train=["A", "B", "C"], gene_embeddings=emb, ridge=0
        )
    np.testing.assert_allclose(pred.X[0], _log("C"), atol=1e-10)


def test_linear_missing_embedding_falls_back_to_train_mean(screen):
    emb = pd.DataFrame(np.eye(3), index=["A", "g1", "B"])  # g3 has no embedding
    train = ["A", "B"]
    with pytest.warns(UserWarning) as record:
        pred = perturbation_baseline(screen, ["C", "A"], method="linear", train=train, gene_embeddings=emb)
    messages = " ".join(str(w.message) for w in record)
    assert "1 of 4 genes have no row in gene_embeddings (first: 'g3')" in messages
    assert "1 requested target gene(s) are not in gene_embeddings (C)" in messages
    mean = (_log("A") + _log("B")) / 2
    np.testing.assert_allclose(pred.X[0], mean, atol=1e-10)  # C: no embedding, the train_mean profile
    assert pred.X[1, 3] == pytest.approx(mean[3])  # g3: no embedding row


def test_linear_pca(screen):
    """PCA embedding from the measured genes: C is not among them (warned, train_mean); K is capped."""
    with pytest.warns(UserWarning) as record:
        pred = perturbation_baseline(screen, ["A", "C"], method="linear", train=["A", "B", "A+B"], n_components=10)
    messages = " ".join(str(w.message) for w in record)
    assert "n_components=10 exceeds what 3 training perturbations support; 2 components are used" in messages
    assert "(C)" in messages
    params = pred.uns[PREDICTION_KEY]["params"]
    assert params["n_components_used"] == 2 and params["gene_embeddings"] == "pca"
    assert params["targets_without_embedding"] == ["C"]
    mean = (_log("A") + _log("B") + _log("A+B")) / 3
    np.testing.assert_allclose(pred.X[1], mean, atol=1e-10)
    assert np.abs(pred.X[0] - mean).max() > 0.01  # A's own gene embedding moves it away from the mean
    # training fits: A's prediction is closer to A than the mean profile is
    assert np.linalg.norm(pred.X[0] - _log("A")) < np.linalg.norm(mean - _log("A"))


def test_prediction_format(screen, tmp_path):
    pred = perturbation_baseline(screen, [["A", "B"], " C "], method="train_mean", train=["A", "B"])
    assert list(pred.obs_names) == ["A+B", "C"]
    assert list(pred.obs["perturbation"]) == ["A+B", "C"]
    assert list(pred.obs["n_targets"]) == [2, 1]
    assert list(pred.var_names) == GENES
    np.testing.assert_allclose(pred.var["control_mean"], _log("control"))
    np.testing.assert_allclose(pred.layers["delta"], pred.X - _log("control")[None, :])
    assert pred.X.dtype == np.float64
    params = pred.uns[PREDICTION_KEY]["params"]
    assert params["method"] == "train_mean" and params["train"] == ["A", "B"] and params["control"] == "control"
    pred.write_h5ad(tmp_path / "pred.h5ad")
    back = ad.read_h5ad(tmp_path / "pred.h5ad")
    assert back.uns[PREDICTION_KEY]["method"] == "train_mean"


def test_prediction_anndata_checks():
    ctrl = pd.Series([1.0, 2.0], index=["x", "y"])
    pred = prediction_anndata(np.array([[1.5, 2.0]]), ["A"], ["y", "x"], ctrl, {"method": "model"})
    np.testing.assert_allclose(pred.var["control_mean"], [2.0, 1.0])  # aligned by name
    np.testing.assert_allclose(pred.layers["delta"], [[-0.5, 1.0]])
    with pytest.raises(ValueError, match="X has shape"):
        prediction_anndata(np.zeros((2, 2)), ["A"], ["x", "y"], ctrl, {})
    with pytest.raises(ValueError, match="not unique"):
        prediction_anndata(np.zeros((2, 2)), ["A", "A"], ["x", "y"], ctrl, {})
    with pytest.raises(ValueError, match="lacks 1 genes"):
        prediction_anndata(np.zeros((1, 3)), ["A"], ["x", "y", "z"], ctrl, {})


def test_log1p_marked_input_is_accepted(screen):
    logged = screen.copy()
    logged.X = sp.csr_matrix(np.log1p(screen.X.toarray() / 1e4 * 1e4))
    with pytest.raises(ValueError, match="expects raw counts"):
        perturbation_baseline(logged, ["C"], method="train_mean")
    logged.uns["log1p"] = {"base": None}
    pred = perturbation_baseline(logged, ["C"], method="train_mean", train=["A"])
    np.testing.assert_allclose(pred.X[0], _log("A"), rtol=1e-6)


def test_counts_in_a_layer(screen):
    screen.layers["counts"] = screen.X.copy()
    screen.X = sp.csr_matrix(screen.X.toarray() * 0.5 + 0.25)
    pred = perturbation_baseline(screen, ["C"], method="train_mean", train=["A"], layer="counts")
    np.testing.assert_allclose(pred.X[0], _log("A"))


def test_bad_input(screen):
    with pytest.raises(KeyError, match="unknown perturbation label\\(s\\) 'Z'"):
        perturbation_baseline(screen, ["C"], method="train_mean", train=["A", "Z"])
    with pytest.raises(ValueError, match="no control cells"):
        perturbation_baseline(screen, ["C"], control="NT")
    no_ctrl = screen[screen.obs["perturbation"] != "control"].copy()
    with pytest.raises(ValueError, match="no control cells"):
        perturbation_baseline(no_ctrl, ["C"])
    with pytest.raises(KeyError, match="'guide' is not a column"):
        perturbation_baseline(screen, ["C"], perturbation_key="guide")
    with pytest.raises(ValueError, match="method must be one of"):
        perturbation_baseline(screen, ["C"], method="mean")
    with pytest.raises(ValueError, match="control label 'control' is not a perturbation"):
        perturbation_baseline(screen, ["control"])
    with pytest.raises(ValueError, match="Invalid perturbation label"):
        perturbation_baseline(screen, ["A++B"])
    with pytest.raises(ValueError, match="requested twice"):
        perturbation_baseline(screen, ["A", "A"])
    with pytest.raises(ValueError, match="gene_embeddings applies to method='linear'"):
        perturbation_baseline(screen, ["C"], gene_embeddings=pd.DataFrame(np.eye(4), index=GENES))
    with pytest.raises(ValueError, match="needs training perturbations"):
        perturbation_baseline(screen, ["A", "B", "C", "A+B"], method="train_mean")
    with pytest.raises(ValueError, match="no gene of adata.var_names"):
        perturbation_baseline(screen, ["C"], method="linear", gene_embeddings=pd.DataFrame(np.eye(2), index=["p", "q"]))
    negative = screen.copy()
    negative.X = sp.csr_matrix(-negative.X.toarray())
    with pytest.raises(ValueError, match="negative values"):
        perturbation_baseline(negative, ["C"], method="train_mean")


def test_unseen_gene_warning_names_a_single_as_itself(screen):
    """Catches the warning listing a single perturbation as "C in C" (the issue's "ATF2 in ATF2; BRD4 in BRD4")."""
    with pytest.warns(UserWarning, match=r"training \(C\); they add no change") as record:
        perturbation_baseline(screen, ["C"], method="additive", train=["A", "B"])
    assert "C in C" not in str(record[0].message)
