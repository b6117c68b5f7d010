"""Run by test_distributed_embed.py as a script: Lightning's DDP launcher runs this file again for rank 1.

Embeds the same cells in memory (``ScGPT.get_latent_representation``), backed (``scgpt.tl.embed``) and from a
TileDB-SOMA experiment (``scgpt.data.open_soma``) on ``devices`` CPU processes; every rank checks it got the whole
result, rank 0 saves it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(model_dir: Path, cells: Path, devices: int, out: Path, soma: str) -> None:
    import anndata as ad

    import scgpt
    from scgpt.model import ScGPT

    scgpt.settings.progress = False
    model = ScGPT.from_pretrained(model_dir, device="cpu")
    kw = {"max_length": 128, "batch_size": 16, "device": "cpu", "devices": devices}
    in_memory = model.get_latent_representation(ad.read_h5ad(cells), **kw)
    backed = ad.read_h5ad(cells, backed="r")
    scgpt.tl.embed(backed, model, **kw)
    experiment = scgpt.data.open_soma(soma)
    scgpt.tl.embed(experiment, model, **kw)
    import torch.distributed as dist

    rank = dist.get_rank()
    shape = (backed.n_obs, model.config.d_model)
    assert in_memory.shape == backed.obsm["X_scGPT"].shape == experiment.obsm["X_scGPT"].shape == shape
    if rank == 0:
        np.savez(
            out / "emb.npz",
            in_memory=in_memory,
            backed=backed.obsm["X_scGPT"],
            soma=experiment.obsm["X_scGPT"],
            mean_tokens=backed.uns["X_scGPT"]["mean_tokens_per_cell"],
            world=dist.get_world_size(),
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5])
