"""Feature inputs: raw tables (schema.RAW_SCHEMAS) -> the event tables features read.

One Ibis expression per source, run on DuckDB over whatever holds the raw rows: Parquet
files of the raw store (datasets) or Arrow buffers in memory (the live service). Event time is
integer milliseconds (`ts`), so windows and as-of joins work on plain integers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir
import pyarrow as pa

from featlib.schema import RAW_SCHEMAS

_UTC_MS = dt.Timestamp(timezone="UTC", scale=3)


@ibis.udf.scalar.builtin
def epoch_ms(ts: _UTC_MS) -> dt.int64:  # type: ignore[empty-body]
    """DuckDB's epoch_ms(timestamptz): milliseconds since the epoch."""


@ibis.udf.scalar.builtin
def isfinite(x: dt.float64) -> dt.boolean:  # type: ignore[empty-body]
    """DuckDB's isfinite(double): false for NaN and ±inf, null for null."""


@ibis.udf.agg.builtin(name="arg_max")
def _arg_max_float(arg: dt.float64, key: dt.int64) -> dt.float64:  # type: ignore[empty-body]
    """DuckDB's arg_max(arg, key) on doubles."""


@ibis.udf.agg.builtin(name="arg_max")
def _arg_max_int(arg: dt.int64, key: dt.int64) -> dt.int64:  # type: ignore[empty-body]
    """DuckDB's arg_max(arg, key) on integers."""


def arg_max(arg: ir.Value, key: ir.Value) -> ir.Value:
    """`arg` at the row of the largest `key`, rows where either is null left out (DuckDB's
    arg_max: a plain aggregate, where Ibis's argmax compiles to an ordered FIRST that windows
    evaluate per frame, several times slower)."""
    if arg.type().is_floating():
        return _arg_max_float(arg, key)
    if arg.type().is_integer():
        return _arg_max_int(arg.cast("int64"), key)
    raise TypeError(f"arg_max takes numbers, got {arg.type()}")


BOOK_LEVELS = 10
_SIDES = ("bid_px", "bid_sz", "ask_px", "ask_sz")
BOOK_LEVEL_COLUMNS = tuple(f"{side}_{i}" for side in _SIDES for i in range(1, BOOK_LEVELS + 1))

# Tables derived from the raw book messages by featlib.book (batch replay or the live book):
# the book as it stood at each grid time, and the moments its best bid or ask price changed.
DERIVED_SCHEMAS: dict[str, pa.Schema] = {
    "book_samples": pa.schema(
        [pa.field("symbol", pa.string()), pa.field("ts", pa.int64())]
        + [pa.field(c, pa.float64()) for c in BOOK_LEVEL_COLUMNS]
        + [pa.field("desynced", pa.bool_())]
    ),
    "book_changes": pa.schema(
        [
            pa.field("symbol", pa.string()),
            pa.field("ts", pa.int64()),
            pa.field("desynced", pa.bool_()),
        ]
    ),
}
TABLE_SCHEMAS: dict[str, pa.Schema] = {**RAW_SCHEMAS, **DERIVED_SCHEMAS}


def raw_table(kind: str) -> ir.Table:
    """An unbound Ibis table named after input table `kind`, with its canonical schema."""
    return ibis.table(ibis.Schema.from_pyarrow(TABLE_SCHEMAS[kind]), name=kind)


@dataclass(frozen=True)
class Source:
    """Where a feature's rows come from and how they meet the grid.

    frame "asof": one row per event; a grid time takes the latest event at or before it that
    is still current (`validity_ms`, None = the feature's lookback). frame "timeline": events
    and grid times in one table ordered by time, so windows ending at a grid row see exactly
    the events in (t − window, t]; the grid rows are added (`grid_rows`) or are already there
    (book samples, marked `_at`). frame "clock": the grid alone.
    """

    name: str
    raw: tuple[str, ...]
    events: Callable[[], ir.Table] | None
    frame: str = "asof"
    validity_ms: int | None = None
    grid_rows: bool = True
    whole_seconds: bool = False
    """Grid times must be whole seconds (the source is bucketed by second). Such a timeline is
    dense: one row per second (featlib.compute), so time windows are row windows (DENSE)."""


def kline_events() -> ir.Table:
    """Confirmed 1-minute candles, one per (symbol, start): the first confirmed version
    received wins, so a later re-send (e.g. backfill) cannot change what was known."""
    k = raw_table("klines")
    k = k.filter(k.confirm & (k.interval == "1"))
    first = ibis.row_number().over(
        group_by=[k.symbol, k.start], order_by=[k.received_at, k.update_ts, k.close]
    )
    k = k.mutate(_n=first).filter(ibis._._n == 0)
    return k.select(
        "symbol",
        ts=epoch_ms(k.ts),
        open=k.open,
        high=k.high,
        low=k.low,
        close=k.close,
        volume=k.volume,
        turnover=k.turnover,
    )


