"""Build a training dataset: features + targets on a time grid, split without leakage.

    metadata = build(DatasetRequest(...), data_dir, out_dir)

writes `{out_dir}/{train,validation,test}.parquet` (columns `ts` UTC, `symbol`, one column per
feature of the registry version, `target_*`) and `{out_dir}/metadata.json`. Features come from
the same `compute` call the live service makes; the raw store is read through DuckDB.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import resource
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tqdm import tqdm

from featlib import compute, raw, registry, synthetic
from featlib.cache import OUTPUT_CODE, FeatureCache, code_hash, definition_hash, link_tree
from featlib.catalog import Catalog, dataset_fields
from featlib.inputs import DERIVED_SCHEMAS
from featlib.quality import QualityConfig, QualityError, quality_report
from featlib.schema import check_symbol
from featlib.splits import (
    RandomSplit,
    SplitConfig,
    SplitError,
    TimeSplit,
    WalkForward,
    assign_folds,
    fold_table,
    fold_windows,
    split_metadata,
)
from featlib.targets import TargetSpec, compute_targets
from featlib.timeutil import (
    DAY_MS,
    MINUTE_MS,
    format_duration,
    iso,
    parse_duration,
    parse_end,
    parse_time,
)

FORMAT_VERSION = 1


class DatasetError(ValueError):
    """A dataset that cannot be built as asked; the message says why and what is available."""


class DatasetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbols: list[str] = Field(min_length=1)
    start: int = Field(description="first grid time, epoch ms (inclusive)")
    end: int = Field(description="grid end, epoch ms (exclusive)")
    registry_version: str | None = None
    target: TargetSpec = Field(default_factory=TargetSpec)
    split: SplitConfig | None = None
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    resolution: Literal["1m", "1s"] = "1m"
    quality: QualityConfig = Field(default_factory=QualityConfig)
    short_history: bool = Field(
        default=False,
        description="build even where the stored data is shorter than a feature's lookback "
        "(e.g. minutes of captures): each feature is null outside [first stored time of its "
        "inputs + its lookback, last stored time]",
    )

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, value: Any) -> int:
        return parse_time(value)  # epoch ms, or a date / ISO time (UTC)

    @field_validator("end", mode="before")
    @classmethod
    def _end(cls, value: Any) -> int:
        return parse_end(value)  # a date-only end includes that day

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, value: list[str]) -> list[str]:
        for symbol in value:
            check_symbol(symbol)
        if len(set(value)) != len(value):
            raise ValueError("symbols repeat")
        return value

    @model_validator(mode="after")
    def _range(self) -> DatasetRequest:
        if self.resolution == "1s" and "price" not in self.target.model_fields_set:
            # a 1-second grid wants a 1-second price: the last trade, not the minute close
            self.target = self.target.model_copy(update={"price": "trade"})
        step = self.step_ms
        if self.end <= self.start:
            raise ValueError(f"end {iso(self.end)} is not after start {iso(self.start)}")
        if self.start % step or self.end % step:
            raise ValueError(f"start and end must fall on the {self.resolution} grid")
        if isinstance(self.split, WalkForward):  # pin the range, so the folds can be rebuilt
            self.split = self.split.model_copy(
                update={"start": self.split.start or self.start, "end": self.split.end or self.end}
            )
        if self.split is not None and not isinstance(self.split, RandomSplit):
            try:
                fold_windows(self.split, self.target.horizon_ms, self.start, self.end)
            except SplitError as exc:
                raise ValueError(str(exc)) from None
        return self

    @property
    def step_ms(self) -> int:
        return parse_duration(self.resolution)

    def split_config(self) -> SplitConfig:
        return self.split or TimeSplit.by_fractions(
            self.start, self.end, self.step_ms, self.split_fractions
        )


def kline_lookback(fs: registry.FeatureSet) -> int:
    """The candle history a feature set needs before its first grid time."""
    return max((f.lookback_ms for f in fs.features if "kline" in f.input_sources), default=0)


BOOK_WARMUP_MS = DAY_MS
"""How far before the first grid time the builder looks for the order-book snapshot to replay
from; grid rows before the first snapshot have a desynchronised (null) book."""


def required_history(fs: registry.FeatureSet, target: TargetSpec) -> dict[str, int]:
    """Raw tables that must cover the build, each with the lookback needed before its start."""
    needs: dict[str, int] = {}
    for spec in fs.features:
        for source in spec.input_sources:
            kind = {"kline": "klines", "trades": "trades", "orderbook": "orderbook_deltas"}.get(
                source
            )
            if kind:
                needs[kind] = max(needs.get(kind, 0), spec.lookback_ms)
    price = "klines" if target.price == "close" else "trades"
    needs.setdefault(price, 0)
    return needs


def book_tables(
    data_dir: Path, symbols: list[str], grid: pa.Table, since_ms: int
) -> tuple[pa.Table, pa.Table, list[Path], dict[str, int]]:
    """Replay each symbol's deepest book stream from the raw store and sample it at the grid
    times: the `book_samples` and `book_changes` tables the order-book features read."""
    from featlib import book  # numba compiles on first use; only book builds pay for it

    end = int(pc.max(grid["ts"]).as_py()) + 1 if len(grid) else since_ms
    samples, changes, files = [], [], []
    quality = {"gaps": 0, "stale": 0, "crossed": 0, "desynced_samples": 0}
    for symbol in symbols:
        for kind in ("orderbook_snapshots", "orderbook_deltas"):
            files += raw.files(data_dir, kind, [symbol], since_ms, end)
        times = grid.filter(pc.equal(grid["symbol"], symbol))["ts"].to_numpy()
        # the deltas are decoded on a worker thread while the book replays the ones before
        messages = book.read_stream(data_dir, symbol, since_ms, end)
        sampled, changed, counters = book.replay_parts(messages, times)
        for key in ("gaps", "stale", "crossed"):
            quality[key] += int(counters.get(key, 0))
        quality["desynced_samples"] += int(pc.sum(sampled["desynced"]).as_py() or 0)
        for out, part, name in (
            (samples, sampled, "book_samples"),
            (changes, changed, "book_changes"),
        ):
            schema = DERIVED_SCHEMAS[name]
            out.append(_with_symbol(part, symbol).select(schema.names).cast(schema))
    return pa.concat_tables(samples), pa.concat_tables(changes), files, quality


def backfill_types(p: compute.Plan) -> list[str]:
    """Raw data a backfill fetches for a feature plan: klines always, funding when a feature
    reads it (the other sources have no REST history)."""
    return ["klines"] + (["funding"] if "funding" in p.sources else [])


def _backfill(
    data_dir: Path,
    request: DatasetRequest,
    p: compute.Plan,
    lookback: int,
    options: Any,
    max_days: int,
    say: Callable[[str], None],
) -> list[str]:
    """Fetch the candles (and funding) the build needs and the store lacks; return warnings."""
    from featlib import backfill  # pybit lives there; only builds that backfill import it

    types = backfill_types(p)
    warnings = []
    for symbol in request.symbols:
        try:
            job = backfill.fill(
                data_dir,
                symbol,
                request.start - lookback,
                request.end + request.target.horizon_ms,
                types,
                options=options,
                max_days=max_days,
            )
        except backfill.BackfillError as exc:
            raise DatasetError(f"automatic backfill for {symbol}: {exc}") from None
        say(f"backfill {symbol}: {job.summary()}")
        if job.status != "done":
            warnings.append(f"backfill {symbol}: {job.error}")
    return warnings


@dataclass(frozen=True)
class _Partition:
    symbol: str
    lo: int
    hi: int
    key: str


def _partitions(
    request: DatasetRequest, data_dir: Path, p: compute.Plan, version: str, lookback: int
) -> list[_Partition]:
    """The build's (symbol, UTC day) feature partitions, in output order, each keyed by what
    its values depend on (featlib.cache)."""
    definition = definition_hash(p, version)
    kinds = [k for k in p.raw_tables if k in raw.RAW_SCHEMAS]
    book_since = request.start - BOOK_WARMUP_MS if "orderbook" in p.sources else None
    listed: dict[tuple[str, str, int], list[Path]] = {}

    def files(kind: str, symbol: str, lo: int, hi: int) -> list[Path]:
        """raw.files, each (kind, symbol, day) listed once for all partitions."""
        found = []
        for day in range(lo // DAY_MS * DAY_MS, hi, DAY_MS):
            if (kind, symbol, day) not in listed:
                listed[kind, symbol, day] = raw.files(data_dir, kind, [symbol], day, day + 1)
            found += listed[kind, symbol, day]
        return found

    parts = []
    for symbol in sorted(request.symbols):
        for day in range(request.start // DAY_MS * DAY_MS, request.end, DAY_MS):
            lo, hi = max(day, request.start), min(day + DAY_MS, request.end)
            inputs = [f for k in kinds for f in files(k, symbol, lo - lookback, hi)]
            if book_since is not None:
                for kind in ("orderbook_snapshots", "orderbook_deltas"):
                    inputs += files(kind, symbol, book_since, hi)
            key = FeatureCache.key(
                definition, data_dir, inputs, symbol, lo, hi, request.step_ms, lookback, book_since
            )
            parts.append(_Partition(symbol, lo, hi, key))
    return parts


def _side_chain(
    spec: TargetSpec,
    parts: Sequence[compute.SourcePlan],
    data_dir: Path,
    price_table: str,
    symbols: list[str],
    read_from: int,
    read_to: int,
    grid: pa.Table,
    todo: pa.Table,
    bars: Future[pa.Table] | None = None,
) -> tuple[pa.Table, dict[str, pa.Table]]:
    """On a connection of its own: the targets at the grid and `parts`' features at `todo`.
    bars: the trade bars the features' thread computes (for trade-price targets): then the
    targets come last, once those are ready, and do not compute the bars again."""
    con = duckdb.connect(config={"threads": 1})  # beside the features: one core each
    try:
        kinds = {*(k for part in parts for k in compute.SOURCES[part.source].raw)}
        for kind in kinds | ({price_table} if bars is None else set()):
            raw.register(con, data_dir, kind, symbols, read_from, read_to)
        targets = compute_targets(spec, con, grid) if bars is None else None
        con.register("grid", compute.prepare_grid(todo))
        features = {part.source: _side_source(part, con, todo) for part in parts}
        if bars is not None:
            targets = compute_targets(spec, con, grid, bars.result())
        return targets, features
    finally:
        con.close()


LOCAL_MAX_ROWS = 1_000_000
"""A side source whose raw rows are at most this many is read into memory and run by
featlib.local, which takes less CPU there than DuckDB (one synthetic day: candles 0.05 s
against 0.14 s, funding from a day of tickers 0.12 s against 0.22 s); above, DuckDB runs it."""


def _side_source(
    part: compute.SourcePlan, con: duckdb.DuckDBPyConnection, todo: pa.Table
) -> pa.Table:
    """A light source's features at `todo`, from its raw tables on `con`."""
    kinds = compute.SOURCES[part.source].raw
    rows = sum(con.sql(f'SELECT count(*) FROM "{kind}"').fetchall()[0][0] for kind in kinds)
    if rows > LOCAL_MAX_ROWS:
        return compute.compute_source(part, con)
    tables = {kind: con.sql(f'SELECT * FROM "{kind}"').to_arrow_table() for kind in kinds}
    return compute.compute_source_local(part, tables, todo)


