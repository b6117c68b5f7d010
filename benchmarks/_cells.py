"""Cells and model folders for ``benchmarks/embed.py``.

``build_adata`` reproduces, line for line, the cell construction of the peer kit's
``shared/peer/scgpt_peer_embed.py`` (function ``build_adata``), so that the official run (in the
peer environment) and ours embed the very same matrix: same seed, same numpy ``Generator`` calls in
the same order. It only needs numpy, scipy, scanpy and anndata, so it runs in this project's
environment without the official ``scgpt``.

``write_backed_h5ad`` writes a large synthetic count matrix to an ``.h5ad`` chunk by chunk (the
whole matrix is never in memory), for the backed-mode run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: Special tokens appended to the vocabulary by the peer kit (``SPECIALS`` there).
SPECIALS = ["<pad>", "<cls>", "<eoc>"]

#: Official whole-human ``args.json`` fields written by the peer kit (``WHOLE_HUMAN_ARGS`` there).
WHOLE_HUMAN_ARGS = {
    "embsize": 512,
    "nheads": 8,
    "d_hid": 512,
    "nlayers": 12,
    "n_layers_cls": 3,
    "dropout": 0.2,
    "pad_token": "<pad>",
    "pad_value": -2,
    "mask_value": -1,
    "n_bins": 51,
    "input_style": "binned",
    "input_emb_style": "continuous",
    "cell_emb_style": "cls",
    "max_seq_len": 1200,
    "fast_transformer": False,
    "MVC": True,
    "USE_CLS": True,
    "USE_CCE": False,
}

#: Genes of the hg19 Cell Ranger reference of pbmc68k (765 real names + synthetic ``SYNG*`` fillers).
N_UNIVERSE = 32738


def build_adata(mode: str, n_cells: int, seed: int = 0, n_universe: int = N_UNIVERSE):
    """Real-data-derived cells, identical to the peer kit's ``build_adata(mode, n_cells, seed)``.

    ``real765``: scanpy's ``pbmc68k_reduced().raw`` (700 PBMCs x 765 genes, log-normalised), cells
    resampled with replacement (about 250 tokens per cell). ``expanded``: the same cells padded out
    to the number of genes each really detected (``obs['n_genes']``, median 1,130) with nonzero
    filler genes drawn Zipf-weighted from a 32,738-gene universe (most cells reach 1,200 tokens).

    Keep in step with ``shared/peer/scgpt_peer_embed.py``: any change to the order of random draws
    gives different cells there and here.
    """
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    src = sc.datasets.pbmc68k_reduced()
    raw = src.raw.to_adata()
    Xr = raw.X.tocsr() if sp.issparse(raw.X) else sp.csr_matrix(raw.X)
    Xr = Xr.astype(np.float32)
    genes = list(raw.var_names)
    n_genes_full = src.obs["n_genes"].to_numpy().astype(int)
    idx = rng.integers(0, src.n_obs, size=n_cells)
    obs = src.obs.iloc[idx][["bulk_labels", "n_genes"]].copy()
    obs.index = [f"cell{i}_{src.obs_names[j]}" for i, j in enumerate(idx)]

    if mode == "real765":
        X = Xr[idx]
        var_names = genes
    elif mode == "expanded":
        n_fill = n_universe - len(genes)
        var_names = genes + [f"SYNG{i:05d}" for i in range(n_fill)]
        w = 1.0 / np.arange(1, n_fill + 1) ** 0.9  # Zipf-like detection frequencies of filler genes
        w /= w.sum()
        indptr = [0]
        indices = []
        data = []
        for j in idx:
            row = Xr[j]
            cols = row.indices
            vals = row.data
            k = max(0, int(n_genes_full[j]) - len(cols))
            fill = rng.choice(n_fill, size=k, replace=False, p=w) + len(genes)
            lo = np.quantile(vals, 0.25) if len(vals) else 1.0
            fvals = rng.uniform(vals.min() if len(vals) else 0.5, lo, size=k).astype(np.float32)
            c = np.concatenate([cols, fill])
            v = np.concatenate([vals, fvals])
            o = np.argsort(c)
            indices.append(c[o])
            data.append(v[o])
            indptr.append(indptr[-1] + len(c))
        X = sp.csr_matrix(
            (np.concatenate(data), np.concatenate(indices), np.array(indptr)),
            shape=(n_cells, n_universe),
        )
    else:
        raise ValueError(f"unknown mode {mode!r} (real765 or expanded)")

    adata = ad.AnnData(X=X, obs=obs)
    adata.var_names = var_names
    adata.var["gene_name"] = var_names
    return adata


def mode_gene_names(mode: str) -> list[str]:
    """Gene names (``var_names``) of ``build_adata(mode, ...)``, without building cells."""
    import scanpy as sc

    genes = list(sc.datasets.pbmc68k_reduced().raw.var_names)
    if mode == "real765":
        return genes
    if mode == "expanded":
        return genes + [f"SYNG{i:05d}" for i in range(N_UNIVERSE - len(genes))]
    raise ValueError(f"unknown mode {mode!r} (real765 or expanded)")


def vocab_tokens(model_dir: str | Path) -> dict[str, int]:
    """The ``vocab.json`` of an official model folder (token -> id)."""
    return json.loads((Path(model_dir) / "vocab.json").read_text())


def tokens_per_cell(X, var_names: list[str], vocab: dict[str, int], max_length: int) -> np.ndarray:
    """Tokens each cell is embedded with: ``min(nonzero genes in the vocabulary + 1 (<cls>), max_length)``."""
    import scipy.sparse as sp

    X = sp.csr_matrix(X)
    in_vocab = np.array([g in vocab for g in var_names], dtype=np.float32)
    nnz = (X != 0).astype(np.float32) @ in_vocab
    return np.minimum(np.asarray(nnz).ravel().astype(np.int64) + 1, max_length)


def write_whole_human_model(gene_names: list[str], out_dir: str | Path, seed: int = 0) -> Path:
    """An official-format folder with the whole-human architecture and random weights, written with this package.

    Used only when the official environment is unavailable (the peer kit writes the folder otherwise):
    vocabulary = the genes in dataset order then ``SPECIALS``, as the peer kit does. The random
    initialisation differs from the official code's, which does not matter for speed.
    """
    import torch

    from scgpt.data import GeneVocab
    from scgpt.io import save_official
    from scgpt.nn import ScGPTConfig, ScGPTNet

    tokens = list(dict.fromkeys(gene_names)) + SPECIALS
    vocab = GeneVocab(tokens)
    a = WHOLE_HUMAN_ARGS
    config = ScGPTConfig(
        n_tokens=len(vocab),
        pad_token_id=vocab[a["pad_token"]],
        d_model=a["embsize"],
        n_heads=a["nheads"],
        d_hid=a["d_hid"],
        n_layers=a["nlayers"],
        dropout=a["dropout"],
        pad_value=float(a["pad_value"]),
        n_layers_cls=a["n_layers_cls"],
    )
    torch.manual_seed(seed)
    net = ScGPTNet(config)
    return save_official(net, vocab, out_dir, args=dict(WHOLE_HUMAN_ARGS), overwrite=True)


def write_backed_h5ad(
    path: str | Path,
    gene_names: list[str],
    n_cells: int,
    *,
    genes_per_cell: tuple[int, int] = (200, 600),
    chunk: int = 10_000,
    seed: int = 0,
) -> dict:
    """Write a synthetic raw-count ``.h5ad`` of ``n_cells`` x ``len(gene_names)``, chunk by chunk.

    Each cell expresses a uniform ``genes_per_cell`` number of distinct genes, drawn with Zipf-like
    gene frequencies (exponent 0.9); counts are ``1 + NegativeBinomial`` with a mean that falls with
    the gene's frequency rank (about 15 for the commonest genes, 1-2 for rare ones; dispersion 2).
    ``obs``/``var`` and the file skeleton are written by anndata, ``X`` (CSR: ``data`` float32,
    ``indices`` int32, ``indptr`` int64) is appended with h5py into resizable datasets, so memory
    stays at one chunk. Returns a summary (nnz, file size, time).
    """
    import time

    import anndata as ad
    import h5py
    import pandas as pd

    t0 = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n_genes = len(gene_names)
    rng = np.random.default_rng(seed)
    rank = np.arange(1, n_genes + 1, dtype=np.float64)
    cdf = np.cumsum(1.0 / rank**0.9)
    cdf /= cdf[-1]
    perm = rng.permutation(n_genes)  # frequency rank -> gene column, so common genes are spread over columns
    mean = 1.0 + 14.0 * rank ** (-0.3)  # NB mean (minus the +1) by frequency rank
    disp = 2.0

    obs = pd.DataFrame(index=pd.Index([f"cell{i:07d}" for i in range(n_cells)]))
    var = pd.DataFrame({"gene_name": gene_names}, index=pd.Index(gene_names))
    ad.AnnData(obs=obs, var=var).write_h5ad(tmp)  # skeleton: obs, var, uns, obsm, ... (X absent)

    nnz = 0
    lo, hi = genes_per_cell
    with h5py.File(tmp, "r+") as f:
        g = f.create_group("X")
        g.attrs["encoding-type"] = "csr_matrix"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["shape"] = np.array([n_cells, n_genes], dtype=np.int64)
        d_data = g.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 18,))
        d_ind = g.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 18,))
        indptr = np.zeros(n_cells + 1, dtype=np.int64)
        for start in range(0, n_cells, chunk):
            stop = min(start + chunk, n_cells)
            rows_idx, rows_val = [], []
            for i in range(start, stop):
                k = int(rng.integers(lo, hi + 1))
                picked = np.unique(np.searchsorted(cdf, rng.random(2 * k)))
                while len(picked) < k:  # rare: too many repeats among the common genes
                    picked = np.union1d(picked, np.searchsorted(cdf, rng.random(k)))
                ranks = rng.choice(picked, size=k, replace=False)
                mu = mean[ranks]
                counts = 1 + rng.negative_binomial(disp, disp / (disp + mu))
                cols = perm[ranks]
                o = np.argsort(cols)
                rows_idx.append(cols[o].astype(np.int32))
                rows_val.append(counts[o].astype(np.float32))
                indptr[i + 1] = indptr[i] + k
            block_idx = np.concatenate(rows_idx)
            block_val = np.concatenate(rows_val)
            d_ind.resize((nnz + len(block_idx),))
            d_data.resize((nnz + len(block_val),))
            d_ind[nnz:] = block_idx
            d_data[nnz:] = block_val
            nnz += len(block_idx)
        g.create_dataset("indptr", data=indptr)
    tmp.replace(path)
    return {
        "path": str(path),
        "n_cells": n_cells,
        "n_genes": n_genes,
        "nnz": int(nnz),
        "genes_per_cell": list(genes_per_cell),
        "seed": seed,
        "file_bytes": path.stat().st_size,
        "in_memory_csr_bytes": int(nnz * 8 + (n_cells + 1) * 8),
        "write_s": time.perf_counter() - t0,
    }
