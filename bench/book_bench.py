"""P3 order-book replay benchmark (`python -m bench.book_bench`): featlib.book.replay throughput
in messages/s on a synthetic BTC-like stream (~2 M messages) and on the real 2023-04-05 capture,
beside a pure-Python dict book measured in the same run (on a subsample, extrapolated).
"""

from __future__ import annotations

import heapq
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

GOAL_MSGS_PER_S = 5_000_000
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
CAPTURE_2023 = SHARED / "bybit" / "BTCUSDT_2023-04-05_book-trades-ticker-kline.jsonl.gz"


def synthetic_stream(n: int = 2_000_000, seed: int = 7) -> pa.Table:
    """BTC-like stream: a 300 × 300-level snapshot at ~60000 (tick 0.1), then n − 1 deltas of
    1–10 levels: 97% within a few ticks of the top, 3% far (20–600 ticks), 20% deletions, so the
    book holds a few hundred levels a side; the mid moves ±1 tick in 2% of messages, deleting
    the level it would cross."""
    rng = np.random.default_rng(seed)
    deltas = n - 1
    move = rng.choice([-1, 0, 1], size=deltas, p=[0.01, 0.98, 0.01])
    mid = 600_000 + np.cumsum(move)  # bids at ticks <= mid - 1, asks at ticks >= mid
    per_msg = rng.integers(1, 11, size=deltas)
    msg = np.repeat(np.arange(deltas), per_msg)
    first = np.r_[0, np.cumsum(per_msg)[:-1]]
    side = rng.integers(0, 2, size=len(msg))  # 0 bid, 1 ask
    distance = rng.geometric(0.15, size=len(msg)) - 1
    far = rng.random(len(msg)) < 0.03
    distance[far] = rng.integers(20, 600, size=int(far.sum()))
    tick = np.where(side == 0, mid[msg] - 1 - distance, mid[msg] + distance)
    size = np.round(rng.exponential(0.5, size=len(msg)), 3) + 0.001
    size[rng.random(len(msg)) < 0.2] = 0.0
    up, down = first[move > 0], first[move < 0]  # delete the level the move would cross
    side[up], tick[up], size[up] = 1, mid[move > 0] - 1, 0.0
    side[down], tick[down], size[down] = 0, mid[move < 0], 0.0

    snap_ticks = [
        600_000 - 1 - np.cumsum(rng.integers(1, 3, 300)) + 1,
        600_000 + np.cumsum(rng.integers(1, 3, 300)) - 1,
    ]
    snap_sizes = [np.round(rng.exponential(1.0, 300), 3) + 0.001 for _ in range(2)]
    columns: dict[str, pa.Array] = {}
    for s, name in ((0, "bid"), (1, "ask")):
        mine = side == s
        counts = np.bincount(msg[mine], minlength=deltas)
        offsets = np.r_[0, len(snap_ticks[s]), len(snap_ticks[s]) + np.cumsum(counts)]
        prices = np.r_[snap_ticks[s], tick[mine]] / 10.0  # exact: int / 10 = the parsed decimal
        sizes = np.r_[snap_sizes[s], size[mine]]
        offsets = pa.array(offsets, pa.int32())
        columns[f"{name}_price"] = pa.ListArray.from_arrays(offsets, pa.array(prices))
        columns[f"{name}_size"] = pa.ListArray.from_arrays(offsets, pa.array(sizes))
    ts = 1_720_000_000_000 + np.cumsum(np.r_[0, rng.integers(0, 60, size=deltas)])
    return pa.table(
        {
            "symbol": pa.array(["BTCUSDT"] * n),
            "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
            "update_id": pa.array(np.arange(1_000, 1_000 + n), pa.int64()),
            "depth": pa.array(np.full(n, 500, np.int32)),
            **columns,
            "is_snapshot": pa.array(np.r_[True, np.zeros(deltas, bool)]),
        }
    )


def dict_replay(rows: list[dict], sample_ts: np.ndarray, levels: int = 10) -> int:
    """The pure-Python baseline: dict per side, best tracked, top levels sampled on the grid."""
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    best_bid = best_ask = None
    changes = 0
    j, samples = 0, []
    for row in rows:
        ts = row["ts"]
        while j < len(sample_ts) and sample_ts[j] < ts:
            samples.append(
                (heapq.nlargest(levels, bids.items()), heapq.nsmallest(levels, asks.items()))
            )
            j += 1
        if row["is_snapshot"]:
            bids.clear()
            asks.clear()
        for book, prices, sizes in (
            (bids, row["bid_price"], row["bid_size"]),
            (asks, row["ask_price"], row["ask_size"]),
        ):
            for price, size in zip(prices, sizes, strict=True):
                if size > 0:
                    book[price] = size
                else:
                    book.pop(price, None)
        before = best_bid, best_ask
        if best_bid is None or best_bid not in bids or any(p > best_bid for p in row["bid_price"]):
            best_bid = max(bids) if bids else None
        if best_ask is None or best_ask not in asks or any(p < best_ask for p in row["ask_price"]):
            best_ask = min(asks) if asks else None
        changes += (best_bid, best_ask) != before
    return changes


