"""Results say which weights made them: version, model and the SHA-256 of the weights file, hashed once per file."""

from __future__ import annotations

import hashlib
import shutil

import anndata as ad
import pytest

import scgpt
from scgpt.model import ScGPT
from scgpt.model._resolve import clear_cache
from scgpt.model._scgpt import _demo_path

from .conftest import NAME


@pytest.fixture
def hash_calls(monkeypatch):
    """How many times a file was actually hashed (not served from the hash cache)."""
    calls: list[str] = []
    real = scgpt.hub._hashing.compute_sha256

    def counted(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(scgpt.hub._hashing, "compute_sha256", counted)
    return calls


def test_embed_records_version_model_and_weights_sha256(registered, server, cache, pbmc, demo_hashes, tmp_path):
    """``uns['X_scGPT']['params']`` holds the scgpt version, the model as given and its weights' SHA-256.

    Catches: a hash of the wrong file (args.json, the folder), the cache path instead of the name, a
    missing version; and the params must survive writing the result to .h5ad.
    """
    cells = pbmc[:20].copy()
    scgpt.tl.embed(cells, NAME, device="cpu")
    params = cells.uns["X_scGPT"]["params"]
    expected = {"scgpt_version": scgpt.__version__, "model": NAME, "weights_sha256": demo_hashes["best_model.pt"][0]}
    assert {k: params[k] for k in expected} == expected
    cells.write_h5ad(tmp_path / "cells.h5ad")
    again = ad.read_h5ad(tmp_path / "cells.h5ad").uns["X_scGPT"]["params"]
    assert {k: again[k] for k in expected} == expected


def test_the_weights_are_hashed_once_per_file_version(cache, pbmc, tmp_path, hash_calls, monkeypatch):
    """A folder's weights are hashed on first use only: not again for another call, another load, or another
    process (the cache on disk); again when the file changes.

    Catches: re-hashing 200 MB on every call, a cache keyed by path alone (a replaced file keeps its old hash),
    a model reporting the hash of a file that replaced the one it was loaded from.
    """
    folder = tmp_path / "my_model"
    shutil.copytree(_demo_path(), folder)
    weights = folder / "best_model.pt"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    for _ in range(2):
        cells = pbmc[:10].copy()
        scgpt.tl.embed(cells, str(folder), device="cpu")
        assert cells.uns["X_scGPT"]["params"]["weights_sha256"] == digest
        clear_cache()  # the next call loads the folder again
    assert hash_calls == [str(weights)]
    monkeypatch.setattr(scgpt.hub._hashing, "_MEMORY", {})  # a new process: only the cache on disk is left
    assert ScGPT.from_pretrained(folder).weights_sha256() == digest and len(hash_calls) == 1

    model = ScGPT.from_pretrained(folder)
    model.save_pretrained(tmp_path / "other")  # same tensors, but a file written anew: its own hash
    shutil.copy(tmp_path / "other" / "best_model.pt", weights)
    changed = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert ScGPT.from_pretrained(folder).weights_sha256() == changed and len(hash_calls) == 2
    assert model.weights_sha256() is None  # loaded from the file that was replaced: not these weights


def test_models_made_in_memory_record_no_weights_hash_but_keep_their_base(cache, pbmc, tiny_model):
    """A model built or fine-tuned in memory has no weights file: ``weights_sha256`` is None, not the base's.

    Catches: reporting the base model's hash for weights that have changed since it was loaded.
    """
    fresh = tiny_model(d_model=16, n_heads=2, d_hid=16, n_layers=1)
    assert fresh.provenance("mine") == {"scgpt_version": scgpt.__version__, "model": "mine", "weights_sha256": None}
    demo = ScGPT.from_pretrained("demo", device="cpu")
    demo_sha = hashlib.sha256((_demo_path() / "best_model.pt").read_bytes()).hexdigest()
    adapted = demo.adapt(n_cls=3)
    assert adapted.weights_sha256() is None
    assert adapted.base_model() == {"name": "demo", "weights_sha256": demo_sha}
