"""The registry of published models: what each one is, which files it has and where they can be fetched from.

Plain data, no network and no heavy imports. The entries of the scGPT model zoo are in :mod:`._zoo`;
:func:`register` adds more (a lab's own models, or a test model served from 127.0.0.1).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HTTP = "http"
"""A source whose files can be fetched one by one: ``url`` holds ``{file}`` (and possibly ``{revision}``)."""
MANUAL = "manual"
"""A source to download by hand (a Google Drive folder): a page for a person, not a file URL."""
BUNDLED = "bundled"
"""Files that ship inside the package (the demo model): nothing to download."""


@dataclass(frozen=True)
class ModelFile:
    """One file of a published model.

    Attributes
    ----------
    name
        File name inside the model folder (``best_model.pt``).
    sha256
        Its SHA-256 as published by a source we cite, or ``None``: unknown, then the first download
        records it (trust on first use) and later copies must match the record.
    size
        Its size in bytes, or ``None`` when no source publishes it.
    """

    name: str
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files can be had.

    Attributes
    ----------
    url
        For ``kind="http"``: a URL template with ``{file}`` and optionally ``{revision}``. For
        ``kind="manual"``: the page to download from by hand.
    kind
        ``"http"`` (direct, scriptable file URLs), ``"manual"`` (e.g. a Google Drive folder) or ``"bundled"``.
    revision
        Default ``{revision}`` of an ``http`` source (a commit or a branch of a Hugging Face repository).
    note
        What the source is and why it can be trusted (shown in :func:`scgpt.hub.list_models`).
    """

    url: str
    kind: str = HTTP
    revision: str | None = None
    note: str = ""

    def file_url(self, file: str, revision: str | None = None) -> str:
        """The URL of ``file`` (at ``revision``, default: this source's)."""
        return self.url.format(file=file, revision=revision or self.revision or "")


@dataclass(frozen=True)
class ModelEntry:
    """A published model: facts about it, its files and its sources.

    Unknown facts are ``None`` (shown as "unknown"), never guessed.
    """

    name: str
    files: tuple[ModelFile, ...]
    sources: tuple[ModelSource, ...]
    aliases: tuple[str, ...] = ()
    description: str = ""
    cells: str | None = None
    tissue: str | None = None
    species: str | None = None
    n_layers: int | None = None
    d_model: int | None = None
    n_heads: int | None = None
    vocab_size: int | None = None
    licence: str | None = None
    citation: str | None = None
    hash_source: str | None = None
    facts_source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bundled(self) -> bool:
        return any(s.kind == BUNDLED for s in self.sources)

    @property
    def http_sources(self) -> list[ModelSource]:
        return [s for s in self.sources if s.kind == HTTP]

    @property
    def manual_sources(self) -> list[ModelSource]:
        return [s for s in self.sources if s.kind == MANUAL]

    @property
    def default_revision(self) -> str | None:
        return next((s.revision for s in self.http_sources if s.revision), None)

    def bundled_path(self) -> Path:
        """The package folder of a bundled model (found without importing it, so no torch import)."""
        source = next(s for s in self.sources if s.kind == BUNDLED)
        package, _, folder = source.url.partition(":")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"the package {package!r} holding the bundled model {self.name!r} is not installed")
        return Path(next(iter(spec.submodule_search_locations))) / folder


_REGISTRY: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _add(entry: ModelEntry, *, overwrite: bool = False) -> ModelEntry:
    keys = [_key(n) for n in (entry.name, *entry.aliases)]
    taken = [k for k in keys if k in _ALIASES and _ALIASES[k] != entry.name]
    if taken:
        raise ValueError(f"register({entry.name!r}): {taken} already name the model {_ALIASES[taken[0]]!r}.")
    if entry.name in _REGISTRY and not overwrite:
        raise ValueError(f"A model named {entry.name!r} is registered already; pass overwrite=True to replace it.")
    if entry.name in _REGISTRY:
        unregister(entry.name)
    _REGISTRY[entry.name] = entry
    _ALIASES.update(dict.fromkeys(keys, entry.name))
    return entry


