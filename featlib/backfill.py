"""Backfill: Bybit history over REST (pybit) and daily trade archives into the raw store.

    job = run(BackfillJob(BackfillRequest(symbol="BTCUSDT", start="2022-01-01",
                                          end="2022-01-31")), "data/raw")

The unit of work is one UTC day of one data type, exactly the raw store's partition
`{kind}/date=D/symbol=S/` (a candle belongs to the day of its close, like live data). A day
that is already complete costs no API call:
- klines: 1,440 confirmed 1-minute candles stored (however they got there), or a marker;
- funding: a REST settlement stored at every funding time of the day (8-hourly unless told),
  or a marker;
- trades: a marker (only a validated archive fetch proves a day of trades is complete).
A marker (`.backfill.json` in the partition, ignored by Parquet readers and removed with the
partition) records a verified fetch of a finished day and the part files (name, size) it left;
it stops counting as soon as one of those files is missing, resized or unreadable.

Every fetched day is written with `raw.write` and read back: files readable with the canonical
schema, every fetched row present exactly once, no duplicate keys, times inside the day and on
the candle grid (strictly increasing within a file), prices positive. A failed check moves the
files to the quarantine and fetches the day again (`day_attempts`). Calls are paced (`delay_s`)
and retried with exponential backoff on HTTP 429/5xx, Bybit rate limits (retCode 10006,
10018), server errors (10000, 10016), timeouts, connection errors and corrupt pages; a rejected
request (retCode 10001: bad symbol or parameters, other 4xx) fails the job at once.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import itertools
import json
import logging
import os
import queue
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pybit.exceptions import FailedRequestError, InvalidRequestError
from pybit.unified_trading import HTTP
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from featlib import raw
from featlib.bybit import (
    BOOK_DEPTHS,
    BybitParseError,
    parse_message,
    parse_rest_funding,
    parse_rest_klines,
)
from featlib.schema import RAW_KEYS, RAW_SCHEMAS, check_symbol, file_schema
from featlib.timeutil import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    day_of,
    days_between,
    is_date_only,
    iso,
    parse_time,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.bybit.com"
DEFAULT_ARCHIVE_URL = "https://public.bybit.com"
ARCHIVE_PATH = "trading/{symbol}/{symbol}{date}.csv.gz"

DAY_TYPES = ("klines", "funding", "trades")
"""History by UTC day."""
CURRENT_TYPES = ("ticker", "orderbook", "recent_trades")
"""What Bybit serves only for now: one snapshot each, under progress key `now`."""
TYPES = DAY_TYPES + CURRENT_TYPES
DEFAULT_TYPES = ("klines", "funding")

INTERVAL = "1"
CANDLES_PER_DAY = DAY_MS // MINUTE_MS
MARKER = ".backfill.json"
SETTLE_MS = 10 * MINUTE_MS
"""A day counts as finished (markers, 'complete') this long after its end."""

RETRY_CODES = {10000, 10006, 10016, 10018}  # server timeout, rate limit, server error, IP limit
RATE_LIMIT_CODES = {10006, 10018}
ARCHIVE_COLUMNS = ("timestamp", "symbol", "side", "size", "price", "tickDirection", "trdMatchID")

JobStatus = Literal["pending", "running", "done", "failed", "cancelled"]
DayStatus = Literal["pending", "running", "done", "skipped", "failed"]

T = TypeVar("T")


class BackfillError(ValueError):
    """A backfill that cannot run as asked (bad symbol, range or options): never retried."""


class Cancelled(Exception):
    """The job was cancelled; raised between calls."""


class _Retry(Exception):
    """One call failed in a way worth retrying; `wait_s` is the server's hint, if any."""

    def __init__(self, reason: str, wait_s: float = 0.0):
        super().__init__(reason)
        self.wait_s = wait_s


class _DayFailed(Exception):
    """This day cannot be fetched now (retries exhausted, archive missing); others may."""


class _VerifyFailed(Exception):
    """The day's files did not pass the read-back check."""


# --- request and options ------------------------------------------------------------------


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class BackfillRequest(BaseModel):
    """What to fetch: one symbol, [start, end) in epoch ms (a date-only end includes the day)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    symbol: str
    start: int
    end: int
    types: tuple[str, ...] = DEFAULT_TYPES
    force: bool = Field(default=False, description="fetch days even when already complete")

    @field_validator("symbol")
    @classmethod
    def _symbol(cls, value: str) -> str:
        return check_symbol(value)

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, value: Any) -> int:
        return parse_time(value)

    @field_validator("end", mode="before")
    @classmethod
    def _end(cls, value: Any) -> int:
        if isinstance(value, str) and is_date_only(value):
            return parse_time(value) + DAY_MS
        return parse_time(value)

    @field_validator("types", mode="before")
    @classmethod
    def _types(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        value = tuple(dict.fromkeys(value))
        unknown = [v for v in value if v not in TYPES]
        if unknown or not value:
            raise ValueError(f"unknown data type(s) {unknown or value!r}; choose from {TYPES}")
        return tuple(t for t in TYPES if t in value)

    @model_validator(mode="after")
    def _range(self) -> BackfillRequest:
        if self.end <= self.start:
            raise ValueError(f"end {iso(self.end)} is not after start {iso(self.start)}")
        if self.start >= _now_ms():
            raise ValueError(f"start {iso(self.start)} is in the future: there is no history yet")
        return self

    def days(self, now_ms: int | None = None) -> list[dt.date]:
        """UTC days of [start, min(end, now))."""
        return days_between(self.start, min(self.end, now_ms or _now_ms()))


@dataclass(frozen=True)
class BackfillOptions:
    """How to talk to Bybit; tests point `base_url`/`archive_url` at a local fake."""

    base_url: str = DEFAULT_BASE_URL
    archive_url: str = DEFAULT_ARCHIVE_URL
    category: str = "linear"
    delay_s: float = 0.1
    timeout_s: float = 10.0
    max_retries: int = 5
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    page_limit: int = 1000
    funding_page_limit: int = 200
    funding_interval_h: int = 8
    day_attempts: int = 3
    book_depth: int = 200
    recent_trades_limit: int = 1000

    def __post_init__(self) -> None:
        problems = []
        if self.category not in ("linear", "inverse", "spot"):
            problems.append(f"category must be linear, inverse or spot, not {self.category!r}")
        if not 1 <= self.page_limit <= 1000:
            problems.append(
                f"page_limit must be 1..1000 (Bybit's kline limit), not {self.page_limit}"
            )
        if not 1 <= self.funding_page_limit <= 200:
            problems.append(f"funding_page_limit must be 1..200, not {self.funding_page_limit}")
        if self.funding_interval_h not in (1, 2, 4, 8):
            problems.append(
                f"funding_interval_h must be 1, 2, 4 or 8, not {self.funding_interval_h}"
            )
        if self.book_depth not in BOOK_DEPTHS or self.book_depth > 500:
            problems.append(f"book_depth must be one of 1, 25, 50, 200, 500, not {self.book_depth}")
        if not 1 <= self.recent_trades_limit <= 1000:
            problems.append("recent_trades_limit must be 1..1000")
        if min(self.delay_s, self.backoff_s, self.backoff_max_s) < 0 or self.timeout_s <= 0:
            problems.append("delays must be >= 0 and the timeout > 0")
        if self.max_retries < 0 or self.day_attempts < 1:
            problems.append("max_retries must be >= 0 and day_attempts >= 1")
        for name in ("base_url", "archive_url"):
            if not str(getattr(self, name)).startswith(("http://", "https://")):
                problems.append(f"{name} must be an http(s) URL, not {getattr(self, name)!r}")
        if problems:
            raise BackfillError("invalid backfill options: " + "; ".join(problems))

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1, 2, ...): doubling, capped."""
        return min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))


