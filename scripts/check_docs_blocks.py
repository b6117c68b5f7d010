"""Run every code block of the README and the docs as written.

    python scripts/check_docs_blocks.py                     # README.md and docs/*.md
    python scripts/check_docs_blocks.py docs/quickstart.md  # one file
    python scripts/check_docs_blocks.py --jobs 1            # one page at a time

Each page runs as a notebook would: its ``python`` blocks in order in one namespace (``__name__ ==
"__main__"``, working directory the page's sandbox), so a block sees what the blocks above it defined; its
``bash`` blocks with ``bash -e`` (README blocks from the repository root, as a clone's user would; docs blocks
in the sandbox). Pages run in ``--jobs`` worker processes (default 2, or 1 on a one-core machine), each with
its share of the CPU threads (``OMP_NUM_THREADS``), longest pages first; a worker imports the libraries once
and runs page after page, each in a new namespace and sandbox (working directory, environment variables,
warning filters and ``scgpt.settings`` are restored after each page). A page with a ``pip install`` command
runs first and alone, since it reinstalls the package that the others import. A python block whose info
string carries the word ``fresh`` (````` ```python fresh `````) runs alone in a new interpreter, as a script
file: for code that needs a process of its own (signal handlers, ``if __name__ == "__main__"`` guards,
multiprocessing).

Each page gets a sandbox folder holding what the docs refer to by name: a model folder at
``path/to/scGPT_human`` (a copy of the bundled demo model, standing in for the published weights) and
count matrices (real PBMCs from :func:`scgpt.datasets.pbmc68k_counts`, labels in ``obs["cell_type"]``, two
pseudo-batches in ``obs["batch"]``), see :data:`FILES`.

A failing block is reported with its page and line (``docs/page.md:LINE``), the end of what it printed and,
for python, the traceback, whose line numbers are those of the markdown file; the other blocks and pages
still run. The time of every block and page is printed.

Two kinds of blocks are not run here, and the script lists them:

- blocks whose info string carries the word ``notrun`` (````` ```bash notrun `````), which need what a
  CPU-only machine without network has not (several GPUs, downloads, hours of training); the text
  next to each says so;
- ``bash`` blocks whose every command is a line of ``.ci/run`` (the install and test commands), which
  CI runs itself.

Other languages (``bibtex``, ``text``, MyST directives) are not code to run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(
    r"^(?P<indent> *)(?P<fence>`{3,})(?P<info>[^`\n]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)\s*$", re.M | re.S
)
SKIPPED_FILES = {"changelog.md", "references.md"}
FILES = {
    "my_counts.h5ad": slice(None),
    "pbmc_counts.h5ad": slice(None),
    "pbmc.h5ad": slice(None),
    "ref.h5ad": slice(0, 350),
    "query.h5ad": slice(350, None),
    "a.h5ad": slice(0, 350),
    "b.h5ad": slice(350, None),
    "part1.h5ad": slice(0, 350),
    "part2.h5ad": slice(350, None),
}
"""Count matrices in every sandbox: rows of the 700 pbmc68k cells."""
CI_RUN = REPO / ".ci" / "run"
TAIL = 3000
"""Characters of a failing block's output (and traceback) in the report."""


class Block(NamedTuple):
    """A fenced block: language, code, line of its opening fence, and the words after the language."""

    lang: str
    code: str
    line: int
    flags: frozenset

    @property
    def notrun(self) -> bool:
        return "notrun" in self.flags

    @property
    def fresh(self) -> bool:
        return "fresh" in self.flags


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a markdown file, in order."""
    text = path.read_text()
    out = []
    for m in FENCE.finditer(text):
        info = m.group("info").split()
        line = text.count("\n", 0, m.start()) + 1
        out.append(Block(info[0] if info else "", m.group("body"), line, frozenset(info[1:])))
    return out


def run_by_ci(code: str) -> bool:
    """Whether every command of a bash block is a line of ``.ci/run`` (install and test: CI runs them itself)."""
    ci = {line.strip() for line in CI_RUN.read_text().splitlines()}
    commands = [line.strip() for line in code.splitlines() if line.strip() and not line.strip().startswith("#")]
    return bool(commands) and all(c in ci for c in commands)


def to_run(path: Path) -> list[Block]:
    """The blocks of a page that this script runs."""
    return [
        b
        for b in blocks(path)
        if b.lang in ("python", "bash") and not b.notrun and not (b.lang == "bash" and run_by_ci(b.code))
    ]


def exclusive(path: Path) -> bool:
    """Whether a page must run alone: it (re)installs packages that the other pages import."""
    return any(b.lang == "bash" and re.search(r"\bpip install\b", b.code) for b in to_run(path))


def name(path: Path) -> str:
    """The page as reports name it: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def prepare(sandbox: Path) -> None:
    """The files the docs refer to by name."""
    import numpy as np

    import scgpt
    from scgpt.model._scgpt import _demo_path

    shutil.copytree(_demo_path(), sandbox / "path" / "to" / "scGPT_human")
    cells = scgpt.datasets.pbmc68k_counts()
    cells.obs["cell_type"] = cells.obs["bulk_labels"]
    cells.obs["batch"] = np.where(np.arange(cells.n_obs) % 2, "run1", "run2")
    for file, rows in FILES.items():
        cells[rows].copy().write_h5ad(sandbox / file)


