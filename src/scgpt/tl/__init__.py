"""Tools: embeddings, annotation and other scGPT tasks on AnnData / MuData."""

from ._annotate import annotate, evaluate_annotation
from ._embed import embed

__all__ = ["annotate", "embed", "evaluate_annotation"]
