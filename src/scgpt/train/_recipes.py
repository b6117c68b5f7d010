"""What a training run optimises and how its cells are tokenised: the :class:`Recipe` a training plan consumes.

The named recipes of the official tasks (pretraining, annotation, integration, ...) live with their
tasks in the model layer's registry (:data:`scgpt.model.TASKS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal


@dataclass(frozen=True)
class Recipe:
    """Objectives with their weights, and the tokenisation they need.

    Parameters
    ----------
    name
        Recipe name.
    objectives
        Objective name -> weight; names from :data:`scgpt.train.OBJECTIVES` (``"mlm"``, ``"mvc"``,
        ``"cls"``, ...). The loss is the weighted sum.
    masking
        ``"generative"``: a random subset of genes enters without values and is predicted (the
        official pretraining, with the scGPT attention mask); ``"masked"``: values of a random
        subset are replaced by ``mask_value`` and predicted; ``"none"``: nothing hidden (e.g. pure
        classification).
    mask_ratio
        Fraction of a cell's genes hidden; a tuple draws one per minibatch.
    cell_prompt_after
        Step from which the ``cell_prompt`` objective is added.
    ecs_threshold
        Threshold of the elastic cell similarity (official: 0.8).
    cce_temperature
        Temperature of the contrastive cell embedding loss.
    cls_value
        Value at ``<cls>``: ``"pad"`` (pad_value; pretraining, zero-shot) or ``"zero"`` (fine-tuning tutorials).
    mask_value
        Input value of masked positions.
    include_zero_genes
        Keep unexpressed genes as tokens (value 0).
    max_length
        Tokens per cell including ``<cls>``.
    per_batch_minibatches
        Every minibatch holds cells of one experimental batch (the official integration recipe, so that
        domain-specific BatchNorm sees whole minibatches of its batch).
    batch_order
        With ``per_batch_minibatches``: ``"sequential"``, every minibatch of the first batch, then of the
        second, ... (the official integration tutorial), or ``"interleaved"``, the minibatches of all batches
        shuffled together.
    """

    name: str
    objectives: Mapping[str, float] = field(default_factory=lambda: {"mlm": 1.0})
    masking: Literal["generative", "masked", "none"] = "masked"
    mask_ratio: float | tuple[float, ...] = 0.4
    cell_prompt_after: int = 1000
    ecs_threshold: float = 0.8
    cce_temperature: float = 0.5
    cls_value: Literal["pad", "zero"] = "pad"
    mask_value: float = -1.0
    include_zero_genes: bool = False
    max_length: int = 1200
    per_batch_minibatches: bool = False
    batch_order: Literal["interleaved", "sequential"] = "interleaved"

    def __post_init__(self) -> None:
        problems = []
        if self.masking not in ("generative", "masked", "none"):
            problems.append(f"masking must be 'generative', 'masked' or 'none', got {self.masking!r}")
        ratios = self.mask_ratio if isinstance(self.mask_ratio, tuple) else (self.mask_ratio,)
        if not ratios or not all(0 <= r < 1 for r in ratios):
            problems.append(f"mask_ratio must lie in [0, 1), got {self.mask_ratio!r}")
        if self.max_length < 2:
            problems.append(f"max_length must be at least 2 (<cls> and one gene), got {self.max_length}")
        if self.batch_order not in ("interleaved", "sequential"):
            problems.append(f"batch_order must be 'interleaved' or 'sequential', got {self.batch_order!r}")
        if self.cls_value not in ("pad", "zero"):
            problems.append(f"cls_value must be 'pad' or 'zero', got {self.cls_value!r}")
        if any(w < 0 for w in self.objectives.values()):
            problems.append(f"objective weights must be non-negative, got {dict(self.objectives)}")
        if problems:
            raise ValueError(f"Invalid recipe {self.name!r}: " + "; ".join(problems) + ".")

    @property
    def active(self) -> dict[str, float]:
        """The objectives with a positive weight."""
        return {name: float(w) for name, w in self.objectives.items() if w}

    def replace(self, **changes: Any) -> Recipe:
        """Copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        d = asdict(self)
        d["objectives"] = dict(self.objectives)
        d["mask_ratio"] = list(d["mask_ratio"]) if isinstance(d["mask_ratio"], tuple) else d["mask_ratio"]
        return d
