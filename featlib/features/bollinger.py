"""Bollinger bands (20 candles, 2 σ) of 1-minute closes: a bounded window, so plain Ibis.

σ is the population standard deviation (ddof 0), as in TA-Lib's BBANDS and pandas-ta's
default; tests compare with TA-Lib."""

from __future__ import annotations

import ibis.expr.types as ir

from featlib.features.base import candles, feature, when_complete

N, K = 20, 2.0
_PARAMS = {"length": N, "std": K}


def _band(k: ir.Table, name: str, sign: float) -> ir.Table:
    w = candles(k, N)
    value = k.close.mean().over(w) + sign * K * k.close.std(how="pop").over(w)
    return k.mutate(**{name: when_complete(k.close.count().over(w), N, value)})


@feature(source="kline", lookback="20m", params=_PARAMS)
def bb_upper(k: ir.Table) -> ir.Table:
    """SMA(20) + 2·σ(20) of closes; price units."""
    return _band(k, "bb_upper", 1.0)


@feature(source="kline", lookback="20m", params=_PARAMS)
def bb_lower(k: ir.Table) -> ir.Table:
    """SMA(20) − 2·σ(20) of closes; price units."""
    return _band(k, "bb_lower", -1.0)


@feature(source="kline", lookback="20m", params=_PARAMS)
def bb_width(k: ir.Table) -> ir.Table:
    """(upper − lower) / SMA(20) = 4·σ(20) / SMA(20); unitless, ≥ 0."""
    w = candles(k, N)
    width = 2 * K * k.close.std(how="pop").over(w) / k.close.mean().over(w)
    return k.mutate(bb_width=when_complete(k.close.count().over(w), N, width))
