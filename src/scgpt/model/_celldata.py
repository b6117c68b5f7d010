"""Fine-tuning data of the tasks that train on single cells (annotation, integration, multi-omic, pretraining).

:meth:`ScGPT.finetune <scgpt.model.ScGPT.finetune>` asks the task for its data hook
(:meth:`Task.data_hook <scgpt.model.Task.data_hook>`): this class for ``data="cells"``,
:class:`scgpt.model._perturbation.PairData` for the perturbation screen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .._logging import warn
from ..data._splits import random_split, stratified_split
from ._setup import batch_codes, label_codes

if TYPE_CHECKING:
    from anndata import AnnData

    from ..train import ScGPTDataModule
    from ._scgpt import ScGPT
    from ._tasks import Task

PERTURBATION_OPTIONS = ("perturbation_key", "control", "train_perturbations", "val_perturbations")


class CellData:
    """The cells a task trains on, coded and split, before the model gets its heads.

    Parameters
    ----------
    model
        The model to fine-tune (its vocabulary and, for multi-omic tasks, modalities).
    task
        The task (``data="cells"``).
    adata
        Cells x genes with raw counts.
    options
        The keyword arguments of ``finetune`` that concern data: ``labels_key``, ``batch_key``, the
        perturbation options (warned about and ignored here), ``layer``, ``gene_key``, ``use_aliases``,
        ``organism``, ``orthologs``,
        ``max_length``, ``validation_size``, ``early_stopping``, ``seed``.

    Attributes
    ----------
    categories
        ``{"labels": [...], "batches": [...]}`` found in the data (for the task's heads).
    recipe
        The task's recipe with the caller's ``max_length`` (and without ``dab`` when no batches are given).
    stop
        Whether to stop early.
    validation
        Whether cells are held out for validation.
    registry
        What the fine-tuned model records in ``registry_`` (task, keys, categories, gene panel).
    train_options
        Extra options of :meth:`~scgpt.model.ScGPT.train` the task needs (none for cells).
    """

    def __init__(self, model: ScGPT, task: Task, adata: AnnData, **options: Any) -> None:
        name = f"finetune({task.name!r})"
        given = [k for k in PERTURBATION_OPTIONS if options.get(k) is not None]
        if given:
            warn(f"{name} does not use {', '.join(given)} (perturbation options); ignored.")
        keys = {"labels_key": options.get("labels_key"), "batch_key": options.get("batch_key")}
        missing = [k for k in task.requires if keys[k] is None]
        if missing:
            raise ValueError(f"{name} needs {', '.join(f'{k}=' for k in missing)} (an obs column).")
        unused = [k for k, v in keys.items() if v is not None and k not in task.requires + task.optional]
        if unused:
            warn(f"{name} does not use {', '.join(unused)}; ignored.")
        if task.multiomic and model.mod_vocab is None:
            raise ValueError(
                f"{name} needs a multi-omic model: use scgpt.tl.integrate(mdata, model, modalities=...) "
                "or scgpt.model.with_modalities(model, {'prot': [...]})."
            )
        self.task, self.name, self.options = task, name, options
        keep = np.ones(adata.n_obs, dtype=bool)
        self.obs: dict[str, np.ndarray] = {}
        self.categories: dict[str, list[str]] = {}
        labels_key, batch_key = keys["labels_key"], keys["batch_key"]
        if "labels_key" in task.requires:
            keep, self.obs["labels"], self.categories["labels"] = label_codes(adata, labels_key)
        self.cells = adata if keep.all() else adata[keep]
        if batch_key is not None and "batch_key" in task.requires + task.optional:
            self.obs["batch_labels"], self.categories["batches"] = batch_codes(self.cells, batch_key)
        max_length = options.get("max_length")
        recipe = task.recipe if max_length is None else task.recipe.replace(max_length=max_length)
        if "batches" not in self.categories and "dab" in recipe.objectives:  # an optional batch_key not given
            recipe = recipe.replace(objectives={k: w for k, w in recipe.objectives.items() if k != "dab"})
        self.recipe = recipe
        early_stopping, validation_size = options.get("early_stopping"), options.get("validation_size")
        self.stop = task.defaults.get("early_stopping", False) if early_stopping is None else early_stopping
        if validation_size is None:  # cells are held out to stop early or to keep the best epoch (official tutorials)
            held_out = self.stop or task.defaults.get("restore_best", False)
            validation_size = task.defaults.get("validation_size", 0.1) if held_out else 0.0
        seed = options.get("seed", 0)
        if "labels" in self.obs:
            self.split = stratified_split(self.obs["labels"], validation_size, seed=seed)
        else:
            self.split = random_split(self.cells.n_obs, 1 - validation_size, validation_size, seed=seed)
        self.validation = len(self.split[1]) > 0
        self.registry: dict[str, Any] = {"task": task.name}
        if "labels" in self.categories:
            self.registry.update(label_categories=self.categories["labels"], labels_key=labels_key)
        if "batches" in self.categories:
            self.registry.update(batch_categories=self.categories["batches"], batch_key=batch_key)
        self.train_options: dict[str, Any] = {}

    def datamodule(self, model: ScGPT, *, batch_size: int | None) -> ScGPTDataModule:
        """The data module for the model with the task's heads (``batch_size=None``: the task's)."""
        from ..data import AnnDataSource

        o = self.options
        source = AnnDataSource.matched(
            self.cells,
            model.vocab,
            gene_key=o.get("gene_key"),
            layer=o.get("layer"),
            use_aliases=o.get("use_aliases", True),
            organism=o.get("organism", "human"),
            orthologs=o.get("orthologs", "one2one"),
        )
        size = self.task.defaults.get("batch_size", 32) if batch_size is None else batch_size
        dm = model.make_datamodule(
            source, self.recipe, batch_size=size, seed=o.get("seed", 0), obs=self.obs, split=self.split
        )
        if self.recipe.include_zero_genes:  # every gene of the panel is a token of every cell: the panel is the model's
            self.registry["tokens"] = model.vocab.lookup_tokens(source.present_tokens())
        return dm

    def training_tokens(self) -> np.ndarray:
        """Tokens of each training cell per pass (for the time estimate): the panel with zero genes, else expressed."""
        from ..data import stored_per_row

        n_max = self.recipe.max_length
        train = self.split[0]
        if self.recipe.include_zero_genes and "tokens" in self.registry:
            return np.full(len(train), min(len(self.registry["tokens"]) + 1, n_max), dtype=np.float64)
        try:
            per_row = stored_per_row(self.cells, self.options.get("layer"))[train]
        except Exception:  # noqa: BLE001 - an estimate only
            per_row = np.full(len(train), n_max)
        return np.minimum(per_row + 1, n_max).astype(np.float64)

    def summary(self) -> str:
        """The log line before training."""
        return (
            f"fine-tuning for {self.task.name!r} on {len(self.split[0])} cells ({len(self.split[1])} for validation)"
            + "".join(f", {len(v)} {k}" for k, v in self.categories.items())
        )

    def finish(self, model: ScGPT) -> None:
        """Record what training produced (nothing for cells)."""
