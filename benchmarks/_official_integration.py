"""The official integration fine-tuning loop, assembled from the official ``scgpt`` package's modules.

Run with the python of the peer venv (``../shared/peer/setup_peer.sh``), by ``benchmarks/finetune_epoch.py``::

    $PEER_VENV/bin/python benchmarks/_official_integration.py MODEL_DIR DATA.h5ad OUT.npz --epochs 1

It follows ``Tutorial_Integration`` step by step with the package's own pieces: ``Preprocessor`` (genes with
counts in 3 cells, normalise to 1e4, log1p, HVGs when there are more than ``n_hvg`` genes, 51 bins),
genes matched to the model's ``vocab.json``, ``tokenize_and_pad_batch`` (every gene, zeros included, ``<cls>``
first with value 0), a 10 % validation split (``train_test_split``), ``random_mask_value(0.4)`` redrawn every
epoch, ``SubsetsBatchSampler`` (one batch per minibatch, batch after batch), ``TransformerModel`` with DSBN,
the batch discriminator, explicit zero probabilities, MVC and ECS 0.8, ``load_pretrained``, Adam (lr 1e-4,
eps 1e-4), ``StepLR(1, 0.9)`` per epoch, the tutorial's training step (GEP + zero NLL + GEPC + zero NLL +
10 x ECS + DAB, clipping at 1.0), the validation loss each epoch, the best epoch kept, and the cell
embeddings of every cell from ``encode_batch`` (L2-normalised, as the tutorial's ``eval_testdata``). AMP is
off (CPU). Prints one JSON line: seconds per epoch (training only, and with validation), losses.
"""

# ruff: noqa: I001  (the scgpt imported here is the official package, in its own venv)
from __future__ import annotations

import argparse
import copy
import json
import time
import warnings

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

