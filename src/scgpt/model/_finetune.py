"""``ScGPT.finetune(task, adata, ...)``: one path for every task of the registry.

The task's data hook (:meth:`Task.data_hook <scgpt.model.Task.data_hook>`) reads and splits the data,
the task adds its heads (:attr:`Task.heads <scgpt.model.Task.heads>`), the hook builds the data module
for the adapted model, and :meth:`~scgpt.model.ScGPT.train` trains the task's objectives with its official
settings, which the caller's arguments override.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._docs import doc_params
from .._logging import caller, calling, logger, warn
from ..data import check_adata
from ._tasks import Task, get_task

if TYPE_CHECKING:
    from anndata import AnnData


def freeze(model, freeze_layers: int) -> None:
    """Keep the gene/value encoders and the first ``freeze_layers`` transformer layers fixed (0: train all)."""
    n_layers = model.config.n_layers
    if not 0 <= freeze_layers <= n_layers:
        raise ValueError(f"freeze_layers must be between 0 and {n_layers}, got {freeze_layers}.")
    frozen = [model.net.encoder, model.net.value_encoder, *model.net.transformer_encoder.layers[:freeze_layers]]
    for module in frozen if freeze_layers else []:
        module.requires_grad_(False)


def prepare(
    model,
    base,
    freeze_layers: int = 0,
    *,
    adapter: str | None = None,
    adapter_rank: int = 8,
    adapter_alpha: float = 16,
    adapter_dropout: float = 0.0,
    adapter_modules: Sequence[str] | None = None,
) -> None:
    """Before fine-tuning ``model`` (``base`` with its task heads): freeze layers, or put adapters on it."""
    if adapter is None:
        options = {"adapter_rank": (adapter_rank, 8), "adapter_alpha": (adapter_alpha, 16)}
        options.update(adapter_dropout=(adapter_dropout, 0.0), adapter_modules=(adapter_modules, None))
        given = [k for k, (value, default) in options.items() if value != default]
        if given:
            warn(f"{', '.join(given)} set the adapters of adapter='lora'; without adapter= they are ignored.")
        freeze(model, freeze_layers)
        return
    if freeze_layers:
        raise ValueError(
            f"freeze_layers={freeze_layers} and adapter={adapter!r} are alternatives (adapters keep every pretrained "
            "weight fixed already); pass one of them."
        )
    from ._adapters import add_adapter

    add_adapter(
        model,
        adapter,
        base=base,
        rank=adapter_rank,
        alpha=adapter_alpha,
        dropout=adapter_dropout,
        modules=adapter_modules,
    )


def unfreeze(model) -> None:
    """After fine-tuning: a plain model trains all its weights again; an adapter model its adapters and heads."""
    from ._adapters import has_adapter, set_trainable

    if has_adapter(model.net):
        set_trainable(model.net)
    else:
        for p in model.net.parameters():
            p.requires_grad_(True)


def split_plan_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(plan_kwargs, trainer_kwargs)`` of a flat dict of training options (``None`` plan values dropped)."""
    from ..train import PLAN_OPTIONS

    plan = {k: options[k] for k in PLAN_OPTIONS if options.get(k) is not None}
    rest = {k: v for k, v in options.items() if k not in PLAN_OPTIONS}
    return plan, rest


