"""One table, one run: the hot path of every task, against the matrix-product rate measured in the same run.

Whole-human architecture (60,697 tokens, 512 wide, 12 layers, 8 heads) with random weights, synthetic cells.
For each task's hot path the table gives work units per second, the FLOPs one unit needs, the share of the
measured matmul rate reached (fp32 rate for fp32 rows, bf16 rate for bf16 rows, both measured here at the
model's q/k/v projection shape, just before and just after each row), and the peak RSS sampled while the row ran:

- ``embed``: :func:`scgpt.model.run_inference` with :class:`~scgpt.model.CellRows` (``tl.embed``'s engine),
  fp32 and bf16, at ~250 and ~1,200 tokens per cell;
- ``annotate k-NN``: ``tl.annotate(method="knn")`` (embed reference and query, k-NN vote), unit = query cell;
- ``fine-tune step``: one optimiser step (forward, backward, gradient clipping, AdamW) of an annotation model
  (expression + classification loss), an integration model (expression + cell-embedding MVC loss) and a
  perturbation model (expression loss with perturbation flags, every gene a token); FLOPs: 3 forward passes;
- ``perturbation predict``: forward passes of the perturbation model in inference mode (every gene a token);
- ``attention network``: ``tl.infer_grn(method="attention")``, unit = cell (a forward pass plus the explicit
  attention maps, rank-normalised per head);
- ``gene programs``: ``tl.gene_programs`` (gene embeddings, k-NN graph, Leiden, scores), unit = gene.

    python benchmarks/tasks.py --quick          # 128 tokens, a few cells: minutes on 2 busy cores
    python benchmarks/tasks.py                  # whole-human shapes (~250 and ~1,200 tokens)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _worker import RssSampler
from embed_throughput import WHOLE_HUMAN, cells

import scgpt
from scgpt.data import GeneVocab
from scgpt.model import CellRows, ScGPT, run_inference
from scgpt.model._estimate import forward_flops


def _model(vocab: GeneVocab, **extra) -> ScGPT:
    torch.manual_seed(0)
    return ScGPT(vocab=vocab, **{**WHOLE_HUMAN, **extra})


def matmul_rate(dtype: torch.dtype, budget: float = 1.0) -> float:
    """GFLOP/s of ``(2048 x 512) @ (512 x 1536)`` products (the q/k/v projection of 16 cells x 128 tokens), best of
    the products that fit in ``budget`` seconds (at least two).

    A precision without native support (bf16 on a CPU without AVX-512-BF16/AMX runs at under 1 GFLOP/s) is
    timed on 256 rows instead, so that it too takes about ``budget`` seconds.
    """
    m = 2048
    a, b = torch.randn(m, 512, dtype=dtype), torch.randn(512, 1536, dtype=dtype)
    t = time.perf_counter()
    a @ b
    if time.perf_counter() - t > 1.0:
        m = 256
        a = a[:m].clone()
    best, spent, n = 0.0, 0.0, 0
    while spent < budget or n < 2:
        t = time.perf_counter()
        a @ b
        dt = time.perf_counter() - t
        spent, n = spent + dt, n + 1
        best = max(best, 2 * m * 512 * 1536 / dt / 1e9)
    return best


def _timed(fn, reps: int = 1) -> float:
    """Seconds per call of ``fn`` (one untimed warm-up call first)."""
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def _synthetic_batch(B: int, L: int, n_tokens: int, seed: int, cls_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    genes = torch.stack([torch.randperm(n_tokens - 3, generator=g)[:L] for _ in range(B)])
    genes[:, 0] = cls_id
    values = torch.randint(0, 51, (B, L), generator=g).float()
    values[:, 0] = 0.0
    return genes, values


def finetune_step(
    model: ScGPT, B: int, L: int, kind: str, *, device: str = "cpu", autocast: torch.dtype | None = None
) -> float:
    """Seconds per optimiser step (forward, backward, clipping, AdamW) of a ``kind`` model on B cells of L tokens.

    ``model.net`` is trained in place on ``device`` (with ``autocast``: mixed precision in that dtype).
    """
    net = model.net.to(device)
    net.train()
    genes, values = _synthetic_batch(B, L, net.config.n_tokens, seed=1, cls_id=model.vocab.cls_id)
    masked = torch.rand(B, L, generator=torch.Generator().manual_seed(2)) < 0.4
    masked[:, 0] = False
    inputs = values.masked_fill(masked, -1.0)
    labels = torch.arange(B) % 8
    flags = (torch.rand(B, L, generator=torch.Generator().manual_seed(3)) < 0.01).long() + 1
    genes, values, masked, inputs, labels, flags = (
        t.to(device) for t in (genes, values, masked, inputs, labels, flags)
    )
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    dev = torch.device(device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        kw = {"pert_flags": flags} if kind == "perturbation" else {}
        with torch.autocast(dev.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            enc = net.encode(genes, values if kind == "perturbation" else inputs, **kw)
            pred = net.expression(enc)[0].float()
            loss = ((pred - values)[masked] ** 2).mean()
            if kind == "annotate":
                loss = loss + torch.nn.functional.cross_entropy(net.classify(enc).float(), labels)
            if kind == "integrate":
                loss = loss + ((net.mvc(enc)[0].float() - values)[masked] ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    dt = _timed(step, reps=2)
    net.eval()
    return dt


def perturbation_predict(model: ScGPT, B: int, L: int, n_batches: int) -> float:
    """Seconds per batch of B cells of L tokens through the perturbation model in inference mode."""
    net = model.net.eval()
    genes, values = _synthetic_batch(B, L, net.config.n_tokens, seed=4, cls_id=model.vocab.cls_id)
    flags = torch.ones(B, L, dtype=torch.long)
    flags[:, 5] = 2

    def run() -> None:
        with torch.inference_mode():
            for _ in range(n_batches):
                net.expression(net.encode(genes, values, pert_flags=flags))

    return _timed(run) / n_batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short tokens and few cells (a minute or two)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default=None, help="comma-separated row-name prefixes to run (e.g. 'embed,attention')")
    p.add_argument("--json-out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    scgpt.settings.progress = False
    logging.getLogger("scgpt").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")

    q = args.quick
    lengths = (128,) if q else (256, 1200)
    embed_cells = {128: 16, 256: 64, 1200: 16}
    step_L, step_B = (128, 2) if q else (1200, 4)
    pert_L = 128 if q else 1200
    grn_cells, grn_genes = (2, 127) if q else (8, 1199)
    knn_ref, knn_query, knn_L = (16, 8, 128) if q else (256, 128, 256)

    vocab = GeneVocab.default()
    n_genes = 30_000
    genes = pd.DataFrame(index=pd.Index(vocab.lookup_tokens(np.arange(n_genes))))
    base = _model(vocab)
    cfg = base.net.config

    rates = {}
    rows: list[dict] = []
    wanted = None if args.only is None else [w.strip() for w in args.only.split(",")]

    def rate(dtype: torch.dtype) -> float:
        """The matmul rate now (the machine may be shared: every row measures it next to its own timing)."""
        r = matmul_rate(dtype, budget=0.5)
        rates.setdefault(dtype, []).append(r)
        return r

    def record(name: str, unit: str, fn, units: float, flops_per_unit: float | None, dtype=torch.float32) -> None:
        if wanted is not None and not any(name.startswith(w) for w in wanted):
            return
        before = rate(dtype)
        with RssSampler() as mon:
            seconds = fn()
        r = (before + rate(dtype)) / 2  # the rate around this row, measured just before and just after it
        per_s = units / seconds
        row = {
            "task": name,
            "unit": unit,
            "units_per_s": per_s,
            "gflop_per_unit": None if flops_per_unit is None else flops_per_unit / 1e9,
            "gflops": None if flops_per_unit is None else per_s * flops_per_unit / 1e9,
            "matmul_gflops": r / 1.0,
            "fraction_of_matmul": None if flops_per_unit is None else per_s * flops_per_unit / 1e9 / r,
            "peak_rss_mib": mon.peak / 2**20,
        }
        rows.append(row)
        frac = "" if row["fraction_of_matmul"] is None else f"{row['fraction_of_matmul']:.0%}"
        print(f"  {name:40s} {per_s:9.2f} {unit}/s  {frac:>5s}  ({row['peak_rss_mib']:.0f} MiB)", flush=True)

    # embed
    slow_bf16 = matmul_rate(torch.bfloat16, 0.1) < 0.5 * matmul_rate(torch.float32, 0.1)
    for dtype in (torch.float32, torch.bfloat16):
        for L in lengths:
            n = embed_cells[L] if dtype == torch.float32 or slow_bf16 is False else 4
            X = ad.AnnData(cells(n, L, n_genes, seed=L), var=genes)
            kw = dict(max_length=L, batch_size=64, device="cpu", dtype=dtype, progress=False, use_aliases=False)

            def run(X=X, kw=kw) -> float:
                run_inference(base, X[: min(8, X.n_obs)].copy(), CellRows(normalize=True), **kw)
                t = time.perf_counter()
                run_inference(base, X, CellRows(normalize=True), **kw)
                return time.perf_counter() - t

            name = "float32" if dtype == torch.float32 else "bfloat16"
            record(f"embed {name} L={L}", "cells", run, n, forward_flops(cfg, L), dtype)

    # annotate, k-NN
    def knn() -> float:
        ref = ad.AnnData(cells(knn_ref, knn_L, n_genes, seed=11), var=genes)
        ref.obs["cell_type"] = pd.Categorical([f"t{i % 5}" for i in range(knn_ref)])
        query = ad.AnnData(cells(knn_query, knn_L, n_genes, seed=12), var=genes)
        kw = dict(reference=ref, labels_key="cell_type", method="knn", use_aliases=False, max_length=knn_L)
        t = time.perf_counter()
        scgpt.tl.annotate(query, base, **kw)
        return time.perf_counter() - t

    record(
        f"annotate k-NN (ref {knn_ref}) L={knn_L}",
        "cells",
        knn,
        knn_query,
        forward_flops(cfg, knn_L) * (knn_ref + knn_query) / knn_query,
    )

    # fine-tune steps
    step_flops = 3 * forward_flops(cfg, step_L)
    pert_flops = 3 * forward_flops(cfg, pert_L)
    for kind, extra, L, flops in (
        ("annotate", {"n_cls": 8}, step_L, step_flops),
        ("integrate", {"mvc_style": "inner product"}, step_L, step_flops),
        ("perturbation", {"n_pert_flags": 3, "pert_pad_id": 0}, pert_L, pert_flops),
    ):
        tuned = _model(vocab, **extra)
        name = f"{kind} fine-tune step B={step_B} L={L}"
        record(name, "cells", lambda m=tuned, k=kind, L=L: finetune_step(m, step_B, L, k), step_B, flops)
    pred_flops = forward_flops(cfg, pert_L)
    pred_B = 8 if q else 32
    name = f"perturbation predict B={pred_B} L={pert_L}"
    record(name, "cells", lambda m=tuned: perturbation_predict(m, pred_B, pert_L, 1), pred_B, pred_flops)

    # attention network
    rng = np.random.default_rng(0)
    cols = sorted(rng.choice(n_genes, grn_genes, replace=False).tolist())
    counts = rng.negative_binomial(2, 0.6, size=(grn_cells, grn_genes)).astype(np.float32)
    grn = ad.AnnData(counts, var=pd.DataFrame(index=[genes.index[c] for c in cols]))

    def attention() -> float:
        a = grn.copy()
        t = time.perf_counter()
        scgpt.tl.infer_grn(a, base, method="attention", tfs=list(a.var_names[:50]), n_top_genes=None,
                           batch_size=8, device="cpu", use_aliases=False)  # fmt: skip
        return time.perf_counter() - t

    record(f"attention network L={grn_genes + 1}", "cells", attention, grn_cells, forward_flops(cfg, grn_genes + 1))

    # gene programs
    def programs() -> float:
        a = grn.copy()
        t = time.perf_counter()
        scgpt.tl.gene_programs(a, base, use_aliases=False, resolution=10.0)
        return time.perf_counter() - t

    record(f"gene programs ({grn_genes} genes)", "genes", programs, grn_genes, None)

    print()
    print(
        f"matmul rates (best of 2048 x 512 @ 512 x 1536, {torch.get_num_threads()} threads, measured before and "
        "after each row; each row's fraction uses the mean of its two): "
        + ", ".join(f"{str(k).replace('torch.', '')} {min(v):.1f}-{max(v):.1f} GFLOP/s" for k, v in rates.items())
    )
    print(f"load average: {os.getloadavg()[0]:.2f}\n")
    print("| task | units/s | GFLOP/unit | GFLOP/s | matmul GFLOP/s | of matmul | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        g = "–" if r["gflop_per_unit"] is None else f"{r['gflop_per_unit']:.2f}"
        f = "–" if r["gflops"] is None else f"{r['gflops']:.0f}"
        fr = "–" if r["fraction_of_matmul"] is None else f"{r['fraction_of_matmul']:.0%}"
        print(
            f"| {r['task']} | {r['units_per_s']:.2f} {r['unit']}/s | {g} | {f} | {r['matmul_gflops']:.0f} | {fr} | "
            f"{r['peak_rss_mib']:.0f} |"
        )
    if args.json_out:
        info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "quick": q, "rows": rows}
        Path(args.json_out).write_text(json.dumps(info, indent=1, default=str))


if __name__ == "__main__":
    main()
