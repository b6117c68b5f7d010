"""Diverged training is caught, never passed on: training stops at the first non-finite loss or weight with the
step and the learning rate (the last finite checkpoint kept); non-finite weights are neither saved nor run; a
perturbation evaluation never averages over NaN predictions without a word."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

import scgpt
from scgpt.data import GeneVocab
from scgpt.model import ScGPT
from scgpt.train import TrainingDiverged


@pytest.fixture(scope="module")
def screen():
    """SYNTHETIC screen: 40 genes, 6 single and 2 double knock-downs, 24 cells each, 48 controls."""
    return scgpt.datasets.simulate_perturbations(
        n_genes=40, singles=6, doubles=2, n_cells_per_condition=24, n_control_cells=48, seed=0
    )


def _perturbation_model(screen) -> ScGPT:
    torch.manual_seed(0)
    return ScGPT(vocab=GeneVocab.from_genes(list(screen.var_names)), d_model=32, n_heads=4, d_hid=64, n_layers=2)


@pytest.mark.slow
def test_a_diverging_finetune_stops_with_the_step_and_the_learning_rate(screen, tmp_path):
    """Bug caught: ``finetune("perturbation", ..., lr=1e4)`` returning a model with 46 NaN weight tensors and NaN
    losses in its history, without a word (its predictions are NaN), and a checkpoint of the NaN state on disk."""
    base = _perturbation_model(screen)
    with pytest.raises(TrainingDiverged) as info:
        base.finetune(
            "perturbation", screen, max_epochs=3, batch_size=32, lr=1e4, validation_size=0.25, checkpoint_dir=tmp_path
        )
    e = info.value
    assert e.step == 2 and e.epoch == 0 and e.lr == 1e4 and math.isinf(e.loss) and len(e.tensors) == 46
    assert str(e).startswith("training diverged at step 2 (epoch 0, learning rate 1e+04): the loss is inf and 46 ")
    assert "lower learning rate (e.g. lr=1e+03)" in str(e) and "no checkpoint was written before" in str(e)
    assert not (tmp_path / "last.ckpt").exists()  # no checkpoint of a NaN state
    assert all(torch.isfinite(v).all() for v in base.net.state_dict().values())  # the caller's model is untouched


class _PoisonAt(pl.Callback):
    """An infinite gradient at one step: the optimiser step that follows makes the weights infinite."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step + 1 == self.step:
            next(pl_module.parameters()).grad.fill_(math.inf)


@pytest.mark.slow
def test_divergence_mid_run_keeps_the_last_finite_checkpoint(pbmc, tiny_model, tmp_path):
    """Bug caught: a run whose weights turn infinite at step 5 training on to the end (every later step NaN), or
    its periodic checkpoint written after the divergence, so that resuming restores the NaN weights."""
    model = tiny_model(pbmc[:160].copy())
    ScGPT.setup_anndata(model.adata)
    with pytest.raises(TrainingDiverged, match=r"at step 5 \(epoch 0, learning rate ") as info:
        model.train(
            recipe="pretrain-masked", max_epochs=1, batch_size=16, max_length=32, train_size=1.0, checkpoint_dir=tmp_path,
            checkpoint_every_n_steps=2, gradient_clip_val=0, accelerator="cpu", progress=False, callbacks=[_PoisonAt(5)],
        )  # fmt: skip
    assert info.value.checkpoint == tmp_path / "last.ckpt"
    assert f"the last checkpoint, written before, is {tmp_path / 'last.ckpt'} (finite)" in str(info.value)
    assert info.value.tensors == ["encoder.embedding.weight"]
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())


def _with_infinite_weight(model: ScGPT) -> ScGPT:
    with torch.no_grad():
        model.net.encoder.embedding.weight[5, 0] = math.inf
    return model


def test_non_finite_weights_are_never_saved(tiny_model, tmp_path):
    """Bug caught: ``save()`` / ``save_pretrained()`` writing a diverged model (NaN or infinite weights), which then
    fails at load (or gives NaN for every cell) far from the training run that caused it."""
    model = _with_infinite_weight(tiny_model())
    for save, folder in ((model.save, tmp_path / "native"), (model.save_pretrained, tmp_path / "official")):
        with pytest.raises(ValueError, match=r"weights hold NaN or infinite values in 1 tensors .*nothing was written"):
            save(folder)
        assert not folder.exists()


def test_inference_with_non_finite_weights_is_an_error_not_nan(pbmc):
    """Bug caught: a model with one infinite weight (in memory: a diverged run, an edit) embedding every cell as
    all-NaN without a word; and the error coming after ``obsm`` was written."""
    model = _with_infinite_weight(ScGPT.from_pretrained("demo"))
    cells = pbmc[:20].copy()
    with pytest.raises(ValueError, match=r"^embed: the model's weights hold NaN or infinite values in 1 tensors"):
        scgpt.tl.embed(cells, model)
    assert "X_scGPT" not in cells.obsm
    with torch.no_grad():
        model.net.encoder.embedding.weight.data[5, 0] = 0.0  # through .data, which no version counter sees
    scgpt.tl.embed(cells, model)
    assert np.isfinite(cells.obsm["X_scGPT"]).all()
    with torch.no_grad():
        model.net.encoder.embedding.weight.data[5, 0] = math.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.get_latent_representation(cells)
    with pytest.raises(ValueError, match=r"^get_gene_embeddings: the model's weights hold NaN or infinite values"):
        model.get_gene_embeddings()


def test_evaluate_perturbation_refuses_nan_predictions(screen):
    """Bug caught: the ``"mean"`` row of ``evaluate_perturbation`` silently skipping the perturbations whose
    prediction is NaN (a diverged model), so a method that failed on most perturbations scores as well as the rest."""
    pred = scgpt.tl.perturbation_baseline(screen, ["AR", "E2F1", "JUN", "PHB"], method="train_mean", train=["EGR1"])
    pred.X = np.asarray(pred.X, dtype=np.float64)
    pred.X[[1, 3]] = np.nan
    pattern = r"prediction 'train_mean' holds NaN or infinite values for 2 of the 4 perturbations \(first: 'E2F1'\)"
    with pytest.raises(ValueError, match=pattern):
        scgpt.tl.evaluate_perturbation(screen, {"train_mean": pred})
