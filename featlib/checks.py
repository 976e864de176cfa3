"""The identity rule, checked: a feature at t must not change when

- everything after t is removed (causality: no look-ahead), or
- everything at or before t − lookback is removed too (its lookback is enough).

Both run the one compute path over in-memory tables, which is exactly what the live service
does with its buffers. Order-book features read the book as featlib.book rebuilds it from
snapshots and deltas: for causality the book is rebuilt from the truncated messages; for the
lookback the rebuilt book (the state the live service holds) is what is truncated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from featlib import compute
from featlib.features import FEATURES
from featlib.inputs import DERIVED_SCHEMAS, TABLE_SCHEMAS

RTOL = 1e-9
_CON: duckdb.DuckDBPyConnection | None = None


def same(a: float | None, b: float | None, rtol: float = RTOL) -> bool:
    """Equal to `rtol` relative (exact for zeros); null equals only null."""
    if a is None or b is None:
        return a is None and b is None
    if a == b:
        return True
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    return abs(a - b) <= rtol * max(abs(a), abs(b))


def window(
    tables: Mapping[str, pa.Table], after_ms: int | None, until_ms: int
) -> dict[str, pa.Table]:
    """Rows with after_ms < ts <= until_ms (after_ms None: no lower bound)."""
    out = {}
    for kind, table in tables.items():
        ts = pc.cast(table["ts"], pa.int64())
        keep = pc.less_equal(ts, until_ms)
        if after_ms is not None:
            keep = pc.and_(keep, pc.greater(ts, after_ms))
        out[kind] = table.filter(keep)
    return out


def with_book(
    tables: Mapping[str, pa.Table], symbol: str, times: Sequence[int]
) -> dict[str, pa.Table]:
    """Add `book_samples`/`book_changes` rebuilt from raw snapshots and deltas at `times`."""
    out = dict(tables)
    if "book_samples" in out or "orderbook_deltas" not in out:
        return out
    from featlib import book

    messages = book.stream_messages(
        out.get("orderbook_snapshots", TABLE_SCHEMAS["orderbook_snapshots"].empty_table()),
        out["orderbook_deltas"],
        symbol,
    )
    samples, changes, _ = book.replay(messages, pa.array(sorted(times), pa.int64()).to_numpy())
    for name, table in (("book_samples", samples), ("book_changes", changes)):
        schema = DERIVED_SCHEMAS[name]
        table = table.add_column(0, "symbol", pa.array([symbol] * len(table), pa.string()))
        out[name] = table.select(schema.names).cast(schema)
    return out


def _connection() -> duckdb.DuckDBPyConnection:
    """One in-memory database for all checks (opening one costs ~20 ms)."""
    global _CON
    if _CON is None:
        _CON = duckdb.connect()
    return _CON


def features_at(
    names: Sequence[str], tables: Mapping[str, pa.Table], symbol: str, times: Iterable[int]
) -> dict[str, list[float | None]]:
    """compute() over in-memory tables at the given grid times (returned in time order)."""
    p = compute.plan(names)
    times = sorted(set(times))
    if "orderbook" in p.sources:
        tables = with_book(tables, symbol, times)
    con = _connection()
    try:
        for kind in p.raw_tables:
            con.register(kind, tables.get(kind, TABLE_SCHEMAS[kind].empty_table()))
        grid = pa.table(
            {
                "symbol": pa.array([symbol] * len(times), pa.string()),
                "ts": pa.array(times, pa.int64()),
            }
        )
        out = compute.compute(p, con, grid)
    finally:
        for kind in p.raw_tables:
            con.unregister(kind)
    return {name: out[name].to_pylist() for name in names}


@dataclass(frozen=True)
class Violation:
    feature: str
    ts: int
    full: float | None
    restricted: float | None
    check: str

    def __str__(self) -> str:
        return (
            f"{self.feature} at {self.ts}: full history {self.full!r}, "
            f"{self.check} {self.restricted!r}"
        )


def violations(
    names: str | Sequence[str],
    tables: Mapping[str, pa.Table],
    symbol: str,
    times: Sequence[int],
    lookback_ms: int | None = None,
    rtol: float = RTOL,
) -> list[Violation]:
    """Causality and lookback violations of the features at `times`.

    Each feature is checked against its declared lookback, or `lookback_ms` when given (pass
    a shorter one to see the check fail)."""
    names = [names] if isinstance(names, str) else list(names)
    times = sorted(set(times))
    full = features_at(names, tables, symbol, times)
    raw = {k: v for k, v in tables.items() if k not in DERIVED_SCHEMAS}

    def lookback(name: str) -> int:
        return FEATURES[name].lookback_ms if lookback_ms is None else lookback_ms

    groups = [
        (span, list(group)) for span, group in groupby(sorted(names, key=lookback), key=lookback)
    ]
    found = []
    for i, t in enumerate(times):
        causal = features_at(names, window(raw, None, t), symbol, [t])
        state = with_book(tables, symbol, [t])
        for name in names:
            if not same(full[name][i], causal[name][0], rtol):
                found.append(
                    Violation(name, t, full[name][i], causal[name][0], "data up to t only")
                )
        for span, group in groups:
            bounded = features_at(group, window(state, t - span, t), symbol, [t])
            for name in group:
                if not same(full[name][i], bounded[name][0], rtol):
                    found.append(
                        Violation(name, t, full[name][i], bounded[name][0], f"last {span} ms only")
                    )
    return found
