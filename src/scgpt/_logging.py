"""The ``scgpt`` logger (standard :mod:`logging`; scanpy-style messages)."""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("scgpt")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def log_added(start: float, what: str, fields: list[str]) -> None:
    """Log ``finished`` with the elapsed time and the AnnData fields written (as scanpy does)."""
    logger.info(f"    finished ({time.perf_counter() - start:.1f}s)")
    if fields:
        logger.info(f"added {what}".rstrip() + "\n" + "\n".join(f"    {f}" for f in fields))
