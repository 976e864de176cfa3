"""Candle-pattern features from the last three 1-minute candles (registry 1.3.0).

Every feature reads only the current candle and the two before it (`lookback="3m"`,
`min_candles=3`: the engine nulls the value unless the candles closing 1 and 2 minutes earlier
are both present). Nothing is compared with an average over a longer history.

Geometry of a candle: body = |close − open|, range = high − low, upper shadow = high −
max(open, close), lower shadow = min(open, close) − low, colour = sign(close − open) (+1 white,
−1 black, 0 when close = open). Ratios are null when their denominator is zero (a candle with
high = low has no body ratio), never inf, NaN or a guess.

Patterns are +1 bullish / −1 bearish / 0 none (1/0 for direction-less ones) and are never null
once the three candles are present. Where TA-Lib has the pattern we keep its rule (same
comparisons, same candles, same penetrations), with one change: TA-Lib judges "long body",
"short body", "doji", "very short shadow", "near", "far" and "equal" against averages over the
previous 5–10 candles (TA_SetCandleSettings), ours against fixed fractions of the range of the
candle TA-Lib would average at (its own range for a body or shadow, the reference candle's range
for near/far/equal):

    long body    body > 0.6 range      short body   body ≤ 0.3 range (< where TA-Lib uses <:
    doji         body ≤ 0.1 range                   hammer-like candles, spinning top)
    long shadow  shadow > 2 × body     short shadow shadow < 0.1 range
    near / far / equal   within 0.2 / beyond 0.6 / within 0.05 of the reference candle's range

(TA-Lib's "long shadow" is > 1 × body; we use the classic 2 ×.) A second difference is colour:
TA-Lib counts close = open as white, ours as neither, so a zero-body candle never plays a white
or black role here. Two patterns differ by design: three black crows (TA-Lib also reads a
fourth candle) and the long-legged doji (ours needs both shadows long). With TA-Lib's candle
settings set to these fractions of a candle's own range (avgPeriod 0), TA-Lib's CDL functions
and ours agree on every row of the January-2022 BTCUSDT candles, and of the same candles
shuffled, up to exactly these differences (tests/unit/test_patterns.py).

Speed: the 79 functions run on the same frame (featlib.compute._indicators), so the shared
geometry (bodies, shadows, ranges, colours of the current, previous and
pre-previous candle) is computed once per frame and memoised (one entry), keyed on the
address, strides and length of the frame's `close` buffer; the memo keeps a reference to that
buffer so the address cannot be reused by another frame while the entry lives. Every feature
reads the same frame and returns its column; compute builds fresh buffers for every call.
Caveat for direct calls: a frame made from another by replacing
open/high/low/volume but sharing its `close` buffer (`df.assign(open=...)`) would be served
the other frame's geometry if called right after it. Lagged arrays are views of one padded
array per quantity (no per-lag copies).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from featlib.features.base import indicator

LOOKBACK = "3m"
CANDLES = 3

LONG_BODY = 0.6
"""A body is long when it is more than this fraction of its candle's range."""
SHORT_BODY = 0.3
"""A body is short when it is at most (hammer-like rules: less than) this fraction of the range."""
DOJI = 0.1
"""A doji's body is at most this fraction of its range (a zero-range candle is a doji)."""
SHORT_SHADOW = 0.1
"""A shadow is very short when it is less than this fraction of its candle's range."""
LONG_SHADOW = 2.0
"""A shadow is long when it is more than this multiple of its candle's body."""
LONG_LEG = 0.3
"""Both shadows of a long-legged doji are at least this fraction of its range."""
NEAR = 0.2
FAR = 0.6
EQUAL = 0.05
"""Near / far / equal: within / beyond these fractions of the reference candle's range."""
PENETRATION = 0.5
"""Piercing line and dark cloud cover close beyond the middle of the first body (TA-Lib's 0.5)."""
STAR_PENETRATION = 0.3
"""Stars and abandoned babies close 30% into the first body (TA-Lib's default 0.3)."""


@dataclass(frozen=True, slots=True)
class _Bar:
    """One of the three candles, row-aligned with the frame (NaN where it does not exist)."""

    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    body: np.ndarray
    range: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    color: np.ndarray

    def long(self) -> np.ndarray:
        return self.body > LONG_BODY * self.range

    def short(self) -> np.ndarray:
        return self.body <= SHORT_BODY * self.range

    def doji(self) -> np.ndarray:
        return self.body <= DOJI * self.range

    def white(self) -> np.ndarray:
        return self.color > 0

    def black(self) -> np.ndarray:
        return self.color < 0


@dataclass(frozen=True, slots=True)
class _Three:
    """The current candle (c0), the previous one (c1) and the one before (c2) at every row."""

    c0: _Bar
    c1: _Bar
    c2: _Bar
    full: np.ndarray
    """Rows with two earlier rows in the frame (the engine also checks they are 1m and 2m old)."""


def _build(candles: pd.DataFrame) -> _Three:
    n = len(candles)
    padded = []
    for column in ("open", "high", "low", "close", "volume"):
        a = np.empty(n + 2)
        a[:2] = np.nan
        a[2:] = candles[column].to_numpy(dtype=np.float64)
        padded.append(a)
    o, h, low, c, v = padded
    top, bottom = np.maximum(o, c), np.minimum(o, c)
    arrays = (o, h, low, c, v, top, bottom, top - bottom, h - low, h - top, bottom - low)
    arrays = (*arrays, np.sign(c - o))

    def lag(k: int) -> _Bar:
        return _Bar(*(a[2 - k : n + 2 - k] for a in arrays))

    return _Three(lag(0), lag(1), lag(2), np.arange(n) >= 2)


_memo: tuple[tuple[int, tuple[int, ...], int], np.ndarray, _Three] | None = None


def _geometry(candles: pd.DataFrame) -> _Three:
    """The frame's three-candle geometry, computed once per frame (see the module docstring)."""
    global _memo
    close = candles["close"].to_numpy()
    key = (close.__array_interface__["data"][0], close.strides, len(close))
    memo = _memo
    if memo is not None and memo[0] == key:
        return memo[2]
    three = _build(candles)
    _memo = (key, close, three)
    return three


