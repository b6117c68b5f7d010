"""Plots (matplotlib; ``show``/``ax``/``return_fig`` as in scanpy)."""

from ._annotation import confusion
from ._genes import gene_coverage
from ._grn import attention, gene_embedding, gene_programs, grn
from ._integration import benchmark_integration
from ._perturbation import perturbation, perturbation_metrics

__all__ = [
    "attention",
    "benchmark_integration",
    "confusion",
    "gene_coverage",
    "gene_embedding",
    "gene_programs",
    "grn",
    "perturbation",
    "perturbation_metrics",
]
