"""Plots (matplotlib; ``show``/``ax``/``return_fig`` as in scanpy)."""

__all__: list[str] = []
