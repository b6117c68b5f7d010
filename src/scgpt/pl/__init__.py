"""Plots (matplotlib; ``show``/``ax``/``return_fig`` as in scanpy)."""

from ._annotation import confusion
from ._integration import benchmark_integration

__all__ = ["benchmark_integration", "confusion"]
