"""User-facing model classes."""

from ._device import resolve_device, resolve_dtype
from ._scgpt import ScGPT

__all__ = ["ScGPT", "resolve_device", "resolve_dtype"]
