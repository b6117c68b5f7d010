"""Training recipes: which objectives, with which weights and data settings (official tutorials)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal


@dataclass(frozen=True)
class Recipe:
    """What a training run optimises and how cells are tokenised for it.

    Parameters
    ----------
    name
        Recipe name.
    objective
        ``"generative"``: a random subset of genes enters without values and is predicted (the
        official pretraining, with the scGPT attention mask); ``"masked"``: values of a random
        subset are replaced by ``mask_value`` and predicted; ``"none"``: nothing hidden (e.g. pure
        classification).
    mask_ratio
        Fraction of a cell's genes hidden; a tuple draws one per minibatch.
    mlm
        Weight of the expression MSE on hidden positions (GEP).
    mvc
        Weight of the MSE of values predicted from the cell embedding, on hidden positions (GEPC/MVC).
    zero_prob
        Weight of the Bernoulli NLL of the nonzero probabilities (needs ``explicit_zero_prob``).
    cell_prompt
        Generative objective: after ``cell_prompt_after`` steps, add a second pass in which the
        detached cell embedding replaces ``<cls>`` (official cell-prompt pretraining), with this weight.
    cell_prompt_after
        Step from which the cell-prompt pass is added.
    cls
        Weight of the classification cross-entropy (needs labels and a classification head).
    ecs, ecs_threshold
        Weight and threshold of the elastic cell similarity loss (official: 10, 0.8).
    dab
        Weight of the adversarial batch-discriminator cross-entropy (needs batches and a DAB head).
    cce, cce_temperature
        Weight and temperature of the contrastive cell embedding loss (two dropout views).
    cls_value
        Value at ``<cls>``: ``"pad"`` (pad_value; pretraining, zero-shot) or ``"zero"`` (fine-tuning tutorials).
    mask_value
        Input value of masked positions.
    include_zero_genes
        Keep unexpressed genes as tokens (value 0).
    max_length
        Tokens per cell including ``<cls>``.
    """

    name: str
    objective: Literal["generative", "masked", "none"] = "masked"
    mask_ratio: float | tuple[float, ...] = 0.4
    mlm: float = 1.0
    mvc: float = 0.0
    zero_prob: float = 0.0
    cell_prompt: float = 0.0
    cell_prompt_after: int = 1000
    cls: float = 0.0
    ecs: float = 0.0
    ecs_threshold: float = 0.8
    dab: float = 0.0
    cce: float = 0.0
    cce_temperature: float = 0.5
    cls_value: Literal["pad", "zero"] = "pad"
    mask_value: float = -1.0
    include_zero_genes: bool = False
    max_length: int = 1200

    def replace(self, **changes: Any) -> Recipe:
        """Copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        d = asdict(self)
        d["mask_ratio"] = list(d["mask_ratio"]) if isinstance(d["mask_ratio"], tuple) else d["mask_ratio"]
        return d


RECIPES: dict[str, Recipe] = {
    # official generative pretraining (dev-temp examples/pretrain.py): gen MSE + MVC on generated genes,
    # cell-prompt pass after 1000 steps, ratios 0.25/0.5/0.75, <cls> value = pad_value
    "pretrain": Recipe(
        "pretrain", objective="generative", mask_ratio=(0.25, 0.5, 0.75), mlm=1.0, mvc=1.0, cell_prompt=1.0
    ),
    # masked-value pretraining (GEP + GEPC), the simpler alternative
    "pretrain-masked": Recipe("pretrain-masked", objective="masked", mask_ratio=(0.25, 0.5, 0.75), mlm=1.0, mvc=1.0),
    # Tutorial_Annotation: CLS only, nothing masked, expressed genes, <cls> value 0
    "annotation": Recipe(
        "annotation", objective="none", mask_ratio=0.0, mlm=0.0, cls=1.0, cls_value="zero", max_length=3001
    ),
    # Tutorial_Integration: GEP + GEPC + explicit zero probabilities + ECS(0.8, x10) + DAB(1), mask 0.4, HVG with zeros
    "integration": Recipe(
        "integration",
        objective="masked",
        mask_ratio=0.4,
        mlm=1.0,
        mvc=1.0,
        zero_prob=1.0,
        ecs=10.0,
        ecs_threshold=0.8,
        dab=1.0,
        cls_value="zero",
        include_zero_genes=True,
        max_length=1201,
    ),
}


def get_recipe(recipe: str | Recipe) -> Recipe:
    """A :class:`Recipe` by name (or the recipe itself)."""
    if isinstance(recipe, Recipe):
        return recipe
    if recipe not in RECIPES:
        raise ValueError(f"Unknown recipe {recipe!r}; available: {sorted(RECIPES)} (or pass a Recipe).")
    return RECIPES[recipe]
