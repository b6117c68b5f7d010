"""The package's imports point one way: face (pp, tl, pl, cli) -> model -> train, data, io, hub -> nn, with no circles.

Parsed from the source with ``ast`` (every import, also those inside functions and under TYPE_CHECKING).
The top-level helper modules (``_settings``, ``_logging``, ``_lazy``, ``_anndata``, ``_docs``) sit below
everything and import only each other.
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
    "_anndata": -1,
    "_docs": -1,
}
# same-layer imports that are part of the design (the vocabulary is data; the face functions may share)
ALLOWED_SIDEWAYS = {("io", "data"), ("train", "data"), ("tl", "pp"), ("pp", "tl"), ("tl", "datasets")}


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
