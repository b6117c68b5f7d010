"""Memory and time of ``scgpt.tl.predict_perturbation`` over a whole-transcriptome panel at whole-human shape.

Whole-human architecture (60,697 tokens, 512 wide, 12 layers, 8 heads) with random weights and the
perturbation task's heads (flag embedding, affine decoder), as after ``finetune("perturbation")``;
synthetic raw counts of ``--cells`` control cells x ``--genes`` genes (negative binomial, every gene
in the vocabulary). Each perturbation is predicted from all control cells over all genes, in chunks of
``--gene-chunk`` tokens (the fine-tuning ``max_length``, 1536 by default) with the targets in every chunk.
Prints peak RSS of the process (the budget is 4 GiB for 20,000 genes x 300 cells), wall time, and on
CUDA the peak GPU memory. The official full-sequence run of a 20k-gene panel needs about 20 GB of GPU
memory (official issue #314).

    python benchmarks/perturbation_memory.py --cells 300 --genes 20000
    python benchmarks/perturbation_memory.py --cells 300 --genes 20000 --device cuda --dtype bfloat16

Peak RSS does not grow with ``--cells`` beyond the input matrix (cells x genes float32): every forward
pass holds one chunk of at most ``max(1, 2048 // gene_chunk)`` cells on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

import scgpt
from scgpt.data import GeneVocab
from scgpt.model import TASKS, ScGPT

WHOLE_HUMAN = dict(d_model=512, n_heads=8, d_hid=512, n_layers=12, dropout=0.2, mvc_style=None, n_cls=None)
N_VOCAB_GENES = 60_694


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def report_rss(every: float) -> None:
    """Print the peak RSS every ``every`` seconds (a long CPU run shows its plateau before it ends)."""
    start = time.perf_counter()

    def loop() -> None:
        while True:
            time.sleep(every)
            print(
                f"[{time.perf_counter() - start:7.0f}s] peak RSS {peak_rss_gib():.3f} GiB", file=sys.stderr, flush=True
            )

    threading.Thread(target=loop, daemon=True).start()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=300, help="control cells")
    p.add_argument("--genes", type=int, default=20_000)
    p.add_argument("--perturbations", type=int, default=1, help="single-gene perturbations to predict")
    p.add_argument("--gene-chunk", type=int, default=1536)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report-every", type=float, default=0, help="print the peak RSS every this many seconds")
    p.add_argument("--out", default="benchmarks/results/perturbation_memory.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    scgpt.settings.progress = False
    if args.report_every:
        report_rss(args.report_every)

    names = [f"G{i:05d}" for i in range(N_VOCAB_GENES)]
    torch.manual_seed(0)
    base = ScGPT(vocab=GeneVocab(names + ["<pad>", "<cls>", "<eoc>"]), **WHOLE_HUMAN)
    model = base.adapt(**TASKS["perturbation"].heads(base.config, {}))
    del base
    model.registry_.update(task="perturbation", perturbation_key="perturbation", control="control")
    model.registry_["perturbation"] = {"max_length": args.gene_chunk}
    model.net.eval()
    rss_model = peak_rss_gib()

    rng = np.random.default_rng(0)
    genes = sorted(rng.choice(N_VOCAB_GENES, args.genes, replace=False).tolist())
    counts = rng.negative_binomial(1, 0.7, size=(args.cells, args.genes)).astype(np.float32)
    adata = ad.AnnData(
        sp.csr_matrix(counts),
        obs=pd.DataFrame({"perturbation": "control"}, index=[f"c{i}" for i in range(args.cells)]),
        var=pd.DataFrame(index=[names[g] for g in genes]),
    )
    del counts
    targets = [names[g] for g in genes[: args.perturbations]]
    rss_data = peak_rss_gib()
    if args.device.startswith("cuda"):
        model.to_device(args.device)
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    pred = scgpt.tl.predict_perturbation(
        adata, model, targets, n_control_cells=args.cells, gene_chunk=args.gene_chunk, batch_size=args.batch_size,
        device=args.device, dtype=args.dtype,
    )  # fmt: skip
    wall = time.perf_counter() - t
    params = pred.uns["perturbation_prediction"]["params"]
    result = {
        "cells": args.cells,
        "genes": args.genes,
        "perturbations": args.perturbations,
        "gene_chunk": args.gene_chunk,
        "n_chunks": params["n_chunks"],
        "device": args.device,
        "dtype": params["dtype"],
        "threads": args.threads,
        "wall_s": round(wall, 1),
        "cell_chunks_per_s": round(args.cells * sum(params["n_chunks"]) / wall, 2),
        "peak_rss_gib": round(peak_rss_gib(), 3),
        "rss_after_model_gib": round(rss_model, 3),
        "rss_after_data_gib": round(rss_data, 3),
        "finite": bool(np.isfinite(pred.X).all()),
        "load_average": os.getloadavg(),
    }
    if args.device.startswith("cuda"):
        result["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
