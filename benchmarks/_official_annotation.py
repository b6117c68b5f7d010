"""The official annotation fine-tuning loop, assembled from the official ``scgpt`` package's modules.

Run with the python of the peer venv (``../shared/peer/setup_peer.sh``), by ``benchmarks/parity.py``::

    $PEER_VENV/bin/python benchmarks/_official_annotation.py MODEL_DIR REF.h5ad QUERY.h5ad OUT.npz --epochs 3

It follows ``Tutorial_Annotation`` step by step with the package's own pieces: reference and query
concatenated, genes matched to the model's ``vocab.json`` by name, ``Preprocessor`` (no filtering,
normalise to 1e4, log1p, no HVG selection, 51 bins), ``tokenize_and_pad_batch`` (expressed genes only,
``<cls>`` first with value 0, at most 3,001 tokens), a 10 % validation split of the reference
(``train_test_split``), ``random_mask_value(0.0)`` every epoch (nothing hidden), a ``DataLoader`` with
``shuffle=False`` (the order of the one split, every epoch), ``TransformerModel`` with a 3-layer classifier
over the reference's cell types (dropout 0.2, no MVC, DAB, DSBN or batch labels), the pretrained weights
whose names and shapes match (``load_pretrained``), Adam (lr 1e-4, eps 1e-4: the tutorial's AMP setting),
``StepLR(1, 0.9)`` per epoch, the tutorial's training step (cross-entropy of ``cls_output``, clipping at
1.0), the validation loss each epoch, the best epoch kept, and the query's predicted labels
(``argmax(cls_output)`` of the best model). AMP is off (CPU). Prints one JSON line per epoch and a summary.
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
    p.add_argument("reference")
    p.add_argument("query")
    p.add_argument("out")
    p.add_argument("--labels-key", default="cell_type")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--max-len", type=int, default=3001)
    add_run_options(p)
    a = p.parse_args()

    import anndata as ad
    from sklearn.model_selection import train_test_split

    from scgpt.model import TransformerModel
    from scgpt.preprocess import Preprocessor
    from scgpt.tokenizer import random_mask_value, tokenize_and_pad_batch
    from scgpt.utils import load_pretrained

    args, vocab = start_run(a, a.model_dir)
    model_dir = __import__("pathlib").Path(a.model_dir)

    ref, query = ad.read_h5ad(a.reference), ad.read_h5ad(a.query)
    ref.obs["str_batch"], query.obs["str_batch"] = "0", "1"
    adata = ad.concat([ref, query], join="inner", merge="first")
    adata.obs_names_make_unique()
    adata.var["id_in_vocab"] = [1 if g in vocab else -1 for g in adata.var_names]
    adata = adata[:, adata.var["id_in_vocab"] >= 0].copy()
    Preprocessor(
        use_key="X",
        filter_gene_by_counts=False,
        filter_cell_by_counts=False,
        normalize_total=1e4,
        result_normed_key="X_normed",
        log1p=True,
        result_log1p_key="X_log1p",
        subset_hvg=False,
        hvg_flavor="seurat_v3",
        binning=51,
        result_binned_key="X_binned",
    )(adata, batch_key=None)
    is_ref = (adata.obs["str_batch"] == "0").to_numpy()
    X = adata.layers["X_binned"]
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    types = ref.obs[a.labels_key].astype("category").cat.categories
    labels = np.asarray(ref.obs[a.labels_key].astype(str).map({t: i for i, t in enumerate(types)}), dtype=int)
    genes = adata.var_names.tolist()
    gene_ids = np.array(vocab(genes), dtype=int)

    train_data, valid_data, train_labels, valid_labels = train_test_split(
        X[is_ref], labels, test_size=0.1, shuffle=True
    )
    kw = dict(max_len=a.max_len, vocab=vocab, pad_token="<pad>", pad_value=-2, append_cls=True, include_zero_gene=False)
    tok_train = tokenize_and_pad_batch(train_data, gene_ids, **kw)
    tok_valid = tokenize_and_pad_batch(valid_data, gene_ids, **kw)
    tok_query = tokenize_and_pad_batch(X[~is_ref], gene_ids, **kw)

    model = TransformerModel(
        len(vocab),
        args["embsize"],
        args["nheads"],
        args["d_hid"],
        args["nlayers"],
        nlayers_cls=3,
        n_cls=len(types),
        vocab=vocab,
        dropout=a.dropout,
        pad_token="<pad>",
        pad_value=-2,
        do_mvc=False,
        do_dab=False,
        use_batch_labels=False,
        domain_spec_batchnorm=False,
        input_emb_style="continuous",
        n_input_bins=51,
        cell_emb_style="cls",
        mvc_decoder_style="inner product",
        ecs_threshold=0.0,
        explicit_zero_prob=False,
        use_fast_transformer=False,
        pre_norm=False,
    )
    load_pretrained(model, torch.load(model_dir / "best_model.pt", map_location="cpu"), verbose=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=a.lr, eps=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.9)
    criterion_cls = torch.nn.CrossEntropyLoss()

    def batches(tok, y, n):
        values = random_mask_value(tok["values"], mask_ratio=0.0, mask_value=-1, pad_value=-2)
        for start in range(0, len(tok["genes"]), n):  # DataLoader(shuffle=False)
            sl = slice(start, start + n)
            yield tok["genes"][sl], values[sl], None if y is None else torch.as_tensor(y[sl]).long()

    def forward(net, genes, values):
        return net(genes, values, src_key_padding_mask=genes.eq(vocab["<pad>"]), batch_labels=None, CLS=True,
                   CCE=False, MVC=False, ECS=False)["cls_output"]  # fmt: skip

    history, best, best_loss = [], None, float("inf")
    for epoch in range(a.epochs):
        t0 = time.perf_counter()
        model.train()
        losses = []
        for genes, values, y in batches(tok_train, train_labels, a.batch_size):
            loss = criterion_cls(forward(model, genes, values), y)
            model.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)
            optimizer.step()
            losses.append(float(loss))
        t_train = time.perf_counter() - t0
        model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for genes, values, y in batches(tok_valid, valid_labels, a.batch_size):
                total += float(criterion_cls(forward(model, genes, values), y)) * len(y)
                n += len(y)
        val_loss = total / n
        if val_loss < best_loss:
            best_loss, best = val_loss, copy.deepcopy(model)
        scheduler.step()
        history.append(
            {
                "epoch": epoch + 1,
                "train_seconds": t_train,
                "seconds": time.perf_counter() - t0,
                "train_loss": float(np.mean(losses)),
                "val_loss": val_loss,
                "steps": len(losses),
            }
        )
        print(json.dumps(history[-1]), flush=True)

    best.eval()
    preds = []
    with torch.no_grad():
        for genes, values, _ in batches(tok_query, None, a.batch_size):
            preds.append(forward(best, genes, values).argmax(1).numpy())
    pred = np.asarray(types)[np.concatenate(preds)]
    np.savez(a.out, pred=pred.astype(str), obs_names=np.asarray(adata.obs_names[~is_ref], dtype=str))
    print(json.dumps({"history": history, "n_reference": int(is_ref.sum()), "n_genes": len(genes)}), flush=True)


if __name__ == "__main__":
    main()
