#!/usr/bin/env python
"""Speed, memory and agreement of ``scgpt.tl.embed`` against the official ``scgpt.tasks.embed_data``.

Both are measured in the same run, on the same checkpoint and the same cells:

1. For each ``--modes`` entry (``real765``: about 250 tokens per cell; ``expanded``: about 1,124),
   the peer kit's ``shared/peer/scgpt_peer_embed.py`` runs in the official environment
   (``--peer-python``, scgpt 0.2.4) as a subprocess: it writes a whole-human-shaped model folder
   with random weights, builds the cells, and times ``embed_data`` (after a warm-up).
2. This script rebuilds the identical cells (``_cells.build_adata`` reproduces the peer kit's
   construction) and times ``scgpt.tl.embed`` on that folder, once per ``--dtypes`` entry, each in
   a fresh subprocess (``_worker.py``) so that peak RSS is per configuration.
3. Agreement: per-cell cosine of our float32 embeddings to the official ones (the official code
   breaks binning ties at random, so expect about 0.9999, not 1) and of bfloat16 to float32.
4. FLOP ceiling: a (2048x512)@(512x1536) matmul measures what the machine reaches in float32 and
   bfloat16; the model's FLOPs per cell (``12 * t * 12 d^2 + 12 * 4 t^2 d`` for ``t`` tokens, ``d`` 512)
   over the measured time give the achieved GFLOP/s and its fraction of that rate.
5. ``--backed-cells N``: a synthetic raw-count ``.h5ad`` of N cells x 32,738 genes is written chunk
   by chunk and embedded backed (``read_h5ad(backed="r")``): peak RSS should be bounded by the
   chunk, not by the size of the dataset.

Prints a markdown summary at the end and writes everything to ``--out-json``. Timing runs need a
quiet machine: run with nothing else on it. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cells

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("SCGPT_SHARED", REPO.parent / "shared"))
MODES = ("real765", "expanded")
MAX_LENGTH = 1200
BATCH_SIZE = 64
SEED = 0
#: Shape of the matmul that measures the machine's throughput: (M x K) @ (K x N).
MATMUL_SHAPE = (2048, 512, 1536)


# ----------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    default_peer = Path(os.environ["PEER_VENV"]) / "bin/python" if "PEER_VENV" in os.environ else None
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated, from: real765, expanded")
    ap.add_argument("--n-cells-real765", type=int, default=2000)
    ap.add_argument("--n-cells-expanded", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2, help="torch threads, for every run")
    ap.add_argument("--warmup-cells", type=int, default=64, help="untimed warm-up on this many cells first")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="our runs, comma-separated")
    ap.add_argument("--skip-official", action="store_true", help="do not time the official embed_data")
    ap.add_argument("--skip-ours", action="store_true", help="do not time scgpt.tl.embed (in memory)")
    ap.add_argument(
        "--peer-python",
        default=str(default_peer or "/work/peer-venv/bin/python"),
        help="python of the official environment (default: $PEER_VENV/bin/python or /work/peer-venv)",
    )
    ap.add_argument(
        "--peer-script",
        default=str(SHARED / "peer" / "scgpt_peer_embed.py"),
        help="the peer kit's script (default: $SCGPT_SHARED/peer/scgpt_peer_embed.py)",
    )
    ap.add_argument("--backed-cells", type=int, default=200_000, help="cells of the backed run; 0 skips it")
    ap.add_argument(
        "--backed-model",
        default=None,
        help="model folder for the backed run (default: the whole-human-shaped 'expanded' folder)",
    )
    ap.add_argument("--backed-max-length", type=int, default=256)
    ap.add_argument("--backed-dtype", default="bfloat16")
    ap.add_argument("--backed-device", default="cpu", help="device of the backed run (cpu, cuda)")
    ap.add_argument(
        "--backed-genes",
        type=int,
        default=_cells.N_UNIVERSE,
        help="genes of the backed file (the first ones of the model's vocabulary)",
    )
    ap.add_argument("--matmul-reps", type=int, default=20)
    ap.add_argument(
        "--work-dir",
        default=str(HERE / "results" / "embed_work"),
        help="model folders, cells, embeddings and logs (the backed .h5ad is reused when it matches)",
    )
    ap.add_argument("--out-json", default=str(HERE / "results" / "embed.json"))
    args = ap.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = sorted(set(args.modes) - set(MODES))
    if bad:
        ap.error(f"unknown mode(s) {bad}; choose from {list(MODES)}")
    return args


# ----------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """The CPU's ``model name`` from ``/proc/cpuinfo`` (or :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(threads: int) -> dict:
    """Versions, CPU, threads, load and date, for the JSON."""
    import importlib.metadata as md

    import torch

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "torch_threads_default": torch.get_num_threads(),
        "loadavg_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {d: version(d) for d in ("scgpt-scverse", "torch", "numpy", "scipy", "anndata", "scanpy")},
    }


