import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="featlib: explore features")

with app.setup:
    import inspect
    import os
    import tempfile
    from pathlib import Path

    import altair as alt
    import marimo as mo
    import pandas as pd
    import pyarrow as pa

    import featlib
    from featlib import checks, raw, synthetic
    from featlib.capture import ingest, read_lines
    from featlib.features import FEATURES
    from featlib.inputs import SOURCES
    from featlib.timeutil import DAY_MS, MINUTE_MS, iso, parse_time

    REPO = Path(featlib.__file__).resolve().parent.parent  # works under marimo and Jupyter
    SHARED = Path(os.environ.get("FEATLIB_SHARED_DATA", REPO.parent / "shared" / "data"))
    REAL_CANDLES = SHARED / "bybit" / "BTCUSDT_2022-01_kline1m_31d.jsonl.gz"


@app.function
def load_candles(store: Path) -> tuple[dict[str, pa.Table], str]:
    """Raw tables to explore: the repo's data/raw if it holds candles, else the real January
    2022 candles from ../shared/data, else a synthetic history (said so)."""
    local = REPO / "data" / "raw"
    if raw.files(local, "klines"):
        return {k: raw.read(local, k) for k in ("klines", "funding", "ticker")}, f"{local}"
    if REAL_CANDLES.is_file():
        ingest(store, read_lines(REAL_CANDLES))
        origin = f"real BTCUSDT candles, {REAL_CANDLES.name}"
    else:
        start = parse_time("2024-01-01")
        synthetic.write_history(store, ["BTCUSDT"], start, start + 10 * DAY_MS)
        origin = "SYNTHETIC candles (no real data found): not market data"
    return {k: raw.read(store, k) for k in ("klines", "funding", "ticker")}, origin


@app.function
def declaration(name: str) -> str:
    """How a feature is declared: its Ibis expression (as DuckDB SQL) or its pandas-ta code."""
    f = FEATURES[name]
    if f.kind == "indicator":
        return inspect.getsource(f.fn)
    import ibis

    frame = ibis.table(SOURCES[f.source].events().schema(), name=f"events_{f.source}")
    for dep in f.depends:  # dependencies arrive as columns of the frame
        frame = frame.mutate(**{dep: frame.close * 0 + 1})
    return ibis.to_sql(f.fn(frame), dialect="duckdb")


@app.function
def series(
    name: str, tables: dict[str, pa.Table], symbol: str, start: int, hours: int
) -> pd.DataFrame:
    """The feature on a 1-minute grid, with the close for context."""
    times = list(range(start, start + hours * 3_600_000, MINUTE_MS))
    values = checks.features_at([name], tables, symbol, times)[name]
    klines = tables["klines"]
    closes = dict(
        zip(klines["ts"].cast(pa.int64()).to_pylist(), klines["close"].to_pylist(), strict=True)
    )
    return pd.DataFrame(
        {
            "ts": pd.to_datetime(times, unit="ms", utc=True),
            name: values,
            "close": [closes.get(t) for t in times],
        }
    )


@app.function
def test_identity_on_real_or_synthetic_candles():
    """The notebook's own check, collected by pytest: two features stay causal and bounded."""
    with tempfile.TemporaryDirectory() as tmp:
        tables, _ = load_candles(Path(tmp))
        last = max(tables["klines"]["ts"].cast(pa.int64()).to_pylist())
        times = [last - 3 * DAY_MS + 17 * MINUTE_MS, last - DAY_MS]
        for name in ("returns_5m", "rsi_14"):
            assert checks.violations(name, tables, "BTCUSDT", times) == []


@app.cell
def _():
    mo.md("""
    # Explore features

    Every feature is declared once in `featlib/features/`. Pick one to see its declaration,
    its values on candles, and the two checks of the identity rule: **causality** (the value
    at t is unchanged when everything after t is removed) and **lookback** (it is unchanged
    when only the declared lookback before t is kept).
    """)
    return


@app.cell
def _():
    _store = Path(tempfile.mkdtemp(prefix="featlib-notebook-"))
    tables, origin = load_candles(_store)
    first_ts = min(tables["klines"]["ts"].cast(pa.int64()).to_pylist())
    last_ts = max(tables["klines"]["ts"].cast(pa.int64()).to_pylist())
    mo.md(
        f"Candles: **{origin}** — {tables['klines'].num_rows:,} rows, "
        f"{iso(first_ts)} → {iso(last_ts)}"
    )
    return first_ts, last_ts, tables


@app.cell
def _():
    picker = mo.ui.dropdown(options=sorted(FEATURES), value="rsi_14", label="feature")
    hours = mo.ui.slider(2, 48, value=12, label="hours shown")
    mo.hstack([picker, hours])
    return hours, picker


@app.cell
def _(picker):
    _f = FEATURES[picker.value]
    mo.md(f"""
    ### `{_f.name}`
    {_f.doc}

    source **{_f.source}**, lookback **{_f.lookback_ms // 60_000} min**, kind **{_f.kind}**

    ```{"python" if _f.kind == "indicator" else "sql"}
    {declaration(_f.name)}
    ```
    """)
    return


@app.cell
def _(first_ts, hours, last_ts, picker, tables):
    _start = max(first_ts + 12 * 3_600_000, last_ts - hours.value * 3_600_000)
    _start -= _start % MINUTE_MS
    frame = series(picker.value, tables, "BTCUSDT", _start, hours.value)
    _base = alt.Chart(frame).encode(x=alt.X("ts:T", title=None))
    chart = alt.vconcat(
        _base.mark_line().encode(y=alt.Y(f"{picker.value}:Q", scale=alt.Scale(zero=False))),
        _base.mark_line(color="gray").encode(y=alt.Y("close:Q", scale=alt.Scale(zero=False))),
    ).properties(title=f"{picker.value} and close, 1-minute grid")
    mo.vstack([mo.ui.altair_chart(chart), mo.ui.table(frame.tail(30), selection=None)])
    return (frame,)


@app.cell
def _(frame, last_ts, picker, tables):
    _times = [int(t.timestamp() * 1000) for t in frame["ts"].iloc[:: max(1, len(frame) // 6)]]
    _times.append(last_ts - 3 * 3_600_000 + 1_234)  # and one off the grid, in milliseconds
    found = checks.violations(picker.value, tables, "BTCUSDT", _times)
    mo.md(
        f"**Identity checks** at {len(_times)} times: "
        + (
            "✅ causal and bounded by its lookback"
            if not found
            else "❌ " + "; ".join(str(v) for v in found)
        )
    )
    return


if __name__ == "__main__":
    app.run()
