"""Dataset quality for metadata.json: features, targets and timestamp continuity.

    report, warnings = quality_report(table, step_ms)

`table` is the final feature/target table: `ts` (int64 epoch ms or a timestamp), `symbol`,
feature columns and `target_*` columns. Missing means null or NaN; statistics are over finite
values (std with ddof 0). Everything is whole-column numpy/pyarrow work, no per-row Python.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field
from threadpoolctl import threadpool_limits  # scikit-learn's dependency

from featlib.timeutil import format_duration, iso, parse_duration

Severity = Literal["ok", "warning", "critical"]
SEVERITIES: tuple[Severity, ...] = ("ok", "warning", "critical")
BOOKKEEPING = ("ts", "symbol", "fold", "split")
ROBUST_SIGMA = 1.482602218505602  # sigma of a normal distribution per unit of median |x − median|


class QualityError(ValueError):
    """The data fails a critical quality check the caller asked to enforce."""


class QualityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    correlation_threshold: float = Field(default=0.95, gt=0, le=1)
    max_class_share: float = Field(default=0.8, gt=0, le=1)
    null_ratio_warning: float = Field(default=0.01, ge=0, le=1)
    extreme_sigmas: float = Field(default=10.0, gt=0, description="robust sigmas off the median")
    extreme_abs_return: float = Field(default=0.5, gt=0, description="|target_return| beyond")
    coverage_warning: float = Field(default=0.99, ge=0, le=1)
    coverage_critical: float = Field(default=0.95, ge=0, le=1)
    gap_warning: str | int = "15m"
    gap_critical: str | int = "6h"
    fail_on_critical: bool = False
    gaps_listed: int = Field(default=10, ge=0)


def _num(value: Any) -> float | None:
    """A JSON-safe float: NaN and infinities become None."""
    value = float(value)
    return value if np.isfinite(value) else None


def _is_numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _matrix(table: pa.Table, columns: list[str]) -> np.ndarray:
    """Columns as a float64 (rows × columns) column-major matrix, NaN where null."""
    out = np.empty((table.num_rows, len(columns)), dtype=np.float64, order="F")
    for j, name in enumerate(columns):
        out[:, j] = pc.cast(table[name], pa.float64()).to_numpy(zero_copy_only=False)
    return out


def _column_stats(v: np.ndarray) -> dict[str, Any]:
    """Nulls (null or NaN), infinities, constant, and min/max/mean/std of the finite values."""
    finite = np.isfinite(v)
    values = v if finite.all() else v[finite]
    present = v[~np.isnan(v)]
    return {
        "nulls": len(v) - len(present),
        "null_ratio": (len(v) - len(present)) / len(v) if len(v) else None,
        "infinities": len(present) - len(values),
        "constant": bool(not len(present) or present.min() == present.max()),
        "min": _num(values.min()) if len(values) else None,
        "max": _num(values.max()) if len(values) else None,
        "mean": _num(values.mean()) if len(values) else None,
        "std": _num(values.std()) if len(values) else None,
    }


@threadpool_limits.wrap(limits=1, user_api="blas")  # small products; threads only contend
def pairwise_correlation(x: np.ndarray) -> np.ndarray:
    """Pearson r of every column pair over the rows where both are finite (NaN if undefined)."""
    valid = np.isfinite(x)
    complete = valid.all(axis=0)
    count = valid.sum(axis=0)
    mean = np.where(valid, x, 0.0).sum(axis=0) / np.maximum(count, 1)
    centred = np.where(valid, x - mean, 0.0)
    r = np.full((x.shape[1], x.shape[1]), np.nan)
    whole = np.flatnonzero(complete)  # one product for the columns without gaps
    if len(whole):
        c = centred[:, whole]
        cov = c.T @ c
        var = np.diag(cov)
        flat = var <= 1e-24 * (var + count[whole] * mean[whole] ** 2)  # constant up to rounding
        with np.errstate(divide="ignore", invalid="ignore"):
            block = cov / np.sqrt(np.outer(var, var))
        block[flat, :] = block[:, flat] = np.nan
        r[np.ix_(whole, whole)] = block
    part = np.flatnonzero(~complete)  # columns with gaps: over the rows both columns have
    if len(part):
        w = valid.astype(np.float64)
        wp, cp = w[:, part], centred[:, part]
        n = wp.T @ w
        s_p, s_j = cp.T @ w, (centred.T @ wp).T  # sums of column p / j where both are finite
        sq_p, sq_j = (cp**2).T @ w, ((centred**2).T @ wp).T
        with np.errstate(divide="ignore", invalid="ignore"):
            cov = cp.T @ centred - s_p * s_j / n
            var_p, var_j = sq_p - s_p**2 / n, sq_j - s_j**2 / n
            block = cov / np.sqrt(var_p * var_j)
        block[(n < 2) | (var_p <= 1e-12 * sq_p) | (var_j <= 1e-12 * sq_j)] = np.nan
        r[part, :] = block
        r[:, part] = block.T
    return np.clip(r, -1.0, 1.0)


def feature_quality(
    table: pa.Table, columns: list[str], config: QualityConfig
) -> tuple[dict[str, Any], list[str]]:
    """Per feature: nulls, infinities, constant, basic stats; highly correlated pairs."""
    rows = table.num_rows
    numeric = [c for c in columns if _is_numeric(table.schema.field(c).type)]
    x = _matrix(table, numeric)
    report: dict[str, Any] = {name: _column_stats(x[:, j]) for j, name in enumerate(numeric)}
    for name in columns:
        if name not in report:  # strings and other non-numeric features
            column = table[name]
            report[name] = {
                "type": str(column.type),
                "nulls": column.null_count,
                "null_ratio": column.null_count / rows if rows else None,
                "constant": pc.count_distinct(column, mode="only_valid").as_py() <= 1,
            }
    constant = [n for n in columns if report[n]["constant"]]
    usable = [j for j, n in enumerate(numeric) if not report[n]["constant"]]
    r = pairwise_correlation(x[:, usable]) if usable else np.empty((0, 0))
    i, k = np.nonzero(np.triu(np.abs(np.nan_to_num(r)) > config.correlation_threshold, 1))
    pairs = sorted(
        (
            {"a": numeric[usable[a]], "b": numeric[usable[b]], "r": float(r[a, b])}
            for a, b in zip(i, k, strict=True)
        ),
        key=lambda p: -abs(p["r"]),
    )
    warnings = []
    for name in columns:
        info = report[name]
        if rows and info["nulls"] and info["nulls"] / rows > config.null_ratio_warning:
            warnings.append(f"feature {name}: {info['nulls']:,} null ({info['nulls'] / rows:.1%})")
        if info.get("infinities"):
            warnings.append(f"feature {name}: {info['infinities']:,} infinite values")
    if constant:
        warnings.append(f"constant features (one value or all null): {', '.join(constant)}")
    if pairs:
        shown = ", ".join(f"{p['a']} ~ {p['b']} (r={p['r']:.3f})" for p in pairs[:5])
        more = f" and {len(pairs) - 5} more" if len(pairs) > 5 else ""
        warnings.append(
            f"{len(pairs)} highly correlated feature pair(s) (|r| > "
            f"{config.correlation_threshold}): {shown}{more}"
        )
    summary = {
        "columns": report,
        "constant": constant,
        "correlated_pairs": pairs,
        "correlation_threshold": config.correlation_threshold,
    }
    return summary, warnings


def target_quality(
    table: pa.Table, columns: list[str], config: QualityConfig
) -> tuple[dict[str, Any], list[str]]:
    """Per target: missing values; class balance (integer targets) or stats and extremes."""
    rows = table.num_rows
    report: dict[str, Any] = {}
    warnings = []
    for name in columns:
        column = table[name]
        kind = column.type
        if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
            missing = column.null_count
            counts = pc.value_counts(column.drop_null()).to_pylist()
            known = rows - missing
            classes = {
                str(c["values"]): {"count": c["counts"], "share": c["counts"] / known}
                for c in sorted(counts, key=lambda c: c["values"])
            }
            report[name] = {"kind": "classification", "missing": missing, "classes": classes}
            top = max(classes.items(), key=lambda kv: kv[1]["count"], default=None)
            if top and top[1]["share"] > config.max_class_share:
                warnings.append(
                    f"{name}: class {top[0]} is {top[1]['share']:.1%} of the targets "
                    f"(above {config.max_class_share:.0%}): imbalanced"
                )
        else:
            x = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
            finite = x[np.isfinite(x)]
            missing = int(np.isnan(x).sum())
            median = float(np.median(finite)) if len(finite) else float("nan")
            sigma = ROBUST_SIGMA * float(np.median(np.abs(finite - median))) if len(finite) else 0
            by_sigma = np.abs(finite - median) > config.extreme_sigmas * sigma if sigma else None
            by_abs = np.abs(finite) > config.extreme_abs_return if name == "target_return" else None
            flags = [f for f in (by_sigma, by_abs) if f is not None]
            extreme = np.logical_or.reduce(flags) if flags else np.zeros(len(finite), bool)
            report[name] = {
                "kind": "regression",
                "missing": missing,
                "infinities": int(len(x) - missing - len(finite)),
                "min": _num(finite.min()) if len(finite) else None,
                "max": _num(finite.max()) if len(finite) else None,
                "mean": _num(finite.mean()) if len(finite) else None,
                "std": _num(finite.std()) if len(finite) else None,
                "median": _num(median),
                "robust_sigma": _num(sigma),
                "extreme": {
                    "count": int(extreme.sum()),
                    "beyond_sigmas": int(by_sigma.sum()) if by_sigma is not None else 0,
                    "beyond_abs": int(by_abs.sum()) if by_abs is not None else 0,
                },
            }
            if extreme.any():
                rule = f"{config.extreme_sigmas:g} robust sigmas off the median"
                if by_abs is not None:
                    rule += f" or |r| > {config.extreme_abs_return:g}"
                warnings.append(f"{name}: {int(extreme.sum()):,} extreme value(s) ({rule})")
        report[name]["missing_ratio"] = report[name]["missing"] / rows if rows else None
        if report[name]["missing"]:
            warnings.append(f"{name}: {report[name]['missing']:,} missing target(s)")
    return report, warnings


def _epoch_ms(ts: pa.ChunkedArray) -> np.ndarray:
    """int64 epoch ms from int64 ms or a timestamp of any unit."""
    if pa.types.is_timestamp(ts.type):
        per_ms = {"s": -1000, "ms": 1, "us": 1000, "ns": 1_000_000}[ts.type.unit]
        raw = pc.cast(ts, pa.int64()).to_numpy()
        return raw * -per_ms if per_ms < 0 else raw // per_ms
    return pc.cast(ts, pa.int64()).to_numpy()


def _severity(coverage: float, largest_gap: int, config: QualityConfig) -> Severity:
    if coverage < config.coverage_critical or largest_gap > parse_duration(config.gap_critical):
        return "critical"
    if coverage < config.coverage_warning or largest_gap > parse_duration(config.gap_warning):
        return "warning"
    return "ok"


def continuity(
    table: pa.Table, step_ms: int, config: QualityConfig
) -> tuple[dict[str, Any], list[str]]:
    """Per symbol: expected vs actual grid rows, coverage, gaps (count, largest, first few)."""
    ts = _epoch_ms(table["ts"])
    if "symbol" in table.column_names:
        encoded = pc.dictionary_encode(table["symbol"]).combine_chunks()
        codes, names = encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary
    else:
        codes, names = np.zeros(len(ts), dtype=np.int32), pa.array(["*"])
    order = np.lexsort((ts, codes))
    ts, codes = ts[order], codes[order]
    bounds = np.flatnonzero(np.diff(codes)) + 1
    symbols: dict[str, Any] = {}
    warnings = []
    for chunk in np.split(np.arange(len(ts)), bounds) if len(ts) else []:
        name = str(names[int(codes[chunk[0]])])
        times = np.unique(ts[chunk])
        first, last = int(times[0]), int(times[-1])
        on_grid = (times - first) % step_ms == 0
        expected = (last - first) // step_ms + 1
        actual = int(on_grid.sum())
        diffs = np.diff(times)
        at = np.flatnonzero(diffs > step_ms)
        spans = diffs[at] - step_ms  # missing time between two present rows
        largest = int(spans.max()) if len(spans) else 0
        coverage = actual / expected
        severity = _severity(coverage, largest, config)
        symbols[name] = {
            "first": iso(first),
            "last": iso(last),
            "rows": len(chunk),
            "duplicates": len(chunk) - len(times),
            "off_grid": int((~on_grid).sum()),
            "expected_rows": expected,
            "actual_rows": actual,
            "coverage": coverage,
            "gap_count": len(at),
            "largest_gap_ms": largest,
            "largest_gap": format_duration(largest) if largest else "none",
            "gaps": [
                {
                    "start": iso(int(times[i]) + step_ms),
                    "end": iso(int(times[i + 1])),
                    "missing_rows": int((diffs[i] - 1) // step_ms),
                }
                for i in at[: config.gaps_listed]
            ],
            "severity": severity,
        }
        info = symbols[name]
        if severity != "ok":
            warnings.append(
                f"{severity}: {name} covers {coverage:.2%} of the {format_duration(step_ms)} "
                f"grid {info['first']} → {info['last']} ({len(at):,} gap(s), largest "
                f"{info['largest_gap']})"
            )
        if info["duplicates"] or info["off_grid"]:
            warnings.append(
                f"{name}: {info['duplicates']:,} duplicate and {info['off_grid']:,} off-grid "
                "timestamps"
            )
    worst = max((s["severity"] for s in symbols.values()), key=SEVERITIES.index, default="ok")
    summary = {
        "step_ms": step_ms,
        "thresholds": {
            "coverage_warning": config.coverage_warning,
            "coverage_critical": config.coverage_critical,
            "gap_warning": format_duration(parse_duration(config.gap_warning)),
            "gap_critical": format_duration(parse_duration(config.gap_critical)),
        },
        "severity": worst,
        "symbols": symbols,
    }
    return summary, warnings


def quality_report(
    table: pa.Table,
    step_ms: int,
    config: QualityConfig | None = None,
    *,
    features: list[str] | None = None,
    targets: list[str] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The quality record (JSON-ready) and human-readable warnings; raises QualityError on a
    critical continuity problem when `config.fail_on_critical`. Targets default to the
    `target_*` columns, features to the other columns but ts/symbol/fold/split."""
    config = config or QualityConfig()
    if targets is None:
        targets = [c for c in table.column_names if c.startswith("target_")]
    if features is None:
        features = [c for c in table.column_names if c not in (*BOOKKEEPING, *targets)]
    feature_report, feature_warnings = feature_quality(table, features, config)
    target_report, target_warnings = target_quality(table, targets, config)
    continuity_report, continuity_warnings = continuity(table, step_ms, config)
    if config.fail_on_critical and continuity_report["severity"] == "critical":
        bad = [w for w in continuity_warnings if w.startswith("critical")]
        raise QualityError(
            "critical gaps in the data (coverage or largest gap beyond the critical "
            "thresholds):\n  " + "\n  ".join(bad)
        )
    report = {
        "rows": table.num_rows,
        "features": feature_report,
        "targets": target_report,
        "continuity": continuity_report,
    }
    return report, continuity_warnings + feature_warnings + target_warnings