def matmul_gflops(dtype: str, threads: int, reps: int) -> dict:
    """Median GFLOP/s of a ``MATMUL_SHAPE`` matrix product on ``threads`` CPU threads."""
    import torch

    torch.set_num_threads(threads)
    m, k, n = MATMUL_SHAPE
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(getattr(torch, dtype))
    b = torch.randn(k, n, generator=g).to(getattr(torch, dtype))
    for _ in range(3):
        torch.mm(a, b)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    flops = 2.0 * m * k * n
    med = statistics.median(times)
    return {
        "dtype": dtype,
        "shape": [m, k, n],
        "reps": reps,
        "median_s": med,
        "gflops": flops / med / 1e9,
        "best_gflops": flops / min(times) / 1e9,
    }


def model_flops(tokens: np.ndarray, model_args: dict) -> float:
    """Forward FLOPs of the transformer for cells of ``tokens`` tokens (matrix products only).

    Per layer and token: QKV (``2*3*d^2``), output projection (``2*d^2``), feed-forward (``2*2*d*d_hid``);
    per layer and cell: ``QK^T`` and ``AV`` (``2*2*t^2*d``). Embeddings and heads are negligible.
    """
    d, d_hid, n_layers = int(model_args["embsize"]), int(model_args["d_hid"]), int(model_args["nlayers"])
    t = tokens.astype(np.float64)
    per_token = 2 * 3 * d * d + 2 * d * d + 2 * 2 * d * d_hid
    return float(n_layers * (t * per_token).sum() + n_layers * (2 * 2 * t**2 * d).sum())


# ----------------------------------------------------------------------------- subprocesses
def run_logged(cmd: list[str], log: Path, tag: str) -> int:
    """Run ``cmd``, echoing its output prefixed with ``[tag]`` and saving it to ``log``; the exit status."""
    print(f"[{tag}] $ {' '.join(cmd)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            print(f"  [{tag}] {line.rstrip()}", flush=True)
        return proc.wait()


def peer_available(args: argparse.Namespace) -> str | None:
    """Why the official environment cannot be used, or ``None`` when it can."""
    if not Path(args.peer_python).exists():
        return f"peer python {args.peer_python} not found (build it with shared/peer/setup_peer.sh)"
    if not Path(args.peer_script).exists():
        return f"peer script {args.peer_script} not found (set SCGPT_SHARED or --peer-script)"
    return None


def peer_command(args: argparse.Namespace, mode: str, n_cells: int, model_dir: Path) -> list[str]:
    """The peer kit's command line with the settings shared by both implementations."""
    return [
        args.peer_python,
        args.peer_script,
        "--mode",
        mode,
        "--n-cells",
        str(n_cells),
        "--model-dir",
        str(model_dir),
        "--threads",
        str(args.threads),
        "--batch-size",
        str(BATCH_SIZE),
        "--max-length",
        str(MAX_LENGTH),
        "--seed",
        str(SEED),
    ]


def run_official(args: argparse.Namespace, mode: str, n_cells: int, model_dir: Path, work: Path) -> dict | None:
    """Time the official ``embed_data`` (also writes the model folder); its JSON, with the embeddings' path."""
    out_json, emb = work / f"official_{mode}.json", work / f"official_{mode}.npy"
    for p in (out_json, emb):
        p.unlink(missing_ok=True)
    cmd = peer_command(args, mode, n_cells, model_dir) + [
        "--json-out",
        str(out_json),
        "--save-emb",
        str(emb),
        "--warmup-cells",
        str(args.warmup_cells),
    ]
    rc = run_logged(cmd, work / f"official_{mode}.log", f"official {mode}")
    if rc != 0 or not out_json.exists():
        print(f"[official {mode}] failed (exit status {rc}); see {work / f'official_{mode}.log'}", flush=True)
        return None
    res = json.loads(out_json.read_text())
    res["emb_path"] = str(emb)
    return res


def ensure_model(args: argparse.Namespace, mode: str, model_dir: Path, work: Path) -> str:
    """Make sure ``model_dir`` holds the mode's model folder (when the official run did not write it); how."""
    if (model_dir / "best_model.pt").exists() and (model_dir / "vocab.json").exists():
        return "existing folder"
    if peer_available(args) is None:
        cmd = peer_command(args, mode, 1, model_dir) + ["--skip-embed", "--warmup-cells", "0"]
        if run_logged(cmd, work / f"model_{mode}.log", f"model {mode}") == 0:
            return "peer kit (official code)"
    _cells.write_whole_human_model(_cells.mode_gene_names(mode), model_dir, seed=SEED)
    return "scgpt.io.save_official (random init of this package)"


def run_ours(
    args: argparse.Namespace,
    h5ad: Path,
    model: Path,
    dtype: str,
    tag: str,
    work: Path,
    *,
    backed: bool = False,
    max_length: int = MAX_LENGTH,
    save_emb: bool = True,
    device: str = "cpu",
) -> dict | None:
    """Time ``scgpt.tl.embed`` in a fresh subprocess (``_worker.py``); its JSON, with the embeddings' path."""
    out_json = work / f"ours_{tag}.json"
    emb = work / f"ours_{tag}.npy"
    for p in (out_json, emb):
        p.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(HERE / "_worker.py"),
        "--h5ad",
        str(h5ad),
        "--model",
        str(model),
        "--dtype",
        dtype,
        "--max-length",
        str(max_length),
        "--batch-size",
        str(BATCH_SIZE),
        "--threads",
        str(args.threads),
        "--warmup-cells",
        str(args.warmup_cells),
        "--json-out",
        str(out_json),
        "--device",
        device,
    ]
    if backed:
        cmd.append("--backed")
    if save_emb:
        cmd += ["--save-emb", str(emb)]
    rc = run_logged(cmd, work / f"ours_{tag}.log", f"ours {tag}")
    if rc != 0 or not out_json.exists():
        print(f"[ours {tag}] failed (exit status {rc}); see {work / f'ours_{tag}.log'}", flush=True)
        return None
    res = json.loads(out_json.read_text())
    res["emb_path"] = str(emb) if save_emb else None
    return res


