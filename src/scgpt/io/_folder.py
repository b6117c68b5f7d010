"""What a model folder holds: one model, in the official layout, this package's ``model.pt``, or both at once.

Or the ``adapter.pt`` of a parameter-efficient fine-tune, which loads on top of its base model.
A folder never holds two different models. Saving into a folder that already holds a model needs
``overwrite=True``, and then every model file that the new save does not write is removed, so a stale
``model.pt`` cannot shadow a newer official folder (or the reverse). Files are written to temporary
names and moved into place together (:func:`scgpt._files.atomic_paths`): a failed save leaves the
previous model loadable.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from .._files import atomic_paths

ARGS_FILE, VOCAB_FILE, WEIGHTS_FILE = "args.json", "vocab.json", "best_model.pt"
"""The official model folder's files."""
MODEL_FILE = "model.pt"
"""This package's checkpoint (:meth:`scgpt.model.ScGPT.save`)."""
ANNDATA_FILE = "adata.h5ad"
ADAPTER_FILE = "adapter.pt"  # adapters and heads of a parameter-efficient fine-tune (scgpt.model._adapters)
OFFICIAL_FILES = (ARGS_FILE, VOCAB_FILE, WEIGHTS_FILE)
NATIVE_FILES = (MODEL_FILE, ANNDATA_FILE)
MODEL_FILES = (*OFFICIAL_FILES, *NATIVE_FILES, ADAPTER_FILE)


def model_files(path: str | os.PathLike) -> list[str]:
    """The model files present in a folder."""
    path = Path(path).expanduser()
    return [f for f in MODEL_FILES if (path / f).exists()]


@contextlib.contextmanager
def model_folder(path: str | os.PathLike, files: Sequence[str], *, overwrite: bool) -> Iterator[list[Path]]:
    """Temporary paths for ``files`` of the model folder ``path``; on success they replace the folder's model.

    Raises when ``path`` is a file, or holds a model and ``overwrite`` is false. Model files that are
    not among ``files`` are removed once the new ones are in place.
    """
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file; give the folder to write the model to.")
    present = model_files(folder)
    if present and not overwrite:
        raise FileExistsError(
            f"{folder} already holds a model ({', '.join(present)}); pass overwrite=True to replace it."
        )
    with atomic_paths([folder / f for f in files]) as temps:
        yield temps
    for stale in set(present) - set(files):
        (folder / stale).unlink(missing_ok=True)
