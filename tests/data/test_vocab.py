from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from scgpt.data import GeneVocab


@pytest.mark.golden
def test_default_vocabulary_is_the_released_one(golden_dir):
    """Token for token the vocabulary of the official checkpoint folder (its digest is recorded in the manifest)."""
    vocab = GeneVocab.default()
    assert len(vocab) == 60_697
    assert (vocab.pad_id, vocab.cls_id, vocab["<eoc>"]) == (60_694, 60_695, 60_696)
    released = json.loads((golden_dir / "manifest.json").read_text())
    assert hashlib.sha256("\n".join(vocab.itos).encode()).hexdigest() == released["census_vocab_sha256"]
    assert released["census_vocab_special_ids"] == {"<pad>": 60_694, "<cls>": 60_695, "<eoc>": 60_696}


def test_specials_are_read_not_hardcoded(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"<cls>": 0, "A": 1, "<pad>": 2}))
    vocab = GeneVocab.from_file(tmp_path / "vocab.json")
    assert (vocab.pad_id, vocab.cls_id) == (2, 0)
    with pytest.raises(KeyError, match="no '<eoc>' token"):
        vocab.special_id("<eoc>")


def test_lookup_default_index_and_roundtrip(tmp_path):
    vocab = GeneVocab(["A", "B", "<pad>"])
    assert vocab.lookup(["B", "Z", "A"]).tolist() == [1, -1, 0]
    with pytest.raises(KeyError, match="'Z' is not in the vocabulary"):
        vocab["Z"]
    vocab.default_index = vocab.pad_id
    assert vocab["Z"] == 2
    assert vocab.append_token("C") == 3 and vocab.append_token("A") == 0
    vocab.to_json(tmp_path / "v.json")
    assert GeneVocab.from_file(tmp_path / "v.json") == vocab
    assert vocab.lookup_tokens(np.array([3, 0])) == ["C", "A"]


def test_bad_vocabularies():
    with pytest.raises(ValueError, match="unique"):
        GeneVocab(["A", "A"])
    with pytest.raises(ValueError, match="ids must be 0 … 1"):
        GeneVocab({"A": 0, "B": 5})
