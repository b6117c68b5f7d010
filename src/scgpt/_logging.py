"""The ``scgpt`` logger (standard :mod:`logging`; scanpy-style messages) and warnings that point at the user's line."""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path

logger = logging.getLogger("scgpt")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def log_added(start: float, fields: list[str], what: str = "") -> None:
    """Log ``finished`` with the elapsed time and the AnnData fields written (as scanpy does)."""
    logger.info(f"    finished ({time.perf_counter() - start:.1f}s)")
    if fields:
        logger.info(f"added {what}".rstrip() + "\n" + "\n".join(f"    {f}" for f in fields))


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """Issue a warning attributed to the first caller outside the :mod:`scgpt` package.

    However deep inside the package the problem is found, the warning names the line of the
    user's script or notebook cell that called into it (what ``stacklevel`` cannot do when the
    same check is reached through different call paths).
    """
    frame = sys._getframe(1)  # the caller of warn(): stacklevel 2
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
