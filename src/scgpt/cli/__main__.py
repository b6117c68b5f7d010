"""``python -m scgpt.cli``: the command-line interface."""

from . import entry

entry()
