"""The HTTP job APIs (service/jobs_api.py) on real data: dataset builds from the real January
2022 candles, evaluation checked against scikit-learn on the written Parquet files, and
backfills against the local fake of Bybit (tests/fake_bybit.py)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    precision_score,
    recall_score,
    root_mean_squared_error,
)

from featlib import raw, registry
from featlib.catalog import open_catalog
from featlib.timeutil import DAY_MS, iso, parse_time
from service.jobs import FALLBACK_S_PER_SYMBOL_DAY, MIN_ESTIMATE_S, build_estimate_s
from service.jobs_api import attach, job_routes, shutdown
from service.settings import Settings
from tests.conftest import KLINES_31D, shared
from tests.fake_bybit import FakeBybit, candles_from_capture, funding_schedule

pytestmark = pytest.mark.asyncio(loop_scope="module")

SYMBOL = "BTCUSDT"
FEATURES_120 = registry.load("1.2.0").names


def make_app(settings: Settings) -> FastAPI:
    app = FastAPI()
    app.state.settings = settings
    attach(app)
    app.include_router(job_routes)
    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


async def poll(fetch: Callable[[], Awaitable[Any]], done: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + 30
    while not done(value := await fetch()):
        assert time.monotonic() < deadline, f"timed out waiting; last: {value}"
        await asyncio.sleep(0.02)
    return value


# --- datasets -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_app(jan_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    root = tmp_path_factory.mktemp("api-jobs")
    settings = Settings(
        data_dir=jan_store,
        datasets_dir=root / "datasets",
        catalog=str(root / "catalog.db"),
        ws_gateway_url=None,
    )
    app = make_app(settings)
    app.state.ready = []

    async def on_ready(record: dict) -> None:  # the caller publishes features.dataset.ready
        app.state.ready.append(record)

    app.state.on_dataset_ready = on_ready
    yield app
    app.state.jobs.shutdown()


CLASSIFICATION = {
    "symbols": [SYMBOL],
    "start": parse_time("2022-01-05"),
    "end": parse_time("2022-01-09"),
    "registry_version": "1.2.0",
    "target": {"type": "classification"},
}
WALK_FORWARD = {
    "symbols": [SYMBOL],
    "start": parse_time("2022-01-05"),
    "end": parse_time("2022-01-11"),
    "registry_version": "1.2.0",
    "split": {
        "strategy": "walk_forward",
        "train_window_days": 2,
        "validation_window_days": 1,
        "test_window_days": 1,
        "step_days": 1,
    },
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def built(data_app: FastAPI) -> dict[str, dict]:
    """Two builds asked back to back: they queue and run one after the other."""
    async with client(data_app) as http:
        answers = [
            await http.post("/dataset/build", json=body) for body in (CLASSIFICATION, WALK_FORWARD)
        ]
        assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
        queued = [a.json() for a in answers]

        async def fetch(ident: str) -> dict:
            return (await http.get(f"/dataset/{ident}")).json()

        def finished(record: dict) -> bool:  # the job ends after the catalog and the callback
            return record["job"]["status"] in ("done", "failed")

        records = {}
        for name, answer in zip(("classification", "walk_forward"), queued, strict=True):
            records[name] = await poll(lambda a=answer: fetch(a["id"]), finished)
            records[name]["answer"] = answer
    return records


async def test_builds_queue_and_are_recorded_ready(built, data_app):
    first, second = built["classification"], built["walk_forward"]
    for record in (first, second):
        assert record["status"] == "ready", record.get("error")
        assert record["answer"]["status"] == "queued"
        assert record["registry_version"] == "1.2.0" and record["symbols"] == [SYMBOL]
        assert record["out_dir"] == str(data_app.state.settings.datasets_dir / record["id"])
        assert (Path(record["out_dir"]) / "metadata.json").is_file()
        assert record["job"]["status"] == "done"
    # one build at a time, in the order asked; the later one was promised a later finish
    assert second["job"]["started_at"] >= first["job"]["finished_at"]
    assert second["answer"]["estimated_completion"] >= first["answer"]["estimated_completion"]
    # the callback got each ready record, as the catalog holds it
    notified = data_app.state.ready
    assert [r["id"] for r in notified] == [first["id"], second["id"]]
    assert all(r["status"] == "ready" for r in notified)
    assert notified[0]["counts"] == first["counts"]

    async with client(data_app) as http:
        listed = (await http.get("/dataset/list")).json()["datasets"]
        assert [d["id"] for d in listed] == [second["id"], first["id"]]
        failed = (await http.get("/dataset/list", params={"status": "failed"})).json()
        assert failed == {"datasets": []}
        assert (await http.get("/dataset/list", params={"status": "done"})).status_code == 422


async def test_download_serves_the_split_files(built, data_app):
    first, second = built["classification"], built["walk_forward"]
    async with client(data_app) as http:
        for split in ("train", "validation", "test"):
            got = await http.get(f"/dataset/{first['id']}/download", params={"split": split})
            assert got.status_code == 200, got.text
            table = pq.read_table(pa.BufferReader(got.content))
            assert table.num_rows == first["counts"]["splits"][split]["rows"] > 0
            assert table.column_names == [
                "ts",
                "symbol",
                *FEATURES_120,
                "target_return",
                "target_direction",
                "fold",
            ]
            assert got.content == (Path(first["out_dir"]) / f"{split}.parquet").read_bytes()
        folds = second["counts"]["folds"]
        assert len(folds) == 3
        for fold in folds:
            k = fold["fold"]
            got = await http.get(
                f"/dataset/{second['id']}/download", params={"split": "validation", "fold": k}
            )
            table = pq.read_table(pa.BufferReader(got.content))
            assert table.num_rows == fold["validation"]["rows"] > 0
            assert set(table["fold"].to_pylist()) == {k}
            assert "target_direction" not in table.column_names
            assert (
                got.content
                == (Path(second["out_dir"]) / f"fold={k}/validation.parquet").read_bytes()
            )


async def test_bad_dataset_requests_say_what_is_wrong(built, data_app):
    ident = built["classification"]["id"]
    download = f"/dataset/{ident}/download"
    async with client(data_app) as http:
        known = len((await http.get("/dataset/list")).json()["datasets"])
        unknown_version = await http.post(
            "/dataset/build", json={**CLASSIFICATION, "registry_version": "9.9.9"}
        )
        assert unknown_version.status_code == 422
        assert "no registry version 9.9.9" in unknown_version.json()["detail"]
        backwards = await http.post(
            "/dataset/build", json={**CLASSIFICATION, "end": CLASSIFICATION["start"] - DAY_MS}
        )
        assert backwards.status_code == 422 and "is not after start" in backwards.text
        too_early = await http.post(
            "/dataset/build",
            json={
                **CLASSIFICATION,
                "start": parse_time("2021-06-01"),
                "end": parse_time("2021-06-03"),
            },
        )
        assert too_early.status_code == 422
        assert (
            "available candle periods: 2021-12-31T23:02:00Z → 2022-02-01"
            in too_early.json()["detail"]
        )

        for path in ("/dataset/..%2F..%2Fetc", "/dataset/..%2F..%2Fetc/download?split=train"):
            traversal = await http.get(path)
            assert traversal.status_code == 422, path
            assert "not a dataset id: '../../etc'" in traversal.json()["detail"]
        assert (await http.get("/dataset/ds-unknown")).status_code == 404
        gone = await http.get("/dataset/ds-unknown/download", params={"split": "test"})
        assert gone.status_code == 404 and "no dataset ds-unknown" in gone.json()["detail"]
        assert (await http.get(download, params={"split": "holdout"})).status_code == 422
        assert (await http.get(download)).status_code == 422  # the split is required
        negative = await http.get(download, params={"split": "test", "fold": -1})
        assert negative.status_code == 422
        beyond = await http.get(download, params={"split": "test", "fold": 3})
        assert beyond.status_code == 404 and "has no fold 3; folds: [0]" in beyond.json()["detail"]
        # no failed build was recorded by the refused requests
        assert len((await http.get("/dataset/list")).json()["datasets"]) == known


async def test_files_outside_the_datasets_dir_are_not_served(built, data_app, tmp_path):
    """A catalog record whose directory is a symlink out of datasets_dir gets 403."""
    settings = data_app.state.settings
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    source = Path(built["classification"]["out_dir"]) / "train.parquet"
    (outside / "train.parquet").write_bytes(source.read_bytes())
    link = settings.datasets_dir / "escape"
    link.symlink_to(outside, target_is_directory=True)
    record = {k: built["classification"][k] for k in ("request", "symbols", "counts")}
    with open_catalog(settings.catalog) as catalog:
        ident = catalog.create_dataset(
            {**record, "registry_version": "1.2.0", "status": "ready", "out_dir": str(link)}
        )
    try:
        async with client(data_app) as http:
            got = await http.get(f"/dataset/{ident}/download", params={"split": "train"})
        assert got.status_code == 403
        assert "outside the served datasets dir" in got.json()["detail"]
    finally:
        with open_catalog(settings.catalog) as catalog:
            catalog.update_dataset(ident, status="failed", error="test record")


async def test_estimates_come_from_past_builds(built, data_app):
    start, end = parse_time("2022-01-05"), parse_time("2022-01-25")  # 20 days
    assert build_estimate_s([], 1, start, end, "1m") == 20 * FALLBACK_S_PER_SYMBOL_DAY
    assert build_estimate_s([], 1, start, start + DAY_MS, "1m") == MIN_ESTIMATE_S
    with open_catalog(data_app.state.settings.catalog) as catalog:
        past = catalog.list_datasets(status="ready")
    rates = [r["timings"]["total"] / 4 for r in past if r["id"] == built["classification"]["id"]]
    rates += [r["timings"]["total"] / 6 for r in past if r["id"] == built["walk_forward"]["id"]]
    assert len(rates) == 2
    expected = max(MIN_ESTIMATE_S, round(sum(rates) / 2 * 2 * 20, 2))
    assert build_estimate_s(past, 2, start, end, "1m") == expected
    assert build_estimate_s(past, 1, start, end, "1s") == 20 * FALLBACK_S_PER_SYMBOL_DAY


async def test_shutdown_drops_queued_builds(jan_store, tmp_path):
    app = make_app(
        Settings(
            data_dir=jan_store,
            datasets_dir=tmp_path / "datasets",
            cache_dir=tmp_path / "cache",  # empty: the first build is cold and keeps the worker
            catalog=str(tmp_path / "catalog.db"),
            ws_gateway_url=None,
        )
    )
    async with client(app) as http:
        first, second = [
            (await http.post("/dataset/build", json=CLASSIFICATION)).json()["id"] for _ in range(2)
        ]
        await shutdown(app)  # lets a running build finish
        late = await http.post("/dataset/build", json=CLASSIFICATION)
        assert late.status_code == 503 and "shut down" in late.json()["detail"]
        records = {r["id"]: r for r in (await http.get("/dataset/list")).json()["datasets"]}
    assert len(records) == 3
    assert records[second]["status"] == "failed"
    assert records[second]["error"] == "the build never started"
    assert records[first]["status"] in ("ready", "failed")  # whether it had started or not
    assert records[first]["job"]["status"] in ("done", "cancelled")


def split_table(record: dict, split: str, fold: int | None = None) -> pa.Table:
    name = f"fold={fold}/{split}.parquet" if fold is not None else f"{split}.parquet"
    return pq.read_table(Path(record["out_dir"]) / name)


async def evaluate(app: FastAPI, body: dict) -> httpx.Response:
    async with client(app) as http:
        return await http.post("/model/evaluate", json=body)


async def test_evaluate_classification_against_sklearn(built, data_app):
    record = built["classification"]
    truth = split_table(record, "test")["target_direction"].to_pylist()
    assert {-1, 0, 1} == set(truth)
    body = {"dataset_id": record["id"], "split": "test"}

    perfect = await evaluate(data_app, {**body, "predictions": truth})
    assert perfect.status_code == 200, perfect.text
    result = perfect.json()
    assert result["task"] == "classification" and result["target"] == "target_direction"
    assert result["rows"] == len(truth) == record["counts"]["splits"]["test"]["rows"]
    assert result["metrics"] == {
        "accuracy": 1.0,
        "precision_macro": 1.0,
        "recall_macro": 1.0,
        "f1_macro": 1.0,
    }

    flat = [0] * len(truth)
    constant = (await evaluate(data_app, {**body, "predictions": flat})).json()["metrics"]
    macro = {"average": "macro", "zero_division": 0}
    assert constant["accuracy"] == pytest.approx(accuracy_score(truth, flat))
    assert constant["precision_macro"] == pytest.approx(precision_score(truth, flat, **macro))
    assert constant["recall_macro"] == pytest.approx(recall_score(truth, flat, **macro))
    assert constant["f1_macro"] == pytest.approx(f1_score(truth, flat, **macro))
    assert 0 < constant["accuracy"] < 1

    short = await evaluate(data_app, {**body, "predictions": truth[:-1]})
    assert short.status_code == 422
    assert f"{len(truth) - 1} predictions for the {len(truth)} rows" in short.json()["detail"]
    fractional = await evaluate(data_app, {**body, "predictions": [0.5] * len(truth)})
    assert fractional.status_code == 422 and "classes -1, 0 or 1" in fractional.json()["detail"]
    unknown = await evaluate(data_app, {**body, "dataset_id": "ds-unknown", "predictions": [0]})
    assert unknown.status_code == 404


async def test_evaluate_regression_and_keyed_predictions(built, data_app):
    record = built["walk_forward"]
    table = split_table(record, "validation", fold=1)
    truth = np.asarray(table["target_return"].to_pylist())
    body = {"dataset_id": record["id"], "split": "validation", "fold": 1}

    perfect = (await evaluate(data_app, {**body, "predictions": truth.tolist()})).json()
    assert perfect["task"] == "regression" and perfect["target"] == "target_return"
    assert perfect["rows"] == record["counts"]["folds"][1]["validation"]["rows"]
    assert perfect["metrics"] == {"mae": 0.0, "rmse": 0.0, "directional_accuracy": 1.0}

    guess = np.full(len(truth), 0.0005)
    constant = (await evaluate(data_app, {**body, "predictions": guess.tolist()})).json()
    assert constant["metrics"] == pytest.approx(
        {
            "mae": mean_absolute_error(truth, guess),
            "rmse": root_mean_squared_error(truth, guess),
            "directional_accuracy": float(np.mean(truth > 0)),
        }
    )

    # {ts, symbol, prediction} in any order, ts as epoch ms or ISO-8601, scores the same
    stamps = pc.cast(table["ts"], pa.int64()).to_pylist()
    keyed = [
        {"ts": iso(ts) if i % 2 else ts, "symbol": SYMBOL, "prediction": 0.0005}
        for i, ts in enumerate(stamps)
    ]
    random.Random(7).shuffle(keyed)
    shuffled = (await evaluate(data_app, {**body, "predictions": keyed})).json()
    assert shuffled["metrics"] == constant["metrics"]
    missing = await evaluate(data_app, {**body, "predictions": keyed[1:]})
    assert missing.status_code == 422 and "none for" in missing.json()["detail"]
    stranger = [*keyed[1:], {**keyed[0], "symbol": "ETHUSDT"}]
    wrong = await evaluate(data_app, {**body, "predictions": stranger})
    assert wrong.status_code == 422 and "ETHUSDT" in wrong.json()["detail"]


# --- backfill -------------------------------------------------------------------------------


class BackfillSettings(Settings):
    """The settings the backfill routes read with getattr, declared for these tests."""

    bybit_url: str
    bybit_archive_url: str
    backfill_delay_s: float = 0.0
    backfill_max_days: int = 30


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBybit]:
    klines = candles_from_capture(shared(KLINES_31D))
    first, last = int(klines[SYMBOL][0][0]), int(klines[SYMBOL][-1][0])
    with FakeBybit(klines, {SYMBOL: funding_schedule(SYMBOL, first, last)}) as server:
        yield server


@pytest.fixture
def backfill_api(fake: FakeBybit, tmp_path: Path) -> Iterator[Callable[..., FastAPI]]:
    apps = []

    def make(**settings: Any) -> FastAPI:
        app = make_app(
            BackfillSettings(
                data_dir=tmp_path / "raw",
                datasets_dir=tmp_path / "datasets",
                catalog=str(tmp_path / "catalog.db"),
                ws_gateway_url=None,
                bybit_url=fake.url,
                bybit_archive_url=fake.archive_url,
                **settings,
            )
        )
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.state.jobs.shutdown()


async def status(http: httpx.AsyncClient, job_id: str) -> dict:
    return (await http.get(f"/backfill/status/{job_id}")).json()


async def test_historical_backfill_fills_the_raw_store(backfill_api, fake):
    app = backfill_api()
    async with client(app) as http:
        queued = await http.post(
            "/backfill/historical",
            json={"symbol": SYMBOL, "start": "2022-01-10", "end": "2022-01-12"},
        )
        assert queued.status_code == 202, queued.text
        assert queued.json()["status"] in ("pending", "running")
        job_id = queued.json()["job_id"]
        job = await poll(
            lambda: status(http, job_id), lambda j: j["status"] not in ("pending", "running")
        )
    assert job["status"] == "done", job["error"]
    assert job["types"] == ["klines", "funding"]  # what registry 1.2.0 needs
    assert job["counts"] == {"done": 6}
    assert job["rows"] == 3 * 1440 + 3 * 3  # candles and 8-hourly funding settlements
    stored = raw.read(app.state.settings.data_dir, "klines")
    assert stored.num_rows == 3 * 1440
    closes = pc.cast(stored["ts"], pa.int64())  # a candle is stored on the day of its close
    assert [pc.min(closes).as_py(), pc.max(closes).as_py()] == [
        parse_time("2022-01-10"),
        parse_time("2022-01-12T23:59"),
    ]


async def test_bad_backfill_requests_are_refused(backfill_api, fake):
    app = backfill_api()
    good = {"symbol": SYMBOL, "start": "2022-01-10", "end": "2022-01-11"}
    async with client(app) as http:
        unknown = await http.post("/backfill/historical", json={**good, "symbol": "BTCUSDX"})
        assert unknown.status_code == 422 and "Bybit rejected" in unknown.json()["detail"]
        backwards = await http.post("/backfill/historical", json={**good, "end": "2022-01-08"})
        assert backwards.status_code == 422 and "is not after start" in backwards.json()["detail"]
        types = await http.post("/backfill/historical", json={**good, "types": ["candles"]})
        assert types.status_code == 422 and "unknown data type" in types.json()["detail"]
        garbage = await http.post("/backfill/historical", json={**good, "start": "last week"})
        assert garbage.status_code == 422 and "not a date or timestamp" in garbage.text
        assert (await http.get("/backfill/status/0123456789ab")).status_code == 404
        assert (await http.get("/backfill/status/not%20an%20id")).status_code == 422
        assert (await http.post("/backfill/0123456789ab/cancel")).status_code == 404
    assert app.state.jobs.jobs() == []  # nothing was queued


async def test_cancel_a_running_and_a_queued_backfill(backfill_api, fake):
    app = backfill_api(backfill_delay_s=0.2)
    ten_days = {"symbol": SYMBOL, "start": "2022-01-01", "end": "2022-01-10", "types": ["klines"]}
    async with client(app) as http:
        running = (await http.post("/backfill/historical", json=ten_days)).json()["job_id"]
        queued = (await http.post("/backfill/historical", json=ten_days)).json()["job_id"]
        await poll(lambda: status(http, running), lambda j: j["calls_total"] >= 1)
        assert (await status(http, queued))["status"] == "pending"  # one job at a time

        dropped = await http.post(f"/backfill/{queued}/cancel")
        assert dropped.status_code == 202 and dropped.json()["status"] == "cancelled"
        asked = time.monotonic()
        assert (await http.post(f"/backfill/{running}/cancel")).status_code == 202
        stopped = await poll(
            lambda: status(http, running), lambda j: j["status"] not in ("pending", "running")
        )
        assert stopped["status"] == "cancelled"
        assert time.monotonic() - asked < 1.0  # at the next call, not after 20 calls
        assert stopped["counts"]["pending"] > 0
        again = await http.post(f"/backfill/{running}/cancel")
        assert again.status_code == 409 and "already ended (cancelled)" in again.json()["detail"]
        await asyncio.sleep(0.3)
        assert (await status(http, queued))["calls_total"] == 0  # it never ran


async def test_auto_backfill_fills_recent_gaps_once(backfill_api, fake):
    app = backfill_api(backfill_max_days=1)
    today = time.time_ns() // 1_000_000 // DAY_MS * DAY_MS
    async with client(app) as http:
        first = await http.post("/backfill/auto")
        assert first.status_code == 202, first.text
        answer = first.json()
        assert answer["since"] == iso(today - DAY_MS)
        assert answer["types"] == ["klines", "funding"]
        [entry] = answer["jobs"]
        assert entry["symbol"] == SYMBOL and entry["missing"][0].startswith(
            f"klines {iso(today - DAY_MS)}"
        )
        job = await poll(
            lambda: status(http, entry["job_id"]),
            lambda j: j["status"] not in ("pending", "running"),
        )
        assert job["status"] == "done", job["error"]
        assert job["start"] == iso(today - DAY_MS) and job["calls_total"] > 0
        # finished days are complete now; only the unsettled tail is asked for again
        [again] = (await http.post("/backfill/auto")).json()["jobs"]
        assert len(again["missing"]) == 2 and all(
            m.split(" ")[1] >= iso(today - DAY_MS) for m in again["missing"]
        )
        await poll(
            lambda: status(http, again["job_id"]),
            lambda j: j["status"] not in ("pending", "running"),
        )
