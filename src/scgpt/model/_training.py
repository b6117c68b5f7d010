"""Data setup, training and fine-tuning for :class:`~scgpt.model.ScGPT`.

scvi-tools style (``setup_anndata`` + ``train``), and ``finetune(task, ...)`` through the task registry.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._anndata import check_adata, missing_values
from .._logging import logger, warn
from .._settings import settings
from ..data._genes import gene_names
from ..data._splits import random_split, stratified_split
from ._adapters import prepare, unfreeze
from ._tasks import Task, get_task, resolve_recipe

if TYPE_CHECKING:
    from anndata import AnnData

    from ..data import CellSource
    from ..train import Recipe, ScGPTDataModule

SETUP_KEY = "_scgpt_setup"


class TrainingOutOfMemoryError(MemoryError):
    """Training ran out of device memory; the message names the settings that would fit."""


def _obs_column(adata: AnnData, key: str, what: str) -> pd.Series:
    if key not in adata.obs:
        raise KeyError(f"{what}={key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}).")
    return adata.obs[key]


def _categorical(values: pd.Series) -> pd.Categorical:
    """String categories of a column: a categorical keeps its order (unused categories dropped), else sorted."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.cat.remove_unused_categories()
        order = [str(c) for c in values.cat.categories]
        return pd.Categorical(values.astype(str), categories=order)
    return pd.Categorical(values.astype(str))