def register(
    name: str,
    *,
    files: dict[str, str | None | tuple[str | None, int | None]] | list[ModelFile],
    urls: list[str] | str | None = None,
    revision: str | None = None,
    manual: list[str] | str | None = None,
    overwrite: bool = False,
    **facts: Any,
) -> ModelEntry:
    """Add a model to the registry, so that its name works wherever a model is accepted.

    Parameters
    ----------
    name
        The model's name (also accepted: ``aliases=(...)`` among ``facts``); names match case-insensitively
        and with ``-`` for ``_``.
    files
        ``{file name: sha256}`` or ``{file name: (sha256, size)}``; ``None`` for an unknown hash or size
        (recorded by the first download: trust on first use). Or a list of :class:`ModelFile`.
    urls
        URL templates of direct sources, tried in order, with ``{file}`` (and ``{revision}``), e.g.
        ``"https://huggingface.co/org/repo/resolve/{revision}/{file}"``.
    revision
        Default ``{revision}`` of the URL templates.
    manual
        Pages to download the files from by hand (e.g. a Google Drive folder), named in the error
        raised when a model cannot be downloaded.
    overwrite
        Replace a model registered under the same name.
    **facts
        Fields of :class:`ModelEntry`: ``description``, ``cells``, ``tissue``, ``species``, ``n_layers``,
        ``d_model``, ``n_heads``, ``vocab_size``, ``licence``, ``citation``, ``hash_source``, ``aliases``.

    Returns
    -------
    The registered entry.

    Examples
    --------
    >>> scgpt.hub.register(  # doctest: +SKIP
    ...     "lab_blood_v2",
    ...     files={"args.json": "9f0c...", "vocab.json": "51aa...", "best_model.pt": "e3b0..."},
    ...     urls="https://models.example.org/blood_v2/{file}",
    ... )
    >>> scgpt.tl.embed(adata, "lab_blood_v2")  # doctest: +SKIP
    """
    if isinstance(files, dict):
        specs = []
        for fname, value in files.items():
            sha, size = value if isinstance(value, tuple | list) else (value, None)
            specs.append(ModelFile(fname, None if sha is None else str(sha).lower(), size))
    else:
        specs = list(files)
    if not specs:
        raise ValueError(f"register({name!r}): files= is empty; list the files of the model folder.")
    sources = [ModelSource(u, HTTP, revision) for u in ([urls] if isinstance(urls, str) else urls or [])]
    sources += [ModelSource(u, MANUAL) for u in ([manual] if isinstance(manual, str) else manual or [])]
    if not sources:
        raise ValueError(f"register({name!r}): give urls= (direct file URLs) or manual= (pages to download from).")
    for s in sources:
        if s.kind == HTTP and "{file}" not in s.url:
            raise ValueError(f"register({name!r}): the URL template {s.url!r} needs a '{{file}}' placeholder.")
    facts["aliases"] = tuple(facts.get("aliases", ()))
    return _add(ModelEntry(name=name, files=tuple(specs), sources=tuple(sources), **facts), overwrite=overwrite)


def unregister(name: str) -> None:
    """Remove a model from the registry (its cached files stay)."""
    entry = _REGISTRY.pop(get_entry(name).name)
    for k in [k for k, v in _ALIASES.items() if v == entry.name]:
        del _ALIASES[k]


def names() -> list[str]:
    """The registered model names, in registration order."""
    return list(_REGISTRY)


def is_published(name: str | os.PathLike) -> bool:
    """Whether ``name`` is the name (or an alias) of a registered model."""
    return isinstance(name, str) and _key(name) in _ALIASES


def suggest(name: str, n: int = 3) -> list[str]:
    """Registered names close to ``name`` (a typo), best first: the closest, and others nearly as close."""
    key = _key(str(name))
    scores: dict[str, float] = {}
    for alias, target in _ALIASES.items():
        score = difflib.SequenceMatcher(None, key, alias).ratio()
        scores[target] = max(scores.get(target, 0.0), score)
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    if not ranked or ranked[0][1] < 0.6:
        return []
    best = ranked[0][1]
    return [name for name, score in ranked if score >= best - 0.05][:n]


def unknown_name_message(name: str) -> str:
    """``"did you mean ...?"`` for a name that is no registered model (empty when nothing is close)."""
    close = suggest(name)
    return f"did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name`` (or an alias); a clear error with the closest names otherwise."""
    key = _key(str(name))
    if key in _ALIASES:
        return _REGISTRY[_ALIASES[key]]
    hint = unknown_name_message(str(name))
    raise ValueError(
        f"No published model named {name!r}" + (f"; {hint}" if hint else ".")
        + f" The registered models are {', '.join(_REGISTRY)} (scgpt.hub.list_models() describes them)."
    )  # fmt: skip
