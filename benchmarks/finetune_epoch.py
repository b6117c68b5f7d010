"""Integration fine-tuning on the bundled two-source PBMC set: scgpt vs the official loop, same weights, same run.

The bundled demo model is written as an official folder; then, one after the other with the same threads:

- ours: ``scgpt.tl.integrate(adata, model, batch_key="source", max_epochs=E)`` (the registry's integration
  task: 10 % held out, the best epoch kept, every cell embedded at the end);
- official: ``benchmarks/_official_integration.py`` in the peer venv (``../shared/peer/setup_peer.sh``), the
  ``Tutorial_Integration`` loop assembled from the official package's modules, from the same folder.

Prints the wall time of each (preprocessing, E epochs with validation, the final embedding) and the official
loop's training seconds per epoch; writes both embeddings to ``--out`` (``ours.npz``, ``official.npz``) so that
they can be scored side by side (``benchmarks/integration.py`` scores ours with scib-metrics).

    python benchmarks/finetune_epoch.py --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer-python", default=os.path.expanduser("~/.venvs/scgpt-peer/bin/python"))
    p.add_argument("--orders", default="interleaved", help="ours: 'interleaved' (the package) and/or 'sequential'")
    p.add_argument("--skip-official", action="store_true")
    p.add_argument("--out", default=str(HERE / "results" / "finetune_epoch"))
    args = p.parse_args()
    import torch

    import scgpt

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = scgpt.model.ScGPT.from_pretrained("demo")
    folder = model.save_pretrained(out / "demo_official", overwrite=True)
    adata = scgpt.datasets.pbmc_two_sources()
    data = out / "pbmc_two_sources.h5ad"
    adata.write_h5ad(data)

    rows = {}
    if args.skip_official:
        pass
    elif Path(args.peer_python).exists():
        t0 = time.perf_counter()
        cmd = [
            args.peer_python,
            str(HERE / "_official_integration.py"),
            str(folder),
            str(data),
            str(out / "official.npz"),
            "--epochs",
            str(args.epochs),
            "--threads",
            str(args.threads),
            "--seed",
            str(args.seed),
        ]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the peer venv's own scgpt, not ours
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            print(f"[official] failed:\n{proc.stderr[-3000:]}", flush=True)
        else:
            summary = json.loads(proc.stdout.strip().splitlines()[-1])
            rows["official"] = {"seconds": time.perf_counter() - t0, **summary}
            print("official", json.dumps(rows["official"]), flush=True)
    else:
        print(f"[official] {args.peer_python} not found: official side skipped", flush=True)

    import scgpt.data._loader as loader

    interleaved = loader.group_batches
    for order in args.orders.split(","):
        name = "ours" if order == "interleaved" else f"ours_{order}"
        if order == "sequential":  # the official sampler: every minibatch of batch 0, then of batch 1, ...
            loader.group_batches = lambda o, g, b, *, drop_last, seed: [
                cells[i * b : (i + 1) * b]
                for grp in np.unique(g[o])
                for cells in [o[g[o] == grp]]
                for i in range(len(cells) // b if drop_last else -(-len(cells) // b))
            ]
        t0 = time.perf_counter()
        try:
            tuned = scgpt.model.ScGPT.from_pretrained("demo")  # fine-tuned in place below: a fresh copy per order
            res = scgpt.tl.integrate(
                adata,
                tuned,
                batch_key="source",
                max_epochs=args.epochs,
                seed=args.seed,
                copy=True,
                progress=False,
            )
        finally:
            loader.group_batches = interleaved
        rows[name] = {"seconds": time.perf_counter() - t0, "history": tuned.history_, "n_cells": int(adata.n_obs)}
        np.savez(out / f"{name}.npz", X_scGPT=res.obsm["X_scGPT"], obs_names=np.asarray(res.obs_names, dtype=str))
        print(name, json.dumps(rows[name]), flush=True)
    if "official" in rows and "ours" in rows:
        print(
            f"\nwall time, {args.epochs} epoch(s) + embedding: official {rows['official']['seconds']:.1f} s, "
            f"ours {rows['ours']['seconds']:.1f} s (ratio {rows['official']['seconds'] / rows['ours']['seconds']:.2f})"
        )
    from sklearn.metrics import silhouette_score

    print("\n| embedding | cell-type ASW (higher: types apart) | batch ASW (1 - abs, higher: mixed) |\n|---|---:|---:|")
    for name in rows:
        z = np.load(out / f"{name}.npz")
        emb = z["X_scGPT"]
        lab = adata.obs["cell_type"].astype(str).to_numpy()
        bat = adata.obs["source"].astype(str).to_numpy()
        rows[name]["asw_cell_type"] = float((silhouette_score(emb, lab, metric="cosine") + 1) / 2)
        rows[name]["asw_batch"] = float(1 - abs(silhouette_score(emb, bat, metric="cosine")))
        print(f"| {name} | {rows[name]['asw_cell_type']:.3f} | {rows[name]['asw_batch']:.3f} |")
    (out / "summary.json").write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
