"""SHA-256 of files, computed once per file version and cached by (path, size, modification time).

Hashing the 200 MB weights of a published model takes about a second; results record the hash of the
weights they came from, so it is remembered: in memory, and on disk in ``scgpt.settings.cache_dir``
(``sha256.json``), keyed by the resolved path and invalidated when the size or the modification time
(nanoseconds) changes. A cache that cannot be read or written is ignored (the hash is computed again).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .._files import write_text
from .._settings import settings

CACHE_FILE = "sha256.json"
_MEMORY: dict[str, tuple[int, int, str]] = {}


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def compute_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as lowercase hex (no cache)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _disk_cache() -> Path:
    return settings.cache_dir / CACHE_FILE


def _read_disk() -> dict[str, list]:
    try:
        data = json.loads(_disk_cache().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember_sha256(path: str | os.PathLike, digest: str) -> None:
    """Record that the file at ``path``, as it is now, has SHA-256 ``digest`` (e.g. just verified by a download)."""
    p = Path(path).resolve()
    size, mtime = _stamp(p)
    _MEMORY[str(p)] = (size, mtime, digest)
    data = _read_disk()
    data[str(p)] = [size, mtime, digest]
    try:
        write_text(_disk_cache(), json.dumps(data, indent=0, sort_keys=True) + "\n")
    except OSError:  # a read-only cache folder: the in-memory record still saves the work in this process
        pass


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, computed once per version of the file (cached by path, size and mtime).

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    Lowercase hex digest.
    """
    p = Path(path).resolve()
    stamp = _stamp(p)
    hit = _MEMORY.get(str(p))
    if hit is None:
        disk = _read_disk().get(str(p))
        hit = tuple(disk) if isinstance(disk, list) and len(disk) == 3 else None
    if hit is not None and tuple(hit[:2]) == stamp:
        _MEMORY[str(p)] = hit  # type: ignore[assignment]
        return str(hit[2])
    digest = compute_sha256(p)
    if _stamp(p) == stamp:  # not changed while it was read
        remember_sha256(p, digest)
    return digest
