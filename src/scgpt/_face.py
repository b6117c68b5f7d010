"""The scanpy-style frame of a public tool: the AnnData it writes to, output keys, and the record it leaves.

Argument checks of outputs (an output never overwrites an input), views made actual, MuData write-back,
``uns[key]["params"]`` and the log of what was added. Used by :mod:`scgpt.pp`, :mod:`scgpt.tl`,
:mod:`scgpt.pl` and the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._logging import caller, log_added, warn
from .data import check_adata

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData


def check_key_added(key: str, *, reads=(), slot: str, param: str = "key_added") -> None:
    """Outputs never overwrite inputs: an error when ``key`` names an entry of ``slot`` that the function reads.

    Call it before any work; :func:`warn_overwrite` then says so when an earlier result is replaced.
    """
    fn = caller()
    if key in {r for r in reads if r is not None}:
        raise ValueError(
            f"{fn}: {param}={key!r} names the {slot} entry it reads; choose another {param} so that the input "
            "is not overwritten."
        )


def warn_overwrite(adata: AnnData, slot: str, key: str, *, copy: bool = False) -> None:
    """Warn that ``adata.<slot>[key]`` exists and is about to be replaced (call it just before writing).

    Silent for ``copy=True`` calls: the entry replaced is in the copy, not in the caller's data.
    """
    fn = caller()
    if not copy and key in getattr(adata, slot):
        warn(f"{fn}: adata.{slot}[{key!r}] exists and is overwritten.")


def actual_if_view(adata: AnnData) -> None:
    """Turn a view into an actual AnnData in place, with a warning (as scanpy does before writing)."""
    fn = caller()
    if adata.is_view:
        warn(
            f"{fn} received a view of an AnnData; it is made into an actual AnnData (a copy of the subset) "
            "so that results can be written. Pass `adata[...].copy()` to avoid this warning."
        )
        adata._init_as_actual(adata.copy())


def record(adata: AnnData, key: str, params: dict[str, Any], *, start: float, added: list[str], **extra: Any) -> None:
    """Write ``adata.uns[key] = {"params": params, **extra}`` and log every field added (scanpy's ``finished`` line).

    Parameters
    ----------
    adata
        Where the results went.
    key
        The ``uns`` entry (the function's ``key_added``).
    params
        The parameters of the call, as the user would pass them again.
    start
        ``time.perf_counter()`` at the start of the call.
    added
        Fields written besides ``uns[key]``, e.g. ``"'X_scGPT', cell embeddings (adata.obsm)"``.
    **extra
        Further entries of ``uns[key]`` (coverage reports, class lists, ...).
    """
    adata.uns[key] = {"params": params, **extra}
    log_added(start, [*added, f"'{key}', parameters (adata.uns)"])


@dataclass
class Target:
    """The AnnData a face function reads and writes: the input itself, or one modality of a MuData.

    Attributes
    ----------
    adata
        The AnnData to read cells from and write results to.
    mdata
        The MuData ``adata`` belongs to (``None`` for AnnData input).
    mod
        The modality's name in ``mdata``.
    """

    adata: AnnData
    mdata: MuData | None = None
    mod: str | None = None

    @property
    def returned(self) -> AnnData | MuData:
        """What a ``copy=True`` call returns: the MuData for MuData input, else the AnnData."""
        return self.mdata if self.mdata is not None else self.adata

    def write_obsm(self, key: str, values: np.ndarray, what: str) -> list[str]:
        """Write ``obsm[key]`` of the modality, and of the MuData aligned to ``mdata.obs_names``.

        Cells absent from the modality get NaN in the MuData. Returns the fields written (described
        as ``what``), for :func:`record`.
        """
        self.adata.obsm[key] = values
        added = [f"'{key}', {what} (adata.obsm)"]
        if self.mdata is not None:
            full = np.full((self.mdata.n_obs, values.shape[1]), np.nan, dtype=values.dtype)
            pos = self.mdata.obs_names.get_indexer(self.adata.obs_names)
            full[pos[pos >= 0]] = values[pos >= 0]
            self.mdata.obsm[key] = full
            added.append(f"'{key}', aligned to mdata.obs_names (mdata.obsm)")
        return added

    def write_uns(self, key: str) -> None:
        """Copy the modality's ``uns[key]`` to the MuData (no-op for AnnData input)."""
        if self.mdata is not None:
            self.mdata.uns[key] = self.adata.uns[key]


def on_disk(adata: AnnData) -> str:
    """How ``adata``'s matrices stay on disk (``""`` when they are in memory): backed, or read when sliced.

    An ``.h5ad`` opened backed, a ``.zarr`` store opened with :func:`scgpt.data.open_on_disk` and a TileDB-SOMA
    experiment opened with :func:`scgpt.data.open_soma` cannot be copied or rewritten in memory.
    """
    if adata.isbacked:
        return "backed (on disk)"
    from anndata.abc import CSCDataset, CSRDataset

    for name, X in [("X", adata.X), *((f"layers[{k!r}]", v) for k, v in adata.layers.items())]:
        if X is None or isinstance(X, np.ndarray) or hasattr(X, "tocsr"):  # numpy or scipy: in memory
            continue
        if getattr(X, "backend", None) == "tiledbsoma":
            return f"read from a TileDB-SOMA experiment when sliced ({name} is a {type(X).__name__})"
        if isinstance(X, CSRDataset | CSCDataset) or type(X).__module__.split(".")[0] in ("zarr", "h5py"):
            return f"read from disk when sliced ({name} is a {type(X).__name__})"
    return ""


def writable(adata: object, *, copy: bool, in_memory: bool = False) -> AnnData:
    """The AnnData a face function writes to: checked, copied with ``copy=True``, a view made actual.

    ``in_memory`` refuses backed input (for functions that subset or rewrite the matrix).
    """
    fn = caller()
    check_adata(adata)
    where = on_disk(adata)
    if where and (copy or in_memory):
        what = f"{fn}(copy=True)" if copy else fn
        load = "adata.to_memory()" if adata.isbacked else "adata.X = adata.X.to_memory()"
        raise ValueError(
            f"{what} needs the AnnData in memory, and this one is {where}. Load it first with {load}"
            + (", or write into it with copy=False." if copy and not in_memory else ".")
        )
    if copy:
        return adata.copy()
    actual_if_view(adata)
    return adata


def resolve_target(data: object, *, mod: str, copy: bool) -> Target:
    """The AnnData to work on: ``data``, or its modality ``mod`` when it is a MuData (copied first with ``copy``).

    Raises clear errors for other types, missing modalities and empty data; a view is made actual with a warning.
    """
    fn = caller()
    if type(data).__name__ == "MuData":  # avoids importing mudata for AnnData input
        mdata = data.copy() if copy else data
        if mod not in mdata.mod:
            raise KeyError(f"mod={mod!r} is not a modality of the MuData (modalities: {list(mdata.mod)}).")
        return Target(writable(mdata.mod[mod], copy=False), mdata, mod)
    from anndata import AnnData

    if not isinstance(data, AnnData):
        raise TypeError(f"{fn} expects an AnnData or MuData, got {type(data).__name__}.")
    return Target(writable(data, copy=copy))


def provenance(model: Any, name: str | None) -> dict[str, Any]:
    """``scgpt_version``, ``model`` and ``weights_sha256`` for ``uns[key]["params"]`` (``model``: an ScGPT or ``None``).

    A result computed from stored embeddings (no model object) records the version and the name it was given.
    """
    if model is not None:
        return model.provenance(name)
    from . import __version__

    return {"scgpt_version": __version__, "model": name, "weights_sha256": None}
