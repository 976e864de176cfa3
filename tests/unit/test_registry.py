"""Registry files validate; each kind of bad entry is rejected with a message naming the
feature and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from featlib import registry
from featlib.features import FEATURES

GOOD = {
    "name": "returns_5m",
    "description": "5m return",
    "input_sources": ["kline"],
    "lookback_window": "6m",
    "lookahead_forbidden": True,
    "max_lookback_days": 1,
    "params": {"minutes": 5},
}


def _yaml(*entries: dict, version: str = "9.9.9") -> str:
    return yaml.safe_dump({"version": version, "features": list(entries)})


def _problems(text: str) -> list[str]:
    with pytest.raises(registry.RegistryError) as err:
        registry.parse(text)
    return err.value.problems


def test_shipped_versions_validate():
    assert "1.2.0" in registry.versions()
    fs = registry.load("1.2.0")
    assert fs.names == [
        "returns_5m",
        "volatility_5m",
        "rsi_14",
        "ema_21",
        "price_ema21_ratio",
        "volume_ratio_20",
        "funding_rate",
    ]
    for version in registry.versions():
        assert registry.load(version).version == version
    for spec in fs.features:
        assert spec.input_sources == [FEATURES[spec.name].source]


def test_a_good_entry_parses():
    assert registry.parse(_yaml(GOOD)).names == ["returns_5m"]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"lookahead_forbidden": False}, "lookahead_forbidden must be true"),
        ({"lookback_window": "3d", "max_lookback_days": 2}, "exceeds max_lookback_days"),
        ({"input_sources": ["klines"]}, "unknown input source"),
        ({"input_sources": ["trades"]}, "declaration reads ['kline']"),
        ({"name": "returns_7m"}, "unknown feature"),
        ({"lookback_window": "5m"}, "shorter than the 6m its definition needs"),
        ({"lookback_window": "6 minutes"}, "not a duration"),
        ({"params": {"minutes": 7}}, "differ from the definition"),
        ({"max_lookback_days": 0}, "greater than 0"),
    ],
)
def test_bad_entries_name_feature_and_problem(change, needle):
    entry = {**GOOD, **change}
    problems = _problems(_yaml(entry))
    assert any(needle in p for p in problems), problems
    assert all(entry["name"] in p for p in problems), problems


def test_duplicates_missing_fields_and_all_problems_at_once():
    missing = {k: v for k, v in GOOD.items() if k != "description"} | {"name": "rsi_14"}
    problems = _problems(_yaml(GOOD, GOOD, missing, {**GOOD, "name": "nope"}))
    assert any("'returns_5m': listed more than once" in p for p in problems)
    assert any("'rsi_14' description: Field required" in p for p in problems)
    assert any("'nope': unknown feature" in p for p in problems)


def test_malformed_yaml_and_bad_header():
    tab = _problems("version: 1.0.0\nfeatures:\n\t- name: x\n")[0]
    assert tab.startswith("malformed YAML at line 3, column 1") and "'\\t'" in tab
    assert any("version must look like 1.2.0" in p for p in _problems(_yaml(GOOD, version="1.2")))
    assert any(
        "expected a non-empty list" in p for p in _problems("version: 1.0.0\nfeatures: []\n")
    )
    assert "expected a mapping" in _problems("- just a list\n")[0]


def test_load_errors_name_the_file(tmp_path: Path):
    (tmp_path / "feature_registry_v1.0.0.yaml").write_text(_yaml(GOOD, version="1.0.1"))
    with pytest.raises(registry.RegistryError, match=r"name says 1\.0\.0"):
        registry.load("1.0.0", tmp_path)
    with pytest.raises(registry.RegistryError, match=r"available: 1\.0\.0"):
        registry.load("2.0.0", tmp_path)
    with pytest.raises(registry.RegistryError, match="not a version"):
        registry.load("../../etc/passwd", tmp_path)
