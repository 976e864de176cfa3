"""The raw store: every received row in Hive-partitioned Parquet.

Layout: `{root}/{kind}/date=YYYY-MM-DD/symbol=SYM/part-{content hash}.parquet` (date = UTC
date of `ts`), readable as-is by DuckDB, Polars or Spark. Writes are atomic (temp file +
rename) and idempotent: rows whose key (schema.RAW_KEYS) is already stored are skipped, so
re-ingesting a capture or overlapping recording with backfill never duplicates a row. A
per-partition lock keeps two writers (service, pipeline) from racing. A part file that cannot
be read is moved to `{root}/_quarantine/` (kept, never deleted) and reported.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import itertools
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featlib.schema import RAW_KEYS, RAW_SCHEMAS, check_symbol, file_schema
from featlib.timeutil import DAY_MS, days_between, iso

log = logging.getLogger(__name__)

QUARANTINE = "_quarantine"


class RawStoreError(RuntimeError):
    """The store cannot serve a request (unreadable files, unknown table)."""


@dataclass
class WriteStats:
    rows_in: int = 0
    rows_written: int = 0
    files: list[Path] = field(default_factory=list)
    quarantined: list[Path] = field(default_factory=list)

    def __iadd__(self, other: WriteStats) -> WriteStats:
        self.rows_in += other.rows_in
        self.rows_written += other.rows_written
        self.files += other.files
        self.quarantined += other.quarantined
        return self

    @property
    def duplicates(self) -> int:
        return self.rows_in - self.rows_written


def _check_kind(kind: str) -> None:
    if kind not in RAW_SCHEMAS:
        raise RawStoreError(f"unknown raw table {kind!r}; known: {', '.join(RAW_SCHEMAS)}")


def _symbol(symbol: str) -> str:
    try:
        return check_symbol(symbol)
    except ValueError as exc:
        raise RawStoreError(str(exc)) from None


def partition_dir(root: Path, kind: str, day: dt.date, symbol: str) -> Path:
    _symbol(symbol)
    return Path(root) / kind / f"date={day.isoformat()}" / f"symbol={symbol}"


def part_files(directory: Path) -> list[Path]:
    return [Path(e.path) for e in sorted(_part_entries(directory), key=lambda e: e.name)]


def _part_entries(directory: Path) -> list[os.DirEntry]:
    """A partition's part files as directory entries (no Path object or separate stat call
    per file: a live partition holds thousands)."""
    try:
        with os.scandir(directory) as entries:
            return [
                e for e in entries if e.name.startswith("part-") and e.name.endswith(".parquet")
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def quarantine(root: Path, path: Path, reason: str) -> Path:
    """Move an unreadable part file aside (recoverable) and say so."""
    target = Path(root) / QUARANTINE / path.relative_to(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(path, target)
    log.error("quarantined unreadable parquet %s -> %s: %s", path, target, reason)
    return target


def unreadable(paths: Iterable[Path]) -> dict[Path, str]:
    """Files whose Parquet footer cannot be read, with the reason."""
    bad = {}
    for path in paths:
        try:
            pq.read_metadata(path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            bad[path] = f"{type(exc).__name__}: {exc}"
    return bad


_SPANS: dict[tuple[str, int, int], tuple[int, int] | None] = {}


def _span(path: Path | os.DirEntry) -> tuple[int, int] | None:
    """(min ts, max ts) of a part file (None: no rows), from its footer statistics; part files
    never change (named by content), so each is read once per process (one read per size and
    mtime: a file damaged in place is read again, and found out). Raises for a file whose
    footer cannot be read."""
    info = path.stat()
    key = (os.fspath(path), info.st_size, info.st_mtime_ns)
    if key in _SPANS:
        return _SPANS[key]
    meta = pq.read_metadata(path)
    column = meta.schema.names.index("ts")
    lows, highs = [], []
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(column).statistics
        if stats is None or not stats.has_min_max:  # written elsewhere without statistics
            ts = pq.read_table(path, columns=["ts"])["ts"].cast(pa.int64())
            lows, highs = [pc.min(ts).as_py()], [pc.max(ts).as_py()]
            break
        lows.append(_epoch_ms(stats.min))
        highs.append(_epoch_ms(stats.max))
    span = (min(lows), max(highs)) if lows and lows[0] is not None else None
    if len(_SPANS) > 200_000:
        _SPANS.clear()
    _SPANS[key] = span
    return span


def _epoch_ms(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return round(value.timestamp() * 1000)
    return int(value)


def _write_atomic(directory: Path, table: pa.Table) -> Path | None:
    tmp = directory / f".tmp-{uuid.uuid4().hex}"
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()[:24]
            os.fsync(handle.fileno())
        final = directory / f"part-{digest}.parquet"
        if final.exists():  # identical content already stored
            return None
        os.replace(tmp, final)
        return final
    finally:
        tmp.unlink(missing_ok=True)


def _new_rows(kind: str, batch: pa.Table, existing: list[Path]) -> pa.Table:
    """Rows of `batch` whose key is neither earlier in the batch nor already stored (keys
    compare null to null, as IS NOT DISTINCT FROM)."""
    keys = list(RAW_KEYS[kind])
    comparable = _comparable_keys(batch, keys)
    first = (
        comparable.append_column("_i", pa.array(np.arange(len(batch)), pa.int64()))
        .group_by(keys, use_threads=False)
        .aggregate([("_i", "min")])["_i_min"]
    )
    keep = np.sort(first.to_numpy())
    if existing:
        stored = pa.concat_tables(
            [_comparable_keys(pq.read_table(p, columns=keys), keys) for p in existing]
        )
        candidates = comparable.take(keep).append_column("_i", pa.array(keep, pa.int64()))
        fresh = candidates.join(stored, keys, join_type="left anti", use_threads=False)
        keep = np.sort(fresh["_i"].to_numpy())
    return batch.take(pa.array(keep, pa.int64()))


def _comparable_keys(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    """The key columns with nulls replaced by a value no real key has, so null matches null."""
    columns = {}
    for name in keys:
        column = table[name]
        if column.null_count:
            kind = column.type
            if pa.types.is_timestamp(kind):
                column = column.cast(pa.int64())
                kind = pa.int64()
            sentinel = "\x00null" if pa.types.is_string(kind) else pa.scalar(-(1 << 63), kind)
            column = column.fill_null(sentinel)
        columns[name] = column
    return pa.table(columns)


def write(root: Path, kind: str, table: pa.Table) -> WriteStats:
    """Store rows of raw table `kind` (schema.RAW_SCHEMAS[kind]), skipping stored keys."""
    _check_kind(kind)
    root = Path(root)
    stats = WriteStats(rows_in=len(table))
    if not len(table):
        return stats
    table = table.select(RAW_SCHEMAS[kind].names).cast(RAW_SCHEMAS[kind])
    ts_ms = table["ts"].cast(pa.int64()).to_numpy()
    days = ts_ms // DAY_MS
    symbols = table["symbol"].to_numpy(zero_copy_only=False)
    order = np.lexsort((days, symbols))  # one pass: runs of (symbol, day)
    edges = np.flatnonzero(
        (symbols[order][1:] != symbols[order][:-1]) | (days[order][1:] != days[order][:-1])
    )
    for lo, hi in itertools.pairwise([0, *(edges + 1), len(order)]):
        rows = order[lo:hi]
        day_index, symbol = int(days[rows[0]]), str(symbols[rows[0]])
        batch = table.take(pa.array(np.sort(rows))).drop_columns(["symbol"])
        batch = batch.cast(file_schema(kind))
        day = dt.date(1970, 1, 1) + dt.timedelta(days=day_index)
        directory = partition_dir(root, kind, day, symbol)
        with _locked(directory):
            spans = {}
            for entry in _part_entries(directory):
                try:
                    spans[entry.path] = _span(entry)
                except Exception as exc:  # pyarrow raises several types for a broken file
                    reason = f"{type(exc).__name__}: {exc}"
                    stats.quarantined.append(quarantine(root, Path(entry.path), reason))
            # a row's key determines its ts, so only files whose ts range meets the batch's
            # can hold its keys: appending to a day reads a file or two, not the whole day
            first, last = int(ts_ms[rows].min()), int(ts_ms[rows].max())
            meets = [
                Path(p)
                for p, span in sorted(spans.items())
                if span and span[0] <= last and span[1] >= first
            ]
            fresh = _new_rows(kind, batch, meets)
            if len(fresh):
                path = _write_atomic(directory, fresh)
                if path is not None:
                    stats.files.append(path)
                    stats.rows_written += len(fresh)
    return stats


def files(
    root: Path,
    kind: str,
    symbols: Sequence[str] | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> list[Path]:
    """Part files of `kind` for the symbols and the UTC days touched by [start_ms, end_ms)."""
    _check_kind(kind)
    base = Path(root) / kind
    if not base.is_dir():
        return []
    if start_ms is not None and end_ms is not None:
        day_dirs = [base / f"date={d.isoformat()}" for d in days_between(start_ms, end_ms)]
    else:
        day_dirs = sorted(base.glob("date=*"))
    found = []
    for day_dir in day_dirs:
        if symbols is None:
            sym_dirs = sorted(day_dir.glob("symbol=*"))
        else:
            sym_dirs = [day_dir / f"symbol={_symbol(s)}" for s in symbols]
        for sym_dir in sym_dirs:
            found += part_files(sym_dir)
    return found


def _require_readable(paths: Sequence[Path]) -> None:
    bad = unreadable(paths)
    if bad:
        listing = "; ".join(f"{p}: {why}" for p, why in bad.items())
        raise RawStoreError(
            f"{len(bad)} unreadable parquet file(s) in the raw store: {listing}. Move them "
            f"aside (featlib.raw.quarantine) or re-ingest the data they held."
        )


def register(
    con: duckdb.DuckDBPyConnection,
    root: Path,
    kind: str,
    symbols: Sequence[str] | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
    name: str | None = None,
) -> list[Path]:
    """Expose stored rows of `kind` as DuckDB view `name` (default: kind), symbol included.

    Unreadable part files raise RawStoreError naming each file: a dataset is never built
    silently from part of the data.
    """
    paths = files(root, kind, symbols, start_ms, end_ms)
    name = name or kind
    if not paths:
        con.register(name, RAW_SCHEMAS[kind].empty_table())
        return paths
    _require_readable(paths)
    listing = ", ".join(f"'{p}'" for p in paths)
    columns = ", ".join(f'"{c}"' for c in RAW_SCHEMAS[kind].names)
    con.execute(
        f'CREATE OR REPLACE TEMP VIEW "{name}" AS SELECT {columns} FROM read_parquet([{listing}], '
        "hive_partitioning = true, union_by_name = true, "
        "hive_types = {'date': DATE, 'symbol': VARCHAR})"
    )
    return paths


def read(
    root: Path,
    kind: str,
    symbols: Sequence[str] | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
    ordered: bool = True,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Stored rows of `kind` in [start_ms, end_ms), ordered by symbol and ts (unless not
    `ordered`: then in file order, which spares sorting big rows), as Arrow with the canonical
    schema (or its `columns`, `symbol` and `ts` always included). Unreadable part files raise
    RawStoreError naming each file."""
    schema = RAW_SCHEMAS[kind]
    names = schema.names if columns is None else list(dict.fromkeys(["symbol", "ts", *columns]))
    want = pa.schema([schema.field(n) for n in names])
    paths = files(root, kind, symbols, start_ms, end_ms)
    _require_readable(paths)
    parts = []
    for path in paths:  # pyarrow reads list columns (book levels) several times faster
        stored = pq.read_schema(path).names
        table = pq.read_table(path, columns=[n for n in names if n in stored])
        table = _within(table, start_ms, end_ms)
        symbol = path.parent.name.removeprefix("symbol=")
        columns_ = {
            n: (
                pa.repeat(pa.scalar(symbol), len(table))
                if n == "symbol"
                else table[n]
                if n in stored
                else pa.nulls(len(table), want.field(n).type)
            )
            for n in names
        }
        parts.append(pa.table(columns_).cast(want))
    table = pa.concat_tables(parts) if parts else want.empty_table()
    if ordered and len(table):
        table = table.sort_by([("symbol", "ascending"), ("ts", "ascending")])
    return table


