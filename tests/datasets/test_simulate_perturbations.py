"""scgpt.datasets.simulate_perturbations: a SYNTHETIC knock-down screen on a signed network."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scgpt.datasets._perturbation import simulate_perturbations

# TF1 activates G1 and represses G2; G1 activates G3 (two steps from TF1); TF2 activates G4; TF2 -> TF2 is a
# self-loop (dropped); G5 and G6 are only reachable through edges of other genes.
NETWORK = pd.DataFrame(
    [
        ("TF1", "G1", 1),
        ("TF1", "G2", -1),
        ("G1", "G3", 1),
        ("TF2", "G4", 1),
        ("TF2", "TF2", 1),
        ("TF3", "G5", -1),
        ("TF3", "G6", 1),
    ],
    columns=["source", "target", "weight"],
)


def _simulate(**kwargs):
    args = {
        "n_genes": 9,
        "n_cells_per_condition": 200,
        "singles": ["TF1", "TF2"],
        "doubles": ["TF1+TF2"],
        "network": NETWORK,
        "seed": 0,
    }
    return simulate_perturbations(**{**args, **kwargs})


@pytest.fixture(scope="module")
def sim() -> ad.AnnData:
    return _simulate()


def test_layout_and_labels(sim):
    assert sim.n_vars == 9  # every gene of the network (11 asked: warned in the test below)
    assert list(sim.obs["perturbation"].cat.categories) == ["control", "TF1", "TF2", "TF1+TF2"]
    assert sim.obs["perturbation"].value_counts().to_dict() == {"control": 200, "TF1": 200, "TF2": 200, "TF1+TF2": 200}
    assert sim.obs["synthetic"].all()
    X = sim.X.toarray()
    assert np.all(X >= 0) and np.all(X == np.round(X))
    info = sim.uns["simulation"]
    assert info["synthetic"] is True and "SYNTHETIC" in info["note"]
    assert "SYNTHETIC" in simulate_perturbations.__doc__
    assert info["params"]["singles"] == ["TF1", "TF2"] and info["params"]["doubles"] == ["TF1+TF2"]
    assert info["params"]["network"] == "user"
    assert list(info["true_log_mean"].index) == ["control", "TF1", "TF2", "TF1+TF2"]
    assert ("TF2", "TF2") not in set(zip(info["edges"]["source"], info["edges"]["target"]))
    assert sim.var.loc["TF1", "regulator"] and not sim.var.loc["G1", "perturbed"]
    assert sim.var.loc["TF1", "perturbed"]


def test_all_genes_warning():
    with pytest.warns(UserWarning, match="the network has 9 genes; all are used"):
        _simulate(n_genes=11, n_cells_per_condition=5)


def test_reproducible():
    a = _simulate(n_genes=9, n_cells_per_condition=20, seed=3)
    b = _simulate(n_genes=9, n_cells_per_condition=20, seed=3)
    c = _simulate(n_genes=9, n_cells_per_condition=20, seed=4)
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.uns["simulation"]["true_log_mean"], b.uns["simulation"]["true_log_mean"])
    assert not np.array_equal(a.X.toarray(), c.X.toarray())


def test_knocked_down_gene_is_down(sim):
    truth = sim.uns["simulation"]["true_log_mean"]
    assert truth.loc["TF1", "TF1"] - truth.loc["control", "TF1"] == pytest.approx(np.log(0.1))
    assert truth.loc["TF2", "TF2"] - truth.loc["control", "TF2"] == pytest.approx(np.log(0.1))
    X = pd.DataFrame(sim.X.toarray(), columns=sim.var_names)
    labels = sim.obs["perturbation"].to_numpy()
    for gene in ("TF1", "TF2"):
        ratio = X.loc[labels == gene, gene].mean() / X.loc[labels == "control", gene].mean()
        assert ratio < 0.25  # 10% expected
    # the double knocks down both
    both = X.loc[labels == "TF1+TF2", ["TF1", "TF2"]].mean() / X.loc[labels == "control", ["TF1", "TF2"]].mean()
    assert (both < 0.25).all()


def test_effects_follow_the_signed_network(sim):
    d = sim.uns["simulation"]["true_log_mean"]
    delta = d.loc["TF1"] - d.loc["control"]
    assert delta["G1"] < 0  # activated by TF1: down
    assert delta["G2"] > 0  # repressed by TF1: up
    assert delta["G3"] < 0 and abs(delta["G3"]) < abs(delta["G1"])  # two steps away: smaller
    assert delta[["TF2", "G4", "TF3", "G5", "G6"]].abs().max() == 0  # not downstream of TF1
    # no regulation between TF1 and TF2: the double is additive in log space
    double = d.loc["TF1+TF2"] - d.loc["control"]
    single_sum = (d.loc["TF1"] - d.loc["control"]) + (d.loc["TF2"] - d.loc["control"])
    np.testing.assert_allclose(double, single_sum, atol=1e-12)
    # one damping step: G1 moves by damping x strength x log(0.1) (in-degree 1)
    edges = sim.uns["simulation"]["edges"].set_index(["source", "target"])
    strength = edges.loc[("TF1", "G1"), "strength"]
    assert delta["G1"] == pytest.approx(0.5 * strength * np.log(0.1))


def test_random_singles_and_doubles():
    sim = _simulate(n_genes=9, n_cells_per_condition=5, singles=3, doubles=2, seed=1)
    params = sim.uns["simulation"]["params"]
    assert len(params["singles"]) == 3 and set(params["singles"]) <= {"TF1", "TF2", "TF3", "G1"}
    assert len(params["doubles"]) == 2
    for pair in params["doubles"]:
        assert set(pair.split("+")) <= set(params["singles"])
    assert sim.n_obs == 5 * 6


def test_h5ad_round_trip(sim, tmp_path):
    sim.write_h5ad(tmp_path / "sim.h5ad")
    back = ad.read_h5ad(tmp_path / "sim.h5ad")
    pd.testing.assert_frame_equal(back.uns["simulation"]["true_log_mean"], sim.uns["simulation"]["true_log_mean"])
    assert bool(back.uns["simulation"]["synthetic"])


def test_default_network_is_collectri():
    sim = simulate_perturbations(n_genes=60, n_cells_per_condition=3, singles=2, doubles=1, seed=0)
    assert sim.n_vars == 60
    assert sim.uns["simulation"]["params"]["network"].startswith("CollecTRI")
    assert len(sim.uns["simulation"]["edges"]) > 0


def test_bad_input():
    with pytest.raises(ValueError, match="columns 'source', 'target' and 'weight'"):
        _simulate(network=NETWORK.rename(columns={"weight": "mor"}))
    with pytest.raises(ValueError, match="not in the network"):
        _simulate(singles=["NOPE"], n_genes=5)
    with pytest.raises(ValueError, match="5 singles requested but only 4"):
        _simulate(singles=5, doubles=0, n_genes=9)
    with pytest.raises(ValueError, match="a double must name two different genes"):
        _simulate(doubles=["TF1+TF1"], n_genes=9)
    with pytest.raises(ValueError, match="knockdown must be in"):
        _simulate(knockdown=1.0, n_genes=9)
    with pytest.raises(ValueError, match="no usable edge"):
        _simulate(network=NETWORK.assign(weight=0), n_genes=9)