# --- jobs ---------------------------------------------------------------------------------


@dataclass
class TypeProgress:
    """One data type on one date."""

    status: DayStatus = "pending"
    rows: int = 0
    written: int = 0
    calls: int = 0
    attempts: int = 0
    seconds: float = 0.0
    error: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class DayProgress:
    date: str
    types: dict[str, TypeProgress]

    @property
    def status(self) -> DayStatus:
        states = {p.status for p in self.types.values()}
        for state in ("failed", "running", "pending"):
            if state in states:
                return state  # type: ignore[return-value]
        return "done" if "done" in states else "skipped"

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.types.values())

    @property
    def error(self) -> str | None:
        errors = [f"{k}: {p.error}" for k, p in self.types.items() if p.error]
        return "; ".join(errors) or None


class BackfillJob:
    """One backfill run: status, per-date progress, calls and timings; cancellable."""

    def __init__(self, request: BackfillRequest, job_id: str | None = None):
        self.id = job_id or uuid.uuid4().hex[:12]
        self.request = request
        self.status: JobStatus = "pending"
        self.error: str | None = None
        self.fatal = False
        self.created_at = _now_ms()
        self.started_at: int | None = None
        self.finished_at: int | None = None
        self.calls: Counter[str] = Counter()
        self.retries: list[dict[str, Any]] = []
        self.progress: dict[str, DayProgress] = {}
        day_types = [t for t in request.types if t in DAY_TYPES]
        if day_types:
            for day in request.days():
                key = day.isoformat()
                self.progress[key] = DayProgress(key, {t: TypeProgress() for t in day_types})
        current = [t for t in request.types if t in CURRENT_TYPES]
        if current:
            self.progress["now"] = DayProgress("now", {t: TypeProgress() for t in current})
        self._cancel = threading.Event()
        self._lock = threading.RLock()

    def cancel(self) -> None:
        """Ask the job to stop at the next call boundary (a pending job stops at once)."""
        with self._lock:
            self._cancel.set()
            if self.status == "pending":
                self.status = "cancelled"
                self.finished_at = _now_ms()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    @property
    def seconds(self) -> float | None:
        if self.started_at is None:
            return None
        return ((self.finished_at or _now_ms()) - self.started_at) / 1000

    def counts(self) -> Counter[str]:
        """How many (date, type) units are in each state."""
        with self._lock:
            return Counter(p.status for d in self.progress.values() for p in d.types.values())

    @property
    def rows(self) -> int:
        with self._lock:
            return sum(d.rows for d in self.progress.values())

    @property
    def written(self) -> int:
        with self._lock:
            return sum(p.written for d in self.progress.values() for p in d.types.values())

    def summary(self) -> str:
        """One line for logs and the CLI."""
        counts = self.counts()
        units = ", ".join(f"{counts[s]} {s}" for s in ("done", "skipped", "failed", "pending"))
        req = self.request
        return (
            f"{req.symbol} {iso(req.start)} → {iso(req.end)} [{','.join(req.types)}] "
            f"{self.status}: {units}; {self.rows:,} rows fetched, {self.written:,} written; "
            f"{sum(self.calls.values())} API calls ({len(self.retries)} retried) "
            f"in {self.seconds or 0:.1f}s"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot (safe to call from another thread)."""
        with self._lock:
            stamp = {
                "created_at": self.created_at,
                "started_at": self.started_at,
                "finished_at": self.finished_at,
            }
            return {
                "id": self.id,
                "symbol": self.request.symbol,
                "start": iso(self.request.start),
                "end": iso(self.request.end),
                "types": list(self.request.types),
                "status": self.status,
                "error": self.error,
                **{k: iso(v) if v else None for k, v in stamp.items()},
                "seconds": self.seconds,
                "calls": dict(self.calls),
                "calls_total": sum(self.calls.values()),
                "retries": len(self.retries),
                "rows": self.rows,
                "written": self.written,
                "counts": dict(self.counts()),
                "progress": {
                    key: {
                        "status": day.status,
                        "rows": day.rows,
                        "error": day.error,
                        "types": {k: asdict(p) for k, p in day.types.items()},
                    }
                    for key, day in self.progress.items()
                },
            }

    # state changes, called by `run`

    def _set(self, date: str, kind: str, **changes: Any) -> TypeProgress:
        with self._lock:
            progress = self.progress[date].types[kind]
            for key, value in changes.items():
                setattr(progress, key, value)
            return progress

    def _begin(self) -> None:
        with self._lock:
            self.status = "running"
            self.started_at = _now_ms()

    def _end(self, status: JobStatus, error: str | None = None, fatal: bool = False) -> None:
        with self._lock:
            self.status = status
            self.error = error
            self.fatal = fatal
            self.finished_at = _now_ms()
            for day in self.progress.values():
                for progress in day.types.values():
                    if progress.status == "running":
                        progress.status = "pending"


Notify = Callable[[BackfillJob, str, str], None]
"""on_progress(job, date, kind): called when one (date, type) reaches a final state."""


# --- the client: pacing, retries, counting --------------------------------------------------


def _header_wait(headers: Mapping[str, str] | None) -> float:
    """Seconds until the server says we may call again (Bybit's reset stamp or Retry-After)."""
    if not headers:
        return 0.0
    reset = headers.get("X-Bapi-Limit-Reset-Timestamp")
    if reset and str(reset).isdigit():
        return max(0.0, (int(reset) - _now_ms()) / 1000)
    after = headers.get("Retry-After")
    if after and str(after).replace(".", "", 1).isdigit():
        return float(after)
    return 0.0


class _Client:
    """One job's line to Bybit: a pybit session and an archive downloader, paced and retried."""

    def __init__(self, options: BackfillOptions, job: BackfillJob):
        self.options = options
        self.job = job
        self.http = HTTP(testnet=False, timeout=options.timeout_s, max_retries=1)
        self.http.endpoint = options.base_url.rstrip("/")  # pybit builds URLs from this
        self.http.retry_codes = set()  # pybit would sleep and retry on its own: retries are ours
        self.archive = httpx.Client(timeout=options.timeout_s, follow_redirects=True)
        self._last_call = 0.0

    def close(self) -> None:
        self.http.client.close()
        self.archive.close()

    def _wait(self, seconds: float) -> None:
        if seconds > 0 and self.job._cancel.wait(seconds):
            raise Cancelled
        if self.job.cancel_requested:
            raise Cancelled

    def _retrying(self, label: str, once: Callable[[], T], counter: TypeProgress | None) -> T:
        opts = self.options
        for attempt in itertools.count(1):
            self._wait(self._last_call + opts.delay_s - time.monotonic())
            self._last_call = time.monotonic()
            with self.job._lock:
                self.job.calls[label] += 1
                if counter is not None:
                    counter.calls += 1
            try:
                return once()
            except _Retry as exc:
                if attempt > opts.max_retries:
                    raise _DayFailed(f"{label}: {exc} (gave up after {attempt} attempts)") from None
                wait = min(opts.backoff_max_s, max(opts.backoff(attempt), exc.wait_s))
                with self.job._lock:
                    self.job.retries.append(
                        {"call": label, "attempt": attempt, "reason": str(exc), "wait_s": wait}
                    )
                log.warning("%s: %s; retry %d in %.2fs", label, exc, attempt, wait)
                self._wait(wait)
        raise AssertionError("unreachable")

    def rest(
        self,
        method: str,
        path: str,
        params: dict[str, Any],
        parse: Callable[[Mapping[str, Any], int], T],
        counter: TypeProgress | None = None,
    ) -> T:
        """Call a pybit market method; `parse(page, received_at)` runs inside the retry loop."""

        def once() -> T:
            try:
                page = getattr(self.http, method)(**params)
            except InvalidRequestError as exc:
                code = exc.status_code
                if code in RETRY_CODES:
                    kind = "rate limited" if code in RATE_LIMIT_CODES else "server error"
                    raise _Retry(
                        f"{kind} (retCode {code}: {exc.message})", _header_wait(exc.resp_headers)
                    ) from None
                raise BackfillError(
                    f"Bybit rejected {path} for {params.get('symbol')} "
                    f"(category {params.get('category')}): {exc.message} (retCode {code}). "
                    "Check the symbol, the category and the dates."
                ) from None
            except FailedRequestError as exc:
                code = exc.status_code
                if code == 429 or code >= 500 or code in (408, 409):
                    reason = {429: "HTTP 429 too many requests", 409: "corrupt page (not JSON)"}
                    raise _Retry(
                        reason.get(code, f"HTTP {code}"), _header_wait(exc.resp_headers)
                    ) from None
                if code == 403:
                    raise BackfillError(
                        f"HTTP 403 from {path}: access denied or IP rate limit exceeded (Bybit "
                        "blocks for about 10 minutes); try later with a larger delay"
                    ) from None
                raise BackfillError(f"HTTP {code} from {path}: {exc.message}") from None
            except OSError as exc:  # requests' timeouts and connection errors are OSErrors
                raise _Retry(f"{type(exc).__name__}: {exc}") from None
            try:
                return parse(page, _now_ms())
            except BybitParseError as exc:
                raise _Retry(f"corrupt page: {exc}") from None

        return self._retrying(path, once, counter)

    def download(
        self, url: str, parse: Callable[[bytes, int], T], counter: TypeProgress | None = None
    ) -> T:
        """GET an archive file; 404 fails the day, 429/5xx/timeouts/corrupt files are retried."""

        def once() -> T:
            try:
                response = self.archive.get(url)
            except httpx.TransportError as exc:
                raise _Retry(f"{type(exc).__name__}: {exc}") from None
            code = response.status_code
            if code == 404:
                raise _DayFailed(f"no archive at {url} (HTTP 404; published after the day ends)")
            if code == 429 or code >= 500:
                raise _Retry(f"HTTP {code}", _header_wait(response.headers))
            if code != 200:
                raise _DayFailed(f"HTTP {code} from {url}")
            try:
                return parse(response.content, _now_ms())
            except (OSError, EOFError, zlib.error, pa.ArrowInvalid, BybitParseError) as exc:
                raise _Retry(f"corrupt archive: {exc}") from None

        return self._retrying("archive", once, counter)


# --- fetching one day -----------------------------------------------------------------------


def _day_ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


def _fetch_klines(
    client: _Client, symbol: str, day: dt.date, counter: TypeProgress | None = None
) -> pa.Table:
    """Confirmed 1m candles closing on `day`, in windows of <= page_limit candles.

    Each call names a window of at most `limit` candle starts, so Bybit's answer is the same
    whichever end of an over-long range it would keep; the still-open candle is left out.
    """
    first = _day_ms(day) - MINUTE_MS  # the candle that closes at 00:00
    last = min(_day_ms(day) + DAY_MS - 2 * MINUTE_MS, (_now_ms() // MINUTE_MS - 1) * MINUTE_MS)
    limit = client.options.page_limit
    rows: list[dict[str, Any]] = []
    window = first
    while window <= last:
        window_end = min(last, window + (limit - 1) * MINUTE_MS)
        count = (window_end - window) // MINUTE_MS + 1

        def parse(page: Mapping[str, Any], received: int, lo: int = window, hi: int = window_end):
            parsed = parse_rest_klines(page, symbol=symbol, interval=INTERVAL, received_at=received)
            kept = []
            for row in parsed.rows:
                if row["start"] % MINUTE_MS:
                    raise BybitParseError("result.list", f"start {row['start']} is off the minute")
                if row["confirm"] and lo <= row["start"] <= hi:
                    kept.append(row)
            return kept

        rows += client.rest(
            "get_kline",
            "/v5/market/kline",
            {
                "category": client.options.category,
                "symbol": symbol,
                "interval": INTERVAL,
                "start": window,
                "end": window_end,
                "limit": count,
            },
            parse,
            counter,
        )
        window = window_end + MINUTE_MS
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMAS["klines"])


def _fetch_funding(
    client: _Client, symbol: str, start: int, end: int, counter: TypeProgress | None = None
) -> pa.Table:
    """Settled funding rates in [start, end), paging back from the end (newest-first pages)."""
    limit = client.options.funding_page_limit
    rows: dict[int, dict[str, Any]] = {}
    end_time = end - 1
    while end_time >= start:

        def parse(page: Mapping[str, Any], received: int, hi: int = end_time) -> tuple[int, list]:
            parsed = parse_rest_funding(page, symbol=symbol, received_at=received)
            return len(parsed.rows), [r for r in parsed.rows if start <= r["ts"] <= hi]

        n, page_rows = client.rest(
            "get_funding_rate_history",
            "/v5/market/funding/history",
            {
                "category": client.options.category,
                "symbol": symbol,
                "startTime": start,
                "endTime": end_time,
                "limit": limit,
            },
            parse,
            counter,
        )
        for row in page_rows:
            rows.setdefault(row["ts"], row)
        if n < limit or not page_rows:
            break
        oldest = min(r["ts"] for r in page_rows)
        if oldest > end_time or oldest <= start:
            break
        end_time = oldest - 1
    ordered = [rows[t] for t in sorted(rows)]
    return pa.Table.from_pylist(ordered, schema=RAW_SCHEMAS["funding"])


def _archive_ms(stamps: pa.Array) -> pa.Array:
    """'1585180700.0647' (seconds, fractional) -> 1585180700064 ms, floored, without floats."""
    stamps = pc.utf8_trim_whitespace(stamps)
    dotted = pc.if_else(
        pc.match_substring(stamps, "."), stamps, pc.binary_join_element_wise(stamps, "", ".")
    )
    parts = pc.split_pattern(dotted, ".", max_splits=1)
    seconds = pc.cast(pc.list_element(parts, 0), pa.int64())
    frac = pc.utf8_rpad(pc.utf8_slice_codeunits(pc.list_element(parts, 1), 0, 3), 3, "0")
    if not pc.all(pc.match_substring_regex(frac, r"^\d{3}$")).as_py():
        raise BybitParseError("timestamp", "expected seconds like 1585180700.0647")
    return pc.add(pc.multiply(seconds, 1000), pc.cast(frac, pa.int64()))


def parse_trade_archive(data: bytes, *, symbol: str, day: dt.date, received_at: int) -> pa.Table:
    """One day of Bybit's public trade archive (CSV.gz) -> trades rows sorted by time."""
    text = gzip.decompress(data)
    header = text.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(",")
    missing = [c for c in ARCHIVE_COLUMNS if c not in header]
    if missing:
        raise BybitParseError("header", f"missing column(s) {missing}; got {header}")
    strings = ("timestamp", "symbol", "side", "tickDirection", "trdMatchID")
    table = pacsv.read_csv(
        io.BytesIO(text),
        convert_options=pacsv.ConvertOptions(
            column_types={
                **{c: pa.string() for c in strings},
                "size": pa.float64(),
                "price": pa.float64(),
            },
            include_columns=list(ARCHIVE_COLUMNS),
            strings_can_be_null=False,
        ),
    )
    if table.num_rows == 0:
        raise BybitParseError("<archive>", "no trades")
    for name in ARCHIVE_COLUMNS:
        if table[name].null_count:
            raise BybitParseError(name, "empty value")
    ts = _archive_ms(table["timestamp"].combine_chunks())
    start = _day_ms(day)
    checks = {
        "symbol": pc.all(pc.equal(table["symbol"], symbol)),
        "side": pc.all(pc.is_in(table["side"], pa.array(["Buy", "Sell"]))),
        "price": pc.all(pc.greater(table["price"], 0)),
        "size": pc.all(pc.greater(table["size"], 0)),
        "trdMatchID": pc.all(pc.greater(pc.utf8_length(table["trdMatchID"]), 0)),
        "timestamp": pc.all(pc.and_(pc.greater_equal(ts, start), pc.less(ts, start + DAY_MS))),
    }
    bad = [name for name, ok in checks.items() if not ok.as_py()]
    if bad:
        raise BybitParseError(
            ",".join(bad), f"invalid values in the {symbol} {day} archive (wrong symbol/day?)"
        )
    if pc.count_distinct(table["trdMatchID"]).as_py() != table.num_rows:
        raise BybitParseError("trdMatchID", "duplicate trade ids")
    n = table.num_rows
    direction = pc.if_else(pc.equal(table["tickDirection"], ""), None, table["tickDirection"])
    schema = RAW_SCHEMAS["trades"]
    columns = {
        "symbol": pa.array([symbol] * n, pa.string()),
        "ts": ts,
        "trade_id": table["trdMatchID"],
        "side": table["side"],
        "price": table["price"],
        "size": table["size"],
        "tick_direction": direction,
        "block_trade": pa.nulls(n, pa.bool_()),
        "seq": pa.nulls(n, pa.int64()),
        "received_at": pa.array([received_at] * n, pa.int64()),
    }
    arrays = [pc.cast(columns[f.name], f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema).sort_by([("ts", "ascending")])


def _fetch_trades(
    client: _Client, symbol: str, day: dt.date, counter: TypeProgress | None = None
) -> pa.Table:
    path = ARCHIVE_PATH.format(symbol=symbol, date=day.isoformat())
    url = f"{client.options.archive_url.rstrip('/')}/{path}"
    return client.download(
        url,
        lambda data, received: parse_trade_archive(
            data, symbol=symbol, day=day, received_at=received
        ),
        counter,
    )


def _fetch_current(client: _Client, symbol: str, kind: str, counter: TypeProgress) -> pa.Table:
    """A current ticker / order book / recent trades page -> canonical rows (bybit parsers)."""
    opts = client.options
    base = {"category": opts.category, "symbol": symbol}
    if kind == "ticker":

        def parse(page: Mapping[str, Any], received: int) -> pa.Table:
            items = page.get("result", {}).get("list") or []
            if not items:
                raise BybitParseError("result.list", f"no ticker for {symbol}")
            message = {"topic": f"tickers.{symbol}", "type": "snapshot", "ts": page.get("time")}
            parsed = parse_message({**message, "data": items[0]}, received_at=received)
            return parsed.table()  # type: ignore[union-attr]

        return client.rest("get_tickers", "/v5/market/tickers", base, parse, counter)
    if kind == "orderbook":

        def parse(page: Mapping[str, Any], received: int) -> pa.Table:
            book = page.get("result") or {}
            message = {
                "topic": f"orderbook.{opts.book_depth}.{symbol}",
                "type": "snapshot",
                "ts": book.get("ts"),
                "cts": book.get("cts"),
                "data": {k: book.get(k) for k in ("s", "b", "a", "u", "seq")},
            }
            return parse_message(message, received_at=received).table()  # type: ignore[union-attr]

        params = {**base, "limit": opts.book_depth}
        return client.rest("get_orderbook", "/v5/market/orderbook", params, parse, counter)

    def parse(page: Mapping[str, Any], received: int) -> pa.Table:
        items = page.get("result", {}).get("list") or []
        if not items:
            return pa.Table.from_pylist([], schema=RAW_SCHEMAS["trades"])
        data = [
            {
                "T": t.get("time"),
                "s": t.get("symbol"),
                "S": t.get("side"),
                "v": t.get("size"),
                "p": t.get("price"),
                "i": t.get("execId"),
                "BT": t.get("isBlockTrade"),
                **({"seq": t["seq"]} if t.get("seq") not in (None, "") else {}),
            }
            for t in items
        ]
        message = {"topic": f"publicTrade.{symbol}", "ts": page.get("time"), "data": data}
        table = parse_message(message, received_at=received).table()  # type: ignore[union-attr]
        return table.sort_by([("ts", "ascending")])

    params = {**base, "limit": opts.recent_trades_limit}
    return client.rest(
        "get_public_trade_history", "/v5/market/recent-trade", params, parse, counter
    )


# --- completeness, markers and the read-back check ----------------------------------------


def _settled(day: dt.date, now_ms: int) -> bool:
    return _day_ms(day) + DAY_MS + SETTLE_MS <= now_ms


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("files"), dict) else None


def _marker_holds(marker: dict[str, Any], directory: Path, bad: Iterable[Path]) -> bool:
    broken = {p.name for p in bad}
    for name, size in marker["files"].items():
        path = directory / name
        if name in broken or not path.is_file() or path.stat().st_size != size:
            return False
    return True


def _write_marker(directory: Path, kind: str, symbol: str, day: dt.date, rows: int) -> None:
    good = [p for p in raw.part_files(directory) if p not in raw.unreadable([p])]
    marker = {
        "kind": kind,
        "symbol": symbol,
        "date": day.isoformat(),
        "rows": rows,
        "files": {p.name: p.stat().st_size for p in good},
        "written_at": iso(_now_ms()),
    }
    tmp = directory / f".{MARKER}.{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(marker, indent=1) + "\n")
    os.replace(tmp, directory / MARKER)


def _read_parts(paths: Iterable[Path], columns: list[str] | None = None) -> pa.Table | None:
    tables = [pq.read_table(p, columns=columns) for p in paths]
    return pa.concat_tables(tables) if tables else None


def _funding_times(day: dt.date, interval_h: int) -> pa.Array:
    start = _day_ms(day)
    return pa.array(range(start, start + DAY_MS, interval_h * HOUR_MS), pa.int64())


def _ms(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    return pc.cast(column, pa.int64())


def day_complete(
    data_dir: Path,
    kind: str,
    symbol: str,
    day: dt.date,
    *,
    funding_interval_h: int = 8,
    now_ms: int | None = None,
) -> bool:
    """Whether a finished day of `kind` needs no fetch (see the module docstring)."""
    if not _settled(day, now_ms or _now_ms()):
        return False
    directory = raw.partition_dir(Path(data_dir), kind, day, symbol)
    paths = raw.part_files(directory)
    bad = raw.unreadable(paths)
    marker = _read_marker(directory)
    if marker is not None and _marker_holds(marker, directory, bad):
        return True
    good = [p for p in paths if p not in bad]
    if kind == "klines":
        table = _read_parts(good, ["start", "interval", "confirm"])
        if table is None:
            return False
        confirmed = table.filter(pc.and_(table["confirm"], pc.equal(table["interval"], INTERVAL)))
        return pc.count_distinct(confirmed["start"]).as_py() >= CANDLES_PER_DAY
    if kind == "funding":
        table = _read_parts(good, ["ts", "source"])
        if table is None:
            return False
        settled = _ms(table.filter(pc.equal(table["source"], "rest"))["ts"])
        return pc.all(pc.is_in(_funding_times(day, funding_interval_h), settled)).as_py()
    return False


def verify_day(
    data_dir: Path,
    kind: str,
    symbol: str,
    day: dt.date,
    fetched: pa.Table,
    new_files: Iterable[Path] = (),
) -> tuple[list[str], list[Path]]:
    """Read a stored day back against what was fetched -> (problems, files to quarantine).

    Every part file of the partition must be readable with the canonical schema; the files
    this fetch wrote (`new_files`) must also hold their candles in strictly increasing time.
    """
    new = set(new_files)
    directory = raw.partition_dir(Path(data_dir), kind, day, symbol)
    expected = file_schema(kind)
    problems: list[str] = []
    bad: list[Path] = []
    tables = []
    for path in raw.part_files(directory):
        try:
            schema = pq.read_schema(path)
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            problems.append(f"{path.name} unreadable ({type(exc).__name__}: {exc})")
            bad.append(path)
            continue
        if not schema.equals(expected, check_metadata=False):
            problems.append(f"{path.name} has schema {schema}, expected {expected}")
            bad.append(path)
            continue
        if kind == "klines" and path in new:
            confirmed = pc.and_(table["confirm"], pc.equal(table["interval"], INTERVAL))
            starts = _ms(table.filter(confirmed)["start"]).to_numpy()
            if len(starts) > 1 and not (starts[1:] > starts[:-1]).all():
                problems.append(f"{path.name}: candle times not strictly increasing")
                bad.append(path)
        tables.append(table)
    if problems:
        return problems, bad
    stored = pa.concat_tables(tables) if tables else expected.empty_table()
    start = _day_ms(day)
    ts = _ms(stored["ts"])
    if len(stored) and (pc.min(ts).as_py() < start or pc.max(ts).as_py() >= start + DAY_MS):
        problems.append("rows outside the day's partition")
    keys = list(RAW_KEYS[kind])
    if len(stored.select(keys).group_by(keys).aggregate([])) != len(stored):
        problems.append(f"duplicate rows (same {', '.join(keys)})")
    if kind == "klines":
        rows = stored.filter(pc.and_(stored["confirm"], pc.equal(stored["interval"], INTERVAL)))
        ident, want = _ms(rows["start"]), _ms(fetched["start"])
        starts, closes = ident.to_numpy(), _ms(rows["ts"]).to_numpy()
        if (starts % MINUTE_MS).any() or (closes != starts + MINUTE_MS).any():
            problems.append("a confirmed candle off the minute grid or not closing at start + 1m")
        prices = [rows[c] for c in ("open", "high", "low", "close")]
    elif kind == "trades":
        rows, ident, want = stored, stored["trade_id"], fetched["trade_id"]
        prices = [rows["price"], rows["size"]]
    else:
        rows = stored.filter(pc.equal(stored["source"], "rest"))
        ident, want = _ms(rows["ts"]), _ms(fetched["ts"])
        prices = []
        if pc.all(pc.is_finite(rows["funding_rate"])).as_py() is False:
            problems.append("non-finite funding rate")
    if any(len(p) and not pc.all(pc.greater(p, 0)).as_py() for p in prices):
        problems.append("non-positive prices or sizes")
    n_fetched = len(fetched)
    if pc.count_distinct(want).as_py() != n_fetched:
        problems.append("the fetched rows repeat themselves")
    found = pc.sum(pc.is_in(want, value_set=ident)).as_py() or 0
    if found != n_fetched:
        problems.append(f"{n_fetched - found} of {n_fetched} fetched rows missing after writing")
    return problems, bad


def _stored_starts(directory: Path) -> pa.Array:
    good = [p for p in raw.part_files(directory) if p not in raw.unreadable([p])]
    table = _read_parts(good, ["start", "interval", "confirm"])
    if table is None:
        return pa.array([], pa.int64())
    confirmed = table.filter(pc.and_(table["confirm"], pc.equal(table["interval"], INTERVAL)))
    return _ms(confirmed["start"]).combine_chunks()


def _store(
    root: Path, kind: str, symbol: str, day: dt.date, fetched: pa.Table, *, settled: bool
) -> int:
    """Write a fetched day, read it back, mark it complete when finished; -> rows written."""
    directory = raw.partition_dir(root, kind, day, symbol)
    table = fetched
    if kind == "klines" and len(fetched):
        # a minute already stored as confirmed (live, ingested) keeps its first version
        known = pc.is_in(_ms(fetched["start"]), value_set=_stored_starts(directory))
        table = fetched.filter(pc.invert(known))
    stats = raw.write(root, kind, table)
    problems, bad = verify_day(root, kind, symbol, day, fetched, stats.files)
    if problems:
        for path in dict.fromkeys([*bad, *stats.files]):
            if path.exists():
                raw.quarantine(root, path, f"backfill read-back check: {'; '.join(problems)}")
        raise _VerifyFailed("; ".join(problems))
    if settled:
        directory.mkdir(parents=True, exist_ok=True)
        _write_marker(directory, kind, symbol, day, len(fetched))
    return stats.rows_written


def _split_days(table: pa.Table) -> dict[dt.date, pa.Table]:
    days = pc.floor(pc.divide(pc.cast(_ms(table["ts"]), pa.float64()), DAY_MS))
    out = {}
    for index in sorted(set(pc.cast(days, pa.int64()).to_pylist())):
        mask = pc.equal(days, float(index))
        out[dt.date(1970, 1, 1) + dt.timedelta(days=index)] = table.filter(mask)
    return out


# --- running a job --------------------------------------------------------------------------


def _prepare(
    job: BackfillJob, root: Path, kind: str, day: dt.date, options: BackfillOptions, now: int
) -> bool:
    """Quarantine unreadable files of the day; -> True when the day needs no fetch."""
    date = day.isoformat()
    directory = raw.partition_dir(root, kind, day, job.request.symbol)
    for path, reason in raw.unreadable(raw.part_files(directory)).items():
        raw.quarantine(root, path, reason)
        with job._lock:
            job.progress[date].types[kind].notes.append(f"quarantined {path.name}: {reason}")
    if job.request.force:
        return False
    return day_complete(
        root,
        kind,
        job.request.symbol,
        day,
        funding_interval_h=options.funding_interval_h,
        now_ms=now,
    )


def _run_day(
    job: BackfillJob,
    client: _Client,
    root: Path,
    kind: str,
    day: dt.date,
    notify: Notify | None,
    prefetched: pa.Table | None = None,
) -> None:
    """Fetch, store and check one (day, type), retrying a failed check."""
    symbol, date, options = job.request.symbol, day.isoformat(), client.options
    progress = job._set(date, kind, status="running")
    started = time.perf_counter()
    now = _now_ms()
    try:
        for attempt in range(1, options.day_attempts + 1):
            job._set(date, kind, attempts=attempt)
            if prefetched is not None and attempt == 1:
                table = prefetched
            elif kind == "klines":
                table = _fetch_klines(client, symbol, day, progress)
            elif kind == "funding":
                start = _day_ms(day)
                table = _fetch_funding(client, symbol, start, start + DAY_MS, progress)
            else:
                table = _fetch_trades(client, symbol, day, progress)
            try:
                written = _store(root, kind, symbol, day, table, settled=_settled(day, now))
            except _VerifyFailed as exc:
                with job._lock:
                    progress.notes.append(f"attempt {attempt}: read-back check failed: {exc}")
                log.warning("%s %s %s: read-back check failed: %s", symbol, kind, date, exc)
                continue
            job._set(date, kind, status="done", rows=len(table), written=written, error=None)
            break
        else:
            job._set(
                date,
                kind,
                status="failed",
                error=f"read-back check failed {options.day_attempts} times: {progress.notes[-1]}",
            )
    except _DayFailed as exc:
        job._set(date, kind, status="failed", error=str(exc))
    except Cancelled:
        job._set(date, kind, status="pending")
        raise
    finally:
        job._set(date, kind, seconds=round(progress.seconds + time.perf_counter() - started, 3))
    if notify is not None:
        notify(job, date, kind)


def _runs(days: list[dt.date], most: int) -> list[list[dt.date]]:
    """Consecutive days in runs of at most `most`."""
    runs: list[list[dt.date]] = []
    for day in days:
        if runs and (day - runs[-1][-1]).days == 1 and len(runs[-1]) < most:
            runs[-1].append(day)
        else:
            runs.append([day])
    return runs


def _run_kind(
    job: BackfillJob,
    client: _Client,
    root: Path,
    kind: str,
    days: list[dt.date],
    notify: Notify | None,
) -> None:
    now = _now_ms()
    todo = []
    for day in days:
        date = day.isoformat()
        if _prepare(job, root, kind, day, client.options, now):
            job._set(date, kind, status="skipped")
            if notify is not None:
                notify(job, date, kind)
        elif kind == "trades" and not _settled(day, now):
            job._set(
                date, kind, status="skipped", error=None, notes=["the day's archive is not out yet"]
            )
            if notify is not None:
                notify(job, date, kind)
        else:
            todo.append(day)
    if kind != "funding":
        for day in todo:
            _run_day(job, client, root, kind, day, notify)
        return
    # funding: one paged query per run of missing days (3 settlements a day fit 60 days a page)
    for run_days in _runs(todo, 60):
        first = run_days[0].isoformat()
        progress = job._set(first, kind, status="running")
        for day in run_days[1:]:
            job._set(day.isoformat(), kind, status="running")
        start, end = _day_ms(run_days[0]), _day_ms(run_days[-1]) + DAY_MS
        try:
            table = _fetch_funding(client, job.request.symbol, start, end, progress)
        except _DayFailed as exc:
            for day in run_days:
                job._set(day.isoformat(), kind, status="failed", error=str(exc))
                if notify is not None:
                    notify(job, day.isoformat(), kind)
            continue
        except Cancelled:
            for day in run_days:
                job._set(day.isoformat(), kind, status="pending")
            raise
        per_day = _split_days(table)
        for day in run_days:
            empty = RAW_SCHEMAS["funding"].empty_table()
            _run_day(job, client, root, kind, day, notify, per_day.get(day, empty))


def symbol_problem(symbol: str, options: BackfillOptions | None = None) -> str | None:
    """Bybit's rejection of a symbol (one ticker call, no retries, nothing stored), else None.
    Network trouble or an empty answer is not a rejection: the job itself will say."""
    options = replace(options or BackfillOptions(), max_retries=0, delay_s=0.0)
    now = _now_ms()
    probe = BackfillJob(BackfillRequest(symbol=symbol, start=now - DAY_MS, end=now, types="ticker"))
    client = _Client(options, probe)
    try:
        _fetch_current(client, symbol, "ticker", None)
    except BackfillError as exc:
        return str(exc)
    except (_DayFailed, Cancelled):
        return None
    finally:
        client.close()
    return None


def run(
    job: BackfillJob,
    data_dir: Path,
    options: BackfillOptions | None = None,
    *,
    on_progress: Notify | None = None,
) -> BackfillJob:
    """Run a job in this thread; never raises for Bybit or data problems (see job.status)."""
    options = options or BackfillOptions()
    root = Path(data_dir)
    if job.finished:
        return job
    job._begin()
    client: _Client | None = None
    try:
        client = _Client(options, job)
        request = job.request
        if "funding" in request.types and options.category == "spot":
            raise BackfillError("spot symbols have no funding: drop 'funding' from the types")
        days = [dt.date.fromisoformat(d) for d in job.progress if d != "now"]
        for kind in (t for t in request.types if t in DAY_TYPES):
            _run_kind(job, client, root, kind, days, on_progress)
        for kind in (t for t in request.types if t in CURRENT_TYPES):
            progress = job._set("now", kind, status="running", attempts=1)
            started = time.perf_counter()
            try:
                table = _fetch_current(client, request.symbol, kind, progress)
            except _DayFailed as exc:
                job._set("now", kind, status="failed", error=str(exc))
            else:
                target = {"orderbook": "orderbook_snapshots", "recent_trades": "trades"}
                stats = raw.write(root, target.get(kind, kind), table)
                job._set("now", kind, status="done", rows=len(table), written=stats.rows_written)
            job._set("now", kind, seconds=round(time.perf_counter() - started, 3))
            if on_progress is not None:
                on_progress(job, "now", kind)
        failed = job.counts()["failed"]
        if failed:
            errors = [f"{d.date}: {d.error}" for d in job.progress.values() if d.error]
            total = sum(len(d.types) for d in job.progress.values())
            job._end("failed", f"{failed} of {total} fetches failed: " + " | ".join(errors[:5]))
        else:
            job._end("done")
    except Cancelled:
        job._end("cancelled")
    except KeyboardInterrupt:
        job._end("cancelled", "interrupted")
        raise
    except BackfillError as exc:
        job._end("failed", str(exc), fatal=True)
    except Exception as exc:  # a bug must not kill the job manager's worker thread
        log.exception("backfill job %s crashed", job.id)
        job._end("failed", f"internal error: {type(exc).__name__}: {exc}")
    finally:
        if client is not None:
            client.close()
    log.info("backfill %s: %s", job.id, job.summary())
    return job


class JobManager:
    """Runs backfill jobs one at a time in a background thread; status by id; cancellable."""

    def __init__(self, data_dir: Path, options: BackfillOptions | None = None, *, keep: int = 200):
        self.data_dir = Path(data_dir)
        self.options = options or BackfillOptions()
        self.keep = keep
        self._jobs: dict[str, BackfillJob] = {}
        self._queue: queue.Queue[tuple[BackfillJob, Notify | None] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, request: BackfillRequest, on_progress: Notify | None = None) -> BackfillJob:
        """Queue a job; it runs after the ones before it."""
        job = BackfillJob(request)
        with self._lock:
            if self._closed:
                raise RuntimeError("the backfill job manager is closed")
            self._jobs[job.id] = job
            self._forget_old()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="backfill-jobs", daemon=True
                )
                self._thread.start()
        self._queue.put((job, on_progress))
        return job

    def get(self, job_id: str) -> BackfillJob:
        with self._lock:
            if job_id not in self._jobs:
                raise KeyError(f"no backfill job {job_id!r}")
            return self._jobs[job_id]

    def jobs(self) -> list[BackfillJob]:
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, job_id: str) -> BackfillJob:
        job = self.get(job_id)
        job.cancel()
        return job

    def wait(self, job_id: str, timeout: float | None = None) -> BackfillJob:
        """Block until the job has finished (or the timeout passes)."""
        job = self.get(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not job.finished and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.01)
        return job

    def close(self, timeout: float | None = 30) -> None:
        """Cancel what is queued or running and stop the worker."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for job in jobs:
            if not job.finished:
                job.cancel()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.finished]
        for job in finished[: max(0, len(self._jobs) - self.keep)]:
            del self._jobs[job.id]

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            job, notify = item
            if not job.finished:
                run(job, self.data_dir, self.options, on_progress=notify)


# --- what a dataset build calls ----------------------------------------------------------


@dataclass(frozen=True)
class Missing:
    """A run of consecutive UTC days of one data type that are not complete."""

    kind: str
    start_ms: int
    end_ms: int

    @property
    def days(self) -> int:
        return (self.end_ms - self.start_ms) // DAY_MS

    def __str__(self) -> str:
        return f"{self.kind} {iso(self.start_ms)} → {iso(self.end_ms)} ({self.days} day(s))"


def missing_periods(
    data_dir: Path,
    symbol: str,
    start_ms: int,
    end_ms: int,
    types: Iterable[str] = DEFAULT_TYPES,
    *,
    funding_interval_h: int = 8,
) -> list[Missing]:
    """Days of [start_ms, end_ms) (up to now) a backfill of `types` would fetch, as runs."""
    check_symbol(symbol)
    now = _now_ms()
    out = []
    for kind in (t for t in DAY_TYPES if t in set(types)):
        days = [
            d
            for d in days_between(start_ms, min(end_ms, now))
            if not day_complete(
                data_dir, kind, symbol, d, funding_interval_h=funding_interval_h, now_ms=now
            )
        ]
        for run_days in _runs(days, len(days) or 1):
            out.append(Missing(kind, _day_ms(run_days[0]), _day_ms(run_days[-1]) + DAY_MS))
    return out


def fill(
    data_dir: Path,
    symbol: str,
    start_ms: int,
    end_ms: int,
    types: Iterable[str] = DEFAULT_TYPES,
    *,
    options: BackfillOptions | None = None,
    max_days: int = 31,
    on_progress: Notify | None = None,
) -> BackfillJob:
    """Fetch what is missing of `types` in [start_ms, end_ms), refusing more than `max_days`.

    Returns the finished job (status done / failed with per-day errors). Raises BackfillError
    when the gap exceeds `max_days` or Bybit rejects the request (unknown symbol).
    """
    options = options or BackfillOptions()
    request = BackfillRequest(symbol=symbol, start=start_ms, end=end_ms, types=tuple(types))
    gaps = missing_periods(
        data_dir,
        symbol,
        request.start,
        request.end,
        request.types,
        funding_interval_h=options.funding_interval_h,
    )
    days = {d for g in gaps for d in days_between(g.start_ms, g.end_ms)}
    if len(days) > max_days:
        listing = "; ".join(str(g) for g in gaps)
        raise BackfillError(
            f"{symbol}: {len(days)} day(s) of history are missing ({listing}); automatic "
            f"backfill is limited to {max_days} day(s). Run `just backfill {symbol} "
            f"{day_of(request.start)} {day_of(request.end - 1)}` first, or raise the limit."
        )
    job = run(BackfillJob(request), data_dir, options, on_progress=on_progress)
    if job.fatal:
        raise BackfillError(job.error or "backfill failed")
    return job
