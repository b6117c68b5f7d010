"""The demo model bundled with the package."""

from __future__ import annotations

import json
import warnings

import numpy as np

import scgpt
from scgpt.model import ScGPT
from scgpt.model._scgpt import _demo_path


def test_demo_model_loads_cleanly_and_embeds(pbmc):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every key loads
        model = ScGPT.from_pretrained("demo", strict=True)
    args = json.loads((_demo_path() / "args.json").read_text())
    assert args["demo"] is True and "not for analyses" in args["demo_note"]
    assert model.config.n_layers == 4 and model.config.d_model == 128 and model.source_ == "demo"
    assert sum(f.stat().st_size for f in _demo_path().iterdir()) < 10e6  # a few MB
    scgpt.tl.embed(pbmc, "demo")
    emb = pbmc.obsm["X_scGPT"]
    assert emb.shape == (700, 128) and pbmc.uns["X_scGPT"]["params"]["model"] == "demo"
    assert pbmc.uns["X_scGPT"]["n_genes_matched"] > 700
    # pretrained, not random: cells of the same type are closer than cells of different types
    labels = pbmc.obs["bulk_labels"].to_numpy()
    sim = emb @ emb.T
    same = labels[:, None] == labels[None, :]
    off_diag = ~np.eye(len(labels), dtype=bool)
    assert sim[same & off_diag].mean() > sim[~same].mean() + 0.02
