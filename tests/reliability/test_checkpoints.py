"""Nothing is lost to a SIGKILL: ``last.ckpt`` is written every ``checkpoint_every_n_steps`` steps and at each
epoch end (atomically, one file), a killed fine-tune resumes to the weights of an uninterrupted run, and
``resume=True`` / ``--resume`` without a checkpoint says at WARNING level that training starts over, and why."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

import scgpt
from scgpt.data import GeneVocab
from scgpt.model import ScGPT

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
SCRIPT = str(HERE / "_finetune_kill.py")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=ENV, timeout=600)


def test_a_finetune_killed_after_epoch_2_resumes_to_bit_identical_weights(tmp_path):
    """Bug caught: ``last.ckpt`` written only when training ends or on SIGTERM (Lightning's ``ModelCheckpoint`` with
    ``save_top_k=0`` never saves at an epoch end), so a SIGKILL / OOM kill / lost node loses every epoch; or an
    epoch-end checkpoint that resumes with the loader back at epoch 0's order (Lightning restores a loader's position
    only inside an epoch), so the resumed weights differ; or a finished run leaving a duplicate ``last-v1.ckpt``."""
    straight = _run(str(tmp_path / "straight"), str(tmp_path / "straight.pt"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "straight").iterdir()) == ["last.ckpt", "logs"]  # one file, no -v1

    ckpt = tmp_path / "killed"
    killed = _run(str(ckpt), str(tmp_path / "resumed.pt"), "--kill-at", "2")  # SIGKILL inside the third epoch
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.ckpt", "logs"]  # no half-written file left
    saved = torch.load(ckpt / "last.ckpt", weights_only=False)
    per_epoch = torch.load(tmp_path / "straight" / "last.ckpt", weights_only=False)["global_step"] // 4
    assert saved["global_step"] == 2 * per_epoch  # the end of epoch 2: nothing before the kill's epoch is lost

    resumed = _run(str(ckpt), str(tmp_path / "resumed.pt"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = torch.load(tmp_path / "straight.pt"), torch.load(tmp_path / "resumed.pt")
    assert want.keys() == got.keys()
    for key, value in want.items():
        assert torch.equal(value, got[key]), key


class _SavedSteps(pl.Callback):
    """The step held by ``last.ckpt`` at the start of every training batch and at the end."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, []

    def _look(self, trainer: pl.Trainer) -> None:
        held = torch.load(self.path, weights_only=False)["global_step"] if self.path.exists() else None
        self.seen.append((trainer.global_step, held))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._look(trainer)

    def on_fit_end(self, trainer, pl_module):
        self._look(trainer)


def test_last_ckpt_is_written_every_n_steps_and_at_each_epoch_end(tmp_path):
    """Bug caught: ``--checkpoint-every-n-steps`` or the epoch end not honoured (the checkpoint lags behind by more
    than ``n`` steps or a whole epoch), or the final save writing a second ``last-v1.ckpt`` next to ``last.ckpt``."""
    scgpt.settings.progress = False
    adata = scgpt.datasets.pbmc68k_counts()[:200].copy()  # 13 batches of 16 per epoch
    ScGPT.setup_anndata(adata)
    torch.manual_seed(0)
    model = ScGPT(vocab=GeneVocab.from_genes(adata.var_names), d_model=16, n_heads=2, d_hid=16, n_layers=1, n_cls=None)
    spy = _SavedSteps(tmp_path / "last.ckpt")
    model.train(
        adata, recipe="pretrain-masked", max_epochs=2, batch_size=16, max_length=32, train_size=1.0,
        checkpoint_dir=tmp_path, checkpoint_every_n_steps=5, accelerator="cpu", callbacks=[spy],
    )  # fmt: skip
    saves = [5, 10, 13, 15, 20, 25, 26]  # every 5 steps, and the ends of epochs 1 (step 13) and 2 (step 26)
    for step, held in spy.seen:
        assert held == max((s for s in saves if s <= step), default=None), (step, held)
    assert spy.seen[-1] == (26, 26)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "logs"]


def test_resume_without_a_checkpoint_warns_that_training_starts_over(tmp_path):
    """Bug caught: ``resume=True`` on a folder without ``last.ckpt`` restarting from step 0 with a message that does
    not say why (the run never reached its first checkpoint), or only at INFO level on the command line, where
    ``-q`` hides it."""
    adata = scgpt.datasets.pbmc68k_counts()[:64].copy()
    ScGPT.setup_anndata(adata)
    model = ScGPT(vocab=GeneVocab.from_genes(adata.var_names), d_model=16, n_heads=2, d_hid=16, n_layers=1, n_cls=None)
    with pytest.warns(UserWarning, match=r"resume=True: there is no .*last\.ckpt \(the previous run stopped before"):
        model.train(
            adata, recipe="pretrain-masked", max_steps=1, batch_size=16, max_length=16, train_size=1.0,
            checkpoint_dir=tmp_path, resume=True, accelerator="cpu", progress=False,
        )  # fmt: skip
    assert model.trainer_.global_step == 1

    cells = tmp_path / "cells.h5ad"
    adata.write_h5ad(cells)
    out = tmp_path / "model"
    argv = ["pretrain", "--input", str(cells), "--output", str(out), "--max-steps", "1", "--d-model", "16"]
    argv += ["--n-heads", "2", "--d-hid", "16", "--n-layers", "1", "--max-length", "16", "--accelerator", "cpu"]
    proc = subprocess.run(
        [sys.executable, "-m", "scgpt.cli", *argv, "--resume", "-q"], capture_output=True, text=True, env=ENV,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("--resume:")]
    assert lines == [
        f"--resume: there is no {out / 'checkpoints' / 'last.ckpt'} (the previous run stopped before its first "
        "checkpoint: the end of the first epoch, or checkpoint_every_n_steps steps); training starts over from step 0"
    ], proc.stderr[-3000:]
