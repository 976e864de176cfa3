"""Backfill against a local fake of Bybit's REST API and trade archives, on real data.

The fake (tests/fake_bybit.py) serves the real January 2022 BTCUSDT candles and the real
2024-07-18 trades; every expectation is checked against those files read independently here.
"""

from __future__ import annotations

import datetime as dt
import gzip
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from featlib import backfill, dataset, raw
from featlib.backfill import (
    BackfillError,
    BackfillJob,
    BackfillOptions,
    BackfillRequest,
    JobManager,
    Missing,
)
from featlib.capture import ingest, read_lines
from featlib.timeutil import DAY_MS, MINUTE_MS, parse_time
from tests.conftest import CAPTURE_2024_BTC, KLINES_31D, ROOT, shared
from tests.fake_bybit import (
    FUNDING,
    KLINE,
    FakeBybit,
    candles_from_capture,
    funding_schedule,
    trades_from_capture,
)

pytestmark = pytest.mark.integration

SYMBOL = "BTCUSDT"


# --- independent references -----------------------------------------------------------------


@pytest.fixture(scope="module")
def reference() -> dict[int, dict]:
    """The capture's confirmed candles by start (ms), read straight from the JSON file."""
    out = {}
    with gzip.open(shared(KLINES_31D), "rt") as handle:
        for line in handle:
            for candle in json.loads(line)["payload"]["data"]:
                if candle["confirm"]:
                    out[candle["start"]] = candle
    assert len(out) == 45_031
    return out


def day(text: str) -> int:
    return parse_time(text)


def ints(column: pa.ChunkedArray) -> list[int]:
    return pc.cast(column, pa.int64()).to_pylist()


def assert_klines_exact(root: Path, first_day: str, days: int, reference: dict) -> None:
    """Every minute closing in the days is stored once and equals the source, field by field."""
    start = day(first_day)
    end = start + days * DAY_MS
    table = raw.read(root, "klines", [SYMBOL], start, end)
    starts = ints(table["start"])
    assert starts == list(range(start - MINUTE_MS, end - MINUTE_MS, MINUTE_MS))
    assert ints(table["ts"]) == [s + MINUTE_MS for s in starts]
    assert ints(table["update_ts"]) == [reference[s]["timestamp"] for s in starts]
    assert table["confirm"].to_pylist() == [True] * len(starts)
    assert set(table["interval"].to_pylist()) == {"1"}
    assert set(table["symbol"].to_pylist()) == {SYMBOL}
    for field in ("open", "high", "low", "close", "volume", "turnover"):
        expected = [float(reference[s][field]) for s in starts]
        assert table[field].to_pylist() == expected, field


# --- the fake -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBybit]:
    klines = candles_from_capture(shared(KLINES_31D))
    first, last = int(klines[SYMBOL][0][0]), int(klines[SYMBOL][-1][0])
    server = FakeBybit(
        klines,
        {SYMBOL: funding_schedule(SYMBOL, first, last)},
        trades_from_capture(shared(CAPTURE_2024_BTC)),
    )
    with server:
        yield server


@pytest.fixture(autouse=True)
def _fresh(fake: FakeBybit) -> Iterator[None]:
    fake.reset()
    fake.hang_s = 1.0
    yield
    fake.reset()


def options(fake: FakeBybit, **changes) -> BackfillOptions:
    settings = {
        "base_url": fake.url,
        "archive_url": fake.archive_url,
        "delay_s": 0.0,
        "backoff_s": 0.01,
        "backoff_max_s": 0.05,
        "timeout_s": 5.0,
        **changes,
    }
    return BackfillOptions(**settings)


def backfill_days(
    fake: FakeBybit, root: Path, start: str, end: str, types: str = "klines", **changes
) -> BackfillJob:
    request = BackfillRequest(symbol=SYMBOL, start=start, end=end, types=types)
    return backfill.run(BackfillJob(request), root, options(fake, **changes))


