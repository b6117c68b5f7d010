"""Golden *training* fixtures: three optimiser steps of every task, computed by the official scGPT code.

Run with the python of the peer venv (``../shared/peer/setup_peer.sh``; the official ``scgpt==0.2.4`` on
torch 2.13 CPU), plus ``einops`` and ``transformers`` in that venv for the generative pretraining::

    $PEER_VENV/bin/python scripts/vendor_training_golden.py [--out DIR] [--official-git DIR]

For each task, from the official-layout folders of ``tests/fixtures/golden/`` (dropout set to 0, AMP off), the
script builds minibatches with the official tokenizer, masking and collators, runs three optimiser steps with
the official loop, optimiser, learning-rate schedule, gradient clipping and loss weights, and records:

* every minibatch fed to the model (token ids, input values, targets, padding, masked positions, batch and
  cell-type labels, modality ids, perturbation flags), so that a test feeds our code exactly the same tensors;
* each objective term and the total loss of every step, the learning rate of every step;
* the norm of every parameter's gradient at every step, before clipping;
* every parameter and buffer after the three steps (the task models are tiny: they are stored whole).

Fine-tuning tasks run ``scgpt.trainer.train`` (annotation, integration, multi-omic: the loop of the tutorials,
one call per epoch, ``StepLR`` stepped after each) or the perturbation tutorial's loop written out with the
official modules (``TransformerGenerator``, ``masked_mse_loss``, ``map_raw_id_to_vocab_id``). Pretraining follows
``examples/pretrain.py`` of the official ``dev-temp`` branch (the only place the generative pretraining lives):
``TransformerModel(use_generative_training=True)`` from that branch's source (read from a clone given with
``--official-git``, never copied into this repository), with a CPU stand-in for the flash-attn kernel (plain
softmax attention with the same scale and key-padding semantics), the dev-temp ``DataCollator(data_style="both")``,
the cell-prompt pass active, ``transformers.get_cosine_schedule_with_warmup`` stepped per batch, clipping at 1.0.
Masked-value pretraining runs the same loop's ``pcpt`` branch with the 0.2.4 ``TransformerModel`` and
``DataCollator``.

Output: ``<out>/golden_training/{task}.npz``, ``collation.npz``, ``manifest.json`` (versions, settings, term
names, parameter names and sha256 of every file); the README beside them is written by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import types
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "fixtures" / "golden"
SHARED = Path(os.environ.get("SCGPT_SHARED", REPO.parent / "shared"))
DEV_TEMP = "4068d67caaac1e28d56964da68e0214817e38428"  # bowang-lab/scGPT, branch dev-temp
DEV_FILES = ("model/model.py", "model/flash_layers.py", "model/layers.py", "model/dsbn.py", "model/grad_reverse.py")
N_STEPS = 3
SEED = 0


# ---------------------------------------------------------------------------- helpers
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def seed_all(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def official_model(cls, folder: Path, **overrides):
    """An official model from a golden folder: its constructor arguments, dropout 0, the stored weights (strict)."""
    from scgpt.tokenizer import GeneVocab

    args = json.loads((folder / "args.json").read_text())
    ctor = dict(args["golden_constructor"], dropout=0.0, **overrides)
    vocab = GeneVocab.from_file(folder / "vocab.json")
    if ctor.get("use_mod"):
        ctor["vocab_mod"] = GeneVocab.from_dict(args["mod_vocab"])
    model = cls(vocab=vocab, **ctor)
    model.load_state_dict(torch.load(folder / "best_model.pt", map_location="cpu"), strict=True)
    return model, vocab, args


class RecordingScaler(torch.amp.GradScaler):
    """A disabled GradScaler (AMP off) that remembers each loss it is asked to scale: the step's total."""

    def __init__(self) -> None:
        super().__init__("cpu", enabled=False)
        self.losses: list[float] = []

    def scale(self, outputs):
        self.losses.append(float(outputs.detach()))
        return outputs


class GradNormRecorder:
    """Wraps ``torch.nn.utils.clip_grad_norm_`` to record every parameter's gradient norm before clipping."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.names = [n for n, _ in model.named_parameters()]
        self.model, self.norms, self.total = model, [], []

    def __enter__(self):
        self.original = torch.nn.utils.clip_grad_norm_

        def clip(parameters, max_norm, *args, **kwargs):
            row = [
                float(p.grad.detach().double().norm()) if p.grad is not None else np.nan
                for _, p in self.model.named_parameters()
            ]
            self.norms.append(row)
            total = self.original(parameters, max_norm, *args, **kwargs)
            self.total.append(float(total))
            return total

        torch.nn.utils.clip_grad_norm_ = clip
        return self

    def __exit__(self, *exc):
        torch.nn.utils.clip_grad_norm_ = self.original


def lr_recorder(optimizer) -> list[float]:
    """The learning rate of every optimiser step (an optimizer step pre-hook)."""
    lrs: list[float] = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
    return lrs


def stub_wandb() -> list[dict]:
    """``scgpt.trainer.train`` logs every step's terms with ``wandb.log``: a stand-in module that records them."""
    logged: list[dict] = []
    mod = types.ModuleType("wandb")
    mod.log = lambda d, *a, **k: logged.append(dict(d))
    sys.modules["wandb"] = mod
    return logged


class Config(dict):
    """Attribute access, as the wandb config object of the tutorials."""

    __getattr__ = dict.__getitem__


