"""The Lightning training plan: the objectives of a :class:`Recipe` on an :class:`~scgpt.nn.ScGPTNet`.

It owns the optimiser and the schedule; it never builds a Trainer (that is
:class:`~scgpt.train.TrainRunner`'s job).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from .._logging import warn
from ..data._collate import CellBatch, _mix
from ..data._random import splitmix64
from ..nn import ScGPTNet
from ._losses import masked_mse, pearson_delta
from ._objectives import OBJECTIVES, Step, check_recipe
from ._recipes import Recipe


def warmup_cosine(step: int, *, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up from 0, then cosine decay to 0 at ``total``.

    The official pretraining schedule (``transformers.get_cosine_schedule_with_warmup``): step ``s`` of the
    warm-up gets ``s / warmup`` (so the first step's learning rate is 0).
    """
    if step < warmup:
        return step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


PLAN_OPTIONS = ("lr", "weight_decay", "eps", "schedule", "warmup_steps", "step_gamma")
"""The optimiser and schedule options of :class:`ScGPTTrainingPlan` (``ScGPT.train(plan_kwargs=...)``)."""


class ScGPTTrainingPlan(pl.LightningModule):
    """Trains an :class:`~scgpt.nn.ScGPTNet` on the objectives of a :class:`~scgpt.train.Recipe`.

    Parameters
    ----------
    net
        The network (trained in place).
    recipe
        Objectives and their weights.
    lr
        Peak learning rate (official: 1e-4).
    weight_decay
        Weight decay (AdamW when > 0, else Adam).
    eps
        Adam epsilon (the official fine-tuning scripts use 1e-4 with fp16).
    schedule
        ``"cosine"`` (linear warm-up then cosine decay, official pretraining), ``"step"`` (multiply by
        ``step_gamma`` every epoch, official fine-tuning) or ``"constant"``.
    warmup_steps
        Warm-up steps of the cosine schedule.
    step_gamma
        Per-epoch factor of the step schedule (official: 0.9).
    seed
        Seed of the dropout masks (each training step reseeds from it and the step's cells, so a
        resumed run draws the same masks as an uninterrupted one).
    """

    def __init__(
        self,
        net: ScGPTNet,
        recipe: Recipe,
        *,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        schedule: Literal["cosine", "step", "constant"] = "cosine",
        warmup_steps: int = 0,
        step_gamma: float = 0.9,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_recipe(net.config, recipe)
        if schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"schedule must be 'cosine', 'step' or 'constant', got {schedule!r}.")
        self.net, self.recipe = net, recipe
        self.lr, self.weight_decay, self.eps = lr, weight_decay, eps
        self.schedule, self.warmup_steps, self.step_gamma, self.seed = schedule, warmup_steps, step_gamma, seed
        self.save_hyperparameters(
            {
                "recipe": recipe.to_dict(),
                "lr": lr,
                "weight_decay": weight_decay,
                "eps": eps,
                "schedule": schedule,
                "warmup_steps": warmup_steps,
                "step_gamma": step_gamma,
                "seed": seed,
            }
        )

    # ------------------------------------------------------------------ objectives
    def compute_losses(self, batch: CellBatch) -> dict[str, Tensor]:
        """Every objective of the recipe (unweighted values) and ``loss``, their weighted sum.

        Batches of a perturbation model that carry their perturbation's observed mean
        (``batch.observed_mean``) also give ``pearson_delta``, the Pearson-delta of their mean prediction.
        """
        step = Step(self.net, batch, self.recipe, self.global_step)
        terms: dict[str, tuple[float, Tensor]] = {}
        for name, weight in self.recipe.active.items():
            value = OBJECTIVES[name].loss(step)
            if value is not None:
                terms[name] = (weight, value)
        out = {name: value for name, (_, value) in terms.items()}
        out["loss"] = sum(w * v for w, v in terms.values())
        if batch.predict_mask.any() and batch.pert_flags is None:
            out["mean_baseline"] = self._cell_mean_baseline(batch)
        if batch.observed_mean is not None:  # a validation batch of one perturbation
            mask = batch.predict_mask[0] & ~batch.padding_mask[0]
            out["pearson_delta"] = pearson_delta(step.expression[0], batch.control_mean, batch.observed_mean, mask)
        return out

    @staticmethod
    def _cell_mean_baseline(batch: CellBatch) -> Tensor:
        """MSE of predicting each hidden value by the mean of the cell's visible gene values."""
        visible = ~batch.predict_mask & ~batch.padding_mask
        visible[:, 0] = False  # <cls>
        mean = (batch.target * visible).sum(1, keepdim=True) / visible.sum(1, keepdim=True).clamp(min=1)
        return masked_mse(mean.expand_as(batch.target), batch.target, batch.predict_mask)

    # ------------------------------------------------------------------ Lightning hooks
    def _reseed_dropout(self, batch: CellBatch) -> None:
        cells = batch.cells.cpu().numpy() if batch.cells is not None else np.arange(len(batch))
        content = int(np.bitwise_xor.reduce(splitmix64(cells.astype(np.uint64)))) if len(cells) else 0
        torch.manual_seed(_mix(self.seed, batch.epoch, batch.index, content) & 0x7FFF_FFFF_FFFF_FFFF)

    def training_step(self, batch: CellBatch, batch_idx: int) -> Tensor:
        loader = getattr(self.trainer, "train_dataloader", None)
        if hasattr(loader, "mark_consumed"):
            loader.mark_consumed(batch)
        self._reseed_dropout(batch)
        losses = self.compute_losses(batch)
        for name, value in losses.items():
            self.log(
                f"train_{name}",
                value.detach(),
                on_step=True,
                on_epoch=True,
                prog_bar=name == "loss",
                batch_size=len(batch),
                sync_dist=False,
            )
        return losses["loss"]

    def validation_step(self, batch: CellBatch, batch_idx: int) -> None:
        losses = self.compute_losses(batch)
        for name, value in losses.items():
            self.log(
                f"val_{name}",
                value,
                on_step=False,
                on_epoch=True,
                prog_bar=name == "loss",
                batch_size=len(batch),
                sync_dist=True,
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Warn when a run resumes with settings other than the checkpoint's (the result would differ)."""
        saved = checkpoint.get("hyper_parameters", {})
        changed = [f"{k}: {saved[k]!r} -> {v!r}" for k, v in self.hparams.items() if k in saved and saved[k] != v]
        if changed:
            warn(
                "Resuming with settings that differ from the checkpoint's (" + "; ".join(changed) + "); the result "
                "will not equal an uninterrupted run."
            )

    def transfer_batch_to_device(self, batch: CellBatch, device: torch.device, dataloader_idx: int) -> CellBatch:
        return batch.to(device)

    def _total_steps(self) -> int:
        """Optimiser steps of the whole run, for the cosine schedule.

        Counted from the data module's own loader rather than with ``trainer.estimated_stepping_batches``:
        that property sets up Lightning's data before a checkpoint is restored, and Lightning then never
        hands the loader its saved position, so a run limited by epochs would resume from the first batch.
        """
        t = self.trainer
        datamodule = getattr(t, "datamodule", None)
        if datamodule is None:
            return int(t.estimated_stepping_batches)
        per_epoch = math.ceil(len(datamodule.train_dataloader()) / t.accumulate_grad_batches)
        limits = []
        if t.max_steps is not None and t.max_steps >= 0:
            limits.append(t.max_steps)
        if t.max_epochs is not None and t.max_epochs >= 0:
            limits.append(per_epoch * t.max_epochs)
        return max(1, min(limits)) if limits else int(t.estimated_stepping_batches)

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        if self.weight_decay:
            opt = torch.optim.AdamW(params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=self.lr, eps=self.eps)
        if self.schedule == "constant":
            return opt
        if self.schedule == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=self.step_gamma)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        total = self._total_steps()
        warmup = min(self.warmup_steps, max(total - 1, 0))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup=warmup, total=total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
