"""The compiled plan: every window frame ends at the current row; each feature adds exactly
its own column; unknown names and cycles are refused."""

from __future__ import annotations

import re

import pytest

from featlib import compute, registry
from featlib.features import FEATURES

ALL = sorted({name for v in registry.versions() for name in registry.load(v).names})
_AHEAD = re.compile(r"(UNBOUNDED|\d+)\s+FOLLOWING", re.IGNORECASE)


@pytest.mark.parametrize("name", ALL)
def test_no_window_reaches_past_the_current_row(name):
    plan = compute.plan([name])
    sql = plan.sql + "\n".join(p.event_sql for p in plan.parts if p.event_sql)
    # ROW_NUMBER (dedupe by key) and LAG (an earlier row) ignore frames; Ibis prints a full one
    sql = re.sub(r"ROW_NUMBER\(\) OVER \(.*?\)", "", sql, flags=re.S)
    lags = re.findall(r"LAG\(\s*[^,]+,\s*(-?\d+).*?\) OVER \(.*?\)", sql, flags=re.S)
    assert all(int(n) > 0 for n in lags), lags  # rows before this one, never after
    assert not re.search(r"\bLEAD\(", sql, re.I)
    sql = re.sub(r"LAG\(.*?\) OVER \(.*?\)", "", sql, flags=re.S)
    # a frame may end at the current row or before it (a lagged value), never after it
    ends = re.findall(r"(?:ROWS|RANGE) BETWEEN .+? AND\s+(.+?)\s*\)", sql, re.S)
    assert all(re.fullmatch(r"CURRENT ROW|\d+ preceding", e, re.I) for e in ends), ends
    assert not _AHEAD.search(sql)


def test_a_forward_window_would_be_caught():
    import ibis

    t = ibis.table({"symbol": "string", "ts": "int64", "close": "float64"}, name="k")
    w = ibis.window(group_by=t.symbol, order_by=t.ts, range=(0, 60_000))
    assert _AHEAD.search(ibis.to_sql(t.mutate(x=t.close.last().over(w)), dialect="duckdb"))


def test_plan_orders_dependencies_and_keeps_requested_columns():
    plan = compute.plan(["price_ema21_ratio", "funding_rate"])
    names = [f.name for f in plan.features]
    assert names.index("ema_21") < names.index("price_ema21_ratio")
    assert plan.names == ("price_ema21_ratio", "funding_rate")
    assert plan.sources == ("kline", "funding")
    assert [f.name for f in plan.parts[0].features] == ["ema_21", "price_ema21_ratio"]
    assert plan.lookback_ms == {
        "kline": FEATURES["ema_21"].lookback_ms,
        "funding": FEATURES["funding_rate"].lookback_ms,
    }


def test_unknown_feature_is_refused():
    with pytest.raises(compute.UnknownFeatureError, match="unknown feature 'nope'"):
        compute.plan(["nope"])


def test_compiled_plans_are_kept_on_disk(tmp_path, monkeypatch):
    names = ("returns_5m", "funding_rate", "rsi_14")
    first = compute.compiled(compute._plan.__wrapped__(names), tmp_path)
    (stored,) = tmp_path.glob("*.json")
    expected = [(part.sql, part.event_sql) for part in first.parts]

    def no_compiling(*args, **kwargs):
        raise AssertionError("compiled again instead of read from the cache")

    with monkeypatch.context() as patch:
        patch.setattr(compute.ibis, "to_sql", no_compiling)
        again = compute.compiled(compute._plan.__wrapped__(names), tmp_path)
        assert [(part.sql, part.event_sql) for part in again.parts] == expected
    stored.write_text("{not json")  # a damaged entry is compiled again and replaced
    mended = compute.compiled(compute._plan.__wrapped__(names), tmp_path)
    assert [(part.sql, part.event_sql) for part in mended.parts] == expected
    assert stored.read_text().startswith("[[")
    other = compute.compiled(compute._plan.__wrapped__(("returns_5m",)), tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2 and other.parts[0].sql != expected[0][0]