def _write_split(table: pa.Table, part: Any, path: Path) -> None:
    rows = _to_output(table.take(pa.array(part.rows, pa.int64())))
    rows = rows.append_column("fold", pa.array(np.full(len(rows), part.fold), pa.int32()))
    rows = rows.sort_by([("ts", "ascending"), ("symbol", "ascending")])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows, path, compression="zstd", use_dictionary=["symbol"])


def _book_features(
    part: compute.SourcePlan, data_dir: Path, symbols: list[str], grid: pa.Table, since: int
) -> tuple[pa.Table, dict[str, int], float]:
    """The order-book source's features: the book replayed and sampled at the grid, then its
    query; (result, replay quality, replay seconds)."""
    started = time.perf_counter()
    samples, changes, _, quality = book_tables(data_dir, symbols, grid, since)
    seconds = time.perf_counter() - started
    tables = {"book_samples": samples, "book_changes": changes}
    return compute.compute_source_local(part, tables, grid), quality, seconds


def _no_data_warning(names: Sequence[str], source: str, lo: int, hi: int) -> str:
    affected = [n for n in names if compute.FEATURES[n].source == source]
    return f"no {source} data stored for {iso(lo)} → {iso(hi)}: {', '.join(affected)} will be null"


def _grid_rows(table: pa.Table, symbol: str, lo: int, hi: int) -> pa.Table:
    """Rows of a (symbol, ts) ordered table for one symbol with lo <= ts < hi."""
    mask = pc.and_(
        pc.equal(table["symbol"], symbol),
        pc.and_(pc.greater_equal(table["ts"], lo), pc.less(table["ts"], hi)),
    )
    return table.filter(mask)


