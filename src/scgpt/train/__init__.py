"""Training: recipes, losses, the Lightning plan and data module."""

from ._datamodule import ScGPTDataModule
from ._losses import contrastive_cell_embedding, elastic_cell_similarity, masked_mse, masked_nll_bernoulli
from ._plan import ScGPTTrainingPlan, check_recipe, warmup_cosine
from ._recipes import RECIPES, Recipe, get_recipe

__all__ = [
    "RECIPES",
    "Recipe",
    "ScGPTDataModule",
    "ScGPTTrainingPlan",
    "check_recipe",
    "contrastive_cell_embedding",
    "elastic_cell_similarity",
    "get_recipe",
    "masked_mse",
    "masked_nll_bernoulli",
    "warmup_cosine",
]
