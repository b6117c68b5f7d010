"""The attention network with the tensor rank normalisation (before issue 29) and the numpy one, in the same run.

``tl.infer_grn(method="attention")`` at the whole-human architecture (random weights) on synthetic counts of
``CELLS`` cells x ``GENES`` genes, alternating the two implementations twice; prints wall time, cells/s, the share
of the fp32 matmul rate (measured next to each run) and whether the edges are identical.

    python benchmarks/attention_rank.py 2 400
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tasks import _model, matmul_rate

import scgpt
import scgpt.model._inference as inference
from scgpt.data import GeneVocab
from scgpt.model._engine import _rank_normalize_tensor as tensor_rank_normalize  # the CPU path before issue 29
from scgpt.model._estimate import forward_flops


def main() -> None:
    n, g = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (2, 400)
    torch.set_num_threads(2)
    scgpt.settings.progress = False
    logging.getLogger("scgpt").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    vocab = GeneVocab.default()
    model = _model(vocab)
    rng = np.random.default_rng(0)
    cols = sorted(rng.choice(30_000, g, replace=False).tolist())
    names = vocab.lookup_tokens(np.arange(30_000))
    counts = rng.negative_binomial(2, 0.6, size=(n, g)).astype(np.float32)
    adata = ad.AnnData(counts, var=pd.DataFrame(index=[names[c] for c in cols]))
    fast = inference.rank_normalize_maps
    ref = None
    for label, fn in [("tensor (before)", tensor_rank_normalize), ("numpy (after)", fast)] * 2:
        inference.rank_normalize_maps = fn
        a = adata.copy()
        r0 = matmul_rate(torch.float32, 0.5)
        t = time.perf_counter()
        scgpt.tl.infer_grn(a, model, method="attention", tfs=list(a.var_names[:50]), n_top_genes=None,
                           batch_size=8, device="cpu", use_aliases=False)  # fmt: skip
        dt = time.perf_counter() - t
        rate = (r0 + matmul_rate(torch.float32, 0.5)) / 2
        share = forward_flops(model.net.config, g + 1) * n / dt / 1e9 / rate
        edges = a.uns["scgpt_grn"]["edges"]
        same = "" if ref is None else f", edges identical to the tensor version: {ref.equals(edges)}"
        ref = edges if ref is None else ref
        print(f"{label:16s} {n} cells x {g} genes: {dt:6.1f} s, {n / dt:.3f} cells/s, {share:.0%} of fp32 matmul "
              f"({rate:.0f} GFLOP/s){same}", flush=True)  # fmt: skip
    inference.rank_normalize_maps = fast


if __name__ == "__main__":
    main()
