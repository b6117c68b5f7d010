"""Another species through ortholog mapping: coverage report and zero-shot annotation next to baselines, same run.

No real mouse scRNA-seq set with cell types ships inside a PyPI package (checked: scanpy, scvelo, cellrank,
squidpy, moscot, palantir, celltypist, cytotrace2-py; the only mouse matrix found, ``scFates/datasets/test.h5ad``,
has 20 genes and clusters, not cell types). So the cells are **real human cells written as mouse genes**
(the round-trip set): OneK1K PBMCs (``scgpt.datasets.onek1k``; 4 cell types, reference = 20 donors, query =
the 10 held-out donors of the annotation benchmark), each human gene renamed to a mouse ortholog from the
bundled Ensembl 105 table: its one-to-one ortholog where it has one, else one of its mouse orthologs (a
name used once), else a name no table knows. Reading them with ``organism="mouse"`` must give back the human
genes the mapping allows, and no more.

Methods (10-NN cosine majority vote for the k-NN rows, as ``scgpt.tl.annotate(method="knn")``):

- ``scgpt knn, human genes``: the cells as they are (every gene the model knows): the ceiling;
- ``scgpt knn, mouse genes, organism="mouse"``: the renamed cells, ``orthologs="one2one"`` and ``"all"``;
- ``knn on 50 PCs, mouse genes``: log-normalised, scaled, PCA fitted on the reference;
- ``logreg, mouse genes``: logistic regression on all the log-normalised, scaled mouse genes (no model).

    python benchmarks/species.py --model demo                  # every cell (slow on a CPU)
    python benchmarks/species.py --model demo --cells 1500     # 1,500 reference and 1,500 query cells (seeded)
    python benchmarks/species.py --cells 1500 --figure docs/_static/species_coverage.png   # the docs' figure

It prints the coverage reports and the table and writes ``benchmarks/results/species.json``.
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
sys.path.insert(0, str(HERE))
from annotate import pca_features, score  # noqa: E402  (the same baselines and metrics as the annotation benchmark)


def as_mouse(human):
    """The cells with each human gene renamed to a mouse ortholog (1:1 first), else to a name no table knows."""
    from scgpt.data import GeneVocab, match_genes, ortholog_table
    from scgpt.data._genes import _to_vocab

    vocab = GeneVocab.default()
    table = ortholog_table("mouse")
    tokens, _ = _to_vocab(table.human.to_numpy(object), vocab, True)
    table = table.assign(token=tokens)
    ids = match_genes(human.var_names, vocab).ids
    rank = {"one2one": 0, "many2one": 1, "one2many": 2, "many2many": 3}
    options = (
        table[table.token >= 0]
        .assign(rank=lambda t: t.orthology.map(rank))
        .sort_values(["rank", "gene"])
        .groupby("token")["gene"]
        .agg(list)
        .to_dict()
    )
    used, names = set(), []
    for i, t in enumerate(ids):
        name = next((g for g in options.get(int(t), []) if g not in used), None) if t >= 0 else None
        name = name or f"unmapped_{i}"
        used.add(name)
        names.append(name)
    mouse = human.copy()
    mouse.var_names = names
    return mouse


def knn(ref_emb, query_emb, y_ref, k: int = 10):
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=k, metric="cosine").fit(ref_emb, y_ref).predict(query_emb)


def lognorm_scaled(ref, query):
    import scipy.sparse as sp
    from sklearn.preprocessing import StandardScaler

    def lognorm(a):
        X = sp.csr_matrix(a.X, dtype=np.float64)
        X = sp.diags(1e4 / np.maximum(np.asarray(X.sum(1)).ravel(), 1)) @ X
        return np.log1p(X.toarray())

    scaler = StandardScaler().fit(lognorm(ref))
    return scaler.transform(lognorm(ref)), scaler.transform(lognorm(query))


def run(args) -> dict:
    import logging

    from sklearn.linear_model import LogisticRegression

    import scgpt
    from scgpt.datasets import ONEK1K_QUERY_DONORS, onek1k
    from scgpt.model import ScGPT

    logging.getLogger("scgpt").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    model = ScGPT.from_pretrained(args.model)
    cells = onek1k()
    rng = np.random.default_rng(args.seed)
    is_query = cells.obs["indiv"].isin(ONEK1K_QUERY_DONORS).to_numpy()
    ref, query = cells[~is_query], cells[is_query]
    if args.cells:
        ref = ref[np.sort(rng.choice(ref.n_obs, min(args.cells, ref.n_obs), replace=False))]
        query = query[np.sort(rng.choice(query.n_obs, min(args.cells, query.n_obs), replace=False))]
    ref, query = ref.copy(), query.copy()
    mouse_ref, mouse_query = as_mouse(ref), as_mouse(query)
    key = "cell_type"
    y_ref, y_query = ref.obs[key].astype(str).to_numpy(), query.obs[key].astype(str).to_numpy()
    results = {"model": str(args.model), "cells": {"reference": ref.n_obs, "query": query.n_obs}, "coverage": {}}

    # coverage reports: the human cells, and the renamed cells read as mouse genes (both policies)
    import anndata as ad

    human_all = ad.concat([ref, query])
    mouse_all = ad.concat([mouse_ref, mouse_query])
    aligned = {}
    for name, adata, kw in (
        ("human genes", human_all, {}),
        ("mouse genes, orthologs='one2one'", mouse_all, {"organism": "mouse"}),
        ("mouse genes, orthologs='all'", mouse_all, {"organism": "mouse", "orthologs": "all"}),
    ):
        aligned[name] = scgpt.pp.align_vocab(adata, model, copy=True, **kw)
        rep = aligned[name].uns["id_in_vocab"]
        results["coverage"][name] = {k: v for k, v in rep.items() if k != "params"}
        o = rep.get("orthology")
        print(f"\n{name}: {rep['n_matched']} of {rep['n_genes']} genes read by the model ({rep['coverage']:.1%})")
        if o:
            print(f"    orthology of the genes: {o}")
            print(f"    what became of them: {rep['by_reason']}; summed: {rep['n_summed']}")
        c = rep["counts_fraction"]
        print(f"    share of a cell's counts read: median {c['median']:.1%}, 5th percentile {c['p5']:.1%}")

    if args.figure:
        import matplotlib

        matplotlib.use("agg")
        fig = scgpt.pl.gene_coverage(
            aligned["mouse genes, orthologs='one2one'"], aligned["human genes"],
            reference_label="the same cells, human genes", return_fig=True,
            title=f"OneK1K PBMCs written as mouse genes ({args.model} model's vocabulary)",
        )  # fmt: skip
        fig.savefig(args.figure, dpi=120, bbox_inches="tight")
        print(f"wrote {args.figure}")

    rows, timings = {}, {}
    rows["majority class"] = score(y_query, np.full(len(y_query), pd.Series(y_ref).value_counts().index[0]))
    for label, r, q, kw in (
        ("scgpt knn, human genes", ref, query, {}),
        ("scgpt knn, mouse genes, organism='mouse'", mouse_ref, mouse_query, {"organism": "mouse"}),
        ("scgpt knn, mouse genes, organism='mouse', orthologs='all'", mouse_ref, mouse_query,
         {"organism": "mouse", "orthologs": "all"}),
    ):  # fmt: skip
        t = time.perf_counter()
        e_ref = model.get_latent_representation(r, seed=args.seed, progress=False, **kw)
        e_query = model.get_latent_representation(q, seed=args.seed, progress=False, **kw)
        rows[label], timings[label] = score(y_query, knn(e_ref, e_query, y_ref)), time.perf_counter() - t
        print(f"    {label}: {timings[label]:.0f}s", flush=True)
    t = time.perf_counter()
    f_ref, f_query = pca_features(mouse_ref, mouse_query)
    rows["knn on 50 PCs, mouse genes"] = score(y_query, knn(f_ref, f_query, y_ref))
    timings["knn on 50 PCs, mouse genes"] = time.perf_counter() - t
    t = time.perf_counter()
    g_ref, g_query = lognorm_scaled(mouse_ref, mouse_query)
    lr = LogisticRegression(max_iter=5000).fit(g_ref, y_ref)
    rows["logreg, mouse genes"] = score(y_query, lr.predict(g_query))
    timings["logreg, mouse genes"] = time.perf_counter() - t
    results["scores"], results["seconds"] = rows, timings
    print(
        f"\nOneK1K as mouse genes: {ref.n_obs} reference cells (20 donors) / {query.n_obs} query cells "
        f"(10 held-out donors), {len(set(y_ref))} cell types, model {args.model}"
    )
    print("| method | accuracy | macro-F1 | time (s) |\n|---|---|---|---|")
    for method, s in rows.items():
        tt = timings.get(method)
        print(f"| {method} | {s['accuracy']:.3f} | {s['macro_f1']:.3f} | {'' if tt is None else f'{tt:.0f}'} |")
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="model folder or 'demo'")
    p.add_argument("--cells", type=int, default=0, help="cells drawn from each of reference and query (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figure", metavar="PNG", help="also save scgpt.pl.gene_coverage of both sets (docs figure)")
    p.add_argument("--json-out", default=str(HERE / "results" / "species.json"))
    args = p.parse_args()
    results = run(args)
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json_out}")


if __name__ == "__main__":
    main()
