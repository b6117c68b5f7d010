"""Run by test_ddp.py as a script: Lightning's DDP launcher re-executes this file for each extra process."""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def main(devices: int, out: Path) -> None:
    import scgpt
    from scgpt.data import GeneVocab
    from scgpt.model import ScGPT

    scgpt.settings.progress = False
    adata = scgpt.datasets.pbmc68k_counts()[:96].copy()
    ScGPT.setup_anndata(adata)
    torch.manual_seed(0)
    vocab = GeneVocab.from_genes(adata.var_names)
    model = ScGPT(adata, vocab=vocab, d_model=32, n_heads=4, d_hid=64, n_layers=2, dropout=0.0, n_cls=None)
    init = {k: v.clone() for k, v in model.net.state_dict().items()}
    model.train(
        recipe="pretrain-masked",
        max_steps=6,
        batch_size=16 // devices,
        plan_kwargs={"lr": 1e-3},
        max_length=64,
        train_size=1.0,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        checkpoint_dir=out / "ckpt",
    )
    if model.trainer_.global_rank == 0:
        torch.save({k: v.cpu() for k, v in model.net.state_dict().items()}, out / "weights.pt")
        torch.save(init, out / "init.pt")


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
