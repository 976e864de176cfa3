"""Dataset quality: hand-computed expectations on small tables, and the real January 2022
candles with gaps cut out (coverage and largest gap exact); pandas/scipy as references."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from scipy.stats import median_abs_deviation

from featlib.quality import QualityConfig, QualityError, pairwise_correlation, quality_report

MIN = 60_000
T0 = 1_641_772_800_000  # 2022-01-10T00:00:00Z
NAN, INF = float("nan"), float("inf")


def _small() -> pa.Table:
    """10 BTCUSDT rows on a 1-minute grid with two gaps, plus 3 gap-free ETHUSDT rows."""
    minutes = [0, 1, 2, 5, 6, 7, 8, 20, 21, 22]
    a = [1.0, 2.0, None, 4.0, NAN, 6.0, 7.0, None, 9.0, 10.0]
    return pa.table(
        {
            "ts": pa.array([T0 + m * MIN for m in minutes] + [T0, T0 + MIN, T0 + 2 * MIN]),
            "symbol": ["BTCUSDT"] * 10 + ["ETHUSDT"] * 3,
            "a": [*a, 11.0, 12.0, 13.0],
            "b": [None if v is None else 2 * v + 1 for v in a] + [23.0, 25.0, 27.0],
            "neg_a": [None if v is None else -v for v in a] + [-11.0, -12.0, -13.0],
            "flat": [5.0] * 13,
            "empty": pa.array([None] * 13, pa.float64()),
            "wild": [1.0, INF, 3.0, -INF, 2.0, 0.0, 1.0, 3.0, 2.0, 0.0, 1.0, 2.0, 2.0],
            "count": pa.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9], pa.int32()),
            "venue": ["bybit"] * 13,
            "target_return": [
                *(0.001, -0.002, None, 0.6, 0.0, 0.001, -0.001, 0.002, 0.0, 0.001),
                *(0.0, 0.001, -0.001),
            ],
            "target_direction": pa.array([1] * 12 + [0], pa.int8()),
        }
    )


def test_features_by_hand():
    report, warnings = quality_report(_small(), MIN)
    cols = report["features"]["columns"]
    a = [1, 2, 4, 6, 7, 9, 10, 11, 12, 13]
    assert cols["a"] == {
        "nulls": 3,
        "null_ratio": 3 / 13,
        "infinities": 0,
        "constant": False,
        "min": 1.0,
        "max": 13.0,
        "mean": sum(a) / 10,
        "std": pytest.approx(math.sqrt(sum((x - 7.5) ** 2 for x in a) / 10)),
    }
    wild = [1, 3, 2, 0, 1, 3, 2, 0, 1, 2, 2]
    assert cols["wild"]["infinities"] == 2 and cols["wild"]["nulls"] == 0
    assert (cols["wild"]["min"], cols["wild"]["max"]) == (0.0, 3.0)
    assert cols["wild"]["mean"] == pytest.approx(17 / 11)
    assert cols["wild"]["std"] == pytest.approx(np.std(wild))
    assert cols["count"]["mean"] == pytest.approx(61 / 13)
    assert cols["flat"]["constant"] and cols["empty"]["constant"] and cols["venue"]["constant"]
    assert cols["empty"] == {
        "nulls": 13,
        "null_ratio": 1.0,
        "infinities": 0,
        "constant": True,
        "min": None,
        "max": None,
        "mean": None,
        "std": None,
    }
    assert cols["venue"] == {"type": "string", "nulls": 0, "null_ratio": 0.0, "constant": True}
    assert report["features"]["constant"] == ["flat", "empty", "venue"]
    pairs = {(p["a"], p["b"]): p["r"] for p in report["features"]["correlated_pairs"]}
    assert pairs == {
        ("a", "b"): pytest.approx(1.0),
        ("a", "neg_a"): pytest.approx(-1.0),
        ("b", "neg_a"): pytest.approx(-1.0),
    }
    assert "feature a: 3 null (23.1%)" in warnings
    assert "feature wild: 2 infinite values" in warnings
    assert "constant features (one value or all null): flat, empty, venue" in warnings
    assert any(
        w.startswith("3 highly correlated feature pair(s) (|r| > 0.95): a ~ b") for w in warnings
    )
    assert "ts" not in cols and "symbol" not in cols and "target_return" not in cols
    json.dumps(report, allow_nan=False)


def test_targets_by_hand():
    report, warnings = quality_report(_small(), MIN)
    direction = report["targets"]["target_direction"]
    assert direction["kind"] == "classification" and direction["missing"] == 0
    assert direction["classes"] == {
        "0": {"count": 1, "share": 1 / 13},
        "1": {"count": 12, "share": 12 / 13},
    }
    assert "target_direction: class 1 is 92.3% of the targets (above 80%): imbalanced" in warnings
    ret = report["targets"]["target_return"]
    assert ret["kind"] == "regression" and ret["missing"] == 1 and ret["missing_ratio"] == 1 / 13
    values = np.array(
        [0.001, -0.002, 0.6, 0.0, 0.001, -0.001, 0.002, 0.0, 0.001, 0.0, 0.001, -0.001]
    )
    assert ret["median"] == pytest.approx(np.median(values))
    sigma = median_abs_deviation(values, scale="normal")
    assert ret["robust_sigma"] == pytest.approx(sigma)
    beyond = int(np.sum(np.abs(values - np.median(values)) > 10 * sigma))
    assert ret["extreme"] == {"count": 1, "beyond_sigmas": beyond, "beyond_abs": 1}
    assert "target_return: 1 missing target(s)" in warnings
    assert any(w.startswith("target_return: 1 extreme value(s)") for w in warnings)
    _, quiet = quality_report(_small(), MIN, QualityConfig(max_class_share=0.95))
    assert not any("imbalanced" in w for w in quiet)


def test_continuity_by_hand():
    report, warnings = quality_report(_small(), MIN)
    btc = report["continuity"]["symbols"]["BTCUSDT"]
    assert btc == {
        "first": "2022-01-10T00:00:00Z",
        "last": "2022-01-10T00:22:00Z",
        "rows": 10,
        "duplicates": 0,
        "off_grid": 0,
        "expected_rows": 23,
        "actual_rows": 10,
        "coverage": 10 / 23,
        "gap_count": 2,
        "largest_gap_ms": 11 * MIN,
        "largest_gap": "11m",
        "gaps": [
            {"start": "2022-01-10T00:03:00Z", "end": "2022-01-10T00:05:00Z", "missing_rows": 2},
            {"start": "2022-01-10T00:09:00Z", "end": "2022-01-10T00:20:00Z", "missing_rows": 11},
        ],
        "severity": "critical",  # coverage 43% < 95%
    }
    eth = report["continuity"]["symbols"]["ETHUSDT"]
    assert (eth["coverage"], eth["gap_count"], eth["largest_gap"], eth["severity"]) == (
        1.0,
        0,
        "none",
        "ok",
    )
    assert report["continuity"]["severity"] == "critical"
    assert warnings[0].startswith("critical: BTCUSDT covers 43.48% of the 1m grid")
    loose = QualityConfig(coverage_warning=0.5, coverage_critical=0.4, gap_warning="10m")
    assert quality_report(_small(), MIN, loose)[0]["continuity"]["severity"] == "warning"
    looser = loose.model_copy(update={"coverage_warning": 0.4, "gap_warning": "11m"})
    assert quality_report(_small(), MIN, looser)[0]["continuity"]["severity"] == "ok"
    with pytest.raises(QualityError, match=r"critical gaps .*\n  critical: BTCUSDT covers 43"):
        quality_report(_small(), MIN, QualityConfig(fail_on_critical=True))
    t = _small()
    for unit in ("ms", "us", "s"):  # timestamps of any unit read as the same instants
        ms = pc.cast(t["ts"], pa.timestamp("ms", tz="UTC"))
        stamped = t.set_column(0, "ts", pc.cast(ms, pa.timestamp(unit, tz="UTC")))
        assert quality_report(stamped, MIN)[0]["continuity"] == report["continuity"]
    doubled = pa.concat_tables([t, t.slice(0, 2)])
    dup = quality_report(doubled, MIN)[0]["continuity"]["symbols"]["BTCUSDT"]
    assert (dup["rows"], dup["duplicates"], dup["actual_rows"]) == (12, 2, 10)


@pytest.fixture(scope="module")
def candles(jan_tables) -> pa.Table:
    """Real BTCUSDT candles as a feature/target table, with two gaps cut out of 10 January."""
    k = jan_tables["klines"]
    close = k["close"].to_numpy()
    r1 = np.r_[np.nan, close[1:] / close[:-1] - 1]
    r5 = np.r_[np.full(5, np.nan), close[5:] / close[:-5] - 1]
    target = np.r_[close[5:] / close[:-5] - 1, np.full(5, np.nan)]
    table = pa.table(
        {
            "ts": k["ts"],
            "symbol": k["symbol"],
            "close": close,
            "close_x2": close * 2,
            "r1": r1,
            "r5": r5,
            "log_volume": np.log1p(k["volume"].to_numpy()),
            "target_return": target,
            "target_direction": pa.array(np.sign(np.nan_to_num(target)).astype(np.int8)),
        }
    )
    ts = k["ts"].cast(pa.int64()).to_numpy()
    cut = ((ts >= T0 + 12 * 60 * MIN) & (ts < T0 + 15.5 * 60 * MIN)) | (
        (ts >= T0 + 20 * 60 * MIN) & (ts < T0 + 20 * 60 * MIN + 7 * MIN)
    )
    assert cut.sum() == 210 + 7
    return table.filter(pa.array(~cut))


def test_real_candles_with_gaps_cut_out(candles):
    report, warnings = quality_report(candles, MIN)
    btc = report["continuity"]["symbols"]["BTCUSDT"]
    expected = (1_643_693_520_000 - 1_640_991_720_000) // MIN + 1  # 2021-12-31T23:02 → 02-01T05:32
    assert btc["expected_rows"] == expected == 45_031
    assert btc["actual_rows"] == candles.num_rows == expected - 217
    assert btc["coverage"] == (expected - 217) / expected
    assert (btc["gap_count"], btc["largest_gap_ms"], btc["largest_gap"]) == (2, 210 * MIN, "210m")
    assert btc["gaps"] == [
        {"start": "2022-01-10T12:00:00Z", "end": "2022-01-10T15:30:00Z", "missing_rows": 210},
        {"start": "2022-01-10T20:00:00Z", "end": "2022-01-10T20:07:00Z", "missing_rows": 7},
    ]
    assert btc["severity"] == "warning"  # 99.5% coverage is fine; a 3.5 h gap is not
    assert warnings[0] == (
        "warning: BTCUSDT covers 99.52% of the 1m grid 2021-12-31T23:02:00Z → "
        "2022-02-01T05:32:00Z (2 gap(s), largest 210m)"
    )
    with pytest.raises(QualityError, match="largest 210m"):
        quality_report(candles, MIN, QualityConfig(gap_critical="3h", fail_on_critical=True))
    cols = report["features"]["columns"]
    low, high = pc.min_max(candles["close"]).values()
    assert (cols["close"]["min"], cols["close"]["max"]) == (low.as_py(), high.as_py())
    assert cols["r5"]["nulls"] == 5 and cols["r1"]["nulls"] == 1
    assert cols["r1"]["std"] == pytest.approx(np.nanstd(candles["r1"].to_numpy()), rel=1e-9)
    pairs = report["features"]["correlated_pairs"]
    assert [(p["a"], p["b"]) for p in pairs] == [("close", "close_x2")]
    assert pairs[0]["r"] == pytest.approx(1.0, abs=1e-12)
    ret = report["targets"]["target_return"]
    values = candles["target_return"].to_numpy()
    values = values[np.isfinite(values)]
    sigma = median_abs_deviation(values, scale="normal")
    assert ret["robust_sigma"] == pytest.approx(sigma, rel=1e-12)
    extreme = np.abs(values - np.median(values)) > 10 * sigma
    assert ret["extreme"]["count"] == ret["extreme"]["beyond_sigmas"] == extreme.sum() > 0
    assert ret["missing"] == 5 and ret["extreme"]["beyond_abs"] == 0
    shares = report["targets"]["target_direction"]["classes"]
    assert sum(c["count"] for c in shares.values()) == candles.num_rows
    assert set(shares) == {"-1", "0", "1"}
    json.dumps(report, allow_nan=False)


def test_pairwise_correlation_matches_pandas_on_real_features(candles):
    x = np.column_stack(
        [candles[c].to_numpy() for c in ("close", "r1", "r5", "log_volume", "target_return")]
    )
    x[::97, 3] = np.nan  # gaps at different rows per column: pairwise-complete rows
    x[5:40, 0] = np.inf
    ref = pd.DataFrame(np.where(np.isfinite(x), x, np.nan)).corr().to_numpy()
    np.testing.assert_allclose(pairwise_correlation(x), ref, atol=1e-12)


def test_fast_enough_for_a_day_of_seconds_by_fifty_features():
    rng = np.random.default_rng(5)
    n, p = 86_400, 50
    x = rng.normal(size=(n, p)).cumsum(axis=0)
    x[rng.integers(0, n, 1_000), 7] = np.nan
    columns = {"ts": pa.array(T0 + np.arange(n) * 1_000), "symbol": pa.array(["BTCUSDT"] * n)}
    columns |= {f"f{j}": x[:, j] for j in range(p)}
    columns["target_return"] = rng.normal(0, 1e-3, n)
    table = pa.table(columns)
    started = time.perf_counter()
    report, _ = quality_report(table, 1_000)
    elapsed = time.perf_counter() - started
    assert report["continuity"]["symbols"]["BTCUSDT"]["coverage"] == 1.0
    assert len(report["features"]["columns"]) == p
    assert elapsed < 5, f"quality report took {elapsed:.2f}s for {n:,} × {p}"
