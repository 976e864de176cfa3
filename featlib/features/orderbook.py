"""Order-book features from the book as it stood at the grid time (featlib.book keeps it, from
snapshots and deltas, in batch replay and live alike). Top 10 levels per side. While the book
is desynchronised (an update-id gap, until the next snapshot) every book feature is null."""

from __future__ import annotations

import ibis
import ibis.expr.types as ir

from featlib.features.base import feature, within

LEVELS = 10
CHURN_WINDOW_MS = 60_000


def _synced(b: ir.Table, value: ir.Value) -> ir.Value:
    return ibis.ifelse(b.desynced, ibis.null(), value)


def _depth(b: ir.Table, side: str, n: int) -> ir.Value:
    """Size on the best n levels of a side (levels that exist); null for an empty side."""
    total = b[f"{side}_sz_1"]
    for i in range(2, n + 1):
        total = total + b[f"{side}_sz_{i}"].fill_null(0.0)
    return total


def _slope(b: ir.Table, side: str, name: str) -> ir.Table:
    """OLS slope of level size on relative distance from the best price over the top 10 levels,
    null under 3 levels. Per-level terms and sums are columns first, so the SQL stays small."""
    best = b[f"{side}_px_1"]
    terms = {}
    for i in range(1, LEVELS + 1):
        px, sz = b[f"{side}_px_{i}"], b[f"{side}_sz_{i}"]
        present = px.notnull() & sz.notnull()
        terms[f"_w{i}"] = ibis.ifelse(present, 1.0, 0.0)
        terms[f"_x{i}"] = ibis.ifelse(present, (px - best).abs() / best, 0.0)
        terms[f"_y{i}"] = ibis.ifelse(present, sz, 0.0)
    t = b.mutate(**terms)
    levels = range(1, LEVELS + 1)
    t = t.mutate(
        _n=sum((t[f"_w{i}"] for i in levels), ibis.literal(0.0)),
        _sx=sum((t[f"_x{i}"] for i in levels), ibis.literal(0.0)),
        _sy=sum((t[f"_y{i}"] for i in levels), ibis.literal(0.0)),
        _sxy=sum((t[f"_x{i}"] * t[f"_y{i}"] for i in levels), ibis.literal(0.0)),
        _sxx=sum((t[f"_x{i}"] * t[f"_x{i}"] for i in levels), ibis.literal(0.0)),
    )
    denominator = t._n * t._sxx - t._sx * t._sx
    slope = ibis.ifelse(
        (t._n >= 3) & (denominator > 0), (t._n * t._sxy - t._sx * t._sy) / denominator, ibis.null()
    )
    t = t.mutate(**{name: _synced(t, slope)})
    return t.drop(*terms, "_n", "_sx", "_sy", "_sxy", "_sxx")


@feature(source="orderbook", lookback="1s")
def mid_price(b: ir.Table) -> ir.Table:
    """(best bid + best ask) / 2; price units."""
    return b.mutate(mid_price=_synced(b, (b.bid_px_1 + b.ask_px_1) / 2))


@feature(source="orderbook", lookback="1s")
def spread_abs(b: ir.Table) -> ir.Table:
    """Best ask − best bid; price units, ≥ 0 on an uncrossed book."""
    return b.mutate(spread_abs=_synced(b, b.ask_px_1 - b.bid_px_1))


@feature(source="orderbook", lookback="1s")
def spread_rel(b: ir.Table) -> ir.Table:
    """(best ask − best bid) / mid price; unitless, ≥ 0 (1e-6 ≈ one BTC tick)."""
    mid = (b.bid_px_1 + b.ask_px_1) / 2
    return b.mutate(spread_rel=_synced(b, (b.ask_px_1 - b.bid_px_1) / mid))


@feature(source="orderbook", lookback="1s", params={"levels": 5})
def depth_bid_top5(b: ir.Table) -> ir.Table:
    """Total bid size on the best 5 levels; base units, ≥ 0."""
    return b.mutate(depth_bid_top5=_synced(b, _depth(b, "bid", 5)))


@feature(source="orderbook", lookback="1s", params={"levels": 10})
def depth_bid_top10(b: ir.Table) -> ir.Table:
    """Total bid size on the best 10 levels; base units, ≥ 0."""
    return b.mutate(depth_bid_top10=_synced(b, _depth(b, "bid", 10)))


@feature(source="orderbook", lookback="1s", params={"levels": 5})
def depth_ask_top5(b: ir.Table) -> ir.Table:
    """Total ask size on the best 5 levels; base units, ≥ 0."""
    return b.mutate(depth_ask_top5=_synced(b, _depth(b, "ask", 5)))


@feature(source="orderbook", lookback="1s", params={"levels": 10})
def depth_ask_top10(b: ir.Table) -> ir.Table:
    """Total ask size on the best 10 levels; base units, ≥ 0."""
    return b.mutate(depth_ask_top10=_synced(b, _depth(b, "ask", 10)))


@feature(source="orderbook", lookback="1s", params={"levels": 5})
def depth_imbalance_top5(b: ir.Table) -> ir.Table:
    """(bid − ask) / (bid + ask) size on the best 5 levels; −1..1."""
    bid, ask = _depth(b, "bid", 5), _depth(b, "ask", 5)
    return b.mutate(depth_imbalance_top5=_synced(b, (bid - ask) / (bid + ask)))


@feature(source="orderbook", lookback="1s", params={"levels": 10})
def slope_bid(b: ir.Table) -> ir.Table:
    """OLS slope of bid size on (best − price) / best over the top 10 bid levels; size per unit
    relative distance; null under 3 levels."""
    return _slope(b, "bid", "slope_bid")


@feature(source="orderbook", lookback="1s", params={"levels": 10})
def slope_ask(b: ir.Table) -> ir.Table:
    """OLS slope of ask size on (price − best) / best over the top 10 ask levels; size per unit
    relative distance; null under 3 levels."""
    return _slope(b, "ask", "slope_ask")


@feature(source="orderbook", lookback="1m", params={"seconds": 60})
def orderbook_churn_rate(b: ir.Table) -> ir.Table:
    """Best bid or ask price changes per second over (t − 60 s, t] (changes while the book was
    desynchronised are not counted); 1/s, ≥ 0."""
    changes = b._change.sum().over(within(b, CHURN_WINDOW_MS)).cast("float64")
    return b.mutate(orderbook_churn_rate=_synced(b, changes / (CHURN_WINDOW_MS / 1000)))
