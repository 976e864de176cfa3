"""Splits never leak: on the real January 2022 candles and over random configurations, no kept
row's target window (t, t + h] reaches another window of its fold, the embargo holds, purged
rows are exactly those crossing a boundary, walk-forward yields every fold that fits, and the
scikit-learn splitter hands over exactly the builder's folds."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import cross_val_score

from featlib.cv import PurgedWalkForward
from featlib.splits import (
    PURGED,
    RANDOM_LEAK_NOTE,
    SPLITS,
    Period,
    RandomSplit,
    SplitError,
    TimeSplit,
    WalkForward,
    assign,
    assign_folds,
    fold_table,
    parse_split,
    split_metadata,
)

MIN = 60_000
H = 5 * MIN  # target horizon of the real-data tests
JAN, FEB = (int(dt.datetime(2022, m, 1, tzinfo=dt.UTC).timestamp() * 1000) for m in (1, 2))


def _day(d: int) -> int:
    return JAN + (d - 1) * 86_400_000


@pytest.fixture(scope="module")
def jan(jan_tables) -> dict[str, np.ndarray]:
    """January 2022 candle close times (1-minute grid), closes, and two features + target."""
    k = jan_tables["klines"]
    ts = k["ts"].cast(pa.int64()).to_numpy()
    close = k["close"].to_numpy()
    assert np.all(np.diff(ts) == MIN)  # a gap-free grid, so shifts below are minutes
    r1 = np.r_[np.nan, close[1:] / close[:-1] - 1]
    r15 = np.r_[np.full(15, np.nan), close[15:] / close[:-15] - 1]
    target = np.r_[close[5:] / close[:-5] - 1, np.full(5, np.nan)]
    keep = (ts >= JAN) & (ts < FEB)
    assert keep.sum() == 31 * 1440
    return {"ts": ts[keep], "X": np.c_[r1, r15][keep], "y": target[keep]}


def _crosses(t: np.ndarray, h: int, period: Period) -> np.ndarray:
    """Whether the target window (t, t + h] shares an instant with [start, end) (integer ms)."""
    return np.maximum(t + 1, period.start) <= np.minimum(t + h, period.end - 1)


def _check_parts(ts: np.ndarray, assignment, horizon: int, embargo: int, purge=None) -> None:
    """Every invariant of a fold's parts, from the raw times (an independent reference)."""
    purge = purge or horizon
    by_fold: dict[int, list] = {}
    for part in assignment.parts:
        by_fold.setdefault(part.fold, []).append(part)
    for part in assignment.parts:
        w = part.window
        inside = (ts >= w.start) & (ts < w.end)
        crossing = inside & (ts + purge >= w.end)
        calm = embargo if part.split != "train" else 0
        waiting = inside & ~crossing & (ts < w.start + calm)
        assert np.array_equal(part.purged, np.flatnonzero(crossing))
        assert np.array_equal(part.embargoed, np.flatnonzero(waiting))
        assert np.array_equal(part.rows, np.flatnonzero(inside & ~crossing & ~waiting))
        kept = ts[part.rows]
        assert np.all(kept + horizon < w.end) and np.all(kept >= w.start + calm)
        for other in by_fold[part.fold]:
            if other is not part:
                assert not np.any(_crosses(kept, horizon, other.window)), (part, other)
                assert not np.any((kept >= other.window.start) & (kept < other.window.end))


def test_time_based_on_real_candles(jan):
    ts = jan["ts"]
    split = TimeSplit(
        train=Period(start=_day(1), end=_day(20)),
        validation=Period(start=_day(20), end=_day(26)),
        test=Period(start=_day(26), end=FEB),
    )
    a = assign_folds(ts, split, H, JAN, FEB)
    assert a.embargo_ms == a.purge_ms == H and a.folds == [0] and not a.warnings
    _check_parts(ts, a, H, H)
    # 1-minute grid, 5-minute horizon: 5 rows purged at each end, 5 embargoed at each start
    assert [len(p.rows) for p in a.parts] == [19 * 1440 - 5, 6 * 1440 - 10, 6 * 1440 - 10]
    assert [(len(p.purged), len(p.embargoed)) for p in a.parts] == [(5, 0), (5, 5), (5, 5)]
    labels = assign(ts, split, H)  # the single-split labeller agrees with the fold parts
    for code, part in enumerate(a.parts):
        assert np.array_equal(np.flatnonzero(labels == code), part.rows)
    assert np.sum(labels == PURGED) == 25
    longer = assign_folds(ts, split.model_copy(update={"embargo": "1h"}), H, JAN, FEB)
    assert [len(p.embargoed) for p in longer.parts] == [0, 60, 60]
    _check_parts(ts, longer, H, 60 * MIN)
    wider = assign_folds(ts, split.model_copy(update={"purge": "30m"}), H, JAN, FEB)
    assert [len(p.purged) for p in wider.parts] == [30, 30, 30]
    _check_parts(ts, wider, H, H, purge=30 * MIN)


