"""Embeddings of cells larger than memory, written chunk by chunk, resumable (``scgpt embed --backed``).

Store
    A folder of chunk files beside the output (``OUTPUT.parts/``): ``manifest.json`` (what is being
    computed: input file, its size and a hash of its content (:func:`input_identity`), the model's weights
    fingerprint, the options that change results, the chunk size) and one ``chunk_NNNNNN.npz`` per chunk of
    consecutive rows (``emb``: L2-normalised embeddings, float32; ``n_tokens``: tokens per cell). Every file is
    written to a temporary name and moved into place (:func:`scgpt._files.atomic_path`), so a chunk file exists
    only when complete: a killed job leaves whole chunks and, at most, temporary files, which are removed
    on the next run.

Resume
    Running the same command again finds the folder, checks the manifest (a different input, model or
    option is an error naming what differs), logs how many chunks are already there and embeds only the
    others. Results do not depend on chunking or on which process computed a chunk, so a resumed run
    (also on another number of processes) equals an uninterrupted one.

Several processes
    The pending chunks are shared out as in :mod:`scgpt.model._distributed` (contiguous runs balanced by
    tokens); each process reads only its rows and writes its own chunk files (the folder must be on a file
    system all nodes see). Nothing is gathered: rank 0 waits for the others, then streams the chunk files
    into the output ``.h5ad`` (:func:`write_h5ad`), one chunk in memory at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._files import atomic_path, write_text
from .._logging import logger
from ._device import resolve_device
from ._distributed import chunk_costs, launch, make_fabric, split_chunks
from ._engine import Accumulator, chunk_grid, run_inference

if TYPE_CHECKING:
    from anndata import AnnData

    from ..data._genes import GeneMatch
    from ..nn import ScGPTNet
    from ._scgpt import ScGPT

MANIFEST = "manifest.json"
FORMAT = 1


def weights_fingerprint(model: ScGPT) -> str:
    """SHA-1 of the network's weights (names, shapes, dtypes and values)."""
    h = hashlib.sha1()
    for name, t in sorted(model.net.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


FULL_HASH_BYTES = 1 << 30
"""Inputs up to this size (1 GiB, a second or two to read) are hashed whole; larger ones by sampled blocks."""
SAMPLE_BLOCKS, BLOCK_BYTES, EDGE_BYTES = 256, 1 << 16, 1 << 22


def _file_digest(h: Any, path: Path, size: int, whole: bool) -> None:
    """Feed ``path``'s content into ``h``: all of it, or its first and last 4 MiB and 256 spaced 64 KiB blocks."""
    with open(path, "rb") as f:
        if whole or size <= 2 * EDGE_BYTES + SAMPLE_BLOCKS * BLOCK_BYTES:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            return
        offsets = [0, size - EDGE_BYTES]
        step = (size - 2 * EDGE_BYTES) // (SAMPLE_BLOCKS + 1)
        offsets[1:1] = [EDGE_BYTES + step * (i + 1) for i in range(SAMPLE_BLOCKS)]
        for off in offsets:
            f.seek(off)
            h.update(f.read(EDGE_BYTES if off in (0, size - EDGE_BYTES) else BLOCK_BYTES))


def input_identity(path: str | os.PathLike) -> dict[str, Any]:
    """The input by content: resolved path, size and a SHA-256 of its bytes (a changed file is not resumed from).

    Not the modification time: ``cp -p`` or ``rsync -t`` give new content the old one. Inputs up to 1 GiB in all
    are hashed whole (decisive; about a second per GiB, nothing beside hours of embedding); larger ones by their
    size, their first and last 4 MiB (the HDF5 superblock and root metadata of an ``.h5ad``, which any rewrite
    through h5py or anndata changes) and 256 evenly spaced 64 KiB blocks (a few hundred reads, well under a
    second even on a network file system). For a folder (a ``.zarr`` store, a TileDB-SOMA experiment) every file
    counts with its relative path and size, the same way. For a remote URI (``s3://...``): the URI alone.
    """
    if "://" in str(path) and not str(path).startswith("file://"):
        return {"path": str(path)}
    p = Path(str(path).removeprefix("file://")).expanduser().resolve()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    sizes = [f.stat().st_size for f in files]
    whole = sum(sizes) <= FULL_HASH_BYTES
    h = hashlib.sha256()
    for f, size in zip(files, sizes, strict=True):
        h.update(f"{f.relative_to(p) if p.is_dir() else ''}\0{size}\0".encode())
        _file_digest(h, f, size, whole)
    return {"path": str(p), "size": sum(sizes), "sha256": h.hexdigest(), "hashed": "whole" if whole else "sampled"}


class ChunkStore:
    """The chunk files of one out-of-core run (see the module docstring).

    Parameters
    ----------
    folder
        The folder (created by :meth:`open`).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder).expanduser()
        self.manifest: dict[str, Any] = {}

    def chunk_path(self, i: int) -> Path:
        return self.folder / f"chunk_{i:06d}.npz"

    def open(self, manifest: dict[str, Any]) -> bool:
        """Create the folder for ``manifest``, or check that an existing one holds the same run.

        Returns whether chunks of an earlier run are there. Removes temporary files left by a killed write.
        """
        path = self.folder / MANIFEST
        old = self.check(manifest)
        if old is not None:
            self.manifest = old  # keeps the chunk size of the run being resumed
            for stale in self.folder.glob(".*.partial*"):  # a write that was killed
                stale.unlink(missing_ok=True)
            return True
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(manifest, indent=1) + "\n")
        self.manifest = manifest
        return False

    def check(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """The manifest of an earlier run in the folder (``None`` if none); an error if it computed something else.

        Only reads, so every process can check before any of them waits for the others.
        """
        path = self.folder / MANIFEST
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"{self.folder} is a file; it must be the folder of the chunks (remove it).")
        if not path.is_file():
            return None
        try:
            old = json.loads(path.read_text())
            if not isinstance(old, dict):
                raise ValueError("not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ValueError(
                f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:200]}); remove the folder "
                f"{self.folder} to start over (its chunks cannot be trusted without it)."
            ) from None
        if not any(self.folder.glob("chunk_*.npz")):  # a run that failed before its first chunk: nothing to keep
            logger.info(f"    {self.folder} holds no chunks yet; starting it again for this run")
            return None
        differ = [k for k in sorted(set(old) | set(manifest)) if k != "chunk_size" and old.get(k) != manifest.get(k)]
        if differ:
            raise ValueError(
                f"{self.folder} holds chunks of another run ({', '.join(differ)} differ: was "
                f"{ {k: old.get(k) for k in differ} }, now { {k: manifest.get(k) for k in differ} }). Run the same "
                "command to resume it, or remove the folder to start over."
            )
        return old

    @property
    def grid(self) -> list[tuple[int, int]]:
        return chunk_grid(int(self.manifest["n_obs"]), int(self.manifest["chunk_size"]))

    def done(self) -> list[int]:
        """Chunks already written."""
        return [i for i in range(len(self.grid)) if self.chunk_path(i).is_file()]

    def write(self, i: int, emb: np.ndarray, n_tokens: np.ndarray) -> None:
        """Write chunk ``i`` atomically."""
        with atomic_path(self.chunk_path(i)) as tmp, open(tmp, "wb") as f:
            np.savez(f, emb=emb.astype(np.float32, copy=False), n_tokens=n_tokens.astype(np.int64, copy=False))

    def read(self, i: int, *, emb: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        """Embeddings (``None`` without ``emb``) and tokens per cell of chunk ``i``."""
        path = self.chunk_path(i)
        try:
            with open(path, "rb") as f, np.load(f) as z:  # the file is closed whatever np.load raises
                return (z["emb"] if emb else None), z["n_tokens"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise ValueError(
                f"The chunk file {path} is damaged ({type(e).__name__}: {reason}); remove it and run the same "
                "command again (only that chunk is recomputed)."
            ) from None

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class ChunkWriter(Accumulator):
    """Keeps the embeddings of the chunk being run and writes them to a :class:`ChunkStore` when it ends."""

    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self.chunk_size = int(store.manifest["chunk_size"])

    def begin(self, run) -> None:
        super().begin(run)
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, net: ScGPTNet, batch) -> None:
        emb = net.cell_embedding(batch.genes, batch.values, **batch.inputs(net.config.batch_conditioned))
        tokens = (~batch.padding_mask).sum(1)
        self.parts.append((batch.cells.cpu().numpy(), emb.float().cpu().numpy(), tokens.cpu().numpy()))

    def end_chunk(self, start: int, stop: int) -> None:
        d = self.parts[0][1].shape[1]
        emb = np.zeros((stop - start, d), dtype=np.float32)
        n_tokens = np.zeros(stop - start, dtype=np.int64)
        for cells, e, t in self.parts:
            emb[cells - start], n_tokens[cells - start] = e, t
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        emb /= np.where(norms > 0, norms, 1.0)
        self.store.write(start // self.chunk_size, emb, n_tokens)
        self.parts = []

    def result(self) -> None:
        return None


@dataclass
class StoreRun:
    """What :func:`embed_to_store` did (on rank 0; ``None`` fields elsewhere)."""

    store: ChunkStore
    match: GeneMatch | None
    dtype: str | None
    resumed_chunks: int
    rank: int


def embed_to_store(
    model: ScGPT,
    adata: AnnData,
    folder: str | os.PathLike,
    *,
    identity: dict[str, Any],
    chunk_size: int = 2048,
    devices: int | str | Sequence[int] | None = None,
    num_nodes: int = 1,
    strategy: Any = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    **options: Any,
) -> StoreRun:
    """Embed every cell of ``adata`` into the chunk files of ``folder``, skipping chunks already written.

    Parameters
    ----------
    model, adata
        As :func:`~scgpt.model._engine.run_inference` (``adata`` typically backed; each process reads its rows).
    folder
        The chunk folder (:class:`ChunkStore`).
    identity
        What makes results differ (input file, options); stored in the manifest with the model fingerprint.
    chunk_size
        Cells per chunk file (the unit of resuming); a resumed run keeps the chunk size it started with.
    devices, num_nodes, strategy
        Several processes (see :func:`scgpt.tl.embed`); ``None``: this process alone.
    device, progress, **options
        As :func:`~scgpt.model._engine.run_inference`.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    manifest = {
        "format": FORMAT,
        **identity,
        "n_obs": int(adata.n_obs),
        "n_vars": int(adata.n_vars),
        "model": weights_fingerprint(model),
        "chunk_size": int(chunk_size),
    }
    manifest = json.loads(json.dumps(manifest))  # as it reads back from the file

    def work(rank: int, world: int, barrier, run_device) -> StoreRun:
        store = ChunkStore(folder)
        resumed = 0
        store.check(manifest)  # on every rank: a clear error everywhere rather than ranks left waiting
        if rank == 0:
            existed = store.open(manifest)
            done = store.done()
            resumed = len(done)
            grid = store.grid
            if existed and done:
                cells = sum(b - a for i, (a, b) in enumerate(grid) if i in set(done))
                logger.info(
                    f"resuming from {store.folder}: {len(done)} of {len(grid)} chunks ({cells:,} of "
                    f"{adata.n_obs:,} cells) are already written; embedding the other {len(grid) - len(done)}"
                )
            elif existed:
                logger.info(f"resuming from {store.folder}: no chunk was written yet")
        barrier()
        if rank != 0:
            store.manifest = json.loads((store.folder / MANIFEST).read_text())
        grid = store.grid
        pending = [i for i in range(len(grid)) if not store.chunk_path(i).is_file()] if rank == 0 else None
        pending = _same_on_all(pending, rank, world)
        chunks = [grid[i] for i in pending]
        costs = chunk_costs(adata, options.get("layer"), chunks, options.get("max_length", 1200))
        mine = [chunks[i] for i in split_chunks(costs, world)[rank]]
        res = run_inference(
            model,
            adata,
            ChunkWriter(store),
            device=run_device,
            progress=progress if rank == 0 else False,
            chunks=mine,
            **options,
        )
        barrier()  # every chunk is on disk
        return StoreRun(store, res.match, res.dtype, resumed, rank)

    if devices is None:
        return work(0, 1, lambda: None, resolve_device(device))
    fabric = make_fabric(device=device, devices=devices, num_nodes=num_nodes, strategy=strategy)
    return launch(fabric, lambda f: work(f.global_rank, f.world_size, f.barrier, f.device))


def _same_on_all(value: Any, rank: int, world: int) -> Any:
    """Rank 0's ``value`` on every rank (the list of pending chunks, decided once)."""
    if world == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def write_h5ad(
    adata: AnnData,
    store: ChunkStore,
    path: str | os.PathLike,
    *,
    key: str,
    uns: dict[str, Any],
) -> tuple[int, int]:
    """Write ``obs``, ``var``, ``uns[key]`` and ``obsm[key]`` (streamed from the chunk files) to ``path``, atomically.

    The embeddings are copied one chunk at a time into the file, never held whole in memory. Returns the
    shape of the embeddings.
    """
    import anndata as ad
    import h5py

    grid = store.grid
    width = store.read(0)[0].shape[1] if grid else 0
    skeleton = ad.AnnData(obs=adata.obs.copy(), var=adata.var.copy(), uns={key: uns})
    with atomic_path(path) as tmp:
        skeleton.write_h5ad(tmp)
        with h5py.File(tmp, "r+") as f:
            rows = max(1, min(int(store.manifest["chunk_size"]), adata.n_obs))
            ds = f["obsm"].create_dataset(key, shape=(adata.n_obs, width), dtype=np.float32, chunks=(rows, width))
            ds.attrs["encoding-type"], ds.attrs["encoding-version"] = "array", "0.2.0"
            for i, (a, b) in enumerate(grid):
                ds[a:b] = store.read(i)[0]
    return adata.n_obs, width


def mean_tokens(store: ChunkStore) -> float:
    """Mean tokens per cell over the chunk files."""
    total, n = 0, 0
    for i in range(len(store.grid)):
        t = store.read(i, emb=False)[1]
        total, n = total + int(t.sum()), n + len(t)
    return total / max(n, 1)


def read_embeddings(store: ChunkStore) -> np.ndarray:
    """All embeddings in cell order, in memory (for a UMAP of them)."""
    return np.concatenate([store.read(i)[0] for i in range(len(store.grid))])