# ----------------------------------------------------------------------------- measures
def cosine_stats(a: np.ndarray, b: np.ndarray) -> dict:
    """Per-cell cosine similarity of two embedding matrices: mean, min, and the 1st percentile."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"mean": float(cos.mean()), "min": float(cos.min()), "p01": float(np.percentile(cos, 1)), "n": len(cos)}


def add_rates(run: dict, seconds: float, tokens: np.ndarray, flops: float, peak_gflops: float | None) -> None:
    """Add tokens/s, GFLOP/s and the fraction of the matmul rate to a run's summary."""
    run["tokens"] = int(tokens.sum())
    run["tokens_per_s"] = float(tokens.sum() / seconds)
    run["model_gflop"] = flops / 1e9
    run["gflops"] = flops / seconds / 1e9
    run["fraction_of_matmul"] = run["gflops"] / peak_gflops if peak_gflops else None


def bench_mode(args: argparse.Namespace, mode: str, matmul: dict, work: Path) -> dict:
    """Official and our runs on one mode's cells, with agreement and ratios."""
    n_cells = args.n_cells_real765 if mode == "real765" else args.n_cells_expanded
    model_dir = work / f"model_{mode}"
    out: dict = {"mode": mode, "n_cells": n_cells, "model_dir": str(model_dir)}
    print(f"\n=== mode {mode}: {n_cells} cells ===", flush=True)

    official = None
    why = peer_available(args)
    if args.skip_official:
        print("[official] skipped (--skip-official)", flush=True)
    elif why:
        print(f"[official] skipped: {why}", flush=True)
        out["official_skipped"] = why
    else:
        official = run_official(args, mode, n_cells, model_dir, work)
    out["model_source"] = "peer kit (official code)" if official else ensure_model(args, mode, model_dir, work)

    t0 = time.perf_counter()
    adata = _cells.build_adata(mode, n_cells, SEED)
    h5ad = work / f"cells_{mode}_{n_cells}.h5ad"
    adata.write_h5ad(h5ad)
    vocab = _cells.vocab_tokens(model_dir)
    model_args = json.loads((model_dir / "args.json").read_text())
    tokens = _cells.tokens_per_cell(adata.X, list(adata.var_names), vocab, MAX_LENGTH)
    flops = model_flops(tokens, model_args)
    out["cells"] = {
        "h5ad": str(h5ad),
        "shape": list(adata.shape),
        "build_s": time.perf_counter() - t0,
        "tokens_total": int(tokens.sum()),
        "tokens_per_cell_mean": float(tokens.mean()),
        "tokens_per_cell_pct_0_25_50_75_100": np.percentile(tokens, [0, 25, 50, 75, 100]).tolist(),
        "model_gflop_per_cell_mean": flops / n_cells / 1e9,
    }
    del adata
    print(f"[cells] {out['cells']}", flush=True)

    if official:
        # a cheap check that both sides embed the same cells (the cosine check below is the thorough one)
        same = official["data"]["shape"] == out["cells"]["shape"] and np.isclose(
            official["data"]["mean_tokens_per_cell_after_cap"], tokens.mean()
        )
        out["cells"]["same_shape_and_tokens_as_official"] = bool(same)
        if not same:
            print("WARNING: the official run's cells differ from ours (shape or tokens per cell)", flush=True)
        e = official["embed"]
        run = {
            "seconds": e["seconds"],
            "cells_per_s": e["cells_per_s"],
            "ru_maxrss_MiB": e["ru_maxrss_self_MiB"],
            "peak_rss_sampled_MiB": e["peak_rss_self_MiB_sampled"],
            "peak_rss_with_workers_MiB": e["peak_rss_self_plus_workers_MiB_sampled"],
            "versions": {k: official.get(k) for k in ("scgpt", "torch", "numpy", "scanpy", "anndata", "python")},
            "torch_threads": official.get("torch_threads"),
            "warmup": official.get("warmup"),
        }
        add_rates(run, e["seconds"], tokens, flops, matmul["float32"]["gflops"])
        out["official"] = run

    ours: dict = {}
    if not args.skip_ours:
        for dtype in args.dtypes:
            res = run_ours(args, h5ad, model_dir, dtype, f"{mode}_{dtype}", work)
            if res is None:
                continue
            e = res["embed"]
            run = {
                "seconds": e["seconds"],
                "cells_per_s": e["cells_per_s"],
                "ru_maxrss_MiB": e["ru_maxrss_MiB"],
                "peak_rss_sampled_MiB": e["peak_rss_sampled_MiB"],
                "warmup": res.get("warmup"),
                "read_s": res.get("read_s"),
                "n_genes_matched": e["n_genes_matched"],
                "tokens_reported": e["tokens"],
                "emb_path": res["emb_path"],
            }
            add_rates(run, e["seconds"], tokens, flops, matmul.get(dtype, {}).get("gflops"))
            ours[dtype] = run
    out["ours"] = ours

    agreement: dict = {}
    if official and "float32" in ours:
        agreement["ours_float32_vs_official"] = cosine_stats(
            np.load(ours["float32"]["emb_path"]), np.load(official["emb_path"])
        )
    for dtype in ours:
        if dtype != "float32" and "float32" in ours:
            agreement[f"ours_{dtype}_vs_ours_float32"] = cosine_stats(
                np.load(ours[dtype]["emb_path"]), np.load(ours["float32"]["emb_path"])
            )
    out["agreement"] = agreement

    if official:
        out["ratios"] = {
            dtype: {
                "cells_per_s_vs_official": r["cells_per_s"] / official["embed"]["cells_per_s"],
                "peak_rss_vs_official": r["ru_maxrss_MiB"] / official["embed"]["ru_maxrss_self_MiB"],
                "peak_rss_vs_official_with_workers": r["ru_maxrss_MiB"]
                / official["embed"]["peak_rss_self_plus_workers_MiB_sampled"],
            }
            for dtype, r in ours.items()
        }
    return out


