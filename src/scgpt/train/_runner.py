"""Builds the Lightning Trainer for a training plan and runs it (scvi-tools' ``TrainRunner`` pattern).

The model class decides *what* to train (network, recipe, data); the runner decides *how*: devices and
strategy (DDP over GPUs and nodes), precision, checkpoints and resuming, early stopping, logging.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .._logging import warn

LAST_CHECKPOINT = "last.ckpt"


class TrainingInterrupted(RuntimeError):
    """Training was stopped by a signal: SIGTERM (a cluster's preemption, ``kill``) or SIGINT (Ctrl-C).

    Attributes
    ----------
    signal
        The signal number.
    step
        Optimiser steps done.
    checkpoint
        The checkpoint to resume from (``None`` if none was written).
    exit_code
        The conventional exit status, ``128 + signal`` (143 for SIGTERM, 130 for SIGINT).
    """

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        self.signal, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        where = (
            f"the checkpoint to resume from is {checkpoint}; continue with resume=True (scgpt: --resume)"
            if checkpoint is not None
            else "no checkpoint was written yet (set checkpoint_every_n_steps to save one more often)"
        )
        super().__init__(f"training stopped by {signal.Signals(signum).name} at step {step}; {where}")


def _save_last(trainer: pl.Trainer, checkpoint_dir: Path) -> None:
    """Write ``checkpoint_dir/last.ckpt`` of the current state, atomically (only rank 0 writes)."""
    partial = checkpoint_dir / f".{LAST_CHECKPOINT}.partial"
    trainer.save_checkpoint(partial)
    if trainer.is_global_zero and partial.exists():
        os.replace(partial, checkpoint_dir / LAST_CHECKPOINT)


class _FinalCheckpoint(pl.Callback):
    """Saves ``last.ckpt`` when training ends, so that it holds the final step.

    With ``checkpoint_every_n_steps`` Lightning saves only every n steps, and resuming a finished run
    would redo the last ones.
    """

    def __init__(self, checkpoint_dir: Path) -> None:
        self.checkpoint_dir = checkpoint_dir

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _save_last(trainer, self.checkpoint_dir)


class BestWeights(pl.Callback):
    """Keeps the network's weights of the epoch with the best ``monitor`` value, to restore when training ends.

    The official fine-tuning tutorials evaluate ``best_model``, the epoch with the lowest validation loss
    (the perturbation tutorial: the highest validation Pearson), not the last epoch. The kept weights travel
    in the checkpoints, so a resumed run keeps the same best. Non-finite values never count as best.

    Parameters
    ----------
    monitor
        Logged validation metric.
    mode
        ``"min"`` (a loss) or ``"max"`` (a correlation).
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}.")
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        self.weights: dict | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if better:
            self.best = value
            self.weights = {k: v.detach().cpu().clone() for k, v in pl_module.net.state_dict().items()}

    def state_dict(self) -> dict:
        return {"best": self.best, "weights": self.weights}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best, self.weights = state_dict.get("best"), state_dict.get("weights")


class _InterruptCallback(pl.Callback):
    """Saves ``last.ckpt`` when SIGTERM stops training and remembers which signal did.

    Lightning stops at the end of an optimiser step on SIGTERM, so the state is consistent and the
    checkpoint resumes exactly. Ctrl-C can arrive mid-step: the last regular checkpoint is kept.
    """

    def __init__(self, checkpoint_dir: Path) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.signal: int | None = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self.signal = signal.SIGTERM
            _save_last(trainer, self.checkpoint_dir)
        elif isinstance(exception, KeyboardInterrupt):
            self.signal = signal.SIGINT


def check_checkpoint(path: Path) -> None:
    """A clear error for a checkpoint file that is truncated or damaged (an interrupted write, a full disk)."""
    try:
        with zipfile.ZipFile(path) as z:
            damaged = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        damaged = str(e)
    if damaged is not None:
        raise ValueError(
            f"The checkpoint {path} cannot be read: it is truncated or damaged (e.g. written when the disk was full "
            f"or the job was killed; {damaged}). Remove it to start over, or resume from another one (resume=PATH)."
        )


