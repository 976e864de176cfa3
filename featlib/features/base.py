"""How a feature is declared: once, as a function, with its input source and lookback.

Two kinds, both "table in, same table plus one column named after the feature out":

- `@feature`: an Ibis function over the source's event table (one row per candle, funding
  event, ...). Windows come from `trailing()`, a RANGE frame over event time that ends at the
  current row: nothing after the row can enter it.
- `@indicator`: a pandas function over one symbol's candles (pandas-ta lives here) returning
  its column: an array aligned with the candle rows (the engine adds it to the table, so 80
  indicators do not copy a frame 80 times). Recursive indicators have infinite memory;
  `min_candles` of the `lookback` window must be present or the value is null, which is what
  makes them bounded (see each docstring for the error bound).

`lookback` is the feature's promise: its value at grid time t depends only on input events
with timestamps in (t - lookback, t]. Tests check every promise on real data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import ibis
import ibis.expr.types as ir
import pandas as pd

from featlib.inputs import DENSE, SECOND_MS, arg_max
from featlib.timeutil import parse_duration

SOURCES = ("kline", "trades", "orderbook", "ticker", "funding")
"""Input sources a registry entry may name. Features of the internal source "clock" (time of
day) read no market data and list none."""
INTERNAL_SOURCES = (*SOURCES, "clock")


@dataclass(frozen=True)
class Feature:
    name: str
    source: str
    lookback_ms: int
    fn: Callable[..., Any]
    kind: Literal["ibis", "indicator"]
    params: Mapping[str, Any] = field(default_factory=dict)
    depends: tuple[str, ...] = ()
    min_candles: int | None = None
    warmup_ms: int | None = None
    """Stored history a value needs (None: the lookback). A latest-value feature (e.g. the
    funding rate last published within 9 h) is defined from its first event on."""

    @property
    def doc(self) -> str:
        """The docstring's first paragraph on one line."""
        first = (self.fn.__doc__ or "").strip().split("\n\n")[0]
        return " ".join(first.split())


FEATURES: dict[str, Feature] = {}


def _register(feature: Feature) -> None:
    if feature.name in FEATURES:
        raise ValueError(f"feature {feature.name!r} is declared twice")
    if feature.source not in INTERNAL_SOURCES:
        raise ValueError(f"feature {feature.name!r}: unknown source {feature.source!r}")
    if not feature.fn.__doc__:
        raise ValueError(f"feature {feature.name!r} needs a one-line docstring")
    FEATURES[feature.name] = feature


def feature(
    *,
    source: str,
    lookback: str,
    params: Mapping[str, Any] | None = None,
    depends: tuple[str, ...] = (),
    warmup: str | None = None,
) -> Callable:
    """Declare an Ibis feature: `fn(table) -> table.mutate(<fn name>=...)`. `warmup`: the
    stored history a value needs when less than the lookback (Feature.warmup_ms)."""

    def wrap(fn: Callable[[ir.Table], ir.Table]) -> Callable[[ir.Table], ir.Table]:
        _register(
            Feature(
                fn.__name__,
                source,
                parse_duration(lookback),
                fn,
                "ibis",
                dict(params or {}),
                depends,
                warmup_ms=None if warmup is None else parse_duration(warmup),
            )
        )
        return fn

    return wrap


def indicator(
    *, lookback: str, min_candles: int, params: Mapping[str, Any] | None = None
) -> Callable:
    """Declare a pandas(-ta) candle indicator: `fn(candles_of_one_symbol) -> its column`."""

    def wrap(fn: Callable[[pd.DataFrame], Any]) -> Callable[[pd.DataFrame], Any]:
        _register(
            Feature(
                fn.__name__,
                "kline",
                parse_duration(lookback),
                fn,
                "indicator",
                dict(params or {}),
                (),
                min_candles,
            )
        )
        return fn

    return wrap


def trailing(t: ir.Table, span: str) -> Any:
    """Rows of the same symbol with event time in [ts - span, ts]: a frame ending at this row."""
    return ibis.window(group_by=t.symbol, order_by=t.ts, range=(-parse_duration(span), 0))


def candles(t: ir.Table, n: int) -> Any:
    """The last `n` one-minute candles up to and including this one (by close time)."""
    return ibis.window(group_by=t.symbol, order_by=t.ts, range=(-(n - 1) * 60_000, 0))


def within(t: ir.Table, span_ms: int, until_ms: int = 0) -> Any:
    """Rows of the same symbol with event time in (ts − until − span, ts − until]. On a dense
    timeline (one row per second, featlib.inputs.DENSE) that is a frame of rows, which the
    database evaluates several times faster than a range of times."""
    if DENSE in t.columns:
        if span_ms % SECOND_MS or until_ms % SECOND_MS:
            raise ValueError(f"windows over one-second rows take whole seconds: {span_ms} ms")
        first, last = (until_ms + span_ms) // SECOND_MS - 1, until_ms // SECOND_MS
        return ibis.window(group_by=t.symbol, order_by=t.ts, rows=(-first, -last))
    return ibis.window(
        group_by=t.symbol, order_by=t.ts, range=(-(until_ms + span_ms - 1), -until_ms)
    )


def latest(t: ir.Table, column: str, span_ms: int, until_ms: int = 0) -> ir.Value:
    """The latest non-null `column` with event time in (ts − until − span, ts − until].

    On a dense timeline a frame of rows; on an event timeline (events and grid rows, `_at`) the
    newest value up to this row, null unless it is within the span: the same value, with a
    running frame the database evaluates in one pass where a span of time costs a search and a
    tree per row. Grid rows sort after events of the same time, which they see."""
    key = ibis.ifelse(t[column].notnull(), t.ts, ibis.null())
    if DENSE in t.columns:
        return arg_max(t[column], key).over(within(t, span_ms, until_ms))
    if until_ms or "_at" not in t.columns:
        raise ValueError("latest() on an event timeline reads up to the row itself (`_at` rows)")
    upto = ibis.window(group_by=t.symbol, order_by=[t.ts, t._at], rows=(None, 0))
    return ibis.ifelse(
        key.max().over(upto) > t.ts - span_ms, arg_max(t[column], key).over(upto), ibis.null()
    )


def seconds_ago(t: ir.Table, value: ir.Value, seconds: int) -> ir.Value:
    """`value` as it was `seconds` earlier: on a dense timeline (one row per second), the row
    that many rows back."""
    if DENSE not in t.columns:
        raise ValueError("seconds_ago() needs a dense one-row-per-second timeline")
    if not seconds:
        return value
    return value.lag(seconds).over(ibis.window(group_by=t.symbol, order_by=t.ts))


def when_complete(count: ir.IntegerValue, needed: int, value: ir.Value) -> ir.Value:
    """`value` if `count` rows were present, else null: missing input is never papered over."""
    return ibis.ifelse(count == needed, value, ibis.null())
