"""Benchmarks (`just bench`): figures, not asserts. Writes bench/results.json and results.md.

P1  60 days of synthetic 1-minute candles, registry 1.2.0, cold dataset build end to end,
    against a naive per-timestamp pandas-ta recompute measured in the same run (on a
    subsample of timestamps, extrapolated).
"""

from __future__ import annotations

import argparse
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
from featlib.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, parse_time

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


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


BENCHES: dict[str, Callable[[], dict]] = {"P1": p1}


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
