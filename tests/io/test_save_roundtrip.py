"""Saving in the official format and in ours round-trips bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scgpt.io import load_official, read_official
from scgpt.model import ScGPT

FOLDERS = [
    "official_base",
    "official_annotation",
    "official_integration",
    "official_perturbation",
    "official_multiomic",
]


def _load_raw(path):
    return torch.load(path / "best_model.pt", weights_only=True)


@pytest.mark.parametrize("folder", FOLDERS)
def test_official_roundtrip_is_bit_exact(golden_dir, tmp_path, folder):
    model = ScGPT.from_pretrained(golden_dir / folder)
    out = model.save_pretrained(tmp_path / "copy")
    original, written = _load_raw(golden_dir / folder), _load_raw(out)
    assert list(written) == list(original)  # same keys, same order (the official PyTorch layout)
    for key, value in original.items():
        assert written[key].dtype == value.dtype and torch.equal(written[key], value), key
    assert json.loads((out / "vocab.json").read_text()) == json.loads((golden_dir / folder / "vocab.json").read_text())
    again = read_official(out)
    assert again.config == model.config
    assert (again.mod_vocab is None) == (model.mod_vocab is None)


def test_flash_layout_written_like_the_released_weights(golden_dir, tmp_path):
    model = ScGPT.from_pretrained(golden_dir / "official_base_flash")
    out = model.save_pretrained(tmp_path / "flash", attention_layout="flash")
    original, written = _load_raw(golden_dir / "official_base_flash"), _load_raw(out)
    assert set(written) == set(original) - {"flag_encoder.weight"}
    for key, value in written.items():
        assert torch.equal(value, original[key]), key


def test_native_roundtrip(golden_dir, tmp_path):
    model = ScGPT.from_pretrained(golden_dir / "official_integration")
    model.history_ = {"train_loss": [1.5, 1.25]}
    model.registry_ = {"batch_categories": ["a", "b"]}
    model.save(tmp_path / "native")
    again = ScGPT.load(tmp_path / "native")
    assert again.config == model.config and again.vocab == model.vocab
    assert again.history_ == model.history_ and again.registry_ == model.registry_
    for (k, a), (k2, b) in zip(model.net.state_dict().items(), again.net.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    with pytest.raises(FileExistsError):
        model.save(tmp_path / "native")
    # from_pretrained understands our folders too, and official export still round-trips
    assert ScGPT.from_pretrained(tmp_path / "native").config == model.config
    out = again.save_pretrained(tmp_path / "official")
    net, _, report = load_official(out)
    assert report.clean


def test_saved_official_folder_gives_the_same_outputs(golden_dir, tmp_path):
    model = ScGPT.from_pretrained(golden_dir / "official_base")
    out = model.save_pretrained(tmp_path / "copy")
    net, _, _ = load_official(out)
    z = np.load(golden_dir / "base_model_io.npz")
    with torch.no_grad():
        got = net(torch.from_numpy(z["gene_ids"]), torch.from_numpy(z["values"]), torch.from_numpy(z["padding_mask"]))
    np.testing.assert_allclose(got["cell_emb"].numpy(), z["cell_emb"], atol=1e-5, rtol=1e-4)