def _best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _grid(ts: np.ndarray, step_ms: int = 1000) -> np.ndarray:
    return np.arange(ts[0] // step_ms * step_ms, ts[-1] + step_ms, step_ms, dtype=np.int64)


def _capture_stream() -> pa.Table | None:
    from featlib import book
    from featlib.bybit import parse_message
    from featlib.capture import read_lines
    from featlib.schema import BOOK

    if not CAPTURE_2023.exists():
        return None
    rows: dict[str, list] = {"orderbook_snapshots": [], "orderbook_deltas": []}
    for line in read_lines(CAPTURE_2023):
        parsed = parse_message(line)
        if parsed is not None and parsed.kind in rows:
            rows[parsed.kind] += parsed.rows
    tables = [pa.Table.from_pylist(rows[kind], schema=BOOK) for kind in rows]
    return book.stream_messages(tables[0], tables[1], "BTCUSDT")


def cold_compile_s() -> float:
    """Import + first replay in a fresh interpreter with an empty numba cache: the compile time."""
    code = (
        "import time; t0 = time.perf_counter(); from bench.book_bench import synthetic_stream, "
        "_grid; from featlib import book; s = synthetic_stream(2000, seed=1); "
        "book.replay(s, _grid(s['ts'].cast('int64').to_numpy())); "
        "print(time.perf_counter() - t0)"
    )
    with tempfile.TemporaryDirectory() as cache_dir:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
        done = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
    return float(done.stdout.strip().splitlines()[-1])


def p3(
    n: int = 2_000_000, dict_messages: int = 100_000, repeat: int = 3, cold: bool = True
) -> dict:
    """Replay throughput (flatten + kernel + output tables) vs a pure-Python dict book."""
    compile_s = cold_compile_s() if cold else None
    t0 = time.perf_counter()
    from featlib import book

    tiny = synthetic_stream(2_000, seed=1)
    book.replay(tiny, _grid(tiny["ts"].cast(pa.int64()).to_numpy()))
    first_call_s = time.perf_counter() - t0  # numba compile, or load from its on-disk cache

    t0 = time.perf_counter()
    stream = synthetic_stream(n)
    generate_s = time.perf_counter() - t0
    ts = stream["ts"].cast(pa.int64()).to_numpy()
    grid = _grid(ts)
    levels = sum(len(stream[c].combine_chunks().flatten()) for c in ("bid_price", "ask_price"))
    flatten_s = _best_of(lambda: book._flatten(stream), repeat)
    replay_s = _best_of(lambda: book.replay(stream, grid), repeat)
    _, changes, counters = book.replay(stream, grid)

    subsample = stream.slice(0, dict_messages).to_pylist()
    for row in subsample:
        row["ts"] = int(row["ts"].timestamp() * 1000 + 0.5)
    sub_grid = grid[grid <= subsample[-1]["ts"]]
    dict_s = _best_of(lambda: dict_replay(subsample, sub_grid), 1)
    numba_rate = n / replay_s
    dict_rate = dict_messages / dict_s
    result = {
        "synthetic": {
            "messages": n,
            "levels": levels,
            "samples_1s": len(grid),
            "best_changes": len(changes),
            "counters": counters,
            "generate_s": round(generate_s, 3),
            "flatten_s": round(flatten_s, 4),
            "replay_s": round(replay_s, 4),
            "replay_msgs_per_s": round(numba_rate),
            "dict_book_subsample_messages": dict_messages,
            "dict_book_s_on_subsample": round(dict_s, 3),
            "dict_book_msgs_per_s": round(dict_rate),
            "dict_book_extrapolated_s": round(n / dict_rate, 1),
            "speedup_vs_dict": round(numba_rate / dict_rate, 1),
        },
        "first_call_s": round(first_call_s, 2),  # import + load from numba's on-disk cache
        "cold_compile_s": None if compile_s is None else round(compile_s, 1),
        "goal_msgs_per_s": GOAL_MSGS_PER_S,
        "goal_met": numba_rate >= GOAL_MSGS_PER_S,
    }
    capture = _capture_stream()
    if capture is not None:
        cts = capture["ts"].cast(pa.int64()).to_numpy()
        cgrid = _grid(cts)
        capture_s = _best_of(lambda: book.replay(capture, cgrid), max(repeat, 10))
        clevels = sum(
            len(capture[c].combine_chunks().flatten()) for c in ("bid_price", "ask_price")
        )
        result["capture_2023"] = {
            "messages": len(capture),
            "levels": clevels,
            "samples_1s": len(cgrid),
            "replay_s": round(capture_s, 5),
            "replay_msgs_per_s": round(len(capture) / capture_s),
            "replay_levels_per_s": round(clevels / capture_s),
        }
    return result


def main() -> None:
    print(json.dumps(p3(), indent=2))


if __name__ == "__main__":
    main()
