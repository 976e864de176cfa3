"""Event time as integer milliseconds since the epoch (UTC), durations as "5m"-style strings."""

from __future__ import annotations

import datetime as dt
import re

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

_UNITS = {"ms": 1, "s": SECOND_MS, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS}
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")


def parse_duration(text: str | int) -> int:
    """'90s' / '5m' / '6h' / '2d' / '250ms' -> milliseconds; an int is taken as milliseconds."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"duration must not be negative, got {text}")
        return text
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. '500ms', '3s', '5m', '6h', '2d')")
    return int(match.group(1)) * _UNITS[match.group(2)]


def format_duration(ms: int) -> str:
    """Milliseconds -> the largest whole unit: 360000 -> '6m'."""
    for unit in ("d", "h", "m", "s"):
        if ms and ms % _UNITS[unit] == 0:
            return f"{ms // _UNITS[unit]}{unit}"
    return f"{ms}ms"


def parse_time(text: str | dt.datetime | dt.date | int) -> int:
    """A date ('2022-01-03'), an ISO timestamp (naive = UTC) or epoch ms -> epoch ms."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    if isinstance(text, dt.datetime):
        stamp = text
    elif isinstance(text, dt.date):
        stamp = dt.datetime(text.year, text.month, text.day)
    else:
        try:
            stamp = dt.datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"not a date or timestamp: {text!r} (use 2022-01-03 or 2022-01-03T12:00)"
            ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return int(stamp.timestamp() * 1000)


def is_date_only(text: str) -> bool:
    return bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(text).strip()))


def to_datetime(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def iso(ms: int) -> str:
    """Epoch ms -> '2022-01-03T00:00:00Z' (milliseconds shown only when present)."""
    stamp = to_datetime(ms)
    text = stamp.strftime("%Y-%m-%dT%H:%M:%S")
    if ms % 1000:
        text += f".{ms % 1000:03d}"
    return text + "Z"


def day_of(ms: int) -> dt.date:
    return to_datetime(ms).date()


def days_between(start_ms: int, end_ms: int) -> list[dt.date]:
    """UTC dates touched by the half-open interval [start_ms, end_ms)."""
    if end_ms <= start_ms:
        return []
    first, last = day_of(start_ms), day_of(end_ms - 1)
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def parse_end(text: str | dt.datetime | dt.date | int) -> int:
    """An end time: like parse_time, but a date-only end includes that whole day."""
    if isinstance(text, str) and is_date_only(text):
        return parse_time(text) + DAY_MS
    return parse_time(text)
