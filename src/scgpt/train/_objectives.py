"""The training objectives, one small function each, in a registry keyed by name.

A :class:`~scgpt.train.Recipe` names objectives with weights; the training plan evaluates each on
a :class:`Step` (one minibatch, encoded once and shared) and sums them. A new objective is one
entry::

    @objective("my_loss", needs=lambda config: None if config.n_cls else "a classification head (config.n_cls)")
    def my_loss(step: Step) -> Tensor:
        return ...

Names follow the official code: ``mlm`` is gene expression prediction (GEP), ``mvc`` is GEP from the
cell embedding (GEPC), ``ecs``/``dab``/``cce``/``cls`` as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from ..nn import Encoded, ScGPTConfig, ScGPTNet
from ._losses import contrastive_cell_embedding, elastic_cell_similarity, masked_mse, masked_nll_bernoulli

if TYPE_CHECKING:
    from ..data._collate import CellBatch
    from ._recipes import Recipe


class Step:
    """One minibatch as the objectives see it: the batch, the network, and the encoder output computed once.

    Attributes
    ----------
    net
        The network being trained.
    batch
        The minibatch.
    recipe
        The recipe being trained.
    global_step
        Optimiser steps done so far.
    """

    def __init__(self, net: ScGPTNet, batch: CellBatch, recipe: Recipe, global_step: int = 0) -> None:
        self.net, self.batch, self.recipe, self.global_step = net, batch, recipe, global_step

    def encode(self, **kwargs) -> Encoded:
        """A fresh pass of the encoder over the batch (e.g. a second dropout view)."""
        b = self.batch
        cond = b.inputs(self.net.config.batch_conditioned)
        return self.net.encode(b.genes, b.values, gen_mask=b.gen_mask, **cond, **kwargs)

    @cached_property
    def enc(self) -> Encoded:
        """The encoder output shared by all objectives of the step."""
        return self.encode()

    @cached_property
    def expression(self) -> tuple[Tensor, Tensor | None]:
        """Expression values (and nonzero probabilities) from token states, ``(B, L)``."""
        return self.net.expression(self.enc)

    @cached_property
    def mvc(self) -> tuple[Tensor, Tensor | None]:
        """Expression values (and nonzero probabilities) from the cell embedding, ``(B, L)``."""
        return self.net.mvc(self.enc)

    def hidden_mse(self, pred: Tensor) -> Tensor:
        """MSE of ``pred`` against the true values at the hidden positions."""
        return masked_mse(pred, self.batch.target, self.batch.predict_mask)

    def hidden_nll(self, prob: Tensor) -> Tensor:
        """Bernoulli NLL of nonzero-ness at the hidden positions."""
        return masked_nll_bernoulli(prob, self.batch.target, self.batch.predict_mask)


@dataclass(frozen=True)
class Objective:
    """A named loss term.

    Parameters
    ----------
    name
        Registry key; also the name of the logged value (``train_<name>``, ``val_<name>``).
    loss
        ``Step -> Tensor`` (a scalar), or ``None`` when the term does not apply to this step.
    needs
        ``ScGPTConfig -> str | None``: what the network lacks for this objective, or ``None``.
    """

    name: str
    loss: Callable[[Step], Tensor | None]
    needs: Callable[[ScGPTConfig], str | None]


OBJECTIVES: dict[str, Objective] = {}
"""Every objective, by name."""


def objective(name: str, *, needs: Callable[[ScGPTConfig], str | None] = lambda config: None):
    """Register ``loss`` as the objective ``name`` (decorator)."""

    def register(loss: Callable[[Step], Tensor | None]) -> Callable[[Step], Tensor | None]:
        OBJECTIVES[name] = Objective(name, loss, needs)
        return loss

    return register


def _needs(flag: str, what: str) -> Callable[[ScGPTConfig], str | None]:
    return lambda config: None if getattr(config, flag) else what


# ---------------------------------------------------------------------------- the objectives
@objective("mlm")
def mlm(step: Step) -> Tensor:
    """GEP: MSE of the values predicted from token states at hidden positions."""
    return step.hidden_mse(step.expression[0])


@objective("mlm_zero", needs=_needs("explicit_zero_prob", "explicit zero probabilities (explicit_zero_prob=True)"))
def mlm_zero(step: Step) -> Tensor:
    """Bernoulli NLL of the expression decoder's nonzero probabilities at hidden positions."""
    return step.hidden_nll(step.expression[1])


