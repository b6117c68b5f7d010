"""The model you meant loads: one model per folder, whatever was saved there before and in which format."""

from __future__ import annotations

import re

import pytest
import torch

from scgpt.model import ScGPT


@pytest.fixture
def two_models(tiny_model):
    return tiny_model(d_model=16, n_heads=2, d_hid=16, n_layers=1, seed=1), tiny_model(
        d_model=16, n_heads=2, d_hid=16, n_layers=1, seed=2
    )


def _same(a: ScGPT, b: ScGPT) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.net.state_dict().values(), b.net.state_dict().values()))


def test_a_later_official_save_replaces_an_earlier_native_one(two_models, tmp_path):
    a, b = two_models
    a.save(tmp_path / "m")
    with pytest.raises(FileExistsError, match=r"already holds a model \(model.pt\); pass overwrite=True"):
        b.save_pretrained(tmp_path / "m")
    b.save_pretrained(tmp_path / "m", overwrite=True)
    assert not (tmp_path / "m" / "model.pt").exists()  # the stale model.pt cannot win any more
    assert _same(ScGPT.from_pretrained(tmp_path / "m"), b)


def test_a_later_native_save_replaces_an_earlier_official_one(two_models, tmp_path):
    a, b = two_models
    a.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "notes.txt").write_text("mine")  # other files are left alone
    b.save(tmp_path / "m", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "model.pt", "notes.txt"]  # + its card
    assert _same(ScGPT.from_pretrained(tmp_path / "m"), b)


def test_both_formats_of_one_model_are_written_together(two_models, tmp_path):
    a, b = two_models
    a.save(tmp_path / "m", official=True)
    assert {p.name for p in (tmp_path / "m").iterdir()} == {
        "model.pt",
        "args.json",
        "vocab.json",
        "best_model.pt",
        "README.md",
    }
    from scgpt.io import load_official

    net, _, _ = load_official(tmp_path / "m")
    assert all(torch.equal(x, y) for x, y in zip(net.state_dict().values(), a.net.state_dict().values()))
    b.save(tmp_path / "m", overwrite=True)  # only model.pt now: the official files of model a are gone
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"model.pt", "README.md"}


@pytest.mark.parametrize("native", ["model.pt only", "both formats"])
def test_an_official_folder_copied_by_hand_over_a_native_one_is_refused(two_models, tmp_path, native):
    """Bug caught: official files of model b copied by hand (``cp``) over a folder written by ``save`` of model a;
    ``from_pretrained`` then loaded the stale ``model.pt`` of a without a word, the user believing it was b."""
    import shutil

    a, b = two_models
    a.save(tmp_path / "m", official=native == "both formats")
    assert _same(ScGPT.from_pretrained(tmp_path / "m"), a)  # saved together: model.pt is the same model
    b.save_pretrained(tmp_path / "b")
    for name in ("args.json", "vocab.json", "best_model.pt"):
        shutil.copy2(tmp_path / "b" / name, tmp_path / "m" / name)
    message = (
        rf"^{re.escape(str(tmp_path / 'm'))} holds two different models: model.pt and .*best_model.pt, which were not saved with it "
        r"\(an official folder copied over one written by ScGPT.save\?\). Remove model.pt to load the official "
        r"model, or remove args.json, vocab.json, best_model.pt to load model.pt.$"
    )
    for load in (ScGPT.from_pretrained, ScGPT.load):
        with pytest.raises(ValueError, match=message):
            load(tmp_path / "m")
    (tmp_path / "m" / "model.pt").unlink()  # the remedy the message names
    assert _same(ScGPT.from_pretrained(tmp_path / "m"), b)


def test_tilde_paths_save_and_load_the_anndata_too(two_models, tmp_path, monkeypatch, pbmc):
    monkeypatch.setenv("HOME", str(tmp_path))
    a, _ = two_models
    a.adata = pbmc[:10].copy()
    a.save("~/models/m", save_anndata=True)
    assert (tmp_path / "models" / "m" / "adata.h5ad").is_file()
    again = ScGPT.load("~/models/m")
    assert again.adata is not None and again.adata.n_obs == 10 and _same(again, a)
