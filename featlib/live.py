"""Live features: per-symbol state fed one parsed message at a time, the same compute call.

    engine = LiveEngine(plan, registry_version="1.0.0")
    engine.on_message(parsed, received_wall_ms)   # apply; ticks that became complete queue up
    vectors = engine.take_vectors()               # compute every queued tick in one call

Event time decides everything. Vectors are due at every multiple t of the cadences' common
step (1s for the default 1s/3s/15s/1m). A vector for t is computed once every input stream
the plan reads for that symbol (book, trades, klines, tickers/funding) has moved past t, or
has been silent for `quiet_ms` of wall time (so a quiet or unsubscribed stream cannot stall the
others; `release()` re-checks on a timer), and
then it holds exactly the events with timestamps <= t: the batch builder's definition. The
book is sampled at t when its stream crosses t (before the first message after t is applied),
so its state is the state at t. Buffers keep each raw table for the plan's lookback, and the
vectors come from featlib.compute over them: one code path with the dataset builder.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field

from featlib import compute, raw
from featlib.bybit import Parsed
from featlib.inputs import DERIVED_SCHEMAS, TABLE_SCHEMAS
from featlib.schema import RAW_KEYS, RAW_SCHEMAS

SECOND = 1_000
CADENCES_MS = (1_000, 3_000, 15_000, 60_000)
# which stream a raw table arrives on (a stream is what a vector waits for)
STREAM_OF = {
    "klines": "kline",
    "trades": "trades",
    "ticker": "ticker",
    "funding": "ticker",
    "orderbook_snapshots": "book",
    "orderbook_deltas": "book",
}
STREAMS_OF_TABLE = {
    "klines": ("kline",),
    "trades": ("trades",),
    "ticker": ("ticker",),
    "funding": ("ticker",),
    "book_samples": ("book",),
    "book_changes": ("book",),
}
_CADENCE_NAMES = {1_000: "1s", 3_000: "3s", 15_000: "15s", 60_000: "1m"}


class FeatureVector(BaseModel):
    """One published vector (the `features.live` message)."""

    symbol: str
    ts: int = Field(description="grid time the features are valid at, epoch ms UTC")
    interval: str = Field(description="cadence: 1s, 3s, 15s or 1m")
    registry_version: str
    features: dict[str, float | None]
    latency_ms: float = Field(description="receive of the last contributing message -> publish")
    received_at: float | None = Field(
        default=None, description="wall clock (epoch ms) the last contributing message arrived"
    )
    trace_id: str
    book_desynced: bool = False


@dataclass
class _Buffer:
    """Rows of one raw table for one symbol: Arrow chunks plus rows not yet converted."""

    schema: pa.Schema
    chunks: deque[pa.Table] = field(default_factory=deque)
    pending: list[dict[str, Any]] = field(default_factory=list)

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.pending.extend(rows)

    def table(self, keep_after_ms: int) -> pa.Table:
        if self.pending:
            self.chunks.append(pa.Table.from_pylist(self.pending, schema=self.schema))
            self.pending = []
        while self.chunks and _max_ts(self.chunks[0]) <= keep_after_ms:
            self.chunks.popleft()
        if not self.chunks:
            return self.schema.empty_table()
        return pa.concat_tables(self.chunks)


def _max_ts(table: pa.Table) -> int:
    ts = table["ts"]
    return int(ts.cast(pa.int64()).to_numpy().max()) if len(ts) else -1


@dataclass
class SymbolState:
    symbol: str
    buffers: dict[str, _Buffer] = field(default_factory=dict)
    watermark: dict[str, int] = field(default_factory=dict)
    """Latest exchange ts seen per stream."""
    book: Any = None
    book_depth: int | None = None
    book_samples: dict[int, dict[str, Any]] = field(default_factory=dict)
    changes_ts: deque[int] = field(default_factory=deque)
    changes_desynced: deque[bool] = field(default_factory=deque)
    first_wall: float = 0.0
    """Wall time (ms) of the symbol's first message."""
    heard: dict[str, float] = field(default_factory=dict)
    """Wall time (ms) each stream's latest message arrived."""
    next_tick: int | None = None
    """The first whole second not yet computed."""
    last_received: dict[int, float] = field(default_factory=dict)
    """tick -> wall time (ms) the latest message with ts <= tick was received."""
    seen: dict[tuple, int] = field(default_factory=dict)
    """Raw-store keys of recent rows -> their ts: a redelivered message is applied once."""

    clock: int = -1
    """The latest exchange ts of any message of this symbol: its event time."""

    @property
    def event_time(self) -> int:
        return self.clock


