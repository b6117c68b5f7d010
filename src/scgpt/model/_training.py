"""Training of :class:`~scgpt.model.ScGPT`: architecture changes, data modules and ``train`` (scvi-tools style).

``train(adata, *, recipe, ..., plan_kwargs=None, **trainer_kwargs)``: the optimiser and schedule go to the
training plan (:class:`~scgpt.train.ScGPTTrainingPlan`), everything about *how* to train (devices,
precision, checkpoints, early stopping) to :class:`~scgpt.train.TrainRunner`, as scvi-tools does.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np

from .._logging import logger, named
from .._settings import settings
from ..data._splits import random_split
from ._setup import _categories, _registered_codes
from ._tasks import resolve_recipe

if TYPE_CHECKING:
    from anndata import AnnData

    from ..data import CellSource
    from ..train import Recipe, ScGPTDataModule


class TrainingMixin:
    """``adapt``, ``train`` and ``make_datamodule`` for :class:`~scgpt.model.ScGPT`."""

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
    @named()
    def train(
        self,
        adata: AnnData | None = None,
        *,
        recipe: str | Recipe = "pretrain",
        max_epochs: int | None = None,
        max_steps: int = -1,
        batch_size: int = 32,
        max_length: int | None = None,
        mask_ratio: float | tuple[float, ...] | None = None,
        train_size: float = 0.9,
        validation_size: float | None = None,
        seed: int = 0,
        datamodule: Any = None,
        plan_kwargs: dict[str, Any] | None = None,
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
        max_length, mask_ratio
            Override the recipe's tokens per cell and hidden fraction.
        train_size, validation_size
            Random split of the cells (validation: the rest by default).
        seed
            Seed of the split, order, masks and dropout.
        datamodule
            A ready :class:`~scgpt.train.ScGPTDataModule` (e.g. from :meth:`make_datamodule` over an
            :class:`~scgpt.data.H5adCollection`).
        plan_kwargs
            Optimiser and schedule, passed to :class:`~scgpt.train.ScGPTTrainingPlan`: ``lr`` (default 1e-4),
            ``weight_decay``, ``eps`` (Adam(W)), ``schedule`` (``"cosine"``, ``"step"`` or ``"constant"``; default
            the task's, ``"cosine"`` for a :class:`~scgpt.train.Recipe`), ``warmup_steps``, ``step_gamma``.
        **trainer_kwargs
            How to train, passed to :class:`~scgpt.train.TrainRunner`: ``accelerator``, ``devices``, ``strategy``,
            ``num_nodes`` (``strategy="ddp"`` with several devices or nodes trains data-parallel); ``precision``
            (``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"``); ``accumulate_grad_batches``, ``gradient_clip_val``
            (``None`` with a task's recipe: the task's, 1.0 as every official loop; ``0``: no clipping);
            ``early_stopping``, ``early_stopping_patience``; ``restore_best`` (end with the weights of the epoch
            with the lowest ``val_loss``, the official tutorials' ``best_model``); ``checkpoint_dir`` (``last.ckpt``
            and per-step loss logs ``logs/version_<n>/metrics.csv``), ``checkpoint_every_n_steps``, ``resume``
            (``True``: continue from ``checkpoint_dir/last.ckpt`` if it exists, the same final weights as an
            uninterrupted run; or a path to a checkpoint); ``log_every_n_steps``; ``progress`` (default
            ``scgpt.settings.progress``); and any other :class:`lightning.pytorch.Trainer` argument.

        Returns
        -------
        ``self``, trained in place; ``history_`` holds the per-epoch losses and ``trainer_`` the Trainer.

        Examples
        --------
        >>> model.train(adata, recipe="pretrain", max_epochs=1, plan_kwargs={"lr": 1e-3})  # doctest: +SKIP
        """
        from ..train import PLAN_OPTIONS, ScGPTTrainingPlan, TrainRunner, check_recipe

        misplaced = sorted(set(trainer_kwargs) & set(PLAN_OPTIONS))
        if misplaced:
            given = ", ".join(f"{k!r}: {trainer_kwargs[k]!r}" for k in misplaced)
            raise TypeError(
                f"train: {', '.join(misplaced)} {'is a' if len(misplaced) == 1 else 'are'} training-plan option"
                f"{'s' * (len(misplaced) > 1)}; pass plan_kwargs={{{given}}}."
            )
        plan_kwargs = dict(plan_kwargs or {})
        unknown = sorted(set(plan_kwargs) - set(PLAN_OPTIONS))
        if unknown:
            raise TypeError(f"train: unknown plan_kwargs {unknown}; the plan takes {list(PLAN_OPTIONS)}.")
        rec, task = resolve_recipe(recipe)
        if task is not None and trainer_kwargs.get("gradient_clip_val") is None:  # the official loops clip at 1.0
            trainer_kwargs["gradient_clip_val"] = task.defaults.get("gradient_clip_val")
        if task is not None and task.data == "pairs" and datamodule is None:
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
        if plan_kwargs.get("schedule") is None:
            plan_kwargs["schedule"] = task.schedule if task is not None else "cosine"
        plan = ScGPTTrainingPlan(self.net, rec, seed=seed, **plan_kwargs)
        resume = trainer_kwargs.pop("resume", False)
        if trainer_kwargs.get("progress") is None:
            trainer_kwargs["progress"] = settings.progress
        runner = TrainRunner(plan, datamodule, max_epochs=max_epochs, max_steps=max_steps, **trainer_kwargs)
        self.base_model_ = self.base_model()  # the weights it starts from; no file holds the weights after this
        self.weights_file_ = None
        self.net.train()
        try:
            self.trainer_ = runner(resume=resume)
        finally:
            self.net.eval()
        self.history_ = runner.history.history
        self.is_trained_ = True
        self.registry_["last_recipe"] = rec.to_dict()
        return self

    @named()
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
            group_order=rec.batch_order,
        )

    def _datamodule(self, adata: AnnData, recipe: Recipe, *, batch_size, train_size, validation_size, seed):
        """The data module of an AnnData set up with :meth:`setup_anndata`."""
        from ..data import AnnDataSource

        manager = self._manager(adata)
        setup = manager.registry["setup_args"]
        source = AnnDataSource.matched(
            adata,
            self.vocab,
            gene_key=setup.get("gene_key"),
            layer=setup.get("layer"),
            organism=setup.get("organism", "human"),
            orthologs=setup.get("orthologs", "one2one"),
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