# --- one page, in its own process ---------------------------------------------------------------------------


@contextmanager
def captured(file: Path):
    """Everything written to the process's stdout and stderr (Python, C, child processes) -> ``file``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with file.open("w+b") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            yield out
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _tail(text: str) -> str:
    text = text.rstrip()
    return text if len(text) <= TAIL else "...\n" + text[-TAIL:]


def _block_traceback(exc: BaseException) -> str:
    """The traceback from the block's own frame down (the runner's frames left out)."""
    tb = exc.__traceback__
    tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb
    return "".join(traceback.format_exception(type(exc), exc, tb))


def run_page(path: Path, sandbox: Path, output: Path) -> tuple[list[str], list[tuple[str, str, float]]]:
    """Run the blocks of one page in this process; returns its failures and ``(where, kind, seconds)`` per block.

    What a python block prints goes to ``output`` (rewritten for each block: after a crash it holds the output of
    the block that crashed), and into the report when the block fails.
    """
    page = name(path)
    namespace: dict = {"__name__": "__main__", "__file__": str(path)}
    env = {**os.environ, "MPLBACKEND": "agg", "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    failures, times = [], []
    for b in to_run(path):
        where = f"{page}:{b.line}"
        kind = f"{b.lang} fresh" if b.fresh else b.lang
        output.with_suffix(".block").write_text(where)  # names the block if the process dies in it
        start = time.perf_counter()
        if b.lang == "python" and not b.fresh:
            error = None
            with captured(output) as out:
                try:  # blank lines first: tracebacks give the line numbers of the markdown file
                    exec(compile("\n" * b.line + b.code, page, "exec"), namespace)
                except SystemExit as e:
                    error = None if e.code in (0, None) else _block_traceback(e)
                except Exception as e:  # noqa: BLE001 - report every block
                    error = _block_traceback(e)
                out.seek(0)
                printed = out.read().decode(errors="replace")
            if error is not None:
                failures.append(f"{where} (python):\n{_tail(printed + error)}")
        else:
            if b.lang == "python":  # a script file of its own; blank lines first, as above
                script = sandbox / f"{path.stem}_line{b.line}.py"
                script.write_text("\n" * b.line + b.code)
                cmd, cwd = [sys.executable, script.name], sandbox
            else:
                cmd, cwd = ["bash", "-e", "-c", b.code], REPO if path.name == "README.md" else sandbox
            sys.stdout.flush()
            proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if proc.returncode:
                failures.append(f"{where} ({kind}, exit {proc.returncode}):\n{_tail(proc.stdout)}")
        times.append((where, kind, round(time.perf_counter() - start, 1)))
    return failures, times


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that ended."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(r.ru_utime + r.ru_stime for r in usage)


def _start_worker() -> None:
    """Once per worker process: figures are drawn, not displayed; no progress bars."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    plt.show = lambda *a, **k: None
    import scgpt

    scgpt.settings.progress = False


def page_job(path: str, work: str, output: str, keep: bool) -> dict:
    """Run one page in a worker process: a new namespace, a new sandbox in ``work`` (a copy of ``work/template``),
    and the process's working directory, environment, warning filters and ``scgpt.settings`` restored afterwards."""
    import warnings

    import matplotlib.pyplot as plt

    import scgpt

    page, cpu, start = Path(path), _cpu_seconds(), time.perf_counter()
    sandbox = Path(tempfile.mkdtemp(prefix=f"{page.stem}_", dir=work))
    cwd, environ, filters = os.getcwd(), dict(os.environ), list(warnings.filters)
    settings = {k: getattr(scgpt.settings, k) for k in ("default_model", "device", "progress")}
    try:
        shutil.copytree(Path(work) / "template", sandbox, dirs_exist_ok=True)
        os.chdir(sandbox)
        failures, times = run_page(page, sandbox, Path(output))
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)
        warnings.filters[:] = filters
        for k, v in settings.items():
            setattr(scgpt.settings, k, v)
        plt.close("all")
        if not keep:
            shutil.rmtree(sandbox, ignore_errors=True)
    return {
        "failures": failures,
        "times": times,
        "seconds": time.perf_counter() - start,
        "cpu": _cpu_seconds() - cpu,
        "sandbox": str(sandbox) if keep else None,
    }


