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
    # ROW_NUMBER (dedupe by key) ignores frames; Ibis prints a full one for it
    sql = re.sub(r"ROW_NUMBER\(\) OVER \(.*?\)", "", sql, flags=re.S)
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
