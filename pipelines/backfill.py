"""Fetch history from Bybit (REST via pybit, daily trade archives) into the raw store.

    python -m pipelines.backfill BTCUSDT 2022-01-01 2022-01-31 --types klines,funding

Dates are UTC; a date-only END includes that day. Days already complete are skipped without
an API call; every fetched day is read back and checked. Types: klines, funding, trades
(daily archives) by day, and ticker, orderbook, recent_trades (one snapshot of now).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from featlib.backfill import (
    DEFAULT_ARCHIVE_URL,
    DEFAULT_BASE_URL,
    DEFAULT_TYPES,
    BackfillError,
    BackfillJob,
    BackfillOptions,
    BackfillRequest,
    run,
)
from pipelines._cli import run as run_cli
from pipelines._cli import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.backfill",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("symbol", help="e.g. BTCUSDT")
    parser.add_argument("start", help="first day or timestamp (UTC)")
    parser.add_argument("end", help="last day (inclusive) or end timestamp (exclusive)")
    parser.add_argument(
        "--types",
        default=",".join(DEFAULT_TYPES),
        help=f"comma-separated data types (default: {','.join(DEFAULT_TYPES)})",
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data/raw"))
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help="Bybit REST base URL")
    parser.add_argument("--archive-url", default=DEFAULT_ARCHIVE_URL, help="trade archive URL")
    parser.add_argument("--category", default="linear", help="linear (default), inverse, spot")
    parser.add_argument("--delay", type=float, default=0.1, help="seconds between calls")
    parser.add_argument("--retries", type=int, default=5, help="retries per call (backoff)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    parser.add_argument("--force", action="store_true", help="fetch complete days again")
    parser.add_argument("--quiet", action="store_true", help="summary only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(quiet=True)
    options = BackfillOptions(
        base_url=args.base_url,
        archive_url=args.archive_url,
        category=args.category,
        delay_s=args.delay,
        max_retries=args.retries,
        timeout_s=args.timeout,
    )
    request = BackfillRequest(
        symbol=args.symbol, start=args.start, end=args.end, types=args.types, force=args.force
    )
    job = BackfillJob(request)
    units = sum(len(d.types) for d in job.progress.values())
    tty = sys.stderr.isatty() and not args.quiet
    bar = tqdm(total=units, desc=request.symbol, unit="day", disable=not tty)

    def progress(job: BackfillJob, date: str, kind: str) -> None:
        state = job.progress[date].types[kind]
        line = f"{date} {kind:<13} {state.status:<7} {state.rows:>9,} rows {state.calls:>3} calls"
        if state.error:
            line += f"  {state.error}"
        bar.set_postfix_str(f"{date} {kind} {state.status}")
        bar.update(1)
        if not tty and not args.quiet:
            print(line, flush=True)
        elif state.error:
            bar.write(line)

    started = time.perf_counter()
    try:
        run(job, args.data_dir, options, on_progress=progress)
    except KeyboardInterrupt:
        job.cancel()
    bar.close()
    if job.fatal:
        raise BackfillError(job.error or "backfill failed")
    calls = ", ".join(f"{k} {v}" for k, v in sorted(job.calls.items())) or "none"
    print(job.summary())
    print(f"calls: {calls}; {time.perf_counter() - started:.1f}s; raw store: {args.data_dir}")
    if job.status != "done":
        print(f"{job.status}: {job.error or ''}".rstrip(": "), file=sys.stderr)
    return {"done": 0, "cancelled": 130}.get(job.status, 1)


if __name__ == "__main__":
    run_cli(main)
