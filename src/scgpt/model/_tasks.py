"""The task registry: what pretraining or fine-tuning for a task means, in one place.

Each :class:`Task` says which heads and config changes it needs, which objectives with which
weights (the official values), which ``obs`` columns it reads, and its default schedule and
training settings. :meth:`ScGPT.finetune <scgpt.model.ScGPT.finetune>`, :meth:`ScGPT.train
<scgpt.model.ScGPT.train>` (``recipe="<task>"``), :func:`scgpt.tl.annotate` and the ``scgpt``
command all read :data:`TASKS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..train._recipes import Recipe

if TYPE_CHECKING:
    from ..nn import ScGPTConfig


@dataclass(frozen=True)
class Task:
    """A pretraining or fine-tuning task.

    Parameters
    ----------
    name
        Registry key (``model.finetune(name, ...)``, ``scgpt finetune --recipe name``).
    summary
        One line for help texts.
    stage
        ``"pretrain"`` (continue or start pretraining) or ``"finetune"``.
    recipe
        Objectives with their weights and the tokenisation (official values).
    requires
        Keyword arguments naming ``obs`` columns the task reads (``"labels_key"``, ``"batch_key"``).
    optional
        Such keyword arguments the task uses when given (objectives that need them are dropped otherwise).
    multiomic
        The task needs a multi-omic model (:func:`scgpt.model.with_modalities`).
    heads
        ``(config, categories) -> config changes``: the heads and conditioning the task adds, given
        the categories found in the data (``{"labels": [...], "batches": [...]}``).
    schedule
        Default learning-rate schedule (``"cosine"``, ``"step"`` or ``"constant"``).
    defaults
        Default training settings of the official tutorial or script: ``lr``, ``batch_size``, ``max_epochs``,
        ``eps`` (Adam), ``gradient_clip_val`` (every official loop clips the gradient norm at 1.0),
        ``validation_size`` with ``early_stopping`` and ``restore_best`` (the tutorials hold out 10 % of the cells
        and keep the epoch with the best validation score).
    data
        What the task trains on: ``"cells"`` (each cell tokenised by the recipe) or ``"pairs"`` ((control cell,
        perturbed cell) pairs of a perturbation screen, :mod:`scgpt.data._screen`). :meth:`data_hook` gives the
        class that prepares either for :meth:`ScGPT.finetune <scgpt.model.ScGPT.finetune>`.
    inference
        How a model fine-tuned for the task reads cells for its outputs, beside the zero-shot defaults:
        ``include_zero_genes``, ``cls_value``, ``cls`` (``<cls>`` first), ``panel`` (only the genes it was
        fine-tuned on, ``registry_["tokens"]``). The ``max_length`` is the fine-tuning one.
    latent
        :meth:`ScGPT.get_latent_representation <scgpt.model.ScGPT.get_latent_representation>` of a model
        fine-tuned for the task reads cells as ``inference`` says (the task's product is an embedding);
        otherwise the zero-shot way.
    """

    name: str
    summary: str
    stage: Literal["pretrain", "finetune"]
    recipe: Recipe
    requires: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    multiomic: bool = False
    heads: Callable[[ScGPTConfig, Mapping[str, list[str]]], dict[str, Any]] = lambda config, categories: {}
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    data: Literal["cells", "pairs"] = "cells"
    inference: Mapping[str, Any] = field(default_factory=dict)
    latent: bool = False

    def data_hook(self) -> type:
        """The class that prepares this task's training data (``CellData`` or ``PairData``)."""
        if self.data == "pairs":
            from ._perturbation import PairData

            return PairData
        from ._celldata import CellData

        return CellData

    def inference_options(self, registry: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments of the inference engine for a model fine-tuned for this task (its ``registry_``)."""
        options = {k: v for k, v in self.inference.items() if k != "panel"}
        options["max_length"] = int(registry.get("last_recipe", {}).get("max_length", self.recipe.max_length))
        if self.inference.get("panel"):
            options["tokens"] = registry.get("tokens")
        return options


TUTORIAL_DROPOUT = 0.2
"""Dropout of the official fine-tuning tutorials (annotation, integration, multi-omic); the perturbation tutorial: 0."""


def _annotation_heads(config: ScGPTConfig, categories: Mapping[str, list[str]]) -> dict[str, Any]:
    return {"n_cls": len(categories["labels"]), "mvc_style": None, "dropout": TUTORIAL_DROPOUT}  # no GEPC


def _integration_heads(config: ScGPTConfig, categories: Mapping[str, list[str]]) -> dict[str, Any]:
    changes: dict[str, Any] = {
        "dropout": TUTORIAL_DROPOUT,
        "n_batch_labels": len(categories["batches"]),
        "use_batch_labels": True,
        "batch_norm": "dsbn",
        "dab": True,
        "explicit_zero_prob": True,
    }
    if config.mvc_style is None or config.mvc_style in ("concat query", "sum query"):
        changes["mvc_style"] = "inner product"  # the styles with explicit zero probabilities
    return changes


def _multiomic_heads(config: ScGPTConfig, categories: Mapping[str, list[str]]) -> dict[str, Any]:
    if "batches" not in categories:
        return {"dropout": TUTORIAL_DROPOUT}
    return {
        "n_batch_labels": len(categories["batches"]),
        "use_batch_labels": True,
        "dab": True,
        "dropout": TUTORIAL_DROPOUT,
    }


def _perturbation_heads(config: ScGPTConfig, categories: Mapping[str, list[str]]) -> dict[str, Any]:
    """The official ``TransformerGenerator``: flag embedding, affine decoder, no MVC, no batch conditioning."""
    return {
        "n_pert_flags": 3,  # official table size: 0 = not perturbed (the padding row, a zero vector), 1 = perturbed
        "pert_pad_id": 0,
        "expr_decoder": "affine",
        "explicit_zero_prob": False,
        "mvc_style": None,
        "n_cls": 1,  # the official generator builds a 1-output classifier it never trains (kept for its key layout)
        "use_batch_labels": False,
        "batch_norm": None,
        "dab": False,
        "n_modalities": None,
        "mod_pad_id": None,
        "generative": False,
        "pad_value": 0.0,  # the tutorial's pad_value; un-binned log1p values are fed
        "dropout": 0.0,  # the tutorial's dropout
    }


_PRETRAIN_RATIOS = (0.25, 0.5, 0.75)
_CLIP = {"gradient_clip_val": 1.0}  # every official loop: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        # official generative pretraining (dev-temp examples/pretrain.py): generated-gene MSE + MVC, the cell-prompt
        # pass after 1000 steps, ratios 0.25/0.5/0.75, <cls> value = pad_value, cosine schedule with warm-up
        Task(
            "pretrain",
            "generative pretraining with the scGPT attention mask (official)",
            "pretrain",
            Recipe(
                "pretrain",
                {"mlm": 1.0, "mvc": 1.0, "cell_prompt": 1.0},
                masking="generative",
                mask_ratio=_PRETRAIN_RATIOS,
            ),
            heads=lambda config, categories: {"generative": True},
            defaults=_CLIP,
        ),
        # masked-value pretraining (GEP + GEPC), the simpler alternative
        Task(
            "pretrain-masked",
            "masked-value pretraining (GEP + GEPC)",
            "pretrain",
            Recipe("pretrain-masked", {"mlm": 1.0, "mvc": 1.0}, masking="masked", mask_ratio=_PRETRAIN_RATIOS),
            defaults=_CLIP,
        ),
        # Tutorial_Annotation: CLS only, nothing masked, expressed genes, <cls> value 0, max length 3001, dropout 0.2,
        # Adam lr 1e-4 eps 1e-4 (the tutorial's AMP setting), batch 32, 10 epochs, StepLR 0.9 per epoch, clipping at
        # 1.0, 10 % held out, the epoch with the lowest validation loss kept
        Task(
            "annotation",
            "cell-type classifier over the labels_key categories (official annotation tutorial)",
            "finetune",
            Recipe("annotation", {"cls": 1.0}, masking="none", mask_ratio=0.0, cls_value="zero", max_length=3001),
            requires=("labels_key",),
            heads=_annotation_heads,
            schedule="step",
            defaults={
                "lr": 1e-4,
                "batch_size": 32,
                "max_epochs": 10,
                "validation_size": 0.1,
                "early_stopping": True,
                "restore_best": True,
                "eps": 1e-4,
                **_CLIP,
            },
            inference={"cls_value": 0.0},
        ),
        # Tutorial_Integration: GEP + GEPC + explicit zero probabilities + ECS(0.8, x10) + DAB(1) + DSBN, mask 0.4,
        # HVGs with zeros, dropout 0.2, lr 1e-4, StepLR 0.9, 15 epochs, batch 64, Adam eps 1e-4 (AMP), clipping at
        # 1.0, per-batch minibatches, 10 % held out and the epoch with the lowest validation loss kept
        Task(
            "integration",
            "batch integration: DSBN, adversarial batch discriminator, ECS over the batch_key batches (official)",
            "finetune",
            Recipe(
                "integration",
                {"mlm": 1.0, "mlm_zero": 1.0, "mvc": 1.0, "mvc_zero": 1.0, "ecs": 10.0, "dab": 1.0},
                masking="masked",
                mask_ratio=0.4,
                ecs_threshold=0.8,
                cls_value="zero",
                include_zero_genes=True,
                max_length=1201,
                per_batch_minibatches=True,
                batch_order="sequential",  # SubsetsBatchSampler(inter_subset_shuffle=False): batch after batch
            ),
            requires=("batch_key",),
            heads=_integration_heads,
            schedule="step",
            defaults={
                "lr": 1e-4,
                "batch_size": 64,
                "max_epochs": 15,
                "validation_size": 0.1,
                "restore_best": True,
                "eps": 1e-4,
                **_CLIP,
            },
            inference={"include_zero_genes": True, "cls_value": 0.0, "panel": True},
            latent=True,
        ),
        # Tutorial_Multiomics: RNA HVGs with zeros + the other modalities' features as tokens with modality ids,
        # binned per modality; GEP + GEPC (+ DAB over batches, batch labels joined to the decoders), mask 0.4.
        # The official tutorial trains a new encoder from the gene embeddings (lr 1e-3, 25 epochs); here the whole
        # pretrained model is fine-tuned, at the integration learning rate. Dropout 0.2, clipping at 1.0, 10 % held out.
        Task(
            "multiomic",
            "joint embedding of RNA and proteins/peaks as tokens with modality ids (official multi-omic tutorial)",
            "finetune",
            Recipe(
                "multiomic",
                {"mlm": 1.0, "mvc": 1.0, "dab": 1.0},
                masking="masked",
                mask_ratio=0.4,
                cls_value="zero",
                include_zero_genes=True,
                max_length=1601,
            ),
            optional=("batch_key",),
            multiomic=True,
            heads=_multiomic_heads,
            schedule="step",
            defaults={
                "lr": 1e-4,
                "batch_size": 32,
                "max_epochs": 25,
                "validation_size": 0.1,
                "restore_best": True,
                "eps": 1e-4,
                **_CLIP,
            },
            inference={"include_zero_genes": True, "cls_value": 0.0, "panel": True},
            latent=True,
        ),
        # Tutorial_Perturbation (TransformerGenerator): a random control cell's un-binned log1p(normalize_total)
        # values over the gene panel (zeros included, no <cls>) with flags on the target genes -> a cell of that
        # perturbation; MSE on every measured gene; 1536 tokens (a random subset above that, targets always
        # kept), dropout 0, lr 1e-4 (Adam's default eps), batch 64, StepLR 0.9, 15 epochs, clipping at 1.0, best epoch
        # by validation correlation (here the Pearson-delta over held-out target genes)
        Task(
            "perturbation",
            "perturbation-response prediction: control cell + target-gene flags -> perturbed cell (official)",
            "finetune",
            Recipe(
                "perturbation",
                {"mlm": 1.0},
                masking="none",
                mask_ratio=0.0,
                cls_value="zero",
                include_zero_genes=True,
                max_length=1536,
            ),
            heads=_perturbation_heads,
            schedule="step",
            defaults={
                "lr": 1e-4,
                "batch_size": 64,
                "max_epochs": 15,
                "validation_size": 0.1,
                "early_stopping": True,
                **_CLIP,
            },
            data="pairs",
            inference={"include_zero_genes": True, "cls": False},
        ),
    )
}
"""Every task, by name."""


def get_task(task: str | Task) -> Task:
    """A :class:`Task` by name (or the task itself), with a clear error listing the known names."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; available: {sorted(TASKS)}.")
    return TASKS[task]


def resolve_recipe(recipe: str | Recipe) -> tuple[Recipe, Task | None]:
    """The recipe of a task name (with its task), or a :class:`~scgpt.train.Recipe` as it is."""
    if isinstance(recipe, Recipe):
        return recipe, None
    task = get_task(recipe)
    return task.recipe, task
