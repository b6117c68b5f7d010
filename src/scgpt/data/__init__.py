"""Data layer: gene vocabulary, tokenisation, binning kernels, collators, sources and loaders.

The vocabulary and numpy kernels import without torch; the torch-based pieces (collator, loader)
are imported on first use.
"""

from __future__ import annotations

import importlib

from ._sources import AnnDataSource, CellSource, H5adCollection, SomaSource
from ._tokenize import TokenizedCells, pad_batch, tokenize
from ._vocab import CLS_TOKEN, EOC_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, GeneVocab

_LAZY = {"CellBatch": "._collate", "Collator": "._collate", "CellLoader": "._loader", "epoch_order": "._loader"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CLS_TOKEN",
    "EOC_TOKEN",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "AnnDataSource",
    "CellBatch",
    "CellLoader",
    "CellSource",
    "Collator",
    "GeneVocab",
    "H5adCollection",
    "SomaSource",
    "TokenizedCells",
    "epoch_order",
    "pad_batch",
    "tokenize",
]