def label_codes(adata: AnnData, labels_key: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(keep, codes, categories)`` of a label column: unlabelled cells are left out with a warning.

    Raises when no cell or a single cell type is labelled; warns for cell types with a single cell.
    """
    values = _obs_column(adata, labels_key, "labels_key")
    missing = missing_values(values)
    if missing.all():
        raise ValueError(f"obs[{labels_key!r}] holds no labels (all missing).")
    if missing.any():
        first = adata.obs_names[np.flatnonzero(missing)[0]]
        warn(f"{int(missing.sum())} cells have no label in {labels_key!r} (first: {first!r}); they are left out.")
    cats = _categorical(values[~missing])
    if len(cats.categories) < 2:
        raise ValueError(
            f"obs[{labels_key!r}] has a single cell type ({cats.categories[0]!r}); a classifier needs two."
        )
    counts = pd.Series(cats).value_counts()
    rare = counts[counts < 2]
    if len(rare):
        warn(f"{len(rare)} cell types have a single cell ({list(rare.index[:5])}); they are kept.")
    return ~missing, np.asarray(cats.codes, dtype=np.int64), [str(c) for c in cats.categories]


def batch_codes(adata: AnnData, batch_key: str) -> tuple[np.ndarray, list[str]]:
    """``(codes, categories)`` of a batch column; missing batches are an error naming the first cell."""
    values = _obs_column(adata, batch_key, "batch_key")
    missing = missing_values(values)
    if missing.any():
        first = adata.obs_names[np.flatnonzero(missing)[0]]
        raise ValueError(
            f"obs[{batch_key!r}] has {int(missing.sum())} cells without a batch (first: {first!r}); give every cell a "
            "batch or drop those cells."
        )
    cats = _categorical(values)
    return np.asarray(cats.codes, dtype=np.int64), list(cats.categories)


class TrainingMixin:
    """``setup_anndata``, ``adapt``, ``train``, ``finetune`` and ``make_datamodule`` for :class:`~scgpt.model.ScGPT`."""

    _managers: dict[str, Any] = {}

    # ------------------------------------------------------------------ data setup
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        *,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        gene_key: str | None = None,
    ) -> None:
        """Register the fields of an AnnData for :meth:`train`.

        Uses scvi-tools' :class:`~scvi.data.AnnDataManager` (count layer, categorical batch and
        label fields). The model's gene identity is its vocabulary: genes are matched to it by name
        (``var_names`` or ``var[gene_key]``, plus Ensembl ids and old symbols), not by position.
        :meth:`finetune` needs no setup.

        Parameters
        ----------
        adata
            Cells x genes with raw counts.
        layer
            Layer with raw counts; ``None`` uses ``adata.X``.
        batch_key
            ``obs`` column with batches (for DSBN, batch conditioning and the batch discriminator).
        labels_key
            ``obs`` column with cell-type labels (for the classification objective).
        gene_key
            ``var`` column with gene names; ``None`` uses ``var_names``.

        Returns
        -------
        ``None``. Sets ``adata.obs['_scvi_batch']``, ``adata.obs['_scvi_labels']``, ``adata.uns['_scvi_uuid']``,
        ``adata.uns['_scvi_manager_uuid']`` (scvi-tools' registry) and ``adata.uns['_scgpt_setup']``.
        """
        from scvi.data import AnnDataManager, fields

        check_adata(adata, fn="setup_anndata")
        gene_names(adata, gene_key)  # clear errors for missing keys / duplicated names
        for key, what in ((batch_key, "batch_key"), (labels_key, "labels_key")):
            if key is not None:
                n_na = int(missing_values(_obs_column(adata, key, what)).sum())
                if n_na:
                    raise ValueError(
                        f"adata.obs[{key!r}] has {n_na} missing values; drop or fill those cells before setup_anndata "
                        "(model.finetune leaves unlabelled cells out itself)."
                    )
        setup_args = {"layer": layer, "batch_key": batch_key, "labels_key": labels_key, "gene_key": gene_key}
        manager = AnnDataManager(
            fields=[
                fields.LayerField("X", layer, is_count_data=True),
                fields.CategoricalObsField("batch", batch_key),
                fields.CategoricalObsField("labels", labels_key),
            ],
            setup_method_args={"model_name": "ScGPT", "setup_args": setup_args},
        )
        manager.register_fields(adata)
        cls._managers[manager.adata_uuid] = manager
        adata.uns[SETUP_KEY] = {k: v for k, v in setup_args.items() if v is not None}

    @classmethod
    def _manager(cls, adata: AnnData):
        uuid = adata.uns.get("_scvi_uuid")
        if SETUP_KEY not in adata.uns or uuid not in cls._managers:
            raise ValueError("This AnnData is not set up: call scgpt.model.ScGPT.setup_anndata(adata, ...) first.")
        return cls._managers[uuid]

    def view_anndata_setup(self, adata: AnnData | None = None) -> None:
        """Print the registered fields and categories of an AnnData (default: the bound one)."""
        self._manager(self._resolve_adata(adata)).view_registry()

    # ------------------------------------------------------------------ architecture changes
    def adapt(self, **config_changes: Any):
        """A copy of the model with a changed architecture (e.g. a new classification head).

        Weights whose name and shape are unchanged are copied; new or resized parts start from
        their initialisation (listed at INFO level).

        Examples
        --------
        >>> clf = model.adapt(n_cls=12)  # doctest: +SKIP
        """
        from ..nn import ScGPTNet
        from ._adapters import has_adapter

        if has_adapter(self.net):
            raise ValueError("This model carries adapters; merge them first: model.merge_adapter().adapt(...).")
        net = ScGPTNet(self.config.replace(**config_changes))
        own = net.state_dict()
        old = self.net.state_dict()
        keep = {k: v for k, v in old.items() if k in own and own[k].shape == v.shape}
        net.load_state_dict(keep, strict=False)
        fresh = sorted({k.rsplit(".", 1)[0] for k in own if k not in keep})
        if fresh:
            logger.info(f"    new or re-initialised parts: {', '.join(fresh)}")
        new = type(self)._from_parts(
            net.to(self.device),
            self.vocab,
            args=copy.deepcopy(self.args_),
            mod_vocab=self.mod_vocab,
            source=self.source_,
            attrs=copy.deepcopy(self._attrs()),
        )
        new.adata = self.adata
        return new

    # ------------------------------------------------------------------ training
    def train(
        self,
        adata: AnnData | None = None,
        *,
        recipe: str | Recipe = "pretrain",
        max_epochs: int | None = None,
        max_steps: int = -1,
        batch_size: int = 32,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        schedule: str | None = None,
        warmup_steps: int = 0,
        step_gamma: float = 0.9,
        max_length: int | None = None,
        mask_ratio: float | tuple[float, ...] | None = None,
        train_size: float = 0.9,
        validation_size: float | None = None,
        early_stopping: bool = False,
        early_stopping_patience: int = 3,
        restore_best: bool = False,
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        strategy: str = "auto",
        num_nodes: int = 1,
        precision: str | int = "32-true",
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_checkpointing: bool = False,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every_n_steps: int | None = None,
        resume: bool | str | os.PathLike = False,
        log_every_n_steps: int = 10,
        seed: int = 0,
        progress: bool | None = None,
        datamodule: Any = None,
        **trainer_kwargs: Any,
    ):
        """Pretrain or fine-tune in place with PyTorch Lightning.

        Parameters
        ----------
        adata
            AnnData set up with :meth:`setup_anndata` (default: the bound one). Ignored with ``datamodule``.
        recipe
            A task of :data:`scgpt.model.TASKS` (``"pretrain"``, the official generative pretraining;
            ``"pretrain-masked"``; ``"annotation"``; ``"integration"``), whose objectives are trained, or a
            :class:`~scgpt.train.Recipe`. The network must already have the task's heads (see :meth:`finetune`).
        max_epochs, max_steps
            Length of training (default: 10 epochs when neither is given).
        batch_size
            Cells per minibatch per device; the global batch is
            ``batch_size x devices x num_nodes x accumulate_grad_batches``.
        lr, weight_decay, eps
            Adam(W) settings.
        schedule, warmup_steps, step_gamma
            Learning-rate schedule (see :class:`~scgpt.train.ScGPTTrainingPlan`); ``schedule=None`` takes the
            task's (``"cosine"`` for a :class:`~scgpt.train.Recipe`).
        max_length, mask_ratio
            Override the recipe's tokens per cell and hidden fraction.
        train_size, validation_size
            Random split of the cells (validation: the rest by default).
        early_stopping, early_stopping_patience
            Stop when ``val_loss`` stops improving.
        restore_best
            End with the weights of the epoch with the lowest ``val_loss`` (the official tutorials' ``best_model``)
            instead of the last epoch's; needs validation cells.
        accelerator, devices, strategy, num_nodes
            Lightning device settings; ``strategy="ddp"`` with several devices or nodes for distributed
            data-parallel training.
        precision
            ``"32-true"``, ``"bf16-mixed"`` or ``"16-mixed"`` (GPU).
        accumulate_grad_batches, gradient_clip_val
            Gradient accumulation and clipping.
        gradient_checkpointing
            Recompute each transformer layer's activations in the backward pass instead of keeping them: the
            activation memory of one layer instead of all of them, for about a third more time per step (same
            losses and gradients). See ``docs/training.md`` for what fits where.
        checkpoint_dir
            Where Lightning checkpoints (``last.ckpt``) and per-step loss logs
            (``logs/version_<n>/metrics.csv``, a new version per run or resume) go.
        checkpoint_every_n_steps
            Save ``last.ckpt`` every this many steps (default: at each epoch end).
        resume
            ``True``: continue from ``checkpoint_dir/last.ckpt`` if it exists (same final weights as an
            uninterrupted run); or a path to a checkpoint.
        log_every_n_steps
            Logging interval.
        seed
            Seed of the split, order, masks and dropout.
        progress
            Show progress bars (default: ``scgpt.settings.progress``).
        datamodule
            A ready :class:`~scgpt.train.ScGPTDataModule` (e.g. from :meth:`make_datamodule` over an
            :class:`~scgpt.data.H5adCollection`).
        **trainer_kwargs
            Passed to :class:`lightning.pytorch.Trainer`.

        Returns
        -------
        ``self``, trained in place; ``history_`` holds the per-epoch losses and ``trainer_`` the Trainer.
        """
        import torch

        from ..train import ScGPTTrainingPlan, TrainRunner, check_recipe
        from ..train._runner import RUNNER_OPTIONS

        rec, task = resolve_recipe(recipe)
        if task is not None and task.paired and datamodule is None:
            raise ValueError(
                f"recipe={task.name!r} trains on pairs of a perturbation screen, not on single cells: use "
                f"model.finetune({task.name!r}, adata, perturbation_key=..., control=...)."
            )
        changes = {k: v for k, v in (("max_length", max_length), ("mask_ratio", mask_ratio)) if v is not None}
        if changes:
            rec = rec.replace(**changes)
        check_recipe(self.config, rec)
        if max_epochs is None and max_steps == -1:
            max_epochs = 10
        if datamodule is not None and changes:
            raise ValueError(
                f"{', '.join(changes)} set how cells are tokenised, which a ready data module has fixed already; pass "
                "a recipe with them to make_datamodule (e.g. TASKS['pretrain'].recipe.replace(max_length=...)) and "
                "the same recipe here."
            )
        if datamodule is None:
            adata = self._resolve_adata(adata)
            datamodule = self._datamodule(
                adata, rec, batch_size=batch_size, train_size=train_size, validation_size=validation_size, seed=seed
            )
        plan = ScGPTTrainingPlan(
            self.net,
            rec,
            lr=lr,
            weight_decay=weight_decay,
            eps=eps,
            schedule=schedule or (task.schedule if task is not None else "cosine"),
            warmup_steps=warmup_steps,
            step_gamma=step_gamma,
            seed=seed,
        )
        options = {name: value for name, value in locals().items() if name in RUNNER_OPTIONS}
        options["progress"] = settings.progress if progress is None else progress
        runner = TrainRunner(plan, datamodule, **options, **trainer_kwargs)
        self.net.train()
        checkpointing, self.net.gradient_checkpointing = self.net.gradient_checkpointing, gradient_checkpointing
        try:
            self.trainer_ = runner(resume=resume)
        except torch.cuda.OutOfMemoryError:  # torch.OutOfMemoryError, on any device
            from ._resources import out_of_memory_message

            raise TrainingOutOfMemoryError(out_of_memory_message(self, datamodule, rec, locals())) from None
        finally:
            self.net.eval()
            self.net.gradient_checkpointing = checkpointing
        self.history_ = runner.history.history
        self.is_trained_ = True
        self.registry_["last_recipe"] = rec.to_dict()
        return self

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
        **train_kwargs: Any,
    ):
        """A copy of the model fine-tuned for a task of :data:`scgpt.model.TASKS` (this model is not modified).

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
            target genes, held out whole with :func:`scgpt.data.split_perturbations`). See
            :func:`scgpt.model._perturbation.finetune_perturbation`.
        layer
            Layer with raw counts; ``None`` uses ``adata.X``.
        gene_key
            ``var`` column with gene names; ``None`` uses ``var_names``.
        use_aliases
            Also match genes by Ensembl id, previous symbol or alias.
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
            transformer layers (``peft`` LoRA; install ``scgpt-scverse[peft]``), plus the task's heads and
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
        **train_kwargs
            Passed to :meth:`train` (``schedule``, ``gradient_checkpointing``, ``precision``, ``accelerator``,
            ``devices``, ``checkpoint_dir``, ...).

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

        from ..data import AnnDataSource

        t = get_task(task)
        check_adata(adata, fn=f"finetune({t.name!r})")
        adapter_options = {"adapter": adapter, "adapter_rank": adapter_rank, "adapter_alpha": adapter_alpha}
        adapter_options.update(adapter_dropout=adapter_dropout, adapter_modules=adapter_modules)
        perturbation_options = {
            "perturbation_key": perturbation_key,
            "control": control,
            "train_perturbations": train_perturbations,
            "val_perturbations": val_perturbations,
        }
        if t.paired:
            from ._perturbation import finetune_perturbation

            for key, value in (("labels_key", labels_key), ("batch_key", batch_key)):
                if value is not None:
                    warn(f"finetune({t.name!r}) does not use {key}; ignored.")
            return finetune_perturbation(
                self,
                t,
                adata,
                **perturbation_options,
                layer=layer,
                gene_key=gene_key,
                use_aliases=use_aliases,
                max_epochs=max_epochs,
                batch_size=batch_size,
                lr=lr,
                max_length=max_length,
                validation_size=validation_size,
                early_stopping=early_stopping,
                freeze_layers=freeze_layers,
                adapter_options=adapter_options,
                seed=seed,
                **train_kwargs,
            )
        given = [k for k, v in perturbation_options.items() if v is not None]
        if given:
            warn(f"finetune({t.name!r}) does not use {', '.join(given)} (perturbation options); ignored.")
        keys = {"labels_key": labels_key, "batch_key": batch_key}
        missing = [k for k in t.requires if keys[k] is None]
        if missing:
            raise ValueError(f"finetune({t.name!r}) needs {', '.join(f'{k}=' for k in missing)} (an obs column).")
        unused = [k for k, v in keys.items() if v is not None and k not in t.requires + t.optional]
        if unused:
            warn(f"finetune({t.name!r}) does not use {', '.join(unused)}; ignored.")
        if t.multiomic and self.mod_vocab is None:
            raise ValueError(
                f"finetune({t.name!r}) needs a multi-omic model: use scgpt.tl.integrate(mdata, model, modalities=...) "
                "or scgpt.model.with_modalities(model, {'prot': [...]})."
            )
        keep = np.ones(adata.n_obs, dtype=bool)
        obs: dict[str, np.ndarray] = {}
        categories: dict[str, list[str]] = {}
        if "labels_key" in t.requires:
            keep, obs["labels"], categories["labels"] = label_codes(adata, labels_key)
        cells = adata if keep.all() else adata[keep]
        if batch_key is not None and "batch_key" in t.requires + t.optional:
            obs["batch_labels"], categories["batches"] = batch_codes(cells, batch_key)

        torch.manual_seed(seed)
        new = self.adapt(**t.heads(self.config, categories))
        prepare(new, self, freeze_layers, **adapter_options)

        defaults = t.defaults
        recipe = t.recipe if max_length is None else t.recipe.replace(max_length=max_length)
        if "batches" not in categories and "dab" in recipe.objectives:  # an optional batch_key not given
            recipe = recipe.replace(objectives={k: w for k, w in recipe.objectives.items() if k != "dab"})
        stop = defaults.get("early_stopping", False) if early_stopping is None else early_stopping
        if validation_size is None:  # by default, cells are held out only to stop early
            validation_size = defaults.get("validation_size", 0.1) if stop else 0.0
        if "labels" in obs:
            split = stratified_split(obs["labels"], validation_size, seed=seed)
        else:
            split = random_split(cells.n_obs, 1 - validation_size, validation_size, seed=seed)
        source = AnnDataSource.matched(
            cells, new.vocab, gene_key=gene_key, layer=layer, use_aliases=use_aliases, fn=f"finetune({t.name!r})"
        )
        size = defaults.get("batch_size", 32) if batch_size is None else batch_size
        dm = new.make_datamodule(source, recipe, batch_size=size, seed=seed, obs=obs, split=split)
        new.registry_["task"] = t.name
        if recipe.include_zero_genes:  # every gene of the panel is a token of every cell: the panel is the model's
            new.registry_["tokens"] = new.vocab.lookup_tokens(source.present_tokens())
        if "labels" in categories:
            new.registry_.update(label_categories=categories["labels"], labels_key=labels_key)
        if "batches" in categories:
            new.registry_.update(batch_categories=categories["batches"], batch_key=batch_key)
        logger.info(
            f"fine-tuning for {t.name!r} on {len(split[0])} cells ({len(split[1])} for validation)"
            + "".join(f", {len(v)} {k}" for k, v in categories.items())
        )
        train_kwargs.setdefault("restore_best", len(split[1]) > 0)  # the official best_model: lowest val_loss
        for key, default in (("eps", defaults.get("eps", 1e-8)), ("schedule", t.schedule)):
            if train_kwargs.get(key) is None:  # not given, or None from the command line: the task's
                train_kwargs[key] = default
        try:
            new.train(
                datamodule=dm,
                recipe=recipe,
                max_epochs=defaults.get("max_epochs", 10) if max_epochs is None else max_epochs,
                lr=defaults.get("lr", 1e-4) if lr is None else lr,
                seed=seed,
                early_stopping=stop and len(split[1]) > 0,
                **train_kwargs,
            )
        finally:
            unfreeze(new)
        return new

    def make_datamodule(
        self,
        source: CellSource,
        recipe: str | Recipe = "pretrain",
        *,
        batch_size: int = 32,
        train_size: float = 0.9,
        validation_size: float | None = None,
        seed: int = 0,
        obs: dict[str, np.ndarray] | None = None,
        chunk_size: int = 1,
        split: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> ScGPTDataModule:
        """A data module over any cell source, tokenised as this model and ``recipe`` need.

        Use it for data that do not fit in memory (``source`` an :class:`~scgpt.data.H5adCollection`
        or :class:`~scgpt.data.SomaSource`) and pass the result to :meth:`train` as ``datamodule=``.

        Parameters
        ----------
        source
            Cells in the model's vocabulary space.
        recipe
            Task name or :class:`~scgpt.train.Recipe` (tokenisation: masking, ``<cls>`` value, zero genes, length).
        batch_size
            Cells per minibatch per process.
        train_size, validation_size
            Random split of the cells.
        seed
            Seed of the split, order and masks.
        obs
            Per-cell ``batch_labels`` / ``labels`` integer codes.
        chunk_size
            Chunked shuffling for on-disk sources.
        split
            ``(train_indices, validation_indices)`` to use instead of a random split.
        """
        from ..data._collate import Collator
        from ..train import ScGPTDataModule
        from ._multiomic import binary_modalities, token_modality

        rec, _ = resolve_recipe(recipe)
        c = self.config
        present = np.full(len(self.vocab), -1, dtype=np.int64)
        present[source.present_tokens()] = source.present_tokens()
        collator = Collator(
            token_ids=present,
            gene_key=self.vocab.gene_keys(),
            cls_id=self.vocab.cls_id,
            pad_id=self.vocab.pad_id,
            pad_value=c.pad_value,
            cls_value=c.pad_value if rec.cls_value == "pad" else 0.0,
            mask_value=rec.mask_value,
            max_length=rec.max_length,
            n_bins=int(self.args_.get("n_bins", 51)),
            include_zero_genes=rec.include_zero_genes,
            masking=rec.masking,
            mask_ratio=rec.mask_ratio,
            seed=seed,
            token_modality=token_modality(self),
            binary_modalities=binary_modalities(self),
        )
        if split is None:
            split = random_split(source.n_obs, train_size, validation_size, seed=seed)
        group_by = "batch_labels" if rec.per_batch_minibatches and obs and "batch_labels" in obs else None
        return ScGPTDataModule(
            source,
            collator,
            split[0],
            split[1],
            batch_size=batch_size,
            seed=seed,
            obs=obs,
            chunk_size=chunk_size,
            group_by=group_by,
        )

    def _datamodule(self, adata: AnnData, recipe: Recipe, *, batch_size, train_size, validation_size, seed):
        """The data module of an AnnData set up with :meth:`setup_anndata`."""
        from ..data import AnnDataSource

        manager = self._manager(adata)
        setup = manager.registry["setup_args"]
        source = AnnDataSource.matched(
            adata, self.vocab, gene_key=setup.get("gene_key"), layer=setup.get("layer"), fn="train"
        )
        obs: dict[str, np.ndarray] = {}
        c = self.config
        batches = _categories(manager, "batch")
        if batches is not None:
            obs["batch_labels"] = _registered_codes(manager, adata, "batch")
            self.registry_["batch_categories"] = batches
            if c.n_batch_labels is not None and len(batches) > c.n_batch_labels:
                raise ValueError(
                    f"The data have {len(batches)} batches but the model knows {c.n_batch_labels}; "
                    f"use model.finetune('integration', ...) or model.adapt(n_batch_labels={len(batches)})."
                )
        labels = _categories(manager, "labels")
        if labels is not None:
            obs["labels"] = _registered_codes(manager, adata, "labels")
            self.registry_["label_categories"] = labels
            if recipe.active.get("cls") and c.n_cls != len(labels):
                raise ValueError(
                    f"The data have {len(labels)} labels but the classification head has {c.n_cls} "
                    f"outputs; use model.finetune('annotation', ...) or model.adapt(n_cls={len(labels)})."
                )
        return self.make_datamodule(
            source,
            recipe,
            batch_size=batch_size,
            train_size=train_size,
            validation_size=validation_size,
            seed=seed,
            obs=obs,
        )


def freeze(model, freeze_layers: int) -> None:
    """Keep the gene/value encoders and the first ``freeze_layers`` transformer layers fixed (0: train all)."""
    n_layers = model.config.n_layers
    if not 0 <= freeze_layers <= n_layers:
        raise ValueError(f"freeze_layers must be between 0 and {n_layers}, got {freeze_layers}.")
    frozen = [model.net.encoder, model.net.value_encoder, *model.net.transformer_encoder.layers[:freeze_layers]]
    for module in frozen if freeze_layers else []:
        module.requires_grad_(False)


def _categories(manager, key: str) -> list[str] | None:
    setup = manager.registry["setup_args"]
    if setup.get(f"{key}_key" if key == "batch" else "labels_key") is None:
        return None
    return [str(c) for c in manager.get_state_registry(key)["categorical_mapping"]]


def _registered_codes(manager, adata: AnnData, key: str) -> np.ndarray:
    """Integer codes of a registered field read from ``adata`` itself.

    A subset or copy of a set-up AnnData shares its registry (same ``_scvi_uuid``), so the codes must
    come from the cells passed in, not from the AnnData that was registered.
    """
    field = manager.data_registry[key]
    return np.asarray(getattr(adata, field.attr_name)[field.attr_key]).ravel().astype(np.int64)
