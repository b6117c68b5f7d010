"""Downloading published models into the cache: verified, atomic, one copy for many processes, honest offline.

Layout: ``<cache_dir>/models/<name>/`` holds the model's files as published (``args.json``, ``vocab.json``,
``best_model.pt``) and ``.scgpt-hub.json``, the record of each file's SHA-256, size, modification time and
source. A download goes to ``<name>/.download/`` first (pooch writes each file under a temporary name and
renames it when the transfer ends); every file is checked against its size and SHA-256 and only when all
of them are right are they moved into the model folder. So a folder never holds a truncated or unverified
file under a model file's name, and a re-download that fails (``force=True``) leaves the previous copy as
it was. A file lock (``filelock``) next to the folder makes concurrent processes (DDP ranks, a SLURM array)
produce one copy: the first downloads, the others wait and then find it verified.

Transfers use pooch (HTTP through ``requests``); an interrupted transfer is restarted from the beginning (a
few attempts per source, then the next source), never trusted: a short body fails ``requests``' length
check, and the size and hash checks catch anything else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._files import write_text
from .._logging import logger
from .._settings import ENV_CACHE, ENV_HF_OFFLINE, ENV_OFFLINE, settings
from ._hashing import compute_sha256, remember_sha256
from ._registry import ModelEntry, ModelFile, get_entry, is_published

META_FILE = ".scgpt-hub.json"
STAGING = ".download"
MODELS = "models"
RETRIES = 2
"""Extra attempts per source after a failed transfer (each restarts the file from its first byte)."""
RETRY_WAIT = 1.0
"""Seconds before the first retry (doubled for each further one)."""
TIMEOUT = (10, 60)
"""Seconds to connect, and seconds without a byte from the server before a transfer counts as failed."""
CHUNK = 1 << 20


class ModelNotAvailableError(FileNotFoundError):
    """A published model is not in the cache and cannot be downloaded now (offline, no direct source, no network).

    The message names the files, the URLs to fetch them from and the folder to put them in.
    """


class IntegrityError(ValueError):
    """A file's size or SHA-256 is not the published (or first recorded) one: it was refused, nothing was replaced."""


# ---------------------------------------------------------------------------- paths and records
def model_dir(name: str, *, cache_dir: str | os.PathLike | None = None, revision: str | None = None) -> Path:
    """The folder a published model is (or will be) cached in; no download.

    Put files downloaded by hand here (for models without a direct source, or on a machine without network).

    Parameters
    ----------
    name
        A registered name or alias (:func:`scgpt.hub.list_models`).
    cache_dir
        The cache (default: ``scgpt.settings.cache_dir``).
    revision
        A revision other than the registered one gets a folder of its own, ``<name>@<revision>``.
    """
    entry = get_entry(name)
    if entry.bundled:
        return entry.bundled_path()
    root = Path(cache_dir).expanduser() if cache_dir is not None else settings.cache_dir
    rev = _revision(entry, revision)
    folder = entry.name if rev == entry.default_revision else f"{entry.name}@{rev}"
    return root / MODELS / folder


def _revision(entry: ModelEntry, revision: str | None) -> str | None:
    if revision is None:
        return entry.default_revision
    if not any("{revision}" in s.url for s in entry.http_sources):
        raise ValueError(
            f"revision={revision!r}: {entry.name} has no source with revisions (its sources: "
            f"{', '.join(s.url for s in entry.sources)})."
        )
    return revision


