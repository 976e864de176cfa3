"""The README's two set-up commands stay true: CI runs exactly its test command, and the
recipes they name exist."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", setup)


def test_two_commands_main_job_and_tests():
    main, tests = _commands()
    assert main.endswith("just build-dataset") and tests.endswith("just test")
    assert main.split("&&")[:2] == tests.split("&&")[:2]  # the same install steps


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _commands()[1] in ci


def test_recipes_exist():
    justfile = (ROOT / "justfile").read_text()
    for recipe in ("build-dataset", "test", "ingest", "bench", "lint", "notebook"):
        assert re.search(rf"^{recipe}\b.*:", justfile, re.M), recipe
