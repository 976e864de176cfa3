"""Canonical tables: what the raw store keeps per message type, and how rows are keyed.

Every raw table carries `ts` (when the information became known at the exchange: a message's
`ts`, a trade's `T`, a candle's close) and `received_at` (our receive clock) as UTC
millisecond timestamps, plus `symbol`. In Parquet the symbol lives in the Hive path
(`{type}/date=YYYY-MM-DD/symbol=SYM/`), not in the file.
"""

from __future__ import annotations

import re

import pyarrow as pa

TS = pa.timestamp("ms", tz="UTC")
F64 = pa.float64()
LIST_F64 = pa.list_(pa.float64())

_COMMON = [pa.field("symbol", pa.string(), nullable=False), pa.field("ts", TS, nullable=False)]
_RECEIVED = [pa.field("received_at", TS, nullable=False)]


def _schema(*fields: pa.Field) -> pa.Schema:
    return pa.schema([*_COMMON, *fields, *_RECEIVED])


def _f(name: str, type_: pa.DataType, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


BOOK = _schema(
    _f("update_id", pa.int64()),
    _f("seq", pa.int64(), True),
    _f("cts", TS, True),
    _f("depth", pa.int32()),
    _f("bid_price", LIST_F64),
    _f("bid_size", LIST_F64),
    _f("ask_price", LIST_F64),
    _f("ask_size", LIST_F64),
)

RAW_SCHEMAS: dict[str, pa.Schema] = {
    "klines": _schema(
        _f("start", TS),
        _f("interval", pa.string()),
        _f("open", F64),
        _f("high", F64),
        _f("low", F64),
        _f("close", F64),
        _f("volume", F64),
        _f("turnover", F64),
        _f("confirm", pa.bool_()),
        _f("update_ts", TS),
    ),
    "trades": _schema(
        _f("trade_id", pa.string()),
        _f("side", pa.string()),
        _f("price", F64),
        _f("size", F64),
        _f("tick_direction", pa.string(), True),
        _f("block_trade", pa.bool_(), True),
        _f("seq", pa.int64(), True),
    ),
    "orderbook_snapshots": BOOK,
    "orderbook_deltas": BOOK,
    "ticker": _schema(
        _f("type", pa.string()),
        _f("cross_seq", pa.int64(), True),
        *(
            _f(name, F64, True)
            for name in (
                "last_price",
                "mark_price",
                "index_price",
                "funding_rate",
                "bid1_price",
                "bid1_size",
                "ask1_price",
                "ask1_size",
                "open_interest",
                "open_interest_value",
                "turnover_24h",
                "volume_24h",
                "high_price_24h",
                "low_price_24h",
                "prev_price_24h",
                "price_24h_pcnt",
            )
        ),
        _f("next_funding_time", TS, True),
    ),
    "funding": _schema(
        _f("funding_rate", F64),
        _f("next_funding_time", TS, True),
        _f("source", pa.string()),
    ),
}

# The columns that identify one stored row. Re-ingesting a row with the same key is a no-op,
# so replaying a capture twice, or overlapping live recording and backfill, keeps one copy.
RAW_KEYS: dict[str, tuple[str, ...]] = {
    "klines": ("interval", "start", "confirm", "update_ts"),
    "trades": ("trade_id",),
    "orderbook_snapshots": ("ts", "update_id"),
    "orderbook_deltas": ("ts", "update_id"),
    "ticker": ("ts", "type", "cross_seq"),
    "funding": ("ts", "source"),
}

RAW_TYPES: tuple[str, ...] = tuple(RAW_SCHEMAS)


SYMBOL = re.compile(r"^[A-Z0-9][A-Z0-9_-]{1,39}$")


def check_symbol(symbol: str) -> str:
    """A Bybit symbol (BTCUSDT, 1000PEPEUSDT): safe to use in a partition path."""
    if not isinstance(symbol, str) or not SYMBOL.match(symbol):
        raise ValueError(f"not a symbol: {symbol!r} (expected e.g. BTCUSDT)")
    return symbol


def file_schema(kind: str) -> pa.Schema:
    """The schema inside a Parquet part file (the symbol is in the partition path)."""
    schema = RAW_SCHEMAS[kind]
    return schema.remove(schema.get_field_index("symbol"))


def empty(kind: str) -> pa.Table:
    return RAW_SCHEMAS[kind].empty_table()
