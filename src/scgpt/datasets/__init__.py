"""Real single-cell data that ship with the package or inside its dependencies (no download at run time)."""

from ._grn import collectri, hallmark, read_gmt, transcription_factors
from ._integration import pbmc_cite_seq, pbmc_two_sources
from ._onek1k import ONEK1K_QUERY_DONORS, onek1k
from ._papalexi import papalexi2021
from ._pbmc68k import pbmc68k_counts
from ._perturbation import simulate_perturbations

__all__ = [
    "ONEK1K_QUERY_DONORS",
    "collectri",
    "hallmark",
    "onek1k",
    "papalexi2021",
    "pbmc68k_counts",
    "pbmc_cite_seq",
    "pbmc_two_sources",
    "read_gmt",
    "simulate_perturbations",
    "transcription_factors",
]
