"""User-facing model class, the task registry and the inference engine every task runs on.

Names are imported on first use: the task registry (:data:`TASKS`) loads without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

_WHERE = {
    "TASKS": "._tasks",
    "Task": "._tasks",
    "get_task": "._tasks",
    "ScGPT": "._scgpt",
    "TrainingOutOfMemoryError": "._training",
    "AttentionMaps": "._inference",
    "PerturbationPrediction": "._perturbation",
    "label_codes": "._setup",
    "batch_codes": "._setup",
    "global_rank": "._distributed",
    **dict.fromkeys(_OUT_OF_CORE := ["ChunkStore", "embed_to_store", "input_identity", "mean_tokens"], "._outofcore"),
    **dict.fromkeys(["read_embeddings", "write_h5ad"], "._outofcore"),
    "resolve_model": "._resolve",
    "resolve_device": "._device",
    "resolve_dtype": "._device",
    **dict.fromkeys(["with_modalities", "feature_token", "modality_names"], "._multiomic"),
    **dict.fromkeys(
        ["Accumulator", "CellRows", "GenePairs", "GeneValues", "InferenceResult", "rank_normalize", "run_inference"],
        "._engine",
    ),
}
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)

if TYPE_CHECKING:  # pragma: no cover
    from ._device import resolve_device, resolve_dtype
    from ._distributed import global_rank
    from ._engine import Accumulator, CellRows, GenePairs, GeneValues, InferenceResult, rank_normalize, run_inference
    from ._inference import AttentionMaps
    from ._multiomic import feature_token, modality_names, with_modalities
    from ._outofcore import ChunkStore, embed_to_store, input_identity, mean_tokens, read_embeddings, write_h5ad
    from ._perturbation import PerturbationPrediction
    from ._resolve import resolve_model
    from ._scgpt import ScGPT
    from ._setup import batch_codes, label_codes
    from ._tasks import TASKS, Task, get_task
    from ._training import TrainingOutOfMemoryError

_SHARED = {"global_rank", *_OUT_OF_CORE, "read_embeddings", "write_h5ad"}
"""Helpers shared with the command line (out-of-core embedding), not part of the documented API."""
__all__ = sorted(set(_WHERE) - _SHARED)
