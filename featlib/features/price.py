"""Price and volume features from confirmed one-minute candles (`ts` = the candle's close)."""

from __future__ import annotations

import ibis.expr.types as ir

from featlib.features.base import candles, feature, when_complete

MINUTE = 60_000


def candle_returns(k: ir.Table) -> ir.Table:
    """`_ret_1m`: close / previous close − 1 when the previous candle closed exactly 1m earlier."""
    w = candles(k, 2)
    prev_ts, prev_close = k.ts.first().over(w), k.close.first().over(w)
    return k.mutate(_ret_1m=when_complete(k.ts - prev_ts, MINUTE, k.close / prev_close - 1))


def _close_return(k: ir.Table, name: str, minutes: int, scale: float = 1.0) -> ir.Table:
    """scale · (close_t / close_(t − minutes) − 1), null unless that candle exists."""
    w = candles(k, minutes + 1)
    first_ts, first_close = k.ts.first().over(w), k.close.first().over(w)
    value = when_complete(k.ts - first_ts, minutes * MINUTE, scale * (k.close / first_close - 1))
    return k.mutate(**{name: value})


def return_volatility(k: ir.Table, name: str, n: int) -> ir.Table:
    """Sample std of the last n one-minute close-to-close returns, null unless all n exist."""
    r = candle_returns(k)
    w = candles(r, n)
    vol = when_complete(r._ret_1m.count().over(w), n, r._ret_1m.std(how="sample").over(w))
    return r.mutate(**{name: vol}).drop("_ret_1m")


def _relative_volume(k: ir.Table, name: str, n: int) -> ir.Table:
    w = candles(k, n)
    ratio = when_complete(k.volume.count().over(w), n, k.volume / k.volume.mean().over(w))
    return k.mutate(**{name: ratio})


@feature(source="kline", lookback="6m", params={"minutes": 5})
def returns_5m(k: ir.Table) -> ir.Table:
    """Close-to-close return over 5 minutes, close_t / close_(t−5m) − 1; unitless, about ±0.01."""
    return _close_return(k, "returns_5m", 5)


@feature(source="kline", lookback="6m", params={"minutes": 5})
def volatility_5m(k: ir.Table) -> ir.Table:
    """Sample std (ddof 1) of the last five 1-minute close-to-close returns; unitless, ≥ 0."""
    return return_volatility(k, "volatility_5m", 5)


@feature(source="kline", lookback="20m", params={"candles": 20})
def volume_ratio_20(k: ir.Table) -> ir.Table:
    """Candle volume / mean volume of the last 20 candles (this one included); unitless, ≥ 0."""
    return _relative_volume(k, "volume_ratio_20", 20)


@feature(source="kline", lookback="6h", depends=("ema_21",))
def price_ema21_ratio(k: ir.Table) -> ir.Table:
    """Close / ema_21; unitless, near 1 (above 1 when price is above its EMA)."""
    return k.mutate(price_ema21_ratio=k.close / k.ema_21)


@feature(source="kline", lookback="4m", params={"candles": 3})
def returns_3_candles(k: ir.Table) -> ir.Table:
    """Close-to-close return over the last 3 candles, close_t / close_(t−3m) − 1; unitless."""
    return _close_return(k, "returns_3_candles", 3)


@feature(source="kline", lookback="21m", params={"candles": 20})
def volatility_20_candles(k: ir.Table) -> ir.Table:
    """Sample std (ddof 1) of the last twenty 1-minute close-to-close returns; unitless, ≥ 0."""
    return return_volatility(k, "volatility_20_candles", 20)


@feature(source="kline", lookback="100m", params={"candles": 100})
def volume_zscore(k: ir.Table) -> ir.Table:
    """(volume − mean) / sample std of volume over the last 100 candles (this one included)."""
    w = candles(k, 100)
    z = (k.volume - k.volume.mean().over(w)) / k.volume.std(how="sample").over(w)
    return k.mutate(volume_zscore=when_complete(k.volume.count().over(w), 100, z))


@feature(source="kline", lookback="6m", params={"minutes": 5})
def roc_5m(k: ir.Table) -> ir.Table:
    """Rate of change over 5 minutes, 100 · (close_t / close_(t−5m) − 1); percent."""
    return _close_return(k, "roc_5m", 5, 100.0)


@feature(source="kline", lookback="16m", params={"minutes": 15})
def roc_15m(k: ir.Table) -> ir.Table:
    """Rate of change over 15 minutes, 100 · (close_t / close_(t−15m) − 1); percent."""
    return _close_return(k, "roc_15m", 15, 100.0)


@feature(source="kline", lookback="61m", params={"minutes": 60})
def roc_1h(k: ir.Table) -> ir.Table:
    """Rate of change over 1 hour, 100 · (close_t / close_(t−1h) − 1); percent."""
    return _close_return(k, "roc_1h", 60, 100.0)


@feature(source="kline", lookback="1h", params={"candles": 60})
def relative_volume_1h(k: ir.Table) -> ir.Table:
    """Candle volume / mean volume of the last 60 candles (this one included); ≥ 0."""
    return _relative_volume(k, "relative_volume_1h", 60)


@feature(source="kline", lookback="24h", params={"candles": 1440})
def relative_volume_24h(k: ir.Table) -> ir.Table:
    """Candle volume / mean volume of the last 1440 candles (this one included); ≥ 0."""
    return _relative_volume(k, "relative_volume_24h", 1440)