def _fold_count(start: int, end: int, span_days: int, step_days: int) -> int:
    """Folds that fit, counted by stepping calendar days (independent of the implementation)."""
    first, last = (dt.datetime.fromtimestamp(x / 1000, dt.UTC) for x in (start, end))
    n = 0
    while first + dt.timedelta(days=n * step_days + span_days) <= last:
        n += 1
    return n


def test_walk_forward_on_real_candles_has_every_fold_that_fits(jan):
    ts = jan["ts"]
    wf = WalkForward(train_window_days=7, validation_window_days=2, test_window_days=1, step_days=3)
    a = assign_folds(ts, wf, H, JAN, FEB)
    assert a.folds == list(range(_fold_count(JAN, FEB, 10, 3))) == list(range(8))
    _check_parts(ts, a, H, H)
    for part in a.parts:
        starts = {"train": 0, "validation": 7, "test": 9}[part.split] + 3 * part.fold
        assert part.window.start == _day(1 + starts)
        assert len(part.rows) == {"train": 7, "validation": 2, "test": 1}[part.split] * 1440 - (
            5 if part.split == "train" else 10
        )
    # rows belong to several folds: fold 1's train holds fold 0's validation rows
    assert np.isin(a.part(0, "validation").rows, a.part(1, "train").rows).all()
    table = fold_table(a)
    assert len(table) == 8 and table[7]["test"]["end"] == "2022-02-01T00:00:00Z"
    assert table[0]["validation"] == {
        "start": "2022-01-08T00:00:00Z",
        "end": "2022-01-10T00:00:00Z",
        "rows": 2 * 1440 - 10,
        "purged": 5,
        "embargoed": 5,
    }
    meta = json.loads(json.dumps(split_metadata(a)))
    assert meta["embargo"] == "5m" and meta["leaks_through_time"] is False
    no_test = assign_folds(ts, wf.model_copy(update={"test_window_days": 0}), H, JAN, FEB)
    assert {p.split for p in no_test.parts} == {"train", "validation"}
    assert no_test.folds == list(range(_fold_count(JAN, FEB, 9, 3)))


def test_sklearn_splitter_yields_the_builder_folds(jan):
    ts, X, y = jan["ts"], jan["X"], jan["y"]
    ok = np.isfinite(X).all(axis=1) & np.isfinite(y)
    ts, X, y = ts[ok], X[ok], y[ok]
    wf = WalkForward(
        train_window_days=7,
        validation_window_days=2,
        test_window_days=1,
        step_days=3,
        embargo="15m",
        start=JAN,  # the dataset range, as the builder resolves it: rows alone end earlier
        end=FEB,
    )
    cv = PurgedWalkForward.from_config(wf, "5m", ts=ts)
    a = assign_folds(ts, wf, H, JAN, FEB)
    folds = list(cv.split(X, y))
    assert cv.get_n_splits(X) == len(folds) == len(a.folds) == 8
    for fold, (train, validation) in zip(a.folds, folds, strict=True):
        assert np.array_equal(train, a.part(fold, "train").rows)
        assert np.array_equal(validation, a.part(fold, "validation").rows)
    scores = cross_val_score(Ridge(alpha=1e-6), X, y, cv=cv)
    by_hand = [Ridge(alpha=1e-6).fit(X[tr], y[tr]).score(X[va], y[va]) for tr, va in folds]
    np.testing.assert_allclose(scores, by_hand, rtol=1e-12)
    same = PurgedWalkForward(7, 2, 3, H, test_window_days=1, embargo="15m", start=JAN, end=FEB)
    grouped = cross_val_score(Ridge(alpha=1e-6), X, y, cv=same, groups=ts)
    np.testing.assert_allclose(grouped, scores, rtol=1e-12)
    up = (y > 0).astype(int)
    accuracy = cross_val_score(LogisticRegression(), X * 1e3, up, cv=cv, scoring="accuracy")
    assert len(accuracy) == 8 and np.all((accuracy > 0.3) & (accuracy < 0.7))
    assert same.get_n_splits() == 8  # from the range alone, no rows needed
    from_rows = PurgedWalkForward(7, 2, 3, "5m", test_window_days=1, embargo="15m", ts=ts)
    assert from_rows.get_n_splits() == 7  # rows end at the last target: the 8th fold misses
    with pytest.raises(ValueError, match="needs the row times"):
        list(same.split(X))
    with pytest.raises(ValueError, match="row times for"):
        list(cv.split(X[:-1]))
    assert "PurgedWalkForward(" in repr(cv)


