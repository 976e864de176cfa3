"""Order-book and trade-flow features on the real captures against references computed here.

featlib is called only for the values under test (checks.features_at, the real compute path
from raw tables). The expected values come from the raw rows alone:

- the book: the raw snapshot and delta rows put in processing order here (deepest stream of the
  symbol; by ts, then update id, snapshots first) and replayed into test_book's brute-force dict
  book (RefBook); each feature at t follows its docstring over the state after every message
  with ts <= t, null while that book is desynchronised;
- trades: numpy over the raw trade rows, each window (t − w, t] taken on the trade timestamps
  directly (no one-second bars), sizes summed exactly in integer units of 1e-10.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from featlib.checks import features_at, same
from tests.unit.test_book import RefBook

CAPTURES = ["BTCUSDT-2023-04-05", "BTCUSDT-2024-07-18", "ETHUSDT-2024-07-18"]
SECOND = 1_000
FEED_MS = 300_000  # trade features are null after 5 minutes without a trade
UNITS = 10**10  # sizes are summed exactly as integers of 1e-10 (they have at most 10 decimals)

BOOK_FEATURES = [
    "mid_price",
    "spread_abs",
    "spread_rel",
    "depth_bid_top5",
    "depth_ask_top5",
    "depth_bid_top10",
    "depth_ask_top10",
    "depth_imbalance_top5",
    "slope_bid",
    "slope_ask",
    "orderbook_churn_rate",
]
TRADE_FEATURES = [
    "vwap_3s",
    "vwap_15s",
    "vwap_1m",
    "volume_3s",
    "volume_15s",
    "volume_1m",
    "signed_volume_3s",
    "signed_volume_15s",
    "signed_volume_1m",
    "trade_count_3s",
    "buy_sell_volume_ratio",
    "net_aggressor_pressure",
]


def mismatches(
    names: Sequence[str],
    times: Sequence[int],
    expected: Mapping[str, Sequence[float | None]],
    got: Mapping[str, Sequence[float | None]],
) -> tuple[int, list[str]]:
    """(values compared, descriptions of those that differ)."""
    bad, n = [], 0
    for name in names:
        assert len(expected[name]) == len(got[name]) == len(times), name
        for t, want, have in zip(times, expected[name], got[name], strict=True):
            n += 1
            if not same(have, want):
                bad.append(f"{name} at {t}: expected {want!r}, got {have!r}")
    return n, bad


def assert_matches(names, times, expected, got) -> int:
    n, bad = mismatches(names, times, expected, got)
    assert not bad, f"{len(bad)} of {n} values differ:\n" + "\n".join(bad[:20])
    return n


def whole_seconds(first_ms: int, last_ms: int) -> list[int]:
    """Every whole-second time in [first_ms, last_ms]."""
    return list(range(-(-first_ms // SECOND) * SECOND, last_ms // SECOND * SECOND + 1, SECOND))


# --- order book ---------------------------------------------------------------------------


def _rows(table: pa.Table, symbol: str, is_snapshot: bool) -> list[dict[str, Any]]:
    table = table.filter(pc.equal(table["symbol"], symbol))
    table = table.set_column(table.schema.get_field_index("ts"), "ts", table["ts"].cast(pa.int64()))
    columns = ["ts", "update_id", "depth", "bid_price", "bid_size", "ask_price", "ask_size"]
    return [{**row, "is_snapshot": is_snapshot} for row in table.select(columns).to_pylist()]


def book_messages(tables: Mapping[str, pa.Table], symbol: str) -> list[dict[str, Any]]:
    """The symbol's deepest stream, snapshots and deltas, in processing order."""
    rows = _rows(tables["orderbook_snapshots"], symbol, True)
    rows += _rows(tables["orderbook_deltas"], symbol, False)
    depth = max(row["depth"] for row in rows)
    rows = [row for row in rows if row["depth"] == depth]
    rows.sort(key=lambda row: (row["ts"], row["update_id"], not row["is_snapshot"]))
    return rows


def _depth(levels: list[tuple[float, float]], n: int) -> float | None:
    """Size on the best n levels that exist; null for an empty side."""
    return math.fsum(size for _, size in levels[:n]) if levels else None


def _slope(levels: list[tuple[float, float]]) -> float | None:
    """OLS slope (with intercept) of size on |price − best| / best over the levels given,
    exact in rationals over the float distances; null under 3 levels."""
    if len(levels) < 3:
        return None
    best = levels[0][0]
    x = [Fraction(abs(price - best) / best) for price, _ in levels]
    y = [Fraction(size) for _, size in levels]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxx = sum((xi - mx) ** 2 for xi in x)
    if sxx == 0:
        return None
    return float(sum((xi - mx) * (yi - my) for xi, yi in zip(x, y, strict=True)) / sxx)


