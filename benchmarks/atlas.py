#!/usr/bin/env python
"""Atlas-scale embedding, part (a): a backed ``.h5ad`` of 1,000,000 cells, one process vs several.

1. Writes a synthetic raw-count ``.h5ad`` chunk by chunk (``_cells.write_backed_h5ad``; never whole in
   memory) over the genes of the demo model's vocabulary: each cell expresses a uniform number of
   distinct genes in ``--genes-per-cell`` (default 300-2,500, a 10x-like range; cells above
   ``--max-length`` tokens are subsampled as usual), Zipf-like gene frequencies, negative-binomial counts.
2. For each entry of ``--processes`` runs ``scgpt embed --model demo --backed --device cpu
   [--devices N]`` (the out-of-core path: each process reads its share of the rows, writes its chunks to
   ``OUTPUT.parts``; rank 0 streams them into the output) in a fresh process tree. Every rank reports its
   own peak RSS (``ru_maxrss``) and the run's wall time gives cells/s (end to end: start-up, model load,
   reading, embedding, writing the result).
3. Checks that the outputs of the runs agree (max absolute difference of the embeddings, read in blocks).

With ``--sources h5ad,soma`` the same cells are also written as a TileDB-SOMA experiment in the Census layout
(measurement ``RNA``, ``X`` layer ``raw``, ``obs["nnz"]``; written a block of cells at a time) and embedded from it
(``scgpt embed --input <experiment> --backed``), to compare reading from SOMA with reading a backed ``.h5ad``.

Prints a markdown table and writes ``--out-json``. Scale down with ``--cells`` (e.g. 20,000); the full
1M run needs about 4 GB of disk for the input. Timing needs a quiet machine.

    python benchmarks/atlas.py --cells 20000 --processes 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=1_000_000, help="cells in the backed .h5ad")
    ap.add_argument("--genes-per-cell", type=int, nargs=2, default=(300, 2500), metavar=("LO", "HI"))
    ap.add_argument("--processes", default="1,2", help="comma-separated numbers of processes to compare")
    ap.add_argument(
        "--sources", default="h5ad", help="comma-separated inputs to compare: h5ad (backed), soma (TileDB-SOMA)"
    )
    ap.add_argument("--max-length", type=int, default=1200)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="scgpt embed --dtype")
    ap.add_argument("--check-sample", type=int, default=2000, help="random cells embedded in memory, to compare")
    ap.add_argument(
        "--gpu-peak-tflops",
        type=float,
        default=989.0,
        help="dense bfloat16 peak of the GPU the projection (c) is for (989: H100/H200 SXM)",
    )
    ap.add_argument("--chunk-size", type=int, default=2048, help="cells per chunk file (scgpt embed --chunk-size)")
    ap.add_argument("--work", type=Path, default=HERE / "results" / "atlas_work", help="folder for data and outputs")
    ap.add_argument("--out-json", type=Path, default=None, help="default: results/atlas_<cells>.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads-per-process",
        type=int,
        default=None,
        help="torch threads of each process (OMP_NUM_THREADS); default: all cores for 1 process, cores / N for N "
        "(Lightning's choice). On a shared machine 1 gives comparable numbers.",
    )
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------- one rank (run by Lightning's launcher)
def rank_main(report_dir: str, cli_args: list[str]) -> int:
    """``scgpt embed`` in this process, then this rank's peak RSS into ``report_dir/rank<r>.json``.

    Lightning's DDP launcher starts the other ranks by running this script again with the same
    arguments, so each rank goes through here.
    """
    from scgpt.cli import main

    t0 = time.perf_counter()
    status = main(cli_args)
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    info = {
        "rank": rank,
        "pid": os.getpid(),
        "status": status,
        "seconds": time.perf_counter() - t0,
        "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    Path(report_dir, f"rank{rank}.json").write_text(json.dumps(info))
    return status


# ----------------------------------------------------------------------------- the benchmark
def demo_genes() -> list[str]:
    from scgpt.model import ScGPT

    vocab = ScGPT.from_pretrained("demo").vocab
    return [t for t in vocab.itos if not (t.startswith("<") and t.endswith(">"))]


def ensure_input(args: argparse.Namespace) -> tuple[Path, dict]:
    import _cells

    lo, hi = args.genes_per_cell
    path = args.work / f"atlas_{args.cells}_{lo}-{hi}_seed{args.seed}.h5ad"
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        return path, json.loads(meta.read_text())
    info = _cells.write_backed_h5ad(path, demo_genes(), args.cells, genes_per_cell=(lo, hi), seed=args.seed)
    meta.write_text(json.dumps(info))
    return path, info


def ensure_soma(data: Path, block: int = 5000) -> Path:
    """The cells of ``data`` as a TileDB-SOMA experiment in the Census layout (measurement ``RNA``, ``X`` layer ``raw``,
    ``obs["nnz"]``, symbols in ``var["feature_name"]``), next to it; written ``block`` cells at a time."""
    import anndata as ad
    import pyarrow as pa
    import tiledbsoma as soma

    uri = data.with_suffix(".soma")
    if (uri / "ms").is_dir():
        return uri
    backed = ad.read_h5ad(data, backed="r")
    n, g = backed.shape
    nnz = np.diff(backed.file["X"]["indptr"][:]).astype(np.int64)
    obs = pa.table({"soma_joinid": np.arange(n), "obs_id": backed.obs_names.to_numpy(str), "nnz": nnz})
    var = pa.table({"soma_joinid": np.arange(g), "feature_name": backed.var_names.to_numpy(str)})
    tmp = uri.with_name(uri.name + ".tmp")
    with soma.Experiment.create(str(tmp)) as exp:
        exp.add_new_dataframe("obs", schema=obs.schema, index_column_names=["soma_joinid"], domain=[(0, n - 1)]).write(
            obs
        )
        rna = exp.add_new_collection("ms").add_new_collection("RNA", soma.Measurement)
        rna.add_new_dataframe("var", schema=var.schema, index_column_names=["soma_joinid"], domain=[(0, g - 1)]).write(
            var
        )
        raw = rna.add_new_collection("X").add_new_sparse_ndarray("raw", type=pa.float32(), shape=(n, g))
        for s in range(0, n, block):
            coo = backed.X[s : s + block].tocoo()
            raw.write(pa.table({"soma_dim_0": coo.row + s, "soma_dim_1": coo.col, "soma_data": coo.data}))
    backed.file.close()
    tmp.rename(uri)
    return uri


def run_embed(args: argparse.Namespace, data: Path, n_proc: int) -> dict:
    out = args.work / f"emb_{data.name.replace('.', '_')}_p{n_proc}_{args.dtype}.h5ad"
    report = args.work / f"report_{data.suffix.lstrip('.')}_p{n_proc}_{args.dtype}"
    report.mkdir(parents=True, exist_ok=True)
    for f in report.glob("rank*.json"):
        f.unlink()
    out.unlink(missing_ok=True)
    cli = ["embed", "--model", "demo", "--input", str(data), "--output", str(out), "--backed", "--device", "cpu"]
    cli += ["--max-length", str(args.max_length), "--batch-size", str(args.batch_size), "--dtype", args.dtype]
    cli += ["--chunk-size", str(args.chunk_size), "--seed", str(args.seed), "-q"]
    if n_proc > 1:
        cli += ["--devices", str(n_proc)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("OMP_NUM_THREADS", None)  # Lightning gives each of the N processes cores / N threads
    if args.threads_per_process:
        env["OMP_NUM_THREADS"] = str(args.threads_per_process)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--rank-main", str(report), "--", *cli],
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{n_proc} processes failed:\n{proc.stderr[-4000:]}")
    ranks = sorted((json.loads(f.read_text()) for f in report.glob("rank*.json")), key=lambda r: r["rank"])
    return {
        "processes": n_proc,
        "wall_s": wall,
        "cells_per_s": args.cells / wall,
        "peak_rss_MiB_per_rank": [round(r["peak_rss_MiB"], 1) for r in ranks],
        "command_s_per_rank": [round(r["seconds"], 1) for r in ranks],  # scgpt embed itself, after imports
        "output": str(out),
    }


def cell_tokens(data: Path, max_length: int) -> np.ndarray:
    """Tokens per cell of the run: ``<cls>`` + the expressed genes, at most ``max_length`` (every gene of the
    synthetic input is in the demo vocabulary)."""
    import h5py

    with h5py.File(data, "r") as f:
        nnz = np.diff(f["X"]["indptr"][:])
    return np.minimum(nnz, max_length - 1) + 1


def flop_share(args: argparse.Namespace, data: Path, runs: list[dict]) -> dict:
    """Achieved model GFLOP/s of each run against this machine's matrix-product rate, and part (c): the
    per-GPU throughput that the same share of a GPU's bfloat16 peak would give at the whole-human shape.

    The projection is arithmetic, not a measurement: it assumes the GPU reaches the fraction of its peak
    that this machine's best run reached of its own matrix-product rate.
    """
    from _cells import WHOLE_HUMAN_ARGS
    from embed import matmul_gflops, model_flops

    from scgpt.model import ScGPT

    config = ScGPT.from_pretrained("demo").config
    demo_args = {"embsize": config.d_model, "d_hid": config.d_hid, "nlayers": config.n_layers}
    tokens = cell_tokens(data, args.max_length)
    flops = model_flops(tokens, demo_args)
    matmul = matmul_gflops(args.dtype, os.cpu_count() or 1, reps=20)
    for r in runs:
        r["model_gflops"] = flops / r["wall_s"] / 1e9
        r["fraction_of_matmul"] = r["model_gflops"] / matmul["gflops"]
    share = max(r["fraction_of_matmul"] for r in runs)
    projection = {}
    for t in (250, 1200):
        per_cell = model_flops(np.array([t]), WHOLE_HUMAN_ARGS)
        projection[str(t)] = {
            "gflop_per_cell": per_cell / 1e9,
            "cells_per_s_per_gpu": share * args.gpu_peak_tflops * 1e12 / per_cell,
        }
    return {
        "tokens_mean": float(tokens.mean()),
        "tokens_median": float(np.median(tokens)),
        "demo_gflop_per_cell": flops / len(tokens) / 1e9,
        "matmul": matmul,
        "share_used": share,
        "gpu_peak_tflops": args.gpu_peak_tflops,
        "gpu_projection_whole_human_bf16": projection,
    }


def sample_difference(args: argparse.Namespace, data: Path, output: Path, key: str = "X_scGPT") -> float:
    """Max absolute difference between ``--check-sample`` random cells of an output and the same cells embedded in
    memory by ``tl.embed`` (same options); also checks that the output lists them under the same names."""
    import anndata as ad
    import h5py

    import scgpt

    rng = np.random.default_rng(args.seed + 7)
    rows = np.sort(rng.choice(args.cells, min(args.check_sample, args.cells), replace=False))
    backed = ad.read_h5ad(data, backed="r")
    cells = backed[rows].to_memory()
    backed.file.close()
    scgpt.tl.embed(
        cells, "demo", max_length=args.max_length, batch_size=args.batch_size, dtype=args.dtype, device="cpu",
        seed=args.seed, progress=False,
    )  # fmt: skip
    with h5py.File(output, "r") as f:
        got = f["obsm"][key][rows]
        names = f["obs"]["_index"][rows].astype(str)
    if not (names == cells.obs_names.to_numpy().astype(str)).all():
        raise AssertionError("the output lists the sampled cells under other names (order differs)")
    return float(np.abs(got - cells.obsm[key]).max())


def max_difference(a: Path, b: Path, key: str = "X_scGPT", block: int = 65_536) -> float:
    import h5py

    worst = 0.0
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        da, db = fa["obsm"][key], fb["obsm"][key]
        assert da.shape == db.shape, (da.shape, db.shape)
        for s in range(0, da.shape[0], block):
            worst = max(worst, float(np.abs(da[s : s + block] - db[s : s + block]).max()))
        same_order = bool((fa["obs"]["_index"][:] == fb["obs"]["_index"][:]).all())
    if not same_order:
        raise AssertionError("the outputs list the cells in different orders")
    return worst


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data, info = ensure_input(args)
    print(f"input: {data} ({info.get('n_cells', args.cells):,} cells; written in {time.perf_counter() - t0:.0f}s)")
    runs = []
    for source in args.sources.split(","):
        if source not in ("h5ad", "soma"):
            raise SystemExit(f"--sources: unknown input {source!r} (h5ad, soma)")
        t1 = time.perf_counter()
        path = data if source == "h5ad" else ensure_soma(data)
        if source == "soma":
            print(f"input as a TileDB-SOMA experiment: {path} ({time.perf_counter() - t1:.0f}s)")
        for n in (int(x) for x in args.processes.split(",")):
            r = {"source": source, **run_embed(args, path, n)}
            print(
                f"  {source}, {n} process(es): {r['wall_s']:.1f}s, {r['cells_per_s']:.0f} cells/s, "
                f"RSS {r['peak_rss_MiB_per_rank']}"
            )
            runs.append(r)
    for r in runs[1:]:
        r["max_abs_diff_vs_first"] = max_difference(Path(runs[0]["output"]), Path(r["output"]))
    if args.check_sample:
        for r in runs:
            r["sample_max_abs_diff_vs_in_memory"] = sample_difference(args, data, Path(r["output"]))
    flops = flop_share(args, data, runs)
    result = {
        "cells": args.cells,
        "genes_per_cell": list(args.genes_per_cell),
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "chunk_size": args.chunk_size,
        "threads_per_process": args.threads_per_process,
        "check_sample": args.check_sample,
        "input": info,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()},
        "sources": args.sources.split(","),
        "runs": runs,
        "flops": flops,
    }
    out_json = args.out_json or HERE / "results" / f"atlas_{args.cells}.json"
    out_json.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"\n{args.cells:,} cells, {flops['tokens_mean']:.0f} tokens per cell on average (median "
        f"{flops['tokens_median']:.0f}), {args.dtype}; matrix-product rate here {flops['matmul']['gflops']:.0f} GFLOP/s"
    )
    print(
        "\n| input | processes | wall (s) | cells/s | peak RSS per process (MiB) | model GFLOP/s |"
        " share of matmul rate | max abs diff vs first | sampled cells vs in memory |"
    )
    print("|---|---|---|---|---|---|---|---|---|")

    def fmt(x):
        return "-" if x is None else f"{x:.1e}"

    for r in runs:
        rss = ", ".join(f"{x:.0f}" for x in r["peak_rss_MiB_per_rank"])
        print(
            f"| {r['source']} | {r['processes']} | {r['wall_s']:.1f} | {r['cells_per_s']:.0f} | {rss} | "
            f"{r['model_gflops']:.1f} | "
            f"{r['fraction_of_matmul']:.2f} | {fmt(r.get('max_abs_diff_vs_first'))} | "
            f"{fmt(r.get('sample_max_abs_diff_vs_in_memory'))} |"
        )
    print(
        f"\n(c) projection, not a measurement: a GPU of {args.gpu_peak_tflops:.0f} bf16 TFLOP/s at the same share "
        f"({flops['share_used']:.2f}) embeds, at the whole-human shape (d 512, 12 layers):"
    )
    for t, p in flops["gpu_projection_whole_human_bf16"].items():
        rate = p["cells_per_s_per_gpu"]
        print(f"  {t} tokens per cell: {p['gflop_per_cell']:.1f} GFLOP per cell -> {rate:,.0f} cells/s per GPU")
    print(f"\nwrote {out_json}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--rank-main":
        sys.exit(rank_main(sys.argv[2], sys.argv[sys.argv.index("--") + 1 :]))
    main()
