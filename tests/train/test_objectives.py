"""The objective registry: each loss term is one small function, a recipe names them with weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scgpt.data import AnnDataSource
from scgpt.model import TASKS
from scgpt.train import OBJECTIVES, Recipe, ScGPTTrainingPlan, check_recipe, objective
from scgpt.train._losses import masked_mse


@pytest.fixture(scope="module")
def batch_and_model(pbmc_counts, tiny_model):
    model = tiny_model(dropout=0.0, mvc_style="inner product", explicit_zero_prob=True)
    source = AnnDataSource(pbmc_counts, np.arange(765), len(model.vocab))
    dm = model.make_datamodule(source, "pretrain-masked", batch_size=8, train_size=1.0)
    batch = next(iter(dm.train_dataloader()))
    return model, batch


def test_terms_are_the_direct_computations_and_the_loss_their_weighted_sum(batch_and_model):
    model, batch = batch_and_model
    recipe = Recipe("t", {"mlm": 2.0, "mvc": 0.5, "mlm_zero": 1.0, "ecs": 0.0})
    plan = ScGPTTrainingPlan(model.net.eval(), recipe)
    with torch.no_grad():
        losses = plan.compute_losses(batch)
        enc = model.net.encode(batch.genes, batch.values, batch.padding_mask)
        mlm = masked_mse(model.net.expression(enc)[0], batch.target, batch.predict_mask)
        mvc = masked_mse(model.net.mvc(enc)[0], batch.target, batch.predict_mask)
    assert set(losses) == {"mlm", "mvc", "mlm_zero", "loss", "mean_baseline"}  # weight 0: not computed
    torch.testing.assert_close(losses["mlm"], mlm)
    torch.testing.assert_close(losses["mvc"], mvc)
    torch.testing.assert_close(losses["loss"], 2 * mlm + 0.5 * mvc + losses["mlm_zero"])


def test_a_new_objective_is_one_entry(batch_and_model):
    model, batch = batch_and_model
    try:

        @objective("embedding_norm", needs=lambda config: None if config.d_model == 32 else "width 32")
        def embedding_norm(step):
            return step.enc.cell_emb.norm(dim=1).mean()

        plan = ScGPTTrainingPlan(model.net.eval(), Recipe("t", {"mlm": 1.0, "embedding_norm": 0.1}))
        with torch.no_grad():
            losses = plan.compute_losses(batch)
            norm = model.net.encode(batch.genes, batch.values, batch.padding_mask).cell_emb.norm(dim=1).mean()
        torch.testing.assert_close(losses["embedding_norm"], norm)
        torch.testing.assert_close(losses["loss"], losses["mlm"] + 0.1 * norm)
    finally:
        OBJECTIVES.pop("embedding_norm", None)


def test_recipes_are_checked_against_the_network(tiny_model):
    config = tiny_model(mvc_style=None).config
    with pytest.raises(ValueError, match=r"unknown objectives \['mse'\]"):
        check_recipe(config, Recipe("t", {"mse": 1.0}))
    with pytest.raises(ValueError, match="no objective with a positive weight"):
        check_recipe(config, Recipe("t", {"mlm": 0.0}))
    with pytest.raises(ValueError, match=r"mvc needs an MVC decoder \(config.mvc_style\); dab needs the adversarial"):
        check_recipe(config, Recipe("t", {"mvc": 1.0, "dab": 1.0}))
    check_recipe(config, TASKS["pretrain-masked"].recipe.replace(objectives={"mlm": 1.0}))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mask_ratio": 1.5}, r"mask_ratio must lie in \[0, 1\)"),
        ({"mask_ratio": (0.25, 1.0)}, r"mask_ratio must lie in \[0, 1\)"),
        ({"max_length": 1}, "max_length must be at least 2"),
        ({"masking": "random"}, "masking must be"),
        ({"objectives": {"mlm": -1.0}}, "weights must be non-negative"),
    ],
)
def test_bad_recipe_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        Recipe("t", **changes)
