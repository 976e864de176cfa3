import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="featlib: explore a dataset")

with app.setup:
    import json
    import os
    import tempfile
    from pathlib import Path

    import altair as alt
    import marimo as mo
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    import featlib
    from featlib import dataset, synthetic
    from featlib.splits import SPLITS, WalkForward
    from featlib.targets import TargetSpec
    from featlib.timeutil import DAY_MS, parse_time

    REPO = Path(featlib.__file__).resolve().parent.parent  # works under marimo and Jupyter
    BOOKKEEPING = ("ts", "symbol", "fold", "split")
    SPLIT_COLORS = alt.Scale(domain=list(SPLITS), range=["#4c78a8", "#f58518", "#54a24b"])
    CLASS_COLORS = alt.Scale(domain=["-1", "0", "1"], range=["#e45756", "#bab0ac", "#54a24b"])


@app.function
def requested_path() -> Path | None:
    """The dataset asked for: `marimo edit notebooks/explore_dataset.py -- --dataset DIR`, else
    the FEATLIB_DATASET environment variable, else None (the notebook builds a demo)."""
    try:
        value = mo.cli_args().get("dataset")
    except Exception:  # not running inside marimo (e.g. the Jupyter export)
        value = None
    value = value or os.environ.get("FEATLIB_DATASET")
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() or path.exists() else REPO / path


@app.function
def build_demo(root: Path) -> Path:
    """A small SYNTHETIC dataset built offline: 8 days of candles, 6 days of 1-minute grid in
    three walk-forward folds (train 2 d, validation 1 d, test 1 d, step 1 d), 5m direction."""
    start = parse_time("2024-01-01")
    synthetic.write_history(root / "raw", ["BTCUSDT"], start, start + 8 * DAY_MS)
    request = dataset.DatasetRequest(
        symbols=["BTCUSDT"],
        start=start + DAY_MS,  # the 9 h funding / 8 h RSI lookbacks come from the first day
        end=start + 7 * DAY_MS,
        target=TargetSpec(type="classification", horizon="5m", threshold=0.001),
        split=WalkForward(
            train_window_days=2, validation_window_days=1, test_window_days=1, step_days=1
        ),
    )
    dataset.build(request, root / "raw", root / "dataset")
    return root / "dataset"


@app.function
def open_dataset(scratch: Path) -> tuple[Path, dict, str]:
    """The dataset directory, its metadata.json, and where it came from."""
    path = requested_path()
    if path is None:
        path = build_demo(scratch)
        origin = "SYNTHETIC demo dataset built by this notebook (not market data)"
    else:
        origin = f"{path}"
    meta_file = path / "metadata.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file} not found: is {path} a `just build-dataset` output?")
    metadata = json.loads(meta_file.read_text())
    if metadata.get("input", {}).get("synthetic") and "SYNTHETIC" not in origin:
        origin += " — built from SYNTHETIC candles (not market data)"
    return path, metadata, origin


@app.function
def load_splits(path: Path, metadata: dict) -> pd.DataFrame:
    """Every (fold, split) file as one frame with `fold` and `split` columns. Walk-forward
    builds write `fold=k/{split}.parquet`, the others `{split}.parquet` (fold 0)."""
    folds = metadata.get("folds") or [{"fold": 0, **metadata.get("splits", {})}]
    frames = []
    for entry in folds:
        fold = int(entry["fold"])
        for split in SPLITS:
            if split not in entry:
                continue
            file = path / f"fold={fold}" / f"{split}.parquet"
            if not file.is_file() and fold == 0:
                file = path / f"{split}.parquet"
            if not file.is_file():
                raise FileNotFoundError(f"{file} is listed in metadata.json but missing")
            frame = pq.read_table(file).to_pandas()
            frame["fold"] = fold
            frame["split"] = split
            frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    rows["split"] = pd.Categorical(rows["split"], categories=list(SPLITS), ordered=True)
    return rows


@app.function
def feature_names(metadata: dict, rows: pd.DataFrame) -> list[str]:
    """The registry's features, in declaration order, that the files hold."""
    declared = [f["name"] for f in metadata.get("features", [])]
    if not declared:
        declared = [c for c in rows.columns if c not in BOOKKEEPING and not c.startswith("target_")]
    return [name for name in declared if name in rows.columns]


@app.function
def timeline(metadata: dict, rows: pd.DataFrame) -> pd.DataFrame:
    """Per (fold, split): its window from metadata (the rows' span for a random split), the
    rows kept, purged and embargoed, and the first and last row actually written."""
    span = rows.groupby(["fold", "split"], observed=True)["ts"].agg(["min", "max"])
    out = []
    for entry in metadata.get("folds", []):
        for split in SPLITS:
            info = entry.get(split)
            if info is None:
                continue
            first, last = span.loc[(entry["fold"], split)] if info["rows"] else (None, None)
            out.append(
                {
                    "fold": int(entry["fold"]),
                    "split": split,
                    "start": pd.Timestamp(info["start"]) if "start" in info else first,
                    "end": pd.Timestamp(info["end"]) if "end" in info else last,
                    "rows": info["rows"],
                    "purged": info["purged"],
                    "embargoed": info["embargoed"],
                    "first_row": first,
                    "last_row": last,
                }
            )
    return pd.DataFrame(out)


