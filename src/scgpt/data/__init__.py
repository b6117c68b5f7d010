"""Data layer: gene vocabulary and gene matching, tokenisation, collators, cell sources and loaders.

The vocabulary, gene matching and numpy kernels import without torch; the torch-based pieces
(collator, loader) are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from ._genes import GeneMatch, match_genes
from ._perturbation import (
    PerturbationSplit,
    from_gears,
    parse_perturbation,
    perturbation_label,
    split_perturbations,
    to_gears,
)
from ._sources import AnnDataSource, CellSource, H5adCollection, SomaSource
from ._vocab import GeneVocab

__getattr__, _dir = lazy_attributes(
    __name__, {"CellBatch": "._collate", "Collator": "._collate", "CellLoader": "._loader"}
)

if TYPE_CHECKING:  # pragma: no cover
    from ._collate import CellBatch, Collator
    from ._loader import CellLoader


__all__ = [
    "AnnDataSource",
    "CellBatch",
    "CellLoader",
    "CellSource",
    "Collator",
    "GeneMatch",
    "GeneVocab",
    "H5adCollection",
    "PerturbationSplit",
    "SomaSource",
    "from_gears",
    "match_genes",
    "parse_perturbation",
    "perturbation_label",
    "split_perturbations",
    "to_gears",
]
