"""Run by test_checkpoints.py: a 4-epoch fine-tune of a tiny model with a checkpoint folder.

``python _finetune_kill.py CKPT OUT [--kill-at EPOCH] [--resume]``: with ``--kill-at E`` the process SIGKILLs itself
during epoch ``E`` (0-based), after its second optimiser step: nothing can run after SIGKILL, as after an OOM kill
or a lost node. The fine-tuned weights are written to ``OUT`` (``torch.save`` of the state dict).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("ckpt", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--kill-at", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--task", default="annotation")
    args = p.parse_args(argv)

    import lightning.pytorch as pl
    import torch

    import scgpt
    from scgpt.data import GeneVocab
    from scgpt.model import ScGPT

    class KillDuringEpoch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == args.kill_at and batch_idx == 1:
                os.kill(os.getpid(), signal.SIGKILL)

    scgpt.settings.progress = False
    adata = scgpt.datasets.pbmc68k_counts()[:240].copy()
    torch.manual_seed(0)
    model = ScGPT(vocab=GeneVocab.from_genes(adata.var_names), d_model=16, n_heads=2, d_hid=16, n_layers=1)
    callbacks = [KillDuringEpoch()] if args.kill_at is not None else []
    tuned = model.finetune(
        args.task, adata, labels_key="bulk_labels", max_epochs=4, batch_size=32, max_length=64, early_stopping=False,
        checkpoint_dir=args.ckpt, resume=args.resume, accelerator="cpu", callbacks=callbacks,
    )  # fmt: skip
    torch.save(tuned.net.state_dict(), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
