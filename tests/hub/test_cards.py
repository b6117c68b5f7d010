"""Model cards: every save writes a README.md that says what the model is, and list_models(local=) finds them."""

from __future__ import annotations

import hashlib

import pytest

import scgpt
from scgpt.hub import read_card
from scgpt.model import ScGPT
from scgpt.model._scgpt import _demo_path


@pytest.fixture(scope="module")
def demo_sha() -> str:
    return hashlib.sha256((_demo_path() / "best_model.pt").read_bytes()).hexdigest()


def test_a_fine_tuned_model_card_names_its_base_task_and_data(pbmc, tmp_path, demo_sha):
    """The card of a fine-tuned model: base model and its weights' hash, task, classes, recipe, losses, versions.

    Catches: a card that describes the base model as if it were the fine-tuned one, or omits the hash that
    ties it to the published weights.
    """
    base = ScGPT.from_pretrained("demo", device="cpu")
    cells = pbmc[pbmc.obs["bulk_labels"].isin(["CD14+ Monocyte", "CD19+ B", "CD56+ NK"])].copy()
    clf = base.finetune(
        "annotation", cells, labels_key="bulk_labels", max_epochs=1, batch_size=32, max_length=64,
        accelerator="cpu", validation_size=0.0,
    )  # fmt: skip
    folder = clf.save(tmp_path / "annotator", official=True)
    card = read_card(folder)
    assert card["base_model"] == "demo" and card["base_model_sha256"] == demo_sha
    assert card["task"] == "annotation" and card["format"] == "native + official" and card["n_layers"] == 4
    text = (folder / "README.md").read_text()
    for category in clf.registry_["label_categories"][:3]:
        assert category in text
    assert "obs['bulk_labels']" in text and "train_loss (last epoch)" in text and "| torch |" in text
    again = ScGPT.load(folder)  # the base travels with the saved model
    assert again.base_model() == {"name": "demo", "weights_sha256": demo_sha}
    assert read_card(again.save_pretrained(tmp_path / "exported"))["base_model_sha256"] == demo_sha


def test_list_models_local_finds_the_cards_and_a_users_readme_is_left_alone(tmp_path, tiny_model):
    """``list_models(local=folder)`` lists saved models by their cards; a README.md written by a person is kept.

    Catches: overwriting someone's README.md with a card, listing folders that are not models.
    """
    models = tmp_path / "models"
    ScGPT.from_pretrained("demo").save_pretrained(models / "demo_copy")
    tiny_model(d_model=16, n_heads=2, d_hid=16, n_layers=1).save(models / "tiny")
    (models / "notes").mkdir()
    (models / "notes" / "README.md").write_text("# my notes\n")
    mine = models / "kept"
    mine.mkdir()
    (mine / "README.md").write_text("# my model, my words\n")
    tiny_model(d_model=16, n_heads=2, d_hid=16, n_layers=1).save_pretrained(mine)
    assert (mine / "README.md").read_text() == "# my model, my words\n"

    table = scgpt.hub.list_models(local=models)
    assert sorted(table.index) == ["demo_copy", "tiny"]
    assert table.loc["demo_copy", "base_model"] == "demo" and table.loc["demo_copy", "architecture"] == "4 x 128"
    assert table.loc["tiny", "base_model"] is None and table.loc["tiny", "format"] == "native"
