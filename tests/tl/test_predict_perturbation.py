"""scgpt.tl.predict_perturbation: the mean prediction over control cells, in the baselines' format."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import scgpt
from scgpt.data import GeneVocab
from scgpt.data._screen import gene_chunks
from scgpt.model import TASKS, ScGPT
from scgpt.tl._perturbation_baselines import PREDICTION_KEY
from scgpt.tl._predict_perturbation import _collapsed_pairs

EXTRA = "EXTRA1"  # in the vocabulary, never measured

# an untrained network's deltas are dominated by its distance from the identity, the same for every target; the
# warnings are tested on their own below
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*nearly identical:UserWarning", "ignore:.*never perturbed in fine-tuning:UserWarning"
)


@pytest.fixture(scope="module")
def screen():
    """SYNTHETIC screen (40 genes; 6 singles, 2 doubles, 20 cells each; 30 controls)."""
    return scgpt.datasets.simulate_perturbations(
        n_genes=40, singles=6, doubles=2, n_cells_per_condition=20, n_control_cells=30, seed=1
    )


@pytest.fixture(scope="module")
def labels(screen):
    singles = sorted(s for s in set(screen.obs["perturbation"]) if "+" not in s and s != "control")
    doubles = sorted(s for s in set(screen.obs["perturbation"]) if "+" in s)
    return singles, doubles


@pytest.fixture(scope="module")
def outside(screen):
    """A measured gene left out of the vocabulary (not a target)."""
    return next(g for g, hit in zip(screen.var_names, screen.var["perturbed"]) if not hit)


@pytest.fixture(scope="module")
def model(screen, labels, outside):
    """An untrained perturbation network (the task's heads) that remembers a setup, as after finetune."""
    torch.manual_seed(0)
    genes = [g for g in screen.var_names if g != outside]
    base = ScGPT(vocab=GeneVocab.from_genes([*genes, EXTRA]), d_model=32, n_heads=4, d_hid=64, n_layers=2, n_cls=None)
    m = base.adapt(**TASKS["perturbation"].heads(base.config, {}))
    with torch.no_grad():
        m.net.pert_encoder.weight.normal_(0, 1)  # flags that matter
    m.registry_.update(task="perturbation", perturbation_key="perturbation", control="control")
    m.registry_["perturbation"] = {"tokens": genes, "train_genes": labels[0][:3], "max_length": 1536}
    return m.to_device("cpu")


def _log(adata, rows):
    X = adata.X[rows].toarray().astype(np.float64)
    return np.log1p(X / X.sum(1, keepdims=True) * 1e4)


def _run(model, values, genes, flags):
    t = lambda a, dt: torch.as_tensor(np.asarray(a), dtype=dt)  # noqa: E731
    B = len(values)
    with torch.no_grad():
        out = model.net(
            t(np.tile(genes, (B, 1)), torch.long),
            t(values, torch.float32),
            pert_flags=t(np.tile(flags, (B, 1)), torch.long),
        )["mlm_output"]
    return out.double().numpy()


def _hand_run(model, adata, label, *, chunk=None, seed=0):
    """The network run by hand on every control cell with the label's flags; per-gene mean over cells."""
    cells = np.flatnonzero(adata.obs["perturbation"] == "control")
    X = _log(adata, cells)
    cols = np.flatnonzero([g in model.vocab for g in adata.var_names])
    tokens = model.vocab.lookup(adata.var_names[cols])
    targets = label.split("+")
    measured = np.flatnonzero(np.isin(adata.var_names[cols], targets))
    extra = model.vocab.lookup([g for g in targets if g not in set(adata.var_names)])
    parts = [np.arange(len(cols))] if chunk is None else None
    if chunk is not None:
        parts = [
            np.sort(np.concatenate([c, measured])) for c in gene_chunks(len(cols), measured, chunk - len(targets), seed)
        ]
    sums, counts = np.zeros(len(cols)), np.zeros(len(cols))
    for part in parts:
        genes = np.concatenate([tokens[part], extra])
        flags = np.concatenate([np.isin(part, measured), np.ones(len(extra), bool)]).astype(np.int64)
        values = np.concatenate([X[:, cols[part]], np.zeros((len(cells), len(extra)))], axis=1)
        out = _run(model, values, genes, flags)[:, : len(part)]
        sums[part] += out.sum(0)
        counts[part] += len(cells)
    return cols, sums / counts, X.mean(0)


def test_prediction_equals_a_hand_run_of_the_network(screen, model, labels, outside):
    singles, doubles = labels
    asked = [singles[0], doubles[0], EXTRA, f"{singles[1]}+{EXTRA}"]
    pred = scgpt.tl.predict_perturbation(screen, model, asked, n_control_cells=1000)
    assert list(pred.obs_names) == asked and list(pred.var_names) == list(screen.var_names)
    for i, label in enumerate(asked):
        cols, want, ctrl = _hand_run(model, screen, label)
        np.testing.assert_allclose(pred.X[i, cols], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pred.var["control_mean"], ctrl, rtol=1e-10)
    np.testing.assert_allclose(pred.layers["delta"], pred.X - pred.var["control_mean"].to_numpy())
    j = list(screen.var_names).index(outside)
    assert not pred.var["predicted"].iloc[j] and pred.var["predicted"].sum() == 39
    np.testing.assert_allclose(pred.X[:, j], pred.var["control_mean"].iloc[j])  # outside the vocabulary: control mean
    params = pred.uns[PREDICTION_KEY]["params"]
    assert pred.uns[PREDICTION_KEY]["method"] == "scgpt" and params["n_control_cells"] == 30
    assert params["n_genes_not_in_vocabulary"] == 1 and params["unmeasured_targets"] == [EXTRA]
    assert params["n_chunks"] == [1, 1, 1, 1] and params["gene_chunk"] == 1536
    assert list(pred.obs["n_targets"]) == [1, 2, 1, 2]


def test_chunks_equal_the_full_run_when_genes_fit_and_a_chunked_hand_run_otherwise(screen, model, labels):
    asked = [labels[0][0], labels[1][0]]
    full = scgpt.tl.predict_perturbation(screen, model, asked, n_control_cells=1000)
    fits = scgpt.tl.predict_perturbation(screen, model, asked, n_control_cells=1000, gene_chunk=41)
    np.testing.assert_array_equal(full.X, fits.X)
    chunked = scgpt.tl.predict_perturbation(screen, model, asked, n_control_cells=1000, gene_chunk=12, seed=4)
    assert chunked.uns[PREDICTION_KEY]["params"]["n_chunks"] == [4, 4]  # 38 or 37 other genes in chunks of <= 11
    for i, label in enumerate(asked):
        cols, want, _ = _hand_run(model, screen, label, chunk=12, seed=4)
        np.testing.assert_allclose(chunked.X[i, cols], want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(chunked.X, full.X, atol=1e-4)  # an approximation


def test_batch_size_does_not_matter_and_the_seed_picks_the_cells(screen, model, labels):
    asked = [labels[0][0], labels[0][1]]
    kw = dict(n_control_cells=12)
    a = scgpt.tl.predict_perturbation(screen, model, asked, batch_size=64, **kw)
    b = scgpt.tl.predict_perturbation(screen, model, asked, batch_size=1, **kw)
    np.testing.assert_allclose(a.X, b.X, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.X, scgpt.tl.predict_perturbation(screen, model, asked, **kw).X)
    c = scgpt.tl.predict_perturbation(screen, model, asked, seed=1, **kw)
    assert not np.allclose(a.X, c.X)


def test_same_format_as_the_baselines(screen, model, labels):
    asked = [labels[0][0], labels[1][0]]
    pred = scgpt.tl.predict_perturbation(screen, model, asked, n_control_cells=1000)
    base = scgpt.tl.perturbation_baseline(screen, asked, method="no_change")
    assert list(pred.obs_names) == list(base.obs_names) and list(pred.var_names) == list(base.var_names)
    assert set(pred.layers) == set(base.layers) and set(base.obs.columns) <= set(pred.obs.columns)
    np.testing.assert_allclose(pred.var["control_mean"], base.var["control_mean"])
    scores = scgpt.tl.evaluate_perturbation(screen, {"scgpt": pred, "no_change": base})
    assert set(scores["method"]) == {"scgpt", "no_change"} and set(asked) <= set(scores["perturbation"])


def test_a_fine_tuned_model_predicts_the_same_after_saving_in_both_formats(screen, labels, tmp_path):
    """The setup (key, control, genes seen) travels with the model: predict needs no repetition."""
    data = screen.copy()
    data.obs["target"] = data.obs["perturbation"].astype(str).replace({"control": "NT"})
    torch.manual_seed(0)
    base = ScGPT(vocab=GeneVocab.from_genes(screen.var_names), d_model=32, n_heads=4, d_hid=64, n_layers=2, n_cls=None)
    tuned = base.finetune(
        "perturbation", data, perturbation_key="target", control="NT", max_steps=2, batch_size=32,
        validation_size=0.0, checkpoint_dir=tmp_path / "ckpt",
    )  # fmt: skip
    asked = [labels[0][0], labels[1][0]]
    want = scgpt.tl.predict_perturbation(data, tuned, asked, n_control_cells=1000)
    assert want.uns[PREDICTION_KEY]["params"]["perturbation_key"] == "target"
    tuned.save(tmp_path / "native")
    tuned.save_pretrained(tmp_path / "official")
    for path in ("native", "official"):
        again = ScGPT.from_pretrained(tmp_path / path)
        got = scgpt.tl.predict_perturbation(data, again, asked, n_control_cells=1000)
        np.testing.assert_array_equal(got.X, want.X)
        assert got.uns[PREDICTION_KEY]["params"]["control"] == "NT"


def test_warnings_for_unseen_targets_and_collapsed_predictions(screen, model, labels):
    seen, unseen = labels[0][0], labels[0][-1]
    with pytest.warns(
        UserWarning, match=rf"1 of 2 perturbations target genes never perturbed in fine-tuning \({unseen}: "
    ):
        pred = scgpt.tl.predict_perturbation(screen, model, [seen, unseen], n_control_cells=10)
    assert list(pred.obs["n_unseen_targets"]) == [0, 1]
    blind = model.adapt()
    with torch.no_grad():
        blind.net.pert_encoder.weight.zero_()  # flags without effect: every perturbation gets the same prediction
    blind.registry_ = dict(model.registry_)
    with pytest.warns(UserWarning, match=r"nearly identical \(Pearson > 0.99 .*official issue #277"):
        scgpt.tl.predict_perturbation(screen, blind, labels[0][:3], n_control_cells=10)
    rng = np.random.default_rng(0)
    assert _collapsed_pairs(rng.normal(size=(3, 50)), ["a", "b", "c"])[0] == []
    same = np.tile(rng.normal(size=50), (2, 1))
    pairs, top = _collapsed_pairs(same, ["a", "b"])
    assert [p[:2] for p in pairs] == [("a", "b")] and top == pytest.approx(1.0)


def test_clear_errors(screen, model, labels, tiny_model):
    single = labels[0][0]
    predict = scgpt.tl.predict_perturbation
    for bad in ("A++B", "A+control", "", f"{single}+ctrl"):
        with pytest.raises(ValueError, match="Invalid perturbation label"):
            predict(screen, model, [bad])
    with pytest.raises(ValueError, match=r"target gene\(s\) \['NOTAGENE'\] are not in the model's vocabulary"):
        predict(screen, model, [single, f"{single}+NOTAGENE"])
    with pytest.raises(ValueError, match="no control cells: the control label 'NT' does not occur"):
        predict(screen, model, [single], control="NT")
    with pytest.raises(ValueError, match="no control cells to predict from: n_control_cells must be at least 1"):
        predict(screen, model, [single], n_control_cells=0)
    with pytest.raises(KeyError, match="'target' is not a column of adata.obs"):
        predict(screen, model, [single], perturbation_key="target")
    with pytest.raises(ValueError, match="the control label 'control' is not a perturbation to predict"):
        predict(screen, model, ["control"])
    with pytest.raises(ValueError, match=r"requested twice"):
        predict(screen, model, [single, [single]])
    with pytest.raises(ValueError, match=r"perturbations=\[\] names none"):
        predict(screen, model, [])
    logged = screen.copy()
    logged.X = sp.csr_matrix(np.log1p(logged.X.toarray()) / 3)
    with pytest.raises(ValueError, match="expects raw counts"):
        predict(logged, model, [single])
    plain = tiny_model()
    with pytest.raises(ValueError, match="this model is not fine-tuned for perturbation prediction: it has no"):
        predict(screen, plain, [single])
    plain.registry_["task"] = "annotation"
    with pytest.raises(ValueError, match=r"\(it was fine-tuned for 'annotation'\)"):
        predict(screen, plain, [single])
    with pytest.raises(ValueError, match="gene_chunk=3 leaves no room beside the 3 target genes"):
        predict(screen, model, [labels[1][0] + f"+{EXTRA}"], gene_chunk=3)


@pytest.mark.golden
def test_an_official_perturbation_model_predicts_with_defaults(golden_dir, pbmc):
    """A TransformerGenerator fine-tuned by the official code (no record of its setup) predicts too."""
    official = ScGPT.from_pretrained(golden_dir / "official_perturbation")
    genes = list(pbmc.var_names[:2])
    pbmc.obs["perturbation"] = np.where(np.arange(pbmc.n_obs) < 100, "control", genes[0])
    pred = scgpt.tl.predict_perturbation(pbmc, official, [genes[0], "+".join(genes)], n_control_cells=20)
    params = pred.uns[PREDICTION_KEY]["params"]
    assert params["gene_chunk"] == 1536 and params["n_control_cells"] == 20 and np.isfinite(pred.X).all()
    assert list(pred.obs["n_unseen_targets"]) == [0, 0]  # unknown training genes: no warning
