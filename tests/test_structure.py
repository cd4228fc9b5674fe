"""The structure docs/ARCHITECTURE.md promises, checked on the source: import direction, file and function sizes,
public names. Cheap (it parses files), so it runs in the default suite and a regression fails CI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

LIBRARY = sorted((REPO_ROOT / "weaver_ext").rglob("*.py"))
MEASURED = sorted([*LIBRARY, *(REPO_ROOT / "profiling").rglob("*.py"), *(REPO_ROOT / "evaluation").rglob("*.py")])


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", LIBRARY, ids=_rel)
def test_library_imports_no_application_package(path):
    """weaver_ext is the library: it never imports networks, profiling, evaluation, data or tests."""
    assert not _imported_packages(path) & {"networks", "profiling", "evaluation", "data", "tests"}


@pytest.mark.parametrize("path", LIBRARY, ids=_rel)
def test_library_files_are_short_and_list_their_public_names(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 400
    if path.name != "__init__.py" or text.strip():
        assert "__all__" in text


def test_no_function_is_longer_than_60_lines():
    long = [f"{_rel(p)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in MEASURED for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert long == []


def test_data_imports_neither_library_nor_profiling():
    """data/ writes files weaver reads; it knows nothing about models or measurements."""
    for path in sorted((REPO_ROOT / "data").rglob("*.py")):
        assert not _imported_packages(path) & {"weaver_ext", "profiling", "evaluation", "networks"}, _rel(path)