# --- klines ---------------------------------------------------------------------------------


def test_klines_equal_the_source_and_a_rerun_makes_no_calls(fake, reference, tmp_path):
    job = backfill_days(fake, tmp_path, "2022-01-10", "2022-01-14")
    assert job.status == "done", job.error
    assert_klines_exact(tmp_path, "2022-01-10", 5, reference)
    assert fake.calls == {KLINE: 10}  # 1440 candles a day: a page of 1000 and one of 440
    assert job.counts() == {"done": 5}
    assert job.rows == job.written == 5 * 1440
    markers = sorted(tmp_path.glob("klines/date=*/symbol=BTCUSDT/.backfill.json"))
    assert len(markers) == 5

    fake.reset()
    again = backfill_days(fake, tmp_path, "2022-01-10", "2022-01-14")
    assert again.status == "done"
    assert fake.total_calls == 0
    assert again.counts() == {"skipped": 5}
    assert_klines_exact(tmp_path, "2022-01-10", 5, reference)


@pytest.mark.parametrize(
    ("limit", "windows"),
    [(720, [(0, 719), (720, 1439)]), (1000, [(0, 999), (1000, 1439)])],
)
def test_pages_are_windows_of_at_most_limit_candles(fake, reference, tmp_path, limit, windows):
    """A day is the 1440 candles closing in it; the last window ends exactly on its boundary."""
    job = backfill_days(fake, tmp_path, "2022-01-20", "2022-01-21", page_limit=limit)
    assert job.status == "done", job.error
    assert_klines_exact(tmp_path, "2022-01-20", 2, reference)
    asked = [
        (int(q["start"]), int(q["end"]), int(q["limit"])) for path, q in fake.log if path == KLINE
    ]
    expected = []
    for first in (day("2022-01-20"), day("2022-01-21")):
        for lo, hi in windows:
            start = first - MINUTE_MS + lo * MINUTE_MS
            expected.append((start, first - MINUTE_MS + hi * MINUTE_MS, hi - lo + 1))
    assert asked == expected
    # the candle closing exactly at midnight opens a day; windows tile without gap or overlap
    assert expected[0][0] + MINUTE_MS == day("2022-01-20")
    assert all(b[0] == a[1] + MINUTE_MS for a, b in itertools.pairwise(expected))


def test_the_fake_keeps_bybits_kline_semantics(fake):
    """Over-long ranges keep the newest `limit` candles; `start` alone keeps the oldest."""
    base, first = fake.url + KLINE, day("2022-01-10")
    params = {"category": "linear", "symbol": SYMBOL, "interval": "1", "limit": 1000}
    newest = httpx.get(base, params={**params, "start": first, "end": first + 1999 * MINUTE_MS})
    page = newest.json()
    assert set(page) == {"retCode", "retMsg", "result", "retExtInfo", "time"}
    starts = [int(r[0]) for r in page["result"]["list"]]
    assert starts == list(range(first + 1999 * MINUTE_MS, first + 999 * MINUTE_MS, -MINUTE_MS))
    assert all(isinstance(v, str) for r in page["result"]["list"] for v in r)
    oldest = httpx.get(base, params={**params, "start": first}).json()["result"]["list"]
    assert int(oldest[-1][0]) == first and int(oldest[0][0]) == first + 999 * MINUTE_MS
    too_many = httpx.get(base, params={**params, "limit": 1001}).json()
    assert too_many["retCode"] == 10001


# --- funding --------------------------------------------------------------------------------