def _with_symbol(table: pa.Table, symbol: str) -> pa.Table:
    return table.add_column(0, "symbol", pa.repeat(pa.scalar(symbol, pa.string()), len(table)))


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _candle_problem(data_dir: Path, symbol: str, need_from: int, need_to: int) -> str | None:
    periods = raw.candle_periods(data_dir, symbol)
    if periods and periods[0].start_ms <= need_from and periods[-1].end_ms >= need_to:
        return None
    have = "; ".join(str(p) for p in periods) if periods else "none"
    return (
        f"{symbol}: 1m candles closing {iso(need_from)} → {iso(need_to)} are needed; "
        f"available candle periods: {have}"
    )


def _day_problem(
    data_dir: Path, kind: str, symbol: str, need_from: int, need_to: int
) -> str | None:
    periods = raw.day_periods(data_dir, kind, symbol)
    if any(p.start_ms <= need_from and p.end_ms >= need_to for p in periods):
        return None
    have = "; ".join(str(p) for p in periods) if periods else "none"
    return (
        f"{symbol}: {kind} for {iso(need_from)} → {iso(need_to)} are needed; available days: {have}"
    )


def check_history(data_dir: Path, request: DatasetRequest, needs: dict[str, int]) -> None:
    """Raise DatasetError naming what is available when stored history does not cover the
    build. `needs` maps a raw table to the lookback it needs before the first grid time.
    A short_history request is not checked: its features are masked (short_history_mask)."""
    if request.short_history:
        return
    start, end, horizon = request.start, request.end, request.target.horizon_ms
    problems = []
    for symbol in request.symbols:
        for kind, lookback in needs.items():
            if kind == "klines":
                found = _candle_problem(
                    data_dir, symbol, start - lookback + MINUTE_MS, end - request.step_ms + horizon
                )
            else:
                found = _day_problem(data_dir, kind, symbol, start - lookback, end)
            if found:
                problems.append(found)
    if problems:
        raise DatasetError(
            "missing history for the build (each input from start − its lookback to end, "
            f"candles to end + horizon {format_duration(horizon)}):\n  "
            + "\n  ".join(problems)
            + "\nChoose a range inside the available periods, fetch history first "
            "(just backfill SYMBOL START END), or build with short_history "
            "(--short-history): features null until stored data covers their lookback."
        )


