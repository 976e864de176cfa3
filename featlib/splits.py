"""Splitting rows into train / validation / test, and into walk-forward folds, without leakage.

Windows are half-open [start, end) in epoch ms. A row at t belongs to the window holding t;
its target reads prices in (t, t + horizon], so a row with t + purge >= its window's end
(purge: the horizon unless set longer) would learn from what follows: it is purged. The rows
in the first `embargo` (default: the horizon) of every validation and test window are dropped
too. Windows of a fold are ordered and disjoint. A configuration that would leak, or that
leaves a fold nothing to learn or validate on, is refused with a SplitError that says why.

    assignment = assign_folds(ts, config, horizon_ms, start, end)
    for part in assignment.parts:  # one per (fold, split): kept/purged/embargoed row indices
        ...
    split_metadata(assignment)      # fold table + warnings for metadata.json

`PurgedWalkForward` hands the same walk-forward folds to scikit-learn.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

from featlib.timeutil import DAY_MS, format_duration, iso, parse_duration, parse_time

SPLITS = ("train", "validation", "test")
PURGED = -2
OUTSIDE = -1

RANDOM_LEAK_NOTE = (
    "random split: rows are shuffled across time, so each split's features and targets "
    "overlap the other splits' periods — it leaks through time; for tests only, never for "
    "training or evaluating a model"
)


class SplitError(ValueError):
    """A split that would leak or cannot be met on the data; the message says why."""


def _duration(value: str | int | None) -> str | int | None:
    """Validate an optional duration ('5m' or ms) without changing how it was written."""
    if value is not None:
        parse_duration(value)
    return value


Embargo = Annotated[
    str | int | None,
    AfterValidator(_duration),
    Field(description="dropped after each validation/test start ('5m' or ms); default horizon"),
]
Purge = Annotated[
    str | int | None,
    AfterValidator(_duration),
    Field(description="dropped before each window end ('5m' or ms); default the horizon"),
]


class Period(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    start: int
    end: int

    @model_validator(mode="after")
    def _ordered(self) -> Period:
        if self.end <= self.start:
            raise ValueError(f"period ends ({iso(self.end)}) before it starts ({iso(self.start)})")
        return self

    def __str__(self) -> str:
        return f"[{iso(self.start)}, {iso(self.end)})"


class TimeSplit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["time_based"] = "time_based"
    train: Period
    validation: Period
    test: Period
    purge: Purge = None
    embargo: Embargo = None

    @model_validator(mode="after")
    def _disjoint(self) -> TimeSplit:
        periods = self.periods()
        for (a, pa_), (b, pb) in itertools.pairwise(periods):
            if pb.start < pa_.end:
                raise ValueError(
                    f"{b} period {pb} starts before {a} period {pa_} ends: "
                    "periods must be chronological and must not overlap"
                )
        return self

    def periods(self) -> list[tuple[str, Period]]:
        return [(name, getattr(self, name)) for name in SPLITS]

    @classmethod
    def by_fractions(
        cls,
        start: int,
        end: int,
        step: int,
        fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    ) -> TimeSplit:
        """Consecutive periods covering [start, end) in the given proportions, on the grid."""
        if len(fractions) != 3 or any(f < 0 for f in fractions) or not sum(fractions) > 0:
            raise ValueError(f"split fractions must be three non-negative numbers, got {fractions}")
        total = sum(fractions)
        steps = (end - start) // step
        cut1 = start + round(steps * fractions[0] / total) * step
        cut2 = start + round(steps * (fractions[0] + fractions[1]) / total) * step
        cuts = [start, cut1, cut2, end]
        if any(b <= a for a, b in itertools.pairwise(cuts)):
            raise ValueError(
                f"range {iso(start)} → {iso(end)} is too short to split "
                f"{fractions} on a {step // 1000}s grid"
            )
        return cls(
            **{
                name: Period(start=a, end=b)
                for name, a, b in zip(SPLITS, cuts, cuts[1:], strict=False)
            }
        )


class WalkForward(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["walk_forward"] = "walk_forward"
    train_window_days: float
    validation_window_days: float
    test_window_days: float | None = Field(default=None, description="0 or None: no test")
    step_days: float = Field(description="how far fold k + 1 starts after fold k")
    start: int | None = Field(default=None, description="epoch ms; default the dataset start")
    end: int | None = Field(default=None, description="epoch ms; default the dataset end")
    purge: Purge = None
    embargo: Embargo = None

    @field_validator("start", "end", mode="before")
    @classmethod
    def _time(cls, value: Any) -> Any:
        return parse_time(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _positive(self) -> WalkForward:
        windows = {
            "train_window_days": self.train_window_days,
            "validation_window_days": self.validation_window_days,
            "step_days": self.step_days,
        }
        for name, days in windows.items():
            if not (math.isfinite(days) and round(days * DAY_MS) > 0):
                raise ValueError(
                    f"{name} must be a positive number of days, got {days}: "
                    "an empty or negative window would overlap its neighbours"
                )
        test = self.test_window_days
        if test is not None and not (math.isfinite(test) and test >= 0):
            raise ValueError(
                f"test_window_days must be zero/None (no test) or positive, got {test}: "
                "a negative window would overlap the validation window"
            )
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(
                f"walk-forward end {iso(self.end)} is not after its start {iso(self.start)}"
            )
        return self

    @property
    def windows_ms(self) -> tuple[int, int, int]:
        """(train, validation, test) window lengths in ms; test 0 when there is none."""
        days = (self.train_window_days, self.validation_window_days, self.test_window_days or 0)
        train, validation, test = (round(d * DAY_MS) for d in days)
        return train, validation, test

    @property
    def step_ms(self) -> int:
        return round(self.step_days * DAY_MS)


class RandomSplit(BaseModel):
    """Rows shuffled into train/validation/test (seeded): leaks through time, tests only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["random"] = "random"
    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(not (math.isfinite(f) and f >= 0) for f in value) or not (value[0] and value[1]):
            raise ValueError(
                f"random split fractions must be non-negative with train and validation > 0, "
                f"got {value}"
            )
        return value


