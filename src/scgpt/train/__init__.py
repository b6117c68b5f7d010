"""Training: recipes, the objective registry, the Lightning plan, data module and runner.

Names are imported on first use: :class:`Recipe` loads without torch or Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

_WHERE = {
    "Recipe": "._recipes",
    "ScGPTDataModule": "._datamodule",
    "ScGPTTrainingPlan": "._plan",
    "PLAN_OPTIONS": "._plan",
    "PerturbationDataModule": "._perturbation",
    "warmup_cosine": "._plan",
    "TrainRunner": "._runner",
    "TrainingInterrupted": "._runner",
    "TrainingDiverged": "._runner",
    "quiet_training": "._runner",
    "no_checkpoint": "._runner",
    **dict.fromkeys(["OBJECTIVES", "Objective", "Step", "check_recipe", "objective"], "._objectives"),
}
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)

if TYPE_CHECKING:  # pragma: no cover
    from ._datamodule import ScGPTDataModule
    from ._objectives import OBJECTIVES, Objective, Step, check_recipe, objective
    from ._perturbation import PerturbationDataModule
    from ._plan import PLAN_OPTIONS, ScGPTTrainingPlan, warmup_cosine
    from ._recipes import Recipe
    from ._runner import TrainingDiverged, TrainingInterrupted, TrainRunner, no_checkpoint, quiet_training

__all__ = sorted(set(_WHERE) - {"quiet_training", "PLAN_OPTIONS", "no_checkpoint"})
