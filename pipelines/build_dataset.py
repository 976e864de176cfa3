"""Build a train/validation/test dataset from the raw store.

    python -m pipelines.build_dataset --symbol BTCUSDT --start 2022-01-03 --end 2022-01-30 \\
        --registry-version 1.2.0 --data-dir data/raw --out data/datasets/jan

Dates are UTC; a date-only --end includes that whole day. Without --start/--end the build
covers everything the stored candles can serve. When the data dir holds no candles at all
(a fresh clone), a deterministic SYNTHETIC history is generated into it first, and the
output says so: that is the offline demo, not market data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from featlib import compute, dataset, raw, registry, synthetic
from featlib.cache import default_cache_dir
from featlib.catalog import Catalog, open_catalog
from featlib.schema import check_symbol
from featlib.splits import Period, RandomSplit, SplitConfig, TimeSplit, WalkForward
from featlib.targets import TargetSpec
from featlib.timeutil import DAY_MS, iso, parse_duration, parse_end, parse_time
from pipelines._cli import run, setup_logging

SYNTHETIC_START, SYNTHETIC_DAYS = "2024-01-01", 60


def _period(text: str) -> Period:
    start, sep, end = text.partition(":")
    if not sep and "/" in text:
        start, _, end = text.partition("/")
    if not start or not end:
        raise ValueError(f"a period is START:END (e.g. 2022-01-03:2022-01-20), got {text!r}")
    return Period(start=parse_time(start), end=parse_end(end))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.build_dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--symbol",
        action="append",
        default=None,
        help="symbol(s), repeat or comma-separate (default: BTCUSDT)",
    )
    parser.add_argument("--start", help="first day or timestamp (UTC)")
    parser.add_argument("--end", help="last day (inclusive) or end timestamp (exclusive)")
    parser.add_argument(
        "--registry-version",
        help="feature set version (default: the catalog's active one, else "
        f"{registry.DEFAULT_VERSION})",
    )
    parser.add_argument("--registry-dir", type=Path, default=registry.REGISTRY_DIR)
    parser.add_argument("--data-dir", type=Path, default=Path("data/raw"))
    parser.add_argument("--out", type=Path, default=Path("data/datasets/demo"))
    parser.add_argument(
        "--target-type",
        choices=["regression", "classification", "risk_adjusted"],
        default="regression",
    )
    parser.add_argument(
        "--resolution",
        "--grid",
        choices=["1m", "1s"],
        default="1m",
        help="grid step (default 1m); a 1s grid uses trade prices for targets",
    )
    parser.add_argument(
        "--target-price",
        choices=["close", "trade"],
        help="price the target reads: 1m candle close (default on a 1m grid) or "
        "last trade (default on a 1s grid)",
    )
    parser.add_argument("--horizon", default="5m", help="target horizon (default 5m)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.001,
        help="flat band for classification (default 0.001)",
    )
    parser.add_argument("--train", type=_period, help="train period START:END")
    parser.add_argument("--validation", type=_period, help="validation period START:END")
    parser.add_argument("--test", type=_period, help="test period START:END")
    parser.add_argument(
        "--walk-forward",
        metavar="TRAIN,VAL,TEST,STEP",
        help="walk-forward folds: window lengths and step in days (TEST 0 = none), e.g. 7,2,1,3",
    )
    parser.add_argument(
        "--random-split",
        type=int,
        metavar="SEED",
        help="seeded random rows (TESTS ONLY: leaks through time)",
    )
    parser.add_argument("--purge", help="purge after each window (default: the horizon)")
    parser.add_argument("--embargo", help="embargo after each boundary (default: the horizon)")
    parser.add_argument(
        "--split-fractions",
        default="0.7,0.15,0.15",
        help="train,validation,test shares when no periods are given",
    )
    parser.add_argument(
        "--backfill",
        action="store_true",
        help="fetch missing candles/funding from Bybit first (see just backfill)",
    )
    parser.add_argument(
        "--backfill-url", default="https://api.bybit.com", help="Bybit REST base URL for --backfill"
    )
    parser.add_argument("--max-backfill-days", type=int, default=31)
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="generate synthetic history into --data-dir first (the demo; also "
        "what happens without --start/--end when the data dir holds no candles)",
    )
    parser.add_argument(
        "--catalog",
        default="data/catalog.db",
        help="catalog database recording the build: a path (SQLite) or a postgresql:// DSN",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="feature partitions reused across builds (default: DATA_DIR/../cache/features)",
    )
    parser.add_argument("--no-cache", action="store_true", help="compute every partition")
    parser.add_argument(
        "--short-history",
        action="store_true",
        help="build from data shorter than the features' lookbacks (e.g. minutes of captures): "
        "each feature is null until its lookback is covered by stored data; without "
        "--start/--end the range is where every stored input overlaps",
    )
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def _split(args: argparse.Namespace) -> SplitConfig | None:
    """The split the flags ask for (None: time-based by --split-fractions)."""
    margins = {"purge": args.purge, "embargo": args.embargo}
    periods = (args.train, args.validation, args.test)
    if args.walk_forward:
        try:  # days, optionally written 10d
            days = [float(x.strip().removesuffix("d")) for x in args.walk_forward.split(",")]
        except ValueError:
            raise ValueError(
                f"--walk-forward {args.walk_forward!r}: expected TRAIN,VALIDATION,TEST,STEP "
                "in days, e.g. 7,2,1,3"
            ) from None
        if len(days) != 4:
            raise ValueError("--walk-forward is TRAIN,VALIDATION,TEST,STEP in days (TEST may be 0)")
        return WalkForward(
            train_window_days=days[0],
            validation_window_days=days[1],
            test_window_days=days[2] or None,
            step_days=days[3],
            **margins,
        )
    if args.random_split is not None:
        return RandomSplit(seed=args.random_split)
    if any(periods):
        if not all(periods):
            raise ValueError("give all of --train, --validation and --test, or none of them")
        return TimeSplit(train=args.train, validation=args.validation, test=args.test, **margins)
    return None


def _symbols(values: list[str] | None) -> list[str]:
    return [
        check_symbol(s.strip()) for v in (values or ["BTCUSDT"]) for s in v.split(",") if s.strip()
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.quiet)
    symbols = _symbols(args.symbol)
    version = args.registry_version
    if version is None:  # the catalog's active version, else the registry default
        with open_catalog(args.catalog) as catalog:
            version = catalog.active_version()
    fs = registry.load(version, args.registry_dir)
    price = args.target_price or ("trade" if args.resolution == "1s" else "close")
    target = TargetSpec(
        type=args.target_type, horizon=args.horizon, threshold=args.threshold, price=price
    )
    lookback = dataset.kline_lookback(fs)
    step = parse_duration(args.resolution)

    demo = not (args.start or args.end or args.backfill) and not raw.files(args.data_dir, "klines")
    if args.synthetic or demo:
        start = parse_time(SYNTHETIC_START)
        end = start + SYNTHETIC_DAYS * DAY_MS
        print(
            f"NOTE: {args.data_dir} holds no candles: generating a deterministic SYNTHETIC "
            f"history for {', '.join(symbols)} ({iso(start)} → {iso(end)}). This is demo "
            "data, not market data; ingest captures (just ingest) or backfill for real data."
        )
        synthetic.write_history(args.data_dir, symbols, start, end)
    elif synthetic.is_synthetic(args.data_dir):
        print(f"NOTE: {args.data_dir} holds SYNTHETIC data (see {synthetic.MARKER}).")

    if args.backfill and not (args.start and args.end):
        raise ValueError("--backfill needs --start and --end")
    if args.start and args.end:
        start, end = parse_time(args.start), parse_end(args.end)
    else:
        if args.short_history:
            p = compute.plan(fs.names)
            inputs = [dataset.stored_kinds(source) for source in p.sources]
            inputs.append(("klines",) if target.price == "close" else ("trades",))
            first, last = dataset.short_history_range(
                args.data_dir, symbols, [i for i in inputs if i], target.horizon_ms, step
            )
        else:
            first, last = dataset.available_range(
                args.data_dir, symbols, lookback, target.horizon_ms, step
            )
        start = parse_time(args.start) if args.start else first
        end = parse_end(args.end) if args.end else last
    split = _split(args)
    fractions = tuple(float(x) for x in args.split_fractions.split(","))
    request = dataset.DatasetRequest(
        symbols=symbols,
        start=start,
        end=end,
        registry_version=fs.version,
        target=target,
        split=split,
        split_fractions=fractions,
        resolution=args.resolution,
        short_history=args.short_history,
    )
    print(
        f"building {', '.join(symbols)} {iso(start)} → {iso(end)} with registry "
        f"{fs.version} ({len(fs.features)} features) on a {args.resolution} grid, target "
        f"{target.type} {target.horizon} of the {target.price} price"
    )
    with open_catalog(args.catalog) as catalog:
        record = catalog.create_dataset(dataset.catalog_record(request, args.out))
        meta = _build(args, request, catalog, record)
    folds = meta["folds"]
    if len(folds) > 1:
        print(f"  {len(folds)} walk-forward folds (fold=k/*.parquet); fold 0:")
    for name, info in meta["splits"].items():
        span = f"{info['start']} → {info['end']}" if "start" in info else "(random rows)"
        print(
            f"  {name:<10} {info['rows']:>9,} rows  {span}"
            f"  ({info['purged']:,} purged, {info['embargoed']:,} embargoed)"
        )
    print(
        f"wrote {args.out}/ in {meta['timings_s']['total']:.2f}s (peak RSS "
        f"{meta['peak_rss_mb']:.0f} MB); metadata: {args.out}/metadata.json; catalog id {record}"
    )
    if not args.quiet:
        print(json.dumps({"timings_s": meta["timings_s"], "rows": meta["rows"]}))
    return 0


def _build(
    args: argparse.Namespace, request: dataset.DatasetRequest, catalog: Catalog, catalog_id: str
) -> dict:
    options = None
    if args.backfill:
        from featlib.backfill import BackfillOptions

        options = BackfillOptions(base_url=args.backfill_url)
    meta = dataset.build_recorded(
        catalog,
        catalog_id,
        request,
        args.data_dir,
        args.out,
        registry_dir=args.registry_dir,
        progress=not args.quiet and sys.stderr.isatty(),
        log=print,
        auto_backfill=options,
        max_backfill_days=args.max_backfill_days,
        cache_dir=None if args.no_cache else (args.cache_dir or default_cache_dir(args.data_dir)),
    )
    return meta


if __name__ == "__main__":
    run(main)