def test_random_split_is_seeded_and_says_it_leaks(jan):
    ts = jan["ts"]
    a = assign_folds(ts, RandomSplit(seed=7), H)
    rows = [p.rows for p in a.parts]
    assert [len(r) for r in rows] == [round(len(ts) * 0.7), round(len(ts) * 0.15), 6696]
    assert np.array_equal(np.sort(np.concatenate(rows)), np.arange(len(ts)))
    again = assign_folds(ts, RandomSplit(seed=7), H)
    assert all(np.array_equal(p.rows, q.rows) for p, q in zip(a.parts, again.parts, strict=True))
    other = assign_folds(ts, RandomSplit(seed=8), H)
    assert not np.array_equal(a.parts[0].rows, other.parts[0].rows)
    meta = split_metadata(a)
    assert meta["leaks_through_time"] is True and meta["note"] == RANDOM_LEAK_NOTE
    assert "leaks through time" in RANDOM_LEAK_NOTE and "tests only" in RANDOM_LEAK_NOTE
    assert RANDOM_LEAK_NOTE in a.warnings and "leaks through time" in RandomSplit.__doc__


@pytest.mark.parametrize(
    ("make", "error", "reason"),
    [
        (
            lambda: TimeSplit(
                train=Period(start=0, end=100 * MIN),
                validation=Period(start=50 * MIN, end=200 * MIN),
                test=Period(start=200 * MIN, end=300 * MIN),
            ),
            ValidationError,
            "validation period .* starts before train period .* ends",
        ),
        (
            lambda: TimeSplit(
                train=Period(start=0, end=100 * MIN),
                validation=Period(start=200 * MIN, end=300 * MIN),
                test=Period(start=100 * MIN, end=200 * MIN),
            ),
            ValidationError,
            "must be chronological",
        ),
        (
            lambda: WalkForward(train_window_days=0, validation_window_days=1, step_days=1),
            ValidationError,
            "train_window_days must be a positive number of days, got 0",
        ),
        (
            lambda: WalkForward(train_window_days=5, validation_window_days=-1, step_days=1),
            ValidationError,
            "validation_window_days must be a positive",
        ),
        (
            lambda: WalkForward(train_window_days=5, validation_window_days=1, step_days=0),
            ValidationError,
            "step_days must be a positive",
        ),
        (
            lambda: WalkForward(
                train_window_days=5, validation_window_days=1, test_window_days=-2, step_days=1
            ),
            ValidationError,
            "negative window would overlap",
        ),
        (
            lambda: WalkForward(
                train_window_days=5, validation_window_days=1, step_days=1, start=FEB, end=JAN
            ),
            ValidationError,
            "is not after its start",
        ),
        (
            lambda: WalkForward(
                train_window_days=5, validation_window_days=1, step_days=1, embargo="soon"
            ),
            ValidationError,
            "not a duration",
        ),
        (lambda: RandomSplit(fractions=(0.9, 0, 0.1)), ValidationError, "validation > 0"),
        (lambda: parse_split({"strategy": "shuffle"}), ValidationError, "time_based"),
        (
            lambda: assign_folds(
                [JAN],
                WalkForward(
                    train_window_days=20, validation_window_days=8, test_window_days=4, step_days=1
                ),
                H,
                JAN,
                FEB,
            ),
            SplitError,
            r"no walk-forward fold fits: one fold needs 32d \(train 20d \+ validation 8d \+ "
            r"test 4d\) but the range 2022-01-01T00:00:00Z → 2022-02-01T00:00:00Z lasts 31d",
        ),
        (
            lambda: assign_folds(
                [JAN],
                WalkForward(
                    train_window_days=5, validation_window_days=1, step_days=1, embargo="2m"
                ),
                H,
                JAN,
                FEB,
            ),
            SplitError,
            "embargo 2m is shorter than the target horizon 5m",
        ),
        (
            lambda: assign_folds(
                [JAN],
                TimeSplit.by_fractions(JAN, FEB, MIN).model_copy(update={"purge": "4m"}),
                H,
                JAN,
                FEB,
            ),
            SplitError,
            "purge 4m is shorter than the target horizon 5m: a row whose target reaches past "
            "its window's end would be kept",
        ),
        (
            lambda: assign_folds(
                [JAN],
                WalkForward(
                    train_window_days=5, validation_window_days=1, step_days=1, start=JAN - MIN
                ),
                H,
                JAN,
                FEB,
            ),
            SplitError,
            "leaves the dataset range",
        ),
        (
            lambda: assign_folds(
                [JAN],
                WalkForward(train_window_days=5, validation_window_days=6 / 1440, step_days=1),
                H,
                JAN,
                FEB,
            ),
            SplitError,
            r"validation window .* lasts 6m, not longer than the purge 5m \+ embargo 5m: "
            "every row would be purged",
        ),
        (
            lambda: assign_folds(
                [JAN],
                TimeSplit(
                    train=Period(start=JAN, end=JAN + H),
                    validation=Period(start=JAN + H, end=JAN + 20 * MIN),
                    test=Period(start=JAN + 20 * MIN, end=FEB),
                ),
                H,
                JAN,
                FEB,
            ),
            SplitError,
            "train window .* lasts 5m, not longer than the purge 5m:",
        ),
        (
            lambda: assign_folds([JAN], TimeSplit.by_fractions(JAN, FEB + MIN, MIN), H, JAN, FEB),
            SplitError,
            "leave the range",
        ),
        (
            lambda: assign_folds([JAN], RandomSplit(), 0, JAN, FEB),
            SplitError,
            "horizon must be positive",
        ),
        (
            lambda: PurgedWalkForward(5, 1, 0, "5m"),
            ValidationError,
            "step_days must be a positive",
        ),
    ],
)
def test_leaking_configurations_are_refused_saying_why(make, error, reason):
    with pytest.raises(error, match=reason):
        make()


