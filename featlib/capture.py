"""Recorded captures (JSON lines, maybe gzipped, one ws-gateway message a line) -> raw store."""

from __future__ import annotations

import gzip
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from featlib import raw
from featlib.bybit import BybitParseError, Parsed, parse_message
from featlib.schema import RAW_SCHEMAS

log = logging.getLogger(__name__)


def read_lines(path: Path) -> Iterator[bytes]:
    """Lines of a capture file; `.gz` is decompressed. Blank lines are skipped."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for line in handle:
            if line.strip():
                yield line


@dataclass
class IngestReport:
    messages: int = 0
    control: int = 0
    rejected: int = 0
    rows: Counter = field(default_factory=Counter)
    written: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # first few reasons, for the operator

    @property
    def duplicates(self) -> int:
        return sum(self.rows.values()) - sum(self.written.values())


def ingest(
    root: Path,
    lines: Iterable[bytes | str | dict[str, Any]],
    *,
    received_at: int | None = None,
    batch_rows: int = 200_000,
    progress: Callable[[int], None] | None = None,
    source: str = "",
) -> IngestReport:
    """Parse messages and store their rows. A malformed message is counted and reported with
    its line number and reason; every valid message around it is stored."""
    report = IngestReport()
    pending: dict[str, list[dict[str, Any]]] = defaultdict(list)
    pending_rows = 0

    def flush() -> None:
        nonlocal pending_rows
        for kind, rows in pending.items():
            stats = raw.write(root, kind, pa.Table.from_pylist(rows, schema=RAW_SCHEMAS[kind]))
            report.written[kind] += stats.rows_written
        pending.clear()
        pending_rows = 0

    for number, line in enumerate(lines, start=1):
        report.messages += 1
        try:
            parsed: Parsed | None = parse_message(line, received_at=received_at)
        except BybitParseError as exc:
            report.rejected += 1
            if len(report.errors) < 20:
                report.errors.append(f"{source}:{number}: {exc}")
            log.warning("rejected message %s:%d: %s", source, number, exc)
            continue
        if parsed is None:
            report.control += 1
            continue
        pending[parsed.kind].extend(parsed.rows)
        report.rows[parsed.kind] += len(parsed.rows)
        pending_rows += len(parsed.rows)
        if pending_rows >= batch_rows:
            flush()
        if progress is not None:
            progress(1)
    flush()
    return report
