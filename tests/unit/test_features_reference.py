"""Every v1.2.0 feature against an independent reference on REAL candles (Jan 2022 BTCUSDT):
TA-Lib for EMA/RSI, numpy written here for the rest. The candles are read from the capture
file with the json module, not through featlib."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pytest
import talib

from featlib import registry
from featlib.checks import features_at
from tests.conftest import CAPTURE_2023, KLINES_31D, shared

V12 = registry.load("1.2.0").names
WARM = 1_000  # rows skipped before comparing recursive indicators (both sides converged)


@pytest.fixture(scope="module")
def candles() -> dict[str, np.ndarray]:
    rows = []
    with gzip.open(shared(KLINES_31D), "rt") as handle:
        for line in handle:
            c = json.loads(line)["payload"]["data"][0]
            assert c["confirm"]
            rows.append((c["end"] + 1, float(c["close"]), float(c["volume"])))
    ts, close, volume = (np.array(x) for x in zip(*sorted(rows), strict=True))
    assert np.all(np.diff(ts) == 60_000), "the reference assumes a gap-free series"
    return {"ts": ts.astype(np.int64), "close": close, "volume": volume}


@pytest.fixture(scope="module")
def computed(jan_tables, candles) -> dict[str, np.ndarray]:
    values = features_at(V12, jan_tables, "BTCUSDT", candles["ts"].tolist())
    return {k: np.array([np.nan if v is None else v for v in vals]) for k, vals in values.items()}


def _close_enough(ours: np.ndarray, ref: np.ndarray, rtol: float = 1e-9) -> None:
    both = ~np.isnan(ref)
    assert both.sum() > 40_000
    assert not np.isnan(ours[both]).any(), "featlib is null where the reference has a value"
    np.testing.assert_allclose(ours[both], ref[both], rtol=rtol, atol=0)


def test_ema_21_equals_talib(candles, computed):
    ref = talib.EMA(candles["close"], timeperiod=21)
    _close_enough(computed["ema_21"][WARM:], ref[WARM:])


def test_rsi_14_equals_talib(candles, computed):
    ref = talib.RSI(candles["close"], timeperiod=14)
    _close_enough(computed["rsi_14"][WARM:], ref[WARM:])


def test_price_ema21_ratio(candles, computed):
    ref = candles["close"] / talib.EMA(candles["close"], timeperiod=21)
    _close_enough(computed["price_ema21_ratio"][WARM:], ref[WARM:])


def test_returns_5m(candles, computed):
    close = candles["close"]
    ref = np.full(len(close), np.nan)
    ref[5:] = close[5:] / close[:-5] - 1
    _close_enough(computed["returns_5m"], ref, rtol=1e-12)
    assert np.isnan(computed["returns_5m"][:5]).all()  # no 5 minutes of history yet: null


def test_volatility_5m(candles, computed):
    close = candles["close"]
    ret = close[1:] / close[:-1] - 1
    ref = np.full(len(close), np.nan)
    for i in range(5, len(close)):
        ref[i] = np.std(ret[i - 5 : i], ddof=1)  # returns ending at candle i
    _close_enough(computed["volatility_5m"], ref, rtol=1e-8)


def test_volume_ratio_20(candles, computed):
    vol = candles["volume"]
    ref = np.full(len(vol), np.nan)
    for i in range(19, len(vol)):
        ref[i] = vol[i] / vol[i - 19 : i + 1].mean()
    _close_enough(computed["volume_ratio_20"], ref, rtol=1e-12)


def test_indicators_are_null_until_warmed_up(candles, computed):
    # rsi_14 needs 420 of the last 480 candles, ema_21 300 of 360
    assert np.isnan(computed["rsi_14"][:419]).all() and not np.isnan(computed["rsi_14"][419])
    assert np.isnan(computed["ema_21"][:299]).all() and not np.isnan(computed["ema_21"][299])


def test_funding_rate_is_the_latest_ticker_rate(capture_tables):
    """Real 2023-04-05 tickers: the funding rate known at t is the last one published <= t."""
    published = []
    with gzip.open(shared(CAPTURE_2023), "rt") as handle:
        for line in handle:
            msg = json.loads(line)
            if msg["event_type"] == "ticker" and "fundingRate" in msg["payload"]["data"]:
                published.append(
                    (msg["payload"]["ts"], float(msg["payload"]["data"]["fundingRate"]))
                )
    published.sort()
    times = list(range(published[0][0] - 1_000, published[-1][0] + 2_000, 2_500))
    got = features_at(["funding_rate"], capture_tables, "BTCUSDT", times)["funding_rate"]
    for t, value in zip(times, got, strict=True):
        known = [rate for ts, rate in published if ts <= t]
        assert value == (known[-1] if known else None), t


def test_missing_candle_makes_dependent_values_null(jan_tables, candles):
    """A gap is reported as null for exactly the rows whose window needs the missing candle."""
    klines = jan_tables["klines"]
    gone = int(candles["ts"][20_000])
    ts_ms = klines["ts"].cast(pa.int64()).to_numpy()
    holed = {"klines": klines.filter(pa.array(ts_ms != gone))}
    times = [gone + k * 60_000 for k in range(-1, 22)]
    values = features_at(
        ["returns_5m", "volume_ratio_20", "volatility_5m"], holed, "BTCUSDT", times
    )
    offsets = range(-1, 22)
    for k, r5, v20, vol in zip(
        offsets,
        values["returns_5m"],
        values["volume_ratio_20"],
        values["volatility_5m"],
        strict=True,
    ):
        assert (r5 is None) == (k in (0, 5)), k  # only its two endpoint closes matter
        assert (v20 is None) == (0 <= k <= 19), k
        assert (vol is None) == (0 <= k <= 5), k
