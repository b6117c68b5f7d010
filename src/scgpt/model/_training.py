"""Data setup and training for :class:`~scgpt.model.ScGPT` (scvi-tools style: ``setup_anndata`` + ``train``)."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._anndata import check_adata
from .._logging import logger
from .._settings import settings

if TYPE_CHECKING:
    from anndata import AnnData

    from ..data import CellSource
    from ..train import Recipe, ScGPTDataModule

SETUP_KEY = "_scgpt_setup"


def _split(n: int, train_size: float, validation_size: float | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < train_size <= 1:
        raise ValueError(f"train_size must be in (0, 1], got {train_size}.")
    val = 1 - train_size if validation_size is None else validation_size
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(n * train_size))
    n_val = min(n - n_train, int(round(n * val)))
    return np.sort(perm[:n_train]), np.sort(perm[n_train : n_train + n_val])


class TrainingMixin:
    """``setup_anndata``, ``view_anndata_setup``, ``adapt`` and ``train`` for :class:`~scgpt.model.ScGPT`."""

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
        """Register the fields of an AnnData for training and inference.

        Uses scvi-tools' :class:`~scvi.data.AnnDataManager` (count layer, categorical batch and
        label fields). The model's gene identity is its vocabulary: genes are matched to it by name
        (``var_names`` or ``var[gene_key]``, plus Ensembl ids and old symbols), not by position.

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

        from ..pp._genes import gene_names

        check_adata(adata, fn="setup_anndata")
        gene_names(adata, gene_key)  # clear errors for missing keys / duplicated names
        for key, what in ((batch_key, "batch_key"), (labels_key, "labels_key")):
            if key is None:
                continue
            if key not in adata.obs:
                raise KeyError(f"{what}={key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}).")
            n_na = int(adata.obs[key].isna().sum())
            if n_na:
                raise ValueError(
                    f"adata.obs[{key!r}] has {n_na} missing values; drop or fill those cells before setup_anndata "
                    "(scgpt.tl.annotate drops unlabelled reference cells itself)."
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

    @staticmethod
    def _categories(manager, key: str) -> list[str] | None:
        setup = manager.registry["setup_args"]
        if setup.get(f"{key}_key" if key == "batch" else "labels_key") is None:
            return None
        return [str(c) for c in manager.get_state_registry(key)["categorical_mapping"]]

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
        schedule: str = "cosine",
        warmup_steps: int = 0,
        step_gamma: float = 0.9,
        max_length: int | None = None,
        mask_ratio: float | tuple[float, ...] | None = None,
        train_size: float = 0.9,
        validation_size: float | None = None,
        early_stopping: bool = False,
        early_stopping_patience: int = 3,
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        strategy: str = "auto",
        num_nodes: int = 1,
        precision: str | int = "32-true",
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every_n_steps: int | None = None,
        resume: bool | str | os.PathLike = False,
        log_every_n_steps: int = 10,
        seed: int = 0,
        progress: bool | None = None,
        datamodule: Any = None,
        **trainer_kwargs: Any,
    ):
        """Pretrain or fine-tune with PyTorch Lightning.

        Parameters
        ----------
        adata
            AnnData set up with :meth:`setup_anndata` (default: the bound one). Ignored with ``datamodule``.
        recipe
            Objectives: ``"pretrain"`` (official generative pretraining), ``"pretrain-masked"``,
            ``"annotation"``, ``"integration"``, or a :class:`~scgpt.train.Recipe`.
        max_epochs, max_steps
            Length of training (default: 10 epochs when neither is given).
        batch_size
            Cells per minibatch per device; the global batch is
            ``batch_size x devices x num_nodes x accumulate_grad_batches``.
        lr, weight_decay, eps
            Adam(W) settings.
        schedule, warmup_steps, step_gamma
            Learning-rate schedule (see :class:`~scgpt.train.ScGPTTrainingPlan`).
        max_length, mask_ratio
            Override the recipe's tokens per cell and hidden fraction.
        train_size, validation_size
            Random split of the cells (validation: the rest by default).
        early_stopping, early_stopping_patience
            Stop when ``val_loss`` stops improving.
        accelerator, devices, strategy, num_nodes
            Lightning device settings; ``strategy="ddp"`` with several devices or nodes for distributed
            data-parallel training.
        precision
            ``"32-true"``, ``"bf16-mixed"`` or ``"16-mixed"`` (GPU).
        accumulate_grad_batches, gradient_clip_val
            Gradient accumulation and clipping.
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
            A ready :class:`~scgpt.train.ScGPTDataModule` (e.g. over an :class:`~scgpt.data.H5adCollection`).
        **trainer_kwargs
            Passed to :class:`lightning.pytorch.Trainer`.

        Returns
        -------
        ``self``, trained in place; ``history_`` holds the per-epoch losses.
        """
        import lightning.pytorch as pl
        from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
        from lightning.pytorch.loggers import CSVLogger

        from ..train import ScGPTTrainingPlan, check_recipe, get_recipe

        rec = get_recipe(recipe)
        changes = {k: v for k, v in (("max_length", max_length), ("mask_ratio", mask_ratio)) if v is not None}
        if changes:
            rec = rec.replace(**changes)
        check_recipe(self.net, rec)
        if max_epochs is None and max_steps == -1:
            max_epochs = 10
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
            schedule=schedule,
            warmup_steps=warmup_steps,
            step_gamma=step_gamma,
            seed=seed,
        )
        ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else Path(tempfile.mkdtemp(prefix="scgpt_train_"))
        callbacks: list = [_HistoryCallback(), *trainer_kwargs.pop("callbacks", [])]
        ckpt_kwargs = {"every_n_train_steps": checkpoint_every_n_steps} if checkpoint_every_n_steps else {}
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0, **ckpt_kwargs))
        has_val = datamodule.val_indices is not None
        if early_stopping:
            if not has_val:
                raise ValueError("early_stopping needs validation cells (train_size < 1).")
            callbacks.append(EarlyStopping(monitor="val_loss", patience=early_stopping_patience, mode="min"))
        show = settings.progress if progress is None else progress
        quiet = _quiet_lightning()
        quiet.__enter__()
        trainer = pl.Trainer(
            max_epochs=max_epochs,
            max_steps=max_steps,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            num_nodes=num_nodes,
            precision=precision,
            accumulate_grad_batches=accumulate_grad_batches,
            gradient_clip_val=gradient_clip_val,
            callbacks=callbacks,
            logger=CSVLogger(ckpt_dir, name="logs"),
            log_every_n_steps=log_every_n_steps,
            enable_progress_bar=show,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=1.0 if has_val else 0,
            default_root_dir=ckpt_dir,
            **trainer_kwargs,
        )
        ckpt_path = None
        if resume:
            ckpt_path = Path(resume) if not isinstance(resume, bool) else ckpt_dir / "last.ckpt"
            if not ckpt_path.is_file():
                if not isinstance(resume, bool):
                    raise FileNotFoundError(f"No checkpoint at {ckpt_path}.")
                ckpt_path = None
        self.net.train()
        try:
            with warnings.catch_warnings():
                for message in (
                    ".*does not have many workers.*",
                    ".*overridden `transfer_batch_to_device`.*",
                    ".*LeafSpec.*",
                    ".*limit_val_batches.*",
                ):
                    warnings.filterwarnings("ignore", message=message)
                trainer.fit(plan, datamodule=datamodule, ckpt_path=ckpt_path)
        finally:
            quiet.__exit__(None, None, None)
            self.net.eval()
        self.history_ = callbacks[0].history
        self.is_trained_ = True
        self.registry_["last_recipe"] = rec.to_dict()
        self.trainer_ = trainer
        return self

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

        Use it for data that do not fit in memory (``source`` an :class:`~scgpt.data.H5adCollection`)
        and pass the result to :meth:`train` as ``datamodule=``.

        Parameters
        ----------
        source
            Cells in the model's vocabulary space.
        recipe
            Training recipe (tokenisation: masking, ``<cls>`` value, zero genes, length).
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
        from ..train import ScGPTDataModule, get_recipe

        rec = get_recipe(recipe)
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
            objective=rec.objective,
            mask_ratio=rec.mask_ratio,
            seed=seed,
        )
        train_idx, val_idx = split if split is not None else _split(source.n_obs, train_size, validation_size, seed)
        return ScGPTDataModule(
            source, collator, train_idx, val_idx, batch_size=batch_size, seed=seed, obs=obs, chunk_size=chunk_size
        )

    def _datamodule(self, adata: AnnData, recipe: Recipe, *, batch_size, train_size, validation_size, seed):
        from ..data import AnnDataSource

        manager = self._manager(adata)
        setup = manager.registry["setup_args"]
        source = AnnDataSource.matched(
            adata, self.vocab, gene_key=setup.get("gene_key"), layer=setup.get("layer"), fn="train"
        )
        obs: dict[str, np.ndarray] = {}
        c = self.config
        batches = self._categories(manager, "batch")
        if batches is not None:
            obs["batch_labels"] = _registered_codes(manager, adata, "batch")
            self.registry_["batch_categories"] = batches
            if c.n_batch_labels is not None and len(batches) > c.n_batch_labels:
                raise ValueError(
                    f"The data have {len(batches)} batches but the model knows {c.n_batch_labels}; "
                    f"use model.adapt(n_batch_labels={len(batches)})."
                )
        labels = self._categories(manager, "labels")
        if labels is not None:
            obs["labels"] = _registered_codes(manager, adata, "labels")
            self.registry_["label_categories"] = labels
            if recipe.cls and c.n_cls != len(labels):
                raise ValueError(
                    f"The data have {len(labels)} labels but the classification head has {c.n_cls} "
                    f"outputs; use model.adapt(n_cls={len(labels)})."
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


@contextlib.contextmanager
def _quiet_lightning():
    """Keep Lightning's INFO chatter (device summary, tips) out of notebooks; warnings still show."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _history_callback():
    import lightning.pytorch as pl

    class HistoryCallback(pl.Callback):
        def __init__(self) -> None:
            self.history: dict[str, list[float]] = {}

        def _record(self, trainer, prefix: str) -> None:
            for name, value in trainer.callback_metrics.items():
                # train metrics are logged per step and per epoch ("*_epoch"); val metrics per epoch only
                if name.startswith(prefix) and (prefix == "val_" or name.endswith("_epoch")):
                    self.history.setdefault(name.removesuffix("_epoch"), []).append(float(value))

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self._record(trainer, "train_")

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                self._record(trainer, "val_")

    return HistoryCallback()


_HistoryCallback = _history_callback
__all__ = ["SETUP_KEY", "TrainingMixin"]


def _registered_codes(manager, adata: AnnData, key: str) -> np.ndarray:
    """Integer codes of a registered field read from ``adata`` itself.

    A subset or copy of a set-up AnnData shares its registry (same ``_scvi_uuid``), so the codes must
    come from the cells passed in, not from the AnnData that was registered.
    """
    field = manager.data_registry[key]
    return np.asarray(getattr(adata, field.attr_name)[field.attr_key]).ravel().astype(np.int64)
