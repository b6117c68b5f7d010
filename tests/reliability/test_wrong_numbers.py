"""No silently wrong numbers: metrics count every cell, missing values never become a class, damaged or
contradictory weights never load as a mostly random model."""

from __future__ import annotations

import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import scgpt
from scgpt.io import CheckpointError, CheckpointWarning, load_official
from scgpt.model import ScGPT


def test_missing_predictions_count_as_errors():
    a = ad.AnnData(np.zeros((4, 1), dtype=np.float32))
    a.obs["true"] = ["T", "T", "B", "B"]
    a.obs["pred"] = ["T", None, "B", np.nan]
    df = scgpt.tl.evaluate_annotation(a, labels_key="true", key="pred")
    m = df.loc["overall"]
    assert m["accuracy"] == 0.5 and m["n_cells"] == 4 and m["n_missing_predictions"] == 2  # was 1.0 on 2 cells
    assert int(pd.DataFrame(**df.attrs["confusion"]).loc["T", "(no prediction)"]) == 1
    a.obs["true"] = ["T", "nan", "B", "None"]
    with pytest.warns(UserWarning, match=r"2 cells have no true label in 'true' \(first: '1'\)"):
        m = scgpt.tl.evaluate_annotation(a, labels_key="true", key="pred", key_added="second").loc["overall"]
    assert m["n_cells"] == 2 and m["accuracy"] == 1.0
    with pytest.raises(ValueError, match="the same column"):
        scgpt.tl.evaluate_annotation(a, labels_key="true", key="true")


def test_the_string_nan_is_not_a_cell_type(pbmc):
    ref, query = pbmc[:500].copy(), pbmc[500:].copy()
    ref.obs["bulk_labels"] = ref.obs["bulk_labels"].astype(str)
    ref.obs.iloc[:7, ref.obs.columns.get_loc("bulk_labels")] = "nan"
    for a in (ref, query):
        a.obsm["e"] = np.eye(10, dtype=np.float32)[pbmc[a.obs_names].obs["bulk_labels"].cat.codes]
    with pytest.warns(UserWarning, match="7 cells have no label in 'bulk_labels'"):
        scgpt.tl.annotate(query, reference=ref, labels_key="bulk_labels", method="knn", use_rep="e")
    assert "nan" not in query.uns["scgpt_celltype"]["classes"]


def test_a_missing_batch_is_an_error_not_a_batch(pbmc, tiny_model, golden_dir):
    pbmc.obs["batch"] = np.where(np.arange(700) % 2, "a", "b").astype(object)
    pbmc.obs.loc[pbmc.obs_names[5], "batch"] = None
    with pytest.raises(ValueError, match=r"1 cells without a batch \(first: '"):
        tiny_model().finetune("integration", pbmc, batch_key="batch")
    with pytest.raises(ValueError, match=r"obs\['batch'\] has 1 cells without a batch"):
        scgpt.tl.embed(pbmc, ScGPT.from_pretrained(golden_dir / "official_integration"), batch_key="batch")
    with pytest.raises(ValueError, match="1 missing values"):
        ScGPT.setup_anndata(pbmc, batch_key="batch")


@pytest.fixture
def official_copy(golden_dir, tmp_path):
    def copy(name: str):
        return shutil.copytree(golden_dir / name, tmp_path / name)

    return copy


def test_nan_weights_are_refused(official_copy, tiny_model, tmp_path):
    folder = official_copy("official_annotation")
    state = torch.load(folder / "best_model.pt", weights_only=True)
    state["transformer_encoder.layers.0.linear1.weight"][0, 0] = float("nan")
    torch.save(state, folder / "best_model.pt")
    with pytest.raises(CheckpointError, match="NaN or infinite values in 1 tensors"):
        ScGPT.from_pretrained(folder)
    model = tiny_model()
    model.save(tmp_path / "native")
    payload = torch.load(tmp_path / "native" / "model.pt", weights_only=True)  # damaged on disk, after the save
    payload["state_dict"]["encoder.embedding.weight"][3, 0] = float("inf")
    torch.save(payload, tmp_path / "native" / "model.pt")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        ScGPT.load(tmp_path / "native")
    with torch.no_grad():
        model.net.encoder.embedding.weight[3, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite values in 1 tensors .*nothing was written"):
        model.save(tmp_path / "native2")  # and save() never writes such weights (issue 26)


def _edit_args(folder, **changes):
    args = json.loads((folder / "args.json").read_text())
    args.update(changes)
    (folder / "args.json").write_text(json.dumps(args))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"embsize": 64, "nheads": 4}, "does not match the weights"),  # sizes against shapes: was one warning
        ({"d_hid": 128}, "does not match the weights"),
        ({"nheads": 5}, r"args.json describes a model that cannot be built: .*multiple of n_heads"),
        ({"input_emb_style": "category"}, "does not match the weights"),
    ],
)
def test_args_that_contradict_the_weights_are_refused(official_copy, changes, message):
    folder = official_copy("official_annotation")
    _edit_args(folder, **changes)
    with pytest.raises(CheckpointError, match=message):
        load_official(folder)


def test_optional_heads_keep_the_one_warning_report(official_copy):
    folder = official_copy("official_annotation")
    state = torch.load(folder / "best_model.pt", weights_only=True)
    state["cls_decoder.out_layer.weight"] = torch.zeros(3, 32)  # a head of another size
    torch.save(state, folder / "best_model.pt")
    with pytest.warns(CheckpointWarning, match=r"shape mismatch for cls_decoder.out_layer.bias: checkpoint \(10,\)"):
        load_official(folder)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_official(folder, strict=True)


def test_a_category_encoder_must_match_n_bins(tiny_model, tmp_path):
    model = tiny_model(input_emb_style="category", n_input_bins=53)
    folder = model.save_pretrained(tmp_path / "cat")
    _edit_args(folder, n_bins=21, input_emb_style="category")
    with pytest.raises(CheckpointError, match="n_bins=21, but the value embedding of the weights has 53 rows"):
        load_official(folder)


def test_a_native_file_whose_config_and_weights_disagree(tiny_model, tmp_path):
    model = tiny_model()
    model.save(tmp_path / "m")
    payload = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    payload["config"]["d_hid"] = 128
    torch.save(payload, tmp_path / "m" / "model.pt")
    with pytest.raises(CheckpointError, match="the stored configuration does not match the stored weights"):
        ScGPT.load(tmp_path / "m")
