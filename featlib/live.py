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
so its state is the state at t.

Computing is featlib.compute over in-memory tables, run by featlib.local on the plan's own
expressions: one code path with the dataset builder. Three things are kept between ticks so a
tick costs a millisecond or two: each source's events (trade bars, candles, funding, book
seconds), derived once per new stretch of raw rows, (t_done, t] — every source's events are
local in time, a stretch's events depend on that stretch's rows only (tests/unit/test_live.py
checks it) — and a raw row arriving for a stretch already derived has that source's events
derived again; the pandas indicators over a symbol's candles, recomputed when a candle
arrives; and the candle features at every candle (SourcePlan.frame), which the grid joins.

A source's features read its own streams only, so `precompute()` computes, between ticks, the
sources whose streams are past an open tick already (a row for that tick arriving after all
drops them again): the tick's completion then computes only what its last stream brought.
"""

from __future__ import annotations

import functools
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

from featlib import compute, local, raw
from featlib.bybit import Parsed
from featlib.inputs import TABLE_SCHEMAS
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
    latency_ms: float = Field(
        description="the tick's inputs complete -> published: from the receipt of the last "
        "message the vector waited for (the one that proved every stream past ts, or the "
        "quiet timeout) to the publish; the service's own time"
    )
    wait_ms: float | None = Field(
        default=None,
        description="receipt of the last message with data at or before ts -> inputs complete: "
        "how long the feed took to show that nothing more for ts was coming",
    )
    received_at: float | None = Field(
        default=None, description="wall clock (epoch ms): the last message with data <= ts"
    )
    complete_at: float | None = Field(
        default=None, description="wall clock (epoch ms): the tick's inputs complete"
    )
    trace_id: str
    book_desynced: bool = False


class _Rows:
    """Kept rows of one table of one symbol, as numpy columns grown by doubling and trimmed
    from the front (`frame()` is a view of the kept rows, in time order)."""

    def __init__(self) -> None:
        self.values: dict[str, np.ndarray] = {}
        self.valid: dict[str, np.ndarray] = {}
        self.start = 0
        self.end = 0
        self.done: int | None = None
        """Rows are derived for every time <= done (None: none yet)."""

    def __len__(self) -> int:
        return self.end - self.start

    def clear(self) -> None:
        self.__init__()

    def append(self, frame: local.Frame) -> None:
        if not frame.n:
            return
        if not self.values:
            for name, col in frame.columns.items():
                shape = col.values.shape[1:] if col.values.ndim > 1 else ()
                self.values[name] = np.empty((max(64, frame.n), *shape), col.values.dtype)
                self.valid[name] = np.empty(max(64, frame.n), np.bool_)
        size = next(iter(self.values.values())).shape[0]
        if self.end + frame.n > size:
            self._grow(self.end + frame.n)
        for name, col in frame.columns.items():
            self.values[name][self.end : self.end + frame.n] = local._full_values(col, frame.n)
            self.valid[name][self.end : self.end + frame.n] = col.mask(frame.n)
        self.end += frame.n

    def _grow(self, needed: int) -> None:
        kept = self.end - self.start
        size = max(64, 2 * (kept + needed - self.end))
        for name in self.values:
            old, mask = self.values[name], self.valid[name]
            self.values[name] = np.empty((size, *old.shape[1:]), old.dtype)
            self.values[name][:kept] = old[self.start : self.end]
            self.valid[name] = np.empty(size, np.bool_)
            self.valid[name][:kept] = mask[self.start : self.end]
        self.start, self.end = 0, kept

    def replace(self, after_ms: int, upto_ms: int, frame: local.Frame) -> bool:
        """Put `frame` in place of the rows with after_ms < ts <= upto_ms; whether it changed
        anything."""
        old = self.frame()
        ts = old.columns["ts"].values if old.n else np.zeros(0, np.int64)
        lo, hi = np.searchsorted(ts, [after_ms + 1, upto_ms + 1])
        if hi == lo and not frame.n:
            return False
        parts = [old.take(np.arange(lo)), frame, old.take(np.arange(hi, old.n))]
        self.values, self.valid, self.start, self.end = {}, {}, 0, 0
        for part in parts:
            self.append(part)
        return True

    def trim(self, before_ms: int) -> None:
        """Forget rows with ts < before_ms."""
        if self.values:
            ts = self.values["ts"][self.start : self.end]
            self.start += int(np.searchsorted(ts, before_ms, side="left"))

    def frame(self, since_ms: int | None = None, schema: Mapping[str, Any] | None = None):
        """The kept rows (ts >= since_ms) as a table (none kept yet: `schema`'s columns)."""
        if not self.values:
            return local.empty(schema or {})
        start = self.start
        if since_ms is not None:
            ts = self.values["ts"][self.start : self.end]
            start += int(np.searchsorted(ts, since_ms, side="left"))
        columns = {}
        for name, values in self.values.items():
            valid = self.valid[name][start : self.end]
            columns[name] = local.Col(values[start : self.end], None if valid.all() else valid)
        return local.Frame(columns, self.end - start)


@dataclass
class SymbolState:
    symbol: str
    raw: dict[str, deque[dict[str, Any]]] = field(default_factory=lambda: defaultdict(deque))
    """Raw rows kept per table (those a source may have to derive its events from again)."""
    fresh: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    """Raw rows per table not yet turned into events."""
    events: dict[str, _Rows] = field(default_factory=lambda: defaultdict(_Rows))
    """Per source: its events, derived up to `done`."""
    late: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    """Per source: whole seconds k whose events, derived already, must be derived again from
    the raw rows in (k - 1 s, k] (a raw row arrived late for them)."""
    kept: dict[str, tuple[int, local.Frame]] = field(default_factory=dict)
    """Per asof source: (events version, its features at every event)."""
    version: dict[str, int] = field(default_factory=lambda: defaultdict(int))
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
    completed_at: dict[int, float] = field(default_factory=dict)
    """tick -> wall time (ms) its inputs became complete."""
    seen: dict[tuple, int] = field(default_factory=dict)
    """Raw-store keys of recent rows -> their ts: a redelivered message is applied once."""
    parts: dict[int, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    """tick -> source -> its features, computed ahead of the tick's completion (once that
    source's streams had moved past the tick); dropped when a row for it arrives after all."""

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
        raw_keep_ms: int = 300_000,
    ):
        """`raw_keep_ms`: how long raw rows are kept after their events are derived, to derive
        them again when a row arrives late (events themselves are kept for the lookback)."""
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
        self.source_of = {k: s for s in plan.sources for k in compute.SOURCES[s].raw}
        self.raw_keep_ms = raw_keep_ms
        self.events_keep_ms = {s: lookback[s] + lookback_margin_ms for s in plan.sources}
        self.source_streams = {  # the streams a source's features wait for
            s: tuple(sorted({x for k in compute.SOURCES[s].raw for x in STREAMS_OF_TABLE[k]}))
            for s in plan.sources
        }
        self.symbols: dict[str, SymbolState] = {}
        self.stats = defaultdict(int)
        self.ready: list[tuple[str, int]] = []
        self.ahead: set[str] = set()
        """Symbols with a message since `precompute` last looked at them."""

    # --- input -----------------------------------------------------------------------------

    def state(self, symbol: str) -> SymbolState:
        if symbol not in self.symbols:
            self.symbols[symbol] = SymbolState(symbol)
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
        if st.parts:
            self._invalidate(st, stream, min(int(r["ts"]) for r in parsed.rows))
        self._apply(st, parsed, stream)
        self.ahead.add(st.symbol)
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
        if parsed.kind in self.source_of:
            self._add_raw(st, parsed.kind, parsed.rows)

    def _add_raw(self, st: SymbolState, kind: str, rows: Sequence[dict[str, Any]]) -> None:
        st.raw[kind].extend(rows)
        st.fresh[kind].extend(rows)
        source = self.source_of[kind]
        done = st.events[source].done if source in st.events else None
        if done is not None:
            for r in rows:
                if r["ts"] <= done:  # late: its second is derived again
                    st.late[source].add(_ceil_second(int(r["ts"])))

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
            stored = {}
            for kind in self.tables:
                table = raw.read(data_dir, kind, [symbol], last - self.keep_ms[kind], last + 1)
                stored[kind] = table
                if not len(table):
                    continue
                # the tail is kept as rows (to derive again if a row arrives late for it)
                ts = table["ts"].cast(pa.int64()).to_numpy()
                rows = _pylist(table.slice(int(np.searchsorted(ts, last - self.raw_keep_ms))))
                st.raw[kind].extend(rows)
                rows = rows[-50_000:]
                keys = RAW_KEYS[kind]
                st.seen.update({(kind, *(r.get(k) for k in keys)): int(r["ts"]) for r in rows})
                if rows:
                    mark = _watermark(Parsed(kind, symbol, rows[-1_000:]))
                    stream = STREAM_OF[kind]
                    st.watermark[stream] = max(st.watermark.get(stream, -1), mark)
                loaded[kind] += len(table)
            # events of everything stored up to the last whole second, derived at once (events
            # are bucketed by second: a second is derived whole or not at all); the rows after
            # it wait as new rows
            cut = last // SECOND * SECOND
            for kind, table in stored.items():
                ts = table["ts"].cast(pa.int64()).to_numpy()
                at = int(np.searchsorted(ts, cut, side="right"))
                st.fresh[kind].extend(_pylist(table.slice(at)))
                stored[kind] = table.slice(0, at)
            for part in self.plan.parts:
                kinds = compute.SOURCES[part.source].raw
                if part.events is None or not all(k in stored for k in kinds):
                    continue
                new = part.local_events({k: local.from_arrow(stored[k]) for k in kinds})
                events = st.events[part.source]
                if new.n:
                    events.append(new.take(np.argsort(new.columns["ts"].values, kind="stable")))
                    st.version[part.source] += 1
                events.done = cut
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
            st.completed_at[st.next_tick] = now_wall
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
            now = time.time() * 1000
            while st.next_tick is not None and st.next_tick <= st.event_time:
                self.ready.append((st.symbol, st.next_tick))
                st.completed_at[st.next_tick] = now
                st.next_tick += self.step
        return self.take_vectors()

    # --- computing ---------------------------------------------------------------------------

    def compute(self, ticks: Sequence[tuple[str, int]]) -> list[FeatureVector]:
        """Vectors for these (symbol, tick) rows through the one compute path (the sources
        computed ahead, by `precompute`, are not computed again)."""
        rows = sorted(set(ticks))
        todo: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for symbol, tick in rows:
            have = self.symbols[symbol].parts.get(tick, {})
            for source in self.plan.sources:
                if source not in have:
                    todo[source].append((symbol, tick))
        for part in self.plan.parts:
            if part.source in todo:
                self._compute_source(part, todo[part.source])
        done = time.time() * 1000
        names = list(self.plan.names)
        vectors = []
        by_symbol: dict[str, list[int]] = defaultdict(list)
        for symbol, tick in rows:
            by_symbol[symbol].append(tick)
            st = self.symbols[symbol]
            values: dict[str, float | None] = {}
            for part in st.parts.pop(tick).values():
                values.update(part)
            features = {n: values[n] for n in names}
            received = max((w for t, w in st.last_received.items() if t <= tick), default=None)
            complete = st.completed_at.pop(tick, done)
            latency = max(0.0, done - complete)
            wait = None if received is None else round(max(0.0, complete - received), 3)
            sample = st.book_samples.get(tick)
            for cadence in self.cadences_ms:
                if tick % cadence == 0:
                    vectors.append(
                        FeatureVector.model_construct(  # values made here: no validation
                            symbol=symbol,
                            ts=tick,
                            interval=_CADENCE_NAMES.get(cadence, f"{cadence}ms"),
                            registry_version=self.registry_version,
                            features=features,
                            latency_ms=round(latency, 3),
                            wait_ms=wait,
                            received_at=received,
                            complete_at=complete,
                            trace_id=uuid.uuid4().hex,
                            book_desynced=bool(sample and sample.get("desynced")),
                        )
                    )
        self._trim(by_symbol)
        self.stats["computed_ticks"] += len(rows)
        self.stats["vectors"] += len(vectors)
        return vectors

    def precompute(self, ahead_ticks: int = 10, sources: int | None = None) -> int:
        """Compute ahead of completion: for the open ticks (up to `ahead_ticks` steps) of the
        symbols that had messages since the last call, every source whose streams have all
        moved past the tick already (its inputs for the tick are in: the values are final
        unless a row for the tick still arrives on one of them, which drops them again). A
        tick's completion then computes only the sources still missing, usually those of
        the stream that completed it. `sources`: compute at most this many sources (each for
        all its symbols and ticks) and leave the rest to the next call (`ahead` stays set),
        so that a caller can serve completed ticks in between. Returns how many
        (symbol, tick, source) were computed."""
        todo: dict[str, list[tuple[str, int]]] = defaultdict(list)
        symbols, self.ahead = self.ahead, set()
        for symbol in sorted(symbols):
            st = self.symbols[symbol]
            if st.next_tick is None:
                continue
            last = min(st.event_time, st.next_tick + (ahead_ticks - 1) * self.step)
            for tick in range(st.next_tick, last + 1, self.step):
                have = st.parts.get(tick, {})
                for source, streams in self.source_streams.items():
                    if source not in have and all(st.watermark.get(x, -1) > tick for x in streams):
                        todo[source].append((symbol, tick))
        parts = [part for part in self.plan.parts if part.source in todo]
        if sources is not None and len(parts) > sources:
            parts = parts[:sources]
            self.ahead |= symbols  # looked at again (cheap) by the next call
        for part in parts:
            self._compute_source(part, todo[part.source])
        computed = sum(len(todo[part.source]) for part in parts)
        self.stats["parts_ahead"] += computed
        return computed

    def _invalidate(self, st: SymbolState, stream: str, since: int) -> None:
        """A row at `since` on `stream`: drop what was computed ahead for ticks >= since from
        the sources reading that stream."""
        for tick, have in st.parts.items():
            if tick >= since:
                for source in [s for s in have if stream in self.source_streams[s]]:
                    del have[source]
                    self.stats["parts_dropped"] += 1

    def _compute_source(self, part: compute.SourcePlan, rows: Sequence[tuple[str, int]]) -> None:
        """One source's features at these (symbol, tick) rows (all symbols in one call), kept
        in each symbol's `parts` until its tick's vector is made."""
        by_symbol: dict[str, list[int]] = defaultdict(list)
        for symbol, tick in rows:
            by_symbol[symbol].append(tick)
        symbols = sorted(by_symbol)
        tables: dict[str, local.Frame] = {}
        if part.events is not None:
            self._events(part, {s: max(by_symbol[s]) for s in symbols})
            if part.frame is not None:  # asof: the features at every event, kept
                kept = self._kept(part, symbols)
                tables[part.events_table] = _concat([kept[s][0] for s in symbols], {})
                tables[f"frame_{part.source}"] = _concat(
                    [kept[s][1] for s in symbols], part.frame_schema
                )
            else:
                keep = self.events_keep_ms[part.source]
                frames = [
                    self.symbols[s]
                    .events[part.source]
                    .frame(min(by_symbol[s]) - keep, part.events_schema)
                    for s in symbols
                ]
                tables[part.events_table] = _concat(frames, part.events_input_schema)
        rows = sorted(set(rows))
        grid = local.Frame(
            {
                "symbol": local.Col(np.array([s for s, _ in rows], dtype=object)),
                "ts": local.Col(np.array([t for _, t in rows], np.int64)),
            },
            len(rows),
        )
        out = compute.compute_frame(self.plan, tables, grid, sources=[part.source])
        columns = {n: _values(col, out.n) for n, col in out.columns.items()}
        for i, (symbol, tick) in enumerate(rows):
            values = {n: column[i] for n, column in columns.items()}
            self.symbols[symbol].parts.setdefault(tick, {})[part.source] = values

    def _events(self, part: compute.SourcePlan, upto: Mapping[str, int]) -> None:
        """Derive the source's events of these symbols up to their time (all symbols in one
        evaluation), after deriving again the seconds a late raw row arrived for."""
        source = part.source
        todo = {}
        for symbol, until in upto.items():
            st = self.symbols[symbol]
            rows = st.events[source]
            for k in sorted(st.late.pop(source, ())):
                stretch = self._derive(part, {symbol: (k - SECOND, k)}, retained=True)
                if rows.replace(k - SECOND, k, stretch.get(symbol, _EMPTY)):
                    st.version[source] += 1
                    self.stats["late_rows_rederived"] += 1
            if rows.done is None or until > rows.done:
                todo[symbol] = (rows.done, until)
        if not todo:
            return
        for symbol, new in self._derive(part, todo).items():
            st = self.symbols[symbol]
            if new.n:
                st.events[source].append(new)
                st.version[source] += 1
        for symbol, (_, until) in todo.items():
            self.symbols[symbol].events[source].done = until

    def _derive(
        self,
        part: compute.SourcePlan,
        spans: Mapping[str, tuple[int | None, int]],
        retained: bool = False,
    ) -> dict[str, local.Frame]:
        """Per symbol, the events from its raw rows with after < ts <= upto (the new rows, or
        with `retained` the rows kept), in time order: one evaluation for all the symbols."""
        tables = {}
        for kind in compute.SOURCES[part.source].raw:
            rows = []
            for symbol, (after, upto) in spans.items():
                rows += self._raw_rows(self.symbols[symbol], kind, after, upto, retained)
            tables[kind] = _frame_of_rows(rows, TABLE_SCHEMAS[kind])
        new = part.local_events(tables)
        return _by_symbol(new, list(spans))

    def _raw_rows(
        self, st: SymbolState, kind: str, after: int | None, upto: int, retained: bool = False
    ) -> list[dict[str, Any]]:
        """Raw rows of `kind` with after < ts <= upto: taken from the new rows, or with
        `retained` read from the rows kept."""
        lo = -(1 << 62) if after is None else after
        if kind == "book_samples":
            picked = []
            for tick in sorted(t for t in st.book_samples if lo < t <= upto):
                if st.book_samples[tick] is None and st.book is not None:
                    st.book_samples[tick] = book_sample(st.book, tick)  # quiet: state is current
                sample = st.book_samples[tick]
                picked.append({**(sample or {"ts": tick, "desynced": True}), "symbol": st.symbol})
            return picked
        if kind == "book_changes":
            return [
                {"symbol": st.symbol, "ts": ts, "desynced": desynced}
                for ts, desynced in zip(st.changes_ts, st.changes_desynced, strict=True)
                if lo < ts <= upto
            ]
        if retained:
            return [r for r in st.raw.get(kind, ()) if lo < r["ts"] <= upto]
        fresh = st.fresh.get(kind, [])
        picked = [r for r in fresh if lo < r["ts"] <= upto]  # (rows <= after: `late`)
        st.fresh[kind] = [r for r in fresh if r["ts"] > upto]
        return picked

    def _kept(
        self, part: compute.SourcePlan, symbols: Sequence[str]
    ) -> dict[str, tuple[local.Frame, local.Frame]]:
        """Per symbol, an asof source's (events with the pandas indicators' columns, features
        at every event), computed again (in one evaluation) for the symbols whose events
        changed."""
        source = part.source
        changed = [
            s
            for s in symbols
            if self.symbols[s].kept.get(source, (None,))[0] != self.symbols[s].version[source]
        ]
        if changed:
            events = _concat(
                [self.symbols[s].events[source].frame(None, part.events_schema) for s in changed],
                part.events_schema,
            )
            if part.indicators:
                table = local.to_arrow(events, part.events_schema)
                events = local.from_arrow(compute._indicators(table, part.indicators))
            frames = _by_symbol(part.local_frame({part.events_table: events}), changed, "_s")
            with_indicators = _by_symbol(events, changed)
            for s in changed:
                st = self.symbols[s]
                st.kept[source] = (
                    st.version[source],
                    with_indicators.get(s, local.empty(part.events_input_schema)),
                    frames.get(s, local.empty(part.frame_schema)),
                )
        return {s: self.symbols[s].kept[source][1:] for s in symbols}

    def _trim(self, by_symbol: Mapping[str, Sequence[int]]) -> None:
        for symbol in by_symbol:
            st = self.symbols[symbol]
            horizon = st.next_tick or 0
            for rows in st.raw.values():
                keep_after = horizon - self.raw_keep_ms
                while rows and rows[0]["ts"] < keep_after:
                    rows.popleft()
            for source, rows in st.events.items():
                rows.trim(horizon - self.events_keep_ms[source])
            while st.changes_ts and st.changes_ts[0] <= horizon - 120_000:
                st.changes_ts.popleft()
                st.changes_desynced.popleft()
            keep_samples = horizon - self.events_keep_ms.get("orderbook", 0)
            for tick in [t for t in st.book_samples if t < keep_samples]:
                del st.book_samples[tick]
            # keep the newest entry at or before the next open tick (it still contributes)
            keep = max((t for t in st.last_received if t <= horizon), default=None)
            for tick in [t for t in st.last_received if keep is not None and t < keep]:
                del st.last_received[tick]


def book_sample(book: Any, tick: int) -> dict[str, Any]:
    from featlib import book as bookmod

    return bookmod.sample(book, tick)


_EMPTY = local.Frame({}, 0)


def _values(col: local.Col, n: int) -> list[float | None]:
    """A feature column as Python values, null as None."""
    values = local._full_values(col, n).tolist()
    if col.valid is None:
        return values
    return [v if ok else None for v, ok in zip(values, col.mask(n).tolist(), strict=True)]


def _by_symbol(frame: local.Frame, symbols: Sequence[str], column: str = "symbol"):
    """The frame's rows per symbol, each in time order."""
    if not frame.n:
        return {}
    names = frame.columns[column].values
    ts = frame.columns["ts" if "ts" in frame.columns else "_t"].values
    out = {}
    for symbol in symbols:
        rows = np.flatnonzero(names == symbol)
        if len(rows):
            out[symbol] = frame.take(rows[np.argsort(ts[rows], kind="stable")])
    return out


def _concat(frames: Sequence[local.Frame], schema: Mapping[str, Any]) -> local.Frame:
    """The frames' rows in one table (no rows: the first frame, else `schema`'s columns)."""
    full = [f for f in frames if f.n]
    if not full:
        return frames[0] if frames else local.empty(schema)
    frames = full
    if len(frames) == 1:
        return frames[0]
    columns = {}
    for name in frames[0].columns:
        cols = [f.columns[name] for f in frames]
        values = np.concatenate(
            [local._full_values(c, f.n) for c, f in zip(cols, frames, strict=True)]
        )
        if all(c.valid is None for c in cols):
            valid = None
        else:
            valid = np.concatenate([c.mask(f.n) for c, f in zip(cols, frames, strict=True)])
        columns[name] = local.Col(values, valid)
    return local.Frame(columns, sum(f.n for f in frames))


def _frame_of_rows(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> local.Frame:
    """Row dicts (as parsed messages carry them: timestamps as epoch ms) -> a table."""
    columns = {}
    for name, dtype, fill in _column_specs(schema):
        values = [r.get(name) for r in rows]
        valid = None
        if None in values:
            valid = np.array([v is not None for v in values], np.bool_)
            if dtype is not object:
                values = [fill if v is None else v for v in values]
        columns[name] = local.Col(np.array(values, dtype=dtype), valid)
    return local.Frame(columns, len(rows))


@functools.cache
def _column_specs(schema: pa.Schema) -> tuple[tuple[str, Any, Any], ...]:
    """(name, numpy dtype, value standing in for null) per column of a raw table."""
    specs = []
    for f in schema:
        if pa.types.is_string(f.type):
            specs.append((f.name, object, None))
        elif pa.types.is_floating(f.type):
            specs.append((f.name, np.float64, 0.0))
        elif pa.types.is_boolean(f.type):
            specs.append((f.name, np.bool_, False))
        else:  # integers, timestamps (ms)
            specs.append((f.name, np.int64, 0))
    return tuple(specs)


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