from _official_common import add_run_options, start_run  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--batch-key", default="source")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-hvg", type=int, default=1200)
    p.add_argument("--dropout", type=float, default=0.2)
    add_run_options(p)
    p.add_argument("--max-cells", type=int, default=0, help="a random subset of cells (0: all), for a quick check")
    a = p.parse_args()

    import anndata as ad
    from sklearn.model_selection import train_test_split

    from scgpt import SubsetsBatchSampler
    from scgpt.loss import criterion_neg_log_bernoulli, masked_mse_loss
    from scgpt.model import TransformerModel
    from scgpt.preprocess import Preprocessor
    from scgpt.tokenizer import random_mask_value, tokenize_and_pad_batch
    from scgpt.utils import load_pretrained

    args, vocab = start_run(a, a.model_dir)
    model_dir = __import__("pathlib").Path(a.model_dir)

    adata = ad.read_h5ad(a.data)
    if a.max_cells:
        adata = adata[np.sort(np.random.default_rng(a.seed).permutation(adata.n_obs)[: a.max_cells])].copy()
    adata.var["id_in_vocab"] = [1 if g in vocab else -1 for g in adata.var_names]
    adata = adata[:, adata.var["id_in_vocab"] >= 0].copy()
    adata.obs["batch_id"] = adata.obs[a.batch_key].astype("category").cat.codes.to_numpy()
    n_hvg = a.n_hvg if adata.n_vars > a.n_hvg else False
    Preprocessor(
        use_key="X",
        filter_gene_by_counts=3,
        filter_cell_by_counts=False,
        normalize_total=1e4,
        result_normed_key="X_normed",
        log1p=True,
        result_log1p_key="X_log1p",
        subset_hvg=n_hvg,
        hvg_flavor="seurat_v3",
        binning=51,
        result_binned_key="X_binned",
    )(adata, batch_key=a.batch_key)
    X = adata.layers["X_binned"]
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    genes = adata.var_names.tolist()
    gene_ids = np.array(vocab(genes), dtype=int)
    batch_ids = adata.obs["batch_id"].to_numpy()
    n_batches = len(np.unique(batch_ids))
    max_seq_len = len(genes) + 1

    train_data, valid_data, train_batch, valid_batch = train_test_split(X, batch_ids, test_size=0.1, shuffle=True)
    kw = dict(
        max_len=max_seq_len, vocab=vocab, pad_token="<pad>", pad_value=-2, append_cls=True, include_zero_gene=True
    )
    tok_train = tokenize_and_pad_batch(train_data, gene_ids, **kw)
    tok_valid = tokenize_and_pad_batch(valid_data, gene_ids, **kw)

    model = TransformerModel(
        len(vocab),
        args["embsize"],
        args["nheads"],
        args["d_hid"],
        args["nlayers"],
        nlayers_cls=args["n_layers_cls"],
        vocab=vocab,
        dropout=a.dropout,
        pad_token="<pad>",
        pad_value=-2,
        do_mvc=True,
        do_dab=True,
        use_batch_labels=True,
        num_batch_labels=n_batches,
        domain_spec_batchnorm=True,
        n_input_bins=51,
        ecs_threshold=0.8,
        explicit_zero_prob=True,
        use_fast_transformer=False,
        pre_norm=False,
    )
    load_pretrained(model, torch.load(model_dir / "best_model.pt", map_location="cpu"), verbose=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.9)
    criterion_dab = torch.nn.CrossEntropyLoss()

    def batches(tok, labels, shuffle):
        masked = random_mask_value(tok["values"], mask_ratio=0.4, mask_value=-1, pad_value=-2)
        order = np.argsort(labels, kind="stable")  # the tutorial sorts by batch before the sampler
        subsets = [np.flatnonzero(labels[order] == b).tolist() for b in np.unique(labels)]
        sampler = SubsetsBatchSampler(subsets, a.batch_size, intra_subset_shuffle=shuffle, inter_subset_shuffle=False)
        for rows in sampler:
            idx = torch.as_tensor(order[rows])
            yield tok["genes"][idx], masked[idx], tok["values"][idx], torch.as_tensor(labels[idx.numpy()]).long()

    def step_loss(genes, values, target, blabels):
        out = model(
            genes, values, src_key_padding_mask=genes.eq(vocab["<pad>"]), batch_labels=blabels, MVC=True, ECS=True
        )
        masked = values.eq(-1)
        loss = masked_mse_loss(out["mlm_output"], target, masked)
        loss = loss + criterion_neg_log_bernoulli(out["mlm_zero_probs"], target, masked)
        loss = loss + masked_mse_loss(out["mvc_output"], target, masked)
        loss = loss + criterion_neg_log_bernoulli(out["mvc_zero_probs"], target, masked)
        loss = loss + 10 * out["loss_ecs"]
        dab = criterion_dab(out["dab_output"], blabels)
        return loss + dab, loss, dab

    history, best, best_loss = [], None, float("inf")
    for epoch in range(a.epochs):
        t0 = time.perf_counter()
        model.train()
        train_losses = []
        for genes, values, target, blabels in batches(tok_train, train_batch, True):
            loss, _, _ = step_loss(genes, values, target, blabels)
            model.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)
            optimizer.step()
            train_losses.append(float(loss))
        t_train = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            val = [float(step_loss(*b)[0]) for b in batches(tok_valid, valid_batch, False)]
        val_loss = float(np.mean(val))
        if val_loss < best_loss:
            best_loss, best = val_loss, copy.deepcopy(model)
        scheduler.step()
        history.append(
            {
                "epoch": epoch + 1,
                "train_seconds": t_train,
                "seconds": time.perf_counter() - t0,
                "train_loss": float(np.mean(train_losses)),
                "val_loss": val_loss,
                "steps": len(train_losses),
            }
        )
        print(json.dumps(history[-1]), flush=True)

    order = np.argsort(batch_ids, kind="stable")  # eval_testdata embeds adata_sorted: DSBN takes cell 0's batch
    tok_all = tokenize_and_pad_batch(X[order], gene_ids, **kw)
    best.eval()
    with torch.no_grad():
        emb_sorted = best.encode_batch(
            tok_all["genes"],
            tok_all["values"].float(),
            src_key_padding_mask=tok_all["genes"].eq(vocab["<pad>"]),
            batch_size=a.batch_size,
            batch_labels=torch.from_numpy(batch_ids[order]).long(),
            time_step=0,
            return_np=True,
        )
    emb = np.empty_like(emb_sorted)
    emb[order] = emb_sorted
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.savez(a.out, X_scGPT=emb, obs_names=np.asarray(adata.obs_names, dtype=str))
    print(json.dumps({"history": history, "n_cells": int(adata.n_obs), "n_genes": len(genes)}), flush=True)


if __name__ == "__main__":
    main()
