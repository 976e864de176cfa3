"""Benchmarks (`just bench`): figures, not asserts. Writes bench/results.json and results.md.

P1  60 days of synthetic 1-minute candles, registry 1.2.0, cold dataset build end to end,
    against a naive per-timestamp pandas-ta recompute measured in the same run (on a
    subsample of timestamps, extrapolated).
P2  one synthetic busy day (2 M book deltas, 1.5 M trades, candles, tickers) -> registry
    1.1.0 (every source) at a 1-second grid; 60 days projected.
P3  order-book replay throughput (featlib.book, numba) vs a pure-Python dict book.
P4  live over the real RabbitMQ, 10 synthetic symbols, at full speed and at the exchange's pace:
    msgs/s, backlog, latency per vector; the engine's compute per tick offline.
P5  the 60-day build cold vs repeated with the content-addressed feature cache.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pandas_ta as ta

from featlib import compute, dataset, raw, registry, synthetic
from featlib.targets import TargetSpec, _sql
from featlib.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, iso, parse_time

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = Path(os.environ.get("FEATLIB_SHARED_DATA", ROOT.parent / "shared" / "data"))


def naive_features(candles: pd.DataFrame, t: int) -> dict[str, float]:
    """What a per-timestamp service does: slice the lookback, recompute everything."""
    window = candles[(candles.ts > t - 8 * HOUR_MS) & (candles.ts <= t)]
    close, volume = window.close.reset_index(drop=True), window.volume.reset_index(drop=True)
    ema = ta.ema(close.iloc[-360:].reset_index(drop=True), length=21, talib=False)
    rsi = ta.rsi(close, length=14, talib=False)
    returns = close.pct_change()
    return {
        "returns_5m": close.iloc[-1] / close.iloc[-6] - 1,
        "volatility_5m": returns.iloc[-5:].std(),
        "rsi_14": rsi.iloc[-1],
        "ema_21": ema.iloc[-1],
        "price_ema21_ratio": close.iloc[-1] / ema.iloc[-1],
        "volume_ratio_20": volume.iloc[-1] / volume.iloc[-20:].mean(),
    }


def p1(days: int = 60, naive_samples: int = 300) -> dict:
    start = parse_time("2024-01-01")
    history_end = start + days * DAY_MS
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "raw"
        t0 = time.perf_counter()
        synthetic.write_history(store, ["BTCUSDT"], start - DAY_MS, history_end + HOUR_MS)
        generate_s = time.perf_counter() - t0

        compute._plan.cache_clear()  # cold: compile the Ibis plan again
        _sql.cache_clear()
        request = dataset.DatasetRequest(
            symbols=["BTCUSDT"],
            start=start,
            end=history_end,
            registry_version="1.2.0",
            target=TargetSpec(),
        )
        t0 = time.perf_counter()
        meta = dataset.build(request, store, Path(tmp) / "ds")
        build_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipelines.build_dataset",
                "--data-dir",
                str(store),
                "--out",
                str(Path(tmp) / "cli"),
                "--start",
                "2024-01-01",
                "--end",
                pd.Timestamp(history_end - DAY_MS, unit="ms").strftime("%Y-%m-%d"),
                "--quiet",
                "--registry-version",
                "1.2.0",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        process_s = time.perf_counter() - t0
        if cli.returncode:
            raise RuntimeError(cli.stderr)

        klines = raw.read(store, "klines")
        candles = pd.DataFrame(
            {
                "ts": klines["ts"].cast("int64").to_numpy(),
                "close": klines["close"].to_numpy(),
                "volume": klines["volume"].to_numpy(),
            }
        )
        grid_times = np.arange(start, history_end, MINUTE_MS)
        sample = np.random.default_rng(0).choice(grid_times, naive_samples, replace=False)
        t0 = time.perf_counter()
        for t in sample:
            naive_features(candles, int(t))
        naive_per_ts = (time.perf_counter() - t0) / naive_samples
    rows = meta["rows"]["grid"]
    naive_total = naive_per_ts * rows
    return {
        "name": "P1 60-day build, registry 1.2.0, 1-minute grid, cold",
        "days": days,
        "grid_rows": rows,
        "rows_written": meta["rows"]["written"],
        "build_s": round(build_s, 3),
        "build_stages_s": meta["timings_s"],
        "rows_per_s": round(rows / build_s),
        "cli_process_s": round(process_s, 3),
        "synthetic_generation_s": round(generate_s, 3),
        "naive_per_timestamp_ms": round(naive_per_ts * 1000, 3),
        "naive_samples": naive_samples,
        "naive_extrapolated_s": round(naive_total, 1),
        "speedup_vs_naive": round(naive_total / build_s, 1),
        "goal": "build_s <= 3 (old system: ~2 h)",
        "peak_rss_mb": meta["peak_rss_mb"],
        "note": "naive = per-timestamp pandas-ta recompute over the 8 h lookback, measured on "
        f"{naive_samples} random timestamps and extrapolated to all grid rows",
    }


def p2(book_messages: int = 2_000_000, trades: int = 1_500_000) -> dict:
    """One synthetic busy day (book deltas, trades, candles, tickers) -> registry 1.1.0 (every
    source) at a 1-second grid."""
    day = parse_time("2024-03-01")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        tables = synthetic.market_day("BTCUSDT", day, book_messages=book_messages, trades=trades)
        for kind, table in tables.items():
            raw.write(root, kind, table)
        raw.write(root, "klines", synthetic.klines("BTCUSDT", day - 2 * DAY_MS, day))
        raw.write(root, "funding", synthetic.funding("BTCUSDT", day - 2 * DAY_MS, day + DAY_MS))
        prepare_s = time.perf_counter() - t0
        del tables  # the builds read the store, as a fresh process would
        gc.collect()
        request = dataset.DatasetRequest(
            symbols=["BTCUSDT"],
            start=day + HOUR_MS,  # the first hour: warm-up for the 1 h features
            end=day + DAY_MS - HOUR_MS,  # the last hour: targets and the split embargo
            registry_version="1.1.0",
            resolution="1s",
        )
        compute._plan.cache_clear()  # cold: the plan compiled in this build
        t0 = time.perf_counter()
        cold = dataset.build(request, root, root / "cold")
        cold_s = time.perf_counter() - t0
        builds = []
        for n in range(5):  # warm: the plan compiled (once per registry version and process)
            t0 = time.perf_counter()
            meta = dataset.build(request, root, root / f"out{n}")
            builds.append((time.perf_counter() - t0, meta))
        build_s, meta = sorted(builds, key=lambda b: b[0])[2]  # the median
    return {
        "name": "P2 one synthetic day -> registry 1.1.0 at a 1-second grid",
        "book_messages": book_messages,
        "trades": trades,
        "grid_rows": meta["rows"]["grid"],
        "features": len(meta["features"]),
        "build_s": round(build_s, 3),
        "build_s_of_5": [round(b[0], 3) for b in builds],
        "best_build_s": round(min(b[0] for b in builds), 3),
        "build_stages_s": meta["timings_s"],
        "cold_build_s": round(cold_s, 3),
        "cold_stages_s": cold["timings_s"],
        "projected_60_days_s": round(build_s * 60, 1),
        "data_preparation_s": round(prepare_s, 3),
        "goal": "build_s <= 2 (floor measured by the issue's author: 0.7 s)",
        "met": build_s <= 2,
        "peak_rss_mb": meta["peak_rss_mb"],
        "note": "build_s: the median of 5 builds in one process after a cold one (which "
        "compiles the "
        "feature plan to SQL once per registry version: cold_stages_s 'plan'; the CLI keeps "
        "compiled plans in its cache directory, so later processes skip it too)",
    }


def p3() -> dict:
    """Order-book replay throughput (featlib.book) vs a pure-Python dict book, same run."""
    from bench.book_bench import p3 as run

    return {"name": "P3 order-book replay, numba book vs pure-Python dict book", **run(cold=False)}


def p4(version: str = "1.1.0", symbols: int = 10, seconds: int = 60) -> dict:
    """Live over the real RabbitMQ (bench.live_bench): synthetic Bybit streams for 10 symbols
    published to the ws-gateway queues into the running service, once as fast as the broker
    takes them (throughput, backlog) and once at the pace of the exchange (latency without a
    backlog); beside it, without a broker, the engine's compute time per 1 s tick on the real
    2023 capture."""
    from bench import live_bench

    def summary(run: dict) -> dict:
        keep = (
            "messages",
            "realtime_msgs_per_s",
            "published_msgs_per_s",
            "consumed_msgs_per_s",
            "consumed_while_publishing_msgs_per_s",
            "acked_msgs_per_s",
            "times_realtime",
            "vectors",
            "latency_ms",
            "wait_ms",
            "latency_to_consumer_ms",
            "compute_calls",
            "backlog_grows_at_full_speed",
            "backlog_drains",
            "dead_letters",
            "book_gaps",
        )
        backlog = run.get("backlog", {})
        return {
            **{k: run[k] for k in keep if k in run},
            "backlog_max_ready": backlog.get("max_total_ready"),
            "backlog_slope_while_publishing_msgs_per_s": backlog.get(
                "slope_while_publishing_msgs_per_s"
            ),
        }

    full = live_bench.run(symbols=symbols, seconds=seconds, version=version)
    paced = live_bench.run(symbols=symbols, seconds=seconds, version=version, speed=1.0)
    offline = live_bench.offline_compute_per_tick(
        SHARED / "bybit" / "BTCUSDT_2023-04-05_book-trades-ticker-kline.jsonl.gz", version
    )
    together = live_bench.offline_compute_all_symbols(symbols, seconds, version)
    p99 = paced["latency_ms"]["p99"]
    return {
        "name": f"P4 live over RabbitMQ: {symbols} symbols, registry {version}",
        "full_speed": summary(full),
        "real_time": summary(paced),
        "offline_compute_per_tick": offline,
        "offline_compute_all_symbols": together,
        "goal": "p99 <= 10 ms per vector (the tick's inputs complete -> published), 10 "
        "symbols; no growing backlog",
        "met": bool(p99 is not None and p99 <= 10 and not full["backlog_grows_at_full_speed"]),
        "note": "latency_ms: each vector's own figure, from the receipt of the last message it "
        "waited for (the one that showed every stream past its ts) to its publish (handed to "
        "the connection); latency_to_consumer_ms: from the same receipt to the vector's "
        "arrival in a consumer process of its own; wait_ms: "
        "from the last message with data <= ts to that point (the feed's cadence: the synthetic "
        "tickers come once a second). Publisher: pipelines.replay in a subprocess (one channel, "
        "no confirms, persistent), at full speed or at the exchange's pace; the vectors' "
        "consumer in another; all on one 2-core box with RabbitMQ. backlog "
        "= ready messages in the ws-gateway queues. offline_compute_per_tick: no broker, one "
        "compute call per tick vs all ticks in one call; offline_compute_all_symbols: no "
        "broker, the P4 streams through the engine as the service runs it, with the sources "
        "computed ahead of their ticks' completion and without (all at the completion)",
    }


def p5(days: int = 60) -> dict:
    """The P1 build cold (empty feature cache), repeated (the whole dataset reused) and
    re-split (every feature partition reused, targets, splits and files made anew)."""
    start = parse_time("2024-01-01")
    request = dataset.DatasetRequest(
        symbols=["BTCUSDT"], start=start, end=start + days * DAY_MS, registry_version="1.2.0"
    )
    resplit = request.model_copy(update={"split_fractions": (0.6, 0.2, 0.2)})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synthetic.write_history(root / "raw", ["BTCUSDT"], start - DAY_MS, request.end + DAY_MS)
        times, metas = [], []
        for n, req in enumerate((request, request, resplit)):
            t0 = time.perf_counter()
            metas.append(dataset.build(req, root / "raw", root / f"out{n}", cache_dir=root / "c"))
            times.append(time.perf_counter() - t0)
        same = all(
            (root / "out0" / f"{s}.parquet").read_bytes()
            == (root / "out1" / f"{s}.parquet").read_bytes()
            for s in ("train", "validation", "test")
        )
        cli = [sys.executable, "-m", "pipelines.build_dataset", "--data-dir", str(root / "raw")]
        cli += ["--symbol", "BTCUSDT", "--start", "2024-01-01", "--end", iso(request.end)]
        cli += ["--registry-version", "1.2.0", "--cache-dir", str(root / "cli-cache")]
        process = []
        for n in range(2):
            t0 = time.perf_counter()
            subprocess.run(
                [*cli, "--out", str(root / f"cli{n}")], check=True, cwd=ROOT, capture_output=True
            )
            process.append(time.perf_counter() - t0)
    return {
        "name": f"P5 {days}-day build, registry 1.2.0: cold vs repeated with the feature cache",
        "cold_s": round(times[0], 3),
        "repeated_s": round(times[1], 3),
        "ratio": round(times[0] / times[1], 1),
        "repeated_output": metas[1]["cache"]["output"],
        "identical_bytes": same,
        "repeated_stages_s": metas[1]["timings_s"],
        "resplit_s": round(times[2], 3),
        "resplit_ratio": round(times[0] / times[2], 1),
        "resplit_partitions": metas[2]["cache"]["partitions"],
        "resplit_partitions_reused": metas[2]["cache"]["reused"],
        "cli_process_cold_s": round(process[0], 3),
        "cli_process_repeated_s": round(process[1], 3),
        "goal": "ratio >= 50",
        "met": times[0] / times[1] >= 50,
        "note": "in-process builds (the cold one compiles the feature plan); resplit = same "
        "features, other split fractions; cli_process_* = whole `python -m "
        "pipelines.build_dataset` runs, interpreter and imports included",
    }


BENCHES: dict[str, Callable[[], dict]] = {"P1": p1, "P2": p2, "P3": p3, "P4": p4, "P5": p5}


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def to_markdown(results: dict) -> str:
    lines = [
        f"# Benchmarks ({results['machine']['date']}, {results['machine']['cpus']} CPUs, "
        f"Python {results['machine']['python']})",
        "",
    ]
    for key, r in results["benchmarks"].items():
        lines += [f"## {key}: {r['name']}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in r.items() if k != "name"]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="just bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    path = args.out / "results.json"
    previous = json.loads(path.read_text()) if path.is_file() else {"benchmarks": {}}
    results = {"machine": machine(), "benchmarks": dict(previous.get("benchmarks", {}))}
    for key in args.only or sorted(BENCHES):
        print(f"running {key} ...", flush=True)
        results["benchmarks"][key] = BENCHES[key]()
        print(json.dumps(results["benchmarks"][key], indent=2))
    registry.load("1.2.0")  # the benchmarked version still validates
    path.write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(to_markdown(results))
    print(f"wrote {path} and {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
