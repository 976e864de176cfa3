"""`build-dataset` end to end on the real January 2022 candles, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featlib import registry
from tests.conftest import CAPTURE_2023, KLINES_31D, ROOT, shared

pytestmark = pytest.mark.integration


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """The issue's 'done when' commands, verbatim but for the folders."""
    tmp = tmp_path_factory.mktemp("cli")
    data, out = tmp / "raw", tmp / "jan"
    ingest = _run("pipelines.ingest", str(shared(KLINES_31D)), "--data-dir", str(data))
    assert ingest.returncode == 0, ingest.stderr
    assert "klines 45,031 rows written" in ingest.stdout
    build = _run(
        "pipelines.build_dataset",
        "--symbol",
        "BTCUSDT",
        "--start",
        "2022-01-03",
        "--end",
        "2022-01-30",
        "--registry-version",
        "1.2.0",
        "--data-dir",
        str(data),
        "--out",
        str(out),
    )
    assert build.returncode == 0, build.stderr
    return data, out


def test_three_splits_with_the_contract_columns(built):
    _, out = built
    names = registry.load("1.2.0").names
    tables = {s: pq.read_table(out / f"{s}.parquet") for s in ("train", "validation", "test")}
    for split, table in tables.items():
        assert table.num_rows > 5_000, split
        assert table.column_names == ["ts", "symbol", *names, "target_return", "fold"]
        assert table["fold"].unique().to_pylist() == [0]
        assert table.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
        assert table["symbol"].unique().to_pylist() == ["BTCUSDT"]
        for name in names[:-1]:  # funding_rate: no funding data in this capture (null, warned)
            assert table[name].null_count == 0, (split, name)
    grid_rows = 28 * 1440  # 2022-01-03 .. 2022-01-30 inclusive, 1-minute grid
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["rows"]["grid"] == grid_rows
    kept = sum(t.num_rows for t in tables.values())
    assert kept + meta["rows"]["purged"] + meta["rows"]["embargoed"] == grid_rows
    assert meta["split"]["strategy"] == "time_based" and meta["split"]["embargo"] == "5m"
    assert meta["quality"]["continuity"]["severity"] == "ok"
    assert meta["quality"]["rows"] == grid_rows
    assert meta["registry_version"] == "1.2.0"
    assert [f["name"] for f in meta["features"]] == names
    assert {f["name"]: f["lookback"] for f in meta["features"]}["rsi_14"] == "8h"
    assert {s: meta["splits"][s]["rows"] for s in tables} == {
        s: t.num_rows for s, t in tables.items()
    }
    assert len(meta["input"]["data_hash"]) == 64 and meta["input"]["synthetic"] is False
    assert set(meta["timings_s"]) >= {"features", "targets", "write", "total"}
    assert meta["peak_rss_mb"] > 0
    assert any("funding_rate will be null" in w for w in meta["warnings"])


def test_splits_are_disjoint_and_purged(built):
    _, out = built
    horizon = 5 * 60_000
    spans = []
    for split in ("train", "validation", "test"):
        ts = pq.read_table(out / f"{split}.parquet")["ts"].cast(pa.int64()).to_numpy()
        spans.append((ts.min(), ts.max()))
    meta = json.loads((out / "metadata.json").read_text())
    for (_lo, hi), (next_lo, _), split in zip(
        spans, spans[1:], ("train", "validation"), strict=False
    ):
        assert hi < next_lo
        end = pq.read_table(out / f"{split}.parquet")  # last target lands before the next split
        assert hi + horizon < next_lo or hi + horizon < _ms(meta["splits"][split]["end"])
        assert end.num_rows > 0


def _ms(iso_text: str) -> int:
    from featlib.timeutil import parse_time

    return parse_time(iso_text)


def test_targets_match_the_raw_closes(built):
    data, out = built
    closes = {}
    for path in (data / "klines").rglob("*.parquet"):
        t = pq.read_table(path)
        closes.update(
            zip(t["ts"].cast(pa.int64()).to_pylist(), t["close"].to_pylist(), strict=True)
        )
    test = pq.read_table(out / "test.parquet")
    ts = test["ts"].cast(pa.int64()).to_numpy()
    got = test["target_return"].to_numpy()
    want = np.array([closes[t + 300_000] / closes[t] - 1 for t in ts])
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_rebuild_is_byte_identical(built, tmp_path):
    data, out = built
    again = tmp_path / "again"
    build = _run(
        "pipelines.build_dataset",
        "--symbol",
        "BTCUSDT",
        "--start",
        "2022-01-03",
        "--end",
        "2022-01-30",
        "--registry-version",
        "1.2.0",
        "--data-dir",
        str(data),
        "--out",
        str(again),
    )
    assert build.returncode == 0, build.stderr
    for split in ("train", "validation", "test"):
        assert (out / f"{split}.parquet").read_bytes() == (again / f"{split}.parquet").read_bytes()
    first = json.loads((out / "metadata.json").read_text())["input"]["data_hash"]
    assert json.loads((again / "metadata.json").read_text())["input"]["data_hash"] == first


