"""Static checks that keep the tutorials (and the install hints of the docs and the code) true; no kernel is run.

    python scripts/check_notebooks.py            # tutorials/*.ipynb, docs/*.md, README.md, src/**/*.py
    python scripts/check_notebooks.py NB.ipynb   # only these files

Fails (exit status 1, one line per problem: file, cell, what, the text) when

- **a tool that exists is said to be missing**: a markdown sentence says something is "not there yet", "coming",
  "not yet available", "not implemented", "not supported" ... and names a ``scgpt.*`` function that imports, or
  a workflow the package has (perturbation, GRN / gene network, multi-omic, reference mapping, ...: each
  listed with the function that provides it, so an entry goes quiet if that function is removed);
- **a stored output shows an absolute path that identifies a machine or a user**: a home folder
  (``/home/<user>``, ``/Users/<user>``, ``/root``), a virtual environment or ``site-packages``, the repository's
  own absolute path, the name of the user running the check, or the kernel's cell file
  (``/tmp/ipykernel_<pid>/…py``, which a warning names unless ``scripts/run_tutorials.py`` ran the notebook).
  Other temporary paths (``/tmp/scgpt_…``) identify nothing and are allowed;
- **an install hint cannot work from the repository**: ``pip install`` of the distribution by its PyPI name
  (``scgpt-scverse``, ``scgpt_scverse``, ``scgpt``; not published yet) unless the same line says it is not on
  PyPI yet, or of an extra that ``pyproject.toml`` does not define (``".[evaluation]"``);
- **stored durations disagree with ``tutorials/run_times.json``**: the ``finished (<seconds>s)`` times stored in a
  notebook (per cell the largest, as calls nest) add up to more than twice the notebook's measured wall time.
  Both are written by the same ``python scripts/run_tutorials.py --update``, so they disagree only when outputs
  come from an older, slower run (times are stated in one place, ``run_times.json``; the stored ones must not
  contradict it).
"""

from __future__ import annotations

import getpass
import importlib
import json
import os
import re
import sys
import tomllib
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"

MISSING = re.compile(
    r"not (?:there|here|available|supported|implemented|included|ported)(?: yet)?|coming(?: soon)?\b|"
    r"not yet (?:available|supported|implemented|there|ported)|does not exist|do not exist|no support for|"
    r"planned\b|to be added",
    re.IGNORECASE,
)
TOPICS = {  # a workflow named in prose -> the function that provides it (checked to import)
    r"perturbation": "scgpt.tl.predict_perturbation",
    r"\bgrn\b|gene (?:regulatory )?network|Tutorial_Attention_GRN|Tutorial_GRN": "scgpt.tl.infer_grn",
    r"gene programs?": "scgpt.tl.gene_programs",
    r"multi-?omic|Tutorial_Multiomics": "scgpt.tl.integrate",  # integrate(MuData): the multi-omic workflow
    r"reference mapping|Tutorial_Reference_Mapping": "scgpt.tl.annotate",
    r"\bintegration\b": "scgpt.tl.integrate",
    r"pretrain": "scgpt.model.ScGPT.train",
    r"fine-?tun": "scgpt.model.ScGPT.finetune",
    r"download|model hub|published models": "scgpt.hub.download",
}
API_NAME = re.compile(r"\bscgpt(?:\.[A-Za-z_]\w*)+")
SENTENCE = re.compile(r"(?<=[.!?;:])\s+|\n\s*\n|\n\s*[-*|]")
PIP = re.compile(r"pip3? install\s+([^`\n]*)")
DIST = re.compile(r"""^['"]?(scgpt[-_]scverse|scgpt)(\[[^\]]*\])?(?:[<>=!~].*)?['"]?$""", re.IGNORECASE)
LOCAL = re.compile(r"""^['"]?(?:-e\s+)?\.(\[([^\]]*)\])?['"]?$""")
NOT_PUBLISHED = re.compile(r"not on PyPI|once the first release|will work once|not published", re.IGNORECASE)
FINISHED = re.compile(r"finished \((\d+(?:\.\d+)?)s\)")


