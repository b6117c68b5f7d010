"""ScGPT.train: it learns, it resumes exactly, and fine-tuned models save in the official layout."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import torch

from scgpt.model import TASKS, ScGPT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("recipe", ["pretrain", "pretrain-masked"])
def test_pretraining_beats_the_cell_mean_baseline(pbmc, tmp_path, recipe, tiny_model):
    """A few hundred steps on real PBMC counts: held-out MSE on hidden values well below predicting the cell mean."""
    ScGPT.setup_anndata(pbmc)
    model = tiny_model(pbmc, generative=recipe == "pretrain")
    model.train(
        recipe=recipe,
        max_epochs=6,
        batch_size=16,
        plan_kwargs={"lr": 2e-3, "warmup_steps": 20},
        max_length=128,
        train_size=0.8,
        checkpoint_dir=tmp_path,
    )
    h = model.history_
    baseline, first, last = h["val_mean_baseline"][-1], h["val_mlm"][0], h["val_mlm"][-1]
    assert len(h["val_mlm"]) == 6 and last < first
    assert last < 0.85 * baseline, (last, baseline)
    assert (tmp_path / "logs" / "version_0" / "metrics.csv").is_file() and (tmp_path / "last.ckpt").is_file()


class Crash(Exception):
    pass


def _crash_at(step: int):
    import lightning.pytorch as pl

    class CrashCallback(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == step:
                raise Crash

    return CrashCallback()


def _step_at_start():
    import lightning.pytorch as pl

    class StepAtStart(pl.Callback):
        step = None

        def on_train_start(self, trainer, *args):
            self.step = trainer.global_step

    return StepAtStart()


def test_training_on_a_subset_uses_the_subset_labels(pbmc, tmp_path, tiny_model):
    """A subset of a set-up AnnData shares its registry; its cells must keep their own batch codes."""
    data = pbmc[:64].copy()
    data.obs["batch"] = np.where(np.arange(64) < 32, "x", "y")
    ScGPT.setup_anndata(data, batch_key="batch")
    sub = data[40:].copy()  # only "y" cells
    model = tiny_model(data, use_batch_labels=True, n_batch_labels=2)
    dm = model._datamodule(
        sub, TASKS["pretrain-masked"].recipe, batch_size=8, train_size=1.0, validation_size=0.0, seed=0
    )
    assert dm.source.n_obs == 24
    np.testing.assert_array_equal(dm.obs["batch_labels"], np.ones(24, dtype=np.int64))


@pytest.mark.parametrize(("length", "final"), [({"max_steps": 20}, 20), ({"max_epochs": 2}, 26)])
def test_resume_after_a_crash_gives_the_same_weights(pbmc, tmp_path, tiny_model, length, final):
    """Limited by steps or by epochs (cosine schedule over the whole run): the resumed run continues from the
    saved position in the data, not from the first batch."""
    data = pbmc[:200].copy()
    ScGPT.setup_anndata(data)
    kw = dict(
        recipe="pretrain-masked",
        **length,
        batch_size=16,
        plan_kwargs={"lr": 1e-3},
        max_length=64,
        train_size=1.0,
        checkpoint_every_n_steps=7,
    )  # fmt: skip  (13 batches per epoch: checkpoints mid-epoch)
    straight = tiny_model(data).train(checkpoint_dir=tmp_path / "a", **kw)

    crashed = tiny_model(data)
    with pytest.raises(Crash):
        crashed.train(checkpoint_dir=tmp_path / "b", callbacks=[_crash_at(10)], **kw)
    assert (tmp_path / "b" / "last.ckpt").is_file()  # saved at step 7, in the middle of the first epoch
    resumed = tiny_model(data)
    with torch.no_grad():  # other starting weights: only a real restore of the checkpoint can end equal
        for p in resumed.net.parameters():
            p.add_(0.1)
    start = _step_at_start()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*resuming from a checkpoint that ended before the epoch ended.*")
        resumed.train(checkpoint_dir=tmp_path / "b", resume=True, callbacks=[start], **kw)
    assert start.step == 7 and resumed.trainer_.global_step == final
    for (name, a), (_, b) in zip(straight.net.state_dict().items(), resumed.net.state_dict().items()):
        assert torch.equal(a, b), name
    saved = torch.load(tmp_path / "b" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == final  # the final step is saved, not only every 7th


def _official_keys(path):
    return {k: tuple(v.shape) for k, v in torch.load(path / "best_model.pt", weights_only=True).items()}


@pytest.mark.golden
def test_finetune_official_model_and_save_in_official_layout(golden_dir, pbmc, tmp_path):
    model = ScGPT.from_pretrained(golden_dir / "official_base")
    ScGPT.setup_anndata(pbmc)
    model.train(
        pbmc,
        recipe="pretrain-masked",
        max_steps=2,
        batch_size=8,
        max_length=64,
        train_size=1.0,
        checkpoint_dir=tmp_path / "ckpt",
    )
    out = model.save_pretrained(tmp_path / "finetuned")
    assert _official_keys(out) == _official_keys(golden_dir / "official_base")
    again = ScGPT.from_pretrained(out, strict=True)
    for (k, a), (_, b) in zip(model.net.state_dict().items(), again.net.state_dict().items()):
        assert torch.equal(a.cpu(), b), k


@pytest.mark.golden
@pytest.mark.parametrize(
    ("task", "layout", "keys"),
    [
        ("annotation", "official_annotation", {"labels_key": "bulk_labels"}),
        ("integration", "official_integration", {"batch_key": "batch"}),
    ],
)
def test_task_finetunes_save_like_the_official_task_models(golden_dir, pbmc, tmp_path, task, layout, keys):
    """finetune(task) through the registry gives the official task model's layout, keys and shapes."""
    pbmc.obs["batch"] = np.where(np.arange(pbmc.n_obs) % 2, "b", "a")
    base = ScGPT.from_pretrained(golden_dir / "official_base")
    model = base.finetune(
        task, pbmc, **keys, max_steps=2, batch_size=8, max_length=64, checkpoint_dir=tmp_path / "ckpt"
    )
    assert model is not base and base.config.n_cls == 1 and not base.config.dab  # the base is left alone
    assert model.registry_["task"] == task and model.trainer_.global_step == 2
    ours = _official_keys(model.save_pretrained(tmp_path / "out"))
    ref = _official_keys(golden_dir / layout)
    assert set(ours) == set(ref)
    for key, shape in ref.items():
        if key != "encoder.embedding.weight":  # the golden task models use a 768-gene vocabulary
            assert ours[key] == shape, key


