"""``python -m scgpt``: the command-line interface (see :mod:`scgpt.cli`)."""

from .cli import entry

entry()