def backed_gene_names(model_dir: Path, n_genes: int) -> list[str]:
    """The first ``n_genes`` non-special tokens of a model's vocabulary, in id order."""
    vocab = _cells.vocab_tokens(model_dir)
    names = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if not (t.startswith("<") and t.endswith(">"))]
    return names[:n_genes]


def bench_backed(args: argparse.Namespace, matmul: dict, work: Path) -> dict:
    """Write (or reuse) the synthetic backed ``.h5ad`` and embed it backed in a subprocess."""
    import h5py

    print(f"\n=== backed: {args.backed_cells} cells ===", flush=True)
    if args.backed_model:
        model_dir, source = Path(args.backed_model), "given"
    else:
        model_dir = work / "model_expanded"
        source = ensure_model(args, "expanded", model_dir, work)
    genes = backed_gene_names(model_dir, args.backed_genes)
    h5ad = work / f"backed_{args.backed_cells}x{len(genes)}.h5ad"
    meta_path = h5ad.with_suffix(".json")
    wanted = {
        "n_cells": args.backed_cells,
        "n_genes": len(genes),
        "first_gene": genes[0],
        "last_gene": genes[-1],
        "seed": SEED,
    }
    meta = json.loads(meta_path.read_text()) if meta_path.exists() and h5ad.exists() else None
    if meta is None or any(meta.get(k) != v for k, v in wanted.items()):
        print(f"[backed] writing {h5ad} ...", flush=True)
        meta = {**_cells.write_backed_h5ad(h5ad, genes, args.backed_cells, seed=SEED), **wanted}
        meta_path.write_text(json.dumps(meta, indent=2))
    else:
        print(f"[backed] reusing {h5ad}", flush=True)
    print(f"[backed] {meta}", flush=True)
    out: dict = {
        "model_dir": str(model_dir),
        "model_source": source,
        "file": meta,
        "max_length": args.backed_max_length,
        "dtype": args.backed_dtype,
        "device": args.backed_device,
    }
    res = run_ours(
        args,
        h5ad,
        model_dir,
        args.backed_dtype,
        "backed",
        work,
        backed=True,
        max_length=args.backed_max_length,
        save_emb=False,
        device=args.backed_device,
    )
    if res is not None:
        e = res["embed"]
        model_args = json.loads((model_dir / "args.json").read_text())
        # every gene of the file is in the model's vocabulary: a cell of k genes has min(k + 1, max_length) tokens
        with h5py.File(h5ad, "r") as f:
            tokens = np.minimum(np.diff(f["X/indptr"][:]) + 1, args.backed_max_length)
        out.update(
            {
                "seconds": e["seconds"],
                "cells_per_s": e["cells_per_s"],
                "tokens_per_s": e["tokens_per_s"],
                "mean_tokens_per_cell": e["mean_tokens_per_cell"],
                "ru_maxrss_MiB": e["ru_maxrss_MiB"],
                "peak_rss_sampled_MiB": e["peak_rss_sampled_MiB"],
                "rss_before_timed_MiB": res["rss_before_timed_MiB"],
                "gflops": model_flops(tokens, model_args) / e["seconds"] / 1e9,
                "n_genes_matched": e["n_genes_matched"],
                "finite": e["finite"],
                "embeddings_bytes": int(np.prod(e["out_shape"])) * 4,  # the float32 result, held in memory
            }
        )
        peak = matmul.get(args.backed_dtype, {}).get("gflops")
        out["fraction_of_matmul"] = out["gflops"] / peak if peak else None
    return out