def test_recipe_needs_matching_heads(pbmc, tiny_model):
    ScGPT.setup_anndata(pbmc, labels_key="bulk_labels")
    model = tiny_model(pbmc)
    with pytest.raises(ValueError, match="generative masking needs config.generative=True"):
        model.train(recipe="pretrain", max_steps=1)
    with pytest.raises(ValueError, match=r"cls needs a classification head"):
        model.train(recipe="annotation", max_steps=1)
    with pytest.raises(
        ValueError, match=r"10 labels but the classification head has 3 outputs; use model.finetune\('annotation'"
    ):
        model.adapt(n_cls=3).train(recipe="annotation", max_steps=1)
    with pytest.raises(ValueError, match="not set up: call scgpt.model.ScGPT.setup_anndata"):
        fresh = ad.AnnData(pbmc.X.copy(), obs=pbmc.obs[[]].copy(), var=pbmc.var[[]].copy())
        tiny_model(pbmc).train(fresh, recipe="pretrain-masked", max_steps=1)


def test_restore_best_ends_with_the_weights_of_the_best_epoch(pbmc, tmp_path, tiny_model):
    """As the official tutorials' best_model: the final weights give the lowest validation loss of the run."""
    data = pbmc[:200].copy()
    ScGPT.setup_anndata(data)
    model = tiny_model(data).train(
        recipe="pretrain-masked",
        max_epochs=3,
        batch_size=16,
        plan_kwargs={"lr": 3e-2, "schedule": "constant"},
        max_length=64,
        train_size=0.7,
        restore_best=True,
        checkpoint_dir=tmp_path,
    )  # fmt: skip  (a high learning rate: the validation loss does not fall monotonically)
    losses = model.history_["val_loss"]
    assert losses.index(min(losses)) < len(losses) - 1  # the last epoch is not the best here
    again = model.trainer_.validate(model.trainer_.lightning_module, datamodule=model.trainer_.datamodule)
    assert again[0]["val_loss"] == pytest.approx(min(losses), rel=1e-6)
