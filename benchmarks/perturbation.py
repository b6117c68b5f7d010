"""Perturbation prediction with the demo model next to the baselines that matter, all in one run.

1. Papalexi 2021 (real THP-1 CRISPR knockout screen, ``scgpt.datasets.papalexi2021``): seeded splits that hold
   out whole target genes (``split_perturbations(mode="single")``); the demo model fine-tuned on the training
   targets (``model.finetune("perturbation")``, best epoch by validation Pearson-delta), then the held-out
   targets predicted and scored next to no-change, train-mean and the linear model of Ahlmann-Eltze et al.
   (PCA gene embeddings, and scGPT's gene embeddings).
2. A SYNTHETIC screen of single and double knock-downs on real CollecTRI edges
   (``scgpt.datasets.simulate_perturbations``), split so that held-out combinations have 0, 1 or 2 genes seen
   (``mode="combo"``); additive baseline added.

Prints per split the mean of each metric over the held-out perturbations, and writes JSON and a markdown table.

    python benchmarks/perturbation.py --seeds 0,1,2 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import scgpt
from scgpt.data import split_perturbations
from scgpt.model import ScGPT

METRICS = ["pearson_delta", "pearson_delta_pertmean", "pearson_delta_de", "mse_top1000", "direction_de"]


def subsample(adata, split, *, per: int, n_control: int, seed: int):
    """Training cells: every validation cell, ``per`` cells per training perturbation, ``n_control`` controls."""
    rng = np.random.default_rng(seed)
    keep = []
    for label, rows in adata.obs.groupby("perturbation", observed=True).indices.items():
        if label == "control":
            keep.extend(rng.choice(rows, min(n_control, len(rows)), replace=False))
        elif label in split.val:
            keep.extend(rows)
        elif label in split.train:
            keep.extend(rng.choice(rows, min(per, len(rows)), replace=False))
    return adata[np.sort(keep)].copy()


def run_split(
    adata, split, demo, args, *, seed: int, baselines: list[str], genes: list[str], epochs: int | None = None
) -> dict:
    train_ad = subsample(adata, split, per=args.per, n_control=args.n_control, seed=seed)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuned = demo.finetune(
            "perturbation", train_ad, train_perturbations=split.train, val_perturbations=split.val,
            max_epochs=epochs or args.epochs, lr=args.lr, batch_size=64, seed=seed, max_length=args.max_length,
        )  # fmt: skip
    finetune_s = time.perf_counter() - t
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        preds = {"scGPT (fine-tuned demo)": scgpt.tl.predict_perturbation(adata, tuned, split.test, seed=0)}
    collapsed = any("nearly identical" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in baselines:
            preds[m] = scgpt.tl.perturbation_baseline(adata, split.test, method=m, train=split.train)
        preds["linear (scGPT gene embeddings)"] = scgpt.tl.perturbation_baseline(
            adata, split.test, method="linear", train=split.train, gene_embeddings=demo.get_gene_embeddings()
        )
        table = scgpt.tl.evaluate_perturbation(adata, preds, genes=genes)
    mean = table[table["perturbation"] == "mean"].set_index("method")[METRICS]
    return {
        "seed": seed, "train": list(split.train), "val": list(split.val), "test": list(split.test),
        "finetune_s": round(finetune_s, 1), "collapse_warning": collapsed,
        "best_val_pearson_delta": tuned.registry_["perturbation"].get("best_val_pearson_delta"),
        "mean": mean.round(4).to_dict(orient="index"),
        "per_perturbation": table[table["perturbation"] != "mean"][["method", "perturbation", *METRICS]]
        .round(4).to_dict("records"),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--per", type=int, default=100, help="cells per training perturbation")
    p.add_argument("--n-control", type=int, default=500, help="control cells in the fine-tuning data")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--sim-epochs", type=int, default=10, help="epochs on the (small) simulated screen")
    p.add_argument("--skip-simulated", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/perturbation")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    scgpt.settings.progress = False
    demo = ScGPT.from_pretrained("demo", device="cpu")
    results: dict = {"args": vars(args), "load_average_start": os.getloadavg()}

    screen = scgpt.datasets.papalexi2021()
    outside = [t for t in set(screen.obs["perturbation"]) - {"control"} if t not in demo.vocab and t != "MARCH8"]
    screen = screen[~screen.obs["perturbation"].isin(outside)].copy()
    screen.obs["perturbation"] = screen.obs["perturbation"].astype(str)
    genes = [g for g in screen.var_names if g in demo.vocab]
    results["papalexi_dropped_targets"] = sorted(outside)
    results["papalexi"] = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        split = split_perturbations(screen.obs["perturbation"], mode="single", test_size=0.2, val_size=0.15, seed=seed)
        baselines = ["no_change", "train_mean", "linear"]
        r = run_split(screen, split, demo, args, seed=seed, baselines=baselines, genes=genes)
        results["papalexi"].append(r)
        print(f"Papalexi seed {seed}: test {r['test']}, fine-tune {r['finetune_s']} s")
        print(pd.DataFrame(r["mean"]).T.round(3).to_string(), flush=True)

    if not args.skip_simulated:
        net = scgpt.datasets.collectri()
        net = net[net["source"].isin(demo.vocab.itos) & net["target"].isin(demo.vocab.itos)]
        sim = scgpt.datasets.simulate_perturbations(n_genes=200, singles=12, doubles=10, network=net, seed=0)
        split = split_perturbations(sim.obs["perturbation"], mode="combo", test_size=0.25, val_size=0.1, seed=0)
        r = run_split(
            sim, split, demo, args, seed=0, baselines=["no_change", "train_mean", "additive", "linear"],
            genes=list(sim.var_names), epochs=args.sim_epochs,
        )  # fmt: skip
        r["subgroup"] = {str(k): str(v) for k, v in dict(split.subgroup).items()}
        per = pd.DataFrame(r["per_perturbation"])
        per["subgroup"] = per["perturbation"].map(r["subgroup"])
        by_group = per.groupby(["subgroup", "method"], sort=False)[METRICS].mean().round(4)
        r["by_subgroup"] = {f"{g} | {m}": v for (g, m), v in by_group.to_dict(orient="index").items()}
        results["simulated"] = r
        print(f"SYNTHETIC doubles: test {r['test']}, fine-tune {r['finetune_s']} s")
        print(pd.DataFrame(r["mean"]).T.round(3).to_string(), flush=True)
        print(by_group[["pearson_delta", "pearson_delta_pertmean"]].round(3).to_string(), flush=True)

    results["load_average_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(results, indent=1, default=float))
    print("written", args.out + ".json")


if __name__ == "__main__":
    main()