# Lightning messages that are expected with this package's loaders and are not actionable by users.
_EXPECTED_WARNINGS = (
    ".*does not have many workers.*",
    ".*overridden `transfer_batch_to_device`.*",
    ".*LeafSpec.*",
    ".*limit_val_batches.*",
    ".*smaller than the logging interval.*",
)


class HistoryCallback(pl.Callback):
    """Per-epoch means of the logged losses: ``history["train_loss"]``, ``history["val_mlm"]``, ..."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}

    def _record(self, trainer: pl.Trainer, prefix: str) -> None:
        for name, value in trainer.callback_metrics.items():
            # train metrics are logged per step and per epoch ("*_epoch"); val metrics per epoch only
            if name.startswith(prefix) and (prefix == "val_" or name.endswith("_epoch")):
                self.history.setdefault(name.removesuffix("_epoch"), []).append(float(value))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, "train_")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, "val_")


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Keep Lightning's INFO chatter (device summary, tips) out of notebooks; warnings still show."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def quiet_training() -> Iterator[None]:
    """Lightning without its INFO chatter and without the warnings that are expected here and not actionable."""
    with quiet_lightning(), warnings.catch_warnings():
        for message in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


class TrainRunner:
    """Assembles a :class:`lightning.pytorch.Trainer` for a plan and its data, and fits.

    Parameters
    ----------
    plan
        The training plan (:class:`~scgpt.train.ScGPTTrainingPlan`).
    datamodule
        Its data (:class:`~scgpt.train.ScGPTDataModule`).
    max_epochs, max_steps
        Length of training (Lightning semantics; ``max_steps=-1``: no step limit).
    accelerator, devices, strategy, num_nodes, precision, accumulate_grad_batches, gradient_clip_val
        Lightning settings; ``strategy="ddp"`` with several devices or nodes trains data-parallel.
    checkpoint_dir
        Where ``last.ckpt`` and the per-step loss logs (``logs/version_<n>/metrics.csv``) go; ``None``: a
        temporary folder, removed after training that was not interrupted.
    checkpoint_every_n_steps
        Save ``last.ckpt`` every this many steps (default: at each epoch end).
    early_stopping, early_stopping_patience
        Stop when ``monitor`` stops improving (needs validation cells).
    restore_best
        End with the weights of the epoch with the best ``monitor`` value (needs validation cells), as the
        official fine-tuning tutorials do, instead of the last epoch's.
    monitor, monitor_mode
        Validation metric that early stopping and ``restore_best`` follow, and whether lower (``"min"``,
        default, for ``val_loss``) or higher (``"max"``, e.g. ``val_pearson_delta``) is better.
    log_every_n_steps
        Logging interval.
    progress
        Show Lightning's progress bar.
    **trainer_kwargs
        Passed to :class:`lightning.pytorch.Trainer` (``callbacks`` are added to the runner's own).
    """

    def __init__(
        self,
        plan: pl.LightningModule,
        datamodule: pl.LightningDataModule,
        *,
        max_epochs: int | None = None,
        max_steps: int = -1,
        accelerator: str = "auto",
        devices: int | str | list[int] = "auto",
        strategy: str = "auto",
        num_nodes: int = 1,
        precision: str | int = "32-true",
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every_n_steps: int | None = None,
        early_stopping: bool = False,
        early_stopping_patience: int = 3,
        restore_best: bool = False,
        monitor: str = "val_loss",
        monitor_mode: str = "min",
        log_every_n_steps: int = 10,
        progress: bool = True,
        **trainer_kwargs: Any,
    ) -> None:
        self.plan, self.datamodule = plan, datamodule
        self.temporary = checkpoint_dir is None
        self.checkpoint_dir = (
            Path(tempfile.mkdtemp(prefix="scgpt_train_"))
            if checkpoint_dir is None
            else Path(checkpoint_dir).expanduser()
        )
        if self.checkpoint_dir.exists() and not self.checkpoint_dir.is_dir():
            raise ValueError(f"checkpoint_dir={str(checkpoint_dir)!r} is a file; give a folder for the checkpoints.")
        self.history = HistoryCallback()
        self._interrupt = _InterruptCallback(self.checkpoint_dir)
        callbacks: list = [self.history, self._interrupt, *trainer_kwargs.pop("callbacks", [])]
        if not self.temporary:
            callbacks.append(_FinalCheckpoint(self.checkpoint_dir))
        every = {"every_n_train_steps": checkpoint_every_n_steps} if checkpoint_every_n_steps else {}
        callbacks.append(ModelCheckpoint(dirpath=self.checkpoint_dir, save_last=True, save_top_k=0, **every))
        has_val = getattr(datamodule, "val_indices", None) is not None
        self.best = BestWeights(monitor, monitor_mode) if restore_best else None
        if restore_best:
            if not has_val:
                raise ValueError("restore_best needs validation cells (train_size < 1 or validation_size > 0).")
            callbacks.append(self.best)
        if early_stopping:
            if not has_val:
                raise ValueError("early_stopping needs validation cells (train_size < 1).")
            stop = EarlyStopping(
                monitor=monitor, patience=early_stopping_patience, mode=monitor_mode, check_on_train_epoch_end=False
            )
            callbacks.append(stop)
        with quiet_lightning():
            self.trainer = pl.Trainer(
                max_epochs=max_epochs,
                max_steps=max_steps,
                accelerator=accelerator,
                devices=devices,
                strategy=strategy,
                num_nodes=num_nodes,
                precision=precision,
                accumulate_grad_batches=accumulate_grad_batches,
                gradient_clip_val=gradient_clip_val,
                callbacks=callbacks,
                logger=CSVLogger(self.checkpoint_dir, name="logs"),
                log_every_n_steps=log_every_n_steps,
                enable_progress_bar=progress,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                limit_val_batches=1.0 if has_val else 0,
                default_root_dir=self.checkpoint_dir,
                **trainer_kwargs,
            )

    def resume_path(self, resume: bool | str | os.PathLike) -> Path | None:
        """The checkpoint to continue from: ``checkpoint_dir/last.ckpt`` for ``True`` (if it exists), or a path."""
        if not resume:
            return None
        if isinstance(resume, bool):
            if self.temporary:
                raise ValueError("resume=True needs checkpoint_dir=, the folder of the run to continue.")
            path = self.checkpoint_dir / LAST_CHECKPOINT
            if not path.is_file():
                warn(f"resume=True but there is no {path} yet; training starts from the beginning.")
                return None
        else:
            path = Path(resume).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"No checkpoint at {path}.")
        check_checkpoint(path)
        return path

    def __call__(self, *, resume: bool | str | os.PathLike = False) -> pl.Trainer:
        """Fit (continuing from a checkpoint with ``resume``); returns the Trainer.

        Raises :class:`TrainingInterrupted` when SIGTERM or SIGINT stops training (after SIGTERM,
        ``last.ckpt`` holds the step reached).
        """
        ckpt_path = self.resume_path(resume)
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, signal.SIG_DFL) if main else None  # Lightning's handler alone
        try:
            with quiet_training():
                self.trainer.fit(self.plan, datamodule=self.datamodule, ckpt_path=ckpt_path)
        except SystemExit as e:  # SIGTERMException, or Lightning's exit after Ctrl-C
            if self._interrupt.signal is None:
                raise
            last = self.checkpoint_dir / LAST_CHECKPOINT
            raise TrainingInterrupted(
                self._interrupt.signal, self.trainer.global_step, last if last.is_file() else None
            ) from e
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
        if self.best is not None and self.best.weights is not None:
            self.plan.net.load_state_dict(self.best.weights)
        if self.temporary:  # nobody will resume from it: do not leave a model-sized file behind
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        return self.trainer
