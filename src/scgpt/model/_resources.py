"""Memory of a training step, estimated from the architecture: what fits where, and advice when it does not.

A training step holds the weights (float32, also under mixed precision), the gradients and the two Adam
moments of the trained weights (float32), and the activations that the backward pass needs. Activations
grow with the cells of a minibatch, their tokens and the model's width, for every transformer layer that
gradients flow through (all of them under full fine-tuning and LoRA, only the trained ones above frozen
layers); with gradient checkpointing a layer keeps only its input and recomputes the rest, so one layer's
activations are alive at a time.

The activation constants below were measured by ``benchmarks/finetune_resources.py`` (whole-human shape:
12 layers x 512, 1,200 tokens per cell; peak memory of one training step at two batch sizes, the slope
per cell) with fused attention, which keeps no ``L x L`` attention matrices, as PyTorch's attention
kernels on a GPU. See ``docs/training.md`` ("What fits where") for the table they give.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..nn import ScGPTNet
    from ._scgpt import ScGPT

GB = 1e9
#: Bytes of saved activations per token per unit of model width, for each transformer layer trained through.
ACTIVATION_PER_LAYER = {"32": 75.0, "bf16": 56.0}
#: The same outside the transformer (embeddings, value encoder, heads), per token per unit of width.
ACTIVATION_OUTSIDE = {"32": 40.0, "bf16": 30.0}
#: What a checkpointed layer keeps (its float32 input), per token per unit of width.
LAYER_INPUT = 4.0
#: Share of the device's memory counted as usable (the rest: CUDA context, allocator fragmentation).
USABLE = 0.9
#: Memory taken before the first step on a GPU (CUDA context and kernels), bytes.
CONTEXT = 0.6 * GB


def precision_key(precision: str | int) -> str:
    """``"32"`` for float32 training, ``"bf16"`` for mixed precision (bf16 or fp16)."""
    p = str(precision)
    return "32" if p.startswith("32") or p.startswith("64") else "bf16"


def trained_layers(net: ScGPTNet) -> int:
    """Transformer layers that gradients flow through: from the first one with a trained weight (or all)."""
    if any(p.requires_grad for m in (net.encoder, net.value_encoder) for p in m.parameters()):
        return net.config.n_layers
    for i, layer in enumerate(net.transformer_encoder.layers):
        if any(p.requires_grad for p in layer.parameters()):
            return net.config.n_layers - i
    return 0


def step_memory(
    *,
    n_parameters: int,
    n_trained: int,
    n_layers: int,
    d_model: int,
    max_length: int,
    precision: str | int = "32-true",
    gradient_checkpointing: bool = False,
) -> tuple[float, float]:
    """``(fixed, per_cell)`` bytes of one training step: weights and optimiser state, and activations per cell.

    Parameters
    ----------
    n_parameters, n_trained
        Parameters of the model and those trained (gradients and Adam moments are kept for these).
    n_layers
        Transformer layers gradients flow through (:func:`trained_layers`).
    d_model, max_length
        Width and tokens per cell.
    precision
        Lightning precision (``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"``).
    gradient_checkpointing
        Layers recompute their activations in the backward pass.
    """
    p = precision_key(precision)
    fixed = 4.0 * n_parameters + 12.0 * n_trained  # float32 weights; gradients and two Adam moments
    per_layer = ACTIVATION_PER_LAYER[p] * max_length * d_model
    outside = ACTIVATION_OUTSIDE[p] * max_length * d_model
    if gradient_checkpointing and n_layers:
        per_cell = n_layers * LAYER_INPUT * max_length * d_model + per_layer + outside
    else:
        per_cell = n_layers * per_layer + outside
    return fixed, per_cell


def fitting_batch_size(memory: float, fixed: float, per_cell: float, *, context: float = CONTEXT) -> int:
    """The largest batch whose step fits in ``memory`` bytes (0: not even one cell)."""
    return max(0, math.floor((USABLE * memory - context - fixed) / per_cell))


def _device_memory(model: ScGPT) -> tuple[str, float]:
    import torch

    device = model.device
    if device.type == "cuda":
        return str(device), float(torch.cuda.get_device_properties(device).total_memory)
    import psutil

    return str(device), float(psutil.virtual_memory().total)


def out_of_memory_message(model: ScGPT, datamodule: Any, recipe: Any, options: Mapping[str, Any]) -> str:
    """What to change when a training step ran out of memory, with the batch sizes that would fit."""
    from ._adapters import has_adapter, trained_parameters

    net = model.net
    n_trained, n_all = trained_parameters(net)
    batch_size = int(getattr(datamodule, "batch_size", options.get("batch_size", 32)))
    length = int(getattr(datamodule, "max_length", None) or recipe.max_length or 1200)
    precision = options.get("precision", "32-true")
    checkpointing = bool(options.get("gradient_checkpointing", False))
    layers = trained_layers(net)
    device, memory = _device_memory(model)
    context = CONTEXT if device.startswith("cuda") else 0.0
    shape = {"n_parameters": n_all, "n_layers": layers, "d_model": model.config.d_model, "max_length": length}

    def fits(**changes: Any) -> int:
        settings = {"n_trained": n_trained, "precision": precision, "gradient_checkpointing": checkpointing}
        return fitting_batch_size(memory, *step_memory(**shape, **{**settings, **changes}), context=context)

    now = fits()
    help_ = []
    if not checkpointing:
        help_.append(f"gradient_checkpointing=True (then about batch_size={fits(gradient_checkpointing=True)} fits)")
    if precision_key(precision) == "32" and device.startswith("cuda"):
        help_.append(f"precision='bf16-mixed' (about batch_size={fits(precision='bf16-mixed')})")
    if not has_adapter(net) and n_trained > 0.5 * n_all:
        lora = max(1, n_trained // 30)
        help_.append(
            f"finetune(..., adapter='lora') (trains ~3 % of the weights; about batch_size={fits(n_trained=lora)})"
        )
    accumulate = max(1, math.ceil(batch_size / max(now, 1)))
    help_.append(f"batch_size={max(now, 1)} with accumulate_grad_batches={accumulate} (about the same global batch)")
    if length > 1200:
        help_.append(f"fewer tokens per cell (max_length, now {length})")
    return (
        f"Training ran out of memory on {device} ({memory / GB:.0f} GB) at batch_size={batch_size}, {length} tokens "
        f"per cell, precision={precision!r}, {n_trained:,} of {n_all:,} weights trained"
        + (", gradient checkpointing on" if checkpointing else "")
        + f". By the resource table (docs/training.md, 'What fits where') about batch_size={now} fits these settings."
        + " What would help: "
        + "; ".join(help_)
        + "."
    )
