"""The data module of perturbation fine-tuning: training pairs and validation perturbations of a screen."""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import numpy as np

from ..data._collate import CellBatch
from ..data._screen import FixedBatches, PairLoader, Screen, validation_batches
from ._datamodule import ResumablePosition


class PerturbationDataModule(ResumablePosition, pl.LightningDataModule):
    """Training pairs and validation perturbations of a screen (see :class:`PairLoader`, :func:`validation_batches`).

    Parameters
    ----------
    screen
        The screen.
    train_labels, val_labels
        Perturbation labels to train and validate on.
    batch_size
        Pairs per minibatch per process.
    max_length
        Tokens per cell.
    pad_id, pad_value
        Padding token and value.
    seed
        Seed of order, pairing, gene subsets and validation cells.
    include_control
        Control cells are training targets too (with no flag), as the control condition in GEARS' training set.
    """

    def __init__(
        self,
        screen: Screen,
        train_labels: Sequence[str],
        val_labels: Sequence[str],
        *,
        batch_size: int,
        max_length: int,
        pad_id: int,
        pad_value: float,
        seed: int = 0,
        include_control: bool = True,
    ) -> None:
        super().__init__()
        self.screen = screen
        wanted = [*train_labels, *([screen.control] if include_control else [])]
        self.examples = np.flatnonzero(np.isin(screen.labels, wanted))
        self.val_labels = list(val_labels)
        self.val_indices = np.arange(len(self.val_labels)) if self.val_labels else None  # read by TrainRunner
        self.options = {"batch_size": batch_size, "max_length": max_length, "pad_id": pad_id, "pad_value": pad_value}
        self.seed = seed
        self._train: PairLoader | None = None
        self._val: list[CellBatch] | None = None

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> PairLoader:
        rank, world = self._rank_world()
        if self._train is None or (self._train.rank, self._train.world_size) != (rank, world):
            self._train = PairLoader(
                self.screen, self.examples, seed=self.seed, rank=rank, world_size=world, **self.options
            )
            self._resume(self._train)
        return self._train

    def val_dataloader(self) -> FixedBatches | list:
        if not self.val_labels:
            return []
        if self._val is None:
            o = self.options
            self._val = validation_batches(
                self.screen,
                self.val_labels,
                n_cells=o["batch_size"],
                max_length=o["max_length"],
                pad_id=o["pad_id"],
                pad_value=o["pad_value"],
                seed=self.seed,
            )
        rank, world = self._rank_world()
        return FixedBatches(self._val[rank::world])