@pytest.mark.parametrize(("page_limit", "calls"), [(200, 1), (10, 10)])
def test_funding_history_is_stored_exactly(fake, tmp_path, page_limit, calls):
    job = backfill_days(
        fake, tmp_path, "2022-01-01", "2022-01-31", "funding", funding_page_limit=page_limit
    )
    assert job.status == "done", job.error
    assert fake.calls == {FUNDING: calls}  # 93 settlements, newest-first pages
    stored = raw.read(tmp_path, "funding", [SYMBOL])
    expected = [
        (int(r["fundingRateTimestamp"]), float(r["fundingRate"]))
        for r in fake.funding[SYMBOL]
        if day("2022-01-01") <= int(r["fundingRateTimestamp"]) < day("2022-02-01")
    ]
    assert len(expected) == 93
    assert list(zip(ints(stored["ts"]), stored["funding_rate"].to_pylist(), strict=True)) == (
        expected
    )
    assert set(stored["source"].to_pylist()) == {"rest"}

    fake.reset()
    again = backfill_days(fake, tmp_path, "2022-01-01", "2022-01-31", "funding")
    assert fake.total_calls == 0 and again.counts() == {"skipped": 31}


# --- damage, read-back checks, retries ------------------------------------------------------


def test_a_corrupted_day_is_detected_quarantined_and_refetched(fake, reference, tmp_path):
    assert backfill_days(fake, tmp_path, "2022-01-10", "2022-01-13").status == "done"
    (garbage,) = (tmp_path / "klines/date=2022-01-11/symbol=BTCUSDT").glob("part-*.parquet")
    garbage.write_bytes(b"not parquet at all" * 100)
    (truncated,) = (tmp_path / "klines/date=2022-01-12/symbol=BTCUSDT").glob("part-*.parquet")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])

    fake.reset()
    job = backfill_days(fake, tmp_path, "2022-01-10", "2022-01-13")
    assert job.status == "done", job.error
    assert fake.calls == {KLINE: 4}  # the two damaged days only
    assert job.progress["2022-01-11"].types["klines"].status == "done"
    assert job.progress["2022-01-10"].types["klines"].status == "skipped"
    assert "quarantined" in job.progress["2022-01-12"].types["klines"].notes[0]
    assert len(list((tmp_path / "_quarantine").rglob("part-*.parquet"))) == 2
    assert_klines_exact(tmp_path, "2022-01-10", 4, reference)


def test_a_failed_read_back_check_quarantines_and_fetches_again(
    fake, reference, tmp_path, monkeypatch
):
    real_write = raw.write
    broken = []

    def torn_write(root, kind, table):
        stats = real_write(root, kind, table)
        if not broken and stats.files:  # the disk tears the first file written
            path = stats.files[0]
            path.write_bytes(path.read_bytes()[:64])
            broken.append(path)
        return stats

    monkeypatch.setattr(raw, "write", torn_write)
    job = backfill_days(fake, tmp_path, "2022-01-15", "2022-01-16")
    assert job.status == "done", job.error
    first = job.progress["2022-01-15"].types["klines"]
    assert first.attempts == 2 and "unreadable" in first.notes[0]
    assert fake.calls == {KLINE: 6}
    assert not broken[0].exists()
    assert len(list((tmp_path / "_quarantine").rglob("part-*.parquet"))) == 1
    assert_klines_exact(tmp_path, "2022-01-15", 2, reference)


def test_rate_limits_5xx_timeouts_and_corrupt_pages_are_retried(fake, reference, tmp_path):
    fake.hang_s = 0.6
    for fault, calls in {
        "http429": [2],
        "ratelimit": [4],
        "iplimit": [5],
        "http500": [7],
        "http503": [8],
        "truncated": [10],
        "missing_field": [11],
        "misaligned": [12],
        "timeout": [14],
    }.items():
        fake.fail(KLINE, fault, calls)
    fake.random_errors(0.15, seed=11, endpoints=[KLINE])
    job = backfill_days(fake, tmp_path, "2022-01-03", "2022-01-07", timeout_s=0.3)
    assert job.status == "done", job.error
    assert_klines_exact(tmp_path, "2022-01-03", 5, reference)
    faulted = fake.calls[KLINE] - 10
    assert faulted >= 9 and len(job.retries) == faulted
    reasons = " | ".join(r["reason"] for r in job.retries)
    for text in (
        "HTTP 429",
        "retCode 10006",
        "retCode 10018",
        "HTTP 500",
        "HTTP 503",
        "not JSON",
        "corrupt page",
        "off the minute",
        "Timeout",
    ):
        assert text in reasons, text