SplitConfig = Annotated[TimeSplit | WalkForward | RandomSplit, Field(discriminator="strategy")]
_SPLIT_CONFIG: TypeAdapter[SplitConfig] = TypeAdapter(SplitConfig)


def parse_split(data: Mapping[str, Any] | TimeSplit | WalkForward | RandomSplit) -> SplitConfig:
    """A split configuration from its JSON form, chosen by its `strategy` field."""
    return _SPLIT_CONFIG.validate_python(data)


@dataclass(frozen=True, eq=False)
class Part:
    """One (fold, split) membership: its window and the row indices kept, purged, embargoed."""

    fold: int
    split: str
    window: Period | None  # None for a random split
    rows: np.ndarray
    purged: np.ndarray
    embargoed: np.ndarray


@dataclass(frozen=True, eq=False)
class Assignment:
    """Every (fold, split) part of a split over a table's rows, with the warnings it raised."""

    strategy: str
    horizon_ms: int
    purge_ms: int
    embargo_ms: int
    start: int
    end: int
    parts: tuple[Part, ...]
    warnings: tuple[str, ...]

    @property
    def folds(self) -> list[int]:
        return sorted({p.fold for p in self.parts})

    def part(self, fold: int, split: str) -> Part | None:
        return next((p for p in self.parts if p.fold == fold and p.split == split), None)


def purge_and_embargo(
    config: TimeSplit | WalkForward | RandomSplit, horizon_ms: int
) -> tuple[int, int]:
    """(purge, embargo) in ms: as configured, else the horizon; shorter than it is refused."""
    if horizon_ms <= 0:
        raise SplitError(f"target horizon must be positive, got {horizon_ms} ms")
    if isinstance(config, RandomSplit):
        return 0, 0
    purge, embargo = (
        horizon_ms if value is None else parse_duration(value)
        for value in (config.purge, config.embargo)
    )
    why = {
        "purge": "a row whose target reaches past its window's end would be kept",
        "embargo": "the first rows after a validation/test boundary would share their recent "
        "prices with the last targets before it",
    }
    for name, value in (("purge", purge), ("embargo", embargo)):
        if value < horizon_ms:
            raise SplitError(
                f"{name} {format_duration(value)} is shorter than the target horizon "
                f"{format_duration(horizon_ms)}: {why[name]} (use at least the horizon)"
            )
    return purge, embargo


