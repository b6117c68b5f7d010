"""Two CPU processes (DDP over gloo) train the same model as one process on the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
WORKER = Path(__file__).with_name("ddp_worker.py")


def _run(devices: int, out: Path) -> dict:
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(devices), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=out,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out / "weights.pt", weights_only=True)


def _without_key_bias(name: str, w: torch.Tensor) -> torch.Tensor:
    """The key slice of in_proj_bias has an exactly-zero true gradient (softmax ignores a constant added to
    every key's score), so Adam turns float noise there into lr-sized steps; it has no effect on outputs."""
    if name.endswith("self_attn.in_proj_bias"):
        d = w.shape[0] // 3
        return torch.cat([w[:d], w[2 * d :]])
    return w


def test_two_process_ddp_equals_single_process(tmp_path):
    single = _run(1, tmp_path / "single")
    ddp = _run(2, tmp_path / "ddp")
    assert single.keys() == ddp.keys()
    errors = {k: float((_without_key_bias(k, single[k]) - _without_key_bias(k, ddp[k])).abs().max()) for k in single}
    assert max(errors.values()) < 1e-6, max(errors.items(), key=lambda kv: kv[1])
    init = torch.load(tmp_path / "single" / "init.pt", weights_only=True)
    moved = float(
        (single["transformer_encoder.layers.0.linear1.weight"] - init["transformer_encoder.layers.0.linear1.weight"])
        .abs()
        .max()
    )
    assert moved > 1e-3  # six Adam steps at lr 1e-3 moved the weights; both runs moved them alike