def _column(candles: pd.DataFrame, name: str, g: _Three, values: np.ndarray) -> np.ndarray:
    """The column `name`: `values`, null on rows without two earlier candles."""
    return np.where(g.full, values, np.nan)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN (null) where den is zero."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _signal(bull: np.ndarray, bear: np.ndarray) -> np.ndarray:
    """+1 where bull, −1 where bear, else 0."""
    return bull.astype(np.float64) - bear.astype(np.float64)


def _body_gap(now: _Bar, before: _Bar) -> np.ndarray:
    """Signed gap between two real bodies in price units (0 when they overlap)."""
    up = np.maximum(now.bottom - before.top, 0.0)
    down = np.minimum(now.top - before.bottom, 0.0)
    return up + down


def _span(g: _Three) -> tuple[np.ndarray, np.ndarray]:
    high = np.maximum(np.maximum(g.c0.high, g.c1.high), g.c2.high)
    low = np.minimum(np.minimum(g.c0.low, g.c1.low), g.c2.low)
    return high, low


# ---------------------------------------------------------------- geometry of each candle


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 0})
def candle_body_ratio(candles: pd.DataFrame) -> np.ndarray:
    """Current candle's |close − open| / (high − low); fraction 0–1; null when high = low."""
    g = _geometry(candles)
    return _column(candles, "candle_body_ratio", g, _ratio(g.c0.body, g.c0.range))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 1})
def candle_body_ratio_lag1(candles: pd.DataFrame) -> np.ndarray:
    """Previous candle's |close − open| / (high − low); fraction 0–1; null when high = low."""
    g = _geometry(candles)
    return _column(candles, "candle_body_ratio_lag1", g, _ratio(g.c1.body, g.c1.range))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 2})
def candle_body_ratio_lag2(candles: pd.DataFrame) -> np.ndarray:
    """Candle 2 minutes back: |close − open| / (high − low); fraction 0–1; null when high = low."""
    g = _geometry(candles)
    return _column(candles, "candle_body_ratio_lag2", g, _ratio(g.c2.body, g.c2.range))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 0})
def candle_upper_shadow_ratio(candles: pd.DataFrame) -> np.ndarray:
    """Current candle's (high − max(open, close)) / (high − low); fraction 0–1; null when
    high = low."""
    g = _geometry(candles)
    return _column(candles, "candle_upper_shadow_ratio", g, _ratio(g.c0.upper, g.c0.range))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 1})
def candle_upper_shadow_ratio_lag1(candles: pd.DataFrame) -> np.ndarray:
    """Previous candle's (high − max(open, close)) / (high − low); fraction 0–1; null when
    high = low."""
    g = _geometry(candles)
    return _column(candles, "candle_upper_shadow_ratio_lag1", g, _ratio(g.c1.upper, g.c1.range))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 2})
def candle_upper_shadow_ratio_lag2(candles: pd.DataFrame) -> np.ndarray:
    """Candle 2 minutes back: (high − max(open, close)) / (high − low); fraction 0–1; null when
    high = low."""
    g = _geometry(candles)
    return _column(candles, "candle_upper_shadow_ratio_lag2", g, _ratio(g.c2.upper, g.c2.range))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 0})
def candle_lower_shadow_ratio(candles: pd.DataFrame) -> np.ndarray:
    """Current candle's (min(open, close) − low) / (high − low); fraction 0–1; null when
    high = low."""
    g = _geometry(candles)
    return _column(candles, "candle_lower_shadow_ratio", g, _ratio(g.c0.lower, g.c0.range))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 1})
def candle_lower_shadow_ratio_lag1(candles: pd.DataFrame) -> np.ndarray:
    """Previous candle's (min(open, close) − low) / (high − low); fraction 0–1; null when
    high = low."""
    g = _geometry(candles)
    return _column(candles, "candle_lower_shadow_ratio_lag1", g, _ratio(g.c1.lower, g.c1.range))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 2})
def candle_lower_shadow_ratio_lag2(candles: pd.DataFrame) -> np.ndarray:
    """Candle 2 minutes back: (min(open, close) − low) / (high − low); fraction 0–1; null when
    high = low."""
    g = _geometry(candles)
    return _column(candles, "candle_lower_shadow_ratio_lag2", g, _ratio(g.c2.lower, g.c2.range))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 0})
def candle_close_position(candles: pd.DataFrame) -> np.ndarray:
    """Current candle's (close − low) / (high − low); fraction 0 (at the low) – 1 (at the high);
    null when high = low."""
    g = _geometry(candles)
    c = g.c0
    return _column(candles, "candle_close_position", g, _ratio(c.close - c.low, c.range))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 1})
def candle_close_position_lag1(candles: pd.DataFrame) -> np.ndarray:
    """Previous candle's (close − low) / (high − low); fraction 0–1; null when high = low."""
    g = _geometry(candles)
    c = g.c1
    return _column(candles, "candle_close_position_lag1", g, _ratio(c.close - c.low, c.range))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 2})
def candle_close_position_lag2(candles: pd.DataFrame) -> np.ndarray:
    """Candle 2 minutes back: (close − low) / (high − low); fraction 0–1; null when high = low."""
    g = _geometry(candles)
    c = g.c2
    return _column(candles, "candle_close_position_lag2", g, _ratio(c.close - c.low, c.range))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 0})
def candle_color(candles: pd.DataFrame) -> np.ndarray:
    """Current candle's colour sign(close − open): +1 white, −1 black, 0 when close = open."""
    g = _geometry(candles)
    return _column(candles, "candle_color", g, g.c0.color)


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 1})
def candle_color_lag1(candles: pd.DataFrame) -> np.ndarray:
    """Previous candle's colour sign(close − open): +1, −1 or 0."""
    g = _geometry(candles)
    return _column(candles, "candle_color_lag1", g, g.c1.color)


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 2})
def candle_color_lag2(candles: pd.DataFrame) -> np.ndarray:
    """Colour sign(close − open) of the candle 2 minutes back: +1, −1 or 0."""
    g = _geometry(candles)
    return _column(candles, "candle_color_lag2", g, g.c2.color)


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 0})
def candle_range_rel(candles: pd.DataFrame) -> np.ndarray:
    """Current candle's (high − low) / close; fraction of price, ≥ 0; null when close = 0."""
    g = _geometry(candles)
    return _column(candles, "candle_range_rel", g, _ratio(g.c0.range, g.c0.close))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 1})