def _within(table: pa.Table, start_ms: int | None, end_ms: int | None) -> pa.Table:
    """Rows with start_ms <= ts < end_ms: a slice (no copy of list columns) when the file is
    in time order, as the writers store it, else a filter."""
    if start_ms is None and end_ms is None:
        return table
    ts = table["ts"].cast(pa.int64()).to_numpy()
    lo = -(1 << 63) if start_ms is None else start_ms
    hi = (1 << 63) - 1 if end_ms is None else end_ms
    if len(ts) < 2 or bool(np.all(ts[1:] >= ts[:-1])):
        first, last = np.searchsorted(ts, [lo, hi])
        return table if (first, last) == (0, len(ts)) else table.slice(first, last - first)
    return table.filter(pa.array((ts >= lo) & (ts < hi)))


def symbols(root: Path, kind: str) -> list[str]:
    base = Path(root) / kind
    return sorted({p.name.removeprefix("symbol=") for p in base.glob("date=*/symbol=*")})


@dataclass(frozen=True)
class Period:
    start_ms: int
    end_ms: int
    rows: int

    def __str__(self) -> str:
        return f"{iso(self.start_ms)} → {iso(self.end_ms)} ({self.rows:,} rows)"


def candle_periods(
    root: Path, symbol: str, interval: str = "1", max_gap_ms: int = 60_000
) -> list[Period]:
    """Contiguous runs of confirmed candles for `symbol`, as (first close, last close, count)."""
    con = duckdb.connect()
    try:
        register(con, root, "klines", [symbol])
        rows = con.execute(
            f"""
            WITH c AS (
                SELECT DISTINCT epoch_ms(ts) AS t FROM klines
                WHERE confirm AND interval = ? AND symbol = ?
            ), g AS (
                SELECT t, CASE WHEN t - lag(t) OVER (ORDER BY t) > {max_gap_ms}
                               THEN 1 ELSE 0 END AS brk FROM c
            ), island AS (SELECT t, sum(brk) OVER (ORDER BY t) AS k FROM g)
            SELECT min(t), max(t), count(*) FROM island GROUP BY k ORDER BY 1
            """,
            [interval, symbol],
        ).fetchall()
    finally:
        con.close()
    return [Period(int(a), int(b), int(n)) for a, b, n in rows]


def day_periods(root: Path, kind: str, symbol: str) -> list[Period]:
    """Contiguous runs of stored UTC days of `kind` for `symbol` (rows counted from footers)."""
    _symbol(symbol)
    days: dict[dt.date, int] = {}
    for day_dir in sorted((Path(root) / kind).glob("date=*")):
        sym_dir = day_dir / f"symbol={symbol}"
        parts = part_files(sym_dir)
        if parts:
            day = dt.date.fromisoformat(day_dir.name.removeprefix("date="))
            bad = unreadable(parts)
            days[day] = sum(pq.read_metadata(p).num_rows for p in parts if p not in bad)
    periods: list[Period] = []
    for day in sorted(days):
        start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)
        if periods and periods[-1].end_ms == start:
            last = periods[-1]
            periods[-1] = Period(last.start_ms, start + DAY_MS, last.rows + days[day])
        else:
            periods.append(Period(start, start + DAY_MS, days[day]))
    return periods
