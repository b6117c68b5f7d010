"""What a ``model=`` argument means: a path that exists wins over the "demo" keyword; edits of any file reload."""

from __future__ import annotations

import json
import os

import scgpt
from scgpt.model import ScGPT, resolve_model


def test_an_existing_demo_folder_wins_over_the_keyword(tiny_model, tmp_path, monkeypatch):
    tiny_model(d_model=16, n_heads=2, d_hid=16, n_layers=1).save_pretrained(tmp_path / "demo")
    monkeypatch.chdir(tmp_path)
    model, name = resolve_model("demo")
    assert model.config.d_model == 16 and name == "demo"  # the user's ./demo, not the bundled 128-wide model
    assert ScGPT.from_pretrained("demo").config.d_model == 16
    monkeypatch.chdir(tmp_path.parent)
    assert resolve_model("demo")[0].config.d_model == 128  # no such folder here: the bundled model


def test_the_cache_notices_an_edit_of_any_file(tiny_model, tmp_path):
    folder = tiny_model(d_model=16, n_heads=2, d_hid=16, n_layers=1).save_pretrained(tmp_path / "m")
    first, _ = resolve_model(folder)
    assert resolve_model(folder)[0] is first  # cached
    args = json.loads((folder / "args.json").read_text())
    args["dropout"] = 0.5
    (folder / "args.json").write_text(json.dumps(args))
    os.utime(folder / "args.json", ns=(1, 1))  # even with an old timestamp: the size changed
    second, _ = resolve_model(folder)
    assert second is not first and second.config.dropout == 0.5
    scgpt.model._resolve.clear_cache()
    assert resolve_model(folder)[0] is not second
