"""featlib.local (the live service's in-process executor) against DuckDB (the dataset
builder's): the same plan, the same tables, the same values to 1e-9 relative, nulls equal.

On the real captures for every feature of every registry version, on the 31 days of real
candles, and on generated tables that reach the corners (nulls, ties, empty windows, gaps,
duplicates, exact-zero sums, NaN from 0/0)."""

from __future__ import annotations

import duckdb
import ibis
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featlib import checks, compute, local, registry
from featlib.features import FEATURES
from featlib.inputs import TABLE_SCHEMAS

ALL = sorted({name for v in registry.versions() for name in registry.load(v).names})
BY_SOURCE = {s: [n for n in ALL if FEATURES[n].source == s] for s in compute.SOURCES}
JAN = (1_641_081_600_000, 1_643_673_600_000)
T0 = 1_700_000_000_000  # a whole minute


def both(names, tables, times_by_symbol) -> tuple[pa.Table, pa.Table]:
    """compute() through DuckDB and through featlib.local on the same tables and grid."""
    p = compute.plan(names)
    grid = pa.table(
        {
            "symbol": pa.array([s for s, ts in times_by_symbol.items() for _ in ts], pa.string()),
            "ts": pa.array([t for ts in times_by_symbol.values() for t in ts], pa.int64()),
        }
    )
    full = {k: tables.get(k, TABLE_SCHEMAS[k].empty_table()) for k in p.raw_tables}
    con = duckdb.connect()
    for kind, table in full.items():
        con.register(kind, table)
    return compute.compute(p, con, grid), compute.compute(p, full, grid)


def assert_same(duck: pa.Table, mine: pa.Table) -> int:
    assert duck["symbol"].equals(mine["symbol"]) and duck["ts"].equals(mine["ts"])
    wrong, compared = [], 0
    for name in duck.column_names[2:]:
        for i, (a, b) in enumerate(
            zip(duck[name].to_pylist(), mine[name].to_pylist(), strict=True)
        ):
            compared += 1
            if not checks.same(a, b):
                wrong.append((name, duck["ts"][i].as_py(), a, b))
    assert not wrong, f"{len(wrong)} of {compared} differ, e.g. {wrong[:6]}"
    return compared


