"""Run every code block of the README and the docs as written.

    python scripts/check_docs_blocks.py                     # README.md and docs/*.md
    python scripts/check_docs_blocks.py docs/quickstart.md  # one file

Fenced blocks marked ``python`` run in one Python session per file, in order; blocks marked ``bash``
run with ``bash -e`` (README blocks from the repository root, as a clone's user would; docs blocks in
the sandbox). Each file gets a sandbox folder holding what the docs refer to by name: a model folder
at ``path/to/scGPT_human`` (a copy of the bundled demo model, standing in for the published weights)
and count matrices (real PBMCs from :func:`scgpt.datasets.pbmc68k_counts`, labels in
``obs["cell_type"]``, two pseudo-batches in ``obs["batch"]``), see :data:`FILES`.

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
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

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


def blocks(path: Path) -> list[tuple[str, str, int, bool]]:
    """``(language, code, line, notrun)`` of the fenced blocks of a markdown file, in order."""
    text = path.read_text()
    out = []
    for m in FENCE.finditer(text):
        info = m.group("info").split()
        out.append((info[0] if info else "", m.group("body"), text.count("\n", 0, m.start()) + 1, "notrun" in info[1:]))
    return out


def run_by_ci(code: str) -> bool:
    """Whether every command of a bash block is a line of ``.ci/run`` (install and test: CI runs them itself)."""
    ci = {line.strip() for line in CI_RUN.read_text().splitlines()}
    commands = [line.strip() for line in code.splitlines() if line.strip() and not line.strip().startswith("#")]
    return bool(commands) and all(c in ci for c in commands)


def prepare(sandbox: Path) -> None:
    """The files the docs refer to by name."""
    import numpy as np

    import scgpt
    from scgpt.model._scgpt import _demo_path

    shutil.copytree(_demo_path(), sandbox / "path" / "to" / "scGPT_human")
    cells = scgpt.datasets.pbmc68k_counts()
    cells.obs["cell_type"] = cells.obs["bulk_labels"]
    cells.obs["batch"] = np.where(np.arange(cells.n_obs) % 2, "run1", "run2")
    for name, rows in FILES.items():
        cells[rows].copy().write_h5ad(sandbox / name)


def run_file(path: Path, *, keep: bool) -> list[str]:
    """Run the blocks of one file; returns the failures."""
    failures = []
    code_blocks = [
        (lang, code, line)
        for lang, code, line, notrun in blocks(path)
        if lang in ("python", "bash") and not notrun and not (lang == "bash" and run_by_ci(code))
    ]
    if not code_blocks:
        return failures
    sandbox = Path(tempfile.mkdtemp(prefix=f"docs_{path.stem}_"))
    prepare(sandbox)
    namespace: dict = {"__name__": "__main__"}
    cwd = os.getcwd()
    env = {**os.environ, "MPLBACKEND": "agg", "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    try:
        for lang, code, line in code_blocks:
            where = f"{path.relative_to(REPO)}:{line}"
            start = time.perf_counter()
            if lang == "python":
                os.chdir(sandbox)
                try:
                    exec(compile(code, where, "exec"), namespace)
                except Exception:  # noqa: BLE001 - report every block
                    failures.append(f"{where} (python):\n{traceback.format_exc(limit=3)}")
                finally:
                    os.chdir(cwd)
            else:
                run_in = REPO if path.name == "README.md" else sandbox
                proc = subprocess.run(["bash", "-e", "-c", code], cwd=run_in, env=env, capture_output=True, text=True)
                if proc.returncode:
                    failures.append(
                        f"{where} (bash, exit {proc.returncode}):\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}"
                    )
            print(f"  {where}: {lang} block, {time.perf_counter() - start:.1f} s")
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
        if not keep:
            shutil.rmtree(sandbox, ignore_errors=True)
    return failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", type=Path, help="markdown files (default: README.md and docs/*.md)")
    p.add_argument("--keep", action="store_true", help="keep the sandbox folders")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    plt.show = lambda *a, **k: None  # figures are drawn, not displayed
    # a cache of its own, and never a download: blocks that would download are marked notrun
    cache = tempfile.mkdtemp(prefix="docs_cache_")
    os.environ.update(SCGPT_CACHE=cache, SCGPT_OFFLINE="1")
    import scgpt

    scgpt.settings.progress = False
    files = [f.resolve() for f in args.files] or [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    failures = []
    for f in files:
        if f.name in SKIPPED_FILES:
            continue
        print(f"{f.relative_to(REPO)}")
        failures += run_file(f, keep=args.keep)
    not_run = [f"{f.relative_to(REPO)}:{line}" for f in files for _, _, line, notrun in blocks(f) if notrun]
    by_ci = [
        f"{f.relative_to(REPO)}:{line}"
        for f in files
        for lang, code, line, _ in blocks(f)
        if lang == "bash" and run_by_ci(code)
    ]
    print(f"not run here, marked notrun (the text says why): {', '.join(not_run) or 'none'}")
    print(f"not run here, run by .ci/run itself: {', '.join(by_ci) or 'none'}")
    if failures:
        print(f"\n{len(failures)} block(s) failed:\n\n" + "\n\n".join(failures))
        return 1
    print("every python and bash block ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
