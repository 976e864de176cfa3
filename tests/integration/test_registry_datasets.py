"""Every registry version gives a non-empty dataset on the real data, with each of its features
filled after warm-up (the old system lost every candle feature offline without a test
noticing). Candle features are checked on the real January 2022 candles at a 1-minute grid;
book, trade and ticker features on the real captures at a 1-second grid. The captures hold
7-8 minutes, less than many lookbacks, so those builds use short_history: each feature is null
until stored data covers its lookback, and must be filled from there on. Between the two
sources every feature of every version is checked."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from featlib import compute, registry
from featlib.dataset import DatasetRequest, build
from featlib.timeutil import parse_time
from tests.conftest import CAPTURE_2024_BTC, CAPTURE_2024_ETH, _ingested

VERSIONS = registry.versions()
SPLITS = ("train", "validation", "test")
# nulls only where a value is undefined (growth of a zero-size body, no trade in 3 s, ...)
MAX_NULL = {"kline": 0.02, "trades": 0.15, "orderbook": 0.0, "funding": 0.0}


def _rows(out) -> pa.Table:
    return pa.concat_tables([pq.read_table(out / f"{s}.parquet") for s in SPLITS])


@pytest.fixture(scope="module")
def pair_store(tmp_path_factory):
    return _ingested(tmp_path_factory, "pair2024", CAPTURE_2024_BTC, CAPTURE_2024_ETH)


def _filled(meta: dict, table: pa.Table, version: str, sources: set[str]) -> set[str]:
    """Features of `sources` that are filled wherever short_history says they are defined;
    the names checked."""
    checked = set()
    for name in registry.load(version).names:
        source = compute.FEATURES[name].source
        if source not in sources:
            continue
        spans = (meta["short_history"] or {}).get(name)
        for symbol in meta["symbols"]:
            span = spans[symbol] if spans else None
            rows = table.filter(pc.equal(table["symbol"], symbol))
            if spans is not None:
                if span is None:
                    continue  # longer lookback than the data: checked on the other source
                ts = pc.cast(rows["ts"], pa.int64())
                inside = pc.and_(
                    pc.greater_equal(ts, parse_time(span["from"])),
                    pc.less_equal(ts, parse_time(span["to"])),
                )
                before = rows.filter(pc.invert(inside))[name]
                assert before.null_count == len(before), name
                rows = rows.filter(inside)
            assert rows.num_rows > 0, (name, symbol)
            assert rows[name].null_count <= MAX_NULL[source] * rows.num_rows, (name, symbol)
            checked.add(name)
    return checked


def _jan(jan_store, tmp_path, version: str) -> tuple[dict, pa.Table]:
    needs_more = version in ("1.0.0", "1.1.0")  # book and trades, which January lacks
    request = DatasetRequest(
        symbols=["BTCUSDT"],
        start="2022-01-05",
        end="2022-01-07",
        registry_version=version,
        short_history=needs_more,
    )
    meta = build(request, jan_store, tmp_path / "ds")
    return meta, _rows(tmp_path / "ds")


@pytest.mark.parametrize("version", VERSIONS)
def test_every_candle_feature_is_filled_on_real_candles(jan_store, tmp_path, version):
    meta, table = _jan(jan_store, tmp_path, version)
    assert table.num_rows > 2_000
    _filled(meta, table, version, {"kline"})
    for name in registry.load(version).names:
        if compute.FEATURES[name].source == "funding":  # the January file holds no funding
            assert table[name].null_count == table.num_rows
            assert any(name in w and "will be null" in w for w in meta["warnings"])


@pytest.mark.parametrize("version", [v for v in VERSIONS if v in ("1.0.0", "1.1.0")])
def test_every_feature_is_filled_on_real_captures(
    jan_store, capture_store, pair_store, tmp_path, version
):
    """1.0.0/1.1.0 read book, trades and tickers: the 2023 BTCUSDT capture (with tickers, so
    funding) and the 2024 BTCUSDT+ETHUSDT pair at a 1 s grid, candle features on January."""
    names = set(registry.load(version).names)
    checked = set()
    for store, symbols, start, end in (
        (capture_store, ["BTCUSDT"], "2023-04-05T00:00:05Z", "2023-04-05T00:06:40Z"),
        (pair_store, ["BTCUSDT", "ETHUSDT"], "2024-07-18T23:57:05Z", "2024-07-19T00:04:50Z"),
    ):
        request = DatasetRequest(
            symbols=symbols,
            start=start,
            end=end,
            registry_version=version,
            resolution="1s",
            target={"horizon": "10s", "price": "trade"},
            split_fractions=(0.6, 0.2, 0.2),
            short_history=True,
        )
        out = tmp_path / store.name
        meta = build(request, store, out)
        table = _rows(out)
        assert table.num_rows > 200 * len(symbols)
        checked |= _filled(meta, table, version, {"trades", "orderbook", "funding"})
        if store is pair_store:  # no tickers in 2024: funding is null, and says so
            assert any("no funding data stored" in w for w in meta["warnings"])
    jan_meta, jan_table = _jan(jan_store, tmp_path / "jan", version)
    checked |= _filled(jan_meta, jan_table, version, {"kline"})
    clock = {n for n in names if compute.FEATURES[n].source == "clock"}
    assert names - checked == clock, "features filled nowhere on real data"


def _all_rows(out) -> dict[tuple[str, int], dict]:
    table = _rows(out)
    ts = pc.cast(table["ts"], pa.int64()).to_pylist()
    return {(row["symbol"], t): row for row, t in zip(table.to_pylist(), ts, strict=True)}


def test_executors_and_shared_trade_bars_change_no_value(capture_store, tmp_path, monkeypatch):
    """The builder runs small side sources (candles, funding, clock) by featlib.local and
    reads the trade-price targets off the trade features' bars. Against the other paths on
    the real 2023 capture: the side sources by DuckDB (LOCAL_MAX_ROWS = 0), and targets of a
    version without trade features, which compute their bars from the raw trades."""
    from featlib import checks, dataset

    def request(version: str) -> DatasetRequest:
        return DatasetRequest(
            symbols=["BTCUSDT"],
            start="2023-04-05T00:00:05Z",
            end="2023-04-05T00:06:40Z",
            registry_version=version,
            resolution="1s",
            target={"horizon": "10s", "price": "trade"},
            split_fractions=(0.6, 0.2, 0.2),
            short_history=True,
        )

    build(request("1.1.0"), capture_store, tmp_path / "default")
    monkeypatch.setattr(dataset, "LOCAL_MAX_ROWS", 0)
    build(request("1.1.0"), capture_store, tmp_path / "duckdb")
    build(request("1.3.0"), capture_store, tmp_path / "no_trades")
    default, duck, candles = (_all_rows(tmp_path / n) for n in ("default", "duckdb", "no_trades"))
    assert default.keys() == duck.keys() == candles.keys() and len(default) > 300
    wrong, compared = [], 0
    for key, row in default.items():
        for name, value in row.items():
            compared += 1
            if not checks.same(value, duck[key][name]):
                wrong.append((key, name, value, duck[key][name]))
        for name in ("target_return", "target_direction"):
            if name in row and row[name] != candles[key][name]:
                wrong.append((key, name, row[name], candles[key][name]))
    assert not wrong, f"{len(wrong)} of {compared} differ, e.g. {wrong[:5]}"
    funding = [n for n in registry.load("1.1.0").names if compute.FEATURES[n].source == "funding"]
    assert funding and all(any(r[n] is not None for r in default.values()) for n in funding)
