"""Load recorded captures (ws-gateway JSON lines, .jsonl or .jsonl.gz) into the raw store.

python -m pipelines.ingest ../shared/data/bybit/*.jsonl.gz --data-dir data/raw
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from featlib.capture import ingest, read_lines
from pipelines._cli import require_files, run, setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.ingest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", type=Path, help="capture files (.jsonl / .jsonl.gz)")
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data/raw"), help="raw store root (default: data/raw)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.quiet)
    require_files(args.files)
    rejected = 0
    for path in args.files:
        started = time.perf_counter()
        with tqdm(desc=path.name, unit="msg", disable=args.quiet or not sys.stderr.isatty()) as bar:
            report = ingest(args.data_dir, read_lines(path), progress=bar.update, source=str(path))
        seconds = time.perf_counter() - started
        written = ", ".join(f"{k} {v:,}" for k, v in sorted(report.written.items())) or "nothing"
        print(
            f"{path}: {report.messages:,} messages in {seconds:.1f}s -> {written} rows written"
            f" ({report.duplicates:,} already stored, {report.rejected:,} rejected,"
            f" {report.control:,} control)"
        )
        for line in report.errors:
            print(f"  rejected {line}", file=sys.stderr)
        rejected += report.rejected
    print(f"raw store: {args.data_dir.resolve()}")
    return 1 if rejected else 0


if __name__ == "__main__":
    run(main)