def stored_kinds(source: str) -> tuple[str, ...]:
    """The raw-store tables a feature source reads (the book's: snapshots and deltas)."""
    if source == "orderbook":
        return ("orderbook_snapshots", "orderbook_deltas")
    return tuple(k for k in compute.SOURCES[source].raw if k in raw.RAW_SCHEMAS)


def stored_span(
    data_dir: Path, kinds: Sequence[str], symbol: str, start: int | None, end: int | None
) -> tuple[int, int] | None:
    """First and last stored event time (epoch ms) over `kinds` for `symbol` in the UTC days
    of [start, end) (all days when None); None when nothing is stored."""
    paths = [f for k in kinds for f in raw.files(data_dir, k, [symbol], start, end)]
    if not paths:
        return None
    listing = ", ".join(f"'{p}'" for p in paths)
    con = duckdb.connect()
    try:
        first, last = con.execute(
            f"SELECT epoch_ms(min(ts)), epoch_ms(max(ts)) FROM read_parquet([{listing}], "
            "union_by_name = true)"
        ).fetchone()
    finally:
        con.close()
    return None if first is None else (int(first), int(last))


def short_history_mask(
    table: pa.Table,
    fs: registry.FeatureSet,
    data_dir: Path,
    symbols: Sequence[str],
    start: int,
    end: int,
) -> tuple[pa.Table, dict[str, Any], list[str]]:
    """Null each feature outside [first stored time of its inputs + its lookback, last stored
    time], per symbol: where its window is not covered by stored data a value would be a
    guess. Returns the table, per feature and symbol the span it is defined in, warnings."""
    ts, sym = table["ts"], table["symbol"]
    since = start - max((f.lookback_ms for f in fs.features), default=0)
    stored = functools.cache(lambda kinds, symbol: stored_span(data_dir, kinds, symbol, since, end))
    spans: dict[str, dict[str, Any]] = {}
    never: list[str] = []
    for f in fs.features:
        declared = compute.FEATURES[f.name]
        kinds = stored_kinds(declared.source)
        if not kinds:  # clock features read the grid time alone
            continue
        warmup = f.lookback_ms if declared.warmup_ms is None else declared.warmup_ms
        outside = pa.array(np.zeros(len(table), dtype=bool))
        spans[f.name] = {}
        for symbol in symbols:
            span = stored(kinds, symbol)  # data before start - lookback: no mask either way
            lo, hi = (span[0] + warmup, span[1]) if span else (end, start - 1)
            spans[f.name][symbol] = {"from": iso(lo), "to": iso(hi)} if lo <= hi else None
            bad = pc.and_(pc.equal(sym, symbol), pc.or_(pc.less(ts, lo), pc.greater(ts, hi)))
            outside = pc.or_(outside, bad)
        if all(v is None for v in spans[f.name].values()):
            never.append(f.name)
        column = table[f.name]
        masked = pc.if_else(outside, pa.scalar(None, column.type), column)
        table = table.set_column(table.schema.get_field_index(f.name), f.name, masked)
    warnings = []
    if never:
        warnings.append(
            f"short history: {len(never)} feature(s) need more stored history than there is "
            f"and are null throughout: {', '.join(never)}"
        )
    return table, spans, warnings


