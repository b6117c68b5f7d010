"""Data layer: gene vocabulary and gene matching, tokenisation, collators, cell sources and loaders.

The vocabulary, gene matching and numpy kernels import without torch; the torch-based pieces
(collator, loader) are imported on first use. Names outside ``__all__`` are helpers shared with the
tools (:mod:`scgpt.tl`, :mod:`scgpt.pp`, :mod:`scgpt.pl`), which import nothing private of this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from ._binning import bin_csr
from ._genes import (
    GeneMatch,
    adata_counts_fraction,
    check_counts,
    counts_summary,
    default_vocab,
    describe_match,
    gene_names,
    match_adata,
    match_genes,
)
from ._matrix import (
    MIN_VARIABLE,
    as_csr,
    check_adata,
    check_layer,
    check_values,
    get_matrix,
    is_zarr_store,
    iter_row_chunks,
    log_normalize_counts,
    log_normalized,
    looks_like_counts,
    matrix_stored_per_row,
    missing_values,
    open_on_disk,
    read_rows,
    stored_per_row,
    varying_genes,
)
from ._orthologs import ORGANISMS, ortholog_table, resolve_organism
from ._perturbation import (
    PerturbationSplit,
    from_gears,
    parse_perturbation,
    perturbation_label,
    perturbation_labels,
    rank_genes_vs_control,
    split_perturbations,
    to_gears,
)
from ._random import cell_keys, gene_keys
from ._sources import AnnDataSource, CellSource, H5adCollection
from ._vocab import GeneVocab

__getattr__, _dir = lazy_attributes(
    __name__,
    {
        "CellBatch": "._collate",
        "Collator": "._collate",
        "CellLoader": "._loader",
        "SomaMatrix": "._soma",
        "SomaSource": "._soma",
        "open_soma": "._soma",
        "is_soma_experiment": "._soma",
    },
)

if TYPE_CHECKING:  # pragma: no cover
    from ._collate import CellBatch, Collator
    from ._loader import CellLoader
    from ._soma import SomaMatrix, SomaSource, is_soma_experiment, open_soma


__all__ = [
    "ORGANISMS",
    "AnnDataSource",
    "CellBatch",
    "CellLoader",
    "CellSource",
    "Collator",
    "GeneMatch",
    "GeneVocab",
    "H5adCollection",
    "PerturbationSplit",
    "SomaMatrix",
    "SomaSource",
    "from_gears",
    "match_genes",
    "open_soma",
    "ortholog_table",
    "parse_perturbation",
    "perturbation_label",
    "split_perturbations",
    "to_gears",
]
