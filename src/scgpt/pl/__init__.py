"""Plots (matplotlib; ``show``/``ax``/``return_fig`` as in scanpy)."""

from ._annotation import confusion

__all__ = ["confusion"]
