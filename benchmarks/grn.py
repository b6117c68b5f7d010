"""Memory and time of the attention gene network at whole-human shape (``scgpt.tl.infer_grn(method="attention")``).

Whole-human architecture (60,697 tokens, 512 wide, 12 layers, 8 heads) with random weights; synthetic
raw counts of ``--cells`` cells x ``--genes`` genes (negative-binomial, every gene run in every cell as the
official attention-GRN tutorial, so each cell has ``genes + 1`` tokens). Prints peak RSS of the process
(the budget is 4 GiB for 1,200 genes x 500 cells), wall time, cells/s and the share of the measured matmul
rate that the forward passes reach.

    python benchmarks/grn.py --cells 500 --genes 1200
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

import scgpt
from scgpt.data import GeneVocab
from scgpt.model import ScGPT

WHOLE_HUMAN = dict(d_model=512, n_heads=8, d_hid=512, n_layers=12, dropout=0.2, mvc_style=None, n_cls=None)
N_VOCAB_GENES = 60_694


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def matmul_rate() -> float:
    a, b = torch.randn(8192, 512), torch.randn(512, 1536)
    for _ in range(3):
        a @ b
    reps, t = 10, time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * 8192 * 512 * 1536 * reps / (time.perf_counter() - t) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=500)
    p.add_argument("--genes", type=int, default=1200)
    p.add_argument("--sources", type=int, default=100, help="genes used as sources (TFs)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/grn.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    scgpt.settings.progress = False

    names = [f"G{i:05d}" for i in range(N_VOCAB_GENES)]
    torch.manual_seed(0)
    model = ScGPT(vocab=GeneVocab(names + ["<pad>", "<cls>", "<eoc>"]), **WHOLE_HUMAN)
    model.net.eval()
    rss_model = peak_rss_gib()

    rng = np.random.default_rng(0)
    genes = sorted(rng.choice(N_VOCAB_GENES, args.genes, replace=False).tolist())
    counts = rng.negative_binomial(2, 0.6, size=(args.cells, args.genes)).astype(np.float32)
    adata = ad.AnnData(
        sp.csr_matrix(counts),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(args.cells)]),
        var=pd.DataFrame(index=[names[g] for g in genes]),
    )
    rate = matmul_rate()
    t = time.perf_counter()
    scgpt.tl.infer_grn(
        adata, model, method="attention", tfs=list(adata.var_names[: args.sources]), n_top_genes=None,
        batch_size=args.batch_size, device="cpu",
    )  # fmt: skip
    wall = time.perf_counter() - t
    L, d, n_layers = args.genes + 1, 512, 12
    flops = n_layers * L * (2 * 6 * d * d + 4 * L * d) * args.cells  # forward passes
    result = {
        "cells": args.cells,
        "genes": args.genes,
        "tokens_per_cell": L,
        "sources": args.sources,
        "threads": args.threads,
        "edges": len(adata.uns["scgpt_grn"]["edges"]),
        "wall_s": round(wall, 1),
        "cells_per_s": round(args.cells / wall, 3),
        "peak_rss_gib": round(peak_rss_gib(), 3),
        "rss_after_model_gib": round(rss_model, 3),
        "matmul_gflops": round(rate, 1),
        "forward_share_of_matmul_rate": round(flops / wall / 1e9 / rate, 3),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
