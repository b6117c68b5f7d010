"""``scgpt finetune``: fine-tune a model for a task of the registry (:meth:`scgpt.model.ScGPT.finetune`)."""

from __future__ import annotations

import argparse
import functools

from ..model import TASKS
from ._common import (
    TRAINING_EPILOG,
    CLIError,
    HelpFormatter,
    add_common,
    add_data,
    add_organism,
    add_training,
    check_input,
    load_model,
    prepare_output,
    read_h5ad,
    species_options,
    train_and_save,
)

FINETUNE_TASKS = tuple(name for name, task in TASKS.items() if task.stage == "finetune")
_OPTIONS = {"labels_key": "--labels-key", "batch_key": "--batch-key"}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``finetune`` subcommand to ``sub``."""
    tasks = "\n".join(
        f"  {name:<12} {TASKS[name].summary}"
        + (f"; needs {', '.join(_OPTIONS[k] for k in TASKS[name].requires)}" if TASKS[name].requires else "")
        for name in FINETUNE_TASKS
    )
    p = sub.add_parser(
        "finetune",
        formatter_class=HelpFormatter,
        help="fine-tune a model for cell-type annotation or integration",
        description="Fine-tune a pretrained model for a task, with the official recipe and settings (which the\n"
        f"training options override):\n\n{tasks}",
        epilog=TRAINING_EPILOG,
    )
    p.add_argument("--model", required=True, metavar="PATH", help="pretrained model folder or 'demo'")
    add_data(p, several=False)
    p.add_argument("--recipe", choices=FINETUNE_TASKS, required=True, help="the task to fine-tune for")
    p.add_argument("--labels-key", metavar="KEY", help="obs column with cell types (annotation)")
    p.add_argument("--batch-key", metavar="KEY", help="obs column with batches (integration)")
    add_organism(p)
    add_training(p, finetune=True)
    add_common(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> None:
    """``model.finetune(--recipe, input, ...)``, then both model formats into ``--output``."""
    task = TASKS[args.recipe]
    for key in task.requires:
        if getattr(args, key) is None:
            raise CLIError(f"--recipe {task.name} needs {_OPTIONS[key]}")
    check_input(args.input)
    out = prepare_output(args)
    model = load_model(args.model)
    adata = read_h5ad(args.input)
    finetune = functools.partial(
        model.finetune,
        task.name,
        adata,
        **{key: getattr(args, key) for key in task.requires},
        layer=args.layer,
        gene_key=args.gene_key,
        **species_options(args),
    )
    options = {k: getattr(args, k) for k in ("adapter", "adapter_rank", "adapter_alpha", "adapter_dropout")}
    train_and_save(
        finetune, args, out, validation_size=args.validation_size, freeze_layers=args.freeze_layers, **options
    )
