"""scgpt.tl.integrate: the official integration recipe through the task registry, zero-shot, and reuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scgpt
from scgpt.model import ScGPT


@pytest.fixture
def batched(pbmc):
    pbmc.obs["batch"] = np.where(np.arange(pbmc.n_obs) % 2, "run1", "run2")
    return pbmc


@pytest.fixture(scope="module")
def tuned(pbmc_counts, tiny_model, tmp_path_factory):
    """A tiny model fine-tuned for integration on 200 genes of pbmc68k with two pseudo-batches."""
    adata = pbmc_counts.copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2, "run1", "run2")
    out = scgpt.tl.integrate(
        adata, tiny_model(), batch_key="batch", n_top_genes=200, max_steps=4, batch_size=32,
        checkpoint_dir=tmp_path_factory.mktemp("ckpt"), copy=True,
    )  # fmt: skip
    return out


def test_finetuned_integration_writes_the_embedding_and_params(tuned):
    emb = tuned.obsm["X_scGPT_integrated"]
    assert emb.shape == (700, 32) and emb.dtype == np.float32 and np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    uns = tuned.uns["X_scGPT_integrated"]
    assert uns["params"]["mode"] == "finetune" and uns["params"]["batch_key"] == "batch"
    assert uns["n_genes"] == 200 and uns["batches"] == ["run2", "run1"]


def test_finetuning_is_deterministic_and_a_tuned_model_is_reused(batched, tiny_model, tmp_path, monkeypatch):
    kw = {"batch_key": "batch", "n_top_genes": 200, "max_steps": 4, "batch_size": 32}
    model = tiny_model()
    tuned = model.finetune("integration", batched[:, :200].copy(), batch_key="batch", max_steps=4, batch_size=32,
                           checkpoint_dir=tmp_path / "a")  # fmt: skip
    again = model.finetune("integration", batched[:, :200].copy(), batch_key="batch", max_steps=4, batch_size=32,
                           checkpoint_dir=tmp_path / "b")  # fmt: skip
    for (k, a), (_, b) in zip(tuned.net.state_dict().items(), again.net.state_dict().items()):
        assert np.array_equal(a.numpy(), b.numpy()), k  # same seed, same weights
    assert tuned.registry_["tokens"] == list(batched.var_names[:200])  # the gene panel travels with the model
    calls = []
    monkeypatch.setattr(ScGPT, "finetune", lambda *a, **k: calls.append(1))
    scgpt.tl.integrate(batched, tuned, batch_key="batch")  # embeds, no training
    assert calls == [] and batched.uns["X_scGPT_integrated"]["n_genes"] == 200
    with pytest.raises(TypeError, match="fine-tuned for integration already"):
        scgpt.tl.integrate(batched, tuned, batch_key="batch", key_added="x", **{k: kw[k] for k in ("max_steps",)})


def test_cells_of_unseen_batches_get_the_average_batch(batched, tiny_model, tmp_path):
    tuned = tiny_model().finetune("integration", batched, batch_key="batch", max_steps=2, checkpoint_dir=tmp_path)
    new = batched[:50].copy()
    new.obs["batch"] = "run3"
    with pytest.warns(UserWarning, match=r"1 batches were not seen in training \(\['run3'\]\)"):
        scgpt.tl.integrate(new, tuned, batch_key="batch")
    emb = new.obsm["X_scGPT_integrated"]
    assert np.isfinite(emb).all()
    known = batched[:50].copy()
    scgpt.tl.integrate(known, tuned, batch_key="batch")
    assert np.abs(emb - known.obsm["X_scGPT_integrated"]).max() > 1e-4  # another batch: other statistics


def test_zero_shot_is_the_pretrained_embedding(batched, base_model):
    scgpt.tl.integrate(batched, base_model, batch_key="batch", mode="zero_shot")
    ref = scgpt.tl.embed(batched, base_model, copy=True).obsm["X_scGPT"]
    np.testing.assert_allclose(batched.obsm["X_scGPT_integrated"], ref, atol=1e-6)
    assert batched.uns["X_scGPT_integrated"]["params"]["mode"] == "zero_shot"


def test_clear_errors(batched, base_model):
    with pytest.raises(ValueError, match="integrate needs `batch_key=`"):
        scgpt.tl.integrate(batched, base_model)
    with pytest.raises(KeyError, match="batch_key='donor' is not a column"):
        scgpt.tl.integrate(batched, base_model, batch_key="donor")
    batched.obs["one"] = "x"
    with pytest.raises(ValueError, match="holds a single batch"):
        scgpt.tl.integrate(batched, base_model, batch_key="one")
    batched.obs["lonely"] = np.where(np.arange(700) == 0, "alone", "many")
    with pytest.raises(ValueError, match=r"batches with a single cell \(\['alone'\]\)"):
        scgpt.tl.integrate(batched, base_model, batch_key="lonely")
    with pytest.raises(ValueError, match="mode must be"):
        scgpt.tl.integrate(batched, base_model, batch_key="batch", mode="harmony")


def test_an_scgpt_object_is_fine_tuned_in_place_and_reused(batched, tiny_model, tmp_path, monkeypatch):
    """The caller keeps the fine-tuned model in the object it passed, and a second call only embeds.

    Catches: the fine-tuned copy being lost (the old ``return_model`` gone without a replacement), the object
    left pretrained, training settings not reaching fine-tuning, and a tuned model trained again.
    """
    model = tiny_model()
    out = scgpt.tl.integrate(
        batched, model, batch_key="batch", n_top_genes=100, max_steps=2, batch_size=16, copy=True,
        checkpoint_dir=tmp_path,
    )  # fmt: skip
    assert "X_scGPT_integrated" in out.obsm and "X_scGPT_integrated" not in batched.obsm
    assert model.registry_["task"] == "integration" and len(model.registry_["tokens"]) == 100
    assert model.trainer_.datamodule.batch_size == 16  # batch_size is the fine-tuning minibatch
    assert model.registry_["last_recipe"]["max_length"] == 101  # every gene of the panel, plus <cls>
    zero = scgpt.tl.integrate(batched, tiny_model(), batch_key="batch", mode="zero_shot", batch_size=7, copy=True)
    assert zero.obsm["X_scGPT_integrated"].shape == (700, 32)  # batch_size alone is no training option
    weights = {k: v.clone() for k, v in model.net.state_dict().items()}
    monkeypatch.setattr(scgpt.model.ScGPT, "finetune", lambda *a, **k: pytest.fail("trained again"))
    again = batched.copy()
    assert scgpt.tl.integrate(again, model, batch_key="batch") is None
    np.testing.assert_allclose(again.obsm["X_scGPT_integrated"], out.obsm["X_scGPT_integrated"], atol=1e-6)
    assert all(torch.equal(v, model.net.state_dict()[k]) for k, v in weights.items())
    monkeypatch.undo()


def test_a_model_given_by_name_stays_pretrained(batched, tmp_path):
    """Fine-tuning a model loaded by name must not change the cached pretrained model that later calls load.

    Catches: fine-tuning the object that ``resolve_model`` caches in place, so the next ``embed(adata, "demo")``
    silently runs the integration model.
    """
    from scgpt.model import resolve_model

    cached, _ = resolve_model("demo")
    before = {k: v.clone() for k, v in cached.net.state_dict().items()}
    scgpt.tl.integrate(
        batched[:120].copy(), "demo", batch_key="batch", n_top_genes=50, max_steps=1, checkpoint_dir=tmp_path
    )
    again, _ = resolve_model("demo")
    assert again.registry_.get("task") is None
    assert all(torch.equal(v, again.net.state_dict()[k]) for k, v in before.items())
