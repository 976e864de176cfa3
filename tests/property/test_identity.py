"""The identity rule on real data, for every feature of every registry version:

- causality: removing all data after t leaves the value at t unchanged;
- lookback: keeping only (t − lookback, t] gives the value at t to 1e-9 relative.

Candle features are checked on the 31 days of January 2022 candles at any millisecond; all
features on the real captures (book, trades, tickers, klines) at whole seconds. The checker
itself is shown to fail on a feature that peeks ahead and on a lookback that is too short,
so a pass means something.
"""

from __future__ import annotations

import ibis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featlib import checks, registry
from featlib.features import FEATURES
from featlib.features.base import feature

ALL = sorted({name for v in registry.versions() for name in registry.load(v).names})
CANDLE_OR_CLOCK = [n for n in ALL if FEATURES[n].source in ("kline", "clock")]
JAN = (1_641_081_600_000, 1_643_673_600_000)  # 2022-01-02 .. 2022-02-01 UTC


@pytest.fixture(scope="module")
def captures(real_captures):
    return real_captures


@settings(max_examples=6, deadline=None, derandomize=True)
@given(fraction=st.floats(0.0, 1.0))
def test_candle_features_on_31_days(fraction, jan_tables):
    t = int(JAN[0] + fraction * (JAN[1] - JAN[0]))
    found = checks.violations(CANDLE_OR_CLOCK, jan_tables, "BTCUSDT", [t])
    assert not found, "; ".join(map(str, found))


@pytest.mark.parametrize(
    "capture", ["BTCUSDT-2023-04-05", "BTCUSDT-2024-07-18", "ETHUSDT-2024-07-18"]
)
@settings(max_examples=3, deadline=None, derandomize=True)
@given(fraction=st.floats(0.0, 1.0))
def test_every_feature_on_real_captures(capture, fraction, captures):
    tables, symbol, first, last = captures[capture]
    t = (first + int(fraction * (last - first))) // 1000 * 1000 + 1000  # a whole second
    found = checks.violations(ALL, tables, symbol, [t])
    assert not found, "; ".join(map(str, found))


def test_every_registry_feature_is_checked():
    assert set(ALL) <= set(FEATURES)
    assert set(CANDLE_OR_CLOCK) | set(ALL) == set(ALL)  # the captures run every feature
    for version in registry.versions():
        for spec in registry.load(version).features:
            assert spec.lookback_ms >= FEATURES[spec.name].lookback_ms, (version, spec.name)


def test_checker_catches_a_lookback_that_is_too_short(jan_tables):
    t = [1_642_000_020_000, 1_643_000_000_000]
    too_short = FEATURES["ema_21"].lookback_ms // 12  # 30 minutes instead of 6 hours
    found = checks.violations("ema_21", jan_tables, "BTCUSDT", t, lookback_ms=too_short)
    assert len(found) == len(t) and all("last" in v.check for v in found)
    found = checks.violations("volume_ratio_20", jan_tables, "BTCUSDT", t, lookback_ms=19 * 60_000)
    assert len(found) == len(t)


@pytest.fixture
def peeking_feature():
    """A deliberately wrong feature: a window that looks one candle ahead."""

    @feature(source="kline", lookback="2m")
    def _peeks_ahead(k):
        """Next candle's close (WRONG on purpose: reads the future)."""
        ahead = ibis.window(group_by=k.symbol, order_by=k.ts, range=(0, 60_000))
        return k.mutate(_peeks_ahead=k.close.last().over(ahead))

    yield "_peeks_ahead"
    del FEATURES["_peeks_ahead"]


def test_checker_catches_look_ahead(peeking_feature, jan_tables):
    t = [1_642_000_020_000, 1_643_000_000_000]
    found = checks.violations(peeking_feature, jan_tables, "BTCUSDT", t)
    assert {v.check for v in found} >= {"data up to t only"}