def book_values(ref: RefBook) -> dict[str, float | None]:
    """The state features of the reference book as it stands, per the docstrings."""
    if not ref.synced:
        return dict.fromkeys(BOOK_FEATURES)
    bids, asks = ref.top(10)
    out: dict[str, float | None] = dict.fromkeys(BOOK_FEATURES)
    if bids and asks:
        bid, ask = bids[0][0], asks[0][0]
        mid = (bid + ask) / 2
        out.update(mid_price=mid, spread_abs=ask - bid, spread_rel=(ask - bid) / mid)
    for side, levels in (("bid", bids), ("ask", asks)):
        out[f"depth_{side}_top5"] = _depth(levels, 5)
        out[f"depth_{side}_top10"] = _depth(levels, 10)
        out[f"slope_{side}"] = _slope(levels)
    bid5, ask5 = out["depth_bid_top5"], out["depth_ask_top5"]
    if bid5 is not None and ask5 is not None and bid5 + ask5 > 0:
        out["depth_imbalance_top5"] = (bid5 - ask5) / (bid5 + ask5)
    return out


def book_reference(
    messages: list[dict[str, Any]], times: Sequence[int], churn_ms: int = 60_000
) -> dict[str, list[float | None]]:
    """Each feature at each time (ascending): the reference book after every message with
    ts <= t; churn: the messages in (t − 60 s, t] that moved the best bid or ask price with
    the book synchronised before and after them, per second."""
    ref, out = RefBook(), defaultdict(list)
    changes: list[int] = []  # ts of the counted best-price changes
    k = 0
    for t in times:
        while k < len(messages) and messages[k]["ts"] <= t:
            before, was_synced = ref.best(), ref.synced
            if ref.apply(messages[k]) and ref.best() != before and was_synced and ref.synced:
                changes.append(messages[k]["ts"])
            k += 1
        values = book_values(ref)
        if ref.synced:
            moved = bisect.bisect_right(changes, t) - bisect.bisect_right(changes, t - churn_ms)
            values["orderbook_churn_rate"] = moved / (churn_ms / SECOND)
        for name, value in values.items():
            out[name].append(value)
    return out