@pytest.mark.parametrize("version", registry.versions())
@pytest.mark.parametrize(
    "capture", ["BTCUSDT-2023-04-05", "BTCUSDT-2024-07-18", "ETHUSDT-2024-07-18"]
)
def test_every_registry_version_on_the_real_captures(version, capture, real_captures):
    tables, symbol, first, last = real_captures[capture]
    times = list(range(first // 1000 * 1000 + 1000, last, 3_000))
    tables = checks.with_book(tables, symbol, times)
    compared = assert_same(*both(registry.load(version).names, tables, {symbol: times}))
    assert compared >= 50 * len(registry.load(version).names)


def test_candle_features_on_the_31_days(jan_tables):
    rng = np.random.default_rng(7)
    times = sorted(set(rng.integers(JAN[0] + 86_400_000, JAN[1], 400).tolist()))
    times += [t // 60_000 * 60_000 for t in times[:100]]  # on candle closes too
    names = BY_SOURCE["kline"] + BY_SOURCE["clock"]
    duck, mine = both(names, jan_tables, {"BTCUSDT": sorted(set(times))})
    assert assert_same(duck, mine) > 40_000
    filled = sum(duck[n].null_count < len(duck) for n in names)
    assert filled == len(names)  # every feature had values to compare


# --- generated tables ---------------------------------------------------------------------

SYMBOLS = st.sampled_from(["AAAUSDT", "BBBUSDT"])
PRICES = st.sampled_from([100.0, 100.5, 99.75, 101.25, 100.0, 0.0001, 62000.1])
SIZES = st.integers(0, 5000).map(lambda k: k / 1000)  # exact zeros, shares that cancel


def _table(kind: str, rows: list[dict]) -> pa.Table:
    schema = TABLE_SCHEMAS[kind]
    return pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()


@st.composite
def trades(draw):
    rows = []
    for i in range(draw(st.integers(0, 80))):
        ts = T0 + draw(st.integers(0, 420_000))
        rows.append(
            {
                "symbol": draw(SYMBOLS),
                "ts": ts,
                "trade_id": draw(st.sampled_from(["a", "b", "c", "d"])) + str(i),
                "side": draw(st.sampled_from(["Buy", "Sell"])),
                "price": draw(PRICES),
                "size": draw(SIZES),
                "seq": draw(st.none() | st.integers(0, 3)),
                "received_at": ts,
            }
        )
    return {"trades": _table("trades", rows)}


@st.composite
def book(draw):
    levels = {}
    samples, changes = [], []
    for symbol in ("AAAUSDT", "BBBUSDT"):
        for k in sorted(set(draw(st.lists(st.integers(0, 420), max_size=12)))):
            row = {"symbol": symbol, "ts": T0 + k * 1000, "desynced": draw(st.booleans())}
            depth = draw(st.integers(0, 10))
            for side, sign in (("bid", -1), ("ask", 1)):
                for i in range(1, depth + 1):
                    row[f"{side}_px_{i}"] = 100.0 + sign * 0.5 * i
                    row[f"{side}_sz_{i}"] = draw(SIZES)
            samples.append(levels | row)
        for ts in draw(st.lists(st.integers(0, 420_000), max_size=40)):
            changes.append({"symbol": symbol, "ts": T0 + ts, "desynced": draw(st.booleans())})
    return {
        "book_samples": _table("book_samples", samples),
        "book_changes": _table("book_changes", changes),
    }


@st.composite
def funding(draw):
    rows, tickers = [], []
    for _ in range(draw(st.integers(0, 8))):
        ts = T0 + draw(st.integers(-40_000_000, 420_000))
        nxt = draw(st.none() | st.integers(0, 30_000_000).map(lambda d, ts=ts: ts + d))
        rows.append(
            {
                "symbol": draw(SYMBOLS),
                "ts": ts,
                "funding_rate": draw(st.sampled_from([0.0001, -0.0002, 0.0])),
                "next_funding_time": nxt,
                "source": "rest",
                "received_at": ts + draw(st.integers(0, 5)),
            }
        )
    for _ in range(draw(st.integers(0, 20))):
        ts = T0 + draw(st.integers(-1_000_000, 420_000))
        tickers.append(
            {
                "symbol": draw(SYMBOLS),
                "ts": ts,
                "type": "delta",
                "funding_rate": draw(st.none() | st.sampled_from([0.0001, 0.0003])),
                "next_funding_time": draw(st.none() | st.just(ts + 3_600_000)),
                "received_at": ts + draw(st.integers(0, 5)),
            }
        )
    return {"funding": _table("funding", rows), "ticker": _table("ticker", tickers)}


@st.composite
def klines(draw):
    rows = []
    for symbol in ("AAAUSDT", "BBBUSDT"):
        close = 100.0
        for m in range(draw(st.integers(0, 40))):
            if draw(st.integers(0, 9)) == 0:
                continue  # a missing minute
            start = T0 - 30 * 60_000 + m * 60_000
            step = draw(st.sampled_from([0.0, 0.0, 0.5, -0.25, 1.0]))
            open_, close = close, close + step
            row = {
                "symbol": symbol,
                "ts": start + 60_000,
                "start": start,
                "interval": "1",
                "open": open_,
                "high": max(open_, close) + draw(st.sampled_from([0.0, 0.25])),
                "low": min(open_, close) - draw(st.sampled_from([0.0, 0.25])),
                "close": close,
                "volume": draw(SIZES),
                "turnover": 0.0,
                "confirm": draw(st.integers(0, 5)) > 0,
                "update_ts": start + 60_000,
                "received_at": start + 60_000 + draw(st.integers(0, 3)),
            }
            rows.append(row)
            if draw(st.integers(0, 6)) == 0:  # a re-sent confirmation with other values
                rows.append(row | {"close": close + 1, "received_at": row["received_at"] + 9})
    return {"klines": _table("klines", rows)}


GRIDS = st.dictionaries(
    SYMBOLS,
    st.lists(st.integers(0, 420).map(lambda k: T0 + k * 1000), min_size=1, max_size=6),
    min_size=1,
)
GENERATED = [
    ("trades", trades()),
    ("orderbook", book()),
    ("funding", funding()),
    ("kline", klines()),
]


@pytest.mark.parametrize(("source", "tables"), GENERATED, ids=[s for s, _ in GENERATED])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_tables(source, tables, data):
    drawn = data.draw(tables)
    grid = data.draw(GRIDS)
    names = BY_SOURCE[source] + (BY_SOURCE["clock"] if source == "kline" else [])
    assert_same(*both(names, drawn, {s: sorted(set(ts)) for s, ts in sorted(grid.items())}))


# --- semantics ----------------------------------------------------------------------------


def run(expr, **tables) -> pa.Table:
    frames = {name: local.from_arrow(t) for name, t in tables.items()}
    return local.to_arrow(local.Executor(expr)(frames), dict(expr.schema().items()))


def duck(expr, **tables) -> pa.Table:
    con = duckdb.connect()
    for name, t in tables.items():
        con.register(name, t)
    return con.sql(ibis.to_sql(expr, dialect="duckdb")).to_arrow_table()


def test_sql_semantics_where_numpy_differs():
    values = [1.0, 0.0, -1.0, None, 2.5e-10, 1.5e-10, 0.051, 62000.1]
    t = pa.table({"x": pa.array(values, pa.float64()), "y": pa.array([0.0] * 8)})
    u = ibis.table({"x": "float64", "y": "float64"}, name="t")
    ratio = u.x / u.y  # inf, NaN, -inf, null: IEEE, as DuckDB
    expr = u.select(
        ratio=ratio,
        nan_is_nan=(u.y / u.y) == (u.y / u.y),  # DuckDB: NaN equals NaN
        nan_greatest=(u.y / u.y) > u.x,
        null_and_false=(u.x > 0) & ibis.literal(False),  # false, not null
        null_or_true=(u.x > 0) | ibis.literal(True),  # true, not null
        remainder=(u.x.fill_null(7) * 3).cast("int64") % ibis.literal(-2),
        decimal=(u.x * 1).cast("decimal(38, 10)").cast("float64"),  # half away from zero
    )
    got, expected = run(expr, t=t), duck(expr, t=t)
    for name in expr.columns:
        pairs = zip(got[name].to_pylist(), expected[name].to_pylist(), strict=True)
        assert all(a == b or (a != a and b != b) for a, b in pairs), name  # NaN: NaN


def test_an_operation_it_does_not_implement_is_refused():
    u = ibis.table({"s": "string"}, name="t")
    with pytest.raises(local.UnsupportedOperation, match=r"Upper|operation"):
        run(u.select(x=u.s.upper()), t=pa.table({"s": ["a"]}))


def test_decimals_round_as_duckdb_casts_them():
    """DOUBLE -> DECIMAL(38, 10) on sizes, notionals and values that land on .5 at the 10th
    decimal (both sides of zero): the executor's exact integers equal DuckDB's."""
    rng = np.random.default_rng(1)
    ties = (rng.integers(0, 10**9, 5_000) + 0.5) / 1e10
    sizes = np.round(rng.random(5_000) * 10, 3) * np.round(rng.random(5_000) * 70_000, 1)
    x = np.concatenate([ties, -ties, sizes, rng.random(5_000) * 1e6])
    u = ibis.table({"x": "float64"}, name="t")
    expected = duck(u.select(d=u.x.cast("decimal(38, 10)")), t=pa.table({"x": x}))["d"]
    got = local._to_decimal(x, ibis.dtype("float64"), 10)
    assert [int(h) * local.LIMB + int(lo) for h, lo in got] == [
        int(v.scaleb(10)) for v in expected.to_pylist()
    ]


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(0, 3)), unique=True),
    layout=st.sampled_from(["ascending", "descending", "shuffled"]),
    data=st.data(),
)
def test_first_by_order_keys_on_presorted_and_shuffled_rows(keys, layout, data):
    """FIRST(x ORDER BY ts DESC, seq DESC) per group, as trade_bars takes a bar's last price:
    the executor's shortcut for rows already in (or strictly against) the keys' order and
    its general sort agree with DuckDB, nulls in x skipped."""
    rows = sorted(keys, reverse=layout == "descending")
    if layout == "shuffled":
        rows = data.draw(st.permutations(rows))
    x = [data.draw(st.none() | st.floats(-5, 5, allow_nan=False)) for _ in rows]
    t = pa.table(
        {
            "g": pa.array([g for g, _, _ in rows], pa.int64()),
            "ts": pa.array([ts for _, ts, _ in rows], pa.int64()),
            "seq": pa.array([s for _, _, s in rows], pa.int64()),
            "x": pa.array(x, pa.float64()),
        }
    )
    u = ibis.table({"g": "int64", "ts": "int64", "seq": "int64", "x": "float64"}, name="t")
    expr = (
        u.group_by("g")
        .aggregate(last=u.x.first(order_by=[ibis.desc(u.ts), ibis.desc(u.seq)]))
        .order_by("g")
    )
    assert run(expr, t=t).to_pylist() == duck(expr, t=t).to_pylist()


def test_timestamps_of_any_unit_are_epoch_milliseconds():
    """DuckDB hands timestamps back in microseconds, the raw store keeps milliseconds."""
    ms = [1_680_652_805_123, None, -1]
    for unit, scale in (("s", None), ("ms", 1), ("us", 1000), ("ns", 1_000_000)):
        values = [None if v is None else v // 1000 for v in ms] if scale is None else ms
        ticks = [None if v is None else v * (scale or 1) for v in values]
        col = local._from_arrow_column(pa.chunked_array([pa.array(ticks, pa.timestamp(unit))]))
        expected = [None if v is None else v * (1000 if scale is None else 1) for v in values]
        got = [int(v) if ok else None for v, ok in zip(col.values, col.mask(3), strict=True)]
        assert got == expected, unit