def candle_range_rel_lag1(candles: pd.DataFrame) -> np.ndarray:
    """Previous candle's (high − low) / close; fraction of price, ≥ 0; null when close = 0."""
    g = _geometry(candles)
    return _column(candles, "candle_range_rel_lag1", g, _ratio(g.c1.range, g.c1.close))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 2})
def candle_range_rel_lag2(candles: pd.DataFrame) -> np.ndarray:
    """Candle 2 minutes back: (high − low) / close; fraction of price, ≥ 0; null when close = 0."""
    g = _geometry(candles)
    return _column(candles, "candle_range_rel_lag2", g, _ratio(g.c2.range, g.c2.close))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 0})
def candle_return(candles: pd.DataFrame) -> np.ndarray:
    """Current candle's (close − open) / open; signed fraction; null when open = 0."""
    g = _geometry(candles)
    c = g.c0
    return _column(candles, "candle_return", g, _ratio(c.close - c.open, c.open))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 1})
def candle_return_lag1(candles: pd.DataFrame) -> np.ndarray:
    """Previous candle's (close − open) / open; signed fraction; null when open = 0."""
    g = _geometry(candles)
    c = g.c1
    return _column(candles, "candle_return_lag1", g, _ratio(c.close - c.open, c.open))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 2})
def candle_return_lag2(candles: pd.DataFrame) -> np.ndarray:
    """Candle 2 minutes back: (close − open) / open; signed fraction; null when open = 0."""
    g = _geometry(candles)
    c = g.c2
    return _column(candles, "candle_return_lag2", g, _ratio(c.close - c.open, c.open))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={})
def candle_shadow_imbalance(candles: pd.DataFrame) -> np.ndarray:
    """Current candle's (upper shadow − lower shadow) / (high − low); −1 (all lower) to +1 (all
    upper); null when high = low."""
    g = _geometry(candles)
    c = g.c0
    return _column(candles, "candle_shadow_imbalance", g, _ratio(c.upper - c.lower, c.range))


# ---------------------------------------------------------------- between candles


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 0})
def candle_gap(candles: pd.DataFrame) -> np.ndarray:
    """Opening gap (open − previous close) / previous close; signed fraction; null when the
    previous close is 0."""
    g = _geometry(candles)
    return _column(candles, "candle_gap", g, _ratio(g.c0.open - g.c1.close, g.c1.close))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 1})
def candle_gap_lag1(candles: pd.DataFrame) -> np.ndarray:
    """Previous candle's opening gap (open − close 2 minutes back) / that close; signed
    fraction; null when that close is 0."""
    g = _geometry(candles)
    return _column(candles, "candle_gap_lag1", g, _ratio(g.c1.open - g.c2.close, g.c2.close))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 0})
def candle_body_gap(candles: pd.DataFrame) -> np.ndarray:
    """Gap between the current and the previous real body / previous close: (min(o, c) −
    previous max(o, c)) if positive, (max(o, c) − previous min(o, c)) if negative, else 0;
    signed fraction."""
    g = _geometry(candles)
    return _column(candles, "candle_body_gap", g, _ratio(_body_gap(g.c0, g.c1), g.c1.close))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 1})
def candle_body_gap_lag1(candles: pd.DataFrame) -> np.ndarray:
    """candle_body_gap between the previous candle and the one before it, / the earlier close;
    signed fraction."""
    g = _geometry(candles)
    return _column(candles, "candle_body_gap_lag1", g, _ratio(_body_gap(g.c1, g.c2), g.c2.close))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={})
def candle_window(candles: pd.DataFrame) -> np.ndarray:
    """Gap between whole candles / previous close: (low − previous high) if positive, (high −
    previous low) if negative, else 0; signed fraction."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    gap = np.maximum(c.low - p.high, 0.0) + np.minimum(c.high - p.low, 0.0)
    return _column(candles, "candle_window", g, _ratio(gap, p.close))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 0})
def candle_body_growth(candles: pd.DataFrame) -> np.ndarray:
    """Current body / previous body (|close − open| each); ratio ≥ 0; null when the previous
    body is 0."""
    g = _geometry(candles)
    return _column(candles, "candle_body_growth", g, _ratio(g.c0.body, g.c1.body))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 1})
def candle_body_growth_lag1(candles: pd.DataFrame) -> np.ndarray:
    """Previous body / the body 2 minutes back; ratio ≥ 0; null when that body is 0."""
    g = _geometry(candles)
    return _column(candles, "candle_body_growth_lag1", g, _ratio(g.c1.body, g.c2.body))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 0})
def candle_range_growth(candles: pd.DataFrame) -> np.ndarray:
    """Current range / previous range (high − low each); ratio ≥ 0; null when the previous
    range is 0."""
    g = _geometry(candles)
    return _column(candles, "candle_range_growth", g, _ratio(g.c0.range, g.c1.range))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"lag": 1})
def candle_range_growth_lag1(candles: pd.DataFrame) -> np.ndarray:
    """Previous range / the range 2 minutes back; ratio ≥ 0; null when that range is 0."""
    g = _geometry(candles)
    return _column(candles, "candle_range_growth_lag1", g, _ratio(g.c1.range, g.c2.range))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={})
def candle_volume_growth(candles: pd.DataFrame) -> np.ndarray:
    """Current volume / previous volume (base coin); ratio ≥ 0; null when the previous volume
    is 0."""
    g = _geometry(candles)
    return _column(candles, "candle_volume_growth", g, _ratio(g.c0.volume, g.c1.volume))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={})
def candle_close_position_prev(candles: pd.DataFrame) -> np.ndarray:
    """Current close placed in the previous candle's range: (close − previous low) / previous
    (high − low); 0–1 inside it, < 0 below, > 1 above; null when the previous high = low."""
    g = _geometry(candles)
    values = _ratio(g.c0.close - g.c1.low, g.c1.range)
    return _column(candles, "candle_close_position_prev", g, values)


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={})
def candle_higher_high(candles: pd.DataFrame) -> np.ndarray:
    """sign(high − previous high): +1 higher high, −1 lower high, 0 equal."""
    g = _geometry(candles)
    return _column(candles, "candle_higher_high", g, np.sign(g.c0.high - g.c1.high))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={})
def candle_higher_low(candles: pd.DataFrame) -> np.ndarray:
    """sign(low − previous low): +1 higher low, −1 lower low, 0 equal."""
    g = _geometry(candles)
    return _column(candles, "candle_higher_low", g, np.sign(g.c0.low - g.c1.low))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={})
def candle_color_sum(candles: pd.DataFrame) -> np.ndarray:
    """Sum of the three candles' colours sign(close − open); integer −3 (three black) to +3."""
    g = _geometry(candles)
    return _column(candles, "candle_color_sum", g, g.c0.color + g.c1.color + g.c2.color)


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"candles": 3})
def candle_span_return(candles: pd.DataFrame) -> np.ndarray:
    """The three candles as one: (close − open 2 minutes back) / that open; signed fraction;
    null when that open is 0."""
    g = _geometry(candles)
    return _column(candles, "candle_span_return", g, _ratio(g.c0.close - g.c2.open, g.c2.open))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"candles": 3})
