"""The package's own model format: one ``model.pt`` (config, vocabulary, weights, attributes).

Everything is plain data (dicts, lists, strings, numbers, tensors), so it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._files import torch_save
from ..data import GeneVocab
from ..nn import ScGPTConfig
from ._folder import MODEL_FILE
from ._official import CheckpointError, check_finite

FORMAT = "scgpt-scverse"
FORMAT_VERSION = 1


@dataclass
class NativeCheckpoint:
    """Contents of a ``model.pt``."""

    config: ScGPTConfig
    vocab: GeneVocab
    state_dict: dict[str, Tensor]
    args: dict[str, Any] = field(default_factory=dict)
    mod_vocab: GeneVocab | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


def write_native(ckpt: NativeCheckpoint, target: Path) -> None:
    """Write the contents of a ``model.pt`` to ``target``."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": ckpt.config.to_dict(),
        "vocab": list(ckpt.vocab),
        "mod_vocab": None if ckpt.mod_vocab is None else list(ckpt.mod_vocab),
        "args": ckpt.args,
        "attrs": ckpt.attrs,
        "state_dict": {k: v.detach().cpu() for k, v in ckpt.state_dict.items()},
    }
    torch_save(payload, target)


def is_native(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding this package's ``model.pt`` (written by ``ScGPT.save``)."""
    return (Path(path).expanduser() / MODEL_FILE).is_file()


def load_native(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> NativeCheckpoint:
    """Read ``path/model.pt``."""
    target = Path(path).expanduser() / MODEL_FILE
    if not target.is_file():
        raise FileNotFoundError(f"No {MODEL_FILE} in {str(Path(path))!r}; expected a folder written by ScGPT.save().")
    try:
        payload = torch.load(target, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{target} could not be read as a saved scgpt model: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{target} is not a model saved by scgpt (no '{FORMAT}' format marker).")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{target} was written by a newer scgpt (format {payload['format_version']}); please upgrade."
        )
    mod = payload.get("mod_vocab")
    try:
        config = ScGPTConfig.from_dict(payload["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{target} holds an invalid model configuration: {e}") from e
    return NativeCheckpoint(
        config=config,
        vocab=GeneVocab(payload["vocab"]),
        state_dict=payload["state_dict"],
        args=payload.get("args") or {},
        mod_vocab=None if mod is None else GeneVocab(mod),
        attrs=payload.get("attrs") or {},
    )


def load_native_weights(net: torch.nn.Module, ckpt: NativeCheckpoint, path: str | os.PathLike) -> None:
    """Load the weights of a ``model.pt`` into the network its config describes; clear errors if they disagree."""
    source = str(Path(path).expanduser() / MODEL_FILE)
    check_finite(ckpt.state_dict, source)
    try:
        net.load_state_dict(ckpt.state_dict)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(
            f"{source}: the stored configuration does not match the stored weights (the file was edited or "
            f"damaged): {' '.join(line.strip() for line in first[:4])}"
        ) from None