def state_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    out = {}
    for name, p in model.named_parameters():
        out[f"param::{name}"] = p.detach().numpy().copy()
    for name, b in model.named_buffers():
        out[f"buffer::{name}"] = b.detach().numpy().copy()
    return out


def steps_arrays(batches: list[dict]) -> dict[str, np.ndarray]:
    out = {}
    for i, b in enumerate(batches):
        for key, value in b.items():
            out[f"step{i}::{key}"] = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return out


def pbmc_counts():
    import anndata as ad
    import scipy.sparse as sp

    adata = ad.read_h5ad(SHARED / "golden" / "pbmc68k_counts.h5ad")
    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    return adata, X.astype(np.float32)


def binned(X: np.ndarray, n_bins: int = 51) -> np.ndarray:
    """Official per-cell binning (``scgpt.preprocess.binning``) of every row; ties broken by np.random."""
    from scgpt.preprocess import binning

    return np.stack([binning(row, n_bins) if row.max() > 0 else np.zeros_like(row) for row in X]).astype(np.float32)


def gene_subset(X: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` genes detected in most cells, in panel order (a stand-in for the tutorials' HVGs)."""
    detected = (X > 0).sum(0)
    return np.sort(np.argsort(-detected, kind="stable")[:n])


def fine_tune_loop(task: str, model, vocab, epochs: list[list[dict]], config: dict, optimizer, scheduler) -> dict:
    """``scgpt.trainer.train``, one call per epoch on the given minibatches, ``scheduler.step()`` after each."""
    from scgpt import trainer

    logged = stub_wandb()
    scaler = RecordingScaler()
    cfg = Config(task=task, log_interval=10_000, amp=False, pad_token="<pad>", mask_value=-1, pad_value=-2, **config)
    criterion_dab = torch.nn.CrossEntropyLoss() if cfg.DAR else None
    criterion_cls = torch.nn.CrossEntropyLoss() if cfg.CLS else None
    from scgpt.loss import masked_mse_loss

    lrs = lr_recorder(optimizer)
    import logging

    train = trainer.train if task == "multiomic" else tutorial_train  # trainer.train always passes mod_types
    with GradNormRecorder(model) as rec:
        for e, loader in enumerate(epochs):
            train(
                model=model,
                loader=loader,
                vocab=vocab,
                criterion_gep_gepc=masked_mse_loss if cfg.GEP or cfg.GEPC else None,
                criterion_dab=criterion_dab,
                criterion_cls=criterion_cls,
                scaler=scaler,
                optimizer=optimizer,
                scheduler=scheduler,
                device=torch.device("cpu"),
                config=cfg,
                logger=logging.getLogger("official"),
                epoch=e + 1,
            )
            scheduler.step()
    return {
        "logged": logged,
        "total": scaler.losses,
        "grad_norms": rec.norms,
        "clip_total": rec.total,
        "lrs": lrs,
        "names": rec.names,
    }


def tutorial_train(
    model,
    loader,
    vocab,
    criterion_gep_gepc,
    criterion_dab,
    criterion_cls,
    scaler,
    optimizer,
    scheduler,
    device,
    config,
    logger,
    epoch,
) -> None:
    """The training step of Tutorial_Integration / Tutorial_Annotation (``TransformerModel`` has no ``mod_types``).

    ``scgpt.trainer.train`` passes ``mod_types=`` to every model, which only the multi-omic model accepts; this is
    the same step as the tutorials write it, term for term and in the same order, logged like ``trainer.train``.
    """
    import wandb
    from scgpt.loss import criterion_neg_log_bernoulli

    model.train()
    for batch_data in loader:
        input_gene_ids = batch_data["gene_ids"].to(device)
        input_values = batch_data["values"].to(device)
        target_values = batch_data["target_values"].to(device)
        batch_labels = batch_data["batch_labels"].to(device)
        src_key_padding_mask = input_gene_ids.eq(vocab[config.pad_token])
        output_dict = model(
            input_gene_ids,
            input_values,
            src_key_padding_mask=src_key_padding_mask,
            batch_labels=batch_labels if config.use_batch_labels or config.DSBN else None,
            CLS=config.CLS,
            MVC=config.GEPC,
            ECS=config.ESC,
        )
        masked_positions = input_values.eq(config.mask_value)
        loss = 0.0
        metrics_to_log = {}
        if config.GEP:
            loss_gep = criterion_gep_gepc(output_dict["mlm_output"], target_values, masked_positions)
            loss = loss + loss_gep
            metrics_to_log["train/gep"] = loss_gep.item()
        if config.GEP and config.explicit_zero_prob:
            loss_zero_log_prob = criterion_neg_log_bernoulli(
                output_dict["mlm_zero_probs"], target_values, masked_positions
            )
            loss = loss + loss_zero_log_prob
            metrics_to_log["train/nzlp"] = loss_zero_log_prob.item()
        if config.GEPC:
            loss_gepc = criterion_gep_gepc(output_dict["mvc_output"], target_values, masked_positions)
            loss = loss + loss_gepc
            metrics_to_log["train/mvc"] = loss_gepc.item()
        if config.GEPC and config.explicit_zero_prob:
            loss_gepc_zero_log_prob = criterion_neg_log_bernoulli(
                output_dict["mvc_zero_probs"], target_values, masked_positions
            )
            loss = loss + loss_gepc_zero_log_prob
            metrics_to_log["train/mvc_nzlp"] = loss_gepc_zero_log_prob.item()
        if config.CLS:
            loss_cls = criterion_cls(output_dict["cls_output"], batch_data["celltype_labels"].to(device))
            loss = loss + loss_cls
            metrics_to_log["train/cls"] = loss_cls.item()
        if config.ESC:
            loss_ecs = 10 * output_dict["loss_ecs"]
            loss = loss + loss_ecs
            metrics_to_log["train/ecs"] = loss_ecs.item()
        if config.DAR:
            loss_dab = criterion_dab(output_dict["dab_output"], batch_labels)
            loss = loss + config.dab_weight * loss_dab
            metrics_to_log["train/dab"] = loss_dab.item()
        model.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(
            model.parameters(), 1.0, error_if_nonfinite=False if scaler.is_enabled() else True
        )
        scaler.step(optimizer)
        scaler.update()
        wandb.log(metrics_to_log)


OFFICIAL_TERMS = {  # logged name in scgpt.trainer.train -> (our objective, factor the official logs it with)
    "train/gep": ("mlm", 1.0),
    "train/nzlp": ("mlm_zero", 1.0),
    "train/mvc": ("mvc", 1.0),
    "train/mvc_nzlp": ("mvc_zero", 1.0),
    "train/ecs": ("ecs", 10.0),
    "train/dab": ("dab", 1.0),
    "train/cls": ("cls", 1.0),
}


def terms_from_log(logged: list[dict]) -> tuple[list[str], np.ndarray]:
    names = [OFFICIAL_TERMS[k][0] for k in logged[0]]
    values = np.array([[v / OFFICIAL_TERMS[k][1] for k, v in row.items()] for row in logged], dtype=np.float64)
    return names, values


def tutorial_batches(tokenized: dict, masked: torch.Tensor, rows, extra: dict) -> dict:
    """A minibatch as the tutorials' ``SeqDataset`` yields it (``prepare_data``'s keys)."""
    rows = torch.as_tensor(rows)
    b = {
        "gene_ids": tokenized["genes"][rows],
        "values": masked[rows],
        "target_values": tokenized["values"][rows],
    }
    for key, value in extra.items():
        b[key] = torch.as_tensor(value)[rows]
    return b


def record(name: str, batches: list[dict], run: dict, model, meta: dict, weights: dict) -> dict:
    names, terms = terms_from_log(run["logged"]) if "terms" not in run else (run["term_names"], run["terms"])
    arrays = steps_arrays(batches)
    arrays.update(state_arrays(model))
    arrays["terms"] = terms
    arrays["total"] = np.asarray(run["total"], dtype=np.float64)
    arrays["grad_norms"] = np.asarray(run["grad_norms"], dtype=np.float64)
    arrays["clip_total_norm"] = np.asarray(run["clip_total"], dtype=np.float64)
    arrays["lr"] = np.asarray(run["lrs"], dtype=np.float64)
    assert arrays["terms"].shape[0] == N_STEPS == len(arrays["total"]) == len(arrays["lr"]), name
    w = np.array([weights[t] for t in names])
    np.testing.assert_allclose(arrays["terms"] @ w, arrays["total"], rtol=1e-5, err_msg=f"{name}: total != terms")
    meta = dict(meta, term_names=names, weights=weights, param_names=run["names"], n_steps=N_STEPS)
    return {"arrays": arrays, "meta": meta}


# ---------------------------------------------------------------------------- fine-tuning tasks
def annotation(adata, X) -> dict:
    """Tutorial_Annotation through ``scgpt.trainer.train``: CLS only, nothing masked, expressed genes, <cls> value 0."""
    from scgpt.tokenizer import random_mask_value, tokenize_and_pad_batch

    from scgpt.model import TransformerModel

    seed_all(SEED)
    model, vocab, _ = official_model(TransformerModel, GOLDEN / "official_annotation")
    genes = gene_subset(X, 127)
    cells = np.arange(48)
    data = binned(X[cells][:, genes])
    gene_ids = np.array(vocab(adata.var_names[genes].tolist()), dtype=int)
    tok = tokenize_and_pad_batch(
        data,
        gene_ids,
        max_len=3001,
        vocab=vocab,
        pad_token="<pad>",
        pad_value=-2,
        append_cls=True,
        include_zero_gene=False,
    )
    labels = adata.obs["bulk_labels"].cat.codes.to_numpy()[cells].astype(np.int64)
    extra = {"batch_labels": np.zeros(len(cells), dtype=np.int64), "celltype_labels": labels}
    epochs = []
    for rows in ([np.arange(0, 16), np.arange(16, 32)], [np.arange(32, 48)]):
        masked = random_mask_value(tok["values"], mask_ratio=0.0, mask_value=-1, pad_value=-2)
        epochs.append([tutorial_batches(tok, masked, r, extra) for r in rows])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-4)  # the tutorial: amp=True -> eps 1e-4
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.9)
    cfg = dict(
        GEP=False,
        GEPC=False,
        CLS=True,
        ESC=False,
        DAR=False,
        DSBN=False,
        use_batch_labels=False,
        explicit_zero_prob=False,
        use_mod=False,
        dab_weight=1.0,
    )
    run = fine_tune_loop("annotation", model, vocab, epochs, cfg, optimizer, scheduler)
    batches = [
        {"gene_ids": b["gene_ids"], "values": b["values"], "target": b["target_values"], "labels": b["celltype_labels"]}
        for ep in epochs
        for b in ep
    ]
    meta = {
        "folder": "official_annotation",
        "loop": "Tutorial_Annotation train step (CLS)",
        "optimizer": {"name": "Adam", "lr": 1e-4, "eps": 1e-4},
        "schedule": {"name": "StepLR", "step_size": 1, "gamma": 0.9, "stepped": "per epoch"},
        "epochs": [[0, 1], [2]],
        "gradient_clip": 1.0,
        "tokens": "expressed genes of 127, <cls> first with value 0, right-padded (pad -2)",
    }
    return record("annotation", batches, run, model, meta, {"cls": 1.0})


def integration(adata, X) -> dict:
    """Tutorial_Integration through ``scgpt.trainer.train``: GEP, GEPC, explicit zeros, ECS 0.8 (x10), DAB, DSBN.

    Minibatches of one batch each, batch 0 then batch 1 (``SubsetsBatchSampler``, no shuffling across batches).
    """
    from scgpt.tokenizer import random_mask_value, tokenize_and_pad_batch

    from scgpt import SubsetsBatchSampler
    from scgpt.model import TransformerModel

    seed_all(SEED + 1)
    model, vocab, _ = official_model(TransformerModel, GOLDEN / "official_integration")
    genes = gene_subset(X, 63)
    cells = np.arange(100, 132)
    data = binned(X[cells][:, genes])
    gene_ids = np.array(vocab(adata.var_names[genes].tolist()), dtype=int)
    tok = tokenize_and_pad_batch(
        data,
        gene_ids,
        max_len=64,
        vocab=vocab,
        pad_token="<pad>",
        pad_value=-2,
        append_cls=True,
        include_zero_gene=True,
    )
    batch_labels = (np.arange(len(cells)) % 2).astype(np.int64)  # interleaved in the data, sorted by the sampler
    subsets = [np.flatnonzero(batch_labels == b).tolist() for b in (0, 1)]
    extra = {"batch_labels": batch_labels}
    epochs = []
    for e in range(2):
        masked = random_mask_value(tok["values"], mask_ratio=0.4, mask_value=-1, pad_value=-2)
        sampler = SubsetsBatchSampler(subsets, 16, intra_subset_shuffle=True, inter_subset_shuffle=False)
        rows = list(sampler)
        epochs.append([tutorial_batches(tok, masked, r, extra) for r in (rows if e == 0 else rows[:1])])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-4)  # the tutorial: amp=True -> eps 1e-4
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.9)
    cfg = dict(
        GEP=True,
        GEPC=True,
        CLS=False,
        ESC=True,
        DAR=True,
        DSBN=True,
        use_batch_labels=True,
        explicit_zero_prob=True,
        use_mod=False,
        dab_weight=1.0,
    )
    run = fine_tune_loop("integration", model, vocab, epochs, cfg, optimizer, scheduler)
    batches = [
        {
            "gene_ids": b["gene_ids"],
            "values": b["values"],
            "target": b["target_values"],
            "batch_labels": b["batch_labels"],
        }
        for ep in epochs
        for b in ep
    ]
    meta = {
        "folder": "official_integration",
        "loop": "Tutorial_Integration train step",
        "optimizer": {"name": "Adam", "lr": 1e-4, "eps": 1e-4},
        "schedule": {"name": "StepLR", "step_size": 1, "gamma": 0.9, "stepped": "per epoch"},
        "epochs": [[0, 1], [2]],
        "gradient_clip": 1.0,
        "tokens": "63 genes with zeros, <cls> first with value 0; random_mask_value(0.4, -1, pad -2) per epoch",
        "ecs_threshold": 0.8,
    }
    weights = {"mlm": 1.0, "mlm_zero": 1.0, "mvc": 1.0, "mvc_zero": 1.0, "ecs": 10.0, "dab": 1.0}
    return record("integration", batches, run, model, meta, weights)


def multiomic(adata, X) -> dict:
    """Tutorial_Multiomics through ``scgpt.trainer.train``: GEP + GEPC + DAR, batch labels and modality ids."""
    from scgpt.tokenizer import random_mask_value

    from scgpt.model import MultiOmicTransformerModel

    seed_all(SEED + 2)
    model, vocab, args = official_model(MultiOmicTransformerModel, GOLDEN / "official_multiomic")
    z = np.load(GOLDEN / "multiomic_io.npz")
    genes = torch.from_numpy(z["gene_ids"])
    values = torch.from_numpy(z["values"]).clone()
    values[:, 0] = 0.0  # tokenize_and_pad_batch of the tutorial: <cls> value 0
    tok = {"genes": genes, "values": values}
    extra = {"batch_labels": z["batch_labels"], "mod_types": z["mod_types"]}
    epochs = []
    for e in range(2):
        masked = random_mask_value(values, mask_ratio=0.4, mask_value=-1, pad_value=-2)
        order = torch.randperm(len(genes))  # DataLoader(shuffle=True): minibatches mix the batches
        rows = [order[:8], order[8:]] if e == 0 else [order[:8]]
        epochs.append([tutorial_batches(tok, masked, r, extra) for r in rows])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-4)  # tutorial: lr 1e-3, amp -> eps 1e-4
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.95)
    cfg = dict(
        GEP=True,
        GEPC=True,
        CLS=False,
        ESC=False,
        DAR=True,
        DSBN=False,
        use_batch_labels=True,
        explicit_zero_prob=False,
        use_mod=True,
        dab_weight=1.0,
    )
    run = fine_tune_loop("multiomic", model, vocab, epochs, cfg, optimizer, scheduler)
    batches = [
        {
            "gene_ids": b["gene_ids"],
            "values": b["values"],
            "target": b["target_values"],
            "batch_labels": b["batch_labels"],
            "mod_types": b["mod_types"],
        }
        for ep in epochs
        for b in ep
    ]
    meta = {
        "folder": "official_multiomic",
        "loop": "scgpt.trainer.train (task='multiomic')",
        "optimizer": {"name": "Adam", "lr": 1e-3, "eps": 1e-4},
        "schedule": {"name": "StepLR", "step_size": 1, "gamma": 0.95, "stepped": "per epoch"},
        "epochs": [[0, 1], [2]],
        "gradient_clip": 1.0,
        "tokens": "multiomic_io.npz cells, <cls> value 0, random_mask_value(0.4) per epoch, mixed batches",
    }
    return record("multiomic", batches, run, model, meta, {"mlm": 1.0, "mvc": 1.0, "dab": 1.0})


def perturbation(adata, X) -> dict:
    """Tutorial_Perturbation's ``train`` written out: all genes of the panel, a random subset of ``max_seq_len``."""
    from scgpt.loss import masked_mse_loss
    from scgpt.utils import map_raw_id_to_vocab_id

    from scgpt.model import TransformerGenerator

    seed_all(SEED + 3)
    model, vocab, _ = official_model(TransformerGenerator, GOLDEN / "official_perturbation")
    z = np.load(GOLDEN / "perturbation_io.npz")
    n_genes = z["values"].shape[1]
    gene_ids = np.array(vocab(adata.var_names.tolist()), dtype=int)  # the panel -> vocabulary (tutorial's gene_ids)
    assert (gene_ids == z["gene_ids"][0]).all()
    ctrl = torch.from_numpy(z["values"])  # (16, n_genes) control cells' log1p values
    flags = torch.from_numpy(z["pert_flags"])
    rng = np.random.default_rng(3)
    target = torch.from_numpy(
        np.log1p(rng.poisson(np.expm1(z["values"][rng.permutation(16)]) + 0.1)).astype(np.float32)
    )
    max_seq_len = 128
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.9)
    lrs = lr_recorder(optimizer)
    totals, terms, batches = [], [], []
    model.train()
    with GradNormRecorder(model) as rec:
        for epoch_rows in ([np.arange(0, 8), np.arange(8, 16)], [np.arange(0, 8)]):
            for rows in epoch_rows:
                batch_size = len(rows)
                ori_gene_values, pert_flags, target_gene_values = ctrl[rows], flags[rows], target[rows]
                input_gene_ids = torch.arange(n_genes, dtype=torch.long)
                if len(input_gene_ids) > max_seq_len:
                    input_gene_ids = torch.randperm(len(input_gene_ids))[:max_seq_len]
                input_values = ori_gene_values[:, input_gene_ids]
                input_pert_flags = pert_flags[:, input_gene_ids]
                target_values = target_gene_values[:, input_gene_ids]
                mapped = map_raw_id_to_vocab_id(input_gene_ids, gene_ids).repeat(batch_size, 1)
                src_key_padding_mask = torch.zeros_like(input_values, dtype=torch.bool)
                out = model(
                    mapped,
                    input_values,
                    input_pert_flags,
                    src_key_padding_mask=src_key_padding_mask,
                    CLS=False,
                    CCE=False,
                    MVC=False,
                    ECS=False,
                )
                masked_positions = torch.ones_like(input_values, dtype=torch.bool)
                loss = loss_mse = masked_mse_loss(out["mlm_output"], target_values, masked_positions)
                model.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)
                optimizer.step()
                totals.append(float(loss))
                terms.append([float(loss_mse)])
                batches.append(
                    {
                        "gene_ids": mapped,
                        "values": input_values,
                        "target": target_values,
                        "pert_flags": input_pert_flags,
                    }
                )
            scheduler.step()
    run = {
        "terms": np.array(terms),
        "term_names": ["mlm"],
        "total": totals,
        "grad_norms": rec.norms,
        "clip_total": rec.total,
        "lrs": lrs,
        "names": rec.names,
    }
    meta = {
        "folder": "official_perturbation",
        "loop": "Tutorial_Perturbation train() with the official modules",
        "optimizer": {"name": "Adam", "lr": 1e-4, "eps": 1e-8},
        "schedule": {"name": "StepLR", "step_size": 1, "gamma": 0.9, "stepped": "per epoch"},
        "epochs": [[0, 1], [2]],
        "gradient_clip": 1.0,
        "tokens": f"include_zero_gene='all' over {n_genes} genes, randperm subset of {max_seq_len}, no padding",
    }
    return record("perturbation", batches, run, model, meta, {"mlm": 1.0})


# ---------------------------------------------------------------------------- pretraining
def cosine_schedule(optimizer, warmup: int, total: int):
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total, last_epoch=-1)


def base_examples() -> list[dict]:
    """The 64 official-binned cells of ``base_model_io.npz`` (trimmed vocabulary), <cls> first with value -2."""
    z = np.load(GOLDEN / "base_model_io.npz")
    out = []
    for g, v, m in zip(z["gene_ids"], z["values"], z["padding_mask"]):
        out.append({"genes": torch.from_numpy(g[~m].copy()), "expressions": torch.from_numpy(v[~m].copy())})
    return out


def pretrain_masked() -> dict:
    """examples/pretrain.py, ``--training-tasks pcpt``: MSE + MVC on masked values, 0.2.4 model and collator."""
    from scgpt.loss import masked_mse_loss
    from scgpt.tokenizer import GeneVocab

    from scgpt import DataCollator
    from scgpt.model import TransformerModel

    seed_all(SEED + 4)
    folder = GOLDEN / "official_base"
    args = json.loads((folder / "args.json").read_text())
    vocab = GeneVocab.from_file(folder / "vocab.json")
    model = TransformerModel(
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
        pad_value=-2,
        do_mvc=True,
        use_fast_transformer=False,
    )
    model.load_state_dict(torch.load(folder / "best_model.pt", map_location="cpu"), strict=True)
    collator = DataCollator(
        do_padding=True,
        pad_token_id=vocab["<pad>"],
        pad_value=-2,
        do_mlm=True,
        do_binning=False,
        mlm_probability=0.4,
        mask_value=-1,
        max_length=128,
        sampling=True,
    )
    examples = base_examples()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scheduler = cosine_schedule(optimizer, warmup=2, total=4)
    lrs = lr_recorder(optimizer)
    totals, terms, batches = [], [], []
    model.train()
    with GradNormRecorder(model) as rec:
        for step in range(N_STEPS):
            data = collator([dict(e) for e in examples[16 * step : 16 * step + 16]])
            input_gene_ids, input_values, target_values = data["gene"], data["masked_expr"], data["expr"]
            src_key_padding_mask = input_gene_ids.eq(vocab["<pad>"])
            out = model(
                input_gene_ids, input_values, src_key_padding_mask=src_key_padding_mask, CLS=False, CCE=False, MVC=True
            )
            positions = input_values.eq(-1)
            loss = loss_mse = masked_mse_loss(out["mlm_output"], target_values, positions)
            loss_mvc = masked_mse_loss(out["mvc_output"], target_values, positions)
            loss = loss + loss_mvc
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            totals.append(float(loss))
            terms.append([float(loss_mse), float(loss_mvc)])
            batches.append({"gene_ids": input_gene_ids, "values": input_values, "target": target_values})
    run = {
        "terms": np.array(terms),
        "term_names": ["mlm", "mvc"],
        "total": totals,
        "grad_norms": rec.norms,
        "clip_total": rec.total,
        "lrs": lrs,
        "names": rec.names,
    }
    meta = {
        "folder": "official_base",
        "loop": "examples/pretrain.py (dev-temp), pcpt branch, with the 0.2.4 model",
        "optimizer": {"name": "Adam", "lr": 1e-4, "eps": 1e-8},
        "schedule": {"name": "get_cosine_schedule_with_warmup", "warmup": 2, "total": 4, "stepped": "per batch"},
        "gradient_clip": 1.0,
        "tokens": "DataCollator(do_mlm, p=0.4, Bernoulli per position, <cls> value -2 never masked, max 128)",
    }
    return record("pretrain_masked", batches, run, model, meta, {"mlm": 1.0, "mvc": 1.0})


def dev_temp_package(official_git: Path) -> types.ModuleType:
    """The dev-temp ``scgpt.model`` and ``data_collator`` as a throw-away package ``scgpt_devtemp``.

    Read from a clone of the official repository at :data:`DEV_TEMP` into a temporary folder (never into this
    repository), with a stand-in ``flash_attn`` whose ``FlashAttention`` is plain softmax attention on CPU.
    """
    root = Path(tempfile.mkdtemp(prefix="scgpt_devtemp_"))
    pkg = root / "scgpt_devtemp"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "__init__.py").write_text("")
    for rel in (*DEV_FILES, "data_collator.py", "preprocess.py"):
        text = subprocess.run(
            ["git", f"--git-dir={official_git}", "show", f"{DEV_TEMP}:scgpt/{rel}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (pkg / rel).write_text(text)
    (pkg / "preprocess.py").write_text("from scgpt.preprocess import binning  # noqa: F401\n")  # only binning is used
    flash = root / "flash_attn"
    (flash / "modules").mkdir(parents=True)
    (flash / "__init__.py").write_text("")
    (flash / "modules" / "__init__.py").write_text("")
    (flash / "modules" / "mha.py").write_text("class FlashCrossAttention:\n    pass\n")
    (flash / "flash_attn_interface.py").write_text(
        "def flash_attn_unpadded_qkvpacked_func(*a, **k):\n    raise NotImplementedError\n"
    )
    (flash / "bert_padding.py").write_text(
        "def unpad_input(*a, **k):\n    raise NotImplementedError\n\n\npad_input = unpad_input\n"
    )
    (flash / "flash_attention.py").write_text(
        '''"""CPU stand-in for flash-attn v1's FlashAttention: the same softmax attention, in float32."""
import math

import torch
from torch import nn


class FlashAttention(nn.Module):
    def __init__(self, softmax_scale=None, attention_dropout=0.0):
        super().__init__()
        self.softmax_scale = softmax_scale
        self.dropout_p = attention_dropout

    def forward(self, qkv, key_padding_mask=None, causal=False, cu_seqlens=None, max_s=None, need_weights=False):
        # qkv: (B, S, 3, H, D); key_padding_mask: (B, S) bool, True = keep (flash-attn convention)
        q, k, v = qkv.unbind(dim=2)
        scale = self.softmax_scale or 1.0 / math.sqrt(q.shape[-1])
        scores = torch.einsum("bshd,bthd->bhst", q, k) * scale
        if key_padding_mask is not None:
            scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        out = torch.einsum("bhst,bthd->bshd", attn, v)
        if key_padding_mask is not None:  # flash-attn unpads and pads back: padded queries come out as zeros
            out = out * key_padding_mask[:, :, None, None].to(out.dtype)
        return out, None


class FlashMHA(nn.Module):
    pass
'''
    )
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    return importlib.import_module("scgpt_devtemp")


def pretrain_generative(official_git: Path) -> dict:
    """examples/pretrain.py (dev-temp), ``--training-tasks both``: generated-gene MSE + MVC on the generated part,
    the cell-prompt pass (active: ``global_iter > 1000``), cosine schedule with warm-up per batch, clipping at 1.0."""
    dev = dev_temp_package(official_git)
    from scgpt.loss import masked_mse_loss
    from scgpt.tokenizer import GeneVocab

    model_mod = importlib.import_module("scgpt_devtemp.model.model")
    collator_mod = importlib.import_module("scgpt_devtemp.data_collator")
    assert dev is not None and hasattr(model_mod, "FlashscGPTGenerator"), "the dev-temp generative layers did not load"

    seed_all(SEED + 5)
    folder = GOLDEN / "official_base_flash"  # the released layout: Wqkv names and flag_encoder, as dev-temp's model
    args = json.loads((folder / "args.json").read_text())
    vocab = GeneVocab.from_file(folder / "vocab.json")
    model = model_mod.TransformerModel(
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
        pad_value=-2,
        do_mvc=True,
        use_batch_labels=False,
        use_generative_training=True,
        use_fast_transformer=True,
    )
    model.load_state_dict(torch.load(folder / "best_model.pt", map_location="cpu"), strict=True)
    collator = collator_mod.DataCollator(
        do_padding=True,
        pad_token_id=vocab["<pad>"],
        pad_value=-2,
        do_mlm=True,
        do_binning=False,
        mlm_probability=[0.25, 0.5, 0.75],
        mask_value=-1,
        max_length=128,
        sampling=True,
        data_style="both",
    )
    examples = base_examples()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scheduler = cosine_schedule(optimizer, warmup=2, total=4)
    lrs = lr_recorder(optimizer)
    totals, terms, batches = [], [], []
    model.train()
    with GradNormRecorder(model) as rec:
        for step in range(N_STEPS):
            global_iter = 1001 + step  # the cell-prompt pass runs from global_iter > 1000
            data = collator([dict(e) for e in examples[16 * step : 16 * step + 16]])
            pcpt_gene, pcpt_expr = data["pcpt_gene"], data["pcpt_expr"]
            gen_gene, gen_expr_target = data["gen_gene"], data["gen_expr_target"]
            pcpt_key_padding_mask = pcpt_gene.eq(vocab["<pad>"])
            gen_key_padding_mask = gen_gene.eq(vocab["<pad>"])
            out = model(
                pcpt_gene,
                pcpt_expr,
                pcpt_key_padding_mask,
                gen_gene,
                gen_key_padding_mask,
                CLS=False,
                MVC=True,
                generative_training=True,
            )
            positions_to_match = ~gen_key_padding_mask
            loss = loss_mse = masked_mse_loss(out["gen_preds"], gen_expr_target, positions_to_match)
            loss_mvc = masked_mse_loss(out["mvc_output"][:, pcpt_gene.shape[1] :], gen_expr_target, positions_to_match)
            loss = loss + loss_mvc
            assert global_iter > 1000
            previous_cell_embs = out["cell_emb"].detach()
            preds = model(
                pcpt_gene,
                pcpt_expr,
                pcpt_key_padding_mask,
                gen_gene,
                gen_key_padding_mask,
                CLS=False,
                MVC=False,
                input_cell_emb=previous_cell_embs,
                generative_training=True,
            )["gen_preds"]
            loss_gen = masked_mse_loss(preds, gen_expr_target, positions_to_match)
            loss = loss + loss_gen
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            totals.append(float(loss))
            terms.append([float(loss_mse), float(loss_mvc), float(loss_gen)])
            # one sequence per cell, as ours: the known part (<cls> first), then the generated part
            genes = torch.cat([pcpt_gene, gen_gene], dim=1)
            values = torch.cat([pcpt_expr, torch.full_like(gen_expr_target, -2.0)], dim=1)
            target = torch.cat([pcpt_expr, gen_expr_target], dim=1)
            gen_mask = torch.cat([torch.zeros_like(pcpt_key_padding_mask), ~gen_key_padding_mask], dim=1)
            batches.append(
                {
                    "gene_ids": genes,
                    "values": values,
                    "target": target,
                    "gen_mask": gen_mask,
                    "n_pcpt": torch.tensor(pcpt_gene.shape[1]),
                }
            )
    run = {
        "terms": np.array(terms),
        "term_names": ["mlm", "mvc", "cell_prompt"],
        "total": totals,
        "grad_norms": rec.norms,
        "clip_total": rec.total,
        "lrs": lrs,
        "names": rec.names,
    }
    meta = {
        "folder": "official_base_flash",
        "loop": "examples/pretrain.py (dev-temp), training_tasks='both'",
        "dev_temp_commit": DEV_TEMP,
        "flash_attn": "CPU stand-in (softmax attention, same scale, same padding)",
        "optimizer": {"name": "Adam", "lr": 1e-4, "eps": 1e-8},
        "schedule": {"name": "get_cosine_schedule_with_warmup", "warmup": 2, "total": 4, "stepped": "per batch"},
        "gradient_clip": 1.0,
        "cell_prompt": "active at every step (global_iter 1001-1003)",
        "tokens": "DataCollator(data_style='both', ratios 0.25/0.5/0.75 per batch, max 128); stored as one "
        "sequence per cell: the known part, then the generated part (gen_mask)",
    }
    return record("pretrain_generative", batches, run, model, meta, {"mlm": 1.0, "mvc": 1.0, "cell_prompt": 1.0})


# ---------------------------------------------------------------------------- collation (masking, sampling, padding)
def collation(adata, X) -> dict:
    """The official tokenizer, padding, sampling and masking on 16 cells, for the tests of our collator.

    ``values`` are the official bins of 127 genes (fed to our collator un-binned). Cases: ``fine``
    (``tokenize_and_pad_batch(include_zero_gene=False, max_len=3001)`` + ``random_mask_value(0.4)``), ``zeros``
    (``include_zero_gene=True``), ``sampled`` (``max_len=32``: a random subset, ``<cls>`` kept first).
    """
    from scgpt.tokenizer import GeneVocab, random_mask_value, tokenize_and_pad_batch

    seed_all(SEED + 6)
    vocab = GeneVocab.from_file(GOLDEN / "official_integration" / "vocab.json")
    genes = gene_subset(X, 127)
    cells = np.arange(200, 216)
    data = binned(X[cells][:, genes])
    gene_ids = np.array(vocab(adata.var_names[genes].tolist()), dtype=int)
    arrays = {"data": data, "gene_ids": gene_ids}
    for case, zeros, max_len in (("fine", False, 3001), ("zeros", True, 3001), ("sampled", False, 32)):
        tok = tokenize_and_pad_batch(
            data,
            gene_ids,
            max_len=max_len,
            vocab=vocab,
            pad_token="<pad>",
            pad_value=-2,
            append_cls=True,
            include_zero_gene=zeros,
        )
        masked = random_mask_value(tok["values"], mask_ratio=0.4, mask_value=-1, pad_value=-2)
        arrays[f"{case}::genes"] = tok["genes"].numpy()
        arrays[f"{case}::values"] = tok["values"].numpy()
        arrays[f"{case}::masked"] = masked.numpy()
    meta = {
        "cells": "pbmc68k cells 200-215, 127 most-detected genes, official bins",
        "pad_id": vocab["<pad>"],
        "cls_id": vocab["<cls>"],
        "pad_value": -2,
        "mask_value": -1,
        "mask_ratio": 0.4,
    }
    return {"arrays": arrays, "meta": meta}


# ---------------------------------------------------------------------------- the loss functions at the edges
def losses() -> dict:
    """``masked_mse_loss`` and ``criterion_neg_log_bernoulli`` on probabilities at and near 0 and 1.

    Trained models push zero probabilities to the edges (an independent check found 923 of 16,032 masked
    positions outside [1e-6, 1 - 1e-6] in an integration batch); the fine-tuning batches above do not reach them.
    """
    from scgpt.loss import criterion_neg_log_bernoulli, masked_mse_loss

    g = torch.Generator().manual_seed(7)
    edges = torch.tensor([0.0, 1e-12, 1e-9, 1e-7, 1e-6, 1e-3, 0.5, 1 - 1e-3, 1 - 1e-6, 1 - 1e-7, 1 - 1e-9, 1.0])
    prob = torch.cat([edges.repeat(4), torch.rand(48, generator=g)]).reshape(8, 12)
    target = torch.where(torch.rand(8, 12, generator=g) < 0.5, 0.0, torch.randint(1, 51, (8, 12), generator=g).float())
    pred = torch.randn(8, 12, generator=g) * 10
    mask = torch.rand(8, 12, generator=g) < 0.7
    arrays = {
        "prob": prob.numpy(),
        "target": target.numpy(),
        "pred": pred.numpy(),
        "mask": mask.numpy(),
        "neg_log_bernoulli": np.float64(criterion_neg_log_bernoulli(prob, target, mask)),
        "masked_mse": np.float64(masked_mse_loss(pred, target, mask)),
    }
    return {"arrays": arrays, "meta": {"what": "official loss functions on fixed tensors (probabilities at the edges)"}}


# ---------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "golden_training")
    parser.add_argument(
        "--official-git",
        type=Path,
        default=Path(os.environ.get("SCGPT_OFFICIAL_GIT", "")),
        help="git directory of a clone of bowang-lab/scGPT (for the dev-temp pretraining code)",
    )
    opts = parser.parse_args()
    import scgpt

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    adata, X = pbmc_counts()
    outputs = {
        "annotation": annotation(adata, X),
        "integration": integration(adata, X),
        "multiomic": multiomic(adata, X),
        "perturbation": perturbation(adata, X),
        "pretrain_masked": pretrain_masked(),
        "pretrain_generative": pretrain_generative(opts.official_git),
        "collation": collation(adata, X),
        "losses": losses(),
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    import transformers

    manifest = {
        "versions": {
            "scgpt": scgpt.__version__,
            "scgpt_dev_temp_commit": DEV_TEMP,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "transformers": transformers.__version__,
            "python": sys.version.split()[0],
        },
        "settings": {"dropout": 0.0, "amp": False, "threads": 1, "steps": N_STEPS},
        "files": {},
    }
    for name, result in outputs.items():
        path = opts.out / f"{name}.npz"
        np.savez_compressed(path, **result["arrays"])
        manifest["files"][path.name] = {"sha256": sha256(path), "bytes": path.stat().st_size, **result["meta"]}
        print(f"{path.name}: {path.stat().st_size / 1024:.0f} KiB")
    (opts.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for name in ("annotation", "integration", "multiomic", "perturbation", "pretrain_masked", "pretrain_generative"):
        r = outputs[name]
        print(name, "terms", np.round(r["arrays"]["terms"], 5).tolist(), "lr", r["arrays"]["lr"].tolist())


if __name__ == "__main__":
    main()