def candle_span_range_rel(candles: pd.DataFrame) -> np.ndarray:
    """The three candles as one: (highest high − lowest low) / current close; fraction of price,
    ≥ 0; null when the close is 0."""
    g = _geometry(candles)
    high, low = _span(g)
    return _column(candles, "candle_span_range_rel", g, _ratio(high - low, g.c0.close))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"candles": 3})
def candle_span_close_position(candles: pd.DataFrame) -> np.ndarray:
    """Current close in the three candles' range: (close − lowest low) / (highest high − lowest
    low); fraction 0–1; null when that range is 0."""
    g = _geometry(candles)
    high, low = _span(g)
    return _column(candles, "candle_span_close_position", g, _ratio(g.c0.close - low, high - low))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"candles": 3})
def candle_span_body_ratio(candles: pd.DataFrame) -> np.ndarray:
    """The three candles as one: |close − open 2 minutes back| / (highest high − lowest low);
    fraction 0–1; null when that range is 0."""
    g = _geometry(candles)
    high, low = _span(g)
    body = np.abs(g.c0.close - g.c2.open)
    return _column(candles, "candle_span_body_ratio", g, _ratio(body, high - low))


# ---------------------------------------------------------------- one-candle patterns

_DOJI = {"doji": DOJI}
_SHADOWS = {"doji": DOJI, "short_shadow": SHORT_SHADOW}
_HAMMER = {
    "short_body": SHORT_BODY,
    "long_shadow": LONG_SHADOW,
    "short_shadow": SHORT_SHADOW,
    "near": NEAR,
}
_STAR = {"short_body": SHORT_BODY, "long_shadow": LONG_SHADOW, "short_shadow": SHORT_SHADOW}
_MARUBOZU = {"long_body": LONG_BODY, "short_shadow": SHORT_SHADOW}


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params=_DOJI)
def pattern_doji(candles: pd.DataFrame) -> np.ndarray:
    """Doji: 1 if body ≤ 0.1 × the candle's own range (a zero-range candle is one), else 0.
    TA-Lib CDLDOJI: body ≤ 0.1 × the mean range of the previous 10 candles."""
    g = _geometry(candles)
    return _column(candles, "pattern_doji", g, g.c0.doji().astype(np.float64))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params=_SHADOWS)
def pattern_dragonfly_doji(candles: pd.DataFrame) -> np.ndarray:
    """Dragonfly doji: 1 if doji (body ≤ 0.1 range), upper shadow < 0.1 range and lower shadow
    > 0.1 range, else 0. TA-Lib CDLDRAGONFLYDOJI: same rule against 0.1 × the mean range of
    the previous 10 candles."""
    g = _geometry(candles)
    c = g.c0
    hit = c.doji() & (c.upper < SHORT_SHADOW * c.range) & (c.lower > SHORT_SHADOW * c.range)
    return _column(candles, "pattern_dragonfly_doji", g, hit.astype(np.float64))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params=_SHADOWS)
def pattern_gravestone_doji(candles: pd.DataFrame) -> np.ndarray:
    """Gravestone doji: 1 if doji (body ≤ 0.1 range), lower shadow < 0.1 range and upper shadow
    > 0.1 range, else 0. TA-Lib CDLGRAVESTONEDOJI: same rule against 0.1 × the mean range of
    the previous 10 candles."""
    g = _geometry(candles)
    c = g.c0
    hit = c.doji() & (c.lower < SHORT_SHADOW * c.range) & (c.upper > SHORT_SHADOW * c.range)
    return _column(candles, "pattern_gravestone_doji", g, hit.astype(np.float64))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"doji": DOJI, "long_leg": LONG_LEG})
def pattern_long_legged_doji(candles: pd.DataFrame) -> np.ndarray:
    """Long-legged doji: 1 if doji (body ≤ 0.1 range, range > 0) with both shadows ≥ 0.3 range,
    else 0. TA-Lib CDLLONGLEGGEDDOJI needs only one shadow longer than the body (nearly every
    doji), and doji against the mean range of 10 candles; ours is the stricter classic form."""
    g = _geometry(candles)
    c = g.c0
    legs = (c.upper >= LONG_LEG * c.range) & (c.lower >= LONG_LEG * c.range)
    hit = c.doji() & legs & (c.range > 0)
    return _column(candles, "pattern_long_legged_doji", g, hit.astype(np.float64))


def _hammer_shape(c: _Bar) -> np.ndarray:
    return (
        (c.body < SHORT_BODY * c.range)
        & (c.lower > LONG_SHADOW * c.body)
        & (c.upper < SHORT_SHADOW * c.range)
    )


def _inverted_shape(c: _Bar) -> np.ndarray:
    return (
        (c.body < SHORT_BODY * c.range)
        & (c.upper > LONG_SHADOW * c.body)
        & (c.lower < SHORT_SHADOW * c.range)
    )


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params=_HAMMER)
def pattern_hammer(candles: pd.DataFrame) -> np.ndarray:
    """Hammer: +1 if body < 0.3 range, lower shadow > 2 × body, upper shadow < 0.1 range and
    min(open, close) ≤ previous low + 0.2 × previous range, else 0. TA-Lib CDLHAMMER: body below
    the mean body of 10 candles, lower shadow > 1 × body, upper < 0.1 × mean range of 10, near =
    0.2 × mean range of the 5 candles before the previous one."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    hit = _hammer_shape(c) & (c.bottom <= p.low + NEAR * p.range)
    return _column(candles, "pattern_hammer", g, hit.astype(np.float64))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params=_HAMMER)
def pattern_hanging_man(candles: pd.DataFrame) -> np.ndarray:
    """Hanging man: −1 if hammer-shaped (body < 0.3 range, lower shadow > 2 × body, upper < 0.1
    range) with min(open, close) ≥ previous high − 0.2 × previous range, else 0. TA-Lib
    CDLHANGINGMAN: same rule with TA-Lib's averages (see pattern_hammer)."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    hit = _hammer_shape(c) & (c.bottom >= p.high - NEAR * p.range)
    return _column(candles, "pattern_hanging_man", g, np.where(hit, -1.0, 0.0))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params=_STAR)