def _announce_training(model, data, task: Task, max_epochs: int | None, options: dict[str, Any]) -> None:
    """Log the fine-tuning about to start and its estimated duration on this device, with the knobs that shorten it."""
    import torch

    from ._device import resolve_device
    from ._estimate import announce, estimate

    tokens = data.training_tokens()
    if not len(tokens):
        return
    epochs = task.defaults.get("max_epochs", 10) if max_epochs is None else max_epochs
    steps = options.get("max_steps", -1)
    passes = float(epochs)
    if steps is not None and steps > 0:
        per_epoch = max(1, -(-len(tokens) // int(task.defaults.get("batch_size", 32))))
        passes = min(passes, steps / per_epoch)
    accelerator = str(options.get("accelerator", "auto"))
    device = resolve_device("cpu" if accelerator == "cpu" else "cuda" if accelerator in ("gpu", "cuda") else None)
    precision = str(options.get("precision", "32-true"))
    dtype = torch.bfloat16 if "bf16" in precision else torch.float16 if precision.startswith("16") else torch.float32
    flops, seconds = estimate(model.config, tokens, device=device, dtype=dtype, kind="training", passes=passes)
    knobs = "max_epochs=, max_length= or fewer genes (n_top_genes=), fewer cells, or a GPU"
    if caller() == "annotate":
        knobs = "method='knn' (no fine-tuning), " + knobs
    what = f"fine-tuning {passes:g} epoch(s) x {len(tokens):,} cells x {tokens.mean():,.0f} tokens (forward + backward)"
    announce(what, flops, seconds, device=device, knobs=knobs)


class FinetuneMixin:
    """``finetune`` for :class:`~scgpt.model.ScGPT`."""

    @doc_params()
    def finetune(
        self,
        task: str | Task,
        adata: AnnData,
        *,
        labels_key: str | None = None,
        batch_key: str | None = None,
        perturbation_key: str | None = None,
        control: str | None = None,
        train_perturbations: Sequence[str] | None = None,
        val_perturbations: Sequence[str] | None = None,
        layer: str | None = None,
        gene_key: str | None = None,
        use_aliases: bool = True,
        organism: str = "human",
        orthologs: str = "one2one",
        max_epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        max_length: int | None = None,
        validation_size: float | None = None,
        early_stopping: bool | None = None,
        freeze_layers: int = 0,
        adapter: str | None = None,
        adapter_rank: int = 8,
        adapter_alpha: float = 16,
        adapter_dropout: float = 0.0,
        adapter_modules: Sequence[str] | None = None,
        seed: int = 0,
        inplace: bool = False,
        **train_kwargs: Any,
    ):
        """Fine-tune for a task of :data:`scgpt.model.TASKS`: a fine-tuned copy, or this model with ``inplace=True``.

        The task adds its heads (e.g. a classifier over the ``labels_key`` categories, batch conditioning
        over the ``batch_key`` batches), then trains its official objectives with the official settings,
        which the arguments below override.

        Parameters
        ----------
        task
            ``"annotation"``, ``"integration"``, ``"multiomic"``, ``"perturbation"`` (or
            ``"pretrain"``/``"pretrain-masked"`` to continue pretraining), or a :class:`~scgpt.model.Task`.
        adata
            Cells x genes with raw counts; need not be set up.
        labels_key
            ``obs`` column with cell types (``"annotation"``). Unlabelled cells are left out with a warning.
        batch_key
            ``obs`` column with batches (``"integration"``).
        perturbation_key, control
            ``"perturbation"``: the ``obs`` column with each cell's target gene(s) (``"JAK2"``, ``"JAK2+STAT1"``;
            default ``"perturbation"``) and the label of control cells (default ``"control"``).
        train_perturbations, val_perturbations
            ``"perturbation"``: the labels to train on (default: every non-control label not in
            ``val_perturbations``) and to validate on (default: a seeded ``validation_size`` share of the
            target genes, held out whole with :func:`scgpt.data.split_perturbations`).
        layer
            Layer with raw counts; ``None`` uses ``adata.X``.
        gene_key
            ``var`` column with gene names; ``None`` uses ``var_names``.
        use_aliases
            Also match genes by Ensembl id, previous symbol or alias.
        {organism}
        max_epochs, batch_size, lr, max_length
            Training settings; ``None`` takes the task's (annotation: 10 epochs, batch 32, lr 1e-4, 3001 tokens).
        validation_size
            Share of cells held out for validation (stratified by label when there are labels);
            ``"perturbation"``: share of target genes held out.
        early_stopping
            Stop when the validation loss stops improving (annotation: yes; perturbation: yes, on the
            validation Pearson-delta).
        freeze_layers
            Keep the gene/value encoders (gene embeddings included) and the first ``freeze_layers`` transformer
            layers fixed (0: train all).
        adapter
            ``"lora"``: keep every pretrained weight of the trunk fixed and train low-rank adapters on the
            transformer layers (``peft`` LoRA; ``pip install "peft>=0.17"``), plus the task's heads and
            conditioning parts (DSBN, batch/perturbation/modality encoders, new-token embeddings) in full: a few
            percent of the weights, less memory, and :meth:`save` writes only those (megabytes). ``None``: train
            all weights (or those ``freeze_layers`` leaves). See ``docs/training.md``.
        adapter_rank, adapter_alpha, adapter_dropout
            LoRA rank, scaling (updates scaled by ``alpha / rank``) and dropout on the adapters' input.
        adapter_modules
            Linear layers of every transformer layer that get adapters, among ``"in_proj"``, ``"out_proj"``
            (attention), ``"linear1"``, ``"linear2"`` (feed-forward); default all four.
        seed
            Seed of the new heads' initialisation, the split, the order and the masks.
        inplace
            Make this model the fine-tuned one (its network, vocabulary and records are replaced) instead of
            returning a copy; e.g. ``tl.integrate(adata, model)`` fine-tunes an :class:`ScGPT` it is given in place,
            so the caller keeps the fine-tuned model.
        **train_kwargs
            Passed to :meth:`train`: the plan's options (``schedule``, ``eps``, ``weight_decay``, ``warmup_steps``,
            ``step_gamma``), ``gradient_checkpointing`` and the runner's (``accelerator``, ``devices``,
            ``checkpoint_dir``, ``precision``, ...).

        Returns
        -------
        The fine-tuned model, with the weights of the epoch with the lowest validation loss when cells were
        held out (the official tutorials' ``best_model``; perturbation: the highest validation Pearson-delta).
        Its ``registry_`` records the task, the keys and the categories in output order (``label_categories``,
        ``batch_categories``), or the perturbation setup (``perturbation_key``, ``control``, ``perturbation``).

        Examples
        --------
        >>> clf = model.finetune("annotation", reference, labels_key="cell_type")  # doctest: +SKIP
        >>> scgpt.tl.annotate(query, clf)  # doctest: +SKIP
        >>> gen = model.finetune("perturbation", screen)  # doctest: +SKIP
        >>> scgpt.tl.predict_perturbation(screen, gen, ["JAK2", "JAK2+STAT1"])  # doctest: +SKIP
        """
        import torch

        t = get_task(task)
        with calling(f"finetune({t.name!r})"):
            check_adata(adata)
            data = t.data_hook()(
                self,
                t,
                adata,
                labels_key=labels_key,
                batch_key=batch_key,
                perturbation_key=perturbation_key,
                control=control,
                train_perturbations=train_perturbations,
                val_perturbations=val_perturbations,
                layer=layer,
                gene_key=gene_key,
                use_aliases=use_aliases,
                organism=organism,
                orthologs=orthologs,
                max_length=max_length,
                validation_size=validation_size,
                early_stopping=early_stopping,
                seed=seed,
            )
            torch.manual_seed(seed)
            new = self.adapt(**t.heads(self.config, data.categories))
            adapter_options = {"adapter": adapter, "adapter_rank": adapter_rank, "adapter_alpha": adapter_alpha}
            prepare(
                new,
                self,
                freeze_layers,
                **adapter_options,
                adapter_dropout=adapter_dropout,
                adapter_modules=adapter_modules,
            )
            dm = data.datamodule(new, batch_size=batch_size)
            new.registry_.update(data.registry)
            logger.info(data.summary())
            _announce_training(new, data, t, max_epochs, train_kwargs)
            defaults = t.defaults
            plan_kwargs, trainer_kwargs = split_plan_options(train_kwargs)
            plan_kwargs["lr"] = defaults.get("lr", 1e-4) if lr is None else lr
            plan_kwargs.setdefault("eps", defaults.get("eps", 1e-8))
            plan_kwargs.setdefault("schedule", t.schedule)
            if trainer_kwargs.get("gradient_clip_val") is None:  # not given, or None from the command line
                trainer_kwargs["gradient_clip_val"] = defaults.get("gradient_clip_val")
            trainer_kwargs.setdefault("restore_best", data.validation)  # the official best_model: best validation epoch
            try:
                new.train(
                    datamodule=dm,
                    recipe=data.recipe,
                    max_epochs=defaults.get("max_epochs", 10) if max_epochs is None else max_epochs,
                    seed=seed,
                    early_stopping=data.stop and data.validation,
                    plan_kwargs=plan_kwargs,
                    **data.train_options,
                    **trainer_kwargs,
                )
            finally:
                unfreeze(new)
            data.finish(new)
            if inplace:
                self._become(new)
                return self
            return new