def test_backoff_doubles_and_a_day_that_keeps_failing_is_reported(fake, reference, tmp_path):
    fake.fail(KLINE, "http502", range(1, 4))
    job = backfill_days(fake, tmp_path, "2022-01-25", "2022-01-25")
    assert job.status == "done"
    assert [r["wait_s"] for r in job.retries] == [0.01, 0.02, 0.04]

    fake.reset()
    fake.fail(KLINE, "http503", range(1, 4))  # max_retries=2: three failures give up
    job = backfill_days(fake, tmp_path, "2022-01-26", "2022-01-27", max_retries=2)
    assert job.status == "failed"
    failed = job.progress["2022-01-26"]
    assert failed.status == "failed" and "gave up after 3 attempts" in failed.error
    assert job.progress["2022-01-27"].status == "done"
    assert "2022-01-26" in job.error

    fake.reset()
    job = backfill_days(fake, tmp_path, "2022-01-25", "2022-01-27")
    assert job.status == "done" and fake.calls == {KLINE: 2}  # only the failed day
    assert_klines_exact(tmp_path, "2022-01-25", 3, reference)


def test_an_invalid_symbol_or_range_fails_at_once(fake, tmp_path):
    started = time.perf_counter()
    request = BackfillRequest(symbol="BTCUSDX", start="2022-01-01", end="2022-01-31")
    job = backfill.run(BackfillJob(request), tmp_path, options(fake))
    assert time.perf_counter() - started < 2
    assert job.status == "failed" and job.fatal
    assert "BTCUSDX" in job.error and "Not supported symbols (retCode 10001)" in job.error
    assert fake.calls == {KLINE: 1}
    with pytest.raises(BackfillError, match="Not supported symbols"):
        backfill.fill(tmp_path, "BTCUSDX", day("2022-01-01"), day("2022-01-02"), ["klines"],
                      options=options(fake))  # fmt: skip

    with pytest.raises(ValidationError, match="is not after start"):
        BackfillRequest(symbol=SYMBOL, start="2022-01-05", end="2022-01-01")
    with pytest.raises(ValidationError, match="in the future"):
        BackfillRequest(symbol=SYMBOL, start="2999-01-01", end="2999-01-02")
    with pytest.raises(ValidationError, match="unknown data type"):
        BackfillRequest(symbol=SYMBOL, start="2022-01-01", end="2022-01-02", types="candles")
    with pytest.raises(ValidationError, match="not a symbol"):
        BackfillRequest(symbol="btc/usdt", start="2022-01-01", end="2022-01-02")
    with pytest.raises(BackfillError, match="page_limit"):
        BackfillOptions(page_limit=1440)
    assert fake.calls == {KLINE: 2}


# --- jobs -----------------------------------------------------------------------------------


