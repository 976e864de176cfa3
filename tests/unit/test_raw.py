"""The raw Parquet store on real captures: layout, idempotence, atomicity, bad files."""

from __future__ import annotations

import gzip
import multiprocessing
from pathlib import Path

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest

from featlib import raw
from featlib.bybit import parse_message
from featlib.capture import ingest, read_lines
from tests.conftest import CAPTURE_2023, CAPTURE_2024_ETH, shared


def _count_messages(path: Path) -> dict[str, int]:
    """Rows per raw table, counted straight from the capture's JSON (independent of featlib)."""
    counts: dict[str, int] = {}
    table = {"trades": "trades", "kline": "klines", "ticker": "ticker"}
    with gzip.open(path, "rb") as handle:
        lines = handle.read().splitlines()
    for line in lines:
        msg = orjson.loads(line)
        payload = msg["payload"]
        if msg["event_type"] == "orderbook":
            kind = "orderbook_snapshots" if payload["type"] == "snapshot" else "orderbook_deltas"
            counts[kind] = counts.get(kind, 0) + 1
        else:
            kind = table[msg["event_type"]]
            rows = len(payload["data"]) if isinstance(payload["data"], list) else 1
            counts[kind] = counts.get(kind, 0) + rows
    return counts


def test_capture_round_trip_with_hive_layout(capture_store: Path):
    expected = _count_messages(shared(CAPTURE_2023))
    for kind, rows in expected.items():
        assert raw.read(capture_store, kind).num_rows == rows, kind
    # any Hive-aware reader sees the layout: plain DuckDB over a glob, no featlib involved
    con = duckdb.connect()
    got = con.execute(
        f"SELECT symbol, count(*) FROM read_parquet('{capture_store}/trades/*/*/*.parquet', "
        "hive_partitioning = true) GROUP BY symbol"
    ).fetchall()
    assert got == [("BTCUSDT", expected["trades"])]
    # the snapshot came at 23:59:59.977 UTC, the deltas after midnight: two date partitions
    days = {
        kind: sorted(p.name for p in (capture_store / kind).iterdir())
        for kind in ("orderbook_snapshots", "orderbook_deltas")
    }
    assert days == {
        "orderbook_snapshots": ["date=2023-04-04"],
        "orderbook_deltas": ["date=2023-04-05"],
    }


def test_rows_keep_values_of_the_message(capture_store: Path):
    first_trade = next(
        orjson.loads(line) for line in read_lines(shared(CAPTURE_2023)) if b'"trades"' in line
    )
    trade = first_trade["payload"]["data"][0]
    stored = raw.read(capture_store, "trades").to_pylist()
    row = next(r for r in stored if r["trade_id"] == trade["i"])
    assert row["price"] == float(trade["p"]) and row["size"] == float(trade["v"])
    assert int(row["ts"].timestamp() * 1000) == trade["T"]
    assert int(row["received_at"].timestamp() * 1000) == first_trade["received_at"]


def test_reingest_is_idempotent(tmp_path: Path):
    path = shared(CAPTURE_2024_ETH)
    first = ingest(tmp_path, read_lines(path))
    again = ingest(tmp_path, read_lines(path), batch_rows=997)  # other batch boundaries too
    assert sum(again.written.values()) == 0
    assert again.duplicates == sum(first.rows.values())
    for kind, rows in first.rows.items():
        assert raw.read(tmp_path, kind).num_rows == rows


def test_partial_overlap_writes_only_new_rows(tmp_path: Path):
    lines = list(read_lines(shared(CAPTURE_2024_ETH)))
    ingest(tmp_path, lines[:12000])
    report = ingest(tmp_path, lines[8000:])
    total = ingest(tmp_path / "once", lines)
    for kind, rows in total.written.items():
        assert raw.read(tmp_path, kind).num_rows == rows
    assert report.duplicates > 0


def test_candle_closing_at_midnight_goes_to_the_next_day(tmp_path: Path):
    msg = {
        "topic": "kline.1.BTCUSDT",
        "ts": 1672531200000,
        "data": [
            {
                "start": 1672531140000,
                "end": 1672531199999,
                "interval": "1",
                "open": "1",
                "close": "1",
                "high": "1",
                "low": "1",
                "volume": "1",
                "turnover": "1",
                "confirm": True,
                "timestamp": 1672531200000,
            }
        ],
    }
    raw.write(tmp_path, "klines", parse_message(msg, received_at=1672531200005).table())
    assert [p.name for p in (tmp_path / "klines").iterdir()] == ["date=2023-01-01"]


def test_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    table = parse_message(next(read_lines(shared(CAPTURE_2023))), None).table()

    def crash(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        raw.write(tmp_path, "orderbook_snapshots", table)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"]
    assert leftovers == []


def test_unreadable_part_is_reported_then_quarantined(tmp_path: Path):
    lines = list(read_lines(shared(CAPTURE_2024_ETH)))
    ingest(tmp_path, lines[:5000])
    victim = raw.files(tmp_path, "trades")[0]
    victim.write_bytes(b"not parquet at all")
    with pytest.raises(raw.RawStoreError, match=str(victim)):
        raw.read(tmp_path, "trades")
    report = ingest(tmp_path, lines)  # writing to that partition moves the bad file aside
    assert report.written["trades"] > 0
    moved = tmp_path / raw.QUARANTINE / victim.relative_to(tmp_path)
    assert moved.read_bytes() == b"not parquet at all"  # kept, not deleted
    assert raw.read(tmp_path, "trades").num_rows > 0


def _write_all(args: tuple[str, str]) -> int:
    root, path = args
    return sum(ingest(Path(root), read_lines(Path(path))).written.values())


def test_two_processes_writing_the_same_rows_store_one_copy(tmp_path: Path):
    path = str(shared(CAPTURE_2024_ETH))
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        written = pool.map(_write_all, [(str(tmp_path), path)] * 2)
    expected = ingest(tmp_path / "single", read_lines(Path(path)))
    assert sum(written) == sum(expected.written.values())
    for kind, rows in expected.written.items():
        assert raw.read(tmp_path, kind).num_rows == rows


def test_symbols_cannot_escape_the_store(tmp_path: Path):
    with pytest.raises(raw.RawStoreError):
        raw.partition_dir(tmp_path, "trades", __import__("datetime").date(2024, 1, 1), "../x")


def test_part_files_carry_the_canonical_schema(capture_store: Path):
    from featlib.schema import file_schema

    for kind in raw.RAW_SCHEMAS:
        for path in raw.files(capture_store, kind):
            assert pq.read_schema(path).remove_metadata() == file_schema(kind), path
