"""Cell-type annotation benchmark: scGPT fine-tuning and zero-shot k-NN vs PCA baselines, same run.

Datasets (real cells, offline; splits fixed in ``scripts/_corpus.py``, never seen in pretraining):

- OneK1K PBMCs: reference = 20 donors, query = the other 10 donors (4 cell types);
- pbmc68k_reduced counts: stratified 70/30 split (10 cell types).

Methods:

- ``scgpt finetune``: :func:`scgpt.tl.annotate` with ``method="finetune"`` from the model (official
  annotation recipe: CLS loss, lr 1e-4, batch 32, up to 10 epochs, early stopping on a 10 % validation split),
  and the same with lr 1e-3 and up to 30 epochs (the official lr is for the 51M-parameter published models);
- ``scgpt knn``: zero-shot embeddings, 10-NN cosine majority vote (official reference mapping);
- ``logreg on PCs``: logistic regression on 50 principal components of log-normalised, scaled data
  (PCA fitted on the reference);
- ``knn on PCs``: 10-NN majority vote on the same components.

    python benchmarks/annotate.py --model demo            # prints a table, writes benchmarks/results/annotate.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))


def datasets():
    """name -> (reference, query, labels_key)."""
    from _corpus import onek1k_split, pbmc68k_split

    ref, query = onek1k_split()
    yield "OneK1K (10 held-out donors)", ref, query, "cell_type"
    ref, query = pbmc68k_split()
    yield "pbmc68k (stratified 30 %)", ref, query, "bulk_labels"


def pca_features(ref, query, n_comps: int = 50):
    """Log-normalised, reference-scaled, reference-PCA features of both sets."""
    import scipy.sparse as sp
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    def lognorm(a):
        X = sp.csr_matrix(a.X, dtype=np.float64)
        X = sp.diags(1e4 / np.maximum(np.asarray(X.sum(1)).ravel(), 1)) @ X
        return np.log1p(X.toarray())

    scaler = StandardScaler().fit(lognorm(ref))
    r, q = scaler.transform(lognorm(ref)), scaler.transform(lognorm(query))
    pca = PCA(n_components=min(n_comps, r.shape[1] - 1), random_state=0).fit(r)
    return pca.transform(r), pca.transform(q)


def score(true, pred) -> dict:
    import anndata as ad

    import scgpt

    a = ad.AnnData(np.zeros((len(true), 1), dtype=np.float32))
    a.obs["true"], a.obs["pred"] = np.asarray(true, dtype=str), np.asarray(pred, dtype=str)
    overall = scgpt.tl.evaluate_annotation(a, labels_key="true", key="pred").loc["overall"]
    return {"accuracy": float(overall["accuracy"]), "macro_f1": float(overall["f1"])}


def run(args) -> dict:
    import logging

    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    import scgpt
    from scgpt.model import ScGPT

    logging.getLogger("scgpt").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    model = ScGPT.from_pretrained(args.model)
    results = {"model": str(args.model), "model_repr": repr(model), "datasets": {}}
    for name, ref, query, key in datasets():
        y_ref, y_query = ref.obs[key].astype(str).to_numpy(), query.obs[key].astype(str).to_numpy()
        rows = {"majority class": score(y_query, np.full(len(y_query), pd.Series(y_ref).value_counts().index[0]))}
        timings = {}
        settings = [("scgpt finetune (official recipe)", args.lr, args.max_epochs)]
        if args.tuned_lr:
            settings.append((f"scgpt finetune (lr {args.tuned_lr:g}, {args.tuned_epochs} epochs)", args.tuned_lr,
                             args.tuned_epochs))  # fmt: skip
        for label, lr_, epochs in settings:
            t = time.perf_counter()
            q = query.copy()
            scgpt.tl.annotate(
                q, model, reference=ref, labels_key=key, method="finetune", max_epochs=epochs, lr=lr_,
                batch_size=32, seed=args.seed, progress=False,
            )  # fmt: skip
            rows[label], timings[label] = score(y_query, q.obs["scgpt_celltype"]), time.perf_counter() - t
        t = time.perf_counter()
        q = query.copy()
        scgpt.tl.annotate(q, model, reference=ref, labels_key=key, method="knn", seed=args.seed, progress=False)
        rows["scgpt knn (zero-shot)"], timings["scgpt knn (zero-shot)"] = (
            score(y_query, q.obs["scgpt_celltype"]),
            time.perf_counter() - t,
        )
        t = time.perf_counter()
        f_ref, f_query = pca_features(ref, query)
        lr = LogisticRegression(max_iter=5000).fit(f_ref, y_ref)
        rows["logreg on 50 PCs"], timings["logreg on 50 PCs"] = (
            score(y_query, lr.predict(f_query)),
            time.perf_counter() - t,
        )
        knn = KNeighborsClassifier(n_neighbors=10).fit(f_ref, y_ref)
        rows["knn on 50 PCs"] = score(y_query, knn.predict(f_query))
        results["datasets"][name] = {
            "reference_cells": int(ref.n_obs),
            "query_cells": int(query.n_obs),
            "cell_types": int(len(set(y_ref))),
            "scores": rows,
            "seconds": timings,
        }
        print(f"\n{name}: {ref.n_obs} reference / {query.n_obs} query cells, {len(set(y_ref))} cell types", flush=True)
        print("| method | accuracy | macro-F1 | time (s) |\n|---|---|---|---|")
        for method, s in rows.items():
            tt = timings.get(method)
            print(f"| {method} | {s['accuracy']:.3f} | {s['macro_f1']:.3f} | {'' if tt is None else f'{tt:.0f}'} |")
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="model folder or 'demo'")
    p.add_argument("--max-epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tuned-lr", type=float, default=1e-3, help="also fine-tune with this lr (0: skip)")
    p.add_argument("--tuned-epochs", type=int, default=30)
    p.add_argument("--json-out", default=str(HERE / "results" / "annotate.json"))
    args = p.parse_args()
    results = run(args)
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json_out}")


if __name__ == "__main__":
    main()
