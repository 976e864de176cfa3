"""Dependencies point one way: notebooks/, pipelines/ and service/ import featlib; featlib
imports none of them, and never marimo or faststream. pybit lives only in featlib.backfill."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRONT_DOORS = {"notebooks", "pipelines", "service"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_featlib_imports_no_front_door_and_no_frameworks():
    assert _files("featlib")
    for path in _files("featlib"):
        bad = _imports(path) & (FRONT_DOORS | {"marimo", "faststream"})
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_front_doors_do_not_import_each_other():
    for folder in FRONT_DOORS:
        for path in _files(folder):
            bad = _imports(path) & (FRONT_DOORS - {folder})
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_pybit_only_in_featlib_backfill():
    for folder in ("featlib", *FRONT_DOORS):
        for path in _files(folder):
            if path.relative_to(ROOT).as_posix() == "featlib/backfill.py":
                continue
            assert "pybit" not in _imports(path), f"{path.relative_to(ROOT)} imports pybit"
