"""Resolving the ``model=`` argument of the ``tl`` functions."""

from __future__ import annotations

import os
from pathlib import Path

from .._settings import settings
from ..model import ScGPT

_CACHE: dict[tuple, ScGPT] = {}

NO_MODEL_MESSAGE = (
    "No model given and no default model is set. Download the official scGPT weights (e.g. the "
    "'scGPT_human' folder of the scGPT model zoo, https://github.com/bowang-lab/scGPT#pretrained-scgpt-model-zoo), "
    "then pass model='path/to/scGPT_human', or set it once with scgpt.settings.default_model = 'path/to/scGPT_human' "
    "(or the SCGPT_MODEL environment variable). model='demo' uses the small demo model bundled with the package "
    "(for trying things out, not for analyses)."
)


def resolve_model(model: ScGPT | str | os.PathLike | None) -> tuple[ScGPT, str]:
    """A loaded :class:`~scgpt.model.ScGPT` and a short name for ``uns[...]['params']``.

    Paths are loaded once and cached (keyed by path and modification time of the weights).
    """
    if isinstance(model, ScGPT):
        return model, model.source_ or "ScGPT object"
    if model is None:
        model = settings.default_model
        if model is None:
            raise ValueError(NO_MODEL_MESSAGE)
    if not isinstance(model, str | os.PathLike):
        raise TypeError(
            f"model must be an ScGPT, a path to a model folder, 'demo' or None; got {type(model).__name__}."
        )
    name = str(model)
    path = Path(model).expanduser()
    stamp = tuple(f.stat().st_mtime_ns for f in sorted(path.glob("*.pt"))) if path.is_dir() else ()
    key = (name, str(path.resolve()) if name != "demo" else "demo", stamp)
    if key not in _CACHE:
        _CACHE.clear()  # keep one model in memory
        _CACHE[key] = ScGPT.from_pretrained(model)
    return _CACHE[key], name