def fold_windows(
    config: TimeSplit | WalkForward, horizon_ms: int, start: int, end: int
) -> list[tuple[int, str, Period]]:
    """(fold, split, window) of every window, chronological; refuses leaking or empty folds."""
    purge, embargo = purge_and_embargo(config, horizon_ms)
    if isinstance(config, TimeSplit):
        first, last = config.train.start, config.test.end
        if first < start or last > end:
            raise SplitError(
                f"split periods {iso(first)} → {iso(last)} leave the range "
                f"{iso(start)} → {iso(end)}"
            )
        windows = [(0, name, period) for name, period in config.periods()]
    else:
        windows = _walk_forward_windows(config, start, end)
    for fold, name, period in windows:
        length = period.end - period.start
        need = purge if name == "train" else purge + embargo
        if name != "test" and length <= need:
            what = f"purge {format_duration(purge)}"
            if name != "train":
                what += f" + embargo {format_duration(embargo)}"
            raise SplitError(
                f"fold {fold} {name} window {period} lasts {format_duration(length)}, not "
                f"longer than the {what}: every row would be purged or embargoed"
            )
    return windows


def _walk_forward_windows(
    config: WalkForward, start: int, end: int
) -> list[tuple[int, str, Period]]:
    first = start if config.start is None else config.start
    last = end if config.end is None else config.end
    if first < start or last > end:
        raise SplitError(
            f"walk-forward range {iso(first)} → {iso(last)} leaves the dataset range "
            f"{iso(start)} → {iso(end)}"
        )
    if last <= first:
        raise SplitError(f"walk-forward range {iso(first)} → {iso(last)} is empty")
    lengths = [(n, ms) for n, ms in zip(SPLITS, config.windows_ms, strict=True) if ms]
    span = sum(ms for _, ms in lengths)
    if span > last - first:
        sizes = " + ".join(f"{n} {format_duration(ms)}" for n, ms in lengths)
        raise SplitError(
            f"no walk-forward fold fits: one fold needs {format_duration(span)} ({sizes}) "
            f"but the range {iso(first)} → {iso(last)} lasts {format_duration(last - first)}"
        )
    windows = []
    for fold in range((last - first - span) // config.step_ms + 1):
        at = first + fold * config.step_ms
        for name, ms in lengths:
            windows.append((fold, name, Period(start=at, end=at + ms)))
            at += ms
    return windows


def _as_ms(ts: Any) -> np.ndarray:
    """Row times as int64 epoch ms from ms integers, numpy datetime64 or a pyarrow timestamp."""
    if isinstance(ts, pa.ChunkedArray | pa.Array):
        if pa.types.is_timestamp(ts.type):
            ts = ts.cast(pa.timestamp("ms", tz=ts.type.tz))
        return ts.cast(pa.int64()).to_numpy()
    ts = np.asarray(ts)
    if np.issubdtype(ts.dtype, np.datetime64):
        return ts.astype("datetime64[ms]").astype(np.int64)
    return ts.astype(np.int64, copy=False)


def _window_rows(
    order: np.ndarray, sorted_ts: np.ndarray, period: Period, purge_ms: int, embargo_ms: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept, purged, embargoed) row indices of one window; purging wins over the embargo."""
    lo, hi, cut, calm = np.searchsorted(
        sorted_ts,
        [period.start, period.end, period.end - purge_ms, period.start + embargo_ms],
    )
    cut = min(max(cut, lo), hi)
    calm = min(max(calm, lo), cut)
    kept, purged, embargoed = (np.sort(order[a:b]) for a, b in ((calm, cut), (cut, hi), (lo, calm)))
    return kept, purged, embargoed


def _random_parts(n: int, config: RandomSplit) -> list[Part]:
    order = np.random.default_rng(config.seed).permutation(n)
    total = sum(config.fractions)
    cuts = [0, *(round(n * f / total) for f in itertools.accumulate(config.fractions))]
    cuts[-1] = n
    empty = np.array([], dtype=np.int64)
    return [
        Part(0, name, None, np.sort(order[a:b]), empty, empty)
        for name, a, b in zip(SPLITS, cuts, cuts[1:], strict=False)
    ]


def assign_folds(
    ts: Any,
    config: TimeSplit | WalkForward | RandomSplit,
    horizon_ms: int,
    start: int | None = None,
    end: int | None = None,
) -> Assignment:
    """Each (fold, split)'s kept, purged and embargoed rows of `ts` (row times, epoch ms) in
    [start, end) (default: first row to last row + 1 ms); raises SplitError on leaking configs."""
    ts = _as_ms(ts)
    if start is None or end is None:
        if not len(ts):
            raise SplitError("no rows to split and no range given")
        start = int(ts.min()) if start is None else start
        end = int(ts.max()) + 1 if end is None else end
    purge, embargo = purge_and_embargo(config, horizon_ms)
    warnings: list[str] = []
    if isinstance(config, RandomSplit):
        parts = _random_parts(len(ts), config)
        warnings.append(RANDOM_LEAK_NOTE)
    else:
        order = np.argsort(ts, kind="stable")
        sorted_ts = ts[order]
        parts = []
        for fold, name, period in fold_windows(config, horizon_ms, start, end):
            wait = embargo if name != "train" else 0
            kept, purged, embargoed = _window_rows(order, sorted_ts, period, purge, wait)
            parts.append(Part(fold, name, period, kept, purged, embargoed))
    for part in parts:
        if not len(part.rows):
            where = f" {part.window}" if part.window else ""
            warnings.append(
                f"fold {part.fold} {part.split} split{where} is empty "
                f"({len(part.purged)} purged, {len(part.embargoed)} embargoed)"
            )
    return Assignment(
        strategy=config.strategy,
        horizon_ms=horizon_ms,
        purge_ms=purge,
        embargo_ms=embargo,
        start=start,
        end=end,
        parts=tuple(parts),
        warnings=tuple(warnings),
    )


def fold_table(assignment: Assignment) -> list[dict[str, Any]]:
    """Per fold: each split's window, kept rows, purged and embargoed counts (JSON-ready)."""
    folds: dict[int, dict[str, Any]] = {}
    for part in assignment.parts:
        entry = folds.setdefault(part.fold, {"fold": part.fold})
        entry[part.split] = {
            **(
                {"start": iso(part.window.start), "end": iso(part.window.end)}
                if part.window
                else {}
            ),
            "rows": len(part.rows),
            "purged": len(part.purged),
            "embargoed": len(part.embargoed),
        }
    return [folds[k] for k in sorted(folds)]


def split_metadata(assignment: Assignment) -> dict[str, Any]:
    """The split's record for metadata.json: strategy, horizon, purge, embargo, folds, warnings."""
    meta: dict[str, Any] = {
        "strategy": assignment.strategy,
        "horizon": format_duration(assignment.horizon_ms),
        "purge": format_duration(assignment.purge_ms) if assignment.purge_ms else None,
        "embargo": format_duration(assignment.embargo_ms) if assignment.embargo_ms else None,
        "range": {"start": iso(assignment.start), "end": iso(assignment.end)},
        "leaks_through_time": assignment.strategy == "random",
        "folds": fold_table(assignment),
        "warnings": list(assignment.warnings),
    }
    if assignment.strategy == "random":
        meta["note"] = RANDOM_LEAK_NOTE
    return meta


def assign(ts: np.ndarray, split: TimeSplit, horizon_ms: int) -> np.ndarray:
    """Per row: index into SPLITS, OUTSIDE (no period), or PURGED (target crosses the end, or
    the row lies in the embargo after the validation/test start)."""
    ts = _as_ms(ts)
    purge, embargo = purge_and_embargo(split, horizon_ms)
    order = np.argsort(ts, kind="stable")
    sorted_ts = ts[order]
    labels = np.full(len(ts), OUTSIDE, dtype=np.int8)
    for code, (_, period) in enumerate(split.periods()):
        kept, purged, embargoed = _window_rows(
            order, sorted_ts, period, purge, embargo if code else 0
        )
        labels[kept] = code
        labels[purged] = PURGED
        labels[embargoed] = PURGED
    return labels
