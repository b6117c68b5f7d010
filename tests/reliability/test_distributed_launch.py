"""Several processes never hang: ``tl.embed(..., devices=2)`` from code that has no script file (``python -c``, a
heredoc on standard input) forks its processes instead of asking Lightning to run a file that does not exist, or
says what to do, within seconds."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import scgpt

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
ENV.pop("OMP_NUM_THREADS", None)  # Lightning splits the cores between the processes
KW = 'device="cpu", max_length=64, batch_size=16'
CODE = f"""
import numpy as np
import scgpt
scgpt.settings.progress = False
cells = scgpt.datasets.pbmc68k_counts()[:48].copy()
scgpt.tl.embed(cells, "demo", devices=2, {KW}{{strategy}})
np.save({{out!r}}, cells.obsm["X_scGPT"])
print("embedded", cells.n_obs)
"""
TIMEOUT = 240  # the hang: rank 0 waits forever for a rank that Lightning failed to start


@pytest.fixture(scope="module")
def single() -> np.ndarray:
    cells = scgpt.datasets.pbmc68k_counts()[:48].copy()
    scgpt.tl.embed(cells, "demo", device="cpu", max_length=64, batch_size=16, progress=False)
    return cells.obsm["X_scGPT"]


@pytest.mark.parametrize("how", ["python -c", "heredoc"])
def test_two_processes_from_code_without_a_script_file(how, single, tmp_path):
    """Bug caught: Lightning's DDP launcher re-running ``sys.argv[0]`` (``-c`` or ``-``, which is no file) for the
    second process, which dies at once while the first waits for it forever: the call hangs, no error."""
    out = tmp_path / "emb.npy"
    code = CODE.format(strategy="", out=str(out))
    argv, stdin = ([sys.executable, "-c", code], None) if how == "python -c" else ([sys.executable, "-"], code)
    try:
        proc = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=TIMEOUT
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"{how}: tl.embed(devices=2) hung for {TIMEOUT} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "embedded 48"  # the rest of the program ran once
    np.testing.assert_allclose(np.load(out), single, atol=1e-6, rtol=0)


def test_an_explicit_script_launcher_without_a_script_is_a_clear_error(tmp_path):
    """Bug caught: ``strategy="ddp"`` chosen explicitly from ``python -c`` hanging the same way, instead of a message
    that says to put the code in a script file or to use the forking strategy."""
    code = CODE.format(strategy=', strategy="ddp"', out=str(tmp_path / "emb.npy"))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=TIMEOUT
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"tl.embed(devices=2, strategy='ddp') from python -c hung for {TIMEOUT} s")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        "ValueError: embed: devices=2 starts the other processes by running this program again, but it has no script "
        "file (it runs from python -c, standard input or an interactive session) and strategy='ddp' starts them that "
        "way. Put the code in a script file and run python script.py (or use torchrun / srun), or pass "
        "strategy='ddp_notebook' (forks)."
    ), proc.stderr[-3000:]
    assert not (tmp_path / "emb.npy").exists()
