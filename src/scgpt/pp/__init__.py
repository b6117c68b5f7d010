"""Preprocessing: vocabulary alignment, exact scGPT binning, normalisation and HVG selection."""

from ._binning import bin_values
from ._genes import align_vocab
from ._preprocess import highly_variable_genes, preprocess

__all__ = ["align_vocab", "bin_values", "highly_variable_genes", "preprocess"]
