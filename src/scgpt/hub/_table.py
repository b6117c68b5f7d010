"""``scgpt.hub.list_models``: the registry (or a folder of local models) as a table."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ._cards import find_cards, read_card
from ._download import _read_meta, is_cached, model_dir
from ._registry import _REGISTRY, HTTP, MANUAL

if TYPE_CHECKING:
    import pandas as pd

UNKNOWN = "unknown"


def _sizes(entry, cache_dir) -> int | None:
    """Total size: published sizes, else the sizes recorded in the cache, else the bundled files' sizes."""
    if entry.bundled:
        folder = entry.bundled_path()
        return sum((folder / f.name).stat().st_size for f in entry.files if (folder / f.name).is_file())
    if all(f.size for f in entry.files):
        return sum(f.size for f in entry.files)
    records = _read_meta(model_dir(entry.name, cache_dir=cache_dir))["files"]
    sizes = [f.size or (records.get(f.name) or {}).get("size") for f in entry.files]
    return sum(sizes) if all(sizes) else None


def _hashes(entry, cache_dir) -> str:
    if entry.bundled:
        return "bundled (not needed)"
    pinned = sum(1 for f in entry.files if f.sha256)
    if pinned == len(entry.files):
        return "published"
    records = _read_meta(model_dir(entry.name, cache_dir=cache_dir))["files"]
    recorded = sum(1 for f in entry.files if not f.sha256 and (records.get(f.name) or {}).get("sha256"))
    if pinned + recorded == len(entry.files) and recorded:
        return "recorded on first use" if not pinned else "published + recorded on first use"
    return UNKNOWN if not pinned else f"{pinned}/{len(entry.files)} published"


def _shown(source) -> str:
    return source.url.replace("{revision}", source.revision or "{revision}") if source.kind == HTTP else source.url


def _download_kind(entry) -> str:
    if entry.bundled:
        return "bundled"
    return "direct" if entry.http_sources else "manual (see sources)"


def list_models(*, local: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """The published scGPT models this package can fetch by name, or the models saved in a local folder.

    Parameters
    ----------
    local
        A folder of models saved by :meth:`scgpt.model.ScGPT.save_pretrained` / :meth:`~scgpt.model.ScGPT.save`
        (or ``scgpt pretrain/finetune``): list the model cards (``README.md``) found in it and its subfolders
        instead of the registry.
    cache_dir
        The cache to report as ``cached`` (default ``scgpt.settings.cache_dir``).

    Returns
    -------
    One row per model, indexed by name. For the registry: ``aliases``, ``description``, ``cells``, ``tissue``,
    ``species``, ``architecture`` (layers x width), ``n_heads``, ``vocab_size``, ``files``, ``size_bytes`` (the
    total size, when published or recorded), ``sha256`` (whether the files' hashes are published, recorded on
    first use or unknown), ``download`` (``direct``: fetched by :func:`scgpt.hub.download`; ``manual``: put the
    files into the cache folder by hand), ``cached``, ``licence``, ``citation`` and ``sources``. Unknown facts
    are ``"unknown"``. For ``local=``: the card's ``path``, ``task``, ``base_model``, ``base_model_sha256``,
    architecture, ``format``, ``scgpt_version`` and ``created``.

    Examples
    --------
    >>> scgpt.hub.list_models()[["cells", "architecture", "download", "cached"]]  # doctest: +SKIP
    >>> scgpt.hub.list_models(local="my_models")  # doctest: +SKIP
    """
    import pandas as pd

    if local is not None:
        rows = []
        for folder in find_cards(local):
            card = read_card(folder) or {}
            rows.append({
                "name": folder.name,
                "path": str(folder),
                "task": card.get("task"),
                "base_model": card.get("base_model"),
                "base_model_sha256": card.get("base_model_sha256"),
                "architecture": f"{card['n_layers']} x {card['d_model']}" if "n_layers" in card else UNKNOWN,
                "vocab_size": card.get("vocab_size"),
                "format": card.get("format"),
                "scgpt_version": card.get("scgpt_version"),
                "created": card.get("created"),
            })  # fmt: skip
        columns = ["name", "path", "task", "base_model", "base_model_sha256", "architecture", "vocab_size", "format",
                   "scgpt_version", "created"]  # fmt: skip
        return pd.DataFrame(rows, columns=columns).set_index("name")

    rows = []
    for entry in _REGISTRY.values():
        arch = f"{entry.n_layers} x {entry.d_model}" if entry.n_layers and entry.d_model else UNKNOWN
        rows.append({
            "name": entry.name,
            "aliases": ", ".join(entry.aliases),
            "description": entry.description,
            "cells": entry.cells or UNKNOWN,
            "tissue": entry.tissue or UNKNOWN,
            "species": entry.species or UNKNOWN,
            "architecture": arch,
            "n_heads": entry.n_heads if entry.n_heads else UNKNOWN,
            "vocab_size": entry.vocab_size if entry.vocab_size else UNKNOWN,
            "files": ", ".join(f.name for f in entry.files),
            "size_bytes": _sizes(entry, cache_dir) or UNKNOWN,
            "sha256": _hashes(entry, cache_dir),
            "download": _download_kind(entry),
            "cached": is_cached(entry.name, cache_dir=cache_dir),
            "licence": entry.licence or UNKNOWN,
            "citation": entry.citation or UNKNOWN,
            "sources": " | ".join(_shown(s) for s in entry.sources if s.kind in (HTTP, MANUAL)) or "package",
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("name")