def _exists(dotted: str) -> bool:
    """Whether ``scgpt.a.b.c`` imports (a module, or an attribute of one)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def missing_claims(text: str) -> list[str]:
    """Sentences of ``text`` that call something missing which exists; each with what exists."""
    found = []
    for sentence in SENTENCE.split(text):
        if not MISSING.search(sentence):
            continue
        existing = [name for name in API_NAME.findall(sentence) if _exists(name.rstrip("."))]
        existing += [f for pattern, f in TOPICS.items() if re.search(pattern, sentence, re.I) and _exists(f)]
        if existing:
            claim = " ".join(sentence.split())
            found.append(f"says something is missing, but {sorted(set(existing))} exist: {claim[:200]!r}")
    return found


def _identifying_paths() -> re.Pattern:
    user = getpass.getuser()
    names = [re.escape(str(ROOT)), re.escape(str(Path.home()))]
    if len(user) >= 3 and user not in ("root", "user", "runner"):
        names.append(rf"\b{re.escape(user)}\b")
    generic = [
        r"/home/[^/\s'\"]+",
        r"/Users/[^/\s'\"]+",
        r"(?<![\w.])/root(?:/|\b)",
        r"[\w/.-]*site-packages",
        r"/tmp/ipykernel_\d+/[^\s:]+",
        r"[\w/.-]*/\.?venv[\w.-]*/",
        r"[A-Za-z]:\\\\?(?:Users|home)\\",
    ]
    return re.compile("|".join(generic + names))


def identifying_paths(text: str, pattern: re.Pattern | None = None) -> list[str]:
    """Absolute paths (or the user name) in ``text`` that identify a machine or a user."""
    pattern = pattern or _identifying_paths()
    return sorted({m.group(0) for m in pattern.finditer(text)})


def _extras() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project.get("optional-dependencies", {}))


def bad_install_hints(text: str, extras: set[str] | None = None) -> list[str]:
    """``pip install`` hints in ``text`` that do not install from the repository."""
    extras = _extras() if extras is None else extras
    problems = []
    for line in text.splitlines():
        for match in PIP.finditer(line):
            args = re.findall(r"""-e\s+\S+|"[^"]*"|'[^']*'|\S+""", match.group(1))
            for arg in args:
                arg = arg.rstrip(").,;`")
                if "{" in arg or (arg.startswith("-") and not arg.startswith("-e ")):  # a template; an option
                    continue
                dist = DIST.match(arg)
                if dist and not NOT_PUBLISHED.search(line):
                    problems.append(
                        f"'pip install {arg}' installs from PyPI, where {dist.group(1)} is not published: install "
                        f'from the clone (python -m pip install ".{dist.group(2) or ""}")'
                    )
                local = LOCAL.match(arg)
                if local and local.group(2) is not None:
                    unknown = sorted({e.strip() for e in local.group(2).split(",")} - extras)
                    if unknown:
                        problems.append(f"'pip install {arg}': no extra {unknown} in pyproject.toml ({sorted(extras)})")
    return problems


def stored_seconds(nb: nbformat.NotebookNode) -> float:
    """The stored ``finished (<s>s)`` times of a notebook: per code cell the largest (calls nest), summed."""
    total = 0.0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        times = [float(t) for o in cell.get("outputs", []) for t in FINISHED.findall(_output_text(o))]
        total += max(times, default=0.0)
    return total


def _output_text(output: dict) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    if output.get("output_type") == "error":
        return "\n".join(output.get("traceback", []))
    data = output.get("data", {})
    return "\n".join(str(v) for k, v in data.items() if k.startswith("text/"))


def check_notebook(path: Path, run_times: dict[str, float] | None = None) -> list[str]:
    """Every problem of one notebook, as ``file, cell: what`` lines."""
    nb = nbformat.read(path, as_version=4)
    pattern, extras = _identifying_paths(), _extras()
    problems = []
    for i, cell in enumerate(nb.cells):
        where = f"{path.name}, cell {i} ({cell.get('id', '?')})"
        if cell.cell_type == "markdown":
            problems += [f"{where}: {p}" for p in missing_claims(cell.source)]
        problems += [f"{where}: {p}" for p in bad_install_hints(cell.source, extras)]
        for output in cell.get("outputs", []):
            text = _output_text(output)
            problems += [f"{where}: stored output shows {p!r}" for p in identifying_paths(text, pattern)]
            problems += [f"{where}: in a stored output: {p}" for p in bad_install_hints(text, extras)]
    if run_times is not None and path.stem in run_times:
        stored, measured = stored_seconds(nb), float(run_times[path.stem])
        if stored > 2 * measured:
            problems.append(
                f"{path.name}: its stored outputs report {stored:.0f} s of work, more than twice the {measured:.0f} s "
                "of tutorials/run_times.json: they come from an older run (python scripts/run_tutorials.py --update)"
            )
    return problems


def check_text_file(path: Path) -> list[str]:
    """Install hints of a Markdown page or a source file (strings and docstrings included)."""
    return [f"{path.relative_to(ROOT)}: {p}" for p in bad_install_hints(path.read_text(encoding="utf-8"))]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    times_file = TUTORIALS / "run_times.json"
    run_times = json.loads(times_file.read_text()) if times_file.exists() else {}
    if args:
        paths = [Path(a).resolve() for a in args]
    else:
        paths = sorted(TUTORIALS.glob("*.ipynb")) + sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
        paths += sorted((ROOT / "src").rglob("*.py"))
    problems = []
    for path in paths:
        problems += check_notebook(path, run_times) if path.suffix == ".ipynb" else check_text_file(path)
    for p in problems:
        print(p)
    n_nb = sum(p.suffix == ".ipynb" for p in paths)
    print(f"check_notebooks: {len(problems)} problem(s) in {n_nb} notebook(s) and {len(paths) - n_nb} other file(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    os.environ.setdefault("SCGPT_OFFLINE", "1")
    sys.exit(main())
