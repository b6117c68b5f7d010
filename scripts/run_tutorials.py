"""Execute the tutorials and check that their stored outputs come from the current code.

    python scripts/run_tutorials.py                 # run every tutorials/*.ipynb, compare with the stored outputs
    python scripts/run_tutorials.py --update        # run them and store the fresh outputs in the notebooks
    python scripts/run_tutorials.py annotation      # only tutorials/annotation.ipynb

Each notebook runs top to bottom in a fresh kernel with ``tutorials/`` as working directory, offline, with
one CPU thread (``OMP_NUM_THREADS=1``: the stored numbers do not depend on the number of cores); ``--jobs``
notebooks run at the same time (default: one per core, at most 4), the longest first (by
``tutorials/run_times.json``). A run fails on any error. The check compares every code cell's outputs
with the stored ones: the same kinds of output in the same order, text equal after masking what is volatile
(elapsed times, memory addresses, temporary paths) and numbers equal within a tolerance (training on another
CPU can move the last digits); figures must be there, pixels are not compared. Wall times, with the slowest
cells of each notebook, are printed and written to ``tutorials/run_times.json`` with ``--update``, together with
the outputs, so that the stored ``finished (...s)`` times and ``run_times.json`` come from one run
(``scripts/check_notebooks.py`` checks that they agree within 2x).

Warnings print as one line, ``UserWarning: message``, as the command line prints them: an IPython startup file
(``IPYTHONDIR`` of the run) sets ``warnings.formatwarning``, so the stored outputs name neither the kernel's
temporary cell file (``/tmp/ipykernel_<pid>/<hash>.py:3:``) nor repeat the source line of the call.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
VOLATILE = [
    (re.compile(r"finished \(\d+(\.\d+)?s\)"), "finished (<time>)"),
    (re.compile(r"0x[0-9a-f]{6,}"), "0x<address>"),
    (re.compile(r"/tmp/[^\s'\"]+"), "<tmp path>"),
    (re.compile(r"\d+(\.\d+)? ?(s|seconds|min)\b(?! ?cells)"), "<duration>"),
    (re.compile(r"version_\d+"), "version_<n>"),
]
THREADS = dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"), "1")
"""The kernels' environment: one CPU thread each (several notebooks share the cores; numbers do not depend on them)."""
ONE_LINE_WARNINGS = """import warnings


def _one_line(message, category, filename, lineno, line=None):
    return f"{category.__name__}: {message}\\n"


warnings.formatwarning = _one_line
"""
"""Run at the start of every kernel (IPython startup file): warnings without the cell file's path or source line."""
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")
REL_TOL, ABS_TOL = 0.05, 0.02


def _text(output: dict) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    data = output.get("data", {})
    return data.get("text/plain", "") if "image/png" not in data else ""


def _kinds(output: dict) -> tuple:
    if output.get("output_type") == "stream":
        return ("stream", output.get("name"))
    return (output.get("output_type"), tuple(sorted(k for k in output.get("data", {}) if k != "text/html")))


def _mask(text: str) -> str:
    for pattern, replacement in VOLATILE:
        text = pattern.sub(replacement, text)
    return text


def _same_text(stored: str, fresh: str) -> bool:
    a, b = _mask(stored), _mask(fresh)
    if NUMBER.sub("#", a) != NUMBER.sub("#", b):
        return False
    for x, y in zip(NUMBER.findall(a), NUMBER.findall(b)):
        if not math.isclose(float(x), float(y), rel_tol=REL_TOL, abs_tol=ABS_TOL):
            return False
    return True


def compare(stored: nbformat.NotebookNode, fresh: nbformat.NotebookNode) -> list[str]:
    """Differences between the stored and the fresh outputs of each code cell (empty: same)."""
    problems = []
    code = [(s, f) for s, f in zip(stored.cells, fresh.cells) if s.cell_type == "code"]
    for i, (s, f) in enumerate(code):
        so = [o for o in s.get("outputs", []) if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
        fo = [o for o in f.get("outputs", []) if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
        if [_kinds(o) for o in so] != [_kinds(o) for o in fo]:
            problems.append(f"code cell {i}: outputs {[_kinds(o) for o in so]} stored, {[_kinds(o) for o in fo]} now")
            continue
        for a, b in zip(so, fo):
            if not _same_text(_text(a), _text(b)):
                problems.append(f"code cell {i}: stored\n{_text(a)[:800]}\nnow\n{_text(b)[:800]}")
    return problems


def run(path: Path, timeout: int) -> tuple[nbformat.NotebookNode, float]:
    """Execute a notebook in a fresh kernel; returns the executed notebook and the wall time."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scgpt_ipython_") as ipython_dir:
        startup = Path(ipython_dir, "profile_default", "startup")
        startup.mkdir(parents=True)
        (startup / "00-one-line-warnings.py").write_text(ONE_LINE_WARNINGS)
        client.execute(env={**os.environ, **THREADS, "IPYTHONDIR": ipython_dir})
    return nb, time.perf_counter() - start


def slowest_cells(nb: nbformat.NotebookNode, n: int = 3) -> str:
    """The ``n`` slowest code cells of an executed notebook (index among its cells: seconds)."""
    seconds = []
    for i, cell in enumerate(nb.cells):
        timing = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            start, end = (datetime.fromisoformat(timing[k]) for k in ("iopub.execute_input", "shell.execute_reply"))
            seconds.append(((end - start).total_seconds(), i))
    return ", ".join(f"cell {i}: {s:.0f} s" for s, i in sorted(seconds, reverse=True)[:n])


def _clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop per-run metadata (execution timestamps) so that re-running changes only what the code prints."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    return nb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help="notebook names (default: all of tutorials/)")
    p.add_argument("--update", action="store_true", help="store the fresh outputs in the notebooks")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="notebooks run at the same time")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # each notebook's result as it ends, also through a pipe
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: give 1 or more notebooks to run at the same time")
    paths = [TUTORIALS / f"{n.removesuffix('.ipynb')}.ipynb" for n in args.names] or sorted(TUTORIALS.glob("*.ipynb"))
    times_file = TUTORIALS / "run_times.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    paths.sort(key=lambda path: -times.get(path.stem, math.inf))  # longest first (new notebooks first of all)
    start = time.perf_counter()

    def execute(path: Path):
        try:
            return run(path, args.timeout)
        except Exception as e:  # noqa: BLE001 - report every notebook, then fail
            return e

    failed = []
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(execute, path): path for path in paths}
        for future in as_completed(futures):  # reported as they finish
            path, result = futures[future], future.result()
            if isinstance(result, Exception):
                print(f"FAILED {path.name}: {type(result).__name__}: {str(result)[-3000:]}")
                failed.append(path.name)
                continue
            fresh, seconds = result
            print(f"{path.name}: ran in {seconds:.0f} s (slowest {slowest_cells(fresh)})")
            if args.update:
                nbformat.write(_clean(fresh), path)
                times[path.stem] = round(seconds)
                continue
            problems = compare(nbformat.read(path, as_version=4), fresh)
            if problems:
                failed.append(path.name)
                print(f"STALE {path.name}: its stored outputs do not come from the current code "
                      f"(rerun with --update and commit):\n  " + "\n  ".join(problems[:10]))  # fmt: skip
    if args.update:
        times_file.write_text(json.dumps(dict(sorted(times.items())), indent=1) + "\n")
    print(f"{len(paths)} notebook(s) in {time.perf_counter() - start:.0f} s, {args.jobs} at a time")
    if failed:
        print(f"{len(failed)} tutorial(s) failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
