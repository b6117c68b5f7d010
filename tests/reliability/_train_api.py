"""Run by test_signals.py: ScGPT.train from a script; prints what TrainingInterrupted says when a signal stops it."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: Path) -> int:
    import torch

    import scgpt
    from scgpt.data import GeneVocab
    from scgpt.model import ScGPT
    from scgpt.train import TrainingInterrupted

    scgpt.settings.progress = False
    adata = scgpt.datasets.pbmc68k_counts()[:200].copy()
    ScGPT.setup_anndata(adata)
    torch.manual_seed(0)
    model = ScGPT(vocab=GeneVocab.from_genes(adata.var_names), d_model=16, n_heads=2, d_hid=16, n_layers=1, n_cls=None)
    try:
        model.train(
            adata, recipe="pretrain-masked", max_steps=100_000, batch_size=16, max_length=32, train_size=1.0,
            checkpoint_dir=out, checkpoint_every_n_steps=3, accelerator="cpu",
        )  # fmt: skip
    except TrainingInterrupted as e:
        print(json.dumps({"signal": e.signal, "step": e.step, "checkpoint": str(e.checkpoint), "message": str(e)}))
        return 0
    return 1  # returned normally: the signal was swallowed


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
