"""Every tool that writes results records which model made them: scgpt version, model name, weights SHA-256."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import scgpt
from scgpt.model import ScGPT


@pytest.fixture(scope="module")
def demo_sha256():
    from scgpt.model._scgpt import _demo_path

    return hashlib.sha256((_demo_path() / "best_model.pt").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cells():
    pbmc = scgpt.datasets.pbmc68k_counts()
    common = pbmc.obs["bulk_labels"].value_counts().index[:3]
    a = pbmc[pbmc.obs["bulk_labels"].isin(common)][:90].copy()
    a.obs["batch"] = np.where(np.arange(a.n_obs) % 2, "a", "b")
    return a


def _check(params, sha):
    assert params["scgpt_version"] == scgpt.__version__
    assert params["model"] == "demo"
    assert params["weights_sha256"] == sha


def test_each_tool_records_the_model_it_ran(cells, demo_sha256):
    """annotate, integrate, gene_programs and infer_grn record version, model and the weights' SHA-256.

    Catches a tool that records only the model's name, which cannot tell two files called ``scGPT_human``
    apart (the issue: "no way to tell later which file produced a result").
    """
    q, r = cells[:45].copy(), cells[45:].copy()
    scgpt.tl.annotate(q, "demo", reference=r, labels_key="bulk_labels", method="knn")
    _check(q.uns["scgpt_celltype"]["params"], demo_sha256)
    a = cells.copy()
    scgpt.tl.integrate(a, "demo", batch_key="batch", mode="zero_shot")
    _check(a.uns["X_scGPT_integrated"]["params"], demo_sha256)
    g = cells.copy()
    scgpt.tl.gene_programs(g, "demo", min_size=2)
    _check(g.uns["scgpt_program"]["params"], demo_sha256)
    scgpt.tl.infer_grn(g, "demo", method="embedding", n_top_genes=40, top_k=3)
    _check(g.uns["scgpt_grn"]["params"], demo_sha256)


def test_a_model_fine_tuned_in_place_records_the_weights_it_started_from(cells, demo_sha256, tmp_path):
    """``integrate(adata, model)`` with an ScGPT object records the file the object was loaded from.

    Catches recording the provenance after the in-place fine-tuning, when no file holds the weights any more
    (``weights_sha256`` would be ``None``).
    """
    model = ScGPT.from_pretrained("demo")
    a = cells.copy()
    scgpt.tl.integrate(a, model, batch_key="batch", n_top_genes=40, max_steps=1, checkpoint_dir=tmp_path)
    p = a.uns["X_scGPT_integrated"]["params"]
    assert p["weights_sha256"] == demo_sha256 and p["scgpt_version"] == scgpt.__version__