def test_an_empty_test_split_is_a_warning_not_an_error(jan):
    ts = jan["ts"]
    data_ends = TimeSplit(
        train=Period(start=_day(1), end=_day(20)),
        validation=Period(start=_day(20), end=FEB),
        test=Period(start=FEB, end=FEB + 86_400_000),  # no rows after January
    )
    a = assign_folds(ts, data_ends, H, JAN, FEB + 86_400_000)
    assert len(a.part(0, "test").rows) == 0 and len(a.part(0, "validation").rows) > 0
    assert a.warnings == (
        "fold 0 test split [2022-02-01T00:00:00Z, 2022-02-02T00:00:00Z) is empty "
        "(0 purged, 0 embargoed)",
    )
    short_test = WalkForward(
        train_window_days=7, validation_window_days=2, test_window_days=8 / 1440, step_days=10
    )
    b = assign_folds(ts, short_test, H, JAN, FEB)  # an 8-minute test window: 5 purged, 3 embargoed
    assert [len(b.part(f, "test").embargoed) for f in b.folds] == [3, 3, 3]
    assert len(b.warnings) == 3 and all("test split" in w and "empty" in w for w in b.warnings)
    assert split_metadata(b)["warnings"] == list(b.warnings)


# --- properties over random configurations ------------------------------------------------