def test_missing_history_names_available_periods(built, tmp_path):
    data, _ = built
    result = _run(
        "pipelines.build_dataset",
        "--start",
        "2021-12-20",
        "--end",
        "2022-01-05",
        "--data-dir",
        str(data),
        "--out",
        str(tmp_path / "x"),
    )
    assert result.returncode == 2
    assert "missing history" in result.stderr
    assert "available candle periods: 2021-12-31T23:02:00Z → 2022-02-01T05:32:00Z" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_bad_arguments_are_clear_errors(built, tmp_path):
    data, _ = built
    result = _run(
        "pipelines.build_dataset",
        "--registry-version",
        "7.7.7",
        "--data-dir",
        str(data),
        "--out",
        str(tmp_path / "y"),
    )
    assert result.returncode == 2 and "no registry version 7.7.7" in result.stderr
    result = _run(
        "pipelines.build_dataset",
        "--train",
        "2022-01-03:2022-01-10",
        "--data-dir",
        str(data),
        "--out",
        str(tmp_path / "y"),
    )
    assert result.returncode == 2 and "--train, --validation and --test" in result.stderr
    result = _run(
        "pipelines.build_dataset",
        "--symbol",
        "btc/../x",
        "--data-dir",
        str(data),
        "--out",
        str(tmp_path / "y"),
    )
    assert result.returncode == 2 and "not a symbol" in result.stderr


