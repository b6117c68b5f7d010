"""The package's imports point one way: face (pp, tl, pl, cli) -> model -> train, data, io, hub -> nn, with no circles.

Parsed from the source with ``ast`` (every import, also those inside functions and under TYPE_CHECKING).
The top-level helper modules (``_settings``, ``_logging``, ``_lazy``, ``_files``, ``_docs``) sit below
everything and import only each other; ``_face`` (the frame of a public tool: output keys, the record it leaves)
belongs to the face.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "scgpt"
LAYER = {
    "cli": 4,
    "pp": 3,
    "tl": 3,
    "pl": 3,
    "datasets": 3,
    "model": 2,
    "train": 1,
    "data": 1,
    "io": 1,
    "hub": 1,
    "nn": 0,
    "_settings": -1,
    "_logging": -1,
    "_lazy": -1,
    "_files": -1,
    "_face": 3,
    "_docs": -1,
}
# same-layer imports that are part of the design (the vocabulary is data; the face functions may share)
ALLOWED_SIDEWAYS = {("io", "data"), ("train", "data"), ("tl", "pp"), ("pp", "tl"), ("tl", "datasets")} | {
    (face, "_face") for face in ("tl", "pp", "pl", "datasets")
}


def _unit(path: Path) -> str:
    """The package-level unit a file belongs to: its sub-package, or the top-level module's name."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else "__init__"


def _imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """``(line, target unit)`` of every import of another part of scgpt in ``path`` (a file under ``root``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        package = parts
    else:
        package = parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[list[str]] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                mod = base + (node.module.split(".") if node.module else [])
                targets += [mod] if node.module else [[*base, n.name] for n in node.names]
            elif node.module and node.module.split(".")[0] == "scgpt":
                targets.append(node.module.split(".")[1:])
        elif isinstance(node, ast.Import):
            targets += [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == "scgpt"]
        for t in targets:
            if t:
                out.append((node.lineno, t[0]))
    return out


def _edges() -> list[tuple[str, str, str]]:
    edges = []
    for f in sorted(PACKAGE.rglob("*.py")):
        src = _unit(f)
        for line, dst in _imports(f):
            if dst != src and dst in LAYER:
                edges.append((src, dst, f"{f.relative_to(PACKAGE.parent)}:{line}"))
    return edges


def test_every_unit_has_a_layer():
    units = {_unit(f) for f in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    assert units <= set(LAYER), f"give these a layer in tests/test_layering.py: {sorted(units - set(LAYER))}"


def test_no_import_points_up():
    upward = [
        where
        for src, dst, where in _edges()
        if src in LAYER
        and (LAYER[dst] > LAYER[src] or (LAYER[dst] == LAYER[src] >= 0 and (src, dst) not in ALLOWED_SIDEWAYS))
    ]
    assert not upward, "imports from a lower layer into a higher one:\n" + "\n".join(upward)


def test_no_circles_between_units():
    graph: dict[str, set[str]] = {}
    for src, dst, _ in _edges():
        graph.setdefault(src, set()).add(dst)

    def reaches(a: str, b: str, seen: frozenset = frozenset()) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in graph.get(a, ()))

    circles = sorted({tuple(sorted((s, d))) for s, ds in graph.items() for d in ds if reaches(d, s)})
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [("from ..pp import align_vocab\n", "pp"), ("import scgpt.tl._embed\n", "tl"), ("from . import _x\n", "data")],
)
def test_the_parser_sees_relative_and_absolute_imports(tmp_path, source, expected):
    """The check itself can fail: a planted import is found and attributed to the right unit."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "_bad.py").write_text(source)
    assert [dst for _, dst in _imports(tmp_path / "data" / "_bad.py", tmp_path)] == [expected]


FACE = ("tl", "pl", "pp", "cli", "datasets")


def _private_imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of a private module (``pkg._x``) of another package of scgpt in ``path``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                mod = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "scgpt":
                mod = node.module.split(".")[1:]
            else:
                continue
            if len(mod) > 1 and mod[0] != parts[0] and any(p.startswith("_") for p in mod[1:]):
                out.append((node.lineno, ".".join(mod)))
    return out


def test_the_face_imports_only_public_names_of_other_packages():
    """``tl``/``pl``/``pp``/``cli``/``datasets`` reach the model, data and training layers through their public names.

    Catches a tool that imports ``scgpt.model._engine`` (or any ``_private`` module of another package) instead of
    calling a public ``ScGPT`` method, which ties the face to the model's insides.
    """
    found = [
        f"{f.relative_to(PACKAGE.parent)}:{line} imports {mod}"
        for f in sorted(PACKAGE.rglob("*.py"))
        if f.relative_to(PACKAGE).parts[0] in FACE
        for line, mod in _private_imports(f)
    ]
    assert not found, "\n".join(found)


def _code_lines(node: ast.FunctionDef) -> int:
    """Lines of a function without its docstring (numpy-style docstrings of public functions are long on purpose)."""
    n = node.end_lineno - node.lineno + 1
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        n -= first.end_lineno - first.lineno + 1
    return n


MAX_FUNCTION_LINES = 120


def test_no_function_is_longer_than_120_lines_of_code():
    """Every function in src/ fits in 120 lines of code (its docstring not counted); longer ones are split.

    Catches a function growing until nobody can read it top to bottom (``infer_grn`` reached 133 lines).
    """
    long = [
        f"{f.relative_to(PACKAGE.parent)}:{n.lineno} {n.name}: {_code_lines(n)} lines"
        for f in sorted(PACKAGE.rglob("*.py"))
        for n in ast.walk(ast.parse(f.read_text()))
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and _code_lines(n) > MAX_FUNCTION_LINES
    ]
    assert not long, "split these functions:\n" + "\n".join(long)


def _runtime_imports(path: Path) -> set[str]:
    """Modules of the same package that ``path`` imports at run time (not under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and id(node) not in typing_only:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize("package", sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()))
def test_no_import_circle_inside_a_package_at_run_time(package):
    """Within each package, the modules' run-time imports (lazy ones included) form no circle.

    Catches the ``model._training`` <-> ``model._perturbation`` loop of the past: two modules that need each other
    cannot be read, tested or moved alone. Imports under ``TYPE_CHECKING`` are annotations only and allowed.
    """
    folder = PACKAGE / package
    graph = {f.stem: _runtime_imports(f) - {f.stem} for f in folder.glob("*.py") if f.stem != "__init__"}

    def reaches(a: str, b: str, seen: frozenset = frozenset()) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in graph.get(a, ()))

    circles = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps if b in graph and reaches(b, a)})
    assert not circles, f"import circles in scgpt.{package}: {circles}"
