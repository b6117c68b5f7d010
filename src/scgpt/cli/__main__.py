"""``python -m scgpt.cli``: the command-line interface."""

from . import main

raise SystemExit(main())