def test_cancelling_a_running_job_keeps_the_completed_days(fake, reference, tmp_path):
    manager = JobManager(tmp_path, options(fake, delay_s=0.05))
    try:
        request = BackfillRequest(
            symbol=SYMBOL, start="2022-01-02", end="2022-01-11", types="klines"
        )
        job = manager.submit(request)
        queued = manager.submit(request)
        assert manager.get(queued.id).status == "pending"
        manager.cancel(queued.id)
        assert queued.status == "cancelled"  # never started: no calls
        deadline = time.monotonic() + 20
        while job.counts()["done"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        manager.cancel(job.id)
        manager.wait(job.id, timeout=10)
    finally:
        manager.close()
    assert job.status == "cancelled"
    done = sorted(d for d, p in job.progress.items() if p.status == "done")
    assert len(done) >= 2 and len(done) < 10
    assert all(p.status == "pending" for d, p in job.progress.items() if d not in done)
    calls = fake.total_calls
    assert calls <= 2 * len(done) + 2
    time.sleep(0.2)
    assert fake.total_calls == calls
    stored = sorted(p.parent.name for p in tmp_path.glob("klines/date=*/symbol=*"))
    assert stored == [f"date={d}" for d in done]
    assert_klines_exact(tmp_path, done[0], len(done), reference)
    snapshot = job.to_dict()
    assert snapshot["status"] == "cancelled" and snapshot["calls_total"] == calls
    assert snapshot["progress"][done[0]]["types"]["klines"]["rows"] == 1440
    assert queued.to_dict()["calls_total"] == 0


def test_the_manager_runs_jobs_one_at_a_time(fake, tmp_path):
    manager = JobManager(tmp_path, options(fake, delay_s=0.01))
    try:
        first = manager.submit(BackfillRequest(symbol=SYMBOL, start="2022-01-02", end="2022-01-03"))
        second = manager.submit(
            BackfillRequest(symbol=SYMBOL, start="2022-01-02", end="2022-01-04", types="funding")
        )
        manager.wait(second.id, timeout=30)
        assert manager.get(first.id).status == "done"
        assert second.status == "done"
        assert second.started_at >= first.finished_at
        assert {j.id for j in manager.jobs()} == {first.id, second.id}
        with pytest.raises(KeyError):
            manager.get("nope")
    finally:
        manager.close()


# --- trades, current snapshots --------------------------------------------------------------


@pytest.fixture(scope="module")
def ws_trades(tmp_path_factory) -> pa.Table:
    root = tmp_path_factory.mktemp("ws")
    report = ingest(root, read_lines(shared(CAPTURE_2024_BTC)))
    assert report.rejected == 0
    return raw.read(root, "trades", [SYMBOL])


def _trade_rows(table: pa.Table) -> list[tuple]:
    columns = ("trade_id", "side", "price", "size", "tick_direction")
    rows = zip(ints(table["ts"]), *(table[c].to_pylist() for c in columns), strict=True)
    return sorted(rows, key=lambda r: r[1])


def test_trade_archives_equal_the_recorded_trades(fake, ws_trades, tmp_path):
    fake.fail("archive", "garbage", [1])
    fake.fail("archive", "http503", [3])
    job = backfill_days(fake, tmp_path, "2024-07-18", "2024-07-19", "trades")
    assert job.status == "done", job.error
    assert fake.calls == {"archive": 4}
    stored = raw.read(tmp_path, "trades", [SYMBOL])
    assert len(stored) == len(ws_trades) == 10_701
    assert _trade_rows(stored) == _trade_rows(ws_trades)
    assert set(stored["tick_direction"].to_pylist()) <= {
        "PlusTick",
        "ZeroPlusTick",
        "MinusTick",
        "ZeroMinusTick",
    }

    fake.reset()
    again = backfill_days(fake, tmp_path, "2024-07-18", "2024-07-20", "trades")
    assert again.progress["2024-07-18"].status == "skipped"
    assert again.progress["2024-07-20"].status == "failed"  # no archive: one call, no retries
    assert "HTTP 404" in again.progress["2024-07-20"].error
    assert fake.calls == {"archive": 1}


def test_archive_timestamps_are_floored_to_milliseconds():
    rows = "\n".join(
        [
            "timestamp,symbol,side,size,price,tickDirection,trdMatchID,grossValue,homeNotional,"
            "foreignNotional",
            "1585180800.0647,BTCUSDT,Sell,0.5,6700.5,MinusTick,b-2,1,0.5,3350.25",
            "1585180800,BTCUSDT,Buy,1,6701,PlusTick,a-1,1,1,6701",
            "1585180801.9,BTCUSDT,Buy,2,6702,,c-3,1,2,13404",
        ]
    )
    table = backfill.parse_trade_archive(
        gzip.compress(rows.encode()),
        symbol=SYMBOL,
        day=dt.date(2020, 3, 26),
        received_at=1,
    )
    assert table.schema == raw.RAW_SCHEMAS["trades"]
    assert ints(table["ts"]) == [1585180800000, 1585180800064, 1585180801900]
    assert table["trade_id"].to_pylist() == ["a-1", "b-2", "c-3"]
    assert table["tick_direction"].to_pylist() == ["PlusTick", "MinusTick", None]
    with pytest.raises(backfill.BybitParseError, match="timestamp"):
        backfill.parse_trade_archive(
            gzip.compress(rows.encode()), symbol=SYMBOL, day=dt.date(2020, 3, 27), received_at=1
        )


def test_current_ticker_book_and_recent_trades(fake, tmp_path):
    types = "ticker,orderbook,recent_trades"
    job = backfill_days(fake, tmp_path, "2024-07-18", "2024-07-18", types)
    assert job.status == "done", job.error
    assert set(job.progress) == {"now"}
    last_close = float(fake.klines[SYMBOL][-1][4])
    ticker = raw.read(tmp_path, "ticker", [SYMBOL]).to_pylist()
    assert len(ticker) == 1 and ticker[0]["last_price"] == last_close
    assert ticker[0]["funding_rate"] == float(fake.funding[SYMBOL][-1]["fundingRate"])
    book = raw.read(tmp_path, "orderbook_snapshots", [SYMBOL]).to_pylist()
    bids, asks = fake.book_levels(SYMBOL, 200)
    assert book[0]["depth"] == 200 and book[0]["update_id"] == 1
    assert book[0]["bid_price"] == [float(p) for p, _ in bids]
    assert book[0]["ask_size"] == [float(q) for _, q in asks]
    trades = raw.read(tmp_path, "trades", [SYMBOL])
    expected = [t["i"] for t in fake.trades[SYMBOL][-1000:]]
    assert sorted(trades["trade_id"].to_pylist()) == sorted(expected)
    assert ints(trades["ts"]) == sorted(int(t["T"]) for t in fake.trades[SYMBOL][-1000:])


# --- datasets ----------------------------------------------------------------------------------


def _capture_lines(first_day: str, days: int) -> list[bytes]:
    """The capture's messages whose candle closes inside the days."""
    start = day(first_day)
    end = start + days * DAY_MS
    return [
        line
        for line in read_lines(shared(KLINES_31D))
        if start <= json.loads(line)["payload"]["data"][0]["end"] + 1 < end
    ]


def test_a_dataset_from_backfilled_candles_equals_one_from_the_capture(fake, tmp_path):
    backfilled, captured = tmp_path / "backfilled", tmp_path / "captured"
    assert backfill_days(fake, backfilled, "2022-01-03", "2022-01-06").status == "done"
    report = ingest(captured, _capture_lines("2022-01-03", 4))
    assert report.rejected == 0 and report.written["klines"] == 4 * 1440
    a, b = raw.read(backfilled, "klines"), raw.read(captured, "klines")
    assert a.drop_columns(["received_at"]).equals(b.drop_columns(["received_at"]))

    request = dataset.DatasetRequest(
        symbols=[SYMBOL], start=day("2022-01-04"), end=day("2022-01-06"), registry_version="1.2.0"
    )
    meta_a = dataset.build(request, backfilled, tmp_path / "out_a")
    meta_b = dataset.build(request, captured, tmp_path / "out_b")
    assert meta_a["splits"] == meta_b["splits"]
    for split in ("train", "validation", "test"):
        left = pq.read_table(tmp_path / "out_a" / f"{split}.parquet")
        right = pq.read_table(tmp_path / "out_b" / f"{split}.parquet")
        assert left.num_rows > 0 and left.equals(right), split


def test_missing_periods_and_a_bounded_fill(fake, reference, tmp_path):
    report = ingest(tmp_path, _capture_lines("2022-01-03", 2))
    assert report.written["klines"] == 2 * 1440
    start, end = day("2022-01-02"), day("2022-01-07")
    gaps = backfill.missing_periods(tmp_path, SYMBOL, start, end, ["klines"])
    assert gaps == [
        Missing("klines", day("2022-01-02"), day("2022-01-03")),
        Missing("klines", day("2022-01-05"), day("2022-01-07")),
    ]
    with pytest.raises(BackfillError, match="3 day\\(s\\) of history are missing"):
        backfill.fill(tmp_path, SYMBOL, start, end, ["klines"], options=options(fake), max_days=2)
    assert fake.total_calls == 0

    job = backfill.fill(tmp_path, SYMBOL, start, end, ["klines"], options=options(fake))
    assert job.status == "done" and fake.calls == {KLINE: 6}  # ingested days cost nothing
    assert job.counts() == {"done": 3, "skipped": 2}
    assert backfill.missing_periods(tmp_path, SYMBOL, start, end, ["klines"]) == []
    assert_klines_exact(tmp_path, "2022-01-02", 5, reference)
    funding = backfill.missing_periods(tmp_path, SYMBOL, start, end, ["klines", "funding"])
    assert funding == [Missing("funding", start, end)]


# --- the CLI --------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.backfill", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_end_to_end(fake, reference, tmp_path):
    urls = ["--base-url", fake.url, "--archive-url", fake.archive_url]
    common = ["--data-dir", str(tmp_path), *urls, "--delay", "0.001"]
    first = _cli(SYMBOL, "2022-01-20", "2022-01-22", "--types", "klines,funding", *common)
    assert first.returncode == 0, first.stderr
    assert "2022-01-21 klines        done        1,440 rows   2 calls" in first.stdout
    assert "done: 6 done, 0 skipped, 0 failed, 0 pending" in first.stdout
    assert "7 API calls" in first.stdout
    assert "calls: /v5/market/funding/history 1, /v5/market/kline 6;" in first.stdout
    assert fake.calls == {KLINE: 6, FUNDING: 1}
    assert_klines_exact(tmp_path, "2022-01-20", 3, reference)

    second = _cli(SYMBOL, "2022-01-20", "2022-01-22", "--types", "klines,funding", *common)
    assert second.returncode == 0, second.stderr
    assert "0 done, 6 skipped" in second.stdout and "0 API calls" in second.stdout
    assert fake.total_calls == 7

    bad = _cli("BTCUSDX", "2022-01-20", "2022-01-22", *common)
    assert bad.returncode == 2
    assert "error: Bybit rejected /v5/market/kline for BTCUSDX" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_build_dataset_backfills_what_is_missing(fake, reference, tmp_path):
    """`build_dataset --backfill` on an empty store fetches candles and funding, then builds;
    without it the same build fails naming what is available (nothing)."""
    args = [
        "pipelines.build_dataset",
        "--start",
        "2022-01-10",
        "--end",
        "2022-01-11",
        "--registry-version",
        "1.2.0",
        "--data-dir",
        str(tmp_path / "raw"),
        "--quiet",
    ]
    common = {"cwd": ROOT, "capture_output": True, "text": True, "timeout": 300}
    refused = subprocess.run([sys.executable, "-m", *args, "--out", str(tmp_path / "a")], **common)
    assert refused.returncode == 2 and "available candle periods: none" in refused.stderr

    built = subprocess.run(
        [
            sys.executable,
            "-m",
            *args,
            "--out",
            str(tmp_path / "b"),
            "--backfill",
            "--backfill-url",
            fake.url,
        ],
        **common,
    )
    assert built.returncode == 0, built.stderr
    meta = json.loads((tmp_path / "b" / "metadata.json").read_text())
    assert meta["rows"]["grid"] == 2 * 1440 and meta["splits"]["test"]["rows"] > 0
    assert fake.calls[KLINE] > 0 and fake.calls[FUNDING] > 0
    train = pq.read_table(tmp_path / "b" / "train.parquet")
    assert train["funding_rate"].null_count == 0 and train["rsi_14"].null_count == 0
