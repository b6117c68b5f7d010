"""Tools: embeddings, annotation and other scGPT tasks on AnnData / MuData."""

from ._annotate import annotate, classify, evaluate_annotation, finetune_classifier, knn_vote
from ._embed import embed

__all__ = ["annotate", "classify", "embed", "evaluate_annotation", "finetune_classifier", "knn_vote"]
