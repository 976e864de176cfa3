"""Candles against references computed here, independently of featlib's feature code.

1. Stored confirmed 1-minute klines of the real captures against bars built from the
   captures' raw trades with plain pandas (and exact decimal sums).
2. bb_* and macd_* on the real Jan 2022 BTCUSDT candles against TA-Lib's BBANDS and MACD.
   The candles are read from the capture file with the json module, not through featlib;
   featlib is only called for the values under test.
"""

from __future__ import annotations

import gzip
import json
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
import talib

from featlib.checks import features_at
from tests.conftest import KLINES_31D, shared

MINUTE = 60_000

# Confirmed minutes whose whole span the capture's trades cover, per capture. Each capture
# starts 2.7-5 s into its first minute, so that one is left out; its last trade lies 2-54 s
# past the end of its last confirmed minute, so that one is in.
COVERED_MINUTES = {"BTCUSDT-2023-04-05": 5, "BTCUSDT-2024-07-18": 7, "ETHUSDT-2024-07-18": 7}


def _frame(table, columns: list[str]) -> pd.DataFrame:
    """The columns as plain pandas, timestamps as epoch ms."""
    out = {}
    for name in columns:
        column = table[name]
        if name in ("ts", "start"):
            column = column.cast("int64")
        out[name] = column.to_numpy(zero_copy_only=False)
    return pd.DataFrame(out)


def _exact(value: float) -> Decimal:
    """The decimal Bybit sent. It has <= 15 significant digits, so the float it was parsed into
    round-trips, and its shortest repr is numerically that decimal."""
    return Decimal(repr(float(value)))


@pytest.mark.parametrize("capture", sorted(COVERED_MINUTES))
def test_confirmed_klines_equal_their_trades(real_captures, capture):
    """Every confirmed 1m kline whose minute the capture's trades cover is its trades, exactly.

    The rule found on the data (19 minutes in the three captures, all matching): the kline
    starting at `start` is the public trades with start <= T < start + 60 000 ms (T = the
    trade's exchange time, stored as `ts`), taken in (T, trade id) order; open/close are the
    first/last of them, high/low their max/min price, volume Σ size and turnover Σ price·size.
    OHLC equal bit for bit; volume and turnover equal exactly in decimal arithmetic (the
    float sums below differ from them only by float rounding, < 1e-12 relative: ≤ 4 000 terms
    × 1.1e-16). Nothing needed special handling: no trade in the captures is a block trade (so
    whether Bybit counts block trades in a kline is not decided by this data; the test requires
    there to be none), trades sorted by T are sorted by trade id, and the trade nearest a
    boundary is 8 ms after a minute start (2023-04-05 00:01 UTC), 28 ms before one: the data pins
    the boundary to within those margins, and a window shifted by 10 ms no longer matches.
    """
    tables, symbol, _, _ = real_captures[capture]
    trades = _frame(tables["trades"], ["ts", "trade_id", "price", "size", "block_trade"])
    klines = tables["klines"]
    has_turnover = "turnover" in klines.column_names
    names = ["start", "interval", "confirm", "open", "high", "low", "close", "volume"]
    klines = _frame(klines, names + (["turnover"] if has_turnover else []))
    confirmed = klines[klines["confirm"] & (klines["interval"] == "1")]
    assert not confirmed["start"].duplicated().any()
    first, last = trades["ts"].min(), trades["ts"].max()
    covered = confirmed[(confirmed["start"] > first) & (confirmed["start"] + MINUTE <= last)]
    assert len(covered) == COVERED_MINUTES[capture], capture

    trades["id"] = trades["trade_id"].astype("int64")
    trades = trades.sort_values(["ts", "id"], kind="stable").reset_index(drop=True)
    compared = 0
    for row in covered.itertuples():
        minute = trades[(trades["ts"] >= row.start) & (trades["ts"] < row.start + MINUTE)]
        where = f"{capture} {symbol} kline start={row.start}"
        assert len(minute) > 0, where
        assert not minute["block_trade"].fillna(False).any(), f"{where}: block trades"
        price, size = minute["price"], minute["size"]
        got = (row.open, row.high, row.low, row.close)
        want = (price.iloc[0], price.max(), price.min(), price.iloc[-1])
        assert got == want, f"{where}: OHLC stored {got}, from trades {want}"
        assert row.volume == pytest.approx(size.sum(), rel=1e-12, abs=0), where
        assert _exact(row.volume) == sum(map(_exact, size)), f"{where}: volume"
        if has_turnover:
            assert row.turnover == pytest.approx((price * size).sum(), rel=1e-12, abs=0), where
            turnover = sum(_exact(p) * _exact(q) for p, q in zip(price, size, strict=True))
            assert _exact(row.turnover) == turnover, f"{where}: turnover"
        compared += 1
    assert compared == COVERED_MINUTES[capture]


# --- Bollinger bands and MACD against TA-Lib on the real Jan 2022 candles ---

BB = ["bb_upper", "bb_lower", "bb_width"]
MACD = ["macd_line", "macd_signal", "macd_histogram"]
BB_PERIOD, BB_K = 20, 2.0
BB_RTOL = 1e-9
MACD_WARM = 300  # candles skipped before comparing MACD (see test_macd_equals_talib)
MACD_ATOL = 1e-12  # times the candle's close


