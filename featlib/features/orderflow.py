"""Trade features: volumes, VWAP, order flow and short returns, on one-second trade bars.

Trades are bucketed into bars (k − 1 s, k] (featlib.inputs.trade_bars), so a window of N
seconds ending at a whole-second grid time t holds exactly the trades in (t − N s, t]. Sums
are exact decimals. A market with no trade for 5 minutes is treated as a missing feed: then
every trade feature is null rather than a confident zero.
"""

from __future__ import annotations

import ibis
import ibis.expr.types as ir

from featlib.features.base import feature, latest, seconds_ago, within

FEED_MS = 300_000
SECOND = 1_000


def _alive(t: ir.Table) -> ir.BooleanValue:
    """At least one trade bar in the last 5 minutes."""
    return t.trades.count().over(within(t, FEED_MS)) > 0


def _sum(t: ir.Table, column: str, seconds: int) -> ir.Value:
    """Exact sum of `column` over the bars in (t − seconds, t]; 0 when there are none."""
    return t[column].sum().over(within(t, seconds * SECOND)).fill_null(0).cast("float64")


def _while_alive(t: ir.Table, value: ir.Value) -> ir.Value:
    return ibis.ifelse(_alive(t), value, ibis.null())


def _volume(t: ir.Table, name: str, seconds: int) -> ir.Table:
    return t.mutate(**{name: _while_alive(t, _sum(t, "volume", seconds))})


def _signed(t: ir.Table, name: str, seconds: int) -> ir.Table:
    flow = _sum(t, "buy_volume", seconds) - _sum(t, "sell_volume", seconds)
    return t.mutate(**{name: _while_alive(t, flow)})


def _vwap(t: ir.Table, name: str, seconds: int) -> ir.Table:
    volume = _sum(t, "volume", seconds)
    value = ibis.ifelse(volume > 0, _sum(t, "notional", seconds) / volume, ibis.null())
    return t.mutate(**{name: value})


def _returns(t: ir.Table, name: str, seconds: int) -> ir.Table:
    price = t.last_trade_price
    return t.mutate(**{name: price / seconds_ago(t, price, seconds) - 1})


@feature(source="trades", lookback="5m")
def last_trade_price(t: ir.Table) -> ir.Table:
    """Price of the latest trade in (t − 5 min, t]; price units; null without one (no feed)."""
    return t.mutate(last_trade_price=latest(t, "last_price", FEED_MS))


@feature(source="trades", lookback="5m", params={"seconds": 3})
def volume_3s(t: ir.Table) -> ir.Table:
    """Traded size in (t − 3 s, t]; base units, ≥ 0 (0 with no trades, null with no feed)."""
    return _volume(t, "volume_3s", 3)


@feature(source="trades", lookback="5m", params={"seconds": 15})
def volume_15s(t: ir.Table) -> ir.Table:
    """Traded size in (t − 15 s, t]; base units, ≥ 0 (0 with no trades, null with no feed)."""
    return _volume(t, "volume_15s", 15)


@feature(source="trades", lookback="5m", params={"seconds": 60})
def volume_1m(t: ir.Table) -> ir.Table:
    """Traded size in (t − 1 m, t]; base units, ≥ 0 (0 with no trades, null with no feed)."""
    return _volume(t, "volume_1m", 60)


@feature(source="trades", lookback="3s", params={"seconds": 3})
def vwap_3s(t: ir.Table) -> ir.Table:
    """Volume-weighted trade price in (t − 3 s, t]; price units; null without trades."""
    return _vwap(t, "vwap_3s", 3)


@feature(source="trades", lookback="15s", params={"seconds": 15})
def vwap_15s(t: ir.Table) -> ir.Table:
    """Volume-weighted trade price in (t − 15 s, t]; price units; null without trades."""
    return _vwap(t, "vwap_15s", 15)


@feature(source="trades", lookback="1m", params={"seconds": 60})
def vwap_1m(t: ir.Table) -> ir.Table:
    """Volume-weighted trade price in (t − 1 m, t]; price units; null without trades."""
    return _vwap(t, "vwap_1m", 60)