@app.function
def class_balance(rows: pd.DataFrame, column: str = "target_direction") -> pd.DataFrame:
    """Per (fold, split): rows and the share of each class (−1 down, 0 flat, 1 up)."""
    counts = (
        rows.groupby(["fold", "split"], observed=True)[column]
        .value_counts()
        .unstack(fill_value=0)
        .rename(columns=lambda c: str(int(c)))
    )
    shares = counts.div(counts.sum(axis=1), axis=0)
    for c in ("-1", "0", "1"):
        if c not in shares:
            shares[c] = 0.0
    out = shares[["-1", "0", "1"]].rename(columns=lambda c: f"share {c}")
    out.insert(0, "rows", counts.sum(axis=1))
    return out.reset_index()


@app.function
def summary(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per (fold, split): count, nulls, mean, std and quantiles of a numeric column (finite
    values), and the Kolmogorov-Smirnov distance to the same fold's train rows."""
    out = []
    for (fold, split), part in rows.groupby(["fold", "split"], observed=True)[column]:
        x = part.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = np.sort(x[np.isfinite(x)])
        train = rows.loc[(rows["fold"] == fold) & (rows["split"] == "train"), column]
        reference = np.sort(train.to_numpy(dtype=np.float64, na_value=np.nan))
        reference = reference[np.isfinite(reference)]
        q = np.quantile(finite, [0.01, 0.5, 0.99]) if len(finite) else [np.nan] * 3
        out.append(
            {
                "fold": fold,
                "split": split,
                "count": len(finite),
                "nulls": int(np.isnan(x).sum()),
                "mean": finite.mean() if len(finite) else np.nan,
                "std": finite.std() if len(finite) else np.nan,
                "p1": q[0],
                "median": q[1],
                "p99": q[2],
                "ks_vs_train": ks_distance(finite, reference),
            }
        )
    return pd.DataFrame(out)


@app.function
def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest gap between the empirical CDFs of two sorted samples (0 same, 1 disjoint)."""
    if not len(a) or not len(b):
        return float("nan")
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


@app.function
def histogram(rows: pd.DataFrame, column: str, bins: int = 40) -> pd.DataFrame:
    """Share of each split's finite values per bin, on bins shared by the splits; the tails
    beyond the 0.5 % / 99.5 % quantiles of all rows fall into the outer bins."""
    x = rows[column].to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(x)
    if not finite.any():
        return pd.DataFrame(columns=["split", "value", "share"])
    low, high = np.quantile(x[finite], [0.005, 0.995])
    edges = np.histogram_bin_edges(x[finite], bins=bins, range=(low, high))
    out = []
    for split in SPLITS:
        v = x[finite & (rows["split"] == split).to_numpy()]
        if not len(v):
            continue
        counts, _ = np.histogram(np.clip(v, edges[0], edges[-1]), bins=edges)
        centres = (edges[:-1] + edges[1:]) / 2
        out.append(pd.DataFrame({"split": split, "value": centres, "share": counts / len(v)}))
    return pd.concat(out, ignore_index=True)


@app.function
def distribution_chart(hist: pd.DataFrame, column: str, title: str) -> alt.Chart:
    return (
        alt.Chart(hist)
        .mark_line(interpolate="step")
        .encode(
            x=alt.X("value:Q", title=column, scale=alt.Scale(zero=False)),
            y=alt.Y("share:Q", title="share of the split's rows", axis=alt.Axis(format="%")),
            color=alt.Color("split:N", scale=SPLIT_COLORS, sort=list(SPLITS)),
            tooltip=[
                "split",
                alt.Tooltip("value:Q", format=".6g"),
                alt.Tooltip("share:Q", format=".2%"),
            ],
        )
        .properties(title=title, height=220)
    )


@app.function
def test_demo_dataset_reads_back():
    """The notebook's own check, collected by pytest: the demo's files match metadata.json,
    its windows are ordered within each fold, and both target views hold together."""
    with tempfile.TemporaryDirectory() as tmp:
        path = build_demo(Path(tmp))
        metadata = json.loads((path / "metadata.json").read_text())
        rows = load_splits(path, metadata)
        spans = timeline(metadata, rows)
        assert len(metadata["folds"]) == 3 and len(spans) == 9
        assert spans["rows"].sum() == len(rows) == metadata["rows"]["written"]
        for _, fold in spans.groupby("fold"):
            assert (fold["start"].iloc[1:].to_numpy() >= fold["end"].iloc[:-1].to_numpy()).all()
            assert (fold["first_row"] >= fold["start"]).all()
            assert (fold["last_row"] < fold["end"]).all()
        balance = class_balance(rows)
        shares = balance[["share -1", "share 0", "share 1"]].sum(axis=1)
        assert np.allclose(shares, 1.0) and (balance["rows"] == spans["rows"]).all()
        stats = summary(rows, "target_return")  # the regression view
        assert (stats["count"] == spans["rows"]).all()
        assert (stats.loc[stats["split"] == "train", "ks_vs_train"] == 0).all()
        names = feature_names(metadata, rows)
        assert "rsi_14" in names and not histogram(rows, "rsi_14").empty


@app.cell
def _():
    mo.md("""
    # Explore a dataset

    A dataset is what `just build-dataset` writes: `{train,validation,test}.parquet` (or
    `fold=k/{split}.parquet` for walk-forward folds) and `metadata.json`. Open one with
    `FEATLIB_DATASET=data/datasets/demo just notebook explore_dataset` (or
    `marimo edit notebooks/explore_dataset.py -- --dataset DIR`); without one, the notebook
    builds a small synthetic walk-forward dataset to show.
    """)
    return


@app.cell
def _():
    _scratch = Path(tempfile.mkdtemp(prefix="featlib-notebook-"))
    _path, metadata, _origin = open_dataset(_scratch)
    rows = load_splits(_path, metadata)
    target = metadata["target"]
    _split = metadata["split"]
    _rows = metadata["rows"]
    _leak = (
        mo.callout(mo.md(_split.get("note", "")), kind="danger")
        if _split.get("leaks_through_time")
        else mo.md("")
    )
    mo.vstack(
        [
            mo.md(
                f"""
    Dataset: **{_origin}** — `{metadata["id"]}`, registry **{metadata["registry_version"]}**,
    {", ".join(metadata["symbols"])}, {metadata["range"]["start"]} → {metadata["range"]["end"]}
    on a **{metadata["resolution"]}** grid

    Target **{target["type"]}**, horizon **{target["horizon"]}** of the {target["price"]} price
    (flat band ±{target["threshold"]:g} for classification); split **{_split["strategy"]}**
    with {len(metadata["folds"])} fold(s), purge {_split["purge"]}, embargo
    {_split["embargo"]}

    Rows: {_rows["grid"]:,} on the grid, {_rows["written"]:,} written,
    {_rows["purged"]:,} purged, {_rows["embargoed"]:,} embargoed,
    {_rows["missing_targets"]:,} without a target
    """
            ),
            _leak,
        ]
    )
    return metadata, rows, target


@app.cell
def _(metadata, rows):
    spans = timeline(metadata, rows)
    _chart = (
        alt.Chart(spans)
        .mark_bar(height=14)
        .encode(
            x=alt.X("start:T", title=None),
            x2="end:T",
            y=alt.Y("fold:O", title="fold"),
            color=alt.Color("split:N", scale=SPLIT_COLORS, sort=list(SPLITS)),
            tooltip=["fold", "split", "start:T", "end:T", "rows", "purged", "embargoed"],
        )
        .properties(
            title="Split windows per fold (half-open [start, end))",
            height=40 + 28 * spans["fold"].nunique(),
        )
    )
    mo.vstack(
        [
            mo.md("## 1. Split timeline"),
            mo.ui.altair_chart(_chart),
            mo.ui.table(spans, selection=None),
        ]
    )
    return (spans,)


@app.cell
def _(spans):
    fold = mo.ui.dropdown(
        options=[str(k) for k in sorted(spans["fold"].unique())], value="0", label="fold shown"
    )
    mo.hstack([fold, mo.md("the charts below show this fold; the tables show every fold")])
    return (fold,)


@app.cell
def _(fold, rows, target):
    _picked = rows[rows["fold"] == int(fold.value)]
    if "target_direction" in rows:
        _balance = class_balance(rows)
        _long = _balance.melt(
            id_vars=["fold", "split", "rows"],
            value_vars=["share -1", "share 0", "share 1"],
            var_name="class",
            value_name="share",
        )
        _long["class"] = _long["class"].str.removeprefix("share ")
        _long["part"] = "fold " + _long["fold"].astype(str) + " · " + _long["split"].astype(str)
        _view = (
            alt.Chart(_long)
            .mark_bar()
            .encode(
                x=alt.X("share:Q", stack="normalize", axis=alt.Axis(format="%"), title=None),
                y=alt.Y("part:N", sort=list(dict.fromkeys(_long["part"])), title=None),
                color=alt.Color("class:N", scale=CLASS_COLORS, title="direction"),
                order=alt.Order("class:N"),
                tooltip=["part", "class", alt.Tooltip("share:Q", format=".1%"), "rows"],
            )
            .properties(title=f"target_direction (±{target['threshold']:g} flat band)")
        )
        _tables = [mo.ui.table(_balance, selection=None)]
    else:
        _view = distribution_chart(
            histogram(_picked, "target_return"),
            "target_return",
            f"target_return, fold {fold.value}",
        )
        _tables = [
            mo.ui.table(summary(rows, c), selection=None, label=c)
            for c in target["columns"]
            if c in rows and c != "target_direction"
        ]
    mo.vstack([mo.md("## 2. Target balance per split"), mo.ui.altair_chart(_view), *_tables])
    return


@app.cell
def _(metadata):
    _quality = metadata.get("quality")
    _warnings = metadata.get("warnings", [])
    if _quality is None:
        _sections = [mo.callout(mo.md("metadata.json holds no quality report"), kind="warn")]
    else:
        _features = _quality["features"]
        _columns = pd.DataFrame.from_dict(_features["columns"], orient="index")
        _pairs = _features["correlated_pairs"]
        _targets = _quality["targets"]
        _target_rows = []
        for _name, _info in _targets.items():
            _entry = {"target": _name, "kind": _info["kind"], "missing": _info["missing"]}
            if _info["kind"] == "classification":
                _entry |= {f"share {k}": v["share"] for k, v in _info["classes"].items()}
            else:
                _entry |= {k: _info[k] for k in ("min", "median", "max", "std")}
                _entry["extreme"] = _info["extreme"]["count"]
            _target_rows.append(_entry)
        _target_warnings = [w for w in _warnings if w.split(":")[0] in _targets]
        _continuity = _quality["continuity"]
        _symbols = pd.DataFrame.from_dict(_continuity["symbols"], orient="index").drop(
            columns=["gaps", "largest_gap_ms"]
        )
        _gaps = [
            {"symbol": s, **g} for s, info in _continuity["symbols"].items() for g in info["gaps"]
        ]
        _kind = {"ok": "success", "warning": "warn", "critical": "danger"}[_continuity["severity"]]
        _sections = [
            mo.md(
                f"### Features ({_quality['rows']:,} rows before splitting)\n\n"
                f"Constant (one value or all null): "
                f"{', '.join(f'`{c}`' for c in _features['constant']) or 'none'}"
            ),
            mo.ui.table(_columns.reset_index(names="feature"), selection=None),
            mo.md(f"Correlated pairs (|r| > {_features['correlation_threshold']}):")
            if _pairs
            else mo.md(f"Correlated pairs (|r| > {_features['correlation_threshold']}): none"),
            *([mo.ui.table(pd.DataFrame(_pairs), selection=None)] if _pairs else []),
            mo.md("### Targets"),
            mo.ui.table(pd.DataFrame(_target_rows), selection=None),
            mo.callout(
                mo.md("\n".join(f"- {w}" for w in _target_warnings) or "no target warnings"),
                kind="warn" if _target_warnings else "success",
            ),
            mo.md("### Timestamp continuity"),
            mo.callout(
                mo.md(
                    f"severity **{_continuity['severity']}** (thresholds: "
                    + ", ".join(f"{k} {v}" for k, v in _continuity["thresholds"].items())
                    + ")"
                ),
                kind=_kind,
            ),
            mo.ui.table(_symbols.reset_index(names="symbol"), selection=None),
            *([mo.ui.table(pd.DataFrame(_gaps), selection=None, label="gaps")] if _gaps else []),
        ]
    _all = mo.callout(
        mo.md("\n".join(f"- {w}" for w in _warnings) or "no warnings"),
        kind="warn" if _warnings else "success",
        title="All build warnings",
    )
    mo.vstack([mo.md("## 3. Quality report"), *_sections, _all])
    return


@app.cell
def _(metadata, rows):
    _names = feature_names(metadata, rows)
    feature = mo.ui.dropdown(
        options=_names, value="rsi_14" if "rsi_14" in _names else _names[0], label="feature"
    )
    mo.vstack([mo.md("## 4. One feature per split"), feature])
    return (feature,)


@app.cell
def _(feature, fold, rows):
    _picked = rows[rows["fold"] == int(fold.value)]
    _chart = distribution_chart(
        histogram(_picked, feature.value),
        feature.value,
        f"{feature.value}, fold {fold.value} (tails clipped to the 0.5–99.5 % quantiles)",
    )
    mo.vstack(
        [
            mo.ui.altair_chart(_chart),
            mo.md("Per split; `ks_vs_train` is the KS distance to the same fold's train rows:"),
            mo.ui.table(summary(rows, feature.value), selection=None),
        ]
    )
    return


if __name__ == "__main__":
    app.run()
