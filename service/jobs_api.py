"""The HTTP job APIs: dataset builds and downloads, model evaluation, historical backfill.

    attach(app)                      # once, at app creation: app.state.jobs (a JobRunner)
    app.include_router(job_routes, dependencies=[Depends(require_key)])
    await shutdown(app)              # in the lifespan's exit

Builds and backfills run in the runner's worker threads, one at a time per kind, in the order
asked. A build writes `settings.datasets_dir/{id}/` and records building → ready | failed in
the catalog; when ready, `app.state.on_dataset_ready(record)` (sync or async; None: nothing)
gets the catalog record. Ids and file names from a request are checked against strict
patterns and every file served must resolve inside `settings.datasets_dir`.

Settings read with defaults (add them to service.settings to configure): `bybit_url`,
`bybit_archive_url`, `bybit_category`, `backfill_delay_s`, `backfill_timeout_s`,
`backfill_retries`, `backfill_max_days` (POST /backfill/auto: days back from today).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError, field_validator
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    precision_score,
    recall_score,
    root_mean_squared_error,
)

from featlib import backfill, compute, dataset, registry
from featlib.backfill import BackfillJob, BackfillOptions, BackfillRequest
from featlib.cache import default_cache_dir
from featlib.catalog import Catalog, CatalogUnavailable, open_catalog
from featlib.timeutil import DAY_MS, iso, parse_time
from service.jobs import JobError, JobRunner, build_estimate_s

log = logging.getLogger(__name__)

KINDS = ("dataset", "backfill")
DATASET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
SEMVER = r"^\d+\.\d+\.\d+$"
NOTIFY_TIMEOUT_S = 30.0
Split = Literal["train", "validation", "test"]

job_routes = APIRouter()


def attach(app: FastAPI) -> JobRunner:
    """Put a JobRunner on app.state.jobs (once) and default app.state.on_dataset_ready to None."""
    if getattr(app.state, "jobs", None) is None:
        app.state.jobs = JobRunner(KINDS)
    if not hasattr(app.state, "on_dataset_ready"):
        app.state.on_dataset_ready = None
    return app.state.jobs


async def shutdown(app: FastAPI) -> None:
    """Drop queued jobs, stop running backfills and wait for a running build to end."""
    await asyncio.to_thread(app.state.jobs.shutdown)


# --- shared helpers -------------------------------------------------------------------------


@contextmanager
def _catalog(settings: Any) -> Iterator[Catalog]:
    try:
        catalog = open_catalog(settings.catalog)
    except CatalogUnavailable as exc:
        raise HTTPException(503, f"catalog unavailable: {exc}") from None
    with catalog:
        yield catalog


def _feature_set(settings: Any, catalog: Catalog, asked: str | None) -> registry.FeatureSet:
    """The asked version, else the configured one, else the catalog's active one, else the
    registry default (as the CLI and the live service choose)."""
    version = asked or settings.registry_version or catalog.active_version()
    try:
        return registry.load(version, settings.registry_dir)
    except registry.RegistryError as exc:
        raise HTTPException(422, str(exc)) from None


def _invalid(exc: ValidationError) -> HTTPException:
    problems = [
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    ]
    return HTTPException(422, "; ".join(problems))


def _dataset_id(value: str) -> str:
    if not DATASET_ID.fullmatch(value):
        raise HTTPException(
            422,
            f"not a dataset id: {value!r} (letters, digits, '-' and '_', e.g. "
            "ds-20220103T000000Z-0123456789ab)",
        )
    return value


def _record(catalog: Catalog, dataset_id: str) -> dict[str, Any]:
    record = catalog.get_dataset(_dataset_id(dataset_id))
    if record is None:
        raise HTTPException(404, f"no dataset {dataset_id} in the catalog")
    return record


def _ready(catalog: Catalog, dataset_id: str) -> dict[str, Any]:
    record = _record(catalog, dataset_id)
    if record["status"] != "ready":
        reason = f": {record['error']}" if record.get("error") else "; try again when it is ready"
        raise HTTPException(409, f"dataset {dataset_id} is {record['status']}{reason}")
    return record


def _with_job(record: dict[str, Any], runner: JobRunner) -> dict[str, Any]:
    try:
        job = runner.get(record["id"])
    except KeyError:
        return record
    return {**record, "job": {**job.to_dict(), "queue_position": runner.position(job)}}


def _split_file(settings: Any, record: dict[str, Any], split: str, fold: int | None) -> Path:
    """The Parquet file of a ready dataset's split (and walk-forward fold), checked to resolve
    inside the datasets directory."""
    ident, fold = record["id"], 0 if fold is None else fold
    folds = {f["fold"]: f for f in (record.get("counts") or {}).get("folds", [])}
    if fold not in folds:
        raise HTTPException(404, f"dataset {ident} has no fold {fold}; folds: {sorted(folds)}")
    if split not in folds[fold]:
        raise HTTPException(404, f"dataset {ident} fold {fold} has no {split} split")
    walk = ((record.get("request") or {}).get("split") or {}).get("strategy") == "walk_forward"
    name = f"fold={fold}/{split}.parquet" if walk else f"{split}.parquet"
    root = Path(settings.datasets_dir).resolve()
    path = (Path(record.get("out_dir") or root / ident) / name).resolve()
    if not path.is_relative_to(root):
        raise HTTPException(403, f"dataset {ident} is stored outside the served datasets dir")
    if not path.is_file():
        raise HTTPException(404, f"{name} of dataset {ident} is missing from {path.parent}")
    return path


# --- datasets -------------------------------------------------------------------------------


@job_routes.post("/dataset/build", status_code=202, tags=["datasets"])
async def build_dataset(request: Request, body: dataset.DatasetRequest) -> dict[str, Any]:
    """Queue a build; 202 with its id and estimated completion (UTC)."""
    loop = asyncio.get_running_loop()
    return await run_in_threadpool(_queue_build, request.app, body, loop)


def _queue_build(
    app: FastAPI, body: dataset.DatasetRequest, loop: asyncio.AbstractEventLoop
) -> dict[str, Any]:
    settings, runner = app.state.settings, app.state.jobs
    with _catalog(settings) as catalog:
        fs = _feature_set(settings, catalog, body.registry_version)
        body = body.model_copy(update={"registry_version": fs.version})
        try:
            needs = dataset.required_history(fs, body.target)
            dataset.check_history(settings.data_dir, body, needs)
        except dataset.DatasetError as exc:
            raise HTTPException(422, str(exc)) from None
        past = catalog.list_datasets(status="ready", limit=20)
        ident = catalog.create_dataset(dataset.catalog_record(body))
    estimate = build_estimate_s(past, len(body.symbols), body.start, body.end, body.resolution)
    eta = runner.eta("dataset", estimate)
    out_dir = Path(settings.datasets_dir) / ident
    try:
        job = runner.submit(
            "dataset",
            partial(_build, app, ident, body, out_dir, loop),
            job_id=ident,
            dropped=partial(_never_built, settings, ident),
            estimate_s=estimate,
        )
    except JobError as exc:
        _never_built(settings, ident)
        raise HTTPException(503, f"cannot queue the build: {exc}") from None
    return {
        "id": job.id,
        "status": "queued",
        "estimated_completion": iso(math.ceil(eta) * 1000),
        "estimate_s": estimate,
    }


def _build(
    app: FastAPI,
    ident: str,
    body: dataset.DatasetRequest,
    out_dir: Path,
    loop: asyncio.AbstractEventLoop,
) -> None:
    settings = app.state.settings
    with open_catalog(settings.catalog) as catalog:
        dataset.build_recorded(
            catalog,
            ident,
            body,
            settings.data_dir,
            out_dir,
            registry_dir=settings.registry_dir,
            log=lambda message: log.info("dataset %s: %s", ident, message),
            cache_dir=settings.cache_dir or default_cache_dir(settings.data_dir),
        )
        record = catalog.get_dataset(ident)
    _notify(getattr(app.state, "on_dataset_ready", None), jsonable_encoder(record), loop)


def _never_built(settings: Any, ident: str) -> None:
    with open_catalog(settings.catalog) as catalog:
        catalog.update_dataset(ident, status="failed", error="the build never started")


def _notify(
    callback: Callable[[dict[str, Any]], Any] | None,
    record: dict[str, Any],
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Hand a ready record to the callback; a coroutine runs on the app's event loop."""
    if callback is None:
        return
    try:
        result = callback(record)
        if inspect.iscoroutine(result):
            try:
                future = asyncio.run_coroutine_threadsafe(result, loop)
            except RuntimeError:  # the loop is closed
                result.close()
                raise
            future.result(timeout=NOTIFY_TIMEOUT_S)
    except Exception:
        log.exception("on_dataset_ready failed for dataset %s", record.get("id"))