@feature(source="trades", lookback="5m", params={"seconds": 3})
def signed_volume_3s(t: ir.Table) -> ir.Table:
    """Buyer- minus seller-initiated size in (t − 3 s, t]; base units (0: none, null: no feed)."""
    return _signed(t, "signed_volume_3s", 3)


@feature(source="trades", lookback="5m", params={"seconds": 15})
def signed_volume_15s(t: ir.Table) -> ir.Table:
    """Buyer- minus seller-initiated size in (t − 15 s, t]; base units (null: no feed)."""
    return _signed(t, "signed_volume_15s", 15)


@feature(source="trades", lookback="5m", params={"seconds": 60})
def signed_volume_1m(t: ir.Table) -> ir.Table:
    """Buyer- minus seller-initiated size in (t − 1 m, t]; base units (null: no feed)."""
    return _signed(t, "signed_volume_1m", 60)


@feature(source="trades", lookback="5m", params={"seconds": 3})
def trade_count_3s(t: ir.Table) -> ir.Table:
    """Number of trades in (t − 3 s, t]; ≥ 0 (null with no feed)."""
    return t.mutate(trade_count_3s=_while_alive(t, _sum(t, "trades", 3)))


@feature(source="trades", lookback="1m", params={"seconds": 60})
def buy_sell_volume_ratio(t: ir.Table) -> ir.Table:
    """Buyer- / seller-initiated size in (t − 1 m, t]; ≥ 0; null without seller volume."""
    buy, sell = _sum(t, "buy_volume", 60), _sum(t, "sell_volume", 60)
    return t.mutate(buy_sell_volume_ratio=ibis.ifelse(sell > 0, buy / sell, ibis.null()))


@feature(source="trades", lookback="1m", params={"seconds": 60})
def net_aggressor_pressure(t: ir.Table) -> ir.Table:
    """(buy − sell) / (buy + sell) aggressor size in (t − 1 m, t]; −1..1; null without trades."""
    buy, sell = _sum(t, "buy_volume", 60), _sum(t, "sell_volume", 60)
    value = ibis.ifelse(buy + sell > 0, (buy - sell) / (buy + sell), ibis.null())
    return t.mutate(net_aggressor_pressure=value)


@feature(source="trades", lookback="301s", params={"seconds": 1}, depends=("last_trade_price",))
def returns_1s(t: ir.Table) -> ir.Table:
    """Last trade price at t / at t − 1 s − 1 (each within 5 min before); unitless."""
    return _returns(t, "returns_1s", 1)


@feature(source="trades", lookback="303s", params={"seconds": 3}, depends=("last_trade_price",))
def returns_3s(t: ir.Table) -> ir.Table:
    """Last trade price at t / at t − 3 s − 1 (each within 5 min before); unitless."""
    return _returns(t, "returns_3s", 3)


@feature(source="trades", lookback="6m", params={"seconds": 60}, depends=("last_trade_price",))
def returns_1m(t: ir.Table) -> ir.Table:
    """Last trade price at t / at t − 1 m − 1 (each within 5 min before); unitless."""
    return _returns(t, "returns_1m", 60)


@feature(source="trades", lookback="6m", params={"seconds": 60}, depends=("last_trade_price",))
def volatility_1m(t: ir.Table) -> ir.Table:
    """Sample std (ddof 1) of bar-to-bar returns of the last trade price over bars in
    (t − 1 m, t] (each bar vs the previous bar within 5 min); unitless, ≥ 0; needs 2 bars."""
    before = seconds_ago(t, t.last_trade_price, 1)
    r = t.mutate(_r=ibis.ifelse(t.last_price.notnull(), t.last_price / before - 1, ibis.null()))
    w = within(r, 60 * SECOND)
    vol = ibis.ifelse(r._r.count().over(w) >= 2, r._r.std(how="sample").over(w), ibis.null())
    return r.mutate(volatility_1m=vol).drop("_r")
