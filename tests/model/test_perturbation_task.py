"""finetune('perturbation'): the official generator recipe (flags, affine decoder, control -> perturbed pairs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import scgpt
from scgpt.data import GeneVocab
from scgpt.data._screen import PairLoader, pair_batch, screen_from_adata, target_tokens, validation_batches
from scgpt.model import TASKS, ScGPT
from scgpt.model._perturbation import ARGS_KEY
from scgpt.train._losses import pearson_delta
from scgpt.train._runner import BestWeights

EXTRA = "EXTRA1"  # in the vocabulary, never measured


@pytest.fixture(scope="module")
def screen():
    """SYNTHETIC screen: 40 genes, 6 single and 2 double knock-downs, 24 cells each, 48 controls."""
    a = scgpt.datasets.simulate_perturbations(
        n_genes=40, singles=6, doubles=2, n_cells_per_condition=24, n_control_cells=48, seed=0
    )
    return a


def _model(genes, seed: int = 0, **config) -> ScGPT:
    torch.manual_seed(seed)
    arch = {"d_model": 32, "n_heads": 4, "d_hid": 64, "n_layers": 2, "dropout": 0.1, "n_cls": None, **config}
    return ScGPT(vocab=GeneVocab.from_genes([*genes, EXTRA]), **arch)


@pytest.fixture(scope="module")
def tuned(screen, tmp_path_factory):
    base = _model(screen.var_names)
    model = base.finetune(
        "perturbation",
        screen,
        max_epochs=4,
        batch_size=32,
        lr=3e-3,
        schedule="constant",
        validation_size=0.25,
        checkpoint_dir=tmp_path_factory.mktemp("ckpt"),
    )
    return base, model


def test_registry_entry():
    task = TASKS["perturbation"]
    assert task.data == "pairs" and task.stage == "finetune" and task.schedule == "step"
    assert task.recipe.active == {"mlm": 1.0} and task.recipe.masking == "none" and task.recipe.max_length == 1536
    assert task.defaults == {
        "lr": 1e-4,
        "batch_size": 64,
        "max_epochs": 15,
        "validation_size": 0.1,
        "early_stopping": True,
        "gradient_clip_val": 1.0,
    }
    changes = task.heads(_model(["A"]).config, {})
    assert changes["n_pert_flags"] == 3 and changes["pert_pad_id"] == 0 and changes["expr_decoder"] == "affine"
    assert changes["mvc_style"] is None and changes["n_cls"] == 1 and changes["pad_value"] == 0.0
    assert changes["dropout"] == 0.0  # the perturbation tutorial's


def test_training_loss_falls_and_the_best_epoch_is_kept(tuned):
    base, model = tuned
    c = model.config
    assert (c.n_pert_flags, c.pert_pad_id, c.expr_decoder, c.mvc_style, c.n_cls) == (3, 0, "affine", None, 1)
    assert base.config.n_pert_flags is None  # a copy was fine-tuned
    losses = model.history_["train_loss"]
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0]
    scores = model.history_["val_pearson_delta"]
    assert len(scores) == 4 and all(-1 <= s <= 1 for s in scores)
    assert model.registry_["perturbation"]["best_val_pearson_delta"] == pytest.approx(max(scores))
    again = model.trainer_.validate(model.trainer_.lightning_module, datamodule=model.trainer_.datamodule)
    assert again[0]["val_pearson_delta"] == pytest.approx(max(scores), abs=1e-6)  # the restored weights are the best


def test_the_model_remembers_its_setup(tuned, screen):
    _, model = tuned
    r = model.registry_
    assert r["task"] == "perturbation" and r["perturbation_key"] == "perturbation" and r["control"] == "control"
    setup = r["perturbation"]
    assert setup["tokens"] == list(screen.var_names)  # the measured panel, in its order
    train, val = setup["train_perturbations"], setup["val_perturbations"]
    labels = set(screen.obs["perturbation"]) - {"control"}
    assert val and set(train) | set(val) == labels and not set(train) & set(val)
    genes = lambda ls: {g for s in ls for g in s.split("+")}  # noqa: E731
    assert all(genes([label]) - genes(train) for label in val)  # each validation label has a held-out gene
    assert set(setup["train_genes"]) == genes(train)
    assert setup["max_length"] == 1536 and setup["flags"] == {"not_perturbed": 0, "perturbed": 1}
    assert setup["n_control_cells"] == 48
    assert model.args_[ARGS_KEY]["train_genes"] == setup["train_genes"] and model.args_["input_style"] == "log1p"


def _screen_obj(model, adata, labels):
    obs = adata.obs["perturbation"].astype(str).to_numpy()
    targets = target_tokens(sorted(set(labels) | {"control"}), model.vocab, control="control")
    return screen_from_adata(
        model.vocab, adata, obs, targets, control="control", layer=None, gene_key=None, use_aliases=True
    )


def test_pairs_flags_values_and_extra_tokens(screen):
    adata = screen.copy()
    first = sorted(set(screen.obs["perturbation"]) - {"control"})[0]
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str).replace({first: EXTRA})
    model = _model(screen.var_names)
    labels = sorted(set(adata.obs["perturbation"]) - {"control"})
    s = _screen_obj(model, adata, labels)
    X = np.log1p(adata.X.toarray() / adata.X.toarray().sum(1, keepdims=True) * 1e4)
    ctrl, rows = s.control_rows[:3], np.flatnonzero(s.labels == EXTRA)[:1]
    single = next(label for label in labels if "+" not in label and label != EXTRA)
    names = [EXTRA, single, "control"]
    outs = np.concatenate([rows, s.rows_of(single)[:1], ctrl[:1]])
    b = pair_batch(s, ctrl, outs, names, np.arange(40), pad_id=model.vocab.pad_id, pad_value=0.0)
    assert b.genes.shape == (3, 41)  # 40 measured genes + one extra slot
    np.testing.assert_array_equal(b.genes[:, :40].numpy(), np.tile(model.vocab.lookup(screen.var_names), (3, 1)))
    assert b.genes[0, 40] == model.vocab[EXTRA] and bool(b.padding_mask[1:, 40].all())
    assert b.pert_flags[0].tolist() == [0] * 40 + [1]  # the unmeasured target: extra token with its flag, value 0
    assert b.values[0, 40] == 0 and not b.predict_mask[:, 40].any() and b.predict_mask[:, :40].all()
    col = list(screen.var_names).index(single)
    assert b.pert_flags[1].nonzero().ravel().tolist() == [col] and not b.pert_flags[2].any()
    np.testing.assert_allclose(b.values[:, :40].numpy(), X[ctrl], rtol=1e-5)
    np.testing.assert_allclose(b.target[:, :40].numpy(), X[outs], rtol=1e-5)


def test_pairing_is_seeded_and_targets_survive_gene_sampling(screen):
    """Official bug #298: above max_length a random gene subset is drawn per minibatch; targets are always in it."""
    model = _model(screen.var_names)
    labels = sorted(set(screen.obs["perturbation"]) - {"control"})
    s = _screen_obj(model, screen, labels)
    examples = np.flatnonzero(s.labels != "control")
    kw = dict(batch_size=16, max_length=8, pad_id=model.vocab.pad_id, pad_value=0.0)
    a, b, c = (PairLoader(s, examples, seed=seed, **kw) for seed in (1, 1, 2))
    first = list(a)
    assert len(first) == len(a) == -(-len(examples) // 16)
    for x, y in zip(first, b):
        assert torch.equal(x.genes, y.genes) and torch.equal(x.values, y.values) and torch.equal(x.target, y.target)
    assert not all(torch.equal(x.values, z.values) for x, z in zip(first, c))
    second = list(a)  # the next epoch: new order and pairing
    assert not torch.equal(first[0].cells, second[0].cells)
    for batch in first:
        assert batch.genes.shape[1] == 8
        for i, cell in enumerate(batch.cells.numpy()):
            wanted = s.targets[s.labels[cell]]
            flagged = batch.genes[i][batch.pert_flags[i] == 1].numpy()
            assert sorted(flagged) == sorted(wanted)  # every target present and flagged


def test_validation_batches_and_pearson_delta(screen):
    model = _model(screen.var_names)
    labels = sorted(set(screen.obs["perturbation"]) - {"control"})[:3]
    s = _screen_obj(model, screen, labels)
    kw = dict(n_cells=10, max_length=1536, pad_id=model.vocab.pad_id, pad_value=0.0, seed=0)
    batches = validation_batches(s, labels, **kw)
    assert len(batches) == len(labels)
    assert torch.equal(batches[0].values, batches[-1].values)  # the same control cells for every perturbation
    for label, b in zip(labels, batches):
        assert b.genes.shape[0] == 10
        np.testing.assert_allclose(b.control_mean.numpy(), s.control_mean, rtol=1e-6)
        np.testing.assert_allclose(b.observed_mean.numpy(), s.mean_of(label), rtol=1e-6)
    rng = np.random.default_rng(0)
    pred, ctrl, obs = rng.normal(size=(5, 30)), rng.normal(size=30), rng.normal(size=30)
    mask = np.ones(30, dtype=bool)
    mask[:4] = False
    want = np.corrcoef(pred.mean(0)[mask] - ctrl[mask], obs[mask] - ctrl[mask])[0, 1]
    got = pearson_delta(*(torch.tensor(v) for v in (pred, ctrl, obs)), torch.tensor(mask))
    assert float(got) == pytest.approx(want, abs=1e-6)
    assert float(pearson_delta(torch.zeros(2, 30), torch.zeros(30), torch.tensor(obs), torch.tensor(mask))) == 0.0


def test_best_weights_follow_the_monitor_and_mode():
    best = BestWeights("val_pearson_delta", "max")
    assert best.mode == "max"
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        BestWeights("val_loss", "lowest")


@pytest.mark.golden
def test_saved_in_the_official_layout_like_the_golden_perturbation_model(golden_dir, pbmc, tmp_path):
    """A model fine-tuned here and saved officially has the keys and shapes of the official TransformerGenerator."""
    base = ScGPT.from_pretrained(golden_dir / "official_base")  # 32 wide, 4 heads, 2 layers: the golden sizes
    genes = [g for g in pbmc.var_names if g in base.vocab][:3]
    pbmc.obs["perturbation"] = np.array(["control", *genes, f"{genes[0]}+{genes[1]}"])[np.arange(pbmc.n_obs) % 5]
    model = base.finetune(
        "perturbation", pbmc, max_steps=2, batch_size=8, max_length=128, checkpoint_dir=tmp_path / "ckpt"
    )
    out = model.save_pretrained(tmp_path / "official")
    ours = {k: tuple(v.shape) for k, v in torch.load(out / "best_model.pt", weights_only=True).items()}
    ref = {
        k: tuple(v.shape)
        for k, v in torch.load(golden_dir / "official_perturbation" / "best_model.pt", weights_only=True).items()
    }
    assert set(ours) == set(ref)
    for key, shape in ref.items():
        if key != "encoder.embedding.weight":  # the golden model has a 768-gene vocabulary
            assert ours[key] == shape, key
    args = json.loads((out / "args.json").read_text())
    assert args["pert_pad_id"] == 0 and args["pad_value"] == 0 and args["input_style"] == "log1p"
    assert args[ARGS_KEY]["perturbation_key"] == "perturbation"
    again = ScGPT.from_pretrained(out, strict=True)
    assert again.config == model.config
    for (k, a), (_, b) in zip(model.net.state_dict().items(), again.net.state_dict().items()):
        assert torch.equal(a.cpu(), b), k


def test_finetune_clear_errors(screen):
    model = _model(screen.var_names)
    with pytest.raises(KeyError, match="'target' is not a column of adata.obs"):
        model.finetune("perturbation", screen, perturbation_key="target")
    with pytest.raises(ValueError, match="no control cells: the control label 'ctrl' does not occur"):
        model.finetune("perturbation", screen, control="ctrl")
    only = screen[screen.obs["perturbation"] == "control"].copy()
    with pytest.raises(ValueError, match="holds only control cells"):
        model.finetune("perturbation", only)
    first = sorted(set(screen.obs["perturbation"]) - {"control"})[0]
    outside = screen.copy()
    outside.obs["perturbation"] = outside.obs["perturbation"].astype(str).replace({first: "NOTAGENE"})
    with pytest.raises(ValueError, match=r"target gene\(s\) \['NOTAGENE'\] are not in the model's vocabulary"):
        model.finetune("perturbation", outside)
    logged = screen.copy()
    logged.X = sp.csr_matrix(np.log1p(logged.X.toarray()) / 3)
    with pytest.raises(ValueError, match="expects raw counts"):
        model.finetune("perturbation", logged)
    with pytest.raises(KeyError, match=r"val_perturbations has label\(s\) \['NOPE'\]"):
        model.finetune("perturbation", screen, val_perturbations=["NOPE"])
    with pytest.raises(ValueError, match="lists the control label"):
        model.finetune("perturbation", screen, train_perturbations=["control"])
    with pytest.raises(ValueError, match=rf"\['{first}'\] are both training and validation"):
        model.finetune("perturbation", screen, train_perturbations=[first], val_perturbations=[first])
    with pytest.raises(ValueError, match="needs a continuous value encoder"):
        _model(screen.var_names, input_emb_style="category", n_input_bins=53).finetune("perturbation", screen)
    ScGPT.setup_anndata(screen)
    with pytest.raises(ValueError, match=r"trains on pairs of a perturbation screen.*model.finetune\('perturbation'"):
        model.train(screen, recipe="perturbation", max_steps=1)
    with pytest.warns(UserWarning, match=r"finetune\('annotation'\) does not use perturbation_key"):
        with pytest.raises(ValueError, match="needs labels_key"):
            model.finetune("annotation", screen, perturbation_key="perturbation")


def test_validation_targets_taken_from_the_training_list_are_reported(capsys):
    """Catches fine-tuning moving training targets into validation silently: the split logged
    "2 train, 0 validation, 1 test" and then "1 for validation", naming neither the moved target nor the option."""
    import logging

    from scgpt._logging import logger
    from scgpt.data._screen import split_labels

    stream = __import__("io").StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        labels = np.array(["control", "A", "B", "C", "D"])
        train, val = split_labels(
            labels, control="control", key="perturbation", train=["A", "B", "C"], val=None, validation_size=0.34, seed=0
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    text = stream.getvalue()
    assert len(val) == 1 and set(train) | set(val) == {"A", "B", "C"}
    assert f"1 of the train_perturbations held out for validation and early stopping ({val[0]})" in text
    assert "pass val_perturbations=" in text and "split_perturbations:" not in text