def short_history_range(
    data_dir: Path,
    symbols: list[str],
    inputs: Sequence[Sequence[str]],
    horizon_ms: int,
    step_ms: int,
) -> tuple[int, int]:
    """The widest [start, end) on the grid where every symbol has data of each input (a group
    of raw kinds, e.g. book snapshots + deltas; inputs with nothing stored are left out) and a
    target horizon after it."""
    starts, ends = [], []
    for symbol in symbols:
        for kinds in inputs:
            span = stored_span(data_dir, kinds, symbol, None, None)
            if span:
                starts.append(span[0])
                ends.append(span[1])
    if not starts:
        raise DatasetError(f"nothing stored for {', '.join(symbols)} in {data_dir}")
    start = -(-max(starts) // step_ms) * step_ms
    end = (min(ends) - horizon_ms) // step_ms * step_ms + step_ms
    if end <= start:
        raise DatasetError(
            f"the stored data ({iso(max(starts))} → {iso(min(ends))}) is shorter than the "
            f"{format_duration(horizon_ms)} target horizon"
        )
    return start, end


def available_range(
    data_dir: Path, symbols: list[str], lookback_ms: int, horizon_ms: int, step_ms: int
) -> tuple[int, int]:
    """The widest [start, end) every symbol's stored candles can serve."""
    starts, ends = [], []
    for symbol in symbols:
        periods = raw.candle_periods(data_dir, symbol)
        if not periods:
            raise DatasetError(f"no 1m candles stored for {symbol} in {data_dir}")
        starts.append(periods[0].start_ms + lookback_ms - MINUTE_MS)
        ends.append(periods[-1].end_ms - horizon_ms + step_ms)
    start = -(-max(starts) // step_ms) * step_ms
    end = min(ends) // step_ms * step_ms
    if end <= start:
        raise DatasetError(
            f"stored candles are too short for a {format_duration(lookback_ms)} "
            f"lookback plus a {format_duration(horizon_ms)} horizon (--short-history builds "
            "with features null until stored data covers their lookback)"
        )
    return start, end


def _data_hash(data_dir: Path, paths: list[Path]) -> str:
    """Part files are named by their content hash, so their paths identify the input bytes."""
    digest = hashlib.sha256()
    for path in sorted(str(p.relative_to(data_dir)) for p in paths):
        digest.update(path.encode() + b"\n")
    return digest.hexdigest()


def _output_key(
    request: DatasetRequest, data_dir: Path, parts: list[_Partition], price_table: str
) -> str:
    """Key of a whole dataset: the request, every feature partition's key, the price files the
    targets read and the code that turns features into splits, quality and files."""
    target_files = raw.files(
        data_dir,
        price_table,
        request.symbols,
        request.start,
        request.end + request.target.horizon_ms,
    )
    return FeatureCache.key(
        code_hash(OUTPUT_CODE),
        data_dir,
        target_files,
        request.model_dump_json(),
        *(part.key for part in parts),
    )


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        if not (out_dir / "metadata.json").is_file():
            shutil.rmtree(tmp)
            raise DatasetError(
                f"{out_dir} exists and is not a dataset directory; choose another --out"
            )
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)


def _to_output(table: pa.Table) -> pa.Table:
    stamps = pc.cast(table["ts"], pa.timestamp("ms", tz="UTC"))
    table = table.set_column(table.schema.get_field_index("ts"), "ts", stamps)
    return table.select(
        ["ts", "symbol", *[c for c in table.column_names if c not in ("ts", "symbol")]]
    )


def build(
    request: DatasetRequest,
    data_dir: Path,
    out_dir: Path,
    *,
    registry_dir: Path = registry.REGISTRY_DIR,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    auto_backfill: Any = None,
    max_backfill_days: int = 31,
    dataset_id: str | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Build and write the dataset; returns its metadata (also written to metadata.json).

    With `cache_dir` the features of each (symbol, day) partition are stored there by content
    (featlib.cache) and reused by later builds whose inputs and definitions are the same.

    With `auto_backfill` (featlib.backfill.BackfillOptions) missing candles (and funding, when
    the features read it) are fetched from Bybit first, at most `max_backfill_days` days."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    say = log or (lambda _msg: None)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    clock = started
    bar = tqdm(total=6, desc="build-dataset", unit="step", disable=not progress, leave=False)

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 4)
        clock = now
        bar.set_postfix_str(name)
        bar.update(1)

    fs = registry.load(request.registry_version, registry_dir)
    names = fs.names
    p = compute.plan(names)
    lookback = max(max(f.lookback_ms for f in fs.features), p.max_lookback_ms)
    horizon = request.target.horizon_ms
    split = request.split_config()
    warnings: list[str] = []
    needs = required_history(fs, request.target)
    if auto_backfill is not None:
        warnings += _backfill(data_dir, request, p, lookback, auto_backfill, max_backfill_days, say)
    price_table = "klines" if request.target.price == "close" else "trades"
    parts = _partitions(request, data_dir, p, fs.version, lookback) if cache_dir else []
    cache = FeatureCache(cache_dir) if cache_dir else None
    output_key = _output_key(request, data_dir, parts, price_table) if cache else None
    if cache is not None and (cache.output_dir(output_key) / "metadata.json").is_file():
        lap("plan")
        metadata = _reuse_output(
            cache.output_dir(output_key),
            request,
            data_dir,
            out_dir,
            dataset_id,
            cache_dir,
            len(parts),
            timings,
            started,
        )
        bar.close()
        for message in metadata["warnings"]:
            say(f"warning: {message}")
        say(f"dataset reused whole from the cache ({len(parts)} feature partitions unchanged)")
        return metadata
    check_history(data_dir, request, needs)
    compute.compiled(p, cache.sql_dir if cache else None)
    lap("plan")

    # Three chains run at once: these features, the targets and (with book features) the book
    # replay and its query. Each DuckDB query on one thread: a second buys a 1 s query almost
    # nothing on two cores already busy (measured: trades 0.80 s on 2 threads, 0.78 s on 1, at
    # 1.6 times the CPU)
    con = duckdb.connect(config={"threads": 1} if "orderbook" in p.sources else {})
    read_from, read_to = request.start - lookback, request.end + horizon
    used: list[Path] = []
    for kind in dict.fromkeys((*p.raw_tables, price_table)):
        if kind in raw.RAW_SCHEMAS:
            used += raw.register(con, data_dir, kind, request.symbols, read_from, read_to)
    grid = compute.grid(request.symbols, request.start, request.end, request.step_ms)
    cached = {part.key: cache.get(part.key) for part in parts} if cache else {}
    missing = [part for part in parts if cached[part.key] is None]
    todo = (
        grid
        if cache is None
        else pa.concat_tables(
            [_grid_rows(grid, part.symbol, part.lo, part.hi) for part in missing]
            or [grid.slice(0, 0)]
        )
    )
    elsewhere: dict[str, Callable[[], pa.Table]] = {}
    if "orderbook" in p.sources and len(todo):
        since = request.start - BOOK_WARMUP_MS
        book_files = [
            path
            for kind in ("orderbook_snapshots", "orderbook_deltas")
            for path in raw.files(data_dir, kind, request.symbols, since, request.end)
        ]
        used += book_files
        if not book_files:
            warnings.append(_no_data_warning(names, "orderbook", since, request.end))
        # the replay (numba, without the GIL) and the book's query run beside the other
        # sources' queries
        book_part = next(part for part in p.parts if part.source == "orderbook")
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="book")
        booked = pool.submit(_book_features, book_part, data_dir, request.symbols, todo, since)
        pool.shutdown(wait=False)

        def book_result() -> pa.Table:
            result, book_quality, seconds = booked.result()
            timings["book_replay"] = round(seconds, 4)
            if book_files and (book_quality["gaps"] or book_quality["desynced_samples"]):
                warnings.append(
                    f"order book: {book_quality['gaps']} update-id gap(s), "
                    f"{book_quality['desynced_samples']:,} grid rows with a "
                    "desynchronised book (book features null there)"
                )
            return result

        elsewhere["orderbook"] = book_result
    for source in p.sources:
        if source not in ("kline", "clock", "orderbook") and not any(
            con.execute(f'SELECT 1 FROM "{k}" LIMIT 1').fetchall()
            for k in compute.SOURCES[source].raw
        ):
            warnings.append(_no_data_warning(names, source, read_from, read_to))
    lap("load")

    # the targets read only prices: their own connection, beside the features; with the book
    # and trades (the two long chains) busy, it computes the light sources after them
    side = (
        [part for part in p.parts if part.source in ("kline", "funding", "clock")]
        if {"orderbook", "trades"} <= set(p.sources) and len(todo)
        else []
    )
    # trade-price targets read the trade bars the trade features compute: computed once
    trades_part = next((part for part in p.parts if part.source == "trades"), None)
    shared = price_table == "trades" and trades_part is not None and len(todo) > 0
    bars: Future[pa.Table] | None = Future() if shared else None
    side_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="targets")
    sided = side_pool.submit(
        _side_chain,
        request.target,
        side,
        data_dir,
        price_table,
        request.symbols,
        read_from,
        read_to,
        grid,
        todo,
        bars,
    )
    side_pool.shutdown(wait=False)
    for part in side:
        elsewhere[part.source] = lambda source=part.source: sided.result()[1][source]
    events = {}
    if bars is not None:
        try:
            events["trades"] = compute.source_events(trades_part, con)
        except BaseException as exc:
            bars.set_exception(exc)
            raise
        bars.set_result(events["trades"])
    if cache is None:
        features = compute.compute(p, con, todo, elsewhere, events)
    else:
        if missing:
            computed = compute.compute(p, con, todo, elsewhere, events)
            for part in missing:
                cached[part.key] = _grid_rows(computed, part.symbol, part.lo, part.hi)
                cache.put(part.key, cached[part.key])
        features = pa.concat_tables([cached[part.key] for part in parts])
        say(f"feature partitions: {len(parts) - len(missing)} reused, {len(missing)} computed")
    lap("features")
    targets = sided.result()[0]
    con.close()
    if features["ts"] != targets["ts"] or features["symbol"] != targets["symbol"]:
        raise RuntimeError("features and targets are not aligned on the grid")
    defined = None
    if request.short_history:
        features, defined, short_warnings = short_history_mask(
            features, fs, data_dir, request.symbols, request.start, request.end
        )
        warnings += short_warnings
    table = features
    for column in request.target.columns:
        table = table.append_column(column, targets[column])
    has_target = pc.is_valid(table["target_return"])
    missing_targets = len(table) - pc.sum(has_target).as_py() if len(table) else 0
    table = table.filter(has_target)
    assignment = assign_folds(table["ts"].to_numpy(), split, horizon, request.start, request.end)
    warnings += assignment.warnings
    # the split files are written (in a temporary directory, moved in place at the end) while
    # the quality report is worked out: Parquet encoding runs without the GIL
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    walk = isinstance(split, WalkForward)
    files = {
        (part.fold, part.split): (
            f"fold={part.fold}/{part.split}.parquet" if walk else f"{part.split}.parquet"
        )
        for part in assignment.parts
    }
    writers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="write")
    written = [
        writers.submit(_write_split, table, part, tmp / files[(part.fold, part.split)])
        for part in assignment.parts
    ]
    writers.shutdown(wait=False)
    try:
        quality, quality_warnings = quality_report(table, request.step_ms, request.quality)
    except QualityError as exc:
        for future in written:
            future.result()
        shutil.rmtree(tmp, ignore_errors=True)
        raise DatasetError(str(exc)) from None
    warnings += quality_warnings
    lap("targets")

    for future in written:
        future.result()
    folds = fold_table(assignment)
    counts = (
        {
            name: {**{k: v for k, v in info.items()}, "file": files[(0, name)]}
            for name, info in folds[0].items()
            if name != "fold"
        }
        if folds
        else {}
    )
    lap("write")

    total = time.perf_counter() - started
    metadata = {
        "id": dataset_id or f"ds-{uuid.uuid4().hex[:12]}",
        "format_version": FORMAT_VERSION,
        "status": "ready",
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "request": json.loads(request.model_dump_json()),
        "registry_version": fs.version,
        "features": [
            {"name": f.name, "lookback": f.lookback_window, "input_sources": f.input_sources}
            for f in fs.features
        ],
        "target": {**request.target.model_dump(), "columns": request.target.columns},
        "resolution": request.resolution,
        "symbols": request.symbols,
        "range": {"start": iso(request.start), "end": iso(request.end)},
        "split": split_metadata(assignment),
        "splits": counts,
        "folds": folds,
        "rows": {
            "grid": len(grid),
            "missing_targets": int(missing_targets),
            "purged": sum(len(p.purged) for p in assignment.parts),
            "embargoed": sum(len(p.embargoed) for p in assignment.parts),
            "written": sum(len(p.rows) for p in assignment.parts),
        },
        "quality": quality,
        "short_history": defined,
        "cache": {
            "dir": None if cache_dir is None else str(cache_dir),
            "partitions": len(parts),
            "reused": len(parts) - len(missing),
            "computed": len(missing),
            "output": "built",
        },
        "input": {
            "data_dir": str(data_dir),
            "files": len(used),
            "data_hash": _data_hash(data_dir, used),
            "read_from": iso(read_from),
            "read_to": iso(read_to),
            "synthetic": synthetic.is_synthetic(data_dir),
        },
        "timings_s": {**timings, "total": round(total, 4)},
        "peak_rss_mb": _peak_rss_mb(),
        "warnings": warnings,
    }
    (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    if cache is not None:
        cache.put_dir(output_key, tmp)
    _replace_dir(tmp, out_dir)
    bar.close()
    for message in warnings:
        say(f"warning: {message}")
    return metadata


def _reuse_output(
    stored: Path,
    request: DatasetRequest,
    data_dir: Path,
    out_dir: Path,
    dataset_id: str | None,
    cache_dir: Path,
    partitions: int,
    timings: dict[str, float],
    started: float,
) -> dict[str, Any]:
    """Write a dataset an earlier build made from the same inputs and definitions: its split
    files are linked, its metadata is the earlier one with this build's id, time and cache."""
    metadata = json.loads((stored / "metadata.json").read_text())
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    link_tree(stored, tmp)
    metadata.update(
        id=dataset_id or f"ds-{uuid.uuid4().hex[:12]}",
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        request=json.loads(request.model_dump_json()),
        cache={
            "dir": str(cache_dir),
            "partitions": partitions,
            "reused": partitions,
            "computed": 0,
            "output": "reused",
            "built_by": metadata["id"],
        },
        timings_s={**timings, "total": round(time.perf_counter() - started, 4)},
        peak_rss_mb=_peak_rss_mb(),
    )
    metadata["input"]["data_dir"] = str(data_dir)
    (tmp / "metadata.json").unlink()
    (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    _replace_dir(tmp, out_dir)
    return metadata


def catalog_record(request: DatasetRequest, out_dir: Path | None = None) -> dict[str, Any]:
    """The catalog record of a dataset about to be built (Catalog.create_dataset takes it)."""
    return {
        "request": json.loads(request.model_dump_json()),
        "registry_version": request.registry_version,
        "symbols": request.symbols,
        "out_dir": None if out_dir is None else str(out_dir),
    }


def build_recorded(
    catalog: Catalog,
    dataset_id: str,
    request: DatasetRequest,
    data_dir: Path,
    out_dir: Path,
    **options: Any,
) -> dict[str, Any]:
    """`build` a dataset the catalog holds as building (catalog_record) and record the outcome:
    ready with its counts, quality and timings, or failed with the error, which is re-raised.
    `options` go to `build`."""
    try:
        metadata = build(request, data_dir, out_dir, dataset_id=dataset_id, **options)
    except Exception as exc:
        catalog.update_dataset(dataset_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    catalog.update_dataset(dataset_id, **dataset_fields(metadata), out_dir=str(out_dir))
    return metadata