class LiveEngine:
    """Per-symbol buffers and books; vectors for every whole second once it is complete."""

    def __init__(
        self,
        plan: compute.Plan,
        *,
        registry_version: str,
        cadences_ms: Sequence[int] = CADENCES_MS,
        quiet_ms: int = 10_000,
        lookback_margin_ms: int = 60_000,
        book_depth: int | None = None,
    ):
        self.plan = plan
        self.registry_version = registry_version
        self.cadences_ms = tuple(sorted(cadences_ms))
        self.step = math.gcd(*self.cadences_ms)
        if self.step % SECOND:
            raise ValueError(f"cadences must be whole seconds, got {cadences_ms}")
        self.quiet_ms = quiet_ms
        self.book_depth = book_depth
        lookback = plan.lookback_ms
        self.keep_ms = {  # how much of each raw table to keep before the oldest open tick
            kind: max(
                (lookback[s] for s in plan.sources if kind in compute.SOURCES[s].raw), default=0
            )
            + lookback_margin_ms
            for kind in plan.raw_tables
        }
        self.tables = [k for k in plan.raw_tables if k in RAW_SCHEMAS]
        self.needs_book = "book_samples" in plan.raw_tables
        self.streams = sorted({s for t in plan.raw_tables for s in STREAMS_OF_TABLE[t]})
        self.symbols: dict[str, SymbolState] = {}
        self.con = duckdb.connect()
        self.stats = defaultdict(int)
        self.ready: list[tuple[str, int]] = []

    # --- input -----------------------------------------------------------------------------

    def state(self, symbol: str) -> SymbolState:
        if symbol not in self.symbols:
            self.symbols[symbol] = SymbolState(
                symbol, {kind: _Buffer(RAW_SCHEMAS[kind]) for kind in self.tables}
            )
        return self.symbols[symbol]

    def on_message(self, parsed: Parsed, received_wall_ms: float | None = None) -> int:
        """Apply one parsed message; queue the ticks it completes (returns how many)."""
        now = time.time() * 1000 if received_wall_ms is None else received_wall_ms
        st = self.state(parsed.symbol)
        parsed = self._unseen(st, parsed)
        if parsed is None:
            self.stats["duplicates"] += 1
            return 0
        stream = STREAM_OF[parsed.kind]
        ts = max(int(r["ts"]) for r in parsed.rows)
        if st.next_tick is None:
            st.next_tick = -(-ts // self.step) * self.step
            st.first_wall = now
        # a message after the open ticks closes them for its stream: sample the book first
        if stream == "book":
            self._sample_book(st, ts)
        st.clock = max(st.clock, ts)
        mark = _watermark(parsed)
        if mark > st.watermark.get(stream, -1):
            st.watermark[stream] = mark
        st.heard[stream] = now
        ready = self._due(st, now)
        self.ready += ready
        self._apply(st, parsed, stream)
        tick = max(st.next_tick, _ceil_second(min(int(r["ts"]) for r in parsed.rows)))
        st.last_received[tick] = now  # the latest message contributing to ticks >= tick
        self.stats["messages"] += 1
        return len(ready)

    def take_vectors(self) -> list[FeatureVector]:
        """Compute every queued complete tick (all symbols in one call)."""
        ready, self.ready = self.ready, []
        return self.compute(ready) if ready else []

    def _unseen(self, st: SymbolState, parsed: Parsed) -> Parsed | None:
        """The rows not applied before (by their raw-store key); None when all were."""
        keys = RAW_KEYS[parsed.kind]
        fresh = []
        for row in parsed.rows:
            key = (parsed.kind, *(row.get(k) for k in keys))
            if key not in st.seen:
                st.seen[key] = int(row["ts"])
                fresh.append(row)
        if len(st.seen) > 200_000:  # forget keys far behind the open tick
            horizon = (st.next_tick or 0) - 600_000
            st.seen = {k: t for k, t in st.seen.items() if t > horizon}
        if not fresh:
            return None
        return (
            parsed if len(fresh) == len(parsed.rows) else Parsed(parsed.kind, parsed.symbol, fresh)
        )

    def _apply(self, st: SymbolState, parsed: Parsed, stream: str) -> None:
        if stream == "book":
            self._apply_book(st, parsed)
            return
        if parsed.kind in st.buffers:
            st.buffers[parsed.kind].add(parsed.rows)

    def _apply_book(self, st: SymbolState, parsed: Parsed) -> None:
        if not self.needs_book:
            return
        from featlib import book as bookmod

        for row in parsed.rows:
            depth = int(row["depth"])
            wanted = self.book_depth or max(depth, st.book_depth or 0)
            if depth != wanted:
                continue  # another stream (e.g. orderbook.1 beside orderbook.200)
            if st.book is None or st.book_depth != depth:
                st.book, st.book_depth = bookmod.OrderBook(), depth
            before, was_desynced = st.book.best_changes, st.book.desynced
            st.book.apply(
                parsed.kind == "orderbook_snapshots",
                int(row["update_id"]),
                int(row["ts"]),
                row["bid_price"],
                row["bid_size"],
                row["ask_price"],
                row["ask_size"],
            )
            if st.book.best_changes != before:
                st.changes_ts.append(int(row["ts"]))
                # as featlib.book.replay records it: desynced before or after the message
                st.changes_desynced.append(bool(was_desynced or st.book.desynced))

    def _sample_book(self, st: SymbolState, upto_ts: int) -> None:
        """Record the book at every open whole second before `upto_ts` (state at that time)."""
        if not self.needs_book:
            return
        from featlib import book as bookmod

        tick = st.next_tick
        last = max(st.book_samples, default=tick - self.step)
        tick = max(tick, last + self.step)
        while tick < upto_ts:
            st.book_samples[tick] = bookmod.sample(st.book, tick) if st.book is not None else None
            tick += self.step

    # --- restart ---------------------------------------------------------------------------

    def warm_up(
        self,
        data_dir: Path,
        symbols: Sequence[str] | None = None,
        *,
        book_replay_ms: int = 6 * 3_600_000,
        now_wall_ms: float | None = None,
    ) -> dict[str, int]:
        """Fill the buffers from the raw store as if its rows had just arrived, so the first
        vectors after a restart equal batch values too: each table's last lookback before the
        symbol's latest stored event, and the book replayed from its latest stored snapshot
        (if within `book_replay_ms`; an older book waits for a fresh snapshot). Vectors resume
        at the first whole step after the stored data. Returns rows loaded per table."""
        from featlib import book as bookmod

        now = time.time() * 1000 if now_wall_ms is None else now_wall_ms
        kinds = [
            *self.tables,
            *(("orderbook_snapshots", "orderbook_deltas") if self.needs_book else ()),
        ]
        if symbols is None:
            symbols = sorted({s for kind in kinds for s in raw.symbols(data_dir, kind)})
        loaded: dict[str, int] = defaultdict(int)
        for symbol in symbols:
            stamps = [_last_ts(data_dir, kind, symbol) for kind in kinds]
            if all(t is None for t in stamps):
                continue
            last = max(t for t in stamps if t is not None)
            st = self.state(symbol)
            for kind in self.tables:
                table = raw.read(data_dir, kind, [symbol], last - self.keep_ms[kind], last + 1)
                if not len(table):
                    continue
                st.buffers[kind].chunks.append(table)
                rows = _pylist(table.slice(max(0, len(table) - 50_000)))
                keys = RAW_KEYS[kind]
                st.seen.update({(kind, *(r.get(k) for k in keys)): int(r["ts"]) for r in rows})
                mark = _watermark(Parsed(kind, symbol, rows[-1_000:]))
                stream = STREAM_OF[kind]
                st.watermark[stream] = max(st.watermark.get(stream, -1), mark)
                loaded[kind] += len(table)
            if self.needs_book:
                since = _last_ts(data_dir, "orderbook_snapshots", symbol, last - book_replay_ms)
                if since is not None:
                    snaps, deltas = (
                        raw.read(data_dir, kind, [symbol], since, last + 1)
                        for kind in ("orderbook_snapshots", "orderbook_deltas")
                    )
                    messages = bookmod.stream_messages(snaps, deltas, symbol)
                    for row in _pylist(messages):
                        kind = "orderbook_snapshots" if row["is_snapshot"] else "orderbook_deltas"
                        self._apply_book(st, Parsed(kind, symbol, [row]))
                        st.seen[(kind, row["ts"], row["update_id"])] = row["ts"]
                        loaded[kind] += 1
                    st.watermark["book"] = max(st.watermark.get("book", -1), last)
            st.clock = last
            st.next_tick = (last // self.step + 1) * self.step
            st.first_wall = now
            st.heard = dict.fromkeys(self.streams, now)
        return dict(loaded)

    # --- scheduling ------------------------------------------------------------------------

    def _complete(self, st: SymbolState, tick: int, now_wall: float) -> bool:
        """Every stream the plan reads has moved past `tick`, or has been quiet (wall time)."""
        if tick > st.event_time:  # never ahead of the feed
            return False
        for stream in self.streams:
            if st.watermark.get(stream, -1) > tick:
                continue
            # a stream not heard yet counts as quiet since the symbol's first message
            if now_wall - st.heard.get(stream, st.first_wall) <= self.quiet_ms:
                return False
        return True

    def _due(self, st: SymbolState, now_wall: float) -> list[tuple[str, int]]:
        ready = []
        while st.next_tick is not None and self._complete(st, st.next_tick, now_wall):
            ready.append((st.symbol, st.next_tick))
            st.next_tick += self.step
        return ready

    def release(self, now_wall_ms: float | None = None) -> int:
        """Queue the ticks that quiet streams no longer hold back (call on a timer)."""
        now = time.time() * 1000 if now_wall_ms is None else now_wall_ms
        before = len(self.ready)
        for st in self.symbols.values():
            self.ready += self._due(st, now)
        return len(self.ready) - before

    def flush(self) -> list[FeatureVector]:
        """Treat every stream as caught up (end of a replay, a quiet feed): compute what is
        open up to the latest event time."""
        for st in self.symbols.values():
            if self.needs_book:
                self._sample_book(st, st.event_time + 1)
            while st.next_tick is not None and st.next_tick <= st.event_time:
                self.ready.append((st.symbol, st.next_tick))
                st.next_tick += self.step
        return self.take_vectors()

    # --- computing ---------------------------------------------------------------------------

    def _book_tables(self, ticks: Sequence[tuple[str, int]]) -> dict[str, pa.Table]:
        from featlib import book as bookmod

        rows, changes = [], {"symbol": [], "ts": [], "desynced": []}
        empty = bookmod.sample(bookmod.OrderBook(), 0)
        for symbol, tick in ticks:
            st = self.symbols[symbol]
            if tick not in st.book_samples:  # the book stream is quiet: its state is current
                st.book_samples[tick] = (
                    bookmod.sample(st.book, tick) if st.book is not None else None
                )
            row = dict(st.book_samples[tick] or {**empty, "ts": tick})
            rows.append({**row, "symbol": symbol})
        for symbol in {s for s, _ in ticks}:
            st = self.symbols[symbol]
            changes["symbol"] += [symbol] * len(st.changes_ts)
            changes["ts"] += list(st.changes_ts)
            changes["desynced"] += list(st.changes_desynced)
        samples = pa.Table.from_pylist(rows).select(DERIVED_SCHEMAS["book_samples"].names)
        return {
            "book_samples": samples.cast(DERIVED_SCHEMAS["book_samples"]),
            "book_changes": pa.table(changes, schema=DERIVED_SCHEMAS["book_changes"]),
        }

    def inputs(self, ticks: Sequence[tuple[str, int]]) -> dict[str, pa.Table]:
        """The tables compute reads for these (symbol, tick) rows, from the buffers."""
        oldest = min(t for _, t in ticks)
        symbols = sorted({s for s, _ in ticks})
        tables = {}
        for kind in self.tables:
            parts = [
                self.symbols[s].buffers[kind].table(oldest - self.keep_ms[kind]) for s in symbols
            ]
            tables[kind] = pa.concat_tables(parts) if parts else RAW_SCHEMAS[kind].empty_table()
        if self.needs_book:
            tables.update(self._book_tables(ticks))
        return tables

    def compute(self, ticks: Sequence[tuple[str, int]]) -> list[FeatureVector]:
        """Vectors for these (symbol, tick) rows through the one compute path."""
        tables = self.inputs(ticks)
        for kind in self.plan.raw_tables:
            self.con.register(kind, tables.get(kind, TABLE_SCHEMAS[kind].empty_table()))
        grid = pa.table(
            {"symbol": [s for s, _ in ticks], "ts": pa.array([t for _, t in ticks], pa.int64())}
        )
        out = compute.compute(self.plan, self.con, grid)
        done = time.time() * 1000
        names = list(self.plan.names)
        columns = {n: out[n].to_pylist() for n in names}
        vectors = []
        for i, (symbol, tick) in enumerate(
            zip(out["symbol"].to_pylist(), out["ts"].to_pylist(), strict=True)
        ):
            st = self.symbols[symbol]
            received = max((w for t, w in st.last_received.items() if t <= tick), default=None)
            latency = max(0.0, done - received) if received is not None else math.nan
            features = {n: columns[n][i] for n in names}
            sample = st.book_samples.pop(tick, None)
            for cadence in self.cadences_ms:
                if tick % cadence == 0:
                    vectors.append(
                        FeatureVector(
                            symbol=symbol,
                            ts=tick,
                            interval=_CADENCE_NAMES.get(cadence, f"{cadence}ms"),
                            registry_version=self.registry_version,
                            features=features,
                            latency_ms=round(latency, 3),
                            received_at=received,
                            trace_id=uuid.uuid4().hex,
                            book_desynced=bool(sample and sample.get("desynced")),
                        )
                    )
        self._trim(ticks)
        self.stats["computed_ticks"] += len(ticks)
        self.stats["vectors"] += len(vectors)
        return vectors

    def _trim(self, ticks: Sequence[tuple[str, int]]) -> None:
        for symbol in {s for s, _ in ticks}:
            st = self.symbols[symbol]
            horizon = (st.next_tick or 0) - 120_000
            while st.changes_ts and st.changes_ts[0] <= horizon:
                st.changes_ts.popleft()
                st.changes_desynced.popleft()
            for tick in [t for t in st.book_samples if t < (st.next_tick or 0) - self.step]:
                del st.book_samples[tick]
            # keep the newest entry at or before the next open tick (it still contributes)
            keep = max((t for t in st.last_received if t <= (st.next_tick or 0)), default=None)
            for tick in [t for t in st.last_received if keep is not None and t < keep]:
                del st.last_received[tick]


def _last_ts(data_dir: Path, kind: str, symbol: str, since_ms: int | None = None) -> int | None:
    """The latest stored ts of one symbol's `kind` (at or after since_ms), epoch ms."""
    if not raw.files(data_dir, kind, [symbol], since_ms):
        return None
    con = duckdb.connect()
    try:
        raw.register(con, data_dir, kind, [symbol], since_ms)
        where = f"WHERE ts >= make_timestamptz({since_ms} * 1000)" if since_ms is not None else ""
        value = con.sql(f'SELECT max(epoch_ms(ts)) FROM "{kind}" {where}').fetchall()[0][0]
        return None if value is None else int(value)
    finally:
        con.close()


def _pylist(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as parsed messages carry them: timestamps as epoch ms."""
    columns = {
        name: (column.cast(pa.int64()) if pa.types.is_timestamp(column.type) else column)
        for name, column in zip(table.column_names, table.columns, strict=True)
    }
    return pa.table(columns).to_pylist()


def _watermark(parsed: Parsed) -> int:
    """How far a message moves its stream: every event with ts below it has arrived.

    A candle's ts is its close, but Bybit confirms it late (seen: 1.5 s after the next candle's
    first update). An update of the candle starting at S says only that candles closing before
    S are in; the confirmation of the candle closing at T says that every candle closing before
    the next close, T + interval, is in."""
    if parsed.kind == "klines":  # confirmed: ts is the close, ts - start the interval
        return max(
            2 * int(r["ts"]) - int(r["start"]) if r["confirm"] else int(r["start"])
            for r in parsed.rows
        )
    return max(int(r["ts"]) for r in parsed.rows)


def _ceil_second(ts: int) -> int:
    return -(-ts // SECOND) * SECOND


def vectors_to_table(vectors: Iterable[FeatureVector]) -> pa.Table:
    """Vectors (one interval) as a table like compute returns: symbol, ts, features."""
    rows = [{"symbol": v.symbol, "ts": v.ts, **v.features} for v in vectors]
    return pa.Table.from_pylist(rows) if rows else pa.table({})


__all__ = ["CADENCES_MS", "FeatureVector", "LiveEngine", "SymbolState", "np"]
