"""Time estimates before long work: the FLOP count, and the announcement with the knobs that shorten the run."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import scgpt
from scgpt.model import ScGPT
from scgpt.model import _engine as engine
from scgpt.model._estimate import duration_text, forward_flops


def test_forward_flops_counts_projections_feed_forward_and_attention():
    """FLOPs of a cell: per layer and token 8 d^2 (q, k, v, out) + 4 d d_hid (feed-forward) + 4 L d (attention).

    Catches an estimate that forgets the quadratic attention term (long cells would be badly underestimated)
    or counts one layer only.
    """
    from scgpt.nn import ScGPTConfig

    c = ScGPTConfig(n_tokens=100, pad_token_id=0, d_model=16, d_hid=32, n_layers=3, n_heads=2)
    L = 50
    per_layer = L * (8 * 16 * 16 + 4 * 16 * 32) + 4 * 16 * L * L
    assert forward_flops(c, L) == 3 * per_layer
    assert forward_flops(c, np.array([L, L])) == 2 * 3 * per_layer


def test_duration_text():
    """Catches minutes shown as seconds (or hours as minutes) in the announcement."""
    assert duration_text(30) == "about 30 s"
    assert duration_text(600) == "about 10 min"
    assert duration_text(3 * 3600) == "about 3.0 h"


def test_long_runs_are_announced_with_their_work_and_knobs(monkeypatch, caplog, tiny_model, tmp_path):
    """Before a long embedding or fine-tuning, one INFO line says the work, the FLOPs, the time and what shortens it.

    Catches a tool that starts a 50-minute fine-tuning without a word (issue 29), and an announcement of
    fine-tuning through ``tl.annotate`` that does not offer the fast ``method='knn'``.
    """
    monkeypatch.setattr(engine, "ANNOUNCE_SECONDS", 0.0)
    pbmc = scgpt.datasets.pbmc68k_counts()
    common = pbmc.obs["bulk_labels"].value_counts().index[:3]
    cells = pbmc[pbmc.obs["bulk_labels"].isin(common)][:240].copy()
    logger = logging.getLogger("scgpt")
    monkeypatch.setattr(logger, "propagate", True)
    with caplog.at_level(logging.INFO, logger="scgpt"):
        ScGPT.from_pretrained("demo").get_latent_representation(cells, max_length=64)
    lines = sorted({r.getMessage() for r in caplog.records if "FLOP" in r.getMessage()})
    assert len(lines) == 1 and "running the model over 240 cells" in lines[0]
    assert "estimate; shorten with max_length=" in lines[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scgpt"):
        scgpt.tl.annotate(
            cells[:120].copy(), tiny_model(), reference=cells[120:].copy(), labels_key="bulk_labels",
            max_steps=1, max_length=32, checkpoint_dir=tmp_path,
        )  # fmt: skip
    tuning = sorted(
        {r.getMessage() for r in caplog.records if "fine-tuning" in r.getMessage() and "FLOP" in r.getMessage()}
    )
    assert len(tuning) == 1, [r.getMessage() for r in caplog.records]
    assert "method='knn' (no fine-tuning)" in tuning[0] and "max_epochs=" in tuning[0]


@pytest.mark.parametrize("n_cells", [50])
def test_short_runs_stay_quiet(n_cells, caplog, monkeypatch):
    """Runs of a few seconds are not announced (no noise in every notebook cell).

    Catches an announcement on every call, e.g. per gene chunk of a perturbation prediction.
    """
    logger = logging.getLogger("scgpt")
    monkeypatch.setattr(logger, "propagate", True)
    cells = scgpt.datasets.pbmc68k_counts()[:n_cells].copy()
    with caplog.at_level(logging.INFO, logger="scgpt"):
        ScGPT.from_pretrained("demo").get_latent_representation(cells, max_length=64)
    assert not [r for r in caplog.records if "FLOP" in r.getMessage()]
