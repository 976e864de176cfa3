"""Deterministic synthetic market data for offline demos and benchmarks. NOT market data.

Calibrated on the real BTCUSDT January 2022 1-minute candles in ../shared/data (measured:
per-minute log-return std 0.00099 with fat tails, kurtosis ≈ 26; returns about 1.6× larger
in 14–20h UTC than at night; open == previous close in 90 % of candles; high/low extend
≈ 0.27 σ beyond the body; volume log-normal, median ≈ 31 BTC, log-std 1.17, correlation
with |return| 0.62; price tick 0.1) and on Bybit's 8-hourly funding (≈ 0.0001 per period).
The same arguments always give the same rows.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from featlib import raw
from featlib.schema import RAW_SCHEMAS
from featlib.timeutil import HOUR_MS, MINUTE_MS

MARKER = "SYNTHETIC.txt"
TICK = 0.1
# mean |1m return| by UTC hour, relative, measured on the real January 2022 candles
_HOURLY = np.array(
    [
        6.54,
        5.27,
        4.72,
        5.16,
        5.06,
        4.68,
        4.7,
        4.81,
        5.63,
        5.33,
        5.72,
        5.83,
        6.18,
        6.75,
        8.33,
        8.37,
        7.72,
        7.06,
        7.26,
        7.76,
        8.29,
        7.12,
        7.04,
        6.23,
    ]
)
_HOURLY = _HOURLY / _HOURLY.mean()
_START_PRICE = {"BTCUSDT": 42_000.0, "ETHUSDT": 3_200.0}


def _rng(symbol: str, seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(symbol.encode()), zlib.crc32(stream.encode())])


def _ticks(x: np.ndarray) -> np.ndarray:
    return np.round(x / TICK) * TICK


def klines(symbol: str, start_ms: int, end_ms: int, seed: int = 7) -> pa.Table:
    """Confirmed 1-minute candles closing at start+1m, ..., <= end (raw `klines` schema)."""
    first = -(-start_ms // MINUTE_MS) * MINUTE_MS
    opens = np.arange(first, end_ms - MINUTE_MS + 1, MINUTE_MS, dtype=np.int64)
    n = len(opens)
    rng = _rng(symbol, seed, "klines")
    log_vol = np.zeros(n)
    shocks = rng.normal(0.0, 0.06, n)
    for i in range(1, n):  # volatility clustering: AR(1) in log volatility
        log_vol[i] = 0.985 * log_vol[i - 1] + shocks[i]
    sigma = 0.00085 * _HOURLY[(opens // HOUR_MS) % 24] * np.exp(log_vol)
    z = rng.standard_t(5, n) / np.sqrt(5.0 / 3.0)
    price0 = _START_PRICE.get(symbol, 100.0)
    close = _ticks(price0 * np.exp(np.cumsum(sigma * z)))
    open_ = np.concatenate([[price0], close[:-1]])
    nudge = rng.random(n) < 0.1
    open_ = np.where(nudge, open_ + TICK * rng.choice([-1.0, 1.0], n), open_)
    body_hi, body_lo = np.maximum(open_, close), np.minimum(open_, close)
    high = _ticks(body_hi * np.exp(0.34 * sigma * np.abs(rng.normal(size=n)) * 1.25))
    low = _ticks(body_lo * np.exp(-0.34 * sigma * np.abs(rng.normal(size=n)) * 1.25))
    high, low = np.maximum(high, body_hi), np.minimum(low, body_lo)
    move = np.abs(sigma * z) / 0.00085  # big moves come with big volume
    volume = np.round(
        np.exp(np.log(40.0) + 0.8 * np.log(move + 0.15) + 0.8 * rng.normal(size=n)), 3
    )
    volume = np.maximum(volume, 0.001)
    closes_at = opens + MINUTE_MS
    stamp = pa.array(closes_at, pa.timestamp("ms", tz="UTC"))
    return pa.table(
        {
            "symbol": pa.array([symbol] * n, pa.string()),
            "ts": stamp,
            "start": pa.array(opens, pa.timestamp("ms", tz="UTC")),
            "interval": pa.array(["1"] * n, pa.string()),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
            "turnover": np.round(volume * (open_ + close) / 2, 4),
            "confirm": pa.array(np.ones(n, dtype=bool)),
            "update_ts": stamp,
            "received_at": pa.array(closes_at + 5, pa.timestamp("ms", tz="UTC")),
        },
        schema=RAW_SCHEMAS["klines"],
    )


def funding(symbol: str, start_ms: int, end_ms: int, seed: int = 7) -> pa.Table:
    """Settled funding every 8 h (00, 08, 16 UTC) in [start, end] (raw `funding` schema)."""
    period = 8 * HOUR_MS
    times = np.arange(-(-start_ms // period) * period, end_ms + 1, period, dtype=np.int64)
    rng = _rng(symbol, seed, "funding")
    rate = np.zeros(len(times))
    level = 0.0001
    for i in range(len(times)):
        level = 0.0001 + 0.8 * (level - 0.0001) + rng.normal(0, 0.00005)
        rate[i] = round(float(np.clip(level, -0.00375, 0.00375)), 8)
    return pa.table(
        {
            "symbol": pa.array([symbol] * len(times), pa.string()),
            "ts": pa.array(times, pa.timestamp("ms", tz="UTC")),
            "funding_rate": rate,
            "next_funding_time": pa.array(times + period, pa.timestamp("ms", tz="UTC")),
            "source": pa.array(["synthetic"] * len(times), pa.string()),
            "received_at": pa.array(times + 5, pa.timestamp("ms", tz="UTC")),
        },
        schema=RAW_SCHEMAS["funding"],
    )


def _ts(values: np.ndarray) -> pa.Array:
    return pa.array(values.astype(np.int64), pa.timestamp("ms", tz="UTC"))


def _lists(offsets: np.ndarray, values: np.ndarray) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))


def market_day(
    symbol: str,
    day_start_ms: int,
    *,
    book_messages: int = 2_000_000,
    trades: int = 1_500_000,
    seed: int = 7,
) -> dict[str, pa.Table]:
    """One UTC day of a busy perpetual as raw tables: a 200-level book snapshot at midnight
    then `book_messages` deltas of 1–10 levels (update ids contiguous, never crossed: when the
    mid moves the levels it crosses are deleted in the same message), `trades` at the touch,
    1-minute candles built from those trades, and a ticker with funding every second."""
    rng = _rng(symbol, seed, f"day-{day_start_ms}")
    tick = TICK
    day_ms = 86_400_000
    # the best bid in ticks follows a random walk with one step per book message, often 0
    steps = rng.choice(np.array([-1, 0, 0, 0, 0, 0, 0, 1], dtype=np.int64), book_messages)
    base = round(_START_PRICE.get(symbol, 100.0) / tick)
    best_bid = base + np.cumsum(steps)
    book_ts = day_start_ms + np.sort(rng.integers(1, day_ms - 1, book_messages))
    # per message: the move (delete crossed level + set new best) and 1–10 random updates
    n_updates = rng.integers(1, 11, book_messages)
    moved = steps != 0
    per_msg = n_updates + 2 * moved
    offsets = np.concatenate([[0], np.cumsum(per_msg)])
    total = int(offsets[-1])
    side = np.empty(total, dtype=np.int8)  # 1 bid, 0 ask
    level = np.empty(total, dtype=np.int64)
    size = np.empty(total, dtype=np.float64)
    starts = offsets[:-1]
    # moves first: up -> delete the old best ask (now crossed) and set the new best bid;
    # down -> delete the old best bid and set the new best ask
    idx = starts[moved]
    up = steps[moved] > 0
    side[idx] = np.where(up, 0, 1)
    level[idx] = np.where(up, best_bid[moved], best_bid[moved] + 1)
    size[idx] = 0.0
    side[idx + 1] = np.where(up, 1, 0)
    level[idx + 1] = np.where(up, best_bid[moved], best_bid[moved] + 1)
    size[idx + 1] = np.round(rng.lognormal(0.0, 1.0, idx.size), 3) + 0.001
    # random updates within 20 ticks of the touch; never delete the best level itself
    rest = np.ones(total, dtype=bool)
    rest[idx] = rest[idx + 1] = False
    owner = np.repeat(np.arange(book_messages), per_msg)[rest]
    r_side = rng.integers(0, 2, rest.sum()).astype(np.int8)
    depth = np.minimum(rng.geometric(0.25, rest.sum()) - 1, 19)
    r_level = np.where(r_side == 1, best_bid[owner] - depth, best_bid[owner] + 1 + depth)
    r_size = np.round(rng.lognormal(-0.5, 1.2, rest.sum()), 3)
    r_size = np.where((depth > 0) & (rng.random(rest.sum()) < 0.2), 0.0, r_size + 0.001)
    side[rest], level[rest], size[rest] = r_side, r_level, r_size
    price = np.round(level * tick, 1)
    bid_mask, ask_mask = side == 1, side == 0
    msg_of = np.repeat(np.arange(book_messages), per_msg)
    bid_off = np.concatenate(
        [[0], np.cumsum(np.bincount(msg_of[bid_mask], minlength=book_messages))]
    )
    ask_off = np.concatenate(
        [[0], np.cumsum(np.bincount(msg_of[ask_mask], minlength=book_messages))]
    )
    u0 = 1_000_000
    stamps = _ts(book_ts)
    deltas = pa.table(
        {
            "symbol": pa.array([symbol] * book_messages, pa.string()),
            "ts": stamps,
            "update_id": pa.array(np.arange(u0 + 1, u0 + 1 + book_messages), pa.int64()),
            "seq": pa.array(np.arange(book_messages, dtype=np.int64) * 3 + 7, pa.int64()),
            "cts": stamps,
            "depth": pa.array(np.full(book_messages, 200, np.int32)),
            "bid_price": _lists(bid_off, price[bid_mask]),
            "bid_size": _lists(bid_off, size[bid_mask]),
            "ask_price": _lists(ask_off, price[ask_mask]),
            "ask_size": _lists(ask_off, size[ask_mask]),
            "received_at": _ts(book_ts + 3),
        },
        schema=RAW_SCHEMAS["orderbook_deltas"],
    )
    snap_levels = np.arange(200)
    snapshot = pa.table(
        {
            "symbol": [symbol],
            "ts": _ts(np.array([day_start_ms])),
            "update_id": pa.array([u0], pa.int64()),
            "seq": pa.array([1], pa.int64()),
            "cts": _ts(np.array([day_start_ms])),
            "depth": pa.array([200], pa.int32()),
            "bid_price": pa.array([list(np.round((base - snap_levels) * tick, 1))]),
            "bid_size": pa.array([list(np.round(rng.lognormal(0, 1, 200), 3) + 0.001)]),
            "ask_price": pa.array([list(np.round((base + 1 + snap_levels) * tick, 1))]),
            "ask_size": pa.array([list(np.round(rng.lognormal(0, 1, 200), 3) + 0.001)]),
            "received_at": _ts(np.array([day_start_ms + 3])),
        },
        schema=RAW_SCHEMAS["orderbook_snapshots"],
    )

    # trades at the touch as it stood at each trade's time
    trade_ts = day_start_ms + np.sort(rng.integers(1, day_ms - 1, trades))
    at = np.clip(np.searchsorted(book_ts, trade_ts, side="right") - 1, 0, None)
    buy = rng.random(trades) < 0.5
    trade_px = np.round(np.where(buy, best_bid[at] + 1, best_bid[at]) * tick, 1)
    trade_sz = np.round(rng.lognormal(-3.0, 1.5, trades), 3) + 0.001
    trade_table = pa.table(
        {
            "symbol": pa.array([symbol] * trades, pa.string()),
            "ts": _ts(trade_ts),
            "trade_id": pa.array((np.arange(trades) + 10**9).astype(str), pa.string()),
            "side": pa.array(np.where(buy, "Buy", "Sell"), pa.string()),
            "price": trade_px,
            "size": trade_sz,
            "tick_direction": pa.nulls(trades, pa.string()),
            "block_trade": pa.array(np.zeros(trades, dtype=bool)),
            "seq": pa.array(np.arange(trades, dtype=np.int64), pa.int64()),
            "received_at": _ts(trade_ts + 4),
        },
        schema=RAW_SCHEMAS["trades"],
    )

    # candles from the trades (a minute without trades repeats the last close, zero volume)
    minute = (trade_ts - day_start_ms) // MINUTE_MS
    frame = pa.table({"m": minute, "p": trade_px, "v": trade_sz, "n": trade_px * trade_sz})
    agg = frame.group_by("m", use_threads=False).aggregate(
        [("p", "first"), ("p", "max"), ("p", "min"), ("p", "last"), ("v", "sum"), ("n", "sum")]
    )
    agg = agg.sort_by("m")
    m = agg["m"].to_numpy()
    starts_ms = day_start_ms + m * MINUTE_MS
    candle = pa.table(
        {
            "symbol": pa.array([symbol] * len(m), pa.string()),
            "ts": _ts(starts_ms + MINUTE_MS),
            "start": _ts(starts_ms),
            "interval": pa.array(["1"] * len(m), pa.string()),
            "open": agg["p_first"],
            "high": agg["p_max"],
            "low": agg["p_min"],
            "close": agg["p_last"],
            "volume": agg["v_sum"],
            "turnover": agg["n_sum"],
            "confirm": pa.array(np.ones(len(m), dtype=bool)),
            "update_ts": _ts(starts_ms + MINUTE_MS),
            "received_at": _ts(starts_ms + MINUTE_MS + 5),
        },
        schema=RAW_SCHEMAS["klines"],
    )

    # a ticker every second: mark price at the mid, funding rate and next settlement
    seconds = day_start_ms + np.arange(1, 86_400) * 1000
    at = np.clip(np.searchsorted(book_ts, seconds, side="right") - 1, 0, None)
    mid = (best_bid[at] + 0.5) * tick
    period = 8 * HOUR_MS
    nulls = pa.nulls(len(seconds), pa.float64())
    ticker = pa.table(
        {
            "symbol": pa.array([symbol] * len(seconds), pa.string()),
            "ts": _ts(seconds),
            "type": pa.array(["delta"] * len(seconds), pa.string()),
            "cross_seq": pa.array(seconds, pa.int64()),
            "last_price": nulls,
            "mark_price": np.round(mid, 2),
            "index_price": np.round(mid, 2),
            "funding_rate": np.round(0.0001 + 0.00002 * np.sin(seconds / 3.6e6), 8),
            **{
                c: nulls
                for c in (
                    "bid1_price",
                    "bid1_size",
                    "ask1_price",
                    "ask1_size",
                    "open_interest",
                    "open_interest_value",
                    "turnover_24h",
                    "volume_24h",
                    "high_price_24h",
                    "low_price_24h",
                    "prev_price_24h",
                    "price_24h_pcnt",
                )
            },
            "next_funding_time": _ts((seconds // period + 1) * period),
            "received_at": _ts(seconds + 6),
        },
        schema=RAW_SCHEMAS["ticker"],
    )
    return {
        "orderbook_snapshots": snapshot,
        "orderbook_deltas": deltas,
        "trades": trade_table,
        "klines": candle,
        "ticker": ticker,
    }


def write_history(
    root: Path, symbols: list[str], start_ms: int, end_ms: int, seed: int = 7
) -> dict[str, int]:
    """Write synthetic candles and funding into a raw store and mark it as synthetic."""
    root = Path(root)
    written = {"klines": 0, "funding": 0}
    for symbol in symbols:
        written["klines"] += raw.write(
            root, "klines", klines(symbol, start_ms, end_ms, seed)
        ).rows_written
        written["funding"] += raw.write(
            root, "funding", funding(symbol, start_ms, end_ms, seed)
        ).rows_written
    (root / MARKER).write_text(
        "This raw store holds SYNTHETIC data made by featlib.synthetic (not market data).\n"
    )
    return written


def is_synthetic(root: Path) -> bool:
    return (Path(root) / MARKER).is_file()
