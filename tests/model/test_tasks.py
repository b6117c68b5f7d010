"""The task registry: one definition per task, read by finetune, train, tl.annotate and the command line."""

from __future__ import annotations

import numpy as np
import pytest

import scgpt
from scgpt.model import TASKS, ScGPT, get_task
from scgpt.train import OBJECTIVES


def test_registry_holds_the_official_recipes():
    assert set(TASKS) == {"pretrain", "pretrain-masked", "annotation", "integration", "multiomic", "perturbation"}
    for name, task in TASKS.items():
        assert task.name == name and task.recipe.name == name
        assert set(task.recipe.active) <= set(OBJECTIVES)
    ann, integ = TASKS["annotation"], TASKS["integration"]
    assert ann.recipe.active == {"cls": 1.0} and ann.recipe.masking == "none" and ann.recipe.max_length == 3001
    assert ann.requires == ("labels_key",) and ann.schedule == "step"
    assert ann.defaults["lr"] == 1e-4 and ann.defaults["batch_size"] == 32 and ann.defaults["max_epochs"] == 10
    assert integ.recipe.active == {"mlm": 1, "mlm_zero": 1, "mvc": 1, "mvc_zero": 1, "ecs": 10, "dab": 1}
    assert integ.recipe.mask_ratio == 0.4 and integ.recipe.ecs_threshold == 0.8 and integ.recipe.include_zero_genes
    assert integ.requires == ("batch_key",) and integ.defaults["eps"] == 1e-4
    multi = TASKS["multiomic"]
    assert multi.recipe.active == {"mlm": 1, "mvc": 1, "dab": 1} and multi.recipe.include_zero_genes
    assert multi.multiomic and multi.requires == () and multi.optional == ("batch_key",)
    assert TASKS["pretrain"].recipe.masking == "generative" and TASKS["pretrain"].recipe.mask_ratio == (0.25, 0.5, 0.75)
    with pytest.raises(ValueError, match=r"Unknown task 'segmentation'; available: \['annotation', "):
        get_task("segmentation")


def test_task_heads_follow_the_data(base_model):
    cats = {"labels": list("abc"), "batches": ["x", "y"]}
    assert TASKS["annotation"].heads(base_model.config, cats) == {"n_cls": 3, "mvc_style": None, "dropout": 0.2}
    changes = TASKS["integration"].heads(base_model.config, cats)
    assert changes["n_batch_labels"] == 2 and changes["batch_norm"] == "dsbn" and changes["dab"]
    assert TASKS["pretrain"].heads(base_model.config, {}) == {"generative": True}


def test_command_line_choices_are_the_registry():
    from scgpt.cli import build_parser

    _, sub = build_parser()
    choices = {
        name: next(a.choices for a in sub[name]._actions if a.dest == "recipe") for name in ("pretrain", "finetune")
    }
    assert set(choices["finetune"]) == {n for n, t in TASKS.items() if t.stage == "finetune"}
    assert set(choices["pretrain"]) == {n for n, t in TASKS.items() if t.stage == "pretrain"}


def test_finetune_integration_records_the_batches(pbmc, tiny_model, tmp_path):
    pbmc.obs["site"] = np.where(np.arange(pbmc.n_obs) < 300, "s1", "s2")
    model = tiny_model()
    tuned = model.finetune(
        "integration", pbmc, batch_key="site", max_steps=2, max_length=64, schedule=None, checkpoint_dir=tmp_path
    )  # schedule=None, as the command line passes it: the task's
    c = tuned.config
    assert (c.n_batch_labels, c.batch_norm, c.dab, c.explicit_zero_prob, c.use_batch_labels) == (
        2,
        "dsbn",
        True,
        True,
        True,
    )
    assert tuned.registry_["batch_categories"] == ["s1", "s2"] and tuned.registry_["batch_key"] == "site"
    assert tuned.registry_["last_recipe"]["max_length"] == 64 and set(tuned.history_) >= {"train_ecs", "train_dab"}
    optimizer = tuned.trainer_.optimizers[0]
    scheduler = tuned.trainer_.lr_scheduler_configs[0].scheduler
    assert optimizer.defaults["eps"] == 1e-4 and type(scheduler).__name__ == "StepLR"  # the task's settings
    assert not model.config.dab  # a copy was fine-tuned
    emb = scgpt.tl.embed(pbmc, tuned, batch_key="site", max_length=64, copy=True).obsm["X_scGPT"]
    assert emb.shape == (700, 32) and np.isfinite(emb).all()


def test_finetune_clear_errors(pbmc, tiny_model):
    model = tiny_model()
    with pytest.raises(ValueError, match=r"finetune\('annotation'\) needs labels_key="):
        model.finetune("annotation", pbmc)
    with pytest.raises(KeyError, match="labels_key='nope' is not a column"):
        model.finetune("annotation", pbmc, labels_key="nope")
    pbmc.obs["b"] = "x"
    pbmc.obs.loc[pbmc.obs_names[:2], "b"] = None
    with pytest.raises(ValueError, match=r"obs\['b'\] has 2 cells without a batch \(first: '"):
        model.finetune("integration", pbmc, batch_key="b", max_steps=1)
    pbmc.obs["b"] = "nan"  # a missing value turned into a string by astype(str)
    with pytest.raises(ValueError, match="700 cells without a batch"):
        model.finetune("integration", pbmc, batch_key="b", max_steps=1)
    with pytest.raises(ValueError, match="freeze_layers must be between 0 and 2"):
        model.finetune("annotation", pbmc, labels_key="bulk_labels", freeze_layers=3)


def test_finetune_warns_about_keys_the_task_does_not_read(pbmc, tiny_model, tmp_path):
    pbmc.obs["site"] = "a"
    with pytest.warns(UserWarning, match=r"finetune\('annotation'\) does not use batch_key; ignored") as rec:
        tiny_model().finetune(
            "annotation", pbmc, labels_key="bulk_labels", batch_key="site", max_steps=1, max_length=32,
            early_stopping=False, checkpoint_dir=tmp_path,
        )  # fmt: skip
    assert rec[0].filename == __file__  # the warning points at the caller's line


def test_annotate_fine_tunes_through_the_registry(pbmc, tiny_model, monkeypatch, tmp_path):
    """tl.annotate with a reference calls ScGPT.finetune('annotation', ...), nothing of its own."""
    seen = []
    original = ScGPT.finetune

    def spy(self, task, *args, **kwargs):
        seen.append(task)
        return original(self, task, *args, **kwargs)

    monkeypatch.setattr(ScGPT, "finetune", spy)
    ref, query = pbmc[:400].copy(), pbmc[400:450].copy()
    scgpt.tl.annotate(
        query, tiny_model(), reference=ref, labels_key="bulk_labels", max_steps=2, max_length=32,
        early_stopping=False, checkpoint_dir=tmp_path,
    )  # fmt: skip
    assert seen == ["annotation"]
    assert set(query.obs["scgpt_celltype"].cat.categories) == set(pbmc.obs["bulk_labels"].cat.categories)
