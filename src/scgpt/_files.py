"""Writing files so that a failed or interrupted write never destroys what was there before.

Every file the package writes goes to a temporary name in the target's folder first and is moved
into place with :func:`os.replace` (atomic on POSIX and Windows) only once it is complete. A disk
that fills up, a killed process or an exception part-way leaves the previous file intact and no
half-written one under the target's name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path


def _temporary_beside(target: Path) -> Path:
    """A fresh, unused path in ``target``'s folder that keeps its suffix (some writers check it)."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".partial{target.suffix}", dir=target.parent)
    os.close(fd)
    os.unlink(name)
    return Path(name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_paths(targets: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Temporary paths for ``targets``, moved onto them together when the block ends without an error.

    Write each file (or folder) to its temporary path inside the block. Nothing is replaced until all
    of them are written, so a group of files (e.g. a model folder's ``args.json``, ``vocab.json`` and
    ``best_model.pt``) is replaced all together or not at all. On an error the temporary files are
    removed and the targets are left as they were.

    Examples
    --------
    >>> with atomic_paths(["out/result.h5ad"]) as (tmp,):  # doctest: +SKIP
    ...     adata.write_h5ad(tmp)
    """
    paths = [Path(t).expanduser() for t in targets]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    temps = [_temporary_beside(p) for p in paths]
    try:
        yield temps
        for tmp, target in zip(temps, paths, strict=True):
            if tmp.is_dir() and target.is_dir():  # os.replace cannot move a folder onto a non-empty one
                old = _temporary_beside(target)
                os.replace(target, old)
                os.replace(tmp, target)
                _remove(old)
            else:
                os.replace(tmp, target)
    except BaseException:
        for tmp in temps:
            _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """One temporary path for ``target``; see :func:`atomic_paths`."""
    with atomic_paths([target]) as (tmp,):
        yield tmp


def write_text(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``target`` atomically; returns the target."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target).expanduser()


def torch_save(obj: object, path: str | os.PathLike) -> None:
    """:func:`torch.save` through memory, so that a failed write (a full disk) raises :class:`OSError`.

    Writing to the file directly, torch reports such failures as an unhelpful ``RuntimeError`` from its
    zip writer.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    Path(path).write_bytes(buffer.getbuffer())