def pattern_inverted_hammer(candles: pd.DataFrame) -> np.ndarray:
    """Inverted hammer: +1 if body < 0.3 range, upper shadow > 2 × body, lower < 0.1 range and
    the body gaps down from the previous body (max(o, c) < previous min(o, c)), else 0. TA-Lib
    CDLINVERTEDHAMMER: body below the mean body of 10, shadow > 1 × body, 0.1 × mean range."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    hit = _inverted_shape(c) & (c.top < p.bottom)
    return _column(candles, "pattern_inverted_hammer", g, hit.astype(np.float64))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params=_STAR)
def pattern_shooting_star(candles: pd.DataFrame) -> np.ndarray:
    """Shooting star: −1 if body < 0.3 range, upper shadow > 2 × body, lower < 0.1 range and
    the body gaps up from the previous body (min(o, c) > previous max(o, c)), else 0. TA-Lib
    CDLSHOOTINGSTAR: body below the mean body of 10, shadow > 1 × body, 0.1 × mean range."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    hit = _inverted_shape(c) & (c.bottom > p.top)
    return _column(candles, "pattern_shooting_star", g, np.where(hit, -1.0, 0.0))


def _marubozu(c: _Bar) -> np.ndarray:
    tiny = SHORT_SHADOW * c.range
    return c.long() & (c.upper < tiny) & (c.lower < tiny)


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params=_MARUBOZU)
def pattern_marubozu(candles: pd.DataFrame) -> np.ndarray:
    """Marubozu: colour (±1) if body > 0.6 range and both shadows < 0.1 range, else 0. TA-Lib
    CDLMARUBOZU: body > the mean body of 10 candles, shadows < 0.1 × their mean range."""
    g = _geometry(candles)
    return _column(candles, "pattern_marubozu", g, np.where(_marubozu(g.c0), g.c0.color, 0.0))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params=_MARUBOZU)
def pattern_closing_marubozu(candles: pd.DataFrame) -> np.ndarray:
    """Closing marubozu: colour (±1) if body > 0.6 range and the shadow at the close (upper if
    white, lower if black) < 0.1 range, else 0. TA-Lib CDLCLOSINGMARUBOZU: body > the mean body
    of 10 candles, shadow < 0.1 × their mean range."""
    g = _geometry(candles)
    c = g.c0
    tiny = SHORT_SHADOW * c.range
    hit = c.long() & ((c.white() & (c.upper < tiny)) | (c.black() & (c.lower < tiny)))
    return _column(candles, "pattern_closing_marubozu", g, np.where(hit, c.color, 0.0))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params=_MARUBOZU)
def pattern_belt_hold(candles: pd.DataFrame) -> np.ndarray:
    """Belt hold: colour (±1) if body > 0.6 range and the shadow at the open (lower if white,
    upper if black) < 0.1 range, else 0. TA-Lib CDLBELTHOLD: body > the mean body of 10
    candles, shadow < 0.1 × their mean range."""
    g = _geometry(candles)
    c = g.c0
    tiny = SHORT_SHADOW * c.range
    hit = c.long() & ((c.white() & (c.lower < tiny)) | (c.black() & (c.upper < tiny)))
    return _column(candles, "pattern_belt_hold", g, np.where(hit, c.color, 0.0))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"short_body": SHORT_BODY})
def pattern_spinning_top(candles: pd.DataFrame) -> np.ndarray:
    """Spinning top: 1 if body < 0.3 range and both shadows longer than the body, else 0
    (direction-less). TA-Lib CDLSPINNINGTOP: body below the mean body of 10 candles, and it
    returns the candle's colour (close = open counting as white)."""
    g = _geometry(candles)
    c = g.c0
    hit = (c.body < SHORT_BODY * c.range) & (c.upper > c.body) & (c.lower > c.body)
    return _column(candles, "pattern_spinning_top", g, hit.astype(np.float64))


# ---------------------------------------------------------------- two-candle patterns


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={})
def pattern_engulfing(candles: pd.DataFrame) -> np.ndarray:
    """Engulfing: +1 if a white body covers the previous black body (close ≥ its open and open <
    its close, or close > its open and open ≤ its close), −1 for the black mirror, else 0.
    TA-Lib CDLENGULFING's rule (no averages); only colour differs: TA-Lib also counts a black
    candle covering a close = open candle."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    bull = (
        c.white()
        & p.black()
        & (((c.close >= p.open) & (c.open < p.close)) | ((c.close > p.open) & (c.open <= p.close)))
    )
    bear = (
        c.black()
        & p.white()
        & (((c.open >= p.close) & (c.close < p.open)) | ((c.open > p.close) & (c.close <= p.open)))
    )
    return _column(candles, "pattern_engulfing", g, _signal(bull, bear))


def _inside_body(c: _Bar, p: _Bar) -> np.ndarray:
    return (c.top <= p.top) & (c.bottom >= p.bottom)


@indicator(
    lookback=LOOKBACK,
    min_candles=CANDLES,
    params={"long_body": LONG_BODY, "short_body": SHORT_BODY},
)
def pattern_harami(candles: pd.DataFrame) -> np.ndarray:
    """Harami: −(previous colour) if the previous body is long (> 0.6 range) and the current
    body is short (≤ 0.3 range) and within it (bounds may touch), else 0. TA-Lib CDLHARAMI:
    long/short against the mean body of the previous 10 candles."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    hit = p.long() & c.short() & _inside_body(c, p)
    return _column(candles, "pattern_harami", g, np.where(hit, -p.color, 0.0))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"long_body": LONG_BODY, "doji": DOJI})
