"""The ``scgpt`` logger, warnings that point at the user's line, and the name of the function the user called.

The logger is standard :mod:`logging` with scanpy-style messages; the caller's name (:func:`caller`) lets a
message raised deep inside the package say which public function it came from.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

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


# ---------------------------------------------------------------------------- who called
_CALLER: contextvars.ContextVar[str | None] = contextvars.ContextVar("scgpt_caller", default=None)
_DETAIL: contextvars.ContextVar[str | None] = contextvars.ContextVar("scgpt_detail", default=None)
F = TypeVar("F", bound=Callable)


def caller(default: str = "scgpt") -> str:
    """The public function the user called (``"embed"``, ``"finetune('annotation')"``), for messages.

    Set once per call by :func:`calling` or :func:`named`; ``default`` when code runs outside any. A part of the
    input being checked (:func:`describing`) follows in brackets: ``"annotate (reference)"``.
    """
    name = _CALLER.get() or default
    detail = _DETAIL.get()
    return f"{name} ({detail})" if detail else name


@contextlib.contextmanager
def calling(name: str) -> Iterator[None]:
    """Name the call in progress for messages raised inside it (the outermost name wins).

    A public function that calls another (``tl.integrate`` -> ``ScGPT.finetune``) keeps its own name:
    the user called it, so messages say so.
    """
    token = _CALLER.set(name) if _CALLER.get() is None else None
    try:
        yield
    finally:
        if token is not None:
            _CALLER.reset(token)


@contextlib.contextmanager
def describing(detail: str) -> Iterator[None]:
    """Say which part of the input messages raised inside are about (``"reference"``, ``"prediction 'x'"``)."""
    token = _DETAIL.set(detail)
    try:
        yield
    finally:
        _DETAIL.reset(token)


def named(name: str | None = None) -> Callable[[F], F]:
    """Decorator form of :func:`calling` for a public function (default: the function's name)."""

    def decorate(func: F) -> F:
        label = name or func.__name__

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with calling(label):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