@pytest.fixture(scope="module")
def candles() -> dict[str, np.ndarray]:
    """The Jan 2022 candles straight from the file: close time (`end` + 1 ms, the `ts` featlib
    gives a candle) and close."""
    rows = []
    with gzip.open(shared(KLINES_31D), "rt") as handle:
        for line in handle:
            c = json.loads(line)["payload"]["data"][0]
            assert c["confirm"]
            rows.append((c["end"] + 1, float(c["close"])))
    ts, close = (np.array(x) for x in zip(*sorted(rows), strict=True))
    assert np.all(np.diff(ts) == MINUTE), "the reference assumes a gap-free series"
    return {"ts": ts.astype(np.int64), "close": close}


@pytest.fixture(scope="module")
def computed(jan_tables, candles) -> dict[str, np.ndarray]:
    values = features_at(BB + MACD, jan_tables, "BTCUSDT", candles["ts"].tolist())
    return {k: np.array([np.nan if v is None else v for v in vals]) for k, vals in values.items()}


@pytest.fixture(scope="module")
def bbands(candles) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TA-Lib's upper, middle, lower: BBANDS(close, 20, 2, 2, SMA)."""
    return talib.BBANDS(
        candles["close"], timeperiod=BB_PERIOD, nbdevup=BB_K, nbdevdn=BB_K, matype=0
    )


def _where_both(ours: np.ndarray, ref: np.ndarray, name: str) -> np.ndarray:
    both = ~np.isnan(ref) & ~np.isnan(ours)
    assert both.sum() > 40_000, name
    return both


def test_bollinger_bands_equal_talib(bbands, computed):
    """bb_upper/bb_lower = TA-Lib BBANDS(20, 2, 2, SMA). featlib documents σ as the population
    standard deviation (ddof 0), as TA-Lib uses: no difference is documented, so none is
    allowed beyond rounding. Measured: ≤ 5e-15 relative. 1e-9 leaves room for TA-Lib's running
    sum-of-squares variance on other data and is ~10^5 below the 7e-4 of the band by which
    ddof 1 would differ at the widest window (2σ·(√(20/19) − 1))."""
    upper, _, lower = bbands
    for name, ref in (("bb_upper", upper), ("bb_lower", lower)):
        ours = computed[name]
        # defined exactly where TA-Lib is: from the 20th candle on (the series is gap-free)
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref), err_msg=name)
        both = _where_both(ours, ref, name)
        np.testing.assert_allclose(ours[both], ref[both], rtol=BB_RTOL, atol=0, err_msg=name)


def test_bollinger_width_is_the_talib_spread_over_the_middle(bbands, computed):
    """bb_width is documented as (upper − lower) / SMA(20) (= 4σ/SMA), not as a percentage
    and not over the close: compared with TA-Lib's (upper − lower) / middle. Measured ≤ 5e-12
    relative; that is TA-Lib's own rounding (its variance is E[x²] − mean² from running sums,
    which cancels up to ~8 digits at BTC prices; a two-pass numpy σ agrees with featlib to 4e-13),
    and 1e-9 keeps 200x margin over it while ddof 1 or period 19 would miss by > 1e-3."""
    upper, middle, lower = bbands
    ref = (upper - lower) / middle
    ours = computed["bb_width"]
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    both = _where_both(ours, ref, "bb_width")
    assert (ref[both] > 0).all()  # no flat 20-minute window: a relative comparison is sound
    np.testing.assert_allclose(ours[both], ref[both], rtol=BB_RTOL, atol=0)


def test_macd_equals_talib(candles, computed):
    """macd_line/signal/histogram = TA-Lib MACD(12, 26, 9) once the seeds are forgotten.

    The seeds differ: pandas-ta (featlib) starts the fast EMA at candle 12 from SMA(closes
    1-12), TA-Lib at candle 26 from SMA(closes 15-26); on these candles the two fast EMAs then
    differ by $9.2 (0.75 left on the line at candle 41). The slow EMAs are seeded alike (SMA
    of the first 26). The difference decays as (11/13)^n (fast α = 2/13), and the signal EMA
    (factor 0.8) passes it on at that rate times a polynomial factor. Falling from $9 below
    the tolerance (1e-12·$46k ≈ 5e-8) takes ln(9/5e-8)/ln(13/11) ≈ 115 candles after candle
    26; measured, the last candle differing by more than 1e-12·close is the 148th. At
    MACD_WARM = 300 the residue is 9·(11/13)^274 ≈ 1e-19, below double rounding; featlib
    itself is null until 660 candles of its 12-hour lookback are present.

    Tolerance: absolute, 1e-12 × close. MACD is a difference of two EMAs of ~$40k and crosses
    zero (|line| down to 4e-4 here), so a relative tolerance on it means nothing. Each EMA
    carries a bounded rounding error ≈ eps·price/α ≈ 1.5e-15·price (the recursion contracts),
    so two implementations agree to ~1e-14·price; measured ≤ 1.3e-15·close. A wrong period
    misses by up to 1e-3·close (fast 13) or 3e-4·close (signal 10)."""
    line, signal, histogram = talib.MACD(
        candles["close"], fastperiod=12, slowperiod=26, signalperiod=9
    )
    close = candles["close"]
    for name, ref in (("macd_line", line), ("macd_signal", signal), ("macd_histogram", histogram)):
        ours = computed[name]
        both = _where_both(ours, ref, name)
        both[:MACD_WARM] = False
        # featlib never has a value where TA-Lib, which needs 34 candles, has none
        assert not (~np.isnan(ours) & np.isnan(ref)).any(), name
        diff = np.abs(ours[both] - ref[both])
        allowed = MACD_ATOL * close[both]
        worst = int(np.argmax(diff / allowed))
        at = int(candles["ts"][both][worst])
        assert (diff <= allowed).all(), (
            f"{name} at ts={at}: featlib {ours[both][worst]!r}, TA-Lib {ref[both][worst]!r}"
        )
