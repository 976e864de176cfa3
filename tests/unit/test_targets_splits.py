"""Targets read only the future after t; splits are disjoint and purge rows whose target
window crosses a boundary. Real candles (Jan 2022) for targets; hypothesis for splits."""

from __future__ import annotations

import itertools

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from featlib.compute import grid
from featlib.splits import PURGED, SPLITS, Period, TimeSplit, assign
from featlib.targets import TargetSpec, compute_targets

T0 = 1_642_000_020_000 - 1_642_000_020_000 % 60_000  # a candle close in January 2022


def _targets(tables, spec, times):
    con = duckdb.connect()
    con.register("klines", tables["klines"])
    g = pa.table({"symbol": ["BTCUSDT"] * len(times), "ts": pa.array(times, pa.int64())})
    return compute_targets(spec, con, g).to_pylist()


def _closes(tables) -> dict[int, float]:
    k = tables["klines"]
    ts = k["ts"].cast(pa.int64()).to_pylist()
    return dict(zip(ts, k["close"].to_pylist(), strict=True))


def test_regression_and_classification_targets_by_hand(jan_tables):
    closes = _closes(jan_tables)
    times = [T0 + i * 60_000 for i in range(200)]
    rows = _targets(jan_tables, TargetSpec(type="classification", horizon="5m"), times)
    for t, row in zip(times, rows, strict=True):
        expected = closes[t + 300_000] / closes[t] - 1
        assert row["target_return"] == pytest.approx(expected, rel=1e-12)
        direction = 1 if expected > 0.001 else -1 if expected < -0.001 else 0
        assert row["target_direction"] == direction
    assert {r["target_direction"] for r in rows} == {-1, 0, 1}


def test_target_depends_only_on_the_future_close(jan_tables):
    """Changing candles strictly between t and t+h, or after t+h, leaves the target alone;
    changing the close at t+h changes it; removing it gives null, not an earlier price."""
    spec, t = TargetSpec(horizon="5m"), T0
    base = _targets(jan_tables, spec, [t])[0]["target_return"]
    k = jan_tables["klines"]
    ts = k["ts"].cast(pa.int64()).to_numpy()

    def with_close(mask, factor):
        close = np.where(mask, k["close"].to_numpy() * factor, k["close"].to_numpy())
        return {"klines": k.set_column(k.schema.get_field_index("close"), "close", pa.array(close))}

    between = (ts > t) & (ts < t + 300_000)
    after = ts > t + 300_000
    assert _targets(with_close(between | after, 1.5), spec, [t])[0]["target_return"] == base
    changed = _targets(with_close(ts == t + 300_000, 1.01), spec, [t])[0]["target_return"]
    assert changed != base
    removed = {"klines": k.filter(pa.array(ts != t + 300_000))}
    assert _targets(removed, spec, [t])[0]["target_return"] is None
    truncated = {"klines": k.filter(pa.array(ts <= t + 240_000))}  # future not known yet
    assert _targets(truncated, spec, [t])[0]["target_return"] is None


def test_horizon_shorter_than_a_candle_is_refused():
    with pytest.raises(ValidationError, match="shorter than one close price step"):
        TargetSpec(horizon="30s")
    assert TargetSpec(horizon="30s", price="trade").horizon_ms == 30_000
    with pytest.raises(ValidationError, match="shorter than one trade price step"):
        TargetSpec(horizon="500ms", price="trade")


def test_fraction_split_covers_range_on_grid():
    s = TimeSplit.by_fractions(0, 1_000 * 60_000, 60_000)
    assert s.train.start == 0 and s.test.end == 1_000 * 60_000
    assert s.train.end == s.validation.start and s.validation.end == s.test.start
    assert all(p.start % 60_000 == 0 for _, p in s.periods())


def test_overlapping_or_unordered_periods_are_refused():
    with pytest.raises(ValidationError, match="must not overlap"):
        TimeSplit(
            train=Period(start=0, end=100),
            validation=Period(start=50, end=200),
            test=Period(start=200, end=300),
        )
    with pytest.raises(ValidationError, match="before it starts"):
        Period(start=10, end=5)


@st.composite
def split_and_horizon(draw):
    cuts = sorted(draw(st.lists(st.integers(0, 10_000), min_size=6, max_size=6, unique=True)))
    periods = [Period(start=cuts[i] * 60_000, end=cuts[i + 1] * 60_000) for i in (0, 2, 4)]
    split = TimeSplit(**dict(zip(SPLITS, periods, strict=True)))
    return split, draw(st.integers(1, 240)) * 60_000


@settings(max_examples=200, deadline=None)
@given(split_and_horizon())
def test_no_kept_row_has_a_target_window_crossing_its_period(sh):
    split, horizon = sh
    ts = grid(["X"], 0, 10_001 * 60_000, 60_000)["ts"].to_numpy()
    labels = assign(ts, split, horizon)
    periods = [p for _, p in split.periods()]
    for code, period in enumerate(periods):
        kept = ts[labels == code]
        assert np.all((kept >= period.start) & (kept + horizon < period.end))
        inside = (ts >= period.start) & (ts < period.end)
        assert np.array_equal(
            labels[inside & (ts + horizon >= period.end)],
            np.full(np.sum(inside & (ts + horizon >= period.end)), PURGED),
        )
    for a, b in itertools.pairwise(periods):
        assert a.end <= b.start  # disjoint and ordered


def test_risk_adjusted_target_by_hand(jan_tables):
    """target_return / (std of the last 60 one-minute returns up to t × sqrt(horizon in min))."""
    closes = _closes(jan_tables)
    times = [T0 + i * 60_000 for i in range(0, 600, 37)]
    rows = _targets(jan_tables, TargetSpec(type="risk_adjusted", horizon="15m"), times)
    for t, row in zip(times, rows, strict=True):
        past = np.array([closes[t - k * 60_000] for k in range(60, -1, -1)])
        returns = past[1:] / past[:-1] - 1
        scale = np.std(returns, ddof=1) * np.sqrt(15)
        expected = (closes[t + 900_000] / closes[t] - 1) / scale
        assert row["target_risk_adjusted"] == pytest.approx(expected, rel=1e-9)
        assert row["target_return"] == pytest.approx(closes[t + 900_000] / closes[t] - 1)
