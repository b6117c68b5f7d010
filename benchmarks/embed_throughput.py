"""Embedding throughput of scgpt's inference engine at fixed cell lengths, on any device.

Whole-human architecture (60,697 tokens, 512 wide, 12 layers, 8 heads) with random weights; synthetic
cells with exactly ``L - 1`` expressed genes (so every cell has ``L`` tokens). Prints cells/s,
tokens/s and the fraction of the measured matmul rate reached. No official baseline here (see
``benchmarks/embed.py`` for the side-by-side CPU comparison).

    python benchmarks/embed_throughput.py --device cuda --lengths 256,1200 --dtypes float32,bfloat16,float16
"""

from __future__ import annotations

import argparse
import json
import time

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from scgpt.data import GeneVocab
from scgpt.model import CellRows, ScGPT, run_inference

WHOLE_HUMAN = dict(d_model=512, n_heads=8, d_hid=512, n_layers=12, dropout=0.2, mvc_style=None, n_cls=None)


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """GFLOP/s of a (8192 x 512) @ (512 x 1536) product, the shape of the model's q/k/v projection."""
    a = torch.randn(8192, 512, device=device, dtype=dtype)
    b = torch.randn(512, 1536, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    reps, t = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * 8192 * 512 * 1536 * reps / (time.perf_counter() - t) / 1e9


def flops_per_cell(L: int, d: int = 512, layers: int = 12) -> float:
    """Forward FLOPs: q/k/v/out projections and feed-forward (6 d^2 per token) + attention (4 L d per token)."""
    return layers * L * (2 * 6 * d * d + 4 * L * d)


def cells(n: int, length: int, n_genes: int, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    cols = np.stack([np.sort(rng.choice(n_genes, size=length - 1, replace=False)) for _ in range(n)])
    data = rng.negative_binomial(2, 0.5, size=cols.size).astype(np.float32) + 1
    indptr = np.arange(n + 1) * (length - 1)
    return sp.csr_matrix((data, cols.ravel(), indptr), shape=(n, n_genes))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lengths", default="256,1200")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--cells", type=int, default=0, help="cells per run (default: 4096 on GPU, 64 on CPU)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json-out", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    vocab = GeneVocab.default()
    torch.manual_seed(0)
    model = ScGPT(vocab=vocab, **WHOLE_HUMAN)
    n_genes = 30_000
    genes = pd.DataFrame(index=pd.Index(vocab.lookup_tokens(np.arange(n_genes))))
    n_cells = args.cells or (4096 if device.type == "cuda" else 64)
    info = {"device": str(device), "torch": torch.__version__, "cells": n_cells, "runs": []}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        rate = matmul_rate(device, dtype)
        for L in (int(x) for x in args.lengths.split(",")):
            X = ad.AnnData(cells(n_cells, L, n_genes, seed=L), var=genes)
            kw = dict(
                max_length=L,
                batch_size=args.batch_size,
                device=device,
                dtype=dtype,
                progress=False,
                use_aliases=False,
            )
            run_inference(model, X[: min(256, n_cells)].copy(), CellRows(normalize=True), **kw)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            run_inference(model, X, CellRows(normalize=True), **kw)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            achieved = flops_per_cell(L) * n_cells / dt / 1e9
            row = {
                "dtype": name,
                "tokens": L,
                "cells_per_s": n_cells / dt,
                "tokens_per_s": n_cells * L / dt,
                "gflops": achieved,
                "matmul_gflops": rate,
                "fraction_of_matmul": achieved / rate,
            }
            if device.type == "cuda":
                row["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            info["runs"].append(row)
            print(
                f"{name:9s} L={L:5d}: {row['cells_per_s']:9.1f} cells/s {row['tokens_per_s']:12.0f} tokens/s "
                f"{achieved:8.0f} GFLOP/s = {row['fraction_of_matmul']:.0%} of matmul ({rate:.0f})",
                flush=True,
            )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(info, f, indent=2)


if __name__ == "__main__":
    main()