def pattern_harami_cross(candles: pd.DataFrame) -> np.ndarray:
    """Harami cross: −(previous colour) if the previous body is long (> 0.6 range) and the
    current candle is a doji (body ≤ 0.1 range) within it, else 0. TA-Lib CDLHARAMICROSS:
    long body against the mean body of 10 candles, doji against 0.1 × their mean range."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    hit = p.long() & c.doji() & _inside_body(c, p)
    return _column(candles, "pattern_harami_cross", g, np.where(hit, -p.color, 0.0))


@indicator(
    lookback=LOOKBACK,
    min_candles=CANDLES,
    params={"long_body": LONG_BODY, "penetration": PENETRATION},
)
def pattern_piercing(candles: pd.DataFrame) -> np.ndarray:
    """Piercing line: +1 if a long black candle (body > 0.6 range) is followed by a long white
    one opening below its low and closing above its body's middle but below its open, else 0.
    TA-Lib CDLPIERCING: long = body > the mean body of the previous 10 candles."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    hit = (
        p.black()
        & p.long()
        & c.white()
        & c.long()
        & (c.open < p.low)
        & (c.close < p.open)
        & (c.close > p.close + p.body * PENETRATION)
    )
    return _column(candles, "pattern_piercing", g, hit.astype(np.float64))


@indicator(
    lookback=LOOKBACK,
    min_candles=CANDLES,
    params={"long_body": LONG_BODY, "penetration": PENETRATION},
)
def pattern_dark_cloud_cover(candles: pd.DataFrame) -> np.ndarray:
    """Dark cloud cover: −1 if a long white candle (body > 0.6 range) is followed by a black one
    opening above its high and closing below its body's middle but above its open, else 0.
    TA-Lib CDLDARKCLOUDCOVER (penetration 0.5): long = body > the mean body of 10 candles."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    hit = (
        p.white()
        & p.long()
        & c.black()
        & (c.open > p.high)
        & (c.close > p.open)
        & (c.close < p.close - p.body * PENETRATION)
    )
    return _column(candles, "pattern_dark_cloud_cover", g, np.where(hit, -1.0, 0.0))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"equal": EQUAL})
def pattern_tweezer_top(candles: pd.DataFrame) -> np.ndarray:
    """Tweezer top: −1 if a white candle is followed by a black one whose high equals its high
    within 0.05 × the white candle's range, else 0 (TA-Lib has no tweezer function)."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    hit = p.white() & c.black() & (np.abs(c.high - p.high) <= EQUAL * p.range)
    return _column(candles, "pattern_tweezer_top", g, np.where(hit, -1.0, 0.0))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"equal": EQUAL})
def pattern_tweezer_bottom(candles: pd.DataFrame) -> np.ndarray:
    """Tweezer bottom: +1 if a black candle is followed by a white one whose low equals its low
    within 0.05 × the black candle's range, else 0 (TA-Lib has no tweezer function)."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    hit = p.black() & c.white() & (np.abs(c.low - p.low) <= EQUAL * p.range)
    return _column(candles, "pattern_tweezer_bottom", g, hit.astype(np.float64))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"long_body": LONG_BODY, "doji": DOJI})
def pattern_doji_star(candles: pd.DataFrame) -> np.ndarray:
    """Doji star: −1 if a long white candle (body > 0.6 range) is followed by a doji (body ≤ 0.1
    range) whose body gaps up, +1 for a long black one and a gap down, else 0. TA-Lib
    CDLDOJISTAR: long against the mean body of 10 candles, doji against 0.1 × their mean range."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    base = p.long() & c.doji()
    bull = base & p.black() & (c.top < p.bottom)
    bear = base & p.white() & (c.bottom > p.top)
    return _column(candles, "pattern_doji_star", g, _signal(bull, bear))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params=_MARUBOZU)
def pattern_kicking(candles: pd.DataFrame) -> np.ndarray:
    """Kicking: +1 if a black marubozu (body > 0.6 range, shadows < 0.1 range) is followed by a
    white marubozu whose low is above its high, −1 for the mirror, else 0. TA-Lib CDLKICKING:
    body and shadows against the means of the previous 10 candles."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    both = _marubozu(c) & _marubozu(p)
    bull = both & p.black() & c.white() & (c.low > p.high)
    bear = both & p.white() & c.black() & (c.high < p.low)
    return _column(candles, "pattern_kicking", g, _signal(bull, bear))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"long_body": LONG_BODY, "equal": EQUAL})
def pattern_counterattack(candles: pd.DataFrame) -> np.ndarray:
    """Counterattack: current colour (±1) if two long candles (body > 0.6 range) of opposite
    colours close equal within 0.05 × the previous range, else 0. TA-Lib CDLCOUNTERATTACK: long
    against the mean body of 10 candles, equal against 0.05 × the mean range of 5."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    tol = EQUAL * p.range
    hit = (
        (c.color == -p.color)
        & p.long()
        & c.long()
        & (c.close <= p.close + tol)
        & (c.close >= p.close - tol)
    )
    return _column(candles, "pattern_counterattack", g, np.where(hit, c.color, 0.0))


@indicator(
    lookback=LOOKBACK,
    min_candles=CANDLES,
    params={"long_body": LONG_BODY, "short_body": SHORT_BODY},
)
def pattern_homing_pigeon(candles: pd.DataFrame) -> np.ndarray:
    """Homing pigeon: +1 if a long black candle (body > 0.6 range) is followed by a short black
    one (body ≤ 0.3 range) opening below its open and closing above its close, else 0. TA-Lib
    CDLHOMINGPIGEON: long/short against the mean body of the previous 10 candles."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    hit = p.black() & c.black() & p.long() & c.short() & (c.open < p.open) & (c.close > p.close)
    return _column(candles, "pattern_homing_pigeon", g, hit.astype(np.float64))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"equal": EQUAL})
def pattern_matching_low(candles: pd.DataFrame) -> np.ndarray:
    """Matching low: +1 if two black candles close equal within 0.05 × the previous range, else
    0. TA-Lib CDLMATCHINGLOW: equal against 0.05 × the mean range of 5 candles."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    tol = EQUAL * p.range
    hit = p.black() & c.black() & (c.close <= p.close + tol) & (c.close >= p.close - tol)
    return _column(candles, "pattern_matching_low", g, hit.astype(np.float64))


