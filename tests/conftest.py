"""Shared test fixtures. Real market data comes from ../shared/data (FEATLIB_SHARED_DATA
overrides); a test that needs it fails, naming the missing file, when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from featlib import raw
from featlib.capture import ingest, read_lines

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FEATLIB_SHARED_DATA", ROOT.parent / "shared" / "data"))

KLINES_31D = "bybit/BTCUSDT_2022-01_kline1m_31d.jsonl.gz"
CAPTURE_2023 = "bybit/BTCUSDT_2023-04-05_book-trades-ticker-kline.jsonl.gz"
CAPTURE_2024_BTC = "bybit/BTCUSDT_2024-07-18_book-trades-kline.jsonl.gz"
CAPTURE_2024_ETH = "bybit/ETHUSDT_2024-07-18_book-trades-kline.jsonl.gz"


def shared(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.fail(
            f"real market data missing: {path} (tests read ../shared/data next to the "
            "repository; set FEATLIB_SHARED_DATA to its location)"
        )
    return path


def _ingested(tmp_path_factory: pytest.TempPathFactory, name: str, *files: str) -> Path:
    root = tmp_path_factory.mktemp(name)
    for relative in files:
        report = ingest(root, read_lines(shared(relative)), source=relative)
        assert report.rejected == 0, report.errors
    return root


@pytest.fixture(scope="session")
def jan_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw store holding the real 31 days of BTCUSDT 1-minute klines (Jan 2022)."""
    return _ingested(tmp_path_factory, "jan", KLINES_31D)


@pytest.fixture(scope="session")
def jan_tables(jan_store: Path) -> dict[str, pa.Table]:
    return {"klines": raw.read(jan_store, "klines")}


@pytest.fixture(scope="session")
def capture_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw store holding the real 2023-04-05 BTCUSDT capture (book, trades, tickers, klines)."""
    return _ingested(tmp_path_factory, "cap2023", CAPTURE_2023)


@pytest.fixture(scope="session")
def capture_tables(capture_store: Path) -> dict[str, pa.Table]:
    return {kind: raw.read(capture_store, kind) for kind in raw.RAW_SCHEMAS}


@pytest.fixture(scope="session")
def real_captures(capture_tables, tmp_path_factory) -> dict[str, tuple]:
    """The real captures as raw tables with the span of their book:
    name -> (tables, symbol, first book ts, last book ts)."""
    found = {"BTCUSDT-2023-04-05": (capture_tables, "BTCUSDT")}
    for name, relative, symbol in (
        ("BTCUSDT-2024-07-18", CAPTURE_2024_BTC, "BTCUSDT"),
        ("ETHUSDT-2024-07-18", CAPTURE_2024_ETH, "ETHUSDT"),
    ):
        root = _ingested(tmp_path_factory, name, relative)
        found[name] = ({kind: raw.read(root, kind) for kind in raw.RAW_SCHEMAS}, symbol)
    out = {}
    for name, (tables, symbol) in found.items():
        ts = tables["orderbook_deltas"]["ts"].cast("int64").to_pylist()
        out[name] = (tables, symbol, min(ts), max(ts))
    return out
