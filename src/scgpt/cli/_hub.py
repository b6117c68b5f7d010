"""``scgpt models`` and ``scgpt download``: the published models (:mod:`scgpt.hub`) from a shell."""

from __future__ import annotations

import argparse

from ._common import CLIError, HelpFormatter

COLUMNS = ["tissue", "architecture", "vocab_size", "size_bytes", "sha256", "download", "cached"]


def _quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")


def add_models_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``models`` subcommand to ``sub``."""
    p = sub.add_parser(
        "models",
        formatter_class=HelpFormatter,
        help="list the published models (or the models saved in a folder)",
        description="List the published scGPT models that --model NAME accepts (downloaded on first use into\n"
        "the cache, $SCGPT_CACHE), with what they were trained on, their architecture, whether their files'\n"
        "SHA-256 are published, whether they download directly or by hand, and whether they are cached.",
    )
    p.add_argument("--local", metavar="DIR", help="list the model cards (README.md) found in DIR instead")
    p.add_argument("--all-columns", action="store_true", help="every column (sources, licence, citation, ...)")
    _quiet(p)
    p.set_defaults(func=run_models)
    return p


def add_download_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``download`` subcommand to ``sub``."""
    p = sub.add_parser(
        "download",
        formatter_class=HelpFormatter,
        help="download a published model into the cache and verify it",
        description="Download a published model into the cache (once; every file checked against its SHA-256)\n"
        "and print its folder. Offline ($SCGPT_OFFLINE=1 or $HF_HUB_OFFLINE=1), or for a model without a direct\n"
        "source, the error names the URLs and the folder to put the files in by hand.",
    )
    p.add_argument("name", metavar="NAME", help="a published model ('scgpt models' lists them)")
    p.add_argument("--cache-dir", metavar="DIR", help="the cache (default: $SCGPT_CACHE or the user cache folder)")
    p.add_argument("--revision", help="another revision of a source with revisions (a Hugging Face commit)")
    p.add_argument("--force", action="store_true", help="download again; the cached copy is replaced only if verified")
    _quiet(p)
    p.set_defaults(func=run_download)
    return p


def run_models(args: argparse.Namespace) -> None:
    import pandas as pd

    from ..hub import list_models

    table = list_models(local=args.local)
    if args.local is None and not args.all_columns:
        table = table[COLUMNS]
    if table.empty:
        print(f"no model cards (README.md written by scgpt) in {args.local}")
        return
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.max_colwidth", 60):
        print(table.to_string())


def run_download(args: argparse.Namespace) -> None:
    from .._settings import settings
    from ..hub import download, is_published, suggest

    if not is_published(args.name):
        close = suggest(args.name)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise CLIError(f"no published model named {args.name!r}{hint} ('scgpt models' lists them)")
    folder = download(args.name, cache_dir=args.cache_dir, revision=args.revision, force=args.force,
                      progress=settings.progress)  # fmt: skip
    print(folder)
