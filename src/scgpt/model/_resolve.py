"""Resolving the ``model=`` argument of the face functions to a loaded :class:`~scgpt.model.ScGPT`."""

from __future__ import annotations

import os
from pathlib import Path

from .._settings import settings
from ..hub import download, is_published
from ._scgpt import DEMO, ScGPT

_CACHE: dict[tuple, ScGPT] = {}

NO_MODEL_MESSAGE = (
    "No model given and no default model is set. Pass model='scGPT_human' (the published whole-human weights, "
    "downloaded once into scgpt.settings.cache_dir and verified; scgpt.hub.list_models() lists the published models) "
    "or the path of a model folder, or set it once with scgpt.settings.default_model = 'scGPT_human' (or the "
    "SCGPT_MODEL environment variable). model='demo' uses the small demo model bundled with the package (for trying "
    "things out, not for analyses)."
)


def _stamp(path: Path) -> tuple:
    """Name, size and modification time of every file of a model folder: an edit of any file reloads the model."""
    if not path.is_dir():
        return ()
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(path.iterdir()) if f.is_file())


def resolve_model(model: ScGPT | str | os.PathLike | None) -> tuple[ScGPT, str]:
    """A loaded :class:`~scgpt.model.ScGPT` and a short name for ``uns[...]['params']``.

    ``None`` means ``scgpt.settings.default_model``. A path that exists is loaded (even one named
    ``demo`` or ``scGPT_human``); the keyword ``"demo"`` otherwise loads the bundled demo model, and the
    name of a published model (:func:`scgpt.hub.list_models`) its cached folder, downloaded on first use.
    Loaded folders are cached (one model at a time), keyed by the path and every file's size and
    modification time.
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
    if not path.exists() and name != DEMO and isinstance(model, str) and is_published(name):
        folder = download(name)  # verified, from the cache after the first call
        key = (name, str(folder), _stamp(folder))
    else:
        key = (name, str(path.resolve()), _stamp(path)) if path.exists() or name != DEMO else (DEMO,)
    if key not in _CACHE:
        _CACHE.clear()  # keep one model in memory
        _CACHE[key] = ScGPT.from_pretrained(path if path.exists() else model)
    return _CACHE[key], name


def clear_cache() -> None:
    """Forget the cached model (the next call loads from disk)."""
    _CACHE.clear()
