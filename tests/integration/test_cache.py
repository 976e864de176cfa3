"""Cached rebuilds on the real January 2022 candles: a repeated build reads every (symbol, day)
feature partition back and writes identical bytes; touching one day's raw data recomputes only
the partitions whose lookback reaches it, and the result equals a build without the cache."""

from __future__ import annotations

import shutil

import pyarrow as pa

from featlib import raw
from featlib.dataset import DatasetRequest, build
from featlib.timeutil import parse_time

REQUEST = DatasetRequest(
    symbols=["BTCUSDT"],
    start=parse_time("2022-01-05"),
    end=parse_time("2022-01-15"),
    registry_version="1.2.0",
)
SPLITS = ("train", "validation", "test")


def _files(out) -> dict[str, bytes]:
    return {name: (out / f"{name}.parquet").read_bytes() for name in SPLITS}


def test_repeated_and_touched_builds(jan_store, tmp_path):
    data = tmp_path / "raw"
    shutil.copytree(jan_store, data)
    cache = tmp_path / "cache"

    cold = build(REQUEST, data, tmp_path / "a", cache_dir=cache)
    assert cold["cache"] == {
        "dir": str(cache),
        "partitions": 10,
        "reused": 0,
        "computed": 10,
        "output": "built",
    }
    again = build(REQUEST, data, tmp_path / "b", cache_dir=cache)
    assert again["cache"]["reused"] == 10 and again["cache"]["computed"] == 0
    # same request, same inputs: the whole dataset is reused, under its own id
    assert again["cache"]["output"] == "reused" and again["cache"]["built_by"] == cold["id"]
    assert again["id"] != cold["id"]
    assert again["splits"] == cold["splits"] and again["quality"] == cold["quality"]
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    shutil.rmtree(tmp_path / "a")  # deleting a dataset leaves the cached copy whole
    build(REQUEST, data, tmp_path / "a", cache_dir=cache)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")

    # another split of the same features: every partition reused, the output built anew
    other = REQUEST.model_copy(update={"split_fractions": (0.6, 0.2, 0.2)})
    split = build(other, data, tmp_path / "s", cache_dir=cache)
    assert split["cache"]["output"] == "built" and split["cache"]["reused"] == 10
    assert split["splits"]["train"]["rows"] < cold["splits"]["train"]["rows"]

    # touch 2022-01-09: one more (unconfirmed, so featureless) candle row -> a new part file
    day = parse_time("2022-01-09")
    rows = raw.read(data, "klines", ["BTCUSDT"], day + 3_600_000, day + 3_660_000).to_pylist()
    extra = {**rows[0], "confirm": False, "update_ts": rows[0]["update_ts"].replace(second=7)}
    written = raw.write(
        data, "klines", pa.Table.from_pylist([extra], schema=raw.RAW_SCHEMAS["klines"])
    )
    assert written.rows_written == 1

    touched = build(REQUEST, data, tmp_path / "c", cache_dir=cache)
    # 1.2.0 looks back at most 9 h: the partitions of Jan 9 and Jan 10 read Jan 9's files
    assert touched["cache"]["computed"] == 2 and touched["cache"]["reused"] == 8
    assert touched["cache"]["output"] == "built"
    fresh = build(REQUEST, data, tmp_path / "d")  # no cache at all
    assert fresh["cache"]["partitions"] == 0
    assert _files(tmp_path / "c") == _files(tmp_path / "d") == _files(tmp_path / "a")