@indicator(
    lookback=LOOKBACK,
    min_candles=CANDLES,
    params={"long_body": LONG_BODY, "short_shadow": SHORT_SHADOW, "equal": EQUAL},
)
def pattern_separating_lines(candles: pd.DataFrame) -> np.ndarray:
    """Separating lines: current colour (±1) if the previous candle has the opposite colour, the
    opens are equal within 0.05 × the previous range and the current candle is a belt hold (body
    > 0.6 range, shadow at the open < 0.1 range), else 0. TA-Lib CDLSEPARATINGLINES: same rule
    against averages; it also counts close = open as white."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    tol = EQUAL * p.range
    tiny = SHORT_SHADOW * c.range
    hit = (
        (c.color == -p.color)
        & (c.open <= p.open + tol)
        & (c.open >= p.open - tol)
        & c.long()
        & ((c.white() & (c.lower < tiny)) | (c.black() & (c.upper < tiny)))
    )
    return _column(candles, "pattern_separating_lines", g, np.where(hit, c.color, 0.0))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={})
def pattern_inside_bar(candles: pd.DataFrame) -> np.ndarray:
    """Inside bar: 1 if high ≤ previous high and low ≥ previous low, not both equal, else 0."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    hit = (c.high <= p.high) & (c.low >= p.low) & ((c.high < p.high) | (c.low > p.low))
    return _column(candles, "pattern_inside_bar", g, hit.astype(np.float64))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={})
def pattern_outside_bar(candles: pd.DataFrame) -> np.ndarray:
    """Outside bar: 1 if high ≥ previous high and low ≤ previous low, not both equal, else 0."""
    g = _geometry(candles)
    c, p = g.c0, g.c1
    hit = (c.high >= p.high) & (c.low <= p.low) & ((c.high > p.high) | (c.low < p.low))
    return _column(candles, "pattern_outside_bar", g, hit.astype(np.float64))


# ---------------------------------------------------------------- three-candle patterns

_STARS = {"long_body": LONG_BODY, "short_body": SHORT_BODY, "penetration": STAR_PENETRATION}
_DOJI_STARS = {**_STARS, "doji": DOJI}


