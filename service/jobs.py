"""Background jobs of the HTTP API: blocking featlib work (dataset builds, backfills) in worker
threads, one job at a time per kind, first come first served; status and timings by id.

    runner = JobRunner(("dataset", "backfill"))
    job = runner.submit("backfill", work, stop=backfill_job.cancel, handle=backfill_job)
    runner.get(job.id).to_dict()

Estimated completion of a queued dataset build (`build_estimate_s`, `JobRunner.eta`): the build
costs the mean seconds per symbol-day of the recent ready builds at the same resolution in the
catalog (timings.total / (symbols × days)), else FALLBACK_S_PER_SYMBOL_DAY; it starts after
the jobs ahead of it, each counted at its own estimate (the running one at what is left of it).
An estimate, not a promise: cold starts, order-book features and a busy machine take longer.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from featlib.timeutil import DAY_MS

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]

FALLBACK_S_PER_SYMBOL_DAY = 0.5
"""Seconds per symbol-day without build history: a 60-day 1-minute build of the minimal set
takes under 3 s warm (bench P1), so this leaves room for a cold process and richer sets."""
MIN_ESTIMATE_S = 1.0


class JobError(RuntimeError):
    """A job operation the runner refuses (unknown kind, closed runner, not cancellable)."""


@dataclass(eq=False)
class Job:
    """One unit of work: its state, timings and what the caller attached to it."""

    id: str
    kind: str
    work: Callable[[], Any] = field(repr=False)
    stop: Callable[[], None] | None = field(default=None, repr=False)
    dropped: Callable[[], None] | None = field(default=None, repr=False)
    handle: Any = None
    estimate_s: float | None = None
    status: JobStatus = "queued"
    error: str | None = None
    cancel_requested: bool = False
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    future: Future | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    @property
    def seconds(self) -> float | None:
        if self.started_at is None:
            return None
        return round((self.finished_at or time.time()) - self.started_at, 3)

    def remaining_s(self) -> float:
        """What is left of the estimate (0 when finished or without an estimate)."""
        if self.finished or self.estimate_s is None:
            return 0.0
        return max(0.0, self.estimate_s - (self.seconds or 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "error": self.error,
            "cancel_requested": self.cancel_requested,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "seconds": self.seconds,
            "estimate_s": self.estimate_s,
        }


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")


class JobRunner:
    """One worker thread per kind; a kind's jobs run one at a time in the order submitted."""

    def __init__(self, kinds: Iterable[str], *, keep: int = 500):
        self.keep = keep
        self._pools = {k: ThreadPoolExecutor(1, thread_name_prefix=f"jobs-{k}") for k in kinds}
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._closed = False

    def submit(
        self,
        kind: str,
        work: Callable[[], Any],
        *,
        job_id: str | None = None,
        stop: Callable[[], None] | None = None,
        dropped: Callable[[], None] | None = None,
        handle: Any = None,
        estimate_s: float | None = None,
    ) -> Job:
        """Queue `work` behind the kind's earlier jobs.

        `stop` asks running work to end early (None: it cannot be stopped once started);
        `dropped` runs when the job is cancelled before it started (it will never run)."""
        if kind not in self._pools:
            raise JobError(f"unknown job kind {kind!r}; known: {', '.join(self._pools)}")
        job = Job(
            id=job_id or uuid.uuid4().hex[:12],
            kind=kind,
            work=work,
            stop=stop,
            dropped=dropped,
            handle=handle,
            estimate_s=estimate_s,
        )
        with self._lock:
            if self._closed:
                raise JobError("the job runner is shut down")
            if job.id in self._jobs:
                raise JobError(f"job {job.id} exists already")
            self._jobs[job.id] = job
            self._forget_old()
            job.future = self._pools[kind].submit(self._run, job)
        return job

    def get(self, job_id: str) -> Job:
        """The job with this id (KeyError when unknown or forgotten)."""
        with self._lock:
            if job_id not in self._jobs:
                raise KeyError(f"no job {job_id!r}")
            return self._jobs[job_id]

    def jobs(self, kind: str | None = None) -> list[Job]:
        """Known jobs (of one kind), oldest first."""
        with self._lock:
            return [j for j in self._jobs.values() if kind is None or j.kind == kind]

    def position(self, job: Job) -> int:
        """How many jobs of its kind run or wait before a queued job (0 otherwise)."""
        if job.status != "queued":
            return 0
        ahead = self.jobs(job.kind)
        return sum(not j.finished for j in ahead[: ahead.index(job)])

    def eta(self, kind: str, estimate_s: float) -> float:
        """Epoch seconds when a job of `kind` submitted now, taking `estimate_s`, should end."""
        ahead = sum(j.remaining_s() for j in self.jobs(kind))
        return time.time() + ahead + estimate_s

    def cancel(self, job_id: str) -> Job:
        """Drop a queued job, or ask a running one to stop; finished jobs are left alone."""
        job = self.get(job_id)
        if job.finished:
            return job
        if job.future is not None and job.future.cancel():
            job.cancel_requested = True
            self._finish(job, "cancelled", "cancelled before it started")
            self._call(job.dropped, job, "dropped")
        elif job.stop is not None:
            job.cancel_requested = True
            job.stop()
        elif not job.finished:
            raise JobError(f"{job.kind} job {job.id} is running and cannot be stopped")
        return job

    def shutdown(self, wait: bool = True) -> None:
        """Drop queued jobs, ask running ones to stop, and (with `wait`) let the workers end."""
        with self._lock:
            self._closed = True
            pending = [j for j in self._jobs.values() if not j.finished]
        for job in pending:
            try:
                self.cancel(job.id)
            except JobError:
                log.info("waiting for %s job %s to finish", job.kind, job.id)
        for pool in self._pools.values():
            pool.shutdown(wait=wait)

    def _run(self, job: Job) -> None:
        with self._lock:
            job.status, job.started_at = "running", time.time()
        try:
            job.work()
        except Exception as exc:
            expected = isinstance(exc, ValueError)  # featlib's "cannot do that" errors
            log.warning("%s job %s failed: %s", job.kind, job.id, exc, exc_info=not expected)
            self._finish(job, "failed", f"{type(exc).__name__}: {exc}")
        else:
            self._finish(job, "done")

    def _finish(self, job: Job, status: JobStatus, error: str | None = None) -> None:
        with self._lock:
            job.status, job.error, job.finished_at = status, error, time.time()

    @staticmethod
    def _call(hook: Callable[[], None] | None, job: Job, what: str) -> None:
        if hook is None:
            return
        try:
            hook()
        except Exception:
            log.exception("%s hook of %s job %s failed", what, job.kind, job.id)

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.finished]
        for job in finished[: max(0, len(self._jobs) - self.keep)]:
            del self._jobs[job.id]


def build_estimate_s(
    past: Iterable[Mapping[str, Any]], symbols: int, start_ms: int, end_ms: int, resolution: str
) -> float:
    """Seconds a build of `symbols` over [start_ms, end_ms) should take, from past catalog
    records (see the module docstring)."""
    rates = []
    for record in past:
        request, total = record.get("request") or {}, (record.get("timings") or {}).get("total")
        try:
            span = (request["end"] - request["start"]) / DAY_MS * len(request["symbols"])
        except (KeyError, TypeError):
            continue
        same = record.get("status") == "ready" and request.get("resolution") == resolution
        if same and isinstance(total, int | float) and span > 0:
            rates.append(total / span)
    rate = sum(rates) / len(rates) if rates else FALLBACK_S_PER_SYMBOL_DAY
    return round(max(MIN_ESTIMATE_S, rate * symbols * (end_ms - start_ms) / DAY_MS), 2)
