"""Quality of parameter-efficient fine-tuning: LoRA vs full fine-tuning vs frozen layers, next to baselines.

One run, the bundled demo model (4 layers x 128; ``--model`` for other weights), real bundled cells:

- **annotation**, OneK1K PBMCs split by donor (``scgpt.datasets.onek1k()``: reference = 20 donors,
  query = the 10 ``scgpt.datasets.ONEK1K_QUERY_DONORS``; 4 cell types): ``finetune("annotation", ...)``
  with every weight trained (``full``), with LoRA adapters (``adapter="lora"``, rank 8, alpha 16, on the
  attention in/out projections and both feed-forward linears; the classifier head trained in full), and with
  the gene/value encoders and the first ``n_layers - 1`` transformer layers frozen (``freeze_layers=``); then
  ``tl.annotate`` of the query. Baseline: logistic regression on 50 principal components (log-normalised,
  scaled; scaling and PCA fitted on the reference), as ``benchmarks/annotate.py``.
  Accuracy and macro-F1 on the query (``tl.evaluate_annotation``).
- **integration**, ``scgpt.datasets.pbmc_two_sources()`` (two 10x sources, 5 coarse types):
  ``tl.integrate`` with the same three settings, next to the zero-shot embedding and the PCA and Harmony
  baselines; scib-metrics batch-correction and bio-conservation scores (``tl.benchmark_integration``;
  needs the ``eval`` extra).

Every fine-tuning runs in a fresh subprocess (``--worker``), so its peak memory is its own: peak RSS of the
process (``ru_maxrss``) and its rise during the fine-tuning (over the RSS after loading data and model), with
glibc's mmap threshold fixed at 1 MiB so that freed activations go back to the system. Time is the
fine-tuning's wall time (training, then predicting or embedding the cells, reported apart). "Trained" counts
the weights the optimiser updates; its share is of the weights of the fine-tuned model without adapters.

The budget is small on purpose, so that the whole run takes 15-20 minutes on 2 shared CPU cores (20 at load 8): 400
reference cells (stratified by type, of the 3,690 of the 20 reference donors; the baseline is fitted on the
same 400) and 500 query cells (of 2,044), 2 epochs of annotation fine-tuning (official: 10, with early
stopping); integration on 300 of the 1,202 cells with a 200-gene panel for 1 epoch (official: 1,200 genes, up
to 15 epochs). The official lr 1e-4 for full and frozen-layer fine-tuning, 1e-3 for LoRA (``--lora-lr``;
adapters start at zero and need a larger step). Read the numbers as "what a short fine-tuning of a small model
gives", not as converged results; ``--ref-cells 0 --query-cells 0 --int-cells 0 --epochs 10`` runs it in full.

    python benchmarks/finetune_quality.py                      # prints Markdown tables, writes results JSON
    python benchmarks/finetune_quality.py --tasks annotation --epochs 1   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
METHODS = ("full", "lora", "frozen")
LABELS = {"full": "full fine-tuning", "lora": "LoRA (rank 8)", "frozen": "frozen layers"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--tasks", default="annotation,integration", help="comma-separated: annotation, integration")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated: {METHODS}")
    ap.add_argument("--epochs", type=int, default=2, help="annotation epochs (official: 10)")
    ap.add_argument("--int-epochs", type=int, default=1, help="integration epochs (official: up to 15)")
    ap.add_argument("--lr", type=float, default=1e-4, help="lr of full and frozen-layer fine-tuning (official)")
    ap.add_argument("--lora-lr", type=float, default=1e-3, help="lr of LoRA fine-tuning")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank")
    ap.add_argument("--freeze-layers", type=int, default=None, help="frozen layers (default: all but the last)")
    ap.add_argument("--ref-cells", type=int, default=400, help="reference cells (stratified; 0: all 3,690)")
    ap.add_argument("--query-cells", type=int, default=500, help="query cells (stratified; 0: all 2,044)")
    ap.add_argument("--int-cells", type=int, default=300, help="integration cells (stratified; 0: all 1,202)")
    ap.add_argument("--n-top-genes", type=int, default=200, help="integration gene panel (tl.integrate: 1200)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-json", default=str(HERE / "results" / "finetune_quality.json"))
    ap.add_argument("--worker", nargs=3, metavar=("TASK", "METHOD", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for k in ("ref_cells", "query_cells", "int_cells"):
        setattr(args, k, getattr(args, k) or None)
    return args


# ----------------------------------------------------------------------------- data
def subsample(adata, n: int | None, key: str, seed: int):
    """``n`` cells of ``adata`` drawn stratified by ``obs[key]`` (all of them when ``n`` is None or larger)."""
    from sklearn.model_selection import train_test_split

    if n is None or n >= adata.n_obs:
        return adata
    keep, _ = train_test_split(np.arange(adata.n_obs), train_size=n, stratify=adata.obs[key], random_state=seed)
    return adata[np.sort(keep)].copy()


def annotation_data(args):
    """(reference, query): cells of the 20 reference donors and of the 10 query donors of the bundled OneK1K."""
    import scgpt

    a = scgpt.datasets.onek1k()
    query = a.obs["indiv"].isin(scgpt.datasets.ONEK1K_QUERY_DONORS).to_numpy()
    ref, qry = a[~query].copy(), a[query].copy()
    return subsample(ref, args.ref_cells, "cell_type", args.seed), subsample(qry, args.query_cells, "cell_type", 1)


def integration_data(args):
    import scgpt

    return subsample(scgpt.datasets.pbmc_two_sources(), args.int_cells, "source", args.seed)


def score(true, pred) -> dict:
    import anndata as ad

    import scgpt

    a = ad.AnnData(np.zeros((len(true), 1), dtype=np.float32))
    a.obs["true"], a.obs["pred"] = np.asarray(true, dtype=str), np.asarray(pred, dtype=str)
    overall = scgpt.tl.evaluate_annotation(a, labels_key="true", key="pred").loc["overall"]
    return {"accuracy": float(overall["accuracy"]), "macro_f1": float(overall["f1"])}


# ----------------------------------------------------------------------------- one fine-tuning (subprocess)
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def trained_counts(model, method: str, freeze_layers: int) -> tuple[int, int]:
    """(weights the optimiser updated, weights of the fine-tuned model without adapters)."""
    from scgpt.model._adapters import has_adapter, trained_parameters

    net = model.net
    if has_adapter(net):
        n_trained, n_all = trained_parameters(net)  # adapters and heads; n_all counts the adapter matrices too
        n_plain = model.merge_adapter().net.num_parameters()
        return n_trained, n_plain
    n_all = net.num_parameters()
    if method == "frozen":
        frozen = [net.encoder, net.value_encoder, *net.transformer_encoder.layers[:freeze_layers]]
        return n_all - sum(p.numel() for m in frozen for p in m.parameters()), n_all
    return n_all, n_all


def finetune_options(args, method: str, n_layers: int) -> dict:
    if method == "lora":
        return {"adapter": "lora", "adapter_rank": args.rank, "lr": args.lora_lr}
    if method == "frozen":
        return {"freeze_layers": n_layers - 1 if args.freeze_layers is None else args.freeze_layers, "lr": args.lr}
    return {"lr": args.lr}


def worker(args, task: str, method: str, out: Path) -> None:
    import logging

    import torch

    import scgpt
    from scgpt.model import ScGPT

    torch.set_num_threads(args.threads)
    logging.getLogger("scgpt").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    scgpt.settings.progress = False
    model = ScGPT.from_pretrained(args.model, device="cpu")
    options = finetune_options(args, method, model.config.n_layers)
    freeze = options.get("freeze_layers", 0)
    with tempfile.TemporaryDirectory() as tmp:
        options["checkpoint_dir"] = tmp
        if task == "annotation":
            ref, query = annotation_data(args)
            rss0, t0 = rss_bytes(), time.perf_counter()
            clf = model.finetune(
                "annotation", ref, labels_key="cell_type", max_epochs=args.epochs, seed=args.seed, **options
            )
            t_train, peak_train = time.perf_counter() - t0, peak_rss_bytes()
            t0 = time.perf_counter()
            scgpt.tl.annotate(query, clf, seed=args.seed)
            t_apply = time.perf_counter() - t0
            result = score(query.obs["cell_type"], query.obs["scgpt_celltype"])
            tuned = clf
        else:
            adata = integration_data(args)
            rss0, t0 = rss_bytes(), time.perf_counter()
            scgpt.tl.integrate(
                adata,
                model,
                batch_key="source",
                n_top_genes=args.n_top_genes,
                max_epochs=args.int_epochs,
                seed=args.seed,
                key_added="X",
                **options,
            )  # fmt: skip  (fine-tunes ``model`` in place, then embeds)
            t_train = time.perf_counter() - t0
            peak_train = peak_rss_bytes()
            t_apply = float("nan")  # embedding included in the time above
            np.save(out.with_suffix(".npy"), adata.obsm["X"])
            result, tuned = {}, model
    n_trained, n_plain = trained_counts(tuned, method, freeze)
    result.update(
        method=method, task=task, lr=options["lr"], freeze_layers=freeze or None, n_layers=model.config.n_layers,
        trained=int(n_trained), total=int(n_plain), share=n_trained / n_plain,
        train_s=t_train, apply_s=t_apply, peak_rss_gib=peak_train / 2**30,
        rise_gib=max(0, peak_train - rss0) / 2**30, epochs=args.epochs if task == "annotation" else args.int_epochs,
    )  # fmt: skip
    out.write_text(json.dumps(result))


def run_worker(args, task: str, method: str, tmp: Path) -> dict:
    out = tmp / f"{task}_{method}.json"
    cmd = [sys.executable, __file__, *sys.argv[1:], "--worker", task, method, str(out)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not out.exists():
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"worker {task}/{method} failed (exit {proc.returncode})")
    result = json.loads(out.read_text())
    result["process_s"] = time.perf_counter() - t0
    print(f"  {task:<11} {method:<7} done in {result['process_s']:.0f} s", flush=True)
    return result


# ----------------------------------------------------------------------------- baselines and tables
def logreg_on_pcs(args) -> dict:
    import scipy.sparse as sp
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    ref, query = annotation_data(args)
    t0 = time.perf_counter()

    def lognorm(a):
        X = sp.csr_matrix(a.X, dtype=np.float64)
        X = sp.diags(1e4 / np.maximum(np.asarray(X.sum(1)).ravel(), 1)) @ X
        return np.log1p(X.toarray())

    scaler = StandardScaler().fit(lognorm(ref))
    r, q = scaler.transform(lognorm(ref)), scaler.transform(lognorm(query))
    pca = PCA(n_components=50, random_state=args.seed).fit(r)
    clf = LogisticRegression(max_iter=5000).fit(pca.transform(r), ref.obs["cell_type"].astype(str))
    t_train = time.perf_counter() - t0
    pred = clf.predict(pca.transform(q))
    n = clf.coef_.size + clf.intercept_.size
    return {
        "method": "logreg", **score(query.obs["cell_type"], pred), "trained": int(n), "total": int(n), "share": 1.0,
        "train_s": t_train, "apply_s": float("nan"), "peak_rss_gib": float("nan"), "rise_gib": float("nan"),
    }  # fmt: skip


def integration_scores(args, embeddings: dict[str, np.ndarray]):
    import logging

    import scgpt

    logging.getLogger("scgpt").setLevel(logging.WARNING)
    adata = integration_data(args)
    scgpt.tl.integrate(adata, args.model, batch_key="source", mode="zero_shot", key_added="X_scGPT_zero_shot")
    keys = ["X_scGPT_zero_shot"]
    for method, X in embeddings.items():
        adata.obsm[f"X_scGPT_{method}"] = X
        keys.append(f"X_scGPT_{method}")
    return scgpt.tl.benchmark_integration(
        adata, batch_key="source", labels_key="cell_type", obsm_keys=keys, baselines=("pca", "harmony"),
        seed=args.seed, progress=False,
    )  # fmt: skip


def fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def annotation_table(rows: list[dict]) -> str:
    head = "| method | accuracy | macro-F1 | trained weights | share | train s | predict s | peak RSS GiB | rise GiB |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        label = LABELS.get(r["method"], "logistic regression on 50 PCs")
        if r["method"] == "frozen":
            label += f" ({r['freeze_layers']} of {r['n_layers']} layers + encoders)"
        cells = [
            f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}", fmt_count(r["trained"]), f"{100 * r['share']:.1f} %",
            f"{r['train_s']:.0f}", "-" if np.isnan(r["apply_s"]) else f"{r['apply_s']:.0f}",
            "-" if np.isnan(r["peak_rss_gib"]) else f"{r['peak_rss_gib']:.2f}",
            "-" if np.isnan(r["rise_gib"]) else f"{r['rise_gib']:.2f}",
        ]  # fmt: skip
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def integration_table(table, rows: list[dict]) -> str:
    cols = ["Batch correction", "Bio conservation", "Total", "AvgBATCH", "AvgBIO"]
    info = {f"X_scGPT_{r['method']}": r for r in rows}
    names = {"X_scGPT_zero_shot": "scGPT zero-shot", "X_pca": "PCA (unintegrated)", "X_pca_harmony": "Harmony"}
    head = "| embedding | " + " | ".join(cols) + " | trained weights | share | fine-tune + embed s | peak RSS GiB |"
    lines = [head, "|---|" + "---:|" * (len(cols) + 4)]
    for key in table.sort_values("Total", ascending=False).index:
        r = info.get(key)
        label = LABELS[r["method"]] if r else names.get(key, key)
        extra = (
            [fmt_count(r["trained"]), f"{100 * r['share']:.1f} %", f"{r['train_s']:.0f}", f"{r['peak_rss_gib']:.2f}"]
            if r else ["-"] * 4
        )  # fmt: skip
        lines.append(
            f"| {label} | " + " | ".join(f"{table.loc[key, c]:.3f}" for c in cols) + " | " + " | ".join(extra) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        task, method, out = args.worker
        worker(args, task, method, Path(out))
        return
    import torch

    torch.set_num_threads(args.threads)
    tasks, methods = args.tasks.split(","), args.methods.split(",")
    results: dict = {
        "settings": {k: v for k, v in vars(args).items() if k != "worker"},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if "annotation" in tasks:
            rows = [run_worker(args, "annotation", m, Path(tmp)) for m in methods]
            rows.append(logreg_on_pcs(args))
            results["annotation"] = rows
            print(f"\nOneK1K annotation (10 held-out donors, 4 types), {args.epochs} epochs, model {args.model}:")
            print(annotation_table(rows))
        if "integration" in tasks:
            rows = [run_worker(args, "integration", m, Path(tmp)) for m in methods]
            embeddings = {r["method"]: np.load(Path(tmp) / f"integration_{r['method']}.npy") for r in rows}
            table = integration_scores(args, embeddings)
            results["integration"] = {"runs": rows, "scores": json.loads(table.to_json(orient="index"))}
            print(f"\npbmc_two_sources integration (2 sources, 5 types), {args.int_epochs} epochs, model {args.model}:")
            print(integration_table(table, rows))
    results["total_s"] = time.perf_counter() - start
    print(f"\ntotal {results['total_s'] / 60:.1f} min")
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_json).write_text(json.dumps(results, indent=1, default=float))
    print(f"wrote {args.out_json}")


if __name__ == "__main__":
    main()
