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
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping
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


class TrainingDiverged(RuntimeError):
    """Training stopped at the first optimiser step that left a non-finite loss or weights (NaN or infinite).

    The run is not continued: every later step, and every output of the model, would be NaN. ``last.ckpt`` (with
    a ``checkpoint_dir``) still holds the last checkpoint written before, all finite.

    Attributes
    ----------
    step
        The optimiser step (counted from 1) whose loss or update was not finite.
    epoch
        Its epoch (counted from 0).
    lr
        The learning rate of that step.
    tensors
        Names of the weight tensors that hold NaN or infinite values (empty when only the loss is).
    loss
        The loss of that step.
    checkpoint
        The last checkpoint, written before the divergence (``None`` if none was written).
    """

    def __init__(
        self,
        step: int,
        epoch: int,
        lr: float,
        tensors: list[str],
        loss: float | None,
        checkpoint: Path | None,
        *,
        clipped: bool = True,
    ) -> None:
        self.step, self.epoch, self.lr, self.tensors, self.loss, self.checkpoint = (
            step, epoch, lr, tensors, loss, checkpoint
        )  # fmt: skip
        what = []
        if loss is not None and not math.isfinite(loss):
            what.append(f"the loss is {loss}")
        if tensors:
            what.append(f"{len(tensors)} weight tensors hold NaN or infinite values (e.g. {tensors[:3]})")
        kept = (
            f"the last checkpoint, written before, is {checkpoint} (finite)"
            if checkpoint is not None
            else "no checkpoint was written before"
        )
        super().__init__(
            f"training diverged at step {step} (epoch {epoch}, learning rate {lr:.3g}): {' and '.join(what)}. "
            f"Train again with a lower learning rate (e.g. lr={lr / 10:.3g})"
            + ("" if clipped else " or with gradient clipping (gradient_clip_val=1.0)")
            + f"; {kept}."
        )


def _save_last(trainer: pl.Trainer, checkpoint_dir: Path) -> None:
    """Write ``checkpoint_dir/last.ckpt`` of the current state, atomically (only rank 0 writes)."""
    partial = checkpoint_dir / f".{LAST_CHECKPOINT}.partial"
    trainer.save_checkpoint(partial)
    if trainer.is_global_zero and partial.exists():
        os.replace(partial, checkpoint_dir / LAST_CHECKPOINT)


class LastCheckpoint(Checkpoint):
    """Keeps ``checkpoint_dir/last.ckpt`` current: every ``every_n_steps`` steps, at each epoch end and at the end.

    A SIGKILL (an OOM kill, a lost node) then loses at most that much.

    Each save replaces the one file atomically (:func:`_save_last`): no ``last-v1.ckpt`` duplicates, and a kill
    during a write leaves the previous checkpoint. The epoch-end save comes after the epoch's validation (best
    weights, early-stopping counters) and the data module records the loader's position, so a run resumed from
    any of these checkpoints ends with the weights of an uninterrupted one.

    Parameters
    ----------
    checkpoint_dir
        Folder of ``last.ckpt``.
    every_n_steps
        Also save every this many optimiser steps (``None``: at epoch ends only).
    """

    def __init__(self, checkpoint_dir: Path, every_n_steps: int | None = None) -> None:
        if every_n_steps is not None and (isinstance(every_n_steps, bool) or every_n_steps < 1):
            raise ValueError(
                f"checkpoint_every_n_steps={every_n_steps!r} must be a positive number of steps, or None to save at "
                "each epoch end only."
            )
        self.checkpoint_dir, self.every_n_steps = checkpoint_dir, every_n_steps
        self._saved_step: int | None = None

    def _save(self, trainer: pl.Trainer) -> None:
        _save_last(trainer, self.checkpoint_dir)
        self._saved_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        n, step = self.every_n_steps, trainer.global_step
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches  # the epoch-end save follows
        if n and step and step % n == 0 and step != self._saved_step and not last_of_epoch:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._saved_step:  # stopped inside an epoch (max_steps)
            self._save(trainer)


class FiniteGuard(pl.Callback):
    """Stops training at the first step whose loss or updated weights are not finite (:class:`TrainingDiverged`).

    Checked after every training batch, before :class:`LastCheckpoint` (Lightning runs checkpoint callbacks last),
    so no checkpoint of a diverged state is written. The weights decide (identical on every process, so all stop
    together); a non-finite loss alone also stops a single-process run that does not scale its loss (16-bit mixed
    precision skips such steps by design).
    """

    def __init__(self, checkpoint_dir: Path | None) -> None:
        self.checkpoint_dir = checkpoint_dir

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        from ..nn._model import nonfinite_tensors

        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        loss = None if loss is None else float(loss.detach().float())
        tensors = nonfinite_tensors(getattr(pl_module, "net", pl_module).named_parameters())
        scaled = "16" in str(trainer.precision) and "bf16" not in str(trainer.precision)
        bad_loss = loss is not None and not math.isfinite(loss) and trainer.world_size == 1 and not scaled
        if tensors or bad_loss:
            optimizers = trainer.optimizers
            lr = float(optimizers[0].param_groups[0]["lr"]) if optimizers else float("nan")
            last = None if self.checkpoint_dir is None else self.checkpoint_dir / LAST_CHECKPOINT
            kept = last if last is not None and last.is_file() else None
            raise TrainingDiverged(
                trainer.global_step, trainer.current_epoch, lr, tensors, loss, kept,
                clipped=bool(trainer.gradient_clip_val),
            )  # fmt: skip


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


def no_checkpoint(checkpoint_dir: Path) -> str:
    """Why there is nothing to resume from in ``checkpoint_dir`` (for the warning that training starts over)."""
    if not checkpoint_dir.is_dir():
        return f"the checkpoint folder {checkpoint_dir} does not exist (a new run, or another folder was meant)"
    return (
        f"there is no {checkpoint_dir / LAST_CHECKPOINT} (the previous run stopped before its first checkpoint: the "
        "end of the first epoch, or checkpoint_every_n_steps steps)"
    )


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
        Also save ``last.ckpt`` every this many optimiser steps; it is saved at each epoch end and when training
        ends in any case (with a ``checkpoint_dir``), atomically, one file.
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
        guard = FiniteGuard(None if self.temporary else self.checkpoint_dir)
        callbacks: list = [self.history, self._interrupt, guard, *trainer_kwargs.pop("callbacks", [])]
        last = LastCheckpoint(self.checkpoint_dir, checkpoint_every_n_steps)
        if not self.temporary:  # a temporary folder is removed after training: nobody resumes from it
            callbacks.append(last)
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
                **{"enable_checkpointing": not self.temporary, **trainer_kwargs},
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
                warn(f"resume=True: {no_checkpoint(self.checkpoint_dir)}; training starts over from step 0.")
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
        except TrainingDiverged:
            if self.temporary:  # it holds no checkpoint: nothing to keep
                shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
            raise
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