@st.composite
def walk_forward_case(draw):
    minutes = st.integers(1, 240)
    train, validation, step = draw(minutes), draw(minutes), draw(minutes)
    test = draw(st.sampled_from([0, 0, *range(1, 120)]))
    horizon = draw(st.integers(1, 30)) * MIN
    embargo = draw(st.one_of(st.none(), st.integers(0, 40).map(lambda m: m * MIN)))
    purge = draw(st.one_of(st.none(), st.integers(0, 40).map(lambda m: m * MIN)))
    length = max(1, train + validation + test + draw(st.integers(-60, 600))) * MIN
    start = JAN + draw(st.integers(0, 1440)) * MIN
    config = WalkForward(
        train_window_days=train / 1440,
        validation_window_days=validation / 1440,
        test_window_days=test / 1440,
        step_days=step / 1440,
        purge=purge,
        embargo=embargo,
    )
    grid = start + np.arange(0, length, MIN) if draw(st.integers(0, 4)) else []  # or sparse
    extra = draw(st.lists(st.integers(start - 60 * MIN, start + length + 60 * MIN), max_size=60))
    ts = draw(st.permutations(np.r_[grid, extra].astype(np.int64).tolist()))
    windows = [train * MIN, validation * MIN, test * MIN]
    return config, np.array(ts, dtype=np.int64), horizon, start, start + length, windows, step


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(walk_forward_case())
def test_walk_forward_never_leaks_and_purges_exactly_the_crossing_rows(case):
    config, ts, horizon, start, end, windows, step = case
    assert list(config.windows_ms) == windows and config.step_ms == step * MIN
    embargo = horizon if config.embargo is None else config.embargo
    purge = horizon if config.purge is None else config.purge
    span = sum(windows)
    named = [(n, w) for n, w in zip(SPLITS, windows, strict=True) if w]
    why = None
    if purge < horizon:
        why = "purge .* is shorter than the target horizon"
    elif embargo < horizon:
        why = "embargo .* is shorter than the target horizon"
    elif span > end - start:
        why = "no walk-forward fold fits"
    elif windows[0] <= purge:
        why = "train window"
    elif windows[1] <= purge + embargo:
        why = "validation window"
    event(why or "accepted")
    if why:
        with pytest.raises(SplitError, match=why):
            assign_folds(ts, config, horizon, start, end)
        return
    a = assign_folds(ts, config, horizon, start, end)
    n = 0
    while start + n * step * MIN + span <= end:  # every fold that fits, none that does not
        n += 1
    assert a.folds == list(range(n))
    for fold in range(n):
        at = start + fold * step * MIN
        for name, length in named:  # consecutive windows, fold k + 1 shifted by the step
            assert a.part(fold, name).window == Period(start=at, end=at + length)
            at += length
    assert len(a.parts) == n * len(named)
    _check_parts(ts, a, horizon, embargo, purge)
    empty = {(p.fold, p.split) for p in a.parts if not len(p.rows)}
    assert len(a.warnings) == len(empty)
    cv = PurgedWalkForward.from_config(config, horizon, ts=ts)
    cv.start, cv.end = start, end
    event(f"empty parts: {sorted({split for _, split in empty})}")
    if any(split != "test" for _, split in empty):
        with pytest.raises(ValueError, match="survive purging/embargo"):
            list(cv.split(ts))
    else:
        pairs = list(cv.split(ts))
        assert cv.get_n_splits() == len(pairs) == n
        for fold, (train, validation) in enumerate(pairs):
            assert np.array_equal(train, a.part(fold, "train").rows)
            assert np.array_equal(validation, a.part(fold, "validation").rows)


@st.composite
def time_split_case(draw):
    cuts = sorted(draw(st.lists(st.integers(0, 3000), min_size=6, max_size=6, unique=True)))
    if draw(st.integers(0, 3)) == 0:
        cuts = draw(st.permutations(cuts))  # most likely out of order
    horizon = draw(st.integers(1, 60)) * MIN
    embargo = draw(st.one_of(st.none(), st.integers(60, 120).map(lambda m: m * MIN)))
    ts = draw(
        st.lists(st.integers(-10, 3010).map(lambda m: m * MIN), max_size=400)
        | st.just(list(range(-5 * MIN, 3005 * MIN, MIN)))
    )
    return cuts, horizon, embargo, np.array(ts, dtype=np.int64)


@settings(max_examples=150, deadline=None)
@given(time_split_case())
def test_time_split_is_refused_when_out_of_order_and_never_leaks(case):
    cuts, horizon, embargo, ts = case
    periods = [(cuts[i] * MIN, cuts[i + 1] * MIN) for i in (0, 2, 4)]
    chronological = all(s < e for s, e in periods) and all(
        periods[i][1] <= periods[i + 1][0] for i in range(2)
    )
    event(f"chronological: {chronological}")
    if not chronological:
        with pytest.raises(ValidationError, match=r"before it starts|must not overlap"):
            TimeSplit(
                **{n: Period(start=s, end=e) for n, (s, e) in zip(SPLITS, periods, strict=True)}
            )
        return
    split = TimeSplit(
        embargo=embargo,
        **{n: Period(start=s, end=e) for n, (s, e) in zip(SPLITS, periods, strict=True)},
    )
    wait = horizon if embargo is None else embargo
    lengths = [e - s for s, e in periods]
    event(f"too short: {lengths[0] <= horizon or lengths[1] <= horizon + wait}")
    if lengths[0] <= horizon or lengths[1] <= horizon + wait:
        with pytest.raises(SplitError, match="every row would be purged or embargoed"):
            assign_folds(ts, split, horizon, 0, 3000 * MIN)
        return
    a = assign_folds(ts, split, horizon, 0, 3000 * MIN)
    _check_parts(ts, a, horizon, wait)
    labels = assign(ts, split, horizon)
    for code, part in enumerate(a.parts):
        assert np.array_equal(np.flatnonzero(labels == code), part.rows)
        dropped = np.r_[part.purged, part.embargoed]
        assert np.all(labels[dropped] == PURGED)
