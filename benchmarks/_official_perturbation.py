"""The official perturbation fine-tuning loop, assembled from the official ``scgpt`` package's modules.

Run with the python of the peer venv (``../shared/peer/setup_peer.sh``), by ``benchmarks/parity.py``::

    $PEER_VENV/bin/python benchmarks/_official_perturbation.py MODEL_DIR SCREEN.h5ad SPLIT.json OUT.npz --epochs 5

It follows ``Tutorial_Perturbation`` step by step with the package's own pieces, with the data that GEARS would
hand it built here (GEARS is not installed in the peer venv; its pairing is reproduced): expression
``log1p(normalize_total(counts, 1e4))`` over every gene of the screen; training examples as GEARS'
``create_cell_graph_dataset`` makes them (each cell of a training perturbation paired with one random control
cell as input, the control cells paired with themselves), input features ``[expression, perturbation flag]``
per gene, shuffled minibatches of 64; ``TransformerGenerator`` (dropout 0, pad value 0, ``pert_pad_id`` 0)
with the pretrained ``encoder``, ``value_encoder`` and ``transformer_encoder`` only (``load_param_prefixs``);
Adam (lr 1e-4, default eps), ``StepLR(1, 0.9)`` per epoch; the tutorial's ``train`` (every gene of the panel,
a random subset above ``max_seq_len`` 1536, MSE on every gene, clipping at 1.0); each epoch the validation
perturbations predicted with ``pred_perturb`` from random control cells and the official ``pearson``
(Pearson of mean predicted and mean observed profiles per perturbation, averaged), the best epoch kept; then
the tutorial's ``predict``: for each test perturbation ``pool_size`` random control cells through
``pred_perturb`` and the mean. AMP is off (CPU). Prints one JSON line per epoch and a summary.
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


class GraphBatch:
    """What ``pred_perturb`` reads from a GEARS PyG batch: ``x`` (cells * genes, 2) and ``pert`` (one per cell)."""

    def __init__(self, x: torch.Tensor, pert: list[str]) -> None:
        self.x, self.pert = x, pert

    def to(self, device):
        self.x = self.x.to(device)
        return self


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("screen")
    p.add_argument("split")
    p.add_argument("out")
    p.add_argument("--perturbation-key", default="perturbation")
    p.add_argument("--control", default="control")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-seq-len", type=int, default=1536)
    p.add_argument("--pool-size", type=int, default=300)
    add_run_options(p)
    a = p.parse_args()

    import anndata as ad
    import scanpy as sc
    from scipy.stats import pearsonr

    from scgpt.loss import masked_mse_loss
    from scgpt.model import TransformerGenerator
    from scgpt.utils import load_pretrained, map_raw_id_to_vocab_id

    args, vocab = start_run(a, a.model_dir)
    model_dir = __import__("pathlib").Path(a.model_dir)
    split = json.loads(open(a.split).read())

    adata = ad.read_h5ad(a.screen)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    X = X.astype(np.float32)
    genes = adata.var_names.tolist()
    n_genes = len(genes)
    gene_ids = np.array([vocab[g] if g in vocab else vocab["<pad>"] for g in genes], dtype=int)
    col = {g: i for i, g in enumerate(genes)}
    labels = adata.obs[a.perturbation_key].astype(str).to_numpy()
    ctrl_rows = np.flatnonzero(labels == a.control)

    def flags(label: str) -> np.ndarray:
        f = np.zeros(n_genes, dtype=np.float32)
        if label != a.control:
            for g in label.split("+"):
                f[col[g]] = 1.0
        return f

    def pairs(perts: list[str], *, with_control: bool):
        """GEARS' create_cell_graph_dataset (num_samples=1): (input expression, flags, target, label) per cell."""
        xs, fs, ys, names = [], [], [], []
        for label in [*perts, *([a.control] if with_control else [])]:
            rows = np.flatnonzero(labels == label)
            f = flags(label)
            for r in rows:
                x = X[r] if label == a.control else X[ctrl_rows[np.random.randint(0, len(ctrl_rows))]]
                xs.append(x), fs.append(f), ys.append(X[r]), names.append(label)
        return np.stack(xs), np.stack(fs), np.stack(ys), np.asarray(names)

    train = pairs(split["train"], with_control=True)
    val = pairs(split["val"], with_control=False)

    model = TransformerGenerator(
        len(vocab),
        args["embsize"],
        args["nheads"],
        args["d_hid"],
        args["nlayers"],
        nlayers_cls=args["n_layers_cls"],
        n_cls=1,
        vocab=vocab,
        dropout=0.0,
        pad_token="<pad>",
        pad_value=0,
        pert_pad_id=0,
        use_fast_transformer=False,
    )
    load_pretrained(
        model,
        torch.load(model_dir / "best_model.pt", map_location="cpu"),
        prefix=["encoder", "value_encoder", "transformer_encoder"],
        verbose=False,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=a.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.9)

    def train_epoch() -> list[float]:
        model.train()
        xs, fs, ys, _ = train
        order = np.random.permutation(len(xs))  # the train loader: shuffle=True
        losses = []
        for start in range(0, len(order), a.batch_size):
            rows = order[start : start + a.batch_size]
            batch_size = len(rows)
            ori_gene_values = torch.from_numpy(xs[rows])
            pert_flags = torch.from_numpy(fs[rows]).long()
            target_gene_values = torch.from_numpy(ys[rows])
            input_gene_ids = torch.arange(n_genes, dtype=torch.long)
            if len(input_gene_ids) > a.max_seq_len:
                input_gene_ids = torch.randperm(len(input_gene_ids))[: a.max_seq_len]
            input_values = ori_gene_values[:, input_gene_ids]
            input_pert_flags = pert_flags[:, input_gene_ids]
            target_values = target_gene_values[:, input_gene_ids]
            mapped = map_raw_id_to_vocab_id(input_gene_ids, gene_ids).repeat(batch_size, 1)
            out = model(
                mapped,
                input_values,
                input_pert_flags,
                src_key_padding_mask=torch.zeros_like(input_values, dtype=torch.bool),
                CLS=False,
                CCE=False,
                MVC=False,
                ECS=False,
            )
            loss = masked_mse_loss(out["mlm_output"], target_values, torch.ones_like(input_values, dtype=torch.bool))
            model.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)
            optimizer.step()
            losses.append(float(loss))
        return losses

    def predict_rows(net, xs: np.ndarray, fs: np.ndarray, names) -> np.ndarray:
        out = []
        for start in range(0, len(xs), a.batch_size):
            sl = slice(start, start + a.batch_size)
            x = torch.from_numpy(np.stack([xs[sl], fs[sl]], axis=-1).reshape(-1, 2))
            batch = GraphBatch(x, list(names[sl]))
            with torch.no_grad():
                out.append(net.pred_perturb(batch, include_zero_gene="all", gene_ids=gene_ids, amp=False).numpy())
        return np.concatenate(out)

    def val_pearson(net) -> float:
        xs, fs, ys, names = val
        pred = predict_rows(net, xs, fs, names)
        scores = []
        for label in np.unique(names):
            rows = names == label
            truth = ys[rows].mean(0)
            if np.all(truth == 0):
                continue
            scores.append(pearsonr(truth, pred[rows].mean(0))[0])
        return float(np.mean(scores))

    history, best, best_corr = [], None, 0.0
    for epoch in range(a.epochs):
        t0 = time.perf_counter()
        losses = train_epoch()
        t_train = time.perf_counter() - t0
        corr = val_pearson(model)
        if corr > best_corr:
            best_corr, best = corr, copy.deepcopy(model)
        scheduler.step()
        history.append(
            {
                "epoch": epoch + 1,
                "train_seconds": t_train,
                "seconds": time.perf_counter() - t0,
                "train_loss": float(np.mean(losses)),
                "val_pearson": corr,
                "steps": len(losses),
            }
        )
        print(json.dumps(history[-1]), flush=True)
    if best is None:  # never above 0: the tutorial would fail here; keep the last epoch
        best = model

    best.eval()
    means = []
    for label in split["test"]:  # the tutorial's predict(): pool_size random control cells per perturbation
        inputs = X[ctrl_rows[np.random.randint(0, len(ctrl_rows), a.pool_size)]]
        f = np.repeat(flags(label)[None], a.pool_size, axis=0)
        means.append(predict_rows(best, inputs, f, np.full(a.pool_size, label)).mean(0))
    np.savez(a.out, pred=np.stack(means), perturbations=np.asarray(split["test"]), genes=np.asarray(genes))
    summary = {"history": history, "n_train_examples": len(train[0]), "n_val_examples": len(val[0]), "n_genes": n_genes}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
