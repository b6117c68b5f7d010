"""scgpt: scGPT, the single-cell foundation transformer, as a scverse package.

Submodules are imported on first use, so ``import scgpt`` stays fast (no torch, no scanpy):

- :mod:`scgpt.pp` preprocessing (binning, vocabulary alignment, HVG),
- :mod:`scgpt.tl` tools (:func:`scgpt.tl.embed`, annotation, …),
- :mod:`scgpt.pl` plots,
- :mod:`scgpt.model` user-facing model classes,
- :mod:`scgpt.nn` the pure-PyTorch network, :mod:`scgpt.io` model files,
- :mod:`scgpt.data` vocabulary, tokenisation and loaders, :mod:`scgpt.train` training plans,
- :mod:`scgpt.datasets` real cells that ship with installed packages,
- :mod:`scgpt.hub` the published models by name (list, download, verify, cache).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._settings import settings

__version__ = "0.1.0"

_SUBMODULES = ("data", "datasets", "hub", "io", "model", "nn", "pl", "pp", "tl", "train")

if TYPE_CHECKING:  # pragma: no cover
    from . import data, datasets, hub, io, model, nn, pl, pp, tl, train


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])


__all__ = ["data", "datasets", "hub", "io", "model", "nn", "pl", "pp", "settings", "tl", "train"]
