"""Notebooks run headless without a failing cell: in marimo (HTML export), as a Jupyter
notebook under nbval, and lint-clean under `marimo check --strict`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))
BIN = Path(sys.executable).parent


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_headless_in_marimo(notebook: Path, tmp_path: Path):
    out = tmp_path / "out.html"
    result = _run([str(BIN / "marimo"), "export", "html", str(notebook), "-o", str(out)], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr  # 1 when any cell fails
    html = out.read_text()
    if notebook.name == "explore_features.py":
        assert "causal and bounded by its lookback" in html
        assert "real BTCUSDT candles" in html  # ../shared/data is read, not synthetic
    if notebook.name == "explore_dataset.py":  # timeline, quality report, feature per split
        assert "Split timeline" in html and "Timestamp continuity" in html
        assert "ks_vs_train" in html


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_passes_marimo_check(notebook: Path):
    result = _run([str(BIN / "marimo"), "check", "--strict", str(notebook)], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_jupyter_export_runs_under_nbval(notebook: Path, tmp_path: Path):
    ipynb = tmp_path / f"{notebook.stem}.ipynb"
    export = _run([str(BIN / "marimo"), "export", "ipynb", str(notebook), "-o", str(ipynb)], ROOT)
    assert export.returncode == 0, export.stderr
    ini = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
    (tmp_path / "pytest.ini").write_text(ini)
    result = _run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", str(ipynb)],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
