"""Atlas-scale reference mapping: ``scgpt.tl.build_reference`` + k-NN label transfer against exact k-NN.

A synthetic atlas of ``--n-ref`` embeddings (default 1,000,000; ``--dim`` 128, the demo model's width, or
512, the whole-human model's) in ``--n-types`` cell types of Zipf-like sizes whose clusters overlap at
their edges (per-dimension noise 1.8: exact 10-NN about 99 % right at d=128), and a query of
``--n-query`` cells (default 100,000) from the same types. Measures:

- index build time (``build_reference``: NN-descent graph + search preparation) and save/load time and size
  of the index folder;
- query time of the label transfer (k-NN search + vote) of all query cells, through the saved index;
- peak RSS of the process after each phase;
- agreement of the transferred labels (and mean confidence) with exact cosine k-NN, computed in chunks of
  ``--exact-chunk`` query cells (matrix product + partial sort) on ``--exact-sample`` query cells (default all).

    python benchmarks/atlas_mapping.py --n-ref 100000 --n-query 10000       # scaled down
    python benchmarks/atlas_mapping.py                                       # 1M x 100k
    python benchmarks/atlas_mapping.py --backend faiss                       # needs faiss
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

import scgpt
from scgpt.tl._reference import vote

HERE = Path(__file__).resolve().parent


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def synthetic(n: int, *, dim: int, n_types: int, noise: float, seed: int, chunk: int = 100_000):
    """``(embeddings float32, type codes)``: Zipf-sized types around shared random centres, generated in chunks."""
    centers = np.random.default_rng(12345).normal(size=(n_types, dim)).astype(np.float32)
    p = 1 / np.arange(1, n_types + 1) ** 0.8
    rng = np.random.default_rng(seed)
    types = rng.choice(n_types, size=n, p=p / p.sum())
    emb = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        t = types[s : s + chunk]
        emb[s : s + chunk] = centers[t] + rng.standard_normal(size=(len(t), dim), dtype=np.float32) * noise
    return emb, types


def exact_knn(ref: np.ndarray, query: np.ndarray, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-NN (indices, similarities, nearest first) of unit rows, ``chunk`` query rows at a time."""
    idx = np.empty((len(query), k), dtype=np.int64)
    sim = np.empty((len(query), k), dtype=np.float32)
    for s in range(0, len(query), chunk):
        S = query[s : s + chunk] @ ref.T
        part = np.argpartition(-S, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(S, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        idx[s : s + chunk] = np.take_along_axis(part, order, axis=1)
        sim[s : s + chunk] = np.take_along_axis(ps, order, axis=1)
    return idx, sim


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-ref", type=int, default=1_000_000)
    ap.add_argument("--n-query", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128, help="embedding width (128: demo model; 512: scGPT_human)")
    ap.add_argument("--n-types", type=int, default=100)
    ap.add_argument("--noise", type=float, default=None, help="per-dimension noise (default 1.8)")
    ap.add_argument("--backend", default="pynndescent", choices=["pynndescent", "faiss"])
    ap.add_argument("--n-neighbors", type=int, default=10, help="neighbours of the vote")
    ap.add_argument("--index-params", default="{}", help="JSON: NNDescent arguments, or {'factory': ...} for faiss")
    ap.add_argument("--search-params", default="{}", help="JSON: {'epsilon': 0.1} (pynndescent), {'nprobe': 32}")
    ap.add_argument("--exact-sample", type=int, default=0, help="query cells compared with exact k-NN (0: all)")
    ap.add_argument("--exact-chunk", type=int, default=128, help="query rows per exact block (~16 B x n-ref each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--gpu-peak-tflops", type=float, default=67.0, help="float32 peak of the GPU projected to (67: H100/H200 SXM)"
    )
    ap.add_argument("--work", type=Path, default=HERE / "results" / "atlas_work", help="where the index is saved")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "atlas_mapping.json")
    args = ap.parse_args()
    noise = args.noise if args.noise is not None else 1.8
    result: dict = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "noise": float(noise),
        "load_average_at_start": os.getloadavg(),
        "cpus": os.cpu_count(),
    }

    t = time.perf_counter()
    ref_emb, ref_types = synthetic(args.n_ref, dim=args.dim, n_types=args.n_types, noise=noise, seed=args.seed)
    q_emb, q_types = synthetic(args.n_query, dim=args.dim, n_types=args.n_types, noise=noise, seed=args.seed + 1)
    names = np.array([f"type{i:03d}" for i in range(args.n_types)])
    obs = pd.DataFrame({"cell_type": pd.Categorical(names[ref_types])}, index=np.arange(args.n_ref).astype(str))
    reference = ad.AnnData(obs=obs)
    reference.obsm["X_emb"] = ref_emb
    result["data_s"] = time.perf_counter() - t
    result["rss_after_data_gib"] = peak_rss_gib()
    print(f"data: {args.n_ref:,} x {args.dim} reference, {args.n_query:,} query ({result['data_s']:.1f}s)", flush=True)

    # -- build once, save next to the "model", load for the queries
    t = time.perf_counter()
    index = scgpt.tl.build_reference(
        reference, labels_key="cell_type", use_rep="X_emb", backend=args.backend, n_neighbors=args.n_neighbors,
        seed=args.seed, index_params=json.loads(args.index_params), search_params=json.loads(args.search_params),
    )  # fmt: skip
    result["build_s"] = time.perf_counter() - t
    result["peak_rss_after_build_gib"] = peak_rss_gib()
    result["index_params"] = index.params
    print(f"build: {result['build_s']:.1f}s, peak RSS {result['peak_rss_after_build_gib']:.2f} GiB", flush=True)
    folder = scgpt.tl.reference_dir(args.work / "model", "synthetic")
    t = time.perf_counter()
    index.save(folder, overwrite=True)
    result["save_s"] = time.perf_counter() - t
    result["folder_gib"] = sum(f.stat().st_size for f in folder.iterdir()) / 2**30
    del index
    t = time.perf_counter()
    index = scgpt.tl.ReferenceIndex.load(folder)
    result["load_s"] = time.perf_counter() - t
    print(f"save {result['save_s']:.1f}s, load {result['load_s']:.1f}s, {result['folder_gib']:.2f} GiB", flush=True)

    # -- transfer labels to the whole query
    t = time.perf_counter()
    labels, conf = index.transfer(q_emb, args.n_neighbors)
    result["query_s"] = time.perf_counter() - t
    result["query_cells_per_s"] = args.n_query / result["query_s"]
    result["peak_rss_after_query_gib"] = peak_rss_gib()
    print(f"query: {result['query_s']:.1f}s ({result['query_cells_per_s']:,.0f} cells/s)", flush=True)

    # -- exact k-NN in chunks, on all or a sample of the query cells
    n_exact = args.exact_sample or args.n_query
    sample = np.sort(np.random.default_rng(1).choice(args.n_query, n_exact, replace=False))
    refn = ref_emb / np.maximum(np.linalg.norm(ref_emb, axis=1, keepdims=True), 1e-12)
    qn = q_emb[sample] / np.maximum(np.linalg.norm(q_emb[sample], axis=1, keepdims=True), 1e-12)
    t = time.perf_counter()
    e_idx, e_sim = exact_knn(refn, qn, args.n_neighbors, args.exact_chunk)
    e_best, e_conf = vote(index.codes[e_idx], e_sim, len(index.classes))
    result["exact_s"] = time.perf_counter() - t
    exact_labels = np.asarray(index.classes, dtype=object)[e_best]
    a_idx, _ = index.kneighbors(q_emb[sample[: min(n_exact, 10_000)]], args.n_neighbors)
    m = len(a_idx)
    result.update(
        exact_cells=int(n_exact),
        label_agreement=float((labels[sample] == exact_labels).mean()),
        recall_at_k=float(np.mean([len(set(a) & set(b)) for a, b in zip(a_idx, e_idx[:m])]) / args.n_neighbors),
        confidence_mean_approx=float(conf[sample].mean()),
        confidence_mean_exact=float(e_conf.mean()),
        exact_accuracy_vs_truth=float((exact_labels == names[q_types[sample]]).mean()),
        approx_accuracy_vs_truth=float((labels[sample] == names[q_types[sample]]).mean()),
        peak_rss_gib=peak_rss_gib(),
    )
    print(
        f"exact k-NN of {n_exact:,} query cells: {result['exact_s']:.1f}s; label agreement "
        f"{result['label_agreement']:.4f}, recall@{args.n_neighbors} {result['recall_at_k']:.3f}, mean confidence "
        f"{result['confidence_mean_approx']:.3f} (exact {result['confidence_mean_exact']:.3f}), accuracy "
        f"{result['approx_accuracy_vs_truth']:.4f} (exact {result['exact_accuracy_vs_truth']:.4f}); "
        f"peak RSS {result['peak_rss_gib']:.2f} GiB",
        flush=True,
    )
    # -- (c) projection, not a measurement: exact search of the whole query on a GPU at the share of its float32
    # peak that the exact search reached here of this machine's matrix-product rate
    sys.path.insert(0, str(HERE))
    from embed import matmul_gflops

    matmul = matmul_gflops("float32", os.cpu_count() or 1, reps=10)
    exact_gflops = 2.0 * n_exact * args.n_ref * args.dim / result["exact_s"] / 1e9
    share = exact_gflops / matmul["gflops"]
    full_flop = 2.0 * args.n_query * args.n_ref * args.dim
    result.update(
        matmul_gflops=matmul["gflops"],
        exact_gflops=exact_gflops,
        exact_share_of_matmul=share,
        gpu_exact_projection_s=full_flop / (share * args.gpu_peak_tflops * 1e12),
    )
    print(
        f"exact search here: {exact_gflops:.0f} GFLOP/s ({share:.2f} of the {matmul['gflops']:.0f} GFLOP/s "
        f"matrix-product rate). Projection, not a measurement: exact search of all {args.n_query:,} query cells "
        f"({full_flop / 1e12:.1f} TFLOP) on a GPU of {args.gpu_peak_tflops:.0f} float32 TFLOP/s at that share: "
        f"{result['gpu_exact_projection_s']:.1f} s",
        flush=True,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    shutil.rmtree(args.work, ignore_errors=True)
    return 0 if result["label_agreement"] >= 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
