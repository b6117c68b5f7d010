"""The Lightning training plan: objectives of a :class:`Recipe` on an :class:`~scgpt.nn.ScGPTNet`."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data._collate import CellBatch, _mix
from ..data._random import splitmix64
from ..nn import ScGPTNet
from ._losses import contrastive_cell_embedding, elastic_cell_similarity, masked_mse, masked_nll_bernoulli
from ._recipes import Recipe


def check_recipe(net: ScGPTNet, recipe: Recipe) -> None:
    """Clear errors when a recipe needs a part the network lacks."""
    c = net.config
    needs = []
    if recipe.objective == "generative" and not c.generative:
        needs.append("the generative objective needs config.generative=True (the flag embedding)")
    if recipe.mvc and not c.mvc_style:
        needs.append("mvc > 0 needs an MVC decoder (config.mvc_style)")
    if recipe.zero_prob and not c.explicit_zero_prob:
        needs.append("zero_prob > 0 needs config.explicit_zero_prob=True")
    if recipe.cls and not c.n_cls:
        needs.append("cls > 0 needs a classification head (config.n_cls)")
    if recipe.dab and not c.dab:
        needs.append("dab > 0 needs the adversarial discriminator (config.dab=True)")
    if needs:
        raise ValueError(f"Recipe {recipe.name!r} does not fit this model: " + "; ".join(needs) + ".")


def warmup_cosine(step: int, *, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


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
        check_recipe(net, recipe)
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
    def _encode(self, batch: CellBatch, **kw: Any):
        c = self.net.config
        labels = batch.batch_labels if (c.use_batch_labels or c.batch_norm == "dsbn") else None
        return self.net.encode(
            batch.genes, batch.values, batch.padding_mask, batch_labels=labels, gen_mask=batch.gen_mask, **kw
        )

    def compute_losses(self, batch: CellBatch) -> dict[str, Tensor]:
        """Every weighted loss term of the recipe (unweighted values) and ``loss``, their weighted sum."""
        r = self.recipe
        enc = self._encode(batch)
        target, hidden = batch.target, batch.predict_mask
        terms: dict[str, tuple[float, Tensor]] = {}
        if r.mlm or r.zero_prob:
            pred, zero = self.net.expression(enc)
            if r.mlm:
                terms["mlm"] = (r.mlm, masked_mse(pred, target, hidden))
            if r.zero_prob and zero is not None:
                terms["mlm_zero"] = (r.zero_prob, masked_nll_bernoulli(zero, target, hidden))
        if r.mvc:
            pred, zero = self.net.mvc(enc)
            terms["mvc"] = (r.mvc, masked_mse(pred, target, hidden))
            if r.zero_prob and zero is not None:
                terms["mvc_zero"] = (r.zero_prob, masked_nll_bernoulli(zero, target, hidden))
        if r.cell_prompt and r.objective == "generative" and self.global_step >= r.cell_prompt_after:
            prompted = self._encode(batch, cell_prompt=enc.cell_emb.detach())
            terms["cell_prompt"] = (r.cell_prompt, masked_mse(self.net.expression(prompted)[0], target, hidden))
        if r.cls:
            if batch.labels is None:
                raise ValueError(f"Recipe {r.name!r} trains a classifier: set up the data with labels_key.")
            terms["cls"] = (r.cls, F.cross_entropy(self.net.classify(enc).float(), batch.labels))
        if r.ecs:
            terms["ecs"] = (r.ecs, elastic_cell_similarity(enc.cell_emb, r.ecs_threshold))
        if r.dab:
            if batch.batch_labels is None:
                raise ValueError(f"Recipe {r.name!r} uses the batch discriminator: set up the data with batch_key.")
            terms["dab"] = (r.dab, F.cross_entropy(self.net.discriminate(enc).float(), batch.batch_labels))
        if r.cce:
            other = self._encode(batch)  # a second dropout view
            terms["cce"] = (r.cce, contrastive_cell_embedding(enc.cell_emb, other.cell_emb, r.cce_temperature))
        if not terms:
            raise ValueError(f"Recipe {r.name!r} has no objective with a positive weight.")
        out = {name: value for name, (_, value) in terms.items()}
        out["loss"] = sum(w * v for w, v in terms.values())
        if hidden.any():
            out["mean_baseline"] = self._cell_mean_baseline(batch)
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

    def transfer_batch_to_device(self, batch: CellBatch, device: torch.device, dataloader_idx: int) -> CellBatch:
        return batch.to(device)

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
        total = int(self.trainer.estimated_stepping_batches)
        warmup = min(self.warmup_steps, max(total - 1, 0))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup=warmup, total=total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