@objective("mvc", needs=_needs("mvc_style", "an MVC decoder (config.mvc_style)"))
def mvc(step: Step) -> Tensor:
    """GEPC: MSE of the values predicted from the cell embedding at hidden positions."""
    return step.hidden_mse(step.mvc[0])


@objective(
    "mvc_zero",
    needs=lambda c: None if c.mvc_style and c.explicit_zero_prob else "an MVC decoder with explicit zero probabilities",
)
def mvc_zero(step: Step) -> Tensor:
    """Bernoulli NLL of the MVC decoder's nonzero probabilities at hidden positions."""
    return step.hidden_nll(step.mvc[1])


@objective("cell_prompt", needs=_needs("generative", "the generative flag embedding (config.generative=True)"))
def cell_prompt(step: Step) -> Tensor | None:
    """Cell prompt (generative pretraining, after ``recipe.cell_prompt_after`` steps).

    A second pass with the detached cell embedding in place of ``<cls>``; its generated values are
    scored like ``mlm``.
    """
    if step.recipe.masking != "generative" or step.global_step < step.recipe.cell_prompt_after:
        return None
    prompted = step.encode(cell_prompt=step.enc.cell_emb.detach())
    return step.hidden_mse(step.net.expression(prompted)[0])


@objective("cls", needs=_needs("n_cls", "a classification head (config.n_cls)"))
def cls(step: Step) -> Tensor:
    """Cross-entropy of the cell-type classifier."""
    if step.batch.labels is None:
        raise ValueError(f"Recipe {step.recipe.name!r} trains a classifier: the cells need labels (labels_key).")
    return F.cross_entropy(step.net.classify(step.enc).float(), step.batch.labels)


@objective("ecs")
def ecs(step: Step) -> Tensor:
    """Elastic cell similarity: cosine similarities of different cells pushed below ``recipe.ecs_threshold``."""
    return elastic_cell_similarity(step.enc.cell_emb, step.recipe.ecs_threshold)


@objective("dab", needs=_needs("dab", "the adversarial batch discriminator (config.dab=True)"))
def dab(step: Step) -> Tensor:
    """Cross-entropy of the batch discriminator behind gradient reversal."""
    if step.batch.batch_labels is None:
        raise ValueError(f"Recipe {step.recipe.name!r} uses the batch discriminator: the cells need batches.")
    return F.cross_entropy(step.net.discriminate(step.enc).float(), step.batch.batch_labels)


@objective("cce")
def cce(step: Step) -> Tensor:
    """Contrastive cell embedding: two dropout views of each cell are each other's nearest neighbour."""
    return contrastive_cell_embedding(step.enc.cell_emb, step.encode().cell_emb, step.recipe.cce_temperature)


def check_recipe(config: ScGPTConfig, recipe: Recipe) -> None:
    """Clear errors for objectives that do not exist or that need a part the network lacks."""
    unknown = [name for name in recipe.active if name not in OBJECTIVES]
    if unknown:
        raise ValueError(f"Recipe {recipe.name!r}: unknown objectives {unknown}; known: {sorted(OBJECTIVES)}.")
    if not recipe.active:
        raise ValueError(f"Recipe {recipe.name!r} has no objective with a positive weight.")
    problems = [f"{name} needs {need}" for name in recipe.active if (need := OBJECTIVES[name].needs(config))]
    if recipe.masking == "generative" and not config.generative:
        problems.append("generative masking needs config.generative=True (the flag embedding)")
    if problems:
        raise ValueError(f"Recipe {recipe.name!r} does not fit this model: " + "; ".join(problems) + ".")
