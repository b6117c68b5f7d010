"""A deterministic, resumable minibatch loader with chunked shuffling and per-process shards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ._collate import CellBatch, Collator, _mix
from ._sources import CellSource


def bucket_by_length(order: np.ndarray, lengths: np.ndarray, global_batch: int, window: int, seed: int) -> np.ndarray:
    """Reorder so that each global batch holds cells of similar length (little padding).

    Within consecutive windows of ``window`` global batches, cells are sorted by length and cut
    into global batches, whose order inside the window is then shuffled. Which cells meet in a
    batch stays random (set by the shuffled ``order``) but each batch is nearly padding-free.
    """
    out = order.copy()
    rng = np.random.default_rng(seed)
    span = global_batch * window
    for s in range(0, len(order), span):
        block = order[s : s + span]
        block = block[np.argsort(lengths[block], kind="stable")]
        n_full = len(block) // global_batch
        batches = [block[i * global_batch : (i + 1) * global_batch] for i in range(n_full)]
        rest = block[n_full * global_batch :]
        perm = rng.permutation(n_full)
        out[s : s + span] = np.concatenate([*(batches[i] for i in perm), rest]) if n_full else block
    return out


def group_batches(
    order: np.ndarray, groups: np.ndarray, global_batch: int, *, drop_last: bool, seed: int, interleave: bool = True
) -> list:
    """Global batches that each hold cells of one group (e.g. one experimental batch, for domain-specific BatchNorm).

    The cells of each group keep their (shuffled) order in ``order`` and are cut into global batches;
    the batches of all groups are then shuffled together (``interleave``), or come group after group (the
    official ``SubsetsBatchSampler(inter_subset_shuffle=False)`` of the integration tutorial). ``groups`` is
    indexed like ``order``'s values.
    """
    out = []
    for g in np.unique(groups[order]):
        cells = order[groups[order] == g]
        n = len(cells) // global_batch if drop_last else -(-len(cells) // global_batch)
        out += [cells[i * global_batch : (i + 1) * global_batch] for i in range(n)]
    if not interleave:
        return out
    perm = np.random.default_rng(seed).permutation(len(out))
    return [out[i] for i in perm]


def epoch_order(indices: np.ndarray, *, seed: int, epoch: int, shuffle: bool, chunk_size: int = 1) -> np.ndarray:
    """Order of ``indices`` in an epoch.

    With ``chunk_size > 1`` (data read from disk), contiguous chunks of that many cells are
    shuffled as units and then cells are shuffled inside windows of 16 chunks, so minibatches read
    a few contiguous stretches instead of scattered rows.
    """
    if not shuffle:
        return indices
    rng = np.random.default_rng(_mix(seed, epoch, 101))
    if chunk_size <= 1:
        return indices[rng.permutation(len(indices))]
    chunks = [indices[i : i + chunk_size] for i in range(0, len(indices), chunk_size)]
    order = np.concatenate([chunks[i] for i in rng.permutation(len(chunks))])
    window = 16 * chunk_size
    for s in range(0, len(order), window):
        order[s : s + window] = order[s : s + window][rng.permutation(len(order[s : s + window]))]
    return order


class CellLoader:
    """Minibatches of :class:`~scgpt.data.CellBatch` for one process.

    Each epoch's order is a function of ``(seed, epoch)``. It is cut into *global* batches of
    ``batch_size * world_size`` cells and process ``rank`` takes its slice of each, so the cells of a
    global step are the same whatever the number of processes. The loader remembers how many
    batches of the current epoch it has yielded (``state_dict``), which lets training resume
    mid-epoch exactly (Lightning saves and restores the state of loaders that have one).

    Parameters
    ----------
    source
        Where rows come from.
    indices
        Cells of ``source`` to use (e.g. the training split).
    collator
        Turns rows into a :class:`CellBatch`.
    batch_size
        Cells per batch per process.
    shuffle
        Shuffle each epoch.
    seed
        Seed of the order.
    rank, world_size
        This process and the number of processes.
    drop_last
        Drop the last incomplete global batch (default: when ``world_size > 1``, so every process
        gets batches of equal size).
    chunk_size
        Chunked shuffling for on-disk sources (1: full shuffle).
    obs
        Per-cell arrays ``batch_labels`` / ``labels`` (indexed like ``source``).
    fixed_epoch
        Always build batches as in epoch 0 (same masks every pass; for validation).
    bucket_window
        Length bucketing: sort cells by length inside windows of this many global batches, so
        batches need little padding (0 disables; needs ``source.lengths()``).
    group_by
        Name of an ``obs`` array (e.g. ``"batch_labels"``): every global batch then holds cells of one group,
        as the official integration recipe trains domain-specific BatchNorm (no length bucketing).
    group_order
        ``"interleaved"``: the one-group batches of all groups shuffled together; ``"sequential"``: group after
        group, as the official integration tutorial.
    """

    def __init__(
        self,
        source: CellSource,
        indices: np.ndarray,
        collator: Collator,
        *,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool | None = None,
        chunk_size: int = 1,
        obs: dict[str, np.ndarray] | None = None,
        fixed_epoch: bool = False,
        bucket_window: int = 50,
        group_by: str | None = None,
        group_order: str = "interleaved",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        self.source, self.collator = source, collator
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.drop_last = world_size > 1 if drop_last is None else drop_last
        self.chunk_size = chunk_size
        self.obs = obs or {}
        self.fixed_epoch = fixed_epoch
        lengths = source.lengths() if bucket_window else None
        self._lengths = None if lengths is None else np.asarray(lengths)
        self.bucket_window = bucket_window
        if group_by is not None and group_by not in self.obs:
            raise ValueError(f"group_by={group_by!r} needs obs[{group_by!r}] (per-cell codes).")
        self._groups = None if group_by is None else np.asarray(self.obs[group_by])
        if group_order not in ("interleaved", "sequential"):
            raise ValueError(f"group_order must be 'interleaved' or 'sequential', got {group_order!r}.")
        self.group_order = group_order
        self.epoch = 0
        self._marked = False
        self._done = 0  # batches of the current epoch already consumed (see mark_consumed)

    def _global_batches(self) -> int:
        g = self.batch_size * self.world_size
        if self._groups is not None:
            sizes = np.bincount(self._groups[self.indices])
            return int(sum((n // g if self.drop_last else -(-n // g)) for n in sizes if n))
        n = len(self.indices)
        return n // g if self.drop_last else -(-n // g)

    def __len__(self) -> int:
        return self._global_batches()

    def _epoch_batches(self, epoch: int) -> list:
        """The global batches of an epoch, in order."""
        order = epoch_order(self.indices, seed=self.seed, epoch=epoch, shuffle=self.shuffle, chunk_size=self.chunk_size)
        g = self.batch_size * self.world_size
        if self._groups is not None:
            return group_batches(
                order,
                self._groups,
                g,
                drop_last=self.drop_last,
                seed=_mix(self.seed, epoch, 303),
                interleave=self.group_order == "interleaved",
            )
        if self._lengths is not None and self.bucket_window > 1:
            order = bucket_by_length(order, self._lengths, g, self.bucket_window, seed=_mix(self.seed, epoch, 202))
        return [order[b * g : (b + 1) * g] for b in range(self._global_batches())]

    def __iter__(self) -> Iterator[CellBatch]:
        if self._done >= self._global_batches():
            self.epoch, self._done = self.epoch + 1, 0
        epoch = 0 if self.fixed_epoch else self.epoch
        self._marked = False
        batches = self._epoch_batches(epoch)
        for b in range(self._done, len(batches)):
            glob = batches[b]
            per = -(-len(glob) // self.world_size)
            mine = glob[self.rank * per : (self.rank + 1) * per]
            if len(mine) == 0:
                continue
            yield self.collator(
                self.source.rows(mine),
                epoch=epoch,
                batch_index=b,
                batch_labels=self.obs["batch_labels"][mine] if "batch_labels" in self.obs else None,
                labels=self.obs["labels"][mine] if "labels" in self.obs else None,
                cells=mine,
            )
        if self.fixed_epoch:
            self._done = 0
        elif not self._marked and self.epoch == epoch:  # iterated outside a training plan: a full pass ends the epoch
            self.epoch, self._done = self.epoch + 1, 0

    def mark_consumed(self, batch: CellBatch) -> None:
        """Record that training used ``batch`` (the position saved by :meth:`state_dict`).

        Lightning fetches a batch ahead, so the loader cannot tell from its own iteration which
        batches the model has seen; the training plan reports them.
        """
        self._marked = True
        self.epoch, self._done = batch.epoch, batch.index + 1
        if self._done >= self._global_batches():
            self.epoch, self._done = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        """Position in the data: epoch and batches of it consumed."""
        return {"epoch": self.epoch, "batches_done": self._done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a position saved by :meth:`state_dict`."""
        self.epoch, self._done = int(state["epoch"]), int(state["batches_done"])
