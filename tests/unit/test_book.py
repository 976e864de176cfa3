"""featlib.book on real Bybit order-book streams, against a brute-force dict book kept here.

RefBook is the reference: a plain dict per side (prices also kept in a sorted list) and the
sequencing rules of SPEC §4 written out directly. The numba book must equal it after every
message of every real stream (top 10 both sides, best bid/ask, desync, update id, counters),
its replay samples must equal the reference state after all messages with ts <= the sample
time, and replay must equal the live OrderBook + sample() at the same times.
"""

from __future__ import annotations

import bisect
import io
import itertools
import math
import zipfile
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from featlib import book, raw
from featlib.bybit import parse_message
from featlib.capture import read_lines
from featlib.schema import BOOK
from tests.conftest import CAPTURE_2023, CAPTURE_2024_BTC, CAPTURE_2024_ETH, shared

XRP_OB500 = "sources/02_bybit_v5_orderbook_ob500_nautilus/xrpusdt-ob500.data.zip"
LEVELS = 10


class RefBook:
    """Brute-force order book: a dict per side plus its prices in a sorted list, the rules
    applied literally."""

    def __init__(self) -> None:
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.bid_keys: list[float] = []  # ascending
        self.ask_keys: list[float] = []  # ascending
        self.u: int | None = None
        self.ts: int | None = None
        self.synced = False
        self.gaps = self.stale = self.crossed = self.snapshots = 0

    def apply(self, msg: dict[str, Any]) -> bool:
        """Apply one message row; False when it is stale (ignored)."""
        restart = msg["is_snapshot"] or msg["update_id"] == 1
        if not restart and self.u is not None and msg["update_id"] <= self.u:
            self.stale += 1
            return False
        if restart:
            self.bids, self.asks, self.bid_keys, self.ask_keys = {}, {}, [], []
            self.synced = True
            self.snapshots += 1
        elif self.u is not None and msg["update_id"] != self.u + 1:
            self.gaps += 1
            self.synced = False
        for levels, keys, prices, sizes in (
            (self.bids, self.bid_keys, msg["bid_price"], msg["bid_size"]),
            (self.asks, self.ask_keys, msg["ask_price"], msg["ask_size"]),
        ):
            for price, size in zip(prices, sizes, strict=True):
                if size > 0:
                    if price not in levels:
                        bisect.insort(keys, price)
                    levels[price] = size
                elif price in levels:
                    del levels[price]
                    keys.pop(bisect.bisect_left(keys, price))
        self.u, self.ts = msg["update_id"], msg["ts"]
        best_bid, best_ask = self.best()
        if best_bid is not None and best_ask is not None and best_bid >= best_ask:
            self.crossed += 1
        return True

    def best(self) -> tuple[float | None, float | None]:
        return (
            self.bid_keys[-1] if self.bid_keys else None,
            self.ask_keys[0] if self.ask_keys else None,
        )

    def top(self, n: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        bids = [(p, self.bids[p]) for p in reversed(self.bid_keys[-n:])]
        return bids, [(p, self.asks[p]) for p in self.ask_keys[:n]]

    def row(self, ts: int, n: int = LEVELS) -> dict[str, Any]:
        """The samples row this state should give at time ts."""
        bids, asks = self.top(n)
        out: dict[str, Any] = {"ts": ts}
        for name, levels, what in (
            ("bid_px", bids, 0),
            ("bid_sz", bids, 1),
            ("ask_px", asks, 0),
            ("ask_sz", asks, 1),
        ):
            for i in range(n):
                out[f"{name}_{i + 1}"] = levels[i][what] if i < len(levels) else None
        out["desynced"] = not self.synced
        out["update_id"] = self.u
        out["book_ts"] = self.ts
        return out


def rows_of(messages: pa.Table) -> list[dict[str, Any]]:
    """Message rows with ts as integer ms."""
    return messages.set_column(
        messages.schema.get_field_index("ts"), "ts", messages["ts"].cast(pa.int64())
    ).to_pylist()


def as_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Message rows (ts in ms) back to a stream table."""
    schema = BOOK.append(pa.field("is_snapshot", pa.bool_()))
    return pa.Table.from_pylist(rows, schema=schema)


def book_tables(lines) -> tuple[pa.Table, pa.Table]:
    """Parse Bybit lines into (snapshots, deltas) raw tables."""
    found: dict[str, list] = defaultdict(list)
    for line in lines:
        parsed = parse_message(line, received_at=orjson.loads(line).get("ts"))
        if parsed is not None and parsed.kind.startswith("orderbook"):
            found[parsed.kind] += parsed.rows
    return tuple(  # type: ignore[return-value]
        pa.Table.from_pylist(found[kind], schema=BOOK)
        for kind in ("orderbook_snapshots", "orderbook_deltas")
    )


@cache
def capture_streams(relative: str) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Every (symbol, depth) stream of a real capture, as message rows in processing order."""
    snapshots, deltas = book_tables(read_lines(shared(relative)))
    keys = sorted(
        set(zip(deltas["symbol"].to_pylist(), deltas["depth"].to_pylist(), strict=True))
        | set(zip(snapshots["symbol"].to_pylist(), snapshots["depth"].to_pylist(), strict=True))
    )
    return {(s, d): rows_of(book.stream_messages(snapshots, deltas, s, d)) for s, d in keys}


def xrp_rows() -> list[dict[str, Any]]:
    with zipfile.ZipFile(shared(XRP_OB500)) as archive:
        (member,) = archive.namelist()
        lines = [line for line in io.BytesIO(archive.read(member)) if line.strip()]
    snapshots, deltas = book_tables(lines)
    return rows_of(book.stream_messages(snapshots, deltas, "XRPUSDT"))


@cache
def reference_rows(relative: str) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """The reference samples row after each message of each stream of a capture."""
    out = {}
    for key, rows in capture_streams(relative).items():
        ref = RefBook()
        out[key] = []
        for msg in rows:
            ref.apply(msg)
            out[key].append(ref.row(msg["ts"]))
    return out


def reference_changes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages after which the best bid or ask price moved, flagged when the book was
    desynchronised before or after them."""
    ref, out = RefBook(), []
    for msg in rows:
        before, was_synced = ref.best(), ref.synced
        if ref.apply(msg) and ref.best() != before:
            out.append({"ts": msg["ts"], "desynced": not (was_synced and ref.synced)})
    return out


def assert_live_equals(live: book.OrderBook, ref: RefBook, where: str) -> None:
    """The live book equals the reference: top 10 both sides, best prices, sequencing state."""
    bid_px, bid_sz, ask_px, ask_sz = live.top(LEVELS)
    bids, asks = ref.top(LEVELS)
    expect = [np.full(LEVELS, np.nan) for _ in range(4)]
    for i, (price, size) in enumerate(bids):
        expect[0][i], expect[1][i] = price, size
    for i, (price, size) in enumerate(asks):
        expect[2][i], expect[3][i] = price, size
    for got, want, name in zip(
        (bid_px, bid_sz, ask_px, ask_sz), expect, book.level_columns(1), strict=True
    ):
        np.testing.assert_array_equal(got, want, err_msg=f"{where}: {name}")
    assert (live.best_bid, live.best_ask) == ref.best(), where
    assert live.desynced == (not ref.synced), where
    assert live.update_id == ref.u, where


def assert_full_book_equal(live: book.OrderBook, ref: RefBook, where: str) -> None:
    """Every level of both sides, far ones included."""
    n = max(len(ref.bids), len(ref.asks), 1)
    bid_px, bid_sz, ask_px, ask_sz = live.top(n + 1)
    got_bids = {p: s for p, s in zip(bid_px, bid_sz, strict=True) if not math.isnan(p)}
    got_asks = {p: s for p, s in zip(ask_px, ask_sz, strict=True) if not math.isnan(p)}
    assert got_bids == ref.bids, where
    assert got_asks == ref.asks, where
    assert list(bid_px[: len(ref.bids)]) == sorted(ref.bids, reverse=True), where
    assert list(ask_px[: len(ref.asks)]) == sorted(ref.asks), where
    assert ref.bid_keys == sorted(ref.bids) and ref.ask_keys == sorted(ref.asks), where


def feed(live: book.OrderBook, msg: dict[str, Any]) -> None:
    live.apply(
        msg["is_snapshot"],
        msg["update_id"],
        msg["ts"],
        msg["bid_price"],
        msg["bid_size"],
        msg["ask_price"],
        msg["ask_size"],
    )


def sample_times(ts: list[int]) -> np.ndarray:
    """Before the first message, at and between every message time, after the last."""
    stamps = np.array(sorted(set(ts)), np.int64)
    between = (stamps[:-1] + stamps[1:]) // 2
    times = np.concatenate(
        [stamps, stamps - 1, stamps + 1, between, [stamps[0] - 5_000], [stamps[-1] + 60_000]]
    )
    return np.unique(times)


def expected_samples(rows: list[dict], refs: list[dict], times: np.ndarray) -> list[dict]:
    """Reference rows at each time: the state after every message with ts <= t."""
    stamps = [msg["ts"] for msg in rows]
    empty = RefBook()
    out = []
    for t in times.tolist():
        k = bisect.bisect_right(stamps, t)
        out.append({**(refs[k - 1] if k else empty.row(t)), "ts": t})
    return out


CAPTURES = [CAPTURE_2023, CAPTURE_2024_BTC, CAPTURE_2024_ETH]


def test_captures_hold_the_streams_described():
    """The real captures: one ob500 stream in 2023; an orderbook.1 and an ob500 stream per
    symbol in 2024 (what the tests below exercise)."""
    assert list(capture_streams(CAPTURE_2023)) == [("BTCUSDT", 500)]
    assert list(capture_streams(CAPTURE_2024_BTC)) == [("BTCUSDT", 1), ("BTCUSDT", 500)]
    assert list(capture_streams(CAPTURE_2024_ETH)) == [("ETHUSDT", 1), ("ETHUSDT", 500)]
    first = capture_streams(CAPTURE_2023)[("BTCUSDT", 500)][0]
    assert first["is_snapshot"] and (len(first["bid_price"]), len(first["ask_price"])) == (
        2306,
        1791,
    )


@pytest.mark.parametrize("capture", CAPTURES)
def test_live_book_equals_brute_force_after_every_message(capture):
    for key, rows in capture_streams(capture).items():
        live, ref = book.OrderBook(), RefBook()
        for n, msg in enumerate(rows):
            feed(live, msg)
            ref.apply(msg)
            assert_live_equals(live, ref, f"{capture} {key} message {n} u={msg['update_id']}")
            if n % 1000 == 0 or n == len(rows) - 1:
                assert_full_book_equal(live, ref, f"{capture} {key} message {n}")
        assert (
            (live.gaps, live.stale, live.crossed) == (ref.gaps, ref.stale, ref.crossed) == (0, 0, 0)
        )
        assert live.counters["messages"] == len(rows)
        assert live.counters["snapshots"] == ref.snapshots


@pytest.mark.parametrize("capture", CAPTURES)
def test_replay_samples_equal_brute_force(capture):
    """At, between, before and after message times: the state after all messages with ts <= s."""
    for key, rows in capture_streams(capture).items():
        times = sample_times([msg["ts"] for msg in rows])
        samples, _, counters = book.replay(as_table(rows), times)
        assert samples.column_names == [
            "ts",
            *book.level_columns(LEVELS),
            "desynced",
            "update_id",
            "book_ts",
        ]
        expected = expected_samples(rows, reference_rows(capture)[key], times)
        got = samples.to_pylist()
        assert len(got) == len(expected) == len(times)
        for row, want in zip(got, expected, strict=True):
            assert row == want, f"{capture} {key} at {row['ts']}"
        assert counters["messages"] == len(rows) and counters["crossed"] == 0


@pytest.mark.parametrize("capture", CAPTURES)
def test_replay_equals_live_book_and_sample(capture):
    """replay rows == sample() of an OrderBook fed message by message; changes == the reference's
    best-price changes."""
    for rows in capture_streams(capture).values():
        stamps = sorted({msg["ts"] for msg in rows})
        samples, changes, counters = book.replay(as_table(rows), np.array(stamps), levels=5)
        live, got, want_changes = book.OrderBook(), [], reference_changes(rows)
        for n, msg in enumerate(rows):
            feed(live, msg)
            if n == len(rows) - 1 or rows[n + 1]["ts"] > msg["ts"]:
                got.append(book.sample(live, msg["ts"], levels=5))
        assert samples.to_pylist() == got
        assert changes.to_pylist() == want_changes
        assert live.best_changes == counters["best_changes"] == len(want_changes)
        assert live.counters == counters


def test_xrp_ob500_dump_never_crossed_and_equals_brute_force():
    """The real Bybit ob500 historical file (XRPUSDT, 4 decimals): parsed with the project's
    parser, applied message by message and replayed."""
    rows = xrp_rows()
    assert (
        len(rows) == 50 and rows[0]["is_snapshot"] and not any(r["is_snapshot"] for r in rows[1:])
    )
    assert len(rows[0]["bid_price"]) == len(rows[0]["ask_price"]) == 500
    live, ref, refs = book.OrderBook(), RefBook(), []
    for n, msg in enumerate(rows):
        feed(live, msg)
        ref.apply(msg)
        refs.append(ref.row(msg["ts"]))
        assert_live_equals(live, ref, f"xrp message {n}")
        assert_full_book_equal(live, ref, f"xrp message {n}")
        assert live.best_bid < live.best_ask
    assert live.crossed == ref.crossed == 0
    times = sample_times([msg["ts"] for msg in rows])
    samples, _, counters = book.replay(as_table(rows), times)
    assert samples.to_pylist() == expected_samples(rows, refs, times)
    assert counters["crossed"] == 0 and counters["gaps"] == 0
    bids, asks = samples["bid_px_1"].to_numpy(zero_copy_only=False), samples["ask_px_1"]
    present = ~np.isnan(bids)
    assert np.all(bids[present] < asks.to_numpy(zero_copy_only=False)[present])


def snapshot_of(ref: RefBook, u: int, ts: int) -> dict[str, Any]:
    """A snapshot message holding the reference book's full state."""
    bids = sorted(ref.bids.items(), reverse=True)
    asks = sorted(ref.asks.items())
    return {
        "symbol": "BTCUSDT",
        "ts": ts,
        "update_id": u,
        "seq": None,
        "cts": None,
        "depth": 500,
        "bid_price": [p for p, _ in bids],
        "bid_size": [s for _, s in bids],
        "ask_price": [p for p, _ in asks],
        "ask_size": [s for _, s in asks],
        "received_at": ts,
        "is_snapshot": True,
    }


def btc_2023() -> list[dict[str, Any]]:
    return capture_streams(CAPTURE_2023)[("BTCUSDT", 500)]


def test_gap_desyncs_until_next_snapshot():
    """Drop one real delta: desynced from the next message on (deltas still applied), samples
    flag it, and a snapshot of the true book clears it; then equal to the true book again."""
    rows = btc_2023()
    dropped, resync = 3000, 4500
    true_ref = RefBook()  # the book without the gap
    for msg in rows[: resync + 1]:
        true_ref.apply(msg)
    snap = snapshot_of(true_ref, rows[resync]["update_id"], rows[resync]["ts"])
    stream = [*rows[:dropped], *rows[dropped + 1 : resync + 1], snap, *rows[resync + 1 :]]

    live, ref = book.OrderBook(), RefBook()
    for n, msg in enumerate(stream):
        feed(live, msg)
        ref.apply(msg)
        assert_live_equals(live, ref, f"message {n}")  # the gapped book, deltas applied anyway
        assert live.desynced == (dropped <= n < resync), n
        if n > resync:  # stream[n] is rows[n] again
            true_ref.apply(msg)
            assert_live_equals(live, true_ref, f"after resync, message {n}")
    assert live.gaps == 1 and live.counters["snapshots"] == 2

    times = sample_times([msg["ts"] for msg in stream])
    samples, changes, counters = book.replay(as_table(stream), times)
    gap_ts, snap_ts = rows[dropped + 1]["ts"], snap["ts"]
    desynced = samples["desynced"].to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(
        desynced, (times >= gap_ts) & (times < snap_ts) | (times < rows[0]["ts"])
    )
    assert changes.to_pylist() == reference_changes(stream)
    flagged = changes.filter(changes["desynced"])["ts"].to_numpy()[1:]  # [0]: the first snapshot
    assert len(flagged) and np.all((flagged >= gap_ts) & (flagged <= snap_ts))
    assert counters["gaps"] == 1


def test_update_id_one_restarts_the_book():
    """u == 1 on a delta means the exchange restarted: reset to its levels, synced, no gap."""
    rows = btc_2023()[:2000]
    restart = {
        **rows[1500],
        "is_snapshot": False,
        "update_id": 1,
        "bid_price": [28000.0, 27999.5],
        "bid_size": [1.0, 2.0],
        "ask_price": [28000.1],
        "ask_size": [3.0],
    }
    follow = {
        **rows[1501],
        "update_id": 2,
        "bid_price": [27999.5],
        "bid_size": [0.0],
        "ask_price": [28000.3],
        "ask_size": [0.5],
    }
    gapped = [*rows[:1000], *rows[1001:1500]]  # desynced before the restart
    live = book.OrderBook()
    for msg in gapped:
        feed(live, msg)
    assert live.desynced
    feed(live, restart)
    assert not live.desynced and live.update_id == 1
    np.testing.assert_array_equal(live.top(3)[0], [28000.0, 27999.5, np.nan])
    feed(live, follow)
    assert not live.desynced and live.update_id == 2 and live.gaps == 1
    bid_px, bid_sz, ask_px, ask_sz = live.top(3)
    np.testing.assert_array_equal(bid_px, [28000.0, np.nan, np.nan])
    np.testing.assert_array_equal(bid_sz, [1.0, np.nan, np.nan])
    np.testing.assert_array_equal(ask_px, [28000.1, 28000.3, np.nan])
    np.testing.assert_array_equal(ask_sz, [3.0, 0.5, np.nan])
    assert live.counters["snapshots"] == 2
    samples, _, _ = book.replay(as_table([*gapped, restart, follow]), np.array([follow["ts"]]))
    assert samples.to_pylist() == [book.sample(live, follow["ts"])]


def test_stale_and_duplicate_deltas_are_ignored_and_counted():
    rows = btc_2023()
    stream, inserted = [], 0
    for n, msg in enumerate(rows):
        stream.append(msg)
        if n and n % 997 == 0:
            stream.append(dict(msg))  # exact duplicate
            stream.append({**rows[n - 5], "ts": msg["ts"]})  # an older update arriving late
            inserted += 2
    live, ref = book.OrderBook(), RefBook()
    for n, msg in enumerate(stream):
        before = live.update_id
        feed(live, msg)
        applied = ref.apply(msg)
        assert_live_equals(live, ref, f"message {n}")
        if not applied:
            assert live.update_id == before
    assert live.stale == ref.stale == inserted and live.gaps == 0 and not live.desynced
    times = sample_times([msg["ts"] for msg in rows])
    clean, clean_changes, _ = book.replay(as_table(rows), times)
    noisy, noisy_changes, counters = book.replay(as_table(stream), times)
    assert noisy.equals(clean) and noisy_changes.equals(clean_changes)
    assert counters["stale"] == inserted and counters["messages"] == len(stream)


def test_deltas_before_any_snapshot_leave_the_book_desynced():
    rows = btc_2023()[1:3000]  # the snapshot lost
    times = sample_times([msg["ts"] for msg in rows])
    samples, changes, counters = book.replay(as_table(rows), times)
    assert all(samples["desynced"].to_pylist())
    assert all(changes["desynced"].to_pylist())
    assert counters["gaps"] == 0 and counters["snapshots"] == 0
    first = samples.to_pylist()[0]  # before any message
    assert first["update_id"] is None and first["book_ts"] is None and first["bid_px_1"] is None
    assert samples["update_id"].to_pylist()[-1] == rows[-1]["update_id"]
    live = book.OrderBook()
    assert live.desynced and live.update_id is None and live.best_bid is None
    assert book.sample(live, 123) == first | {"ts": 123}


def test_stream_messages_from_the_raw_store(capture_tables):
    """The ingested raw store gives the same stream as parsing the capture directly."""
    messages = book.stream_messages(
        capture_tables["orderbook_snapshots"], capture_tables["orderbook_deltas"], "BTCUSDT"
    )
    assert messages.column_names == [*BOOK.names, "is_snapshot"]
    assert rows_of(messages) == btc_2023()
    assert (
        book.stream_messages(
            capture_tables["orderbook_snapshots"], capture_tables["orderbook_deltas"], "ETHUSDT"
        ).num_rows
        == 0
    )


def test_stream_messages_picks_the_deepest_stream_and_orders_ties():
    snapshots, deltas = book_tables(read_lines(shared(CAPTURE_2024_ETH)))
    deepest = book.stream_messages(snapshots, deltas, "ETHUSDT")
    assert set(deepest["depth"].to_pylist()) == {500}
    top1 = book.stream_messages(snapshots, deltas, "ETHUSDT", depth=1)
    assert set(top1["depth"].to_pylist()) == {1} and all(top1["is_snapshot"].to_pylist())
    keys = list(
        zip(
            deepest["ts"].cast(pa.int64()).to_pylist(),
            deepest["update_id"].to_pylist(),
            strict=True,
        )
    )
    assert keys == sorted(keys)
    # a snapshot and a delta with the same ts and update id: the snapshot comes first
    row = rows_of(deepest)[5]
    tie = as_table([{**row, "is_snapshot": False}])
    snap = as_table([{**row, "is_snapshot": True}])
    both = book.stream_messages(snap.drop(["is_snapshot"]), tie.drop(["is_snapshot"]), "ETHUSDT")
    assert both["is_snapshot"].to_pylist() == [True, False]


def test_prices_grow_the_book_in_range_and_decimals():
    """Far levels beyond the page table and finer prices than seen so far (a re-scale) keep
    every level exact: checked against the reference on the full book."""
    live, ref = book.OrderBook(), RefBook()
    steps = [
        (True, [60000.0, 59999.0], [1.0, 2.0], [60001.0], [1.5]),  # integers: 0 decimals
        (False, [59999.5, 50000.5], [0.25, 3.0], [60000.5], [0.75]),  # finer, far below
        (False, [60000.0], [0.0], [70000.1, 60000.25], [4.0, 0.125]),  # far above, 2 decimals
        (False, [59999.5], [0.0], [60000.5, 59000.1234], [0.0, 7.0]),  # 4 decimals, crossed
        (False, [], [], [59000.1234], [0.0]),  # uncrossed again
    ]
    for u, (snap, bp, bs, ap, asz) in enumerate(steps, start=10):
        msg = {
            "is_snapshot": snap,
            "update_id": u,
            "ts": u,
            "bid_price": bp,
            "bid_size": bs,
            "ask_price": ap,
            "ask_size": asz,
        }
        feed(live, msg)
        ref.apply(msg)
        assert_full_book_equal(live, ref, f"u={u}")
        assert_live_equals(live, ref, f"u={u}")
    assert live.crossed == ref.crossed == 1
    assert live.best_changes == 5  # every message moved a best price


def test_bad_messages_raise_and_leave_the_book_unchanged():
    rows = btc_2023()[:50]
    live = book.OrderBook()
    for msg in rows:
        feed(live, msg)
    before = (live.top(50), live.update_id, live.counters)
    not_decimal = 0.1 + 0.2  # 0.30000000000000004: no decimal grid of <= 12 places
    too_far = 1e12  # beyond the page table's limit at one decimal
    for bid_price in ([28000.0, not_decimal], [28000.0, -1.0], [28000.0, too_far]):
        with pytest.raises(ValueError):
            live.apply(False, rows[-1]["update_id"] + 1, 1, bid_price, [1.0, 1.0], [], [])
        after = (live.top(50), live.update_id, live.counters)
        for got, want in zip(after[0], before[0], strict=True):
            np.testing.assert_array_equal(got, want)
        assert after[1:] == before[1:]
    with pytest.raises(ValueError, match="differ in length"):
        live.apply(False, 10**9, 1, [28000.0], [], [], [])
    table = as_table(rows)
    with pytest.raises(ValueError, match="processing order"):
        book.replay(table.take([1, 0, 2]), np.array([0]))
    with pytest.raises(ValueError, match="one stream"):
        book.replay(pa.concat_tables([table, as_table([{**rows[-1], "depth": 50}])]), np.array([0]))
    with pytest.raises(ValueError, match="sorted"):
        book.replay(table, np.array([5, 1]))


def test_sizes_from_numpy_and_lists_agree():
    """apply accepts sequences or numpy arrays; the results are identical."""
    rows = btc_2023()[:300]
    a, b = book.OrderBook(), book.OrderBook()
    for msg in rows:
        feed(a, msg)
        b.apply(
            msg["is_snapshot"],
            msg["update_id"],
            msg["ts"],
            np.array(msg["bid_price"]),
            np.array(msg["bid_size"]),
            tuple(msg["ask_price"]),
            tuple(msg["ask_size"]),
        )
    for x, y in zip(a.top(20), b.top(20), strict=True):
        np.testing.assert_array_equal(x, y)


def cut(table: pa.Table, at: list[int]) -> list[pa.Table]:
    """table cut before each of the rows `at` (ascending; a row given twice: an empty part)."""
    edges = [0, *at, len(table)]
    return [table.slice(a, b - a) for a, b in itertools.pairwise(edges)]


@pytest.mark.parametrize("capture", CAPTURES)
def test_replay_in_parts_equals_replay_in_one(capture):
    """The kernel replays a stream chunk by chunk (Arrow's record batches, read_stream's parts).
    Cut anywhere — between two messages of one ts, before the first, after the last, into empty
    parts — and given as parts or as one many-chunk table, a stream replays to the very samples,
    changes and counters of one piece."""
    for key, rows in capture_streams(capture).items():
        if len(rows) > 100:  # a ts shared by two messages, then cut between them
            rows = [*rows[:50], {**rows[50], "ts": rows[49]["ts"]}, *rows[51:]]
        ts = [msg["ts"] for msg in rows]
        ties = [n for n in range(1, len(ts)) if ts[n] == ts[n - 1]]
        assert ties, key
        n = len(rows)
        at = sorted([0, 0, 1, *ties[:3], n // 3, n // 3, 2 * n // 3, n - 1, n])
        table, times = as_table(rows), sample_times(ts)
        want = book.replay(table, times)
        assert want[2]["messages"] == n
        chunked = pa.concat_tables(cut(table, at))
        assert len(chunked.to_batches()) > 5
        for got in (book.replay_parts(cut(table, at), times), book.replay(chunked, times)):
            assert got[0].equals(want[0]), key
            assert got[1].equals(want[1]), key
            assert got[2] == want[2], key


def test_stream_messages_merges_snapshots_where_the_sort_puts_them():
    """Snapshots before, among (same ts and update id as a delta, or same ts and the next id)
    and after the deltas: where sorting by (ts, update_id, snapshots first) puts them, whether
    the deltas come in order (merged, lists not moved) or not (sorted)."""
    rows = btc_2023()
    first, k = rows[0], 3000
    snaps = [
        first,
        {**first, "ts": rows[k]["ts"], "update_id": rows[k]["update_id"]},
        {**first, "ts": rows[k]["ts"], "update_id": rows[k]["update_id"] + 1},
        {**first, "ts": rows[-1]["ts"] + 1},
    ]
    snapshots, deltas = as_table(snaps), as_table(rows[1:])
    expected = sorted(
        [*snaps, *rows[1:]], key=lambda r: (r["ts"], r["update_id"], not r["is_snapshot"])
    )
    shuffled = deltas.take(np.random.default_rng(0).permutation(len(deltas)))
    for stored in (deltas, shuffled):
        got = book.stream_messages(
            snapshots.drop(["is_snapshot"]), stored.drop(["is_snapshot"]), "BTCUSDT"
        )
        assert got.equals(as_table(expected))


@pytest.fixture(scope="module")
def eth_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw store of the real ETHUSDT capture (an orderbook.1 and an ob500 stream in one file),
    with the ob500 snapshot stored twice more: at the ts and update id of a delta, and at the
    ts of another delta after it."""
    root = tmp_path_factory.mktemp("eth-book")
    snapshots, deltas = book_tables(read_lines(shared(CAPTURE_2024_ETH)))
    deep = deltas.filter(pc.equal(deltas["depth"], 500)).to_pylist()
    (first,) = snapshots.filter(pc.equal(snapshots["depth"], 500)).to_pylist()
    again = [
        {**first, "ts": deep[3000]["ts"], "update_id": deep[3000]["update_id"]},
        {**first, "ts": deep[6000]["ts"], "update_id": deep[5999]["update_id"]},
    ]
    raw.write(
        root,
        "orderbook_snapshots",
        pa.concat_tables([snapshots, pa.Table.from_pylist(again, schema=BOOK)]),
    )
    raw.write(root, "orderbook_deltas", deltas)
    return root


def read_whole(root: Path, symbol: str, start: int, end: int) -> pa.Table:
    """The stream as raw.read and stream_messages give it."""
    snapshots, deltas = (
        raw.read(root, kind, [symbol], start, end, ordered=False, columns=book.REPLAY_COLUMNS)
        for kind in ("orderbook_snapshots", "orderbook_deltas")
    )
    return book.stream_messages(snapshots, deltas, symbol)


def test_read_stream_equals_raw_read_and_stream_messages(eth_store, monkeypatch):
    """read_stream decodes the deltas batch by batch (here 700 rows) on a worker thread: the
    rows of the deepest stream (snapshots merged in), over the whole day and over a window
    cutting it, are those of raw.read + stream_messages, and replay_parts of them equals replay
    of those."""
    monkeypatch.setattr(book, "_BATCH", 700)
    ts = raw.read(eth_store, "orderbook_deltas")["ts"].cast(pa.int64()).to_numpy()
    day = (int(ts.min()) - 60_000, int(ts.max()) + 1)  # the first snapshot comes before
    window = (int(np.quantile(ts, 0.3)), int(np.quantile(ts, 0.8)))
    for start, end in (day, window):
        parts = list(book.read_stream(eth_store, "ETHUSDT", start, end))
        whole = read_whole(eth_store, "ETHUSDT", start, end)
        assert len(parts) > 5 and set(whole["depth"].to_pylist()) == {500}
        assert sum(whole["is_snapshot"].to_pylist()) == (3 if start == day[0] else 2)
        for name in whole.column_names:
            if name != "symbol":  # the partition's (delta parts leave it out)
                streamed = pa.chunked_array([c for p in parts for c in p[name].chunks])
                assert streamed.equals(whole[name]), name
        times = sample_times(ts[(ts >= start) & (ts < end)].tolist())
        got, want = book.replay_parts(parts, times), book.replay(whole, times)
        assert got[0].equals(want[0]) and got[1].equals(want[1]) and got[2] == want[2]


def test_read_stream_reads_deltas_out_of_time_order_whole(tmp_path):
    """A delta file not in time order is read as raw.read reads it (filtered, not sliced), and
    the stream comes sorted, in one table."""
    snapshots, deltas = book_tables(read_lines(shared(CAPTURE_2024_ETH)))
    raw.write(tmp_path, "orderbook_snapshots", snapshots)
    raw.write(tmp_path, "orderbook_deltas", deltas.take(np.arange(len(deltas))[::-1]))
    ts = deltas["ts"].cast(pa.int64()).to_numpy()
    start, end = int(np.quantile(ts, 0.2)), int(ts.max()) + 1
    parts = list(book.read_stream(tmp_path, "ETHUSDT", start, end))
    assert len(parts) == 1 and parts[0].equals(read_whole(tmp_path, "ETHUSDT", start, end))
