"""The ``scgpt`` command: embed cells, pretrain and fine-tune from a shell.

::

    scgpt embed    --model scGPT_human --input pbmc.h5ad --output pbmc_emb.h5ad --figure umap.png
    scgpt pretrain --input a.h5ad b.h5ad --output my_model --d-model 256 --n-layers 4 --max-epochs 5
    scgpt finetune --model scGPT_human --input ref.h5ad --output annot_model --recipe annotation --labels-key celltype
    scgpt models                  # the published models (--model NAME downloads one on first use)
    scgpt download scGPT_human    # into the cache ($SCGPT_CACHE), verified

Every option can also come from a JSON or TOML file given with ``--config``; options on the
command line override it. Each subcommand lives in its own module and only turns options into
calls of the Python API; heavy modules (torch, scanpy, Lightning) are imported when a command runs,
so ``scgpt --help`` is fast.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from .. import __version__
from ._common import CLIError, Interrupted, apply_config, verbosity


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """Build the ``scgpt`` parser; also return its subcommand parsers by name."""
    from . import _embed, _finetune, _hub, _pretrain

    parser = argparse.ArgumentParser(
        prog="scgpt",
        description="scGPT single-cell foundation model (scgpt-scverse): embed cells, pretrain, fine-tune, get the "
        "published models.",
        epilog="Run 'scgpt COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"scgpt-scverse {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers = {"embed": _embed.add_parser(sub), "pretrain": _pretrain.add_parser(sub)}
    subparsers["finetune"] = _finetune.add_parser(sub)
    subparsers["models"] = _hub.add_models_parser(sub)
    subparsers["download"] = _hub.add_download_parser(sub)
    return parser, subparsers


def _message(e: BaseException) -> str:
    if isinstance(e, KeyError) and len(e.args) == 1:
        return str(e.args[0])
    if isinstance(e, OSError) and e.errno in _DISK_ERRORS:  # HDF5 and torch wrap these in long messages
        return (
            f"a file could not be written: {os.strerror(e.errno)} (a full disk or a file-size limit); "
            "the files that were there before are unchanged"
        )
    return str(e) or type(e).__name__


def _stop_on_sigterm(signum, frame) -> None:
    raise Interrupted(signum)


_DISK_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO}
_failed_write = False  # set when a write failed for lack of space (see entry)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``scgpt`` command; returns the exit status.

    0 on success; 2 for user errors, reported in one line; 143 (SIGTERM) and 130 (SIGINT, Ctrl-C)
    when stopped, with one line saying what was reached (for training: the step and the checkpoint to
    resume from). Outputs are written to temporary files and moved into place at the end, so a stopped
    command leaves the previous files intact.

    Parameters
    ----------
    argv
        Arguments without the program name (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in argv[: next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))]
    command = "scgpt"
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm) if main_thread else None
    try:
        parser, subparsers = build_parser()
        apply_config(argv, subparsers)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        command = f"scgpt {args.command}"
        func: Callable[[argparse.Namespace], None] = args.func
        with verbosity(args.quiet):
            func(args)
    except SystemExit as e:  # argparse: --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except (Interrupted, KeyboardInterrupt) as e:
        stopped = e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)
        what = str(stopped) or "nothing was written; the outputs are written at the end"
        print(f"{command}: stopped by {signal.Signals(stopped.signal).name}; {what}", file=sys.stderr)
        return stopped.exit_code
    except (CLIError, OSError, ValueError, KeyError) as e:
        if show_traceback:
            raise
        if isinstance(e, OSError) and e.errno in _DISK_ERRORS:
            global _failed_write
            _failed_write = True
        print(f"scgpt: error: {_message(e)}", file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as a terminal user expects them: one line ``scgpt: warning: ...``, no Python file or source line."""
    text = " ".join(str(message).split())
    print(f"scgpt: warning: {text}", file=sys.stderr if file is None else file)


def entry(argv: Sequence[str] | None = None) -> None:
    """The ``scgpt`` console command: :func:`main`, then exit with its status.

    Warnings are printed as one line each, ``scgpt: warning: <message>`` (Python's format, with the path of the
    script and a source line, is for programs; :func:`main` called in-process leaves warnings as they are).

    After a write that failed for lack of space, the HDF5 library can crash while Python shuts down
    (it retries flushing the abandoned file), which would turn the exit status into 139; the process
    then ends without that teardown, once the message is out. The previous files are intact either way.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        status = main(argv)
    if _failed_write:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


__all__ = ["CLIError", "build_parser", "entry", "main"]