# --- all pages ----------------------------------------------------------------------------------------------

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def _cost(path: Path) -> int:
    """A rough cost, to start the longest pages first: lines of code that run, training calls weighing most."""
    code = "\n".join(b.code for b in to_run(path))
    heavy = len(re.findall(r"\.train\(|finetune|integrate\(|infer_grn\(|scgpt (?:embed|pretrain)\b", code))
    return len(code.splitlines()) + 20 * heavy


def run_pages(files: list[Path], *, jobs: int, keep: bool) -> list[str]:
    """Run the pages in ``jobs`` worker processes (exclusive ones first, alone); returns the failures."""
    pages = [f for f in files if to_run(f)]
    alone = [f for f in pages if exclusive(f)]
    shared = sorted((f for f in pages if f not in alone), key=_cost, reverse=True)
    failures: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="docs_blocks_"))  # the sandboxes, and what a dead worker left
    try:
        (work / "template").mkdir()
        prepare(work / "template")
        for group, width in ((alone, 1), (shared, jobs)):
            died = _run_group(group, width, work, keep, failures)
            for page in died:  # a worker died: its pages again, one by one, to find the one that kills it
                _run_group([page], 1, work, keep, failures, last_try=True)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return failures


def _run_group(pages, width, work, keep, failures, *, last_try=False) -> list[Path]:
    """Run ``pages`` on ``width`` workers, print their times, add their failures; returns the pages whose worker
    process died (only reported as failures on the last try)."""
    if not pages:
        return []
    environ = dict(os.environ)
    os.environ["MPLBACKEND"] = "agg"
    if width > 1:  # each worker gets its share of the cores (unless the caller chose)
        threads = str(max(1, (os.cpu_count() or 1) // width))
        os.environ.update({v: environ.get(v, threads) for v in THREAD_VARIABLES})
    died = []
    try:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(width, mp_context=ctx, initializer=_start_worker) as pool:
            out = {f: work / f"{f.parent.name}_{f.stem}.out" for f in pages}
            futures = {pool.submit(page_job, str(f), str(work), str(out[f]), keep): f for f in pages}
            for future in as_completed(futures):
                page = futures[future]
                try:
                    report = future.result()
                except BrokenProcessPool:
                    if last_try:
                        failures.append(_died(page, out[page]))
                    else:
                        died.append(page)
                    continue
                _print_times(page, report)
                failures += report["failures"]
    finally:
        os.environ.clear()
        os.environ.update(environ)
    return died


def _died(path: Path, output: Path) -> str:
    """The failure of a page whose worker process died: the block it was running and what that block printed."""
    block = output.with_suffix(".block")
    where = block.read_text() if block.exists() else name(path)
    printed = output.read_text(errors="replace") if output.exists() else ""
    print(f"{name(path)}: the worker process died in {where}")
    return f"{where} (the worker process died running it; it printed):\n{_tail(printed)}"


def _print_times(path: Path, report: dict) -> None:
    n, seconds, cpu = len(report["times"]), report["seconds"], report["cpu"]
    print(f"{name(path)}: {n} block(s) in {seconds:.1f} s (CPU time {cpu:.0f} s)")
    for where, kind, seconds in report["times"]:
        print(f"  {where}: {kind} block, {seconds:.1f} s")
    if report["sandbox"]:
        print(f"  sandbox kept: {report['sandbox']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", type=Path, help="markdown files (default: README.md and docs/*.md)")
    p.add_argument("--keep", action="store_true", help="keep the sandbox folders")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="pages run at the same time")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # each page's times as it ends, also through a pipe (CI's log)
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: give 1 or more pages to run at the same time")

    # a model cache of its own, and never a download (blocks that would download are marked notrun);
    # the worker processes inherit both
    os.environ.update(SCGPT_CACHE=tempfile.mkdtemp(prefix="docs_cache_"), SCGPT_OFFLINE="1")
    start = time.perf_counter()
    files = [f.resolve() for f in args.files] or [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    files = [f for f in files if f.name not in SKIPPED_FILES]
    failures = run_pages(files, jobs=args.jobs, keep=args.keep)
    not_run = [f"{name(f)}:{b.line}" for f in files for b in blocks(f) if b.notrun]
    by_ci = [f"{name(f)}:{b.line}" for f in files for b in blocks(f) if b.lang == "bash" and run_by_ci(b.code)]
    print(f"not run here, marked notrun (the text says why): {', '.join(not_run) or 'none'}")
    print(f"not run here, run by .ci/run itself: {', '.join(by_ci) or 'none'}")
    print(f"{len(files)} page(s) in {time.perf_counter() - start:.0f} s, {args.jobs} at a time")
    if failures:
        print(f"\n{len(failures)} block(s) failed:\n\n" + "\n\n".join(failures))
        return 1
    print("every python and bash block ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
