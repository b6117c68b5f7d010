"""Saved models remember what they are: a model fine-tuned for integration or multi-omic integration, saved in
either format (``save``: ``model.pt``; ``save_pretrained``: the official ``args.json`` + ``best_model.pt``) and
loaded again, is recognised as fine-tuned: ``tl.integrate`` embeds new cells with it instead of fine-tuning again."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import scgpt
from scgpt.model import ScGPT
from scgpt.model._scgpt import REGISTRY_KEY

pytestmark = pytest.mark.slow
TRAIN = {"max_steps": 1, "batch_size": 16}


def _save(model: ScGPT, folder, how: str):
    return model.save(folder) if how == "save" else model.save_pretrained(folder)


def _no_finetune(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr(ScGPT, "finetune", lambda *a, **k: calls.append(1) or pytest.fail("fine-tuned again"))
    return calls


@pytest.fixture(scope="module")
def integration(tmp_path_factory, pbmc_counts, tiny_model):
    """A tiny model fine-tuned for integration by ``tl.integrate`` (one step), and cells it has not seen."""
    cells = pbmc_counts[:300].copy()
    cells.obs["batch"] = np.where(np.arange(300) % 2, "a", "b")
    model = tiny_model()
    scgpt.tl.integrate(
        cells[:200].copy(), model, batch_key="batch", n_top_genes=100, checkpoint_dir=tmp_path_factory.mktemp("c"),
        **TRAIN,
    )  # fmt: skip
    return model, cells[200:].copy()


@pytest.mark.parametrize("how", ["save", "save_pretrained"])
def test_an_integration_model_saved_and_loaded_is_not_fine_tuned_again(integration, tmp_path, monkeypatch, how):
    """Bug caught: ``save_pretrained`` dropping ``registry_`` (task, gene panel, batch categories, ``batch_key``),
    so the reloaded model looks pretrained and ``tl.integrate(new, loaded, batch_key=...)`` silently fine-tunes it
    again for 15-25 epochs (and embeds with another panel) instead of embedding with the saved model."""
    model, new = integration
    assert model.registry_["task"] == "integration"
    expected = new.copy()
    calls = _no_finetune(monkeypatch)
    scgpt.tl.integrate(expected, model, batch_key="batch")
    folder = _save(model, tmp_path / "model", how)
    loaded = ScGPT.from_pretrained(folder)
    assert loaded.registry_ == model.registry_ and "fine-tuned for 'integration'" in repr(loaded)
    for target in (loaded, str(folder)):  # the object, or the folder by path
        got = new.copy()
        scgpt.tl.integrate(got, target, batch_key="batch")
        np.testing.assert_array_equal(got.obsm["X_scGPT_integrated"], expected.obsm["X_scGPT_integrated"])
    assert calls == []
    for key, value in model.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[key], value), key  # embedded, not trained
    if how == "save_pretrained":
        args = json.loads((folder / "args.json").read_text())
        assert args[REGISTRY_KEY]["batch_categories"] == ["a", "b"] and args[REGISTRY_KEY]["batch_key"] == "batch"


@pytest.fixture(scope="module")
def multiomic(tmp_path_factory):
    """The demo model fine-tuned on RNA + protein by ``tl.integrate`` (one step), and cells it has not seen."""
    m = scgpt.datasets.pbmc_cite_seq()
    keep = np.concatenate([np.flatnonzero(m.obs["run"] == r)[:30] for r in ("pbmc5k", "pbmc10k")])
    m = m[keep].copy()
    model = ScGPT.from_pretrained("demo")
    scgpt.tl.integrate(
        m[::2].copy(), model, modalities=("rna", "prot"), batch_key="run", n_top_genes=40,
        checkpoint_dir=tmp_path_factory.mktemp("c"), **TRAIN,
    )  # fmt: skip
    return model, m[1::2].copy()


@pytest.mark.filterwarnings("ignore:var_names are not unique:UserWarning")
@pytest.mark.filterwarnings("ignore:1 genes map to a vocabulary token already taken:UserWarning")
@pytest.mark.parametrize("how", ["save", "save_pretrained"])
def test_a_multiomic_model_saved_and_loaded_is_not_fine_tuned_again(multiomic, tmp_path, monkeypatch, how):
    """Bug caught: a multi-omic model saved with ``save_pretrained`` forgetting its task, feature panel and
    ``batch_key``, so ``tl.integrate(mdata, loaded, modalities=...)`` fine-tunes a second multi-omic model on top of
    it (new tokens appended again) instead of embedding with the saved one."""
    model, new = multiomic
    assert model.registry_["task"] == "multiomic"
    calls = _no_finetune(monkeypatch)
    expected = new.copy()
    scgpt.tl.integrate(expected, model, modalities=("rna", "prot"), batch_key="run")
    loaded = ScGPT.from_pretrained(_save(model, tmp_path / "model", how))
    assert loaded.registry_ == model.registry_ and len(loaded.vocab) == len(model.vocab)
    got = new.copy()
    scgpt.tl.integrate(got, loaded, modalities=("rna", "prot"), batch_key="run")
    assert calls == []
    np.testing.assert_array_equal(got.obsm["X_scGPT_integrated"], expected.obsm["X_scGPT_integrated"])
    with pytest.raises(ValueError, match="fine-tuned with batch_key='run'"):  # the saved batch_key is remembered
        scgpt.tl.integrate(new.copy(), loaded, modalities=("rna", "prot"))