@job_routes.get("/dataset/list", tags=["datasets"])
def list_datasets(
    request: Request,
    status: Literal["building", "ready", "failed"] | None = None,
    registry_version: Annotated[str | None, Query(pattern=SEMVER)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> dict[str, Any]:
    """Datasets in the catalog, newest first (a queued or running build carries its job)."""
    with _catalog(request.app.state.settings) as catalog:
        records = catalog.list_datasets(status, registry_version, limit)
    return {"datasets": [_with_job(r, request.app.state.jobs) for r in records]}


@job_routes.get("/dataset/{dataset_id:path}/download", tags=["datasets"])
def download_dataset(
    request: Request,
    dataset_id: str,
    split: Split,
    fold: Annotated[int | None, Query(ge=0, description="walk-forward fold (default 0)")] = None,
) -> FileResponse:
    """A split's Parquet file (of one walk-forward fold)."""
    settings = request.app.state.settings
    with _catalog(settings) as catalog:
        record = _ready(catalog, dataset_id)
    path = _split_file(settings, record, split, fold)
    name = f"{dataset_id}-{split}" + ("" if fold is None else f"-fold{fold}") + ".parquet"
    return FileResponse(path, media_type="application/vnd.apache.parquet", filename=name)


@job_routes.get("/dataset/{dataset_id:path}", tags=["datasets"])
def get_dataset(request: Request, dataset_id: str) -> dict[str, Any]:
    """One dataset's catalog record (404 unknown; 422 not an id)."""
    with _catalog(request.app.state.settings) as catalog:
        record = _record(catalog, dataset_id)
    return _with_job(record, request.app.state.jobs)


# --- model evaluation -----------------------------------------------------------------------


class Prediction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ts: int | str = Field(description="the row's ts: epoch ms or ISO-8601 (UTC)")
    symbol: str
    prediction: FiniteFloat

    @field_validator("ts")
    @classmethod
    def _ts(cls, value: int | str) -> int:
        return parse_time(value)


class Evaluation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str
    split: Split
    fold: int | None = Field(default=None, ge=0, description="walk-forward fold (default 0)")
    predictions: list[FiniteFloat] | list[Prediction] = Field(
        min_length=1,
        description="one number per row in the file's order, or {ts, symbol, prediction} "
        "objects covering every row once",
    )


def _aligned(predictions: list, table: pa.Table, where: str) -> np.ndarray:
    """Predictions in the split's row order; 422 when they do not cover every row once."""
    n = len(table)
    if not isinstance(predictions[0], Prediction):
        if len(predictions) != n:
            raise HTTPException(
                422,
                f"{len(predictions)} predictions for the {n} rows of {where}: give one per "
                "row in the file's order, or {ts, symbol, prediction} objects",
            )
        return np.asarray(predictions, dtype=np.float64)
    stamps = pc.cast(table["ts"], pa.int64()).to_pylist()
    index = {key: i for i, key in enumerate(zip(stamps, table["symbol"].to_pylist(), strict=True))}
    out = np.full(n, np.nan)
    for p in predictions:
        i = index.get((p.ts, p.symbol))
        if i is None:
            raise HTTPException(422, f"no row {iso(p.ts)} {p.symbol} in {where}")
        if not np.isnan(out[i]):
            raise HTTPException(422, f"two predictions for {iso(p.ts)} {p.symbol}")
        out[i] = p.prediction
    missing = np.flatnonzero(np.isnan(out))
    if len(missing):
        first = int(missing[0])
        raise HTTPException(
            422,
            f"{len(predictions)} predictions for the {n} rows of {where}; none for "
            f"{iso(stamps[first])} {table['symbol'][first].as_py()} and "
            f"{len(missing) - 1} more",
        )
    return out


@job_routes.post("/model/evaluate", tags=["datasets"])
def evaluate(request: Request, body: Evaluation) -> dict[str, Any]:
    """Score predictions against a split's target: accuracy, precision, recall, F1 (macro)
    for classification datasets, MAE, RMSE and directional accuracy for regression."""
    settings = request.app.state.settings
    with _catalog(settings) as catalog:
        record = _ready(catalog, body.dataset_id)
    path = _split_file(settings, record, body.split, body.fold)
    names = pq.read_schema(path).names
    target = next(
        (c for c in ("target_direction", "target_risk_adjusted") if c in names), "target_return"
    )
    table = pq.read_table(path, columns=["ts", "symbol", target])
    where = f"dataset {body.dataset_id} {body.split} (fold {body.fold or 0})"
    if not len(table):
        raise HTTPException(422, f"{where} has no rows to score")
    predicted = _aligned(body.predictions, table, where)
    truth = pc.cast(table[target], pa.float64()).to_numpy(zero_copy_only=False)
    scored = ~np.isnan(truth)
    y, p = truth[scored], predicted[scored]
    if target == "target_direction":
        bad = np.flatnonzero(~np.isin(predicted, (-1, 0, 1)))
        if len(bad):
            raise HTTPException(
                422,
                f"classification predictions are classes -1, 0 or 1 (like target_direction); "
                f"prediction {int(bad[0])} is {predicted[bad[0]]}",
            )
        y, p = y.astype(int), p.astype(int)
        metrics = {"accuracy": float(accuracy_score(y, p))}
        for name, score in (("precision", precision_score), ("recall", recall_score)):
            metrics[f"{name}_macro"] = float(score(y, p, average="macro", zero_division=0))
        metrics["f1_macro"] = float(f1_score(y, p, average="macro", zero_division=0))
    else:
        metrics = {
            "mae": float(mean_absolute_error(y, p)),
            "rmse": float(root_mean_squared_error(y, p)),
            "directional_accuracy": float(np.mean(np.sign(p) == np.sign(y))),
        }
    return {
        "dataset_id": body.dataset_id,
        "split": body.split,
        "fold": body.fold or 0,
        "task": "classification" if target == "target_direction" else "regression",
        "target": target,
        "rows": int(scored.sum()),
        "metrics": metrics,
    }


# --- backfill -------------------------------------------------------------------------------


class HistoricalBackfill(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbol: str = Field(examples=["BTCUSDT"])
    start: int | str = Field(description="UTC date / ISO-8601 time, or epoch ms")
    end: int | str = Field(description="exclusive; a date-only end includes that day")
    types: list[str] | None = Field(
        default=None,
        description="klines, funding, trades, ticker, orderbook, recent_trades; default: "
        "what the active registry version needs",
    )
    force: bool = Field(default=False, description="fetch days even when already complete")


def backfill_options(settings: Any) -> BackfillOptions:
    """How to reach Bybit, from settings (read with featlib's defaults)."""
    defaults = BackfillOptions()
    return BackfillOptions(
        base_url=getattr(settings, "bybit_url", defaults.base_url),
        archive_url=getattr(settings, "bybit_archive_url", defaults.archive_url),
        category=getattr(settings, "bybit_category", defaults.category),
        delay_s=getattr(settings, "backfill_delay_s", defaults.delay_s),
        timeout_s=getattr(settings, "backfill_timeout_s", defaults.timeout_s),
        max_retries=getattr(settings, "backfill_retries", defaults.max_retries),
    )


def _default_types(settings: Any) -> list[str]:
    with _catalog(settings) as catalog:
        fs = _feature_set(settings, catalog, None)
    return dataset.backfill_types(compute.plan(fs.names))


def _queue_backfill(runner: JobRunner, settings: Any, wanted: BackfillRequest) -> BackfillJob:
    job = BackfillJob(wanted)
    run = partial(backfill.run, job, settings.data_dir, backfill_options(settings))
    runner.submit("backfill", run, job_id=job.id, stop=job.cancel, dropped=job.cancel, handle=job)
    return job


def _backfill_job(runner: JobRunner, job_id: str) -> BackfillJob:
    if not JOB_ID.fullmatch(job_id):
        raise HTTPException(422, f"not a job id: {job_id!r}")
    try:
        job = runner.get(job_id)
    except KeyError:
        job = None
    if job is None or job.kind != "backfill":
        raise HTTPException(404, f"no backfill job {job_id}")
    return job.handle


@job_routes.post("/backfill/historical", status_code=202, tags=["backfill"])
def backfill_historical(request: Request, body: HistoricalBackfill) -> dict[str, Any]:
    """Queue a backfill of one symbol's history; 202 with the job id."""
    settings = request.app.state.settings
    try:
        wanted = BackfillRequest(
            symbol=body.symbol,
            start=body.start,
            end=body.end,
            types=_default_types(settings) if body.types is None else body.types,
            force=body.force,
        )
    except ValidationError as exc:
        raise _invalid(exc) from None
    problem = backfill.symbol_problem(wanted.symbol, backfill_options(settings))
    if problem:
        raise HTTPException(422, problem)
    job = _queue_backfill(request.app.state.jobs, settings, wanted)
    return {"job_id": job.id, "status": job.status}


@job_routes.get("/backfill/status/{job_id}", tags=["backfill"])
def backfill_status(request: Request, job_id: str) -> dict[str, Any]:
    """A backfill job: status, per-date progress, calls, rows."""
    return _backfill_job(request.app.state.jobs, job_id).to_dict()


@job_routes.post("/backfill/{job_id}/cancel", status_code=202, tags=["backfill"])
def backfill_cancel(request: Request, job_id: str) -> dict[str, Any]:
    """Cancel a job: a queued one at once, a running one at its next call."""
    runner = request.app.state.jobs
    job = _backfill_job(runner, job_id)
    if job.finished:
        raise HTTPException(409, f"backfill job {job_id} has already ended ({job.status})")
    try:
        runner.cancel(job_id)
    except JobError as exc:
        raise HTTPException(409, str(exc)) from None
    return job.to_dict()


@job_routes.post("/backfill/auto", status_code=202, tags=["backfill"])
def backfill_auto(request: Request) -> dict[str, Any]:
    """Fill the configured symbols' gaps over the last `backfill_max_days` days and today."""
    settings, runner = request.app.state.settings, request.app.state.jobs
    days = getattr(settings, "backfill_max_days", 30)
    now = time.time_ns() // 1_000_000
    since = (now // DAY_MS - days) * DAY_MS
    types = _default_types(settings)
    funding_h = backfill_options(settings).funding_interval_h
    out = []
    for symbol in settings.symbols:
        gaps = backfill.missing_periods(
            settings.data_dir, symbol, since, now, types, funding_interval_h=funding_h
        )
        entry: dict[str, Any] = {"symbol": symbol, "missing": [str(g) for g in gaps]}
        if gaps:
            start, end = min(g.start_ms for g in gaps), max(g.end_ms for g in gaps)
            wanted = BackfillRequest(symbol=symbol, start=start, end=end, types=types)
            job = _queue_backfill(runner, settings, wanted)
            entry |= {"job_id": job.id, "status": job.status}
        else:
            entry["status"] = "up to date"
        out.append(entry)
    return {"since": iso(since), "types": types, "jobs": out}
