"""Run the real service against the real RabbitMQ on 127.0.0.1 with unique queue names, replay
captures into it, collect what it publishes, and recompute the same features in batch from the
raw store it wrote. Shared by the live integration tests and the P4 benchmark."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
from faststream.rabbit import RabbitBroker, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage

from featlib import compute, raw
from featlib.dataset import book_tables
from service.app import create_app
from service.settings import Settings

RABBIT = "amqp://guest:guest@127.0.0.1:5672/"


def settings_for(prefix: str, data_dir: Path, **changes: Any) -> Settings:
    changes = {
        "ws_gateway_url": None,
        "api_key": "secret",
        "catalog": str(data_dir.parent / "catalog.db"),
        **changes,
    }
    return Settings(
        rabbit_url=RABBIT,
        queue_orderbook=f"{prefix}.orderbook",
        queue_trades=f"{prefix}.trades",
        queue_kline=f"{prefix}.kline",
        queue_ticker=f"{prefix}.ticker",
        queue_funding=f"{prefix}.funding",
        queue_features=f"{prefix}.features",
        queue_dead_letter=f"{prefix}.dead",
        queue_dataset_ready=f"{prefix}.dataset-ready",
        data_dir=data_dir,
        **changes,
    )


@dataclass
class Collected:
    vectors: list[dict] = field(default_factory=list)
    """As the handler got them (aio-pika runs each delivery in a task of its own: two can
    swap; `in_queue_order` has them as the queue delivered them)."""
    tags: list[int] = field(default_factory=list)
    dead: list[tuple[bytes, dict]] = field(default_factory=list)
    ready: list[dict] = field(default_factory=list)

    def in_queue_order(self) -> list[dict]:
        """The vectors by delivery tag (one consumer channel: the queue's order)."""
        pairs = sorted(zip(self.tags, self.vectors, strict=True), key=lambda p: p[0])
        return [v for _, v in pairs]


@contextlib.asynccontextmanager
async def collector(settings: Settings) -> AsyncIterator[Collected]:
    """A second connection reading features, dead letters and dataset announcements, as
    model-service would."""
    out = Collected()
    broker = RabbitBroker(settings.rabbit_url)

    @broker.subscriber(RabbitQueue(settings.queue_features, durable=True))
    async def vectors(message: RabbitMessage) -> None:
        out.vectors.append(orjson.loads(message.body))
        out.tags.append(message.raw_message.delivery_tag)

    @broker.subscriber(RabbitQueue(settings.queue_dead_letter, durable=True))
    async def dead(message: RabbitMessage) -> None:
        out.dead.append((message.body, dict(message.headers)))

    @broker.subscriber(RabbitQueue(settings.queue_dataset_ready, durable=True))
    async def ready(message: RabbitMessage) -> None:
        out.ready.append(orjson.loads(message.body))

    await broker.start()
    try:
        yield out
    finally:
        await broker.stop()


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Any]:
    """The service app with its lifespan (broker connected, loops running)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


async def wait_for(predicate, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def settle(collected: Collected, quiet: float = 1.0, timeout: float = 120.0) -> None:
    """Wait until no new vector has arrived for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    seen, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        if len(collected.vectors) != seen:
            seen, since = len(collected.vectors), time.monotonic()
        elif time.monotonic() - since > quiet:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("vectors kept arriving")


async def purge(settings: Settings) -> None:
    """Delete the test's queues."""
    broker = RabbitBroker(settings.rabbit_url)
    await broker.connect()
    try:
        for name in (
            settings.queue_orderbook,
            settings.queue_trades,
            settings.queue_kline,
            settings.queue_ticker,
            settings.queue_funding,
            settings.queue_features,
            settings.queue_dead_letter,
            settings.queue_dataset_ready,
        ):
            queue = await broker.declare_queue(RabbitQueue(name, durable=True))
            await queue.delete(if_unused=False, if_empty=False)
    finally:
        await broker.stop()


def batch_features(
    plan: compute.Plan, data_dir: Path, rows: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], dict[str, float | None]]:
    """The same features at the same (symbol, ts), computed the dataset builder's way: DuckDB
    over the raw store's Parquet files, books replayed from stored snapshots and deltas."""
    rows = sorted(set(rows))
    symbols = sorted({s for s, _ in rows})
    grid = pa.table(
        {"symbol": [s for s, _ in rows], "ts": pa.array([t for _, t in rows], pa.int64())}
    )
    con = duckdb.connect()
    for kind in plan.raw_tables:
        if kind in raw.RAW_SCHEMAS:
            raw.register(con, data_dir, kind, symbols)
    if "orderbook" in plan.sources:
        samples, changes, _, _ = book_tables(
            data_dir, symbols, compute.prepare_grid(grid), min(t for _, t in rows) - 86_400_000
        )
        con.register("book_samples", samples)
        con.register("book_changes", changes)
    out = compute.compute(plan, con, grid)
    names = list(plan.names)
    table = {n: out[n].to_pylist() for n in names}
    return {
        (s, t): {n: table[n][i] for n in names}
        for i, (s, t) in enumerate(
            zip(out["symbol"].to_pylist(), out["ts"].to_pylist(), strict=True)
        )
    }


async def replay_cli(files: Iterable[Path], prefix: str) -> str:
    """`python -m pipelines.replay FILE... --speed 0` in its own process, as ws-gateway would
    publish beside the service; returns what it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipelines.replay",
        *map(str, files),
        "--speed",
        "0",
        "--prefix",
        prefix,
        "--url",
        RABBIT,
        "--quiet",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


def unique_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


class FakeGateway:
    """ws-gateway's REST API as the service uses it: records subscribe and resync requests."""

    def __init__(self) -> None:
        self.requests: list[tuple[float, str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                outer.requests.append((time.time(), self.path, body))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeGateway:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.requests]
