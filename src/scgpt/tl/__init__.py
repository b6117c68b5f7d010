"""Tools: embeddings, annotation and other scGPT tasks on AnnData / MuData."""

from ._embed import embed

__all__ = ["embed"]