def funding_events() -> ir.Table:
    """Funding rates from funding messages / REST history and from tickers that carry one.
    One row per (symbol, ts); at equal ts a funding message beats a ticker."""
    f = raw_table("funding")
    t = raw_table("ticker")
    t = t.filter(t.funding_rate.notnull())
    rows = f.select(
        "symbol",
        ts=epoch_ms(f.ts),
        rate=f.funding_rate.cast("float64"),
        next_funding_time=epoch_ms(f.next_funding_time),
        _p=ibis.literal(0),
        _r=epoch_ms(f.received_at),
    ).union(
        t.select(
            "symbol",
            ts=epoch_ms(t.ts),
            rate=t.funding_rate,
            next_funding_time=epoch_ms(t.next_funding_time),
            _p=ibis.literal(1),
            _r=epoch_ms(t.received_at),
        )
    )
    first = ibis.row_number().over(
        group_by=[rows.symbol, rows.ts], order_by=[rows._p, rows._r, rows.rate]
    )
    rows = rows.mutate(_n=first).filter(ibis._._n == 0)
    return rows.select("symbol", "ts", "rate", "next_funding_time")


DENSE = "_dense"
"""Marker column of a dense one-row-per-second timeline (featlib.features.base.within)."""
SECOND_MS = 1_000

EXACT = dt.Decimal(38, 10)
"""Sums of sizes and notionals are exact decimals: the same total whatever the summation order,
so a window over a live buffer and over a day of history give the same bits."""


def trade_bars() -> ir.Table:
    """Trades in one-second bars (k − 1s, k], stamped k: volumes by aggressor side, notional
    (exact decimals), count and the last price (latest trade by time, then seq, then id)."""
    t = raw_table("trades")
    ms = epoch_ms(t.ts)
    size = t.size.cast(EXACT)
    zero = ibis.literal(0).cast(EXACT)
    t = t.mutate(
        _k=((ms + 999) // 1000) * 1000,
        _ms=ms,
        _buy=t.side == "Buy",
        _size=size,
        _notional=(t.price * t.size).cast(EXACT),
    )
    return (
        t.group_by(["symbol", "_k"])
        .aggregate(
            volume=t._size.sum(),
            buy_volume=ibis.ifelse(t._buy, t._size, zero).sum(),
            sell_volume=ibis.ifelse(t._buy, zero, t._size).sum(),
            notional=t._notional.sum(),
            trades=t.count(),
            last_price=t.price.first(
                order_by=[ibis.desc(t._ms), ibis.desc(t.seq), ibis.desc(t.trade_id)]
            ),
        )
        .rename(ts="_k")
        .select(
            "symbol",
            "ts",
            "volume",
            "buy_volume",
            "sell_volume",
            "notional",
            "trades",
            "last_price",
        )
    )


def book_events() -> ir.Table:
    """The book per whole second k: its levels as sampled at k (grid times) and `_change`, the
    best bid or ask price changes in (k − 1 s, k] (those while desynchronised not counted)."""
    s = raw_table("book_samples")
    c = raw_table("book_changes")
    c = c.mutate(_k=((c.ts + 999) // SECOND_MS) * SECOND_MS, _n=ibis.ifelse(c.desynced, 0, 1))
    bars = c.group_by([c.symbol, c._k]).aggregate(_change=c._n.sum()).rename(_s="symbol")
    both = s.outer_join(bars, [s.symbol == bars._s, s.ts == bars._k])
    return both.select(
        symbol=ibis.coalesce(both.symbol, both._s),
        ts=ibis.coalesce(both.ts, both._k),
        **{col: both[col] for col in BOOK_LEVEL_COLUMNS},
        desynced=both.desynced,
        _change=both._change.fill_null(0),
    )


SOURCES: dict[str, Source] = {
    "kline": Source("kline", ("klines",), kline_events, "asof", validity_ms=60_000),
    "funding": Source("funding", ("funding", "ticker"), funding_events, "timeline"),
    "trades": Source("trades", ("trades",), trade_bars, "timeline", whole_seconds=True),
    "orderbook": Source(
        "orderbook", ("book_samples", "book_changes"), book_events, "timeline", whole_seconds=True
    ),
    "clock": Source("clock", (), None, "clock"),
}
