"""Honest exit codes: SIGTERM (preemption, kill) and SIGINT (Ctrl-C) stop a run with one line saying what
was reached, the conventional exit status, and a checkpoint that resumes to bit-identical weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import scgpt

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
TRAIN = ["--d-model", "16", "--n-heads", "2", "--d-hid", "16", "--n-layers", "1", "--recipe", "pretrain-masked"]
TRAIN += ["--max-length", "32", "--batch-size", "16", "--accelerator", "cpu", "--checkpoint-every-n-steps", "3", "-q"]
STEPS = 40


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cells") / "cells.h5ad"
    scgpt.datasets.pbmc68k_counts()[:200].copy().write_h5ad(path)
    return path


def _default_sigint() -> None:
    """In the child: SIGINT back to its default, so Python turns it into KeyboardInterrupt even when the test run
    itself was started with SIGINT ignored (as a shell does for background jobs without job control)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _scgpt(*args: str) -> list[str]:
    return [sys.executable, "-m", "scgpt.cli", *args]


def _stop_when(proc: subprocess.Popen, ready: Path, signum: int, timeout: float = 240) -> tuple[int, str, str]:
    """Send ``signum`` once ``ready`` exists; return the exit status, stdout and stderr."""
    start = time.time()
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - start < timeout, "the run never got going"
        time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out or "", err


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.pt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(cells, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("straight") / "model"
    proc = subprocess.run(
        _scgpt("pretrain", "--input", str(cells), "--output", str(out), "--max-steps", str(STEPS), *TRAIN),
        capture_output=True, text=True, env=ENV, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _weights(out)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_pretrain_stops_with_a_message_and_resumes_exactly(cells, tmp_path, uninterrupted, signum, status):
    out = tmp_path / "model"
    argv = _scgpt("pretrain", "--input", str(cells), "--output", str(out), "--max-steps", str(STEPS), *TRAIN)
    proc = subprocess.Popen(
        argv, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV, preexec_fn=_default_sigint
    )
    rc, _, err = _stop_when(proc, out / "checkpoints" / "last.ckpt", signum)
    name = signal.Signals(signum).name
    lines = [line for line in err.strip().splitlines() if line.startswith("scgpt pretrain:")]
    assert rc == status and len(lines) == 1, err[-3000:]
    assert f"stopped by {name}; training stopped at step" in lines[0] and "--resume" in lines[0]
    assert not (out / "model.pt").exists()  # no model claimed as finished
    if signum == signal.SIGTERM:  # a checkpoint of the very step reached
        assert f"the checkpoint is {out / 'checkpoints' / 'last.ckpt'}" in lines[0]
    resumed = subprocess.run([*argv, "--resume"], capture_output=True, text=True, env=ENV, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"scgpt pretrain: {STEPS} steps" in resumed.stdout
    for key, value in _weights(out).items():
        assert torch.equal(value, uninterrupted[key]), key


def test_a_script_calling_train_gets_an_exception(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_train_api.py"), str(tmp_path / "ckpt")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    rc, out, err = _stop_when(proc, tmp_path / "ckpt" / "last.ckpt", signal.SIGTERM)
    report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    assert rc == 0 and report["signal"] == signal.SIGTERM and report["step"] >= 3, err[-3000:]
    assert report["checkpoint"] == str(tmp_path / "ckpt" / "last.ckpt")
    assert "training stopped by SIGTERM at step" in report["message"] and "resume=True" in report["message"]
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == report["step"]  # the checkpoint holds the step reached


def test_embed_stops_with_a_message_and_writes_nothing(cells, tmp_path):
    big = tmp_path / "big.h5ad"
    import anndata as ad

    adata = ad.read_h5ad(cells)
    ad.concat([adata] * 40, index_unique="-").write_h5ad(big)  # 8,000 cells: long enough to be stopped
    marker = tmp_path / "started"
    code = (
        "import sys, pathlib, scgpt.model._inference as e\n"
        "orig = e.run_inference\n"
        f"def mark(*a, **k):\n    pathlib.Path({str(marker)!r}).touch()\n    return orig(*a, **k)\n"
        "e.run_inference = mark\n"
        "from scgpt.cli import main\n"
        f"sys.exit(main(['embed', '--model', 'demo', '--input', {str(big)!r}, '--output', {str(tmp_path / 'o.h5ad')!r},"
        " '-q']))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env=ENV)
    rc, _, err = _stop_when(proc, marker, signal.SIGTERM)
    assert rc == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        "scgpt embed: stopped by SIGTERM; nothing was written; the outputs are written at the end"
    )
    assert not (tmp_path / "o.h5ad").exists() and not list(tmp_path.glob(".o.h5ad*"))