def test_demo_on_an_empty_data_dir_is_synthetic_and_says_so(tmp_path):
    result = _run(
        "pipelines.build_dataset",
        "--data-dir",
        str(tmp_path / "raw"),
        "--out",
        str(tmp_path / "demo"),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert "SYNTHETIC" in result.stdout
    meta = json.loads((tmp_path / "demo" / "metadata.json").read_text())
    assert meta["input"]["synthetic"] is True
    assert meta["splits"]["train"]["rows"] > 50_000
    train = pq.read_table(tmp_path / "demo" / "train.parquet")
    assert train["funding_rate"].null_count == 0  # the demo has funding too


def test_builds_are_recorded_in_the_catalog(built, tmp_path):
    from featlib.catalog import open_catalog

    data, _ = built
    catalog = tmp_path / "catalog.db"
    ok = _run(
        "pipelines.build_dataset",
        "--start",
        "2022-01-05",
        "--end",
        "2022-01-06",
        "--data-dir",
        str(data),
        "--out",
        str(tmp_path / "ok"),
        "--catalog",
        str(catalog),
        "--quiet",
    )
    assert ok.returncode == 0, ok.stderr
    bad = _run(
        "pipelines.build_dataset",
        "--start",
        "2021-12-01",
        "--end",
        "2021-12-02",
        "--data-dir",
        str(data),
        "--out",
        str(tmp_path / "bad"),
        "--catalog",
        str(catalog),
        "--quiet",
    )
    assert bad.returncode == 2 and "missing history" in bad.stderr
    meta = json.loads((tmp_path / "ok" / "metadata.json").read_text())
    with open_catalog(catalog) as cat:
        record = cat.get_dataset(meta["id"])
        assert record["status"] == "ready"
        assert record["counts"]["splits"]["train"]["rows"] == meta["splits"]["train"]["rows"]
        assert record["data_hash"] == meta["input"]["data_hash"]
        failed = cat.list_datasets(status="failed")
    assert len(failed) == 1 and "missing history" in failed[0]["error"]


def test_walk_forward_from_the_cli(built, tmp_path):
    """The issue's example: a walk-forward dataset of the real 31-day klines with 3+ folds."""
    data, _ = built
    out = tmp_path / "wf"
    result = _run(
        "pipelines.build_dataset",
        "--start",
        "2022-01-02",
        "--end",
        "2022-01-31",
        "--registry-version",
        "1.2.0",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--walk-forward",
        "7,2,1,3",
        "--target-type",
        "classification",
        "--catalog",
        str(tmp_path / "c.db"),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "metadata.json").read_text())
    folds = meta["folds"]
    # 30 days [Jan 2, Feb 1), a fold spans 7+2+1 = 10 days, one starts every 3 days while it
    # fits: (30 - 10) // 3 + 1 = 7 folds
    assert [f["fold"] for f in folds] == list(range((30 - 10) // 3 + 1))
    horizon = 5 * 60_000
    for fold in folds:
        spans = {}
        for split in ("train", "validation", "test"):
            table = pq.read_table(out / f"fold={fold['fold']}" / f"{split}.parquet")
            assert table["fold"].unique().to_pylist() == [fold["fold"]]
            ts = table["ts"].cast(pa.int64()).to_numpy()
            spans[split] = (ts.min(), ts.max())
            assert table.num_rows == fold[split]["rows"]
        assert spans["train"][1] + horizon < spans["validation"][0]
        assert spans["validation"][1] + horizon < spans["test"][0]
    assert meta["target"]["columns"] == ["target_return", "target_direction"]
    balance = meta["quality"]["targets"]["target_direction"]
    assert set(balance["classes"]) == {"-1", "0", "1"}


def test_a_leaking_split_is_refused(built, tmp_path):
    data, _ = built
    result = _run(
        "pipelines.build_dataset",
        "--start",
        "2022-01-05",
        "--end",
        "2022-01-10",
        "--data-dir",
        str(data),
        "--out",
        str(tmp_path / "x"),
        "--train",
        "2022-01-05:2022-01-07",
        "--validation",
        "2022-01-07:2022-01-08",
        "--test",
        "2022-01-09:2022-01-10",
        "--quiet",
    )
    assert result.returncode == 2 and "overlap" in result.stderr
    result = _run(
        "pipelines.build_dataset",
        "--start",
        "2022-01-05",
        "--end",
        "2022-01-10",
        "--data-dir",
        str(data),
        "--out",
        str(tmp_path / "x"),
        "--walk-forward",
        "3,1,0,1",
        "--embargo",
        "1m",
        "--quiet",
    )
    assert result.returncode == 2 and "embargo" in result.stderr and "horizon" in result.stderr


def test_one_second_grid_from_ingested_captures(tmp_path):
    """The catalog issue's 'done when': registry 1.1.0 at a 1 s grid on the ingested real
    2023 capture. Its 7 minutes are shorter than most lookbacks: without --short-history the
    build refuses and names what is stored; with it, each feature is null until stored data
    covers its lookback (the spans are in metadata)."""
    data = tmp_path / "raw"
    ingest = _run("pipelines.ingest", str(shared(CAPTURE_2023)), "--data-dir", str(data))
    assert ingest.returncode == 0, ingest.stderr
    args = ["pipelines.build_dataset", "--symbol", "BTCUSDT", "--registry-version", "1.1.0"]
    args += ["--grid", "1s", "--data-dir", str(data), "--horizon", "10s"]
    refused = _run(*args, "--out", str(tmp_path / "no"))
    assert refused.returncode == 2 and "too short" in refused.stderr, refused.stderr
    result = _run(*args, "--short-history", "--out", str(tmp_path / "ds"))
    assert result.returncode == 0, result.stderr
    assert "building BTCUSDT 2023-04-05T00:00:05Z → 2023-04-05T00:06:45Z" in result.stdout
    meta = json.loads((tmp_path / "ds" / "metadata.json").read_text())
    table = pa.concat_tables(
        [pq.read_table(tmp_path / "ds" / f"{s}.parquet") for s in ("train", "validation", "test")]
    )
    assert meta["resolution"] == "1s" and table.num_rows == meta["rows"]["written"] > 300
    assert np.all(np.diff(table["ts"].cast(pa.int64()).to_numpy()) % 1000 == 0)
    # 1 s book features from the first second on; 1 m trade flow after one stored minute
    assert table["depth_imbalance_top5"].null_count == 0
    assert meta["short_history"]["vwap_1m"]["BTCUSDT"]["from"] == "2023-04-05T00:01:04.962Z"
    assert meta["short_history"]["relative_volume_24h"]["BTCUSDT"] is None
    assert table["relative_volume_24h"].null_count == table.num_rows
    assert any("relative_volume_24h" in w and "null throughout" in w for w in meta["warnings"])
