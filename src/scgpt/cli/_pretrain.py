"""``scgpt pretrain``: pretrain a new model, or continue pretraining one, on ``.h5ad`` files."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._logging import logger
from ..model import TASKS
from ._common import (
    PBMC68K,
    TRAINING_EPILOG,
    CLIError,
    HelpFormatter,
    add_common,
    add_data,
    add_training,
    check_input,
    load_model,
    prepare_output,
    read_h5ad,
    read_training_data,
    train_and_save,
)

if TYPE_CHECKING:
    from anndata import AnnData

    from ..model import ScGPT, Task
    from ..train import Recipe, ScGPTDataModule

ARCHITECTURE = ("d_model", "n_layers", "n_heads", "d_hid", "dropout")
PRETRAIN_TASKS = tuple(name for name, task in TASKS.items() if task.stage == "pretrain")
LAZY_CHUNK_SIZE = 64
"""Cells per contiguous chunk when shuffling on-disk files (``--lazy``)."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``pretrain`` subcommand to ``sub``."""
    p = sub.add_parser(
        "pretrain",
        formatter_class=HelpFormatter,
        help="pretrain a model from scratch or continue pretraining",
        description="Pretrain scGPT on .h5ad files of raw counts: a new model (architecture options) or continued\n"
        "pretraining of --model.",
        epilog=TRAINING_EPILOG,
    )
    add_data(p, several=True)
    p.add_argument(
        "--lazy",
        action="store_true",
        help="read the input files from disk during training instead of loading them (larger-than-memory data)",
    )
    p.add_argument("--model", metavar="PATH", help="model folder or 'demo' to continue from (default: a new model)")
    p.add_argument(
        "--recipe",
        choices=PRETRAIN_TASKS,
        default="pretrain",
        help="; ".join(f"{name}: {TASKS[name].summary}" for name in PRETRAIN_TASKS),
    )
    g = p.add_argument_group("new model (without --model)")
    g.add_argument("--d-model", type=int, metavar="N", help="embedding width (default: 512)")
    g.add_argument("--n-layers", type=int, metavar="N", help="transformer layers (default: 12)")
    g.add_argument("--n-heads", type=int, metavar="N", help="attention heads (default: 8)")
    g.add_argument("--d-hid", type=int, metavar="N", help="feed-forward width (default: 512)")
    g.add_argument("--dropout", type=float, metavar="P", help="dropout (default: 0.2)")
    g.add_argument(
        "--vocab",
        default="inputs",
        metavar="inputs|census|FILE",
        help="gene vocabulary: the genes of the input files, the bundled CELLxGENE census vocabulary of scGPT_human, "
        "or a vocab.json",
    )
    add_training(p, finetune=False)
    add_common(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> None:
    """Pretrain a new model (or ``--model``) on the input files with the task of ``--recipe``; save both formats."""
    given = [f"--{k.replace('_', '-')}" for k in ARCHITECTURE if getattr(args, k) is not None]
    if args.model is not None and (given or args.vocab != "inputs"):
        raise CLIError(
            f"{', '.join(given + ['--vocab'] * (args.vocab != 'inputs'))}: only for a new model "
            "(the architecture and vocabulary of --model are kept)"
        )
    for p in args.input:
        check_input(p)
        if args.lazy and p == PBMC68K:
            raise CLIError(f"--input {PBMC68K} is held in memory; drop --lazy")
    task = TASKS[args.recipe]
    out = prepare_output(args)
    adata = None if args.lazy else read_training_data(args.input, args.layer, args.gene_key)
    import torch

    torch.manual_seed(args.seed)  # new models and new heads draw their initial weights from torch's global RNG
    if args.model is None:
        model = _new_model(args, adata, task)
    else:
        model = load_model(args.model, generative=task.recipe.masking == "generative")
        changes = task.heads(model.config, {})
        if any(getattr(model.config, k) != v for k, v in changes.items()):  # e.g. a model.pt folder
            model = model.adapt(**changes)
    if adata is None:
        recipe = task.recipe if args.max_length is None else task.recipe.replace(max_length=args.max_length)
        datamodule = _lazy_datamodule(model, args, recipe)  # tokenised with --max-length already
        train = functools.partial(model.train, recipe=recipe, datamodule=datamodule)
        train_and_save(train, args, out, max_length=None)
    else:
        model.setup_anndata(adata)
        train = functools.partial(model.train, adata, recipe=task.name, train_size=args.train_size)
        train_and_save(train, args, out)


def _input_genes(paths: Sequence[str], gene_key: str | None) -> list[str]:
    """Gene names of the input files, in order of first appearance (read without loading the matrices)."""
    from ..data import gene_names

    genes: dict[str, None] = {}
    for p in paths:
        adata = read_h5ad(p, backed=True)
        genes.update(dict.fromkeys(gene_names(adata, gene_key)))
        if adata.isbacked:
            adata.file.close()
    return list(genes)


def _new_model(args: argparse.Namespace, adata: AnnData | None, task: Task) -> ScGPT:
    """Build a freshly initialised model from the architecture and vocabulary options of ``pretrain``.

    ``adata``: the training data in memory, ``None`` with ``--lazy`` (gene names are then read from the files).
    """
    from ..data import GeneVocab
    from ..model import ScGPT

    if args.vocab == "census":
        vocab = GeneVocab.default()
    elif args.vocab == "inputs":
        vocab = GeneVocab.from_genes(adata.var_names if adata is not None else _input_genes(args.input, args.gene_key))
    else:
        if not Path(args.vocab).expanduser().is_file():
            raise CLIError(f"--vocab: no such file: {args.vocab} (or use 'inputs' or 'census')")
        vocab = GeneVocab.from_file(Path(args.vocab).expanduser())
    arch = {k: getattr(args, k) for k in ARCHITECTURE if getattr(args, k) is not None}
    model = ScGPT(vocab=vocab, **arch)
    changes = task.heads(model.config, {})
    model = model.adapt(**changes) if changes else model
    logger.info(f"new {model!r}")
    return model


def _lazy_datamodule(model: ScGPT, args: argparse.Namespace, recipe: Recipe) -> ScGPTDataModule:
    """Training data read from the input files during training (:class:`~scgpt.data.H5adCollection`)."""
    from ..data import H5adCollection

    source = H5adCollection(args.input, model.vocab, gene_key=args.gene_key, layer=args.layer)
    logger.info(f"reading {source.n_obs:,} cells from {len(args.input)} file(s) on disk during training")
    return model.make_datamodule(
        source,
        recipe,
        batch_size=args.batch_size,
        train_size=args.train_size,
        seed=args.seed,
        chunk_size=LAZY_CHUNK_SIZE,
    )
