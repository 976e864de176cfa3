"""scikit-learn handoff: walk-forward cross-validation purged and embargoed exactly as the
dataset builder's walk-forward (featlib.splits.assign_folds is the one implementation).

Kept out of featlib.splits so that building a dataset does not import scikit-learn."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from sklearn.model_selection import BaseCrossValidator

from featlib.splits import Assignment, WalkForward, _as_ms, assign_folds, fold_windows
from featlib.timeutil import parse_duration


class PurgedWalkForward(BaseCrossValidator):
    """Walk-forward cross-validation yielding (train, validation) row indices per fold, purged
    and embargoed exactly as the dataset builder's walk-forward (the validation window is the
    CV "test" fold; a configured test window only shapes the folds and is never yielded).

    Row times (epoch ms, or datetime64) come from `ts` given here or, when `split` receives
    `groups`, from `groups` (so `cross_val_score(..., cv=cv, groups=ts)` works too). Without
    `start`/`end` the range runs from the first row time to the last + 1 ms; give the
    dataset's range (or use `from_config` with the builder's resolved config) to match it."""

    def __init__(
        self,
        train_window_days: float,
        validation_window_days: float,
        step_days: float,
        horizon: str | int,
        *,
        test_window_days: float | None = None,
        purge: str | int | None = None,
        embargo: str | int | None = None,
        start: int | None = None,
        end: int | None = None,
        ts: Any = None,
    ) -> None:
        self.train_window_days = train_window_days
        self.validation_window_days = validation_window_days
        self.step_days = step_days
        self.horizon = horizon
        self.test_window_days = test_window_days
        self.purge = purge
        self.embargo = embargo
        self.start = start
        self.end = end
        self.ts = ts
        _ = self.config  # validate now, not at the first split

    @classmethod
    def from_config(
        cls, config: WalkForward, horizon: str | int, ts: Any = None
    ) -> PurgedWalkForward:
        """The splitter for a dataset request's walk-forward configuration."""
        return cls(
            config.train_window_days,
            config.validation_window_days,
            config.step_days,
            horizon,
            test_window_days=config.test_window_days,
            purge=config.purge,
            embargo=config.embargo,
            start=config.start,
            end=config.end,
            ts=ts,
        )

    @property
    def config(self) -> WalkForward:
        return WalkForward(
            train_window_days=self.train_window_days,
            validation_window_days=self.validation_window_days,
            test_window_days=self.test_window_days,
            step_days=self.step_days,
            start=self.start,
            end=self.end,
            purge=self.purge,
            embargo=self.embargo,
        )

    def _times(self, X: Any, groups: Any) -> np.ndarray:
        source = groups if groups is not None else self.ts
        if source is None:
            raise ValueError(
                "PurgedWalkForward needs the row times: pass ts=... or groups=<row times>"
            )
        ts = _as_ms(source)
        if X is not None and len(ts) != len(X):
            raise ValueError(f"{len(ts)} row times for {len(X)} rows")
        return ts

    def assignment(self, X: Any = None, groups: Any = None) -> Assignment:
        """The walk-forward assignment of the rows (the same call the dataset builder makes)."""
        return assign_folds(
            self._times(X, groups), self.config, parse_duration(self.horizon), self.start, self.end
        )

    def split(
        self, X: Any, y: Any = None, groups: Any = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(train rows, validation rows) per fold, chronological."""
        assignment = self.assignment(X, groups)
        for fold in assignment.folds:
            train, validation = (assignment.part(fold, s) for s in ("train", "validation"))
            assert train is not None and validation is not None
            if not (len(train.rows) and len(validation.rows)):
                raise ValueError(
                    f"walk-forward fold {fold} has {len(train.rows)} train and "
                    f"{len(validation.rows)} validation rows: no rows in {train.window} "
                    f"or {validation.window} survive purging/embargo"
                )
            yield train.rows, validation.rows

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """The number of folds that fit the range."""
        if self.start is not None and self.end is not None:
            windows = fold_windows(self.config, parse_duration(self.horizon), self.start, self.end)
            return windows[-1][0] + 1
        return len(self.assignment(X, groups).folds)
