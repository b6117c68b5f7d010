"""scripts/check_notebooks.py: the static checks that keep the tutorials, docs and install hints true."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checker():
    spec = importlib.util.spec_from_file_location("check_notebooks", ROOT / "scripts" / "check_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _notebook(path: Path, markdown: str = "# A tutorial", output: str = "done\n") -> Path:
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("print('done')")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text=output)]
    nb.cells = [nbformat.v4.new_markdown_cell(markdown), code]
    nbformat.write(nb, path)
    return path


def test_a_clean_notebook_passes(checker, tmp_path):
    """Catches a checker so eager that an honest notebook (temporary paths, an install from the clone) fails."""
    text = 'Install with `python -m pip install ".[eval,faiss]"`; perturbation prediction is `scgpt.tl.predict_perturbation`.'
    path = _notebook(
        tmp_path / "ok.ipynb", text, "UserWarning: x\nwritten to /tmp/scgpt_x/a.h5ad\n    finished (3.0s)\n"
    )
    assert checker.check_notebook(path, {"ok": 10}) == []


def test_an_existing_tool_called_missing_fails(checker, tmp_path):
    """Catches the migration notebook's "perturbation, GRN and multi-omics: not there yet, coming" (all exist)."""
    text = "| `Tutorial_Perturbation`, `Tutorial_GRN` | **not there yet, coming.** |"
    (problem,) = checker.check_notebook(_notebook(tmp_path / "m.ipynb", text))
    assert "cell 0" in problem and "scgpt.tl.infer_grn" in problem and "scgpt.tl.predict_perturbation" in problem
    assert checker.missing_claims("`scgpt.tl.no_such_tool` is not there yet.") == []  # truly missing: fine
    assert checker.missing_claims("Baselines missing from `obsm` are computed.") == []


def test_identifying_paths_in_outputs_fail(checker, tmp_path):
    """Catches the first tutorial's warning showing the absolute path of a virtual environment, and home folders."""
    out = "/work/x/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found\n"
    (problem,) = checker.check_notebook(_notebook(tmp_path / "p.ipynb", output=out))
    assert "stored output shows" in problem and "site-packages" in problem
    assert checker.identifying_paths("saved to /home/alice/runs/x.h5ad") == ["/home/alice"]
    assert checker.identifying_paths("saved to /Users/bob/x") == ["/Users/bob"]
    assert checker.identifying_paths("written to /tmp/scgpt_x/cells.h5ad") == []
    # a warning as a bare kernel prints it (the runner's kernels print 'UserWarning: ...' alone)
    assert checker.identifying_paths("/tmp/ipykernel_17106/2667812544.py:3: UserWarning: x") == [
        "/tmp/ipykernel_17106/2667812544.py"
    ]


def test_install_hints_that_cannot_work_from_the_repository_fail(checker):
    """Catches `pip install scgpt-scverse` (not on PyPI), `'scgpt-scverse[eval]'` and extras pyproject lacks."""
    extras = {"eval", "faiss", "dataloaders"}
    assert len(checker.bad_install_hints("pip install scgpt-scverse", extras)) == 1
    assert len(checker.bad_install_hints("pip install 'scgpt-scverse[dataloaders]'", extras)) == 1
    assert "no extra ['evaluation']" in checker.bad_install_hints('pip install ".[evaluation]"', extras)[0]
    assert checker.bad_install_hints('python -m pip install ".[eval,faiss]" harmonypy', extras) == []
    assert checker.bad_install_hints("pip install -e . --group test && pip install faiss-cpu", extras) == []
    assert (
        checker.bad_install_hints("(`pip install scgpt-scverse` will work once the first release is out)", extras) == []
    )
    assert checker.bad_install_hints("f'pip install \".[{extra}]\"'", extras) == []  # a template in code


def test_stored_durations_far_above_the_measured_time_fail(checker, tmp_path):
    """Catches stored "finished (655.7s)" outputs of an old run next to a run_times.json of a few minutes."""
    path = _notebook(tmp_path / "slow.ipynb", output="    finished (1.0s)\n    finished (655.7s)\n")
    assert checker.stored_seconds(nbformat.read(path, as_version=4)) == pytest.approx(655.7)  # nested: the largest
    (problem,) = checker.check_notebook(path, {"slow": 198})
    assert "656 s of work, more than twice the 198 s" in problem
    assert checker.check_notebook(path, {"slow": 400}) == []


def test_the_repository_passes_where_no_re_execution_is_needed(checker):
    """Catches install hints in the docs, README and code, and missing-tool claims or install hints in the
    tutorials' own text (stored outputs and durations are checked by CI once the tutorials are re-executed)."""
    problems = []
    for path in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md", *sorted((ROOT / "src").rglob("*.py"))]:
        problems += checker.check_text_file(path)
    for path in sorted((ROOT / "tutorials").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            problems += checker.bad_install_hints(cell.source)
            if cell.cell_type == "markdown":
                problems += [f"{path.name}: {p}" for p in checker.missing_claims(cell.source)]
    assert problems == []
    assert set(json.loads((ROOT / "tutorials" / "run_times.json").read_text())) == {
        p.stem for p in (ROOT / "tutorials").glob("*.ipynb")
    }