# ----------------------------------------------------------------------------- report
def _f(x: float | None, fmt: str = ".2f") -> str:
    return "–" if x is None else format(x, fmt)


def _x(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}x"


def summary_markdown(results: dict) -> str:
    """The markdown tables printed at the end."""
    m = results["machine"]
    mm = results["matmul"]
    lines = [
        f"## scgpt.tl.embed vs official embed_data — {m['date']}",
        "",
        f"CPU: {m['cpu_model']} ({m['cpu_count']} logical CPUs), torch threads: {m['threads']}, "
        f"load average at start: {', '.join(f'{x:.2f}' for x in m['loadavg_start'])}; "
        f"scgpt-scverse {m['versions']['scgpt-scverse']}, torch {m['versions']['torch']}, "
        f"numpy {m['versions']['numpy']}.",
        "",
        "Matmul "
        + "x".join(map(str, MATMUL_SHAPE))
        + ": "
        + ", ".join(f"{d} {v['gflops']:.0f} GFLOP/s" for d, v in mm.items())
        + " (median).",
    ]
    if results["modes"]:
        lines += [
            "",
            "| data | cells | tokens/cell | implementation | dtype | time (s) | cells/s | tokens/s | GFLOP/s "
            "| % of matmul | peak RSS (MiB) | cells/s vs official | RSS vs official |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    for mode, r in results["modes"].items():
        c = r["cells"]
        head = f"| {mode} | {r['n_cells']} | {c['tokens_per_cell_mean']:.0f} "
        if "official" in r:
            o = r["official"]
            rss = f"{o['ru_maxrss_MiB']:.0f} ({o['peak_rss_with_workers_MiB']:.0f} with workers)"
            lines.append(
                head + f"| official 0.2.4 | float32 | {o['seconds']:.1f} | {o['cells_per_s']:.2f} "
                f"| {o['tokens_per_s']:.0f} | {o['gflops']:.0f} | {_f(100 * o['fraction_of_matmul'], '.0f')} "
                f"| {rss} | 1.00x | 1.00x |"
            )
        for dtype, o in r["ours"].items():
            ratio = r.get("ratios", {}).get(dtype, {})
            frac = o["fraction_of_matmul"]
            lines.append(
                head + f"| scgpt-scverse | {dtype} | {o['seconds']:.1f} | {o['cells_per_s']:.2f} "
                f"| {o['tokens_per_s']:.0f} | {o['gflops']:.0f} | {_f(frac and 100 * frac, '.0f')} "
                f"| {o['ru_maxrss_MiB']:.0f} | {_x(ratio.get('cells_per_s_vs_official'))} "
                f"| {_x(ratio.get('peak_rss_vs_official'))} |"
            )
    if results["modes"]:
        lines += [
            "",
            "GFLOP/s: the transformer's matrix-product FLOPs for these cells over the timed wall time; % of matmul: "
            "of the rate above in the same dtype. Peak RSS: ru_maxrss of the process (official: also with its "
            "DataLoader workers; its process also built the cells and the model). Both timed calls include reading "
            "the model folder.",
        ]
    agree = [(mode, k, v) for mode, r in results["modes"].items() for k, v in r["agreement"].items()]
    if agree:
        lines += ["", "| data | per-cell cosine | mean | min | 1st percentile |", "|---|---|---|---|---|"]
        lines += [f"| {mode} | {k} | {v['mean']:.6f} | {v['min']:.6f} | {v['p01']:.6f} |" for mode, k, v in agree]
        if any(k.endswith("_vs_official") for _, k, _ in agree):
            lines += ["", "(The official code breaks binning ties at random: expect about 0.9999 to it, not 1.)"]
    b = results.get("backed")
    if b and "cells_per_s" in b:
        f = b["file"]
        lines += [
            "",
            "| backed .h5ad | genes | file (MiB) | X in memory (MiB) | max_length | tokens/cell | dtype | time (s) "
            "| cells/s | tokens/s | GFLOP/s | % of matmul | peak RSS (MiB) | of which result (MiB) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {f['n_cells']} cells | {f['n_genes']} | {f['file_bytes'] / 2**20:.0f} "
            f"| {f['in_memory_csr_bytes'] / 2**20:.0f} | {b['max_length']} | {b['mean_tokens_per_cell']:.0f} "
            f"| {b['dtype']} | {b['seconds']:.1f} | {b['cells_per_s']:.2f} | {b['tokens_per_s']:.0f} "
            f"| {b['gflops']:.0f} | {_f(b['fraction_of_matmul'] and 100 * b['fraction_of_matmul'], '.0f')} "
            f"| {b['ru_maxrss_MiB']:.0f} | {b['embeddings_bytes'] / 2**20:.0f} |",
        ]
    for mode, r in results["modes"].items():
        if "official_skipped" in r:
            lines.append(f"\nNote ({mode}): official run skipped: {r['official_skipped']}.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": vars(args), "machine": machine_info(args.threads)}
    print(json.dumps(results["machine"]), flush=True)

    results["matmul"] = {d: matmul_gflops(d, args.threads, args.matmul_reps) for d in ("float32", "bfloat16")}
    for v in results["matmul"].values():
        print(
            f"[matmul] {v['dtype']}: {v['gflops']:.1f} GFLOP/s (median of {v['reps']}), best {v['best_gflops']:.1f}",
            flush=True,
        )

    why = peer_available(args)
    if why and not args.skip_official:
        print(f"NOTE: the official part is skipped: {why}", flush=True)

    results["modes"] = {mode: bench_mode(args, mode, results["matmul"], work) for mode in args.modes}
    if args.backed_cells > 0:
        results["backed"] = bench_backed(args, results["matmul"], work)
    results["machine"]["loadavg_end"] = list(os.getloadavg())

    out = Path(args.out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print("\n" + summary_markdown(results) + "\n", flush=True)
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
