"""The published scGPT models by name: listed, downloaded, verified and cached.

- :func:`list_models`: the registry (the official model zoo and the bundled ``demo``) as a table, or the
  model cards found in a folder of your own models (``local=``);
- :func:`download`: a published model into ``scgpt.settings.cache_dir``, every file checked against its
  SHA-256, moved into place only when complete and verified, one copy for many processes;
- :func:`model_dir`: where a model is (or goes) in the cache, e.g. to put files downloaded by hand;
- :func:`register`: add a model of your own (a URL template per source, the files and their hashes);
- :func:`file_sha256`: the SHA-256 of a file, computed once per version of the file.

Wherever a model is accepted (``scgpt.tl.*``, :meth:`scgpt.model.ScGPT.from_pretrained`,
``scgpt.settings.default_model``, ``scgpt ... --model``), a registered name resolves to its cached folder,
downloaded on first use; an existing local folder of the same name wins. Nothing here imports torch.
"""

from __future__ import annotations

from . import _zoo  # registers the published models
from ._cards import CARD_FILE, find_cards, is_card, read_card, render_card
from ._download import IntegrityError, ModelNotAvailableError, download, is_cached, model_dir, resolve
from ._hashing import compute_sha256, file_sha256
from ._registry import (
    ModelEntry,
    ModelFile,
    ModelSource,
    get_entry,
    is_published,
    names,
    register,
    suggest,
    unregister,
)
from ._table import list_models

__all__ = [
    "CARD_FILE",
    "IntegrityError",
    "ModelEntry",
    "ModelFile",
    "ModelNotAvailableError",
    "ModelSource",
    "compute_sha256",
    "download",
    "file_sha256",
    "find_cards",
    "get_entry",
    "is_cached",
    "is_card",
    "is_published",
    "list_models",
    "model_dir",
    "names",
    "read_card",
    "register",
    "render_card",
    "resolve",
    "suggest",
    "unregister",
]
