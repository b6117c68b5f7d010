"""scripts/check_docs_blocks.py, the CI step that runs every python and bash block of the docs as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_docs_blocks.py"

GOOD = """# A page that runs

```python
import anndata as ad

x = 41
cells = ad.read_h5ad("ref.h5ad")                 # a file of the sandbox
```

```python
assert x + 1 == 42 and cells.n_obs == 350      # the namespace of the blocks above
```

```python fresh
import multiprocessing as mp

assert "x" not in globals()                      # a new interpreter, run as a script

if __name__ == "__main__":
    with mp.get_context("spawn").Pool(1) as pool:
        assert pool.map(abs, [-2]) == [2]
```

```bash
test -d path/to/scGPT_human                      # the sandbox holds the model folder
```

```python notrun
raise RuntimeError("needs four GPUs")
```
"""

BAD = """# A page with errors

```python
print("printed before the error")
y = 1
y / 0
```

```bash
echo "bash says hi"
exit 3
```

```python
print("a later block still runs", y)
```
"""

CRASH = """# A page whose process dies

```python
import os

print("about to die", flush=True)
os._exit(7)
```
"""


@pytest.mark.slow
def test_failing_blocks_are_reported_with_page_line_and_output(tmp_path):
    """Catches a docs check whose failures cannot be found: a failing block must be named by its page and the
    line of its fence, with what it printed and a traceback pointing at the markdown line; the other blocks and
    pages still run, the exit status is 1, and a passing page (namespace shared between its python blocks, a
    ``fresh`` block in its own interpreter, sandbox files) is not reported."""
    good, bad, crash = tmp_path / "good.md", tmp_path / "bad.md", tmp_path / "crash.md"
    good.write_text(GOOD)
    bad.write_text(BAD)
    crash.write_text(CRASH)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(good), str(bad), str(crash), "--jobs", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "3 block(s) failed" in out, out
    failures = out.split("block(s) failed:")[1]
    failures, crash_failure = failures.split(f"{crash}:3 (the worker process died running it; it printed):")
    assert "about to die" in crash_failure
    python_failure, bash_failure = failures.split(f"{bad}:9 (bash")
    assert f"{bad}:3 (python):" in python_failure
    assert "printed before the error" in python_failure
    assert f'File "{bad}", line 6' in python_failure and "ZeroDivisionError" in python_failure
    assert ", exit 3):" in bash_failure and "bash says hi" in bash_failure
    assert "a later block still runs" not in failures and str(good) not in failures
    assert f"{bad}: 3 block(s)" in out and f"{good}: 4 block(s)" in out
    assert f"  {good}:14: python fresh block" in out
    assert f"marked notrun (the text says why): {good}:28" in out
