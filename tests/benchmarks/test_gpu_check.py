"""``benchmarks/gpu_check.py`` at its tiny CPU shape: the prepared GPU check must run end to end before a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import scgpt

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # a subprocess that imports torch and runs every section: ~20 s


def test_gpu_check_runs_on_cpu_and_prints_one_table(tmp_path):
    """Catches a GPU check that breaks before the GPU minutes (an import, a renamed API, a section that raises
    and turns into a FAILED row) or whose agreement section compares the wrong arrays (float32 on the same
    device must agree with CPU float32 exactly; bf16 closely)."""
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHONPATH": str(Path(scgpt.__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--json-out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| check | result | detail |" in proc.stdout
    info = json.loads(out.read_text())
    labels = [r[0] for r in info["rows"]]
    for section in ("device", "embed bf16", "fine-tune step", "attention network", "cpu vs CPU float32"):
        assert any(label.startswith(section) for label in labels), (section, labels)
    assert not any(r[1] == "FAILED" for r in info["rows"])
    agreement = [r[1] for r in info["rows"] if r[1].startswith(("float32:", "bfloat16:"))]
    assert agreement[0] == "float32: cos mean 1.00000, min 1.00000"
    assert float(agreement[1].split("min ")[1]) > 0.999
    assert info["tiny"] is True
