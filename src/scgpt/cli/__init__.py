"""The ``scgpt`` command: embed cells, pretrain and fine-tune from a shell.

::

    scgpt embed    --model scGPT_human --input pbmc.h5ad --output pbmc_emb.h5ad --figure umap.png
    scgpt pretrain --input a.h5ad b.h5ad --output my_model --d-model 256 --n-layers 4 --max-epochs 5
    scgpt finetune --model scGPT_human --input ref.h5ad --output annot_model --recipe annotation --labels-key celltype

Every option can also come from a JSON or TOML file given with ``--config``; options on the
command line override it. Each subcommand lives in its own module and only turns options into
calls of the Python API; heavy modules (torch, scanpy, Lightning) are imported when a command runs,
so ``scgpt --help`` is fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from ._common import CLIError, apply_config, verbosity


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """Build the ``scgpt`` parser; also return its subcommand parsers by name."""
    from . import _embed, _finetune, _pretrain

    parser = argparse.ArgumentParser(
        prog="scgpt",
        description="scGPT single-cell foundation model (scgpt-scverse): embed cells, pretrain, fine-tune.",
        epilog="Run 'scgpt COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"scgpt-scverse {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers = {"embed": _embed.add_parser(sub), "pretrain": _pretrain.add_parser(sub)}
    subparsers["finetune"] = _finetune.add_parser(sub)
    return parser, subparsers


def _message(e: BaseException) -> str:
    if isinstance(e, KeyError) and len(e.args) == 1:
        return str(e.args[0])
    return str(e) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``scgpt`` command; returns the exit status (2 for user errors, reported in one line).

    Parameters
    ----------
    argv
        Arguments without the program name (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in argv[: next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))]
    try:
        parser, subparsers = build_parser()
        apply_config(argv, subparsers)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        func: Callable[[argparse.Namespace], None] = args.func
        with verbosity(args.quiet):
            func(args)
    except SystemExit as e:  # argparse: --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except (CLIError, OSError, ValueError, KeyError) as e:
        if show_traceback:
            raise
        print(f"scgpt: error: {_message(e)}", file=sys.stderr)
        return 2
    return 0


__all__ = ["CLIError", "build_parser", "main"]
