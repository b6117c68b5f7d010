"""One timed ``scgpt.tl.embed`` run, in its own process (started by ``benchmarks/embed.py``).

A fresh process per configuration makes the peak RSS that configuration's own: it is read from
``getrusage(RUSAGE_SELF).ru_maxrss`` at the end and, during the timed call, by a sampling thread
(as the peer kit's ``RssSampler``). The cells are read from an ``.h5ad`` (in memory, or backed with
``--backed``); an untimed warm-up on the first ``--warmup-cells`` cells precedes the timed call.
The model cache of ``scgpt.tl`` is cleared before the timed call so that, like the official
``embed_data``, the timed call includes reading the model folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default): psutil when installed, else ``/proc``."""
    try:
        import psutil
    except ImportError:
        page = os.sysconf("SC_PAGE_SIZE")
        with open(f"/proc/{pid or 'self'}/statm") as f:
            return int(f.read().split()[1]) * page
    return psutil.Process(pid).memory_info().rss


def ru_maxrss_mib() -> float:
    """Peak RSS of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class RssSampler:
    """Samples this process's RSS every ``interval`` seconds while in a ``with`` block (peak in ``peak``)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_bytes())
            except OSError:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--h5ad", required=True, help="cells to embed")
    ap.add_argument("--backed", action="store_true", help="open the .h5ad backed (read-only) instead of in memory")
    ap.add_argument("--model", required=True, help="official model folder")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-length", type=int, default=1200)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup-cells", type=int, default=64)
    ap.add_argument("--json-out", required=True)
    ap.add_argument("--save-emb", default=None, help="write the embeddings (.npy)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    import anndata as ad

    import scgpt
    from scgpt.model import _resolve

    logging.getLogger("scgpt").setLevel(logging.WARNING)  # no "computing ... finished" lines
    warnings.filterwarnings("ignore", message="The expression values do not look like raw counts")
    kw = {
        "gene_key": "gene_name",
        "use_aliases": False,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "device": args.device,
        "dtype": args.dtype,
        "progress": False,
    }
    info: dict = {"threads": torch.get_num_threads(), "args": vars(args), "rss_start_MiB": rss_bytes() / 2**20}

    t0 = time.perf_counter()
    adata = ad.read_h5ad(args.h5ad, backed="r" if args.backed else None)
    info["read_s"] = time.perf_counter() - t0
    info["rss_after_read_MiB"] = rss_bytes() / 2**20

    if args.warmup_cells:
        t0 = time.perf_counter()
        warm = adata[: args.warmup_cells]
        warm = warm.to_memory() if args.backed else warm.copy()
        scgpt.tl.embed(warm, args.model, **kw)
        info["warmup"] = {"cells": warm.n_obs, "s": time.perf_counter() - t0}
        del warm
    _resolve.clear_cache()  # the timed call reads the model folder, as the official embed_data does

    info["rss_before_timed_MiB"] = rss_bytes() / 2**20
    with RssSampler() as mon:
        t0 = time.perf_counter()
        scgpt.tl.embed(adata, args.model, **kw)
        dt = time.perf_counter() - t0
    emb = np.asarray(adata.obsm["X_scGPT"])
    n_tokens = adata.uns["X_scGPT"]["mean_tokens_per_cell"] * adata.n_obs
    if args.save_emb:
        np.save(args.save_emb, emb)
    info["embed"] = {
        "cells": int(adata.n_obs),
        "seconds": dt,
        "cells_per_s": adata.n_obs / dt,
        "tokens": float(n_tokens),
        "tokens_per_s": n_tokens / dt,
        "mean_tokens_per_cell": adata.uns["X_scGPT"]["mean_tokens_per_cell"],
        "n_genes_matched": int(adata.uns["X_scGPT"]["n_genes_matched"]),
        "n_genes": int(adata.n_vars),
        "out_shape": list(emb.shape),
        "finite": bool(np.isfinite(emb).all()),
        "peak_rss_sampled_MiB": mon.peak / 2**20,
        "ru_maxrss_MiB": ru_maxrss_mib(),
    }
    Path(args.json_out).write_text(json.dumps(info, indent=2, default=str))
    e = info["embed"]
    print(
        f"RESULT ours dtype={args.dtype} cells={e['cells']} time={dt:.1f}s cells/s={e['cells_per_s']:.2f} "
        f"tokens/s={e['tokens_per_s']:.0f} peakRSS={e['ru_maxrss_MiB']:.0f}MiB "
        f"(sampled during embed {e['peak_rss_sampled_MiB']:.0f}MiB)",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