def with_gap_and_resync(tables: Mapping[str, pa.Table], symbol: str) -> dict[str, pa.Table]:
    """The raw tables with one delta dropped a third of the way in (a gap: the book is
    desynchronised from the next delta on) and a new snapshot two thirds in (resynchronised):
    the full reference book after the delta it is stamped with (same ts and update id, so that
    delta comes after it, stale)."""
    messages = book_messages(tables, symbol)
    deltas = [n for n, msg in enumerate(messages) if not msg["is_snapshot"]]
    drop, snap_at = deltas[len(deltas) // 3], deltas[2 * len(deltas) // 3]
    ref = RefBook()
    for msg in messages[: snap_at + 1]:
        ref.apply(msg)
    at = messages[snap_at]
    bids, asks = sorted(ref.bids.items(), reverse=True), sorted(ref.asks.items())
    snapshot = {
        "symbol": symbol,
        "ts": at["ts"],
        "update_id": at["update_id"],
        "seq": None,
        "cts": None,
        "depth": at["depth"],
        "bid_price": [p for p, _ in bids],
        "bid_size": [s for _, s in bids],
        "ask_price": [p for p, _ in asks],
        "ask_size": [s for _, s in asks],
        "received_at": at["ts"],
    }
    snaps = tables["orderbook_snapshots"]
    raw_deltas = tables["orderbook_deltas"]
    gone = messages[drop]
    keep = pc.invert(
        pc.and_(
            pc.equal(raw_deltas["update_id"], gone["update_id"]),
            pc.equal(raw_deltas["ts"].cast(pa.int64()), gone["ts"]),
        )
    )
    assert raw_deltas.num_rows - pc.sum(keep.cast(pa.int64())).as_py() == 1
    return {
        **tables,
        "orderbook_snapshots": pa.concat_tables(
            [snaps, pa.Table.from_pylist([snapshot], schema=snaps.schema)]
        ),
        "orderbook_deltas": raw_deltas.filter(keep),
    }


@pytest.mark.parametrize("gap", [False, True], ids=["as-recorded", "gap-then-snapshot"])
@pytest.mark.parametrize("capture", CAPTURES)
def test_book_features_equal_brute_force_book(real_captures, capture, gap):
    """Every whole second of the capture's book span (plus 3 s before it): the book features
    equal the docstring formulas over the brute-force book state at t."""
    tables, symbol, first, last = real_captures[capture]
    if gap:
        tables = with_gap_and_resync(tables, symbol)
    times = whole_seconds(first - 3 * SECOND, last)
    messages = book_messages(tables, symbol)
    expected = book_reference(messages, times)
    got = features_at(BOOK_FEATURES, tables, symbol, times)
    n = assert_matches(BOOK_FEATURES, times, expected, got)
    assert n == len(BOOK_FEATURES) * len(times) and len(times) > 400
    nulls = sum(v is None for v in expected["mid_price"])
    if gap:  # the desynchronised stretch is a third of the span: all null there
        assert len(times) // 4 < nulls < len(times) // 2, nulls
    else:  # only before the first snapshot
        assert nulls <= 3, nulls
    assert sum(v is not None and v > 0 for v in expected["orderbook_churn_rate"]) > 100


# --- trades -------------------------------------------------------------------------------


def trade_arrays(trades: pa.Table, symbol: str) -> dict[str, np.ndarray]:
    """The symbol's raw trades by ts: ts (ms), size in integer units, buy flag, notional."""
    df = trades.filter(pc.equal(trades["symbol"], symbol)).select(["ts", "side", "price", "size"])
    df = df.set_column(0, "ts", df["ts"].cast(pa.int64())).to_pandas()
    assert set(df["side"]) == {"Buy", "Sell"}
    df = df.sort_values("ts", kind="stable")
    units = np.rint(df["size"].to_numpy() * UNITS).astype(np.int64)
    assert np.all(units / UNITS == df["size"].to_numpy()), "a size with more than 10 decimals"
    return {
        "ts": df["ts"].to_numpy(),
        "units": units,
        "buy": (df["side"] == "Buy").to_numpy(),
        "notional": (df["price"] * df["size"]).to_numpy(),
    }


def trade_reference(
    a: dict[str, np.ndarray], times: Sequence[int], closed: str = "right"
) -> dict[str, list[float | None]]:
    """Each trade feature at each time, from the trades with t − w < ts <= t (closed "right";
    "left": t − w <= ts < t, the other reading of a window, for the tests to reject)."""
    ts = a["ts"]

    def window(t: int, ms: int) -> slice:
        return slice(np.searchsorted(ts, t - ms, closed), np.searchsorted(ts, t, closed))

    out: dict[str, list[float | None]] = defaultdict(list)
    for t in times:
        alive = window(t, FEED_MS)
        alive = alive.stop > alive.start
        for label, seconds in (("3s", 3), ("15s", 15), ("1m", 60)):
            w = window(t, seconds * SECOND)
            units, buy = a["units"][w], a["buy"][w]
            volume = int(units.sum())
            signed = int(units[buy].sum()) - int(units[~buy].sum())
            vwap = math.fsum(a["notional"][w]) / (volume / UNITS) if volume else None
            out[f"vwap_{label}"].append(vwap)
            out[f"volume_{label}"].append(volume / UNITS if alive else None)
            out[f"signed_volume_{label}"].append(signed / UNITS if alive else None)
            if seconds == 3:
                out["trade_count_3s"].append(float(len(units)) if alive else None)
            if seconds == 60:
                b, s = int(units[buy].sum()) / UNITS, int(units[~buy].sum()) / UNITS
                out["buy_sell_volume_ratio"].append(b / s if s > 0 else None)
                out["net_aggressor_pressure"].append((b - s) / (b + s) if b + s > 0 else None)
    return out


def trade_times(a: dict[str, np.ndarray], first: int, last: int) -> list[int]:
    """Every whole second of the book span, 5 s before the first trade, and around 1 min and
    5 min after the last (windows emptying, then the feed declared missing)."""
    start = a["ts"][0] // SECOND * SECOND
    end = -(-a["ts"][-1] // SECOND) * SECOND
    after = [0, 1, 2, 3, 4, 14, 15, 16, 59, 60, 61, 62, 298, 299, 300, 301, 302, 310]
    times = {*whole_seconds(first, last), *range(start - 5 * SECOND, start + 1, SECOND)}
    return sorted(times | {int(end + s * SECOND) for s in after})


@pytest.mark.parametrize("capture", CAPTURES)
def test_trade_flow_features_equal_numpy_over_raw_trades(real_captures, capture):
    tables, symbol, first, last = real_captures[capture]
    a = trade_arrays(tables["trades"], symbol)
    times = trade_times(a, first, last)
    expected = trade_reference(a, times)
    got = features_at(TRADE_FEATURES, tables, symbol, times)
    n = assert_matches(TRADE_FEATURES, times, expected, got)
    assert n == len(TRADE_FEATURES) * len(times) and len(times) > 400
    # the reference exercises every branch: trades, empty windows, no feed at all
    volume = expected["volume_3s"]
    assert sum(v is None for v in volume) >= 10 and sum(v == 0 for v in volume) >= 10
    assert sum(v is not None and v > 0 for v in volume) > 300
    assert sum(v is None for v in expected["vwap_1m"]) >= 10


@pytest.mark.parametrize("capture", CAPTURES)
def test_trade_window_edges_on_real_trades(real_captures, capture):
    """At the whole seconds where a real trade sits exactly on t or on t − w: the trade at t is
    in, the one at t − w is out ((t − w, t]); the reference over [t − w, t) must not match."""
    tables, symbol, _, _ = real_captures[capture]
    a = trade_arrays(tables["trades"], symbol)
    on_second = np.unique(a["ts"][a["ts"] % SECOND == 0])
    assert len(on_second) >= 3
    times = sorted(
        {int(t + d) for t in on_second for d in (0, 3 * SECOND, 15 * SECOND, 60 * SECOND)}
    )
    got = features_at(TRADE_FEATURES, tables, symbol, times)
    assert_matches(TRADE_FEATURES, times, trade_reference(a, times), got)
    _, bad = mismatches(TRADE_FEATURES, times, trade_reference(a, times, "left"), got)
    assert len(bad) >= len(on_second), "[t − w, t) should differ at every such t"