def _star(g: _Three, middle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Morning (bull) / evening (bear) star around a middle candle that passes `middle`."""
    a, b, c = g.c2, g.c1, g.c0
    base = a.long() & middle & (c.body > SHORT_BODY * c.range)
    bull = (
        base
        & a.black()
        & (b.top < a.bottom)
        & c.white()
        & (c.close > a.close + a.body * STAR_PENETRATION)
    )
    bear = (
        base
        & a.white()
        & (b.bottom > a.top)
        & c.black()
        & (c.close < a.close - a.body * STAR_PENETRATION)
    )
    return bull, bear


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params=_STARS)
def pattern_morning_star(candles: pd.DataFrame) -> np.ndarray:
    """Morning star: +1 if a long black candle (body > 0.6 range), then a short body (≤ 0.3
    range) gapping below it, then a white body > 0.3 range closing more than 30% into the first
    body, else 0. TA-Lib CDLMORNINGSTAR: long/short against the mean body of 10 candles."""
    g = _geometry(candles)
    bull, _ = _star(g, g.c1.short())
    return _column(candles, "pattern_morning_star", g, bull.astype(np.float64))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params=_STARS)
def pattern_evening_star(candles: pd.DataFrame) -> np.ndarray:
    """Evening star: −1 if a long white candle (body > 0.6 range), then a short body (≤ 0.3
    range) gapping above it, then a black body > 0.3 range closing more than 30% into the first
    body, else 0. TA-Lib CDLEVENINGSTAR: long/short against the mean body of 10 candles."""
    g = _geometry(candles)
    _, bear = _star(g, g.c1.short())
    return _column(candles, "pattern_evening_star", g, -bear.astype(np.float64))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params=_DOJI_STARS)
def pattern_morning_doji_star(candles: pd.DataFrame) -> np.ndarray:
    """Morning doji star: pattern_morning_star with a doji (body ≤ 0.1 range) in the middle;
    +1 or 0. TA-Lib CDLMORNINGDOJISTAR: doji against 0.1 × the mean range of 10 candles."""
    g = _geometry(candles)
    bull, _ = _star(g, g.c1.doji())
    return _column(candles, "pattern_morning_doji_star", g, bull.astype(np.float64))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params=_DOJI_STARS)
def pattern_evening_doji_star(candles: pd.DataFrame) -> np.ndarray:
    """Evening doji star: pattern_evening_star with a doji (body ≤ 0.1 range) in the middle;
    −1 or 0. TA-Lib CDLEVENINGDOJISTAR: doji against 0.1 × the mean range of 10 candles."""
    g = _geometry(candles)
    _, bear = _star(g, g.c1.doji())
    return _column(candles, "pattern_evening_doji_star", g, -bear.astype(np.float64))


@indicator(
    lookback=LOOKBACK,
    min_candles=CANDLES,
    params={"short_body": SHORT_BODY, "short_shadow": SHORT_SHADOW, "near": NEAR, "far": FAR},
)
def pattern_three_white_soldiers(candles: pd.DataFrame) -> np.ndarray:
    """Three white soldiers: +1 if three white candles with upper shadows < 0.1 range close ever
    higher, each opening above the previous open and at most 0.2 × the previous range above its
    close, each body > the previous body − 0.6 × the previous range, the last body > 0.3 range;
    else 0. TA-Lib CDL3WHITESOLDIERS: same rule against averages of 5–10 candles."""
    g = _geometry(candles)
    a, b, c = g.c2, g.c1, g.c0
    hit = (
        a.white()
        & b.white()
        & c.white()
        & (a.upper < SHORT_SHADOW * a.range)
        & (b.upper < SHORT_SHADOW * b.range)
        & (c.upper < SHORT_SHADOW * c.range)
        & (c.close > b.close)
        & (b.close > a.close)
        & (b.open > a.open)
        & (b.open <= a.close + NEAR * a.range)
        & (c.open > b.open)
        & (c.open <= b.close + NEAR * b.range)
        & (b.body > a.body - FAR * a.range)
        & (c.body > b.body - FAR * b.range)
        & (c.body > SHORT_BODY * c.range)
    )
    return _column(candles, "pattern_three_white_soldiers", g, hit.astype(np.float64))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"short_shadow": SHORT_SHADOW})
def pattern_three_black_crows(candles: pd.DataFrame) -> np.ndarray:
    """Three black crows: −1 if three black candles with lower shadows < 0.1 range close ever
    lower, each opening strictly inside the previous body, else 0. TA-Lib CDL3BLACKCROWS also
    needs a fourth, white candle before them whose high is above the first crow's close, and
    judges the shadows against 0.1 × the mean range of 10 candles."""
    g = _geometry(candles)
    a, b, c = g.c2, g.c1, g.c0
    hit = (
        a.black()
        & b.black()
        & c.black()
        & (a.lower < SHORT_SHADOW * a.range)
        & (b.lower < SHORT_SHADOW * b.range)
        & (c.lower < SHORT_SHADOW * c.range)
        & (b.open < a.open)
        & (b.open > a.close)
        & (c.open < b.open)
        & (c.open > b.close)
        & (a.close > b.close)
        & (b.close > c.close)
    )
    return _column(candles, "pattern_three_black_crows", g, np.where(hit, -1.0, 0.0))


@indicator(
    lookback=LOOKBACK,
    min_candles=CANDLES,
    params={"long_body": LONG_BODY, "short_body": SHORT_BODY},
)
def pattern_three_inside(candles: pd.DataFrame) -> np.ndarray:
    """Three inside up/down: +1 if a long black candle (body > 0.6 range), a short body (≤ 0.3
    range) strictly inside it, then a white candle closing above the first open; −1 mirrored;
    else 0. TA-Lib CDL3INSIDE: long/short against the mean body of the previous 10 candles."""
    g = _geometry(candles)
    a, b, c = g.c2, g.c1, g.c0
    base = a.long() & b.short() & (b.top < a.top) & (b.bottom > a.bottom)
    bull = base & a.black() & c.white() & (c.close > a.open)
    bear = base & a.white() & c.black() & (c.close < a.open)
    return _column(candles, "pattern_three_inside", g, _signal(bull, bear))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={})
def pattern_three_outside(candles: pd.DataFrame) -> np.ndarray:
    """Three outside up/down: +1 if a white body strictly engulfs the black body before it and
    the next candle closes higher, −1 mirrored, else 0. TA-Lib CDL3OUTSIDE's rule (no
    averages); only colour differs: TA-Lib also counts a close = open first candle as white."""
    g = _geometry(candles)
    a, b, c = g.c2, g.c1, g.c0
    bull = a.black() & b.white() & (b.close > a.open) & (b.open < a.close) & (c.close > b.close)
    bear = a.white() & b.black() & (b.open > a.close) & (b.close < a.open) & (c.close < b.close)
    return _column(candles, "pattern_three_outside", g, _signal(bull, bear))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params=_DOJI_STARS)
def pattern_abandoned_baby(candles: pd.DataFrame) -> np.ndarray:
    """Abandoned baby: +1 if a long black candle (body > 0.6 range), a doji (body ≤ 0.1 range)
    whose high is below its low, then a white body > 0.3 range whose low is above the doji's
    high, closing more than 30% into the first body; −1 mirrored; else 0. TA-Lib
    CDLABANDONEDBABY: long/short/doji against the means of the previous 10 candles."""
    g = _geometry(candles)
    a, b, c = g.c2, g.c1, g.c0
    base = a.long() & b.doji() & (c.body > SHORT_BODY * c.range)
    bull = (
        base
        & a.black()
        & c.white()
        & (c.close > a.close + a.body * STAR_PENETRATION)
        & (b.high < a.low)
        & (c.low > b.high)
    )
    bear = (
        base
        & a.white()
        & c.black()
        & (c.close < a.close - a.body * STAR_PENETRATION)
        & (b.low > a.high)
        & (c.high < b.low)
    )
    return _column(candles, "pattern_abandoned_baby", g, _signal(bull, bear))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params=_DOJI)
def pattern_tristar(candles: pd.DataFrame) -> np.ndarray:
    """Tristar: three dojis, every body ≤ 0.1 × the first candle's range (one yardstick, as in
    TA-Lib); −1 if the middle body gaps up from the first and the last body's top is below the
    middle's, +1 if it gaps down and the last body's bottom is above the middle's, else 0.
    TA-Lib CDLTRISTAR: yardstick 0.1 × the mean range of the 10 candles before the first."""
    g = _geometry(candles)
    a, b, c = g.c2, g.c1, g.c0
    tol = DOJI * a.range
    dojis = (a.body <= tol) & (b.body <= tol) & (c.body <= tol)
    bear = dojis & (b.bottom > a.top) & (c.top < b.top)
    bull = dojis & (b.top < a.bottom) & (c.bottom > b.bottom)
    return _column(candles, "pattern_tristar", g, _signal(bull, bear))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"long_body": LONG_BODY})
def pattern_two_crows(candles: pd.DataFrame) -> np.ndarray:
    """Two crows: −1 if a long white candle (body > 0.6 range), a black one whose body gaps up
    from it, then a black one opening inside the second body and closing inside the first;
    else 0. TA-Lib CDL2CROWS: long against the mean body of the previous 10 candles."""
    g = _geometry(candles)
    a, b, c = g.c2, g.c1, g.c0
    hit = (
        a.white()
        & a.long()
        & b.black()
        & (b.bottom > a.top)
        & c.black()
        & (c.open < b.open)
        & (c.open > b.close)
        & (c.close > a.open)
        & (c.close < a.close)
    )
    return _column(candles, "pattern_two_crows", g, np.where(hit, -1.0, 0.0))


@indicator(lookback=LOOKBACK, min_candles=CANDLES, params={"equal": EQUAL})
def pattern_stick_sandwich(candles: pd.DataFrame) -> np.ndarray:
    """Stick sandwich: +1 if black, white with its low above the first close, then black
    closing equal to the first close within 0.05 × the first range; else 0. TA-Lib
    CDLSTICKSANDWICH: equal against 0.05 × the mean range of 5 candles; close = open is white."""
    g = _geometry(candles)
    a, b, c = g.c2, g.c1, g.c0
    tol = EQUAL * a.range
    hit = (
        a.black()
        & b.white()
        & c.black()
        & (b.low > a.close)
        & (c.close <= a.close + tol)
        & (c.close >= a.close - tol)
    )
    return _column(candles, "pattern_stick_sandwich", g, hit.astype(np.float64))
