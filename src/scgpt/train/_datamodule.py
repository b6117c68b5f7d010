"""The Lightning data module: one source of cells, its train/validation split and loaders."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np

from ..data import CellSource
from ..data._collate import Collator
from ..data._loader import CellLoader


class ResumablePosition:
    """The training loader's position (epoch, batches consumed) travels in the checkpoint with the data module.

    Lightning hands a loader its saved position only when it resumes *inside* an epoch; from a checkpoint saved at
    an epoch end it starts a fresh loader, which would replay the first epoch's order. Saving the position as the
    data module's state (``state_dict``, restored before the loaders are used) resumes both cases exactly.
    """

    _train: Any = None
    _position: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {} if self._train is None else {"train_position": self._train.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._position = state_dict.get("train_position")
        self._resume(self._train)

    def _resume(self, loader: Any) -> Any:
        if loader is not None and self._position is not None:
            loader.load_state_dict(self._position)
        return loader


class ScGPTDataModule(ResumablePosition, pl.LightningDataModule):
    """Training and validation loaders over a :class:`~scgpt.data.CellSource`.

    Each process gets its slice of every global minibatch (see :class:`~scgpt.data.CellLoader`);
    the process rank and count come from the Trainer.

    Parameters
    ----------
    source
        Cells in vocabulary space.
    collator
        Builds minibatches (tokenisation, masking).
    train_indices, val_indices
        Cells of each split.
    batch_size
        Cells per minibatch per process.
    seed
        Seed of the order.
    obs
        Per-cell ``batch_labels`` / ``labels`` codes.
    chunk_size
        Chunked shuffling (on-disk sources).
    group_by
        An ``obs`` key (``"batch_labels"``): every global batch then holds cells of one group.
    group_order
        With ``group_by``: ``"interleaved"`` (the groups' batches shuffled together) or ``"sequential"``
        (group after group, as the official integration tutorial).
    """

    def __init__(
        self,
        source: CellSource,
        collator: Collator,
        train_indices: np.ndarray,
        val_indices: np.ndarray | None = None,
        *,
        batch_size: int = 32,
        seed: int = 0,
        obs: dict[str, np.ndarray] | None = None,
        chunk_size: int = 1,
        group_by: str | None = None,
        group_order: str = "interleaved",
    ) -> None:
        super().__init__()
        self.source, self.collator = source, collator
        self.train_indices = np.asarray(train_indices, dtype=np.int64)
        self.val_indices = (
            None if val_indices is None or len(val_indices) == 0 else np.asarray(val_indices, dtype=np.int64)
        )
        self.batch_size, self.seed, self.obs, self.chunk_size = batch_size, seed, obs or {}, chunk_size
        self.group_by, self.group_order = group_by, group_order
        self._train: CellLoader | None = None

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> CellLoader:
        rank, world = self._rank_world()
        if self._train is None or (self._train.rank, self._train.world_size) != (rank, world):
            self._train = CellLoader(
                self.source,
                self.train_indices,
                self.collator,
                batch_size=self.batch_size,
                shuffle=True,
                seed=self.seed,
                rank=rank,
                world_size=world,
                obs=self.obs,
                chunk_size=self.chunk_size,
                group_by=self.group_by,
                group_order=self.group_order,
            )
            self._resume(self._train)
        return self._train

    def val_dataloader(self) -> CellLoader | list:
        if self.val_indices is None:
            return []
        rank, world = self._rank_world()
        return CellLoader(
            self.source,
            self.val_indices,
            self.collator,
            batch_size=self.batch_size,
            shuffle=False,
            seed=self.seed,
            rank=rank,
            world_size=world,
            drop_last=False,
            obs=self.obs,
            fixed_epoch=True,
            group_by=self.group_by,
            group_order=self.group_order,
        )
