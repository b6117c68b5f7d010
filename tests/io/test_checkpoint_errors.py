"""Each bad model folder or checkpoint gets a clear error (or one clear warning)."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from scgpt.io import CheckpointError, CheckpointWarning, load_official, read_official
from scgpt.model import ScGPT


@pytest.fixture
def folder(golden_dir, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(golden_dir / "official_annotation", dst)
    return dst


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="No scGPT model folder"):
        read_official(tmp_path / "nope")


@pytest.mark.parametrize("name", ["args.json", "vocab.json", "best_model.pt"])
def test_missing_file(folder, name):
    (folder / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"lacks {name}"):
        read_official(folder)


def test_path_is_a_file(folder):
    with pytest.raises(CheckpointError, match="is a file"):
        read_official(folder / "best_model.pt")


def test_malformed_args_json(folder):
    (folder / "args.json").write_text('{"embsize": 32, "nheads": 4,,}')
    with pytest.raises(CheckpointError, match=r"args.json is not valid JSON .* line 1"):
        read_official(folder)


def test_args_json_without_sizes(folder):
    (folder / "args.json").write_text(json.dumps({"embsize": 32, "dropout": 0.1}))
    with pytest.raises(CheckpointError, match=r"lacks the model-size arguments \['nheads', 'd_hid', 'nlayers'\]"):
        read_official(folder)


def test_args_json_not_an_object(folder):
    (folder / "args.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="must hold a JSON object"):
        read_official(folder)


def test_truncated_checkpoint(folder):
    data = (folder / "best_model.pt").read_bytes()
    (folder / "best_model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="could not be read as a PyTorch checkpoint; it may be truncated"):
        read_official(folder)


def test_not_a_checkpoint(folder):
    (folder / "best_model.pt").write_text("<html>Google Drive - quota exceeded</html>")
    with pytest.raises(CheckpointError, match="could not be read as a PyTorch checkpoint"):
        read_official(folder)


def test_checkpoint_with_python_objects(folder):
    import argparse

    state = torch.load(folder / "best_model.pt", weights_only=True)
    torch.save({"args": argparse.Namespace(lr=1e-4), "model": state}, folder / "best_model.pt")
    with pytest.raises(CheckpointError, match="holds Python objects besides tensors"):
        read_official(folder)


def test_checkpoint_that_is_not_a_state_dict(folder):
    torch.save([torch.zeros(2)], folder / "best_model.pt")
    with pytest.raises(CheckpointError, match="does not hold a state_dict of tensors"):
        read_official(folder)


def test_state_dict_of_another_model(folder):
    torch.save({"fc.weight": torch.zeros(2, 2)}, folder / "best_model.pt")
    with pytest.raises(CheckpointError, match="does not look like an scGPT checkpoint"):
        read_official(folder)


def test_vocabulary_size_disagrees_with_embedding(folder):
    vocab = json.loads((folder / "vocab.json").read_text())
    vocab["EXTRA_GENE"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(CheckpointError, match="vocab.json has 769 tokens but the gene embedding table .* has 768 rows"):
        read_official(folder)


def test_malformed_vocab(folder):
    (folder / "vocab.json").write_text('{"A": 0, "B": 0}')
    with pytest.raises(CheckpointError, match="each used once"):
        read_official(folder)


def test_vocab_without_pad_token(folder):
    vocab = json.loads((folder / "vocab.json").read_text())
    vocab["<pad_renamed>"] = vocab.pop("<pad>")
    (folder / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(CheckpointError, match="lacks the padding token '<pad>'"):
        read_official(folder)


def _edit_state(folder, edit):
    state = torch.load(folder / "best_model.pt", weights_only=True)
    edit(state)
    torch.save(state, folder / "best_model.pt")


def test_head_problems_are_reported_in_one_warning(folder):
    def edit(state):
        del state["cls_decoder.out_layer.bias"]
        state["some_new_head.weight"] = torch.zeros(3)
        state["decoder.fc.0.bias"] = torch.zeros(7)

    _edit_state(folder, edit)
    with pytest.warns(CheckpointWarning) as record:
        net, _, report = load_official(folder)
    assert len(record) == 1
    msg = str(record[0].message)
    assert "cls_decoder.out_layer.bias" in msg and "some_new_head.weight" in msg
    assert "shape mismatch for decoder.fc.0.bias: checkpoint (7,), model (32,)" in msg
    assert report.missing == ["cls_decoder.out_layer.bias"]
    assert report.unexpected == ["some_new_head.weight"]
    assert [m[0] for m in report.mismatched] == ["decoder.fc.0.bias"]


def test_a_missing_transformer_weight_is_an_error_listing_everything(folder):
    """Not an optional head: the model would run partly on random weights (was one warning)."""

    def edit(state):
        del state["transformer_encoder.layers.1.norm2.bias"]
        state["some_new_head.weight"] = torch.zeros(3)

    _edit_state(folder, edit)
    with pytest.raises(CheckpointError, match="transformer_encoder.layers.1.norm2.bias") as info:
        load_official(folder)
    assert "some_new_head.weight" in str(info.value) and "1 of these are not optional heads" in str(info.value)


def test_strict_turns_the_warning_into_an_error(folder):
    _edit_state(folder, lambda s: s.update({"some_new_head.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match="some_new_head.weight"):
        ScGPT.from_pretrained(folder, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ScGPT.from_pretrained(folder)  # lenient by default


def test_args_layer_count_disagrees_with_weights(folder):
    args = json.loads((folder / "args.json").read_text())
    args["nlayers"] = 4
    (folder / "args.json").write_text(json.dumps(args))
    with pytest.warns(CheckpointWarning, match="says nlayers=4 but the weights have 2 layers"):
        ckpt = read_official(folder)
    assert ckpt.config.n_layers == 2


def test_ddp_prefix_and_training_wrapper_are_understood(folder):
    state = torch.load(folder / "best_model.pt", weights_only=True)
    torch.save({"epoch": 3, "model_state_dict": {f"module.{k}": v for k, v in state.items()}}, folder / "best_model.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net, _, report = load_official(folder)
    assert report.clean
