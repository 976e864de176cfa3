"""featlib.book properties on random streams (hypothesis), against the brute-force RefBook:

(a) a random snapshot + random deltas (tick-grid prices at 0–4 decimals, deletions, far levels,
    crossing levels, stale/duplicate/gapped update ids, mid-stream snapshots and u == 1
    restarts) gives the reference book after every message, live and in replay;
(b) book(deltas) == book(snapshot): a snapshot of the reference state at a random message k,
    then the rest of the deltas, ends in the same book as applying every delta;
(c) replay samples == an OrderBook fed message by message + sample() at the same times.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from featlib import book
from tests.unit.test_book import (
    RefBook,
    as_table,
    assert_full_book_equal,
    assert_live_equals,
    expected_samples,
    feed,
    reference_changes,
    sample_times,
)

SIZES = st.one_of(st.just(0.0), st.integers(1, 10**6).map(lambda q: q / 1000))


@st.composite
def levels(draw, mid: int, decimals: int, max_size: int) -> tuple[list, list, list, list]:
    """Bid and ask levels around `mid` ticks: mostly near it, some far, some crossing."""
    distance = st.one_of(
        st.integers(-3, 40),  # near the top; negative crosses the spread
        st.integers(200, 200_000),  # far, sparse levels
    )
    out: list[list[float]] = [[], [], [], []]
    for side in (0, 1):
        for d, size in draw(st.lists(st.tuples(distance, SIZES), max_size=max_size)):
            tick = max(1, mid - 1 - d if side == 0 else mid + d)
            out[2 * side].append(tick / 10**decimals)  # the float a decimal string parses to
            out[2 * side + 1].append(size)
    return out[0], out[1], out[2], out[3]


@st.composite
def streams(draw, anomalies: bool = True, min_deltas: int = 0) -> list[dict[str, Any]]:
    """One stream's messages: a snapshot then deltas (with sequencing anomalies if asked)."""
    decimals = draw(st.integers(0, 4))
    mid = draw(st.integers(1_000, 2_000_000))
    coarse = draw(st.booleans())  # a snapshot on a 10× coarser grid: the live book re-scales
    snap_grid = 10 if coarse and decimals else 1
    bp, bs, ap, asz = draw(levels(mid // snap_grid, max(decimals - (snap_grid > 1), 0), 60))
    bs = [s or 1.0 for s in bs]  # a snapshot lists existing levels
    asz = [s or 1.0 for s in asz]
    u, ts = draw(st.integers(2, 10**9)), draw(st.integers(1_600_000_000_000, 1_800_000_000_000))
    messages = [_message(True, u, ts, bp, bs, ap, asz)]
    for _ in range(draw(st.integers(min_deltas, 60))):
        mid += draw(st.integers(-2, 2))
        ts += draw(st.integers(0, 3))
        kind = draw(
            st.sampled_from(["next"] * 12 + ["stale", "dup", "gap", "snap", "restart"])
            if anomalies
            else st.just("next")
        )
        step = {
            "next": 1,
            "stale": -draw(st.integers(1, 3)),
            "dup": 0,
            "gap": draw(st.integers(2, 4)),
            "snap": 1,
            "restart": 1,
        }[kind]
        u = 1 if kind == "restart" else max(1, u + step)
        bp, bs, ap, asz = draw(levels(mid, decimals, 8))
        messages.append(_message(kind == "snap", u, ts, bp, bs, ap, asz))
    return messages


def _message(snap: bool, u: int, ts: int, bp, bs, ap, asz) -> dict[str, Any]:
    return {
        "symbol": "TESTUSDT",
        "ts": ts,
        "update_id": u,
        "seq": None,
        "cts": None,
        "depth": 500,
        "bid_price": bp,
        "bid_size": bs,
        "ask_price": ap,
        "ask_size": asz,
        "received_at": ts,
        "is_snapshot": snap,
    }


@settings(max_examples=200, deadline=None, derandomize=True)
@given(stream=streams())
def test_random_streams_equal_brute_force(stream):
    live, ref, refs = book.OrderBook(), RefBook(), []
    for n, msg in enumerate(stream):
        feed(live, msg)
        ref.apply(msg)
        refs.append(ref.row(msg["ts"]))
        assert_live_equals(live, ref, f"message {n}")
    assert_full_book_equal(live, ref, "end")
    assert (live.gaps, live.stale, live.crossed) == (ref.gaps, ref.stale, ref.crossed)
    assert live.counters["snapshots"] == ref.snapshots
    times = sample_times([msg["ts"] for msg in stream])
    samples, changes, counters = book.replay(as_table(stream), times)
    assert samples.to_pylist() == expected_samples(stream, refs, times)
    assert changes.to_pylist() == reference_changes(stream)
    assert counters == live.counters


@settings(max_examples=100, deadline=None, derandomize=True)
@given(stream=streams(anomalies=False, min_deltas=1), data=st.data())
def test_book_from_deltas_equals_book_from_snapshot(stream, data):
    k = data.draw(st.integers(0, len(stream) - 1), label="k")
    ref = RefBook()
    for msg in stream[: k + 1]:
        ref.apply(msg)
    bids, asks = sorted(ref.bids.items(), reverse=True), sorted(ref.asks.items())
    snapshot = _message(
        True,
        stream[k]["update_id"],
        stream[k]["ts"],
        [p for p, _ in bids],
        [s for _, s in bids],
        [p for p, _ in asks],
        [s for _, s in asks],
    )
    from_deltas, from_snapshot = book.OrderBook(), book.OrderBook()
    for msg in stream:
        feed(from_deltas, msg)
    for msg in [snapshot, *stream[k + 1 :]]:
        feed(from_snapshot, msg)
    n = len(ref.bids) + len(ref.asks) + 8 * len(stream) + 1
    for a, b in zip(from_deltas.top(n), from_snapshot.top(n), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not from_deltas.desynced and not from_snapshot.desynced
    assert from_deltas.update_id == from_snapshot.update_id == stream[-1]["update_id"]
    end = np.array([stream[-1]["ts"]])
    a, _, _ = book.replay(as_table(stream), end, levels=n)
    b, _, _ = book.replay(as_table([snapshot, *stream[k + 1 :]]), end, levels=n)
    assert a.equals(b)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(stream=streams(), data=st.data())
def test_replay_equals_live_book_and_sample(stream, data):
    first, last = stream[0]["ts"], stream[-1]["ts"]
    times = sorted(data.draw(st.lists(st.integers(first - 3, last + 3), max_size=40), label="t"))
    depth = data.draw(st.integers(1, 12), label="levels")
    samples, changes, counters = book.replay(as_table(stream), np.array(times, np.int64), depth)
    live, rows, n = book.OrderBook(), [], 0
    for t in times:
        while n < len(stream) and stream[n]["ts"] <= t:
            feed(live, stream[n])
            n += 1
        rows.append(book.sample(live, t, depth))
    for msg in stream[n:]:
        feed(live, msg)
    assert samples.to_pylist() == rows
    assert counters == live.counters and len(changes) == live.best_changes
