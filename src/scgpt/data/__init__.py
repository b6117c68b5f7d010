"""Data layer: gene vocabulary, tokenisation, binning kernels, collators, datasets and loaders."""

from ._vocab import CLS_TOKEN, EOC_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, GeneVocab

__all__ = ["CLS_TOKEN", "EOC_TOKEN", "PAD_TOKEN", "SPECIAL_TOKENS", "GeneVocab"]