def _read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return {"files": {}}
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        return {"files": {}}
    return meta


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    write_text(folder / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _pins(entry: ModelEntry, revision: str | None) -> bool:
    """Whether the registered hashes apply (they describe the registered revision only)."""
    return revision == entry.default_revision


def _expected(spec: ModelFile, record: dict | None, pinned: bool) -> tuple[str | None, int | None, str]:
    """SHA-256, size and where they come from: the registry (``pinned``), the first copy (``recorded``) or none."""
    if pinned and spec.sha256:
        return spec.sha256, spec.size, "pinned"
    if record and record.get("sha256"):
        return record["sha256"], record.get("size"), "recorded"
    return None, spec.size if pinned else None, "unknown"


def _stamp_matches(path: Path, record: dict | None) -> bool:
    if not record or not path.is_file():
        return False
    st = path.stat()
    return record.get("size") == st.st_size and record.get("mtime_ns") == st.st_mtime_ns


def _human(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""  # pragma: no cover


def is_cached(name: str, *, cache_dir: str | os.PathLike | None = None, revision: str | None = None) -> bool:
    """Whether every file of the model is in the cache and unchanged since it was verified (no hashing, no network)."""
    entry = get_entry(name)
    if entry.bundled:
        return all((entry.bundled_path() / f.name).is_file() for f in entry.files)
    rev = _revision(entry, revision)
    folder = model_dir(entry.name, cache_dir=cache_dir, revision=rev)
    records = _read_meta(folder)["files"]
    pinned = _pins(entry, rev)
    for spec in entry.files:
        record = records.get(spec.name)
        if not _stamp_matches(folder / spec.name, record):
            return False
        if pinned and spec.sha256 and record.get("sha256") != spec.sha256:
            return False
    return True


# ---------------------------------------------------------------------------- messages
def _offline_reason() -> str:
    env = [k for k in (ENV_OFFLINE, ENV_HF_OFFLINE) if os.environ.get(k)]
    where = f" ({' / '.join(f'{k}={os.environ[k]}' for k in env)})" if env else " (scgpt.settings.offline)"
    return "downloads are off" + where


def _by_hand(entry: ModelEntry, folder: Path, files: list[ModelFile], revision: str | None) -> str:
    """Where each file can be fetched from, and where to put it."""
    parts = []
    for spec in files:
        urls = [s.file_url(spec.name, revision) for s in entry.http_sources]
        parts.append(f"{spec.name} from {' or '.join(urls)}" if urls else spec.name)
    pages = [s.url for s in entry.manual_sources]
    text = f"put {', '.join(f.name for f in files)} into {folder}/ by hand"
    if entry.http_sources:
        text += f" ({'; '.join(parts)}"
        text += f"; or the folder {' or '.join(pages)})" if pages else ")"
    elif pages:
        text += f", downloaded from {' or '.join(pages)}"
    return text + f"; they are checked on the next call (the cache is set by {ENV_CACHE} or scgpt.settings.cache_dir)"


def _not_available(
    entry: ModelEntry, folder: Path, files: list[ModelFile], revision: str | None, why: str
) -> ModelNotAvailableError:
    how = _by_hand(entry, folder, files, revision)
    return ModelNotAvailableError(f"The published model {entry.name!r} is not in the cache, and {why}: {how}.")


# ---------------------------------------------------------------------------- locking
@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    from filelock import FileLock, Timeout

    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder.parent / f".{folder.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info(f"waiting for another process that is downloading into {folder}")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


# ---------------------------------------------------------------------------- verifying and fetching
def _check(path: Path, spec: ModelFile, record: dict | None, pinned: bool) -> tuple[str, str]:
    """Hash ``path`` and compare with what is expected; ``(sha256, how)`` or :class:`IntegrityError`."""
    sha, size, how = _expected(spec, record, pinned)
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise IntegrityError(f"{spec.name} has {actual_size:,} bytes, but the {how} size is {size:,}")
    digest = compute_sha256(path)
    if sha is not None and digest != sha:
        raise IntegrityError(f"{spec.name} has SHA-256 {digest}, but the {how} one is {sha}")
    return digest, how


def _transfer(url: str, staging: Path, spec: ModelFile, progress: bool) -> Path:
    """Fetch ``url`` into ``staging/<file>`` with pooch (temporary name, renamed when the transfer ends)."""
    import pooch
    from tqdm.auto import tqdm

    target = staging / spec.name
    target.unlink(missing_ok=True)
    bar = (
        tqdm(total=spec.size or 0, unit="B", unit_scale=True, desc=spec.name, leave=False, dynamic_ncols=True)
        if progress
        else False
    )
    downloader = pooch.HTTPDownloader(progressbar=bar, timeout=TIMEOUT, chunk_size=CHUNK)
    plog = pooch.get_logger()
    level = plog.level
    plog.setLevel(logging.WARNING)  # pooch would log every transfer and the hash; we log once, our way
    try:
        pooch.retrieve(url, known_hash=None, fname=spec.name, path=staging, downloader=downloader)
    finally:
        plog.setLevel(level)
        if bar:
            bar.close()
    return target


def _network_errors() -> tuple[type[BaseException], ...]:
    import requests

    return (requests.exceptions.RequestException, OSError)


def _reason(e: BaseException) -> str:
    """A few words for a failed transfer."""
    import requests

    status = getattr(getattr(e, "response", None), "status_code", None)
    if status is not None:
        return f"HTTP {status}"
    if isinstance(e, requests.exceptions.ConnectTimeout):
        return "connection timed out"
    if isinstance(e, requests.exceptions.ChunkedEncodingError):
        return "transfer cut short"
    if isinstance(e, requests.exceptions.ReadTimeout):
        return "the server stopped sending"
    if isinstance(e, requests.exceptions.ConnectionError):
        return "no connection" + (" (host name not resolved)" if "NameResolution" in str(e) else "")
    return f"{type(e).__name__}: {str(e)[:120]}"


def _fetch(
    entry: ModelEntry, spec: ModelFile, record: dict | None, pinned: bool, revision: str | None, staging: Path,
    progress: bool,
) -> tuple[Path, str, str, str]:  # fmt: skip
    """Download and verify one file, trying each source in turn; ``(path, url, sha256, how)``."""
    import requests

    failures: list[str] = []
    refused: list[str] = []
    for source in entry.http_sources:
        url = source.file_url(spec.name, revision)
        for attempt in range(1 + RETRIES):
            try:
                path = _transfer(url, staging, spec, progress)
            except _network_errors() as e:
                status = getattr(getattr(e, "response", None), "status_code", None)
                cut = isinstance(e, requests.exceptions.ChunkedEncodingError | requests.exceptions.ReadTimeout)
                again = (cut or (status is not None and status >= 500)) and attempt < RETRIES
                if not again:  # no connection, not there, or the last attempt: the next source
                    tries = f" ({attempt + 1} attempts)" if attempt else ""
                    failures.append(f"{url}: {_reason(e)}{tries}")
                    break
                logger.info(f"    {spec.name}: {_reason(e)}; restarting the transfer")
                time.sleep(RETRY_WAIT * 2**attempt)
                continue
            try:
                digest, how = _check(path, spec, record, pinned)
            except IntegrityError as e:
                path.unlink(missing_ok=True)
                refused.append(f"{url}: {e}")
                break  # a wrong file: this source has it wrong, try the next
            return path, url, digest, how
    if refused:
        raise IntegrityError(
            f"Refused {spec.name} of {entry.name!r}: "
            + "; ".join(refused)
            + (f" (other sources failed: {'; '.join(failures)})" if failures else "")
            + ". Nothing was replaced in the cache."
        )
    raise ConnectionError("; ".join(failures) or "no direct source")


# ---------------------------------------------------------------------------- the public functions
def download(
    name: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    force: bool = False,
    progress: bool | None = None,
) -> Path:
    """Download a published model into the cache (once), verify it, and return its folder.

    Every file is checked against its published size and SHA-256 (or, where no source publishes one,
    against the hash recorded when the model was first downloaded or placed in the cache: trust on first
    use, logged and written to ``.scgpt-hub.json`` beside the files). Files are downloaded under temporary
    names and moved into the folder only when all of them are complete and verified; concurrent calls
    (several processes) share one download through a file lock. A model already in the cache is returned
    without network access (files are re-hashed only when their size or modification time changed).

    Parameters
    ----------
    name
        A registered name or alias, see :func:`scgpt.hub.list_models` (a typo gets the closest names).
    cache_dir
        The cache (default ``scgpt.settings.cache_dir``: ``SCGPT_CACHE``, else the user cache folder).
    revision
        Another revision of a source that has revisions (a Hugging Face commit or branch). The registered
        hashes belong to the registered revision: another one is trusted on first use.
    force
        Download again even if the files are in the cache; the old copy is replaced only by a verified one.
    progress
        Show a progress bar per file (default: ``scgpt.settings.progress``).

    Returns
    -------
    The model folder, ready for :meth:`scgpt.model.ScGPT.from_pretrained`.

    Raises
    ------
    ModelNotAvailableError
        Offline (``SCGPT_OFFLINE=1``, ``HF_HUB_OFFLINE=1``, ``scgpt.settings.offline``), no direct source
        (a Google Drive folder), or every source failed: names the URLs and the folder to put the files in.
    IntegrityError
        A file does not match its published or recorded SHA-256 or size; nothing was replaced.

    Examples
    --------
    >>> folder = scgpt.hub.download("scGPT_human")  # doctest: +SKIP
    >>> model = scgpt.model.ScGPT.from_pretrained("scGPT_human")  # the same, loaded  # doctest: +SKIP
    """
    entry = get_entry(name)
    if entry.bundled:
        folder = entry.bundled_path()
        missing = [f.name for f in entry.files if not (folder / f.name).is_file()]
        if missing:
            raise ModelNotAvailableError(f"The bundled model {entry.name!r} lacks {missing} in {folder}.")
        return folder
    rev = _revision(entry, revision)
    folder = model_dir(entry.name, cache_dir=cache_dir, revision=rev)
    if not force and is_cached(entry.name, cache_dir=cache_dir, revision=rev):
        return folder
    progress = settings.progress if progress is None else progress
    with _locked(folder):
        if not force and is_cached(entry.name, cache_dir=cache_dir, revision=rev):  # another process did it
            return folder
        return _download_locked(entry, folder, rev, force=force, progress=progress)


def _download_locked(entry: ModelEntry, folder: Path, revision: str | None, *, force: bool, progress: bool) -> Path:
    pinned = _pins(entry, revision)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # left by a process that was killed mid-transfer: never reused
    meta = _read_meta(folder)
    records: dict[str, dict] = meta["files"]
    now = datetime.now(UTC).isoformat(timespec="seconds")
    changed = False

    # files already there (downloaded before, or placed by hand): verify them, recording first-seen hashes
    todo: list[ModelFile] = []
    for spec in entry.files:
        path, record = folder / spec.name, records.get(spec.name)
        if force or not path.is_file():
            todo.append(spec)
            continue
        if _stamp_matches(path, record) and not (pinned and spec.sha256 and record.get("sha256") != spec.sha256):
            continue
        try:
            digest, how = _check(path, spec, record, pinned)
        except IntegrityError as e:
            raise IntegrityError(
                f"{path} is not the published file: {e}. It was changed, damaged or is another model's: delete it "
                f"and download again (scgpt.hub.download({entry.name!r}, force=True))."
            ) from None
        records[spec.name] = _record(path, digest, how, record.get("source") if record else "placed by hand", now)
        if how == "unknown":
            _log_first_use(entry, path, digest)
        changed = True

    if todo:
        if settings.offline:
            raise _not_available(entry, folder, todo, revision, _offline_reason())
        if not entry.http_sources:
            raise _not_available(entry, folder, todo, revision, "it has no direct download source")
        size = sum(f.size for f in todo) if all(f.size for f in todo) else None
        logger.info(f"downloading {entry.name} ({len(todo)} files, {_human(size)}) into {folder}")
        staging.mkdir()
        fetched: dict[str, tuple[Path, str, str, str]] = {}
        try:
            for spec in todo:
                try:
                    fetched[spec.name] = _fetch(
                        entry, spec, records.get(spec.name), pinned, revision, staging, progress
                    )
                except ConnectionError as e:
                    raise _not_available(entry, folder, todo, revision, f"downloading failed ({e})") from None
                path, url, digest, _ = fetched[spec.name]
                logger.info(f"    {spec.name}: {_human(path.stat().st_size)} from {url}, SHA-256 verified")
            for spec in todo:  # all complete and verified: move them in together
                path, url, digest, how = fetched[spec.name]
                os.replace(path, folder / spec.name)
                records[spec.name] = _record(folder / spec.name, digest, how, url, now)
                if how == "unknown":
                    _log_first_use(entry, folder / spec.name, digest)
            changed = True
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if changed:
        meta.update(model=entry.name, revision=revision, files=records)
        _write_meta(folder, meta)
        for spec in entry.files:
            remember_sha256(folder / spec.name, records[spec.name]["sha256"])
    return folder


def _record(path: Path, digest: str, how: str, source: str | None, when: str) -> dict[str, Any]:
    st = path.stat()
    verified = {"pinned": "published hash", "recorded": "hash recorded on first use"}.get(how, "trust on first use")
    return {
        "sha256": digest,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "source": source,
        "verified": verified,
        "time": when,
    }


def _log_first_use(entry: ModelEntry, path: Path, digest: str) -> None:
    logger.warning(
        f"{entry.name}: no published SHA-256 for {path.name}; recorded {digest} (trust on first use, in "
        f"{path.parent / META_FILE}): later copies must match it"
    )


def resolve(model: str | os.PathLike) -> tuple[Path, str] | None:
    """The folder and name of a published model given by name, downloading it on first use.

    ``None`` when ``model`` is an existing path (a local folder of the same name wins) or no registered name.
    """
    if not isinstance(model, str) or Path(model).expanduser().exists() or not is_published(model):
        return None
    entry = get_entry(model)
    return download(entry.name), entry.name
