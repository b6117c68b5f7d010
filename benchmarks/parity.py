"""Outcome parity: the official scGPT training loops and ours, from the same weights, scored side by side.

For each task, the official loop (assembled from the official ``scgpt`` 0.2.4 package's modules, run in the
peer venv of ``../shared/peer/setup_peer.sh``) and ours (``scgpt.tl`` / ``ScGPT.finetune``) fine-tune the same
weights (written once as an official folder) with the same hyperparameters and epochs, on the same genes
(ours with ``use_aliases=False``: exact names, as the official code matches them), for every seed; both
results are scored with the same metrics, next to zero-shot scGPT and the simple baselines.

- ``integration`` (``_official_integration.py`` = ``Tutorial_Integration``): the bundled two-source PBMC set
  (``scgpt.datasets.pbmc_two_sources()``; the source is the batch), restricted to the genes the official
  preprocessing keeps (exact vocabulary names with at least 3 counts), so both loops see the same genes.
  Scored with one scib-metrics table per seed (``scgpt.tl.benchmark_integration``: official, ours,
  zero-shot scGPT, unintegrated PCA and Harmony; PCA and Harmony take the seed).
- ``annotation`` (``_official_annotation.py`` = ``Tutorial_Annotation``): OneK1K, 20 reference donors, the
  10 query donors of ``scgpt.datasets.ONEK1K_QUERY_DONORS``; Ensembl ids renamed to the vocabulary's symbols
  first (so exact names match on both sides). Accuracy and macro-F1 on the query, next to zero-shot scGPT
  k-NN (``tl.annotate(method="knn")``), logistic regression and 10-NN on 50 principal components.
- ``perturbation`` (``_official_perturbation.py`` = ``Tutorial_Perturbation``): a SYNTHETIC screen
  (``scgpt.datasets.simulate_perturbations`` on CollecTRI edges whose genes are all in the model's vocabulary;
  single knock-downs, target genes held out whole: ``split_perturbations(mode="single")``, one split for all
  seeds). Pearson-delta (and the rest of ``scgpt.tl.evaluate_perturbation``) on the held-out perturbations
  next to the train-mean, no-change and linear baselines (``scgpt.tl.perturbation_baseline``).

Prints a Markdown table per task (each seed, then the mean over seeds) and the wall time of each run, and
writes ``{task}.json`` and ``{task}.md`` to ``--out``; each task's tables, settings and wall times are merged into
``--record`` (``benchmarks/parity_results.json``, committed: the docs cite it).

    python benchmarks/parity.py                                  # all three tasks, seeds 0 and 1, demo model
    # the recorded run (2 shared CPU cores, ~40 minutes for integration alone):
    python benchmarks/parity.py --tasks integration --integration-epochs 3 --n-top-genes 300
    # the published weights (downloaded by name into the cache), the tutorials' settings; a GPU recommended:
    python benchmarks/parity.py --model scGPT_human --tasks integration --integration-epochs 15 --n-top-genes 1200
    python benchmarks/parity.py --model scGPT_human --tasks annotation --annotation-epochs 10
    python benchmarks/parity.py --model scGPT_human --tasks perturbation --perturbation-epochs 15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "scripts"))

SCIB_COLS = ["Bio conservation", "Batch correction", "Total", "AvgBIO", "AvgBATCH"]
PERT_COLS = ["pearson_delta", "pearson_delta_de", "pearson_delta_pertmean", "mse_top1000"]


def markdown(frame: pd.DataFrame, first: str, digits: int = 3) -> str:
    """A Markdown table without the tabulate dependency."""
    head = f"| {first} | " + " | ".join(frame.columns) + " |"
    rule = "|---|" + "---:|" * len(frame.columns)
    rows = [
        f"| {i} | " + " | ".join("" if pd.isna(v) else f"{v:.{digits}f}" for v in row) + " |"
        for i, row in zip(frame.index, frame.to_numpy(dtype=float))
    ]
    return "\n".join([head, rule, *rows]) + "\n"


def run_official(args, script: str, *script_args: str) -> tuple[dict, float]:
    """One official loop in the peer venv; (its summary line, wall seconds)."""
    cmd = [args.peer_python, str(HERE / script), *script_args, "--threads", str(args.threads)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the peer venv's own scgpt, not ours
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"[official {script}] failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), seconds


def model_folder(args, out: Path):
    """The pretrained model, and the same weights written once as an official folder for the peer loops."""
    from scgpt.model import ScGPT

    model = ScGPT.from_pretrained(args.model)
    folder = model.save_pretrained(out / "model_official", overwrite=True)
    return model, folder


def mean_table(tables: dict[int, pd.DataFrame]) -> pd.DataFrame:
    return sum(tables.values()) / len(tables)


# ---------------------------------------------------------------------------- integration
def integration(args, out: Path) -> dict:
    import scgpt
    from scgpt.model import ScGPT

    model, folder = model_folder(args, out)
    adata = scgpt.datasets.pbmc_two_sources()
    batch_key, labels_key = "source", "cell_type"
    if args.max_cells and args.max_cells < adata.n_obs:  # a fixed random subset, the same for every seed
        adata = adata[np.sort(np.random.default_rng(0).permutation(adata.n_obs)[: args.max_cells])].copy()
    counts = np.asarray(adata.X.sum(0)).ravel()  # of the cells used: the official filter runs on those
    in_vocab = np.array([g in model.vocab for g in adata.var_names])
    keep = in_vocab & (counts >= 3)  # the official Preprocessor's filter_gene_by_counts=3
    adata = adata[:, keep].copy()
    n_genes = int(keep.sum())
    genes_used = min(n_genes, args.n_top_genes)
    if genes_used < n_genes:  # the HVGs chosen once (seurat_v3 on counts per batch, as both codes do): same genes
        import scanpy as sc

        sc.pp.highly_variable_genes(  # in place: the mask of inplace=False comes back in another order
            adata, flavor="seurat_v3", n_top_genes=genes_used, batch_key=batch_key, subset=True
        )
        adata = adata.copy()
    data = out / "two_sources.h5ad"
    adata.write_h5ad(data)
    print(
        f"integration: {adata.n_obs} cells, {n_genes} genes (of {len(keep)}: {int(in_vocab.sum())} in the vocabulary "
        f"by exact name, {n_genes} of those with >= 3 counts); {genes_used} used "
        f"({'all: fewer than ' if genes_used == n_genes else ''}{args.n_top_genes} HVGs requested); "
        f"{args.integration_epochs} epochs, batch {args.batch_size}",
        flush=True,
    )
    t0 = time.perf_counter()
    scgpt.tl.integrate(
        adata, model, batch_key=batch_key, mode="zero_shot", use_aliases=False, key_added="X_scGPT_zero_shot",
        progress=False,
    )  # fmt: skip
    seconds = {"zero_shot": time.perf_counter() - t0}
    history, tables = {}, {}
    meta = {"cells": int(adata.n_obs), "genes": n_genes, "genes_used": genes_used, "epochs": args.integration_epochs,
            "batch_size": args.batch_size, "n_top_genes": args.n_top_genes, "max_cells": args.max_cells}  # fmt: skip
    result = None
    for seed in args.seeds:  # each seed scored and recorded as soon as it is done
        npz = out / f"integration_official_s{seed}.npz"
        if args.reuse and npz.exists():
            print(f"  official seed {seed}: reusing {npz}", flush=True)
        else:
            summary, seconds[f"official_s{seed}"] = run_official(
                args, "_official_integration.py", str(folder), str(data), str(npz), "--batch-key", batch_key,
                "--epochs", str(args.integration_epochs), "--batch-size", str(args.batch_size),
                "--n-hvg", str(args.n_top_genes), "--seed", str(seed),
            )  # fmt: skip
            history[f"official_s{seed}"] = summary["history"]
            print(
                f"  official seed {seed}: {seconds[f'official_s{seed}']:.0f} s ({summary['n_genes']} genes)", flush=True
            )
        z = np.load(npz)
        assert (z["obs_names"] == np.asarray(adata.obs_names)).all(), "official embedding: cells out of order"
        adata.obsm[f"official_s{seed}"] = z["X_scGPT"].astype(np.float32)
        npz = out / f"integration_ours_s{seed}.npz"
        if args.reuse and npz.exists():
            print(f"  ours seed {seed}: reusing {npz}", flush=True)
            adata.obsm[f"ours_s{seed}"] = np.load(npz)["X_scGPT"]
        else:
            t0 = time.perf_counter()
            tuned = ScGPT.from_pretrained(args.model)  # a model object is fine-tuned in place: its history_ is kept
            res = scgpt.tl.integrate(
                adata, tuned, batch_key=batch_key, use_aliases=False, n_top_genes=args.n_top_genes,
                max_epochs=args.integration_epochs, batch_size=args.batch_size, seed=seed, key_added="X_tmp",
                copy=True, progress=False,
            )  # fmt: skip
            seconds[f"ours_s{seed}"] = time.perf_counter() - t0
            adata.obsm[f"ours_s{seed}"] = res.obsm["X_tmp"]
            np.savez(npz, X_scGPT=res.obsm["X_tmp"], obs_names=np.asarray(adata.obs_names, dtype=str))
            history[f"ours_s{seed}"] = tuned.history_
            print(
                f"  ours seed {seed}: {seconds[f'ours_s{seed}']:.0f} s ({res.uns['X_tmp']['n_genes']} genes)",
                flush=True,
            )

        scored = adata.copy()
        scored.obsm.clear()
        names = {f"official_s{seed}": "scGPT fine-tuned, official loop", f"ours_s{seed}": "scGPT fine-tuned, ours",
                 "X_scGPT_zero_shot": "scGPT zero-shot"}  # fmt: skip
        for key, name in names.items():
            scored.obsm[name] = adata.obsm[key]
        t0 = time.perf_counter()
        table = scgpt.tl.benchmark_integration(
            scored, batch_key=batch_key, labels_key=labels_key, obsm_keys=list(names.values()),
            baselines=("pca", "harmony"), seed=seed, key_added=None, progress=False,
        )  # fmt: skip
        seconds[f"scoring_s{seed}"] = time.perf_counter() - t0
        table = table.rename(index={"X_pca": "PCA (unintegrated)", "X_pca_harmony": "Harmony"})
        tables[seed] = table.loc[[*names.values(), "PCA (unintegrated)", "Harmony"]]
        result = finish("integration", args, out, tables, SCIB_COLS, seconds, history, meta)
    return result


# ---------------------------------------------------------------------------- annotation
def annotation(args, out: Path) -> dict:
    import anndata as ad
    from _corpus import onek1k_split
    from annotate import pca_features, score
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    import scgpt

    model, folder = model_folder(args, out)
    ref, query = onek1k_split()
    key = "cell_type"
    aligned = scgpt.pp.align_vocab(ref, model, copy=True)
    ids = aligned.var["id_in_vocab"].to_numpy()
    tokens = np.array(model.vocab.lookup_tokens([max(int(i), 0) for i in ids]), dtype=object)
    cols = np.flatnonzero((ids >= 0) & ~pd.Series(np.where(ids >= 0, tokens, "")).duplicated().to_numpy())

    def renamed(a):  # the vocabulary's symbols, so exact names match on both sides
        b = ad.AnnData(a.X[:, cols], obs=a.obs[[key, "indiv"]].copy())
        b.var_names = tokens[cols].astype(str)
        return b

    ref, query = renamed(ref), renamed(query)
    if args.max_cells:  # a fixed random subset of each, the same for every seed
        rng = np.random.default_rng(0)
        ref, query = (a[np.sort(rng.permutation(a.n_obs)[: args.max_cells])].copy() for a in (ref, query))
    ref.write_h5ad(out / "onek1k_reference.h5ad")
    query.write_h5ad(out / "onek1k_query.h5ad")
    y_ref, y_query = ref.obs[key].astype(str).to_numpy(), query.obs[key].astype(str).to_numpy()
    print(
        f"annotation: {ref.n_obs} reference / {query.n_obs} query cells, {len(cols)} genes (OneK1K Ensembl ids as "
        f"vocabulary symbols), {len(set(y_ref))} cell types; {args.annotation_epochs} epochs, batch 32",
        flush=True,
    )
    seconds, history, tables = {}, {}, {}
    for seed in args.seeds:
        rows = {}
        summary, seconds[f"official_s{seed}"] = run_official(
            args, "_official_annotation.py", str(folder), str(out / "onek1k_reference.h5ad"),
            str(out / "onek1k_query.h5ad"), str(out / f"annotation_official_s{seed}.npz"), "--labels-key", key,
            "--epochs", str(args.annotation_epochs), "--seed", str(seed),
        )  # fmt: skip
        z = np.load(out / f"annotation_official_s{seed}.npz")
        assert len(z["pred"]) == query.n_obs
        rows["scGPT fine-tuned, official loop"] = score(y_query, z["pred"])
        history[f"official_s{seed}"] = summary["history"]
        t0 = time.perf_counter()
        q = query.copy()
        scgpt.tl.annotate(
            q, args.model, reference=ref, labels_key=key, method="finetune", max_epochs=args.annotation_epochs,
            seed=seed, use_aliases=False, progress=False,
        )  # fmt: skip
        seconds[f"ours_s{seed}"] = time.perf_counter() - t0
        rows["scGPT fine-tuned, ours"] = score(y_query, q.obs["scgpt_celltype"])
        q = query.copy()
        t0 = time.perf_counter()
        scgpt.tl.annotate(
            q, model, reference=ref, labels_key=key, method="knn", seed=seed, use_aliases=False, progress=False
        )
        seconds[f"zero_shot_s{seed}"] = time.perf_counter() - t0
        rows["scGPT zero-shot k-NN"] = score(y_query, q.obs["scgpt_celltype"])
        f_ref, f_query = pca_features(ref, query)
        rows["logistic regression on 50 PCs"] = score(
            y_query, LogisticRegression(max_iter=5000, random_state=seed).fit(f_ref, y_ref).predict(f_query)
        )
        knn = KNeighborsClassifier(n_neighbors=10).fit(f_ref, y_ref)
        rows["10-NN on 50 PCs"] = score(y_query, knn.predict(f_query))
        rows["majority class"] = score(y_query, np.full(len(y_query), pd.Series(y_ref).value_counts().index[0]))
        tables[seed] = pd.DataFrame(rows).T.rename(columns={"accuracy": "accuracy", "macro_f1": "macro-F1"})
        print(
            f"  seed {seed}: official {seconds[f'official_s{seed}']:.0f} s, ours {seconds[f'ours_s{seed}']:.0f} s",
            flush=True,
        )
    return finish(
        "annotation", args, out, tables, ["accuracy", "macro-F1"], seconds, history,
        {"reference_cells": int(ref.n_obs), "query_cells": int(query.n_obs), "genes": int(len(cols)),
         "epochs": args.annotation_epochs, "batch_size": 32, "max_cells": args.max_cells},
    )  # fmt: skip


# ---------------------------------------------------------------------------- perturbation
def perturbation(args, out: Path) -> dict:
    import anndata as ad

    import scgpt
    from scgpt.data import split_perturbations

    model, folder = model_folder(args, out)
    net = scgpt.datasets.collectri()
    net = net[net["source"].isin(model.vocab.itos) & net["target"].isin(model.vocab.itos)]
    sim = scgpt.datasets.simulate_perturbations(
        n_genes=200, singles=args.singles, doubles=0, n_control_cells=300, network=net, seed=0
    )
    assert all(g in model.vocab for g in sim.var_names), "every simulated gene must be in the vocabulary"
    split = split_perturbations(sim.obs["perturbation"], mode="single", test_size=0.25, val_size=0.15, seed=0)
    sim.write_h5ad(out / "screen.h5ad")
    (out / "split.json").write_text(json.dumps({"train": split.train, "val": split.val, "test": split.test}))
    genes = list(sim.var_names)
    print(
        f"perturbation: SYNTHETIC screen, {sim.n_obs} cells x {sim.n_vars} genes (all in the vocabulary), "
        f"{len(split.train)} training / {len(split.val)} validation / {len(split.test)} test target genes "
        f"(test: {', '.join(split.test)}); {args.perturbation_epochs} epochs, batch 64, lr 1e-4",
        flush=True,
    )
    seconds, history, tables = {}, {}, {}
    for seed in args.seeds:
        preds = {}
        summary, seconds[f"official_s{seed}"] = run_official(
            args, "_official_perturbation.py", str(folder), str(out / "screen.h5ad"), str(out / "split.json"),
            str(out / f"perturbation_official_s{seed}.npz"), "--epochs", str(args.perturbation_epochs),
            "--seed", str(seed), "--pool-size", str(args.pool_size),
        )  # fmt: skip
        z = np.load(out / f"perturbation_official_s{seed}.npz")
        official = ad.AnnData(z["pred"].astype(np.float32))
        official.obs_names, official.var_names = z["perturbations"].astype(str), z["genes"].astype(str)
        preds["scGPT fine-tuned, official loop"] = official
        history[f"official_s{seed}"] = summary["history"]
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tuned = model.finetune(
                "perturbation", sim, train_perturbations=split.train, val_perturbations=split.val,
                max_epochs=args.perturbation_epochs, batch_size=64, seed=seed, use_aliases=False, progress=False,
            )  # fmt: skip
            preds["scGPT fine-tuned, ours"] = scgpt.tl.predict_perturbation(
                sim, tuned, split.test, n_control_cells=args.pool_size, seed=seed, use_aliases=False
            )
        seconds[f"ours_s{seed}"] = time.perf_counter() - t0
        history[f"ours_s{seed}"] = tuned.history_
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for method in ("train_mean", "no_change", "linear"):
                preds[method] = scgpt.tl.perturbation_baseline(sim, split.test, method=method, train=split.train)
            table = scgpt.tl.evaluate_perturbation(sim, preds, genes=genes)
        tables[seed] = table[table["perturbation"] == "mean"].set_index("method")[PERT_COLS].loc[list(preds)]
        tables[seed].index.name = None
        print(
            f"  seed {seed}: official {seconds[f'official_s{seed}']:.0f} s, ours {seconds[f'ours_s{seed}']:.0f} s",
            flush=True,
        )
    return finish(
        "perturbation", args, out, tables, PERT_COLS, seconds, history,
        {"cells": int(sim.n_obs), "genes": int(sim.n_vars), "train": split.train, "val": split.val,
         "test": split.test, "epochs": args.perturbation_epochs, "batch_size": 64, "pool_size": args.pool_size},
    )  # fmt: skip


# ---------------------------------------------------------------------------- output
def finish(task, args, out, tables, cols, seconds, history, meta) -> dict:
    md = []
    for seed, table in tables.items():
        md.append(f"seed {seed}\n\n" + markdown(table[cols], "embedding" if task == "integration" else "method"))
    mean = mean_table({s: t[cols] for s, t in tables.items()})
    md.append(f"mean over seeds {', '.join(map(str, tables))}\n\n" + markdown(mean, "mean"))
    text = "\n".join(md)
    print(f"\n## {task}\n\n{text}", flush=True)
    print("wall seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()), flush=True)
    (out / f"{task}.md").write_text(text)
    result = {
        "task": task,
        "model": str(args.model),
        "seeds": list(tables),
        "threads": args.threads,
        **meta,
        "tables": {str(s): t[cols].round(4).to_dict(orient="index") for s, t in tables.items()},
        "mean": mean.round(4).to_dict(orient="index"),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "history": history,
        "load_average": os.getloadavg(),
    }
    (out / f"{task}.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    if args.record:
        record_result(Path(args.record), result)
    return result


def record_result(path: Path, result: dict) -> None:
    """Merge one task's result into the committed record (``benchmarks/parity_results.json``) that the docs cite."""
    record = json.loads(path.read_text()) if path.exists() else {}
    record[result["task"]] = {k: v for k, v in result.items() if k != "history"}  # histories stay in --out
    path.write_text(json.dumps(record, indent=1, default=float, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="integration,annotation,perturbation")
    p.add_argument("--model", default="demo", help="'demo' or a model folder (e.g. scGPT_human)")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--integration-epochs", type=int, default=5)
    p.add_argument("--n-top-genes", type=int, default=1200, help="integration HVGs (all genes when fewer)")
    p.add_argument("--batch-size", type=int, default=64, help="integration minibatch")
    p.add_argument("--annotation-epochs", type=int, default=3)
    p.add_argument("--perturbation-epochs", type=int, default=5)
    p.add_argument("--singles", type=int, default=30, help="single knock-downs in the simulated screen")
    p.add_argument("--pool-size", type=int, default=300, help="perturbation: control cells per prediction")
    p.add_argument(
        "--max-cells", type=int, default=0, help="cells (integration), reference and query cells (annotation); 0: all"
    )
    p.add_argument(
        "--reuse", action="store_true", help="integration: reuse embeddings already in --out (a run cut short)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peer-python", default=os.path.expanduser("~/.venvs/scgpt-peer/bin/python"))
    p.add_argument("--out", default=str(HERE / "results" / "parity"))
    p.add_argument(
        "--record", default=str(HERE / "parity_results.json"), help="JSON the tables are merged into ('' for none)"
    )
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if not Path(args.peer_python).exists():
        raise SystemExit(f"{args.peer_python} not found: build the peer venv with bash ../shared/peer/setup_peer.sh")
    import torch

    import scgpt

    torch.set_num_threads(args.threads)
    scgpt.settings.progress = False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for task in args.tasks.split(","):
        t = time.perf_counter()
        {"integration": integration, "annotation": annotation, "perturbation": perturbation}[task](args, out)
        print(f"{task}: {time.perf_counter() - t:.0f} s wall", flush=True)
    print(f"total: {time.perf_counter() - t0:.0f} s wall", flush=True)


if __name__ == "__main__":
    main()
