"""The service's handlers and HTTP API with FastStream's in-memory TestRabbitBroker (the real
broker is exercised in tests/integration/test_live_service.py)."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
from faststream.rabbit import TestRabbitBroker
from faststream.rabbit.annotations import RabbitMessage

from featlib import checks, raw
from featlib.capture import read_lines
from service.app import create_app
from service.settings import Settings
from tests.conftest import KLINES_31D, shared

KEY = {"X-API-Key": "secret"}


@pytest.fixture
def app(tmp_path):
    settings = Settings(
        ws_gateway_url=None,
        data_dir=tmp_path / "raw",
        api_key="secret",
        catalog=str(tmp_path / "catalog.db"),
        registry_version="1.2.0",
        cadences=["1m"],
        flush_rows=100,
    )
    return create_app(settings)


@pytest.fixture(scope="module")
def candles() -> list[bytes]:
    return list(read_lines(shared(KLINES_31D)))[:800]


async def _run(app, lines, queue="ws-gateway.kline", loops=False):
    """Publish the lines to the in-memory broker, drain; `loops`: with the pipeline's compute
    and flush loops running (pausing 50 ms every 100 lines: time to compute ahead)."""
    broker, pipeline, settings = app.state.broker, app.state.pipeline, app.state.settings
    out = app.state.out_broker  # vectors leave on their own connection
    dead, vectors = [], []

    @broker.subscriber(settings.queue_dead_letter)
    async def collect_dead(body: bytes) -> None:  # (the consuming broker injects nothing)
        message = broker.context.get_local("message")
        dead.append((message.body, dict(message.headers)))

    @out.subscriber(settings.queue_features)
    async def collect_vectors(message: RabbitMessage) -> None:
        vectors.append(orjson.loads(message.body))

    async with TestRabbitBroker(out), TestRabbitBroker(broker) as test:
        if loops:
            pipeline.start()
        for n, line in enumerate(lines):
            await test.publish(line, queue=queue)
            if loops and n % 100 == 99:
                await asyncio.sleep(0.05)
        await pipeline.drain()
        if loops:
            await pipeline.stop()
    return dead, vectors


async def test_malformed_messages_are_dead_lettered_with_the_reason(app, candles):
    bad = [
        b'{"topic": "kline.1.BTCUSDT", "data": [',
        b"[1, 2]",
        candles[5].replace(b'"close":"', b'"close":"x'),
    ]
    dead, vectors = await _run(app, [*candles[:300], *bad, *candles[300:]])
    assert [body for body, _ in dead] == bad
    reasons = [headers["x-reason"] for _, headers in dead]
    assert "not JSON" in reasons[0] and "expected a JSON object" in reasons[1]
    assert dead[2][1]["x-field"] == "data[0].close" and dead[2][1]["x-queue"] == "ws-gateway.kline"
    counters = app.state.pipeline.counters
    assert counters["rejected"] == 3 and counters["applied"] == len(candles)
    assert counters["acked"] == len(candles)  # every good message recorded, then acknowledged
    assert vectors  # the bad ones stopped nothing


async def test_good_messages_are_recorded_and_vectors_equal_batch(app, candles, tmp_path):
    _, vectors = await _run(app, candles)
    stored = raw.read(app.state.settings.data_dir, "klines")
    assert stored.num_rows == len(candles)
    names = app.state.pipeline.plan.names
    assert {v["interval"] for v in vectors} == {"1m"}
    assert all(v["registry_version"] == "1.2.0" and v["trace_id"] for v in vectors)
    times = [v["ts"] for v in vectors]
    batch = checks.features_at(names, {"klines": stored}, "BTCUSDT", times)
    compared = 0
    for i, vector in enumerate(vectors):
        for name in names:
            assert checks.same(vector["features"][name], batch[name][i]), (name, vector["ts"])
            compared += 1
    assert compared == len(vectors) * len(names) > 5_000
    # enough warm-up for rsi_14 by the end: its values are numbers, not nulls
    assert vectors[-1]["features"]["rsi_14"] is not None


async def test_a_failing_compute_stops_neither_consuming_nor_publishing(app, candles):
    """A bug in a feature (the compute of complete ticks raises once; computing ahead raises
    every time) is logged and counted; the ticks after it are still computed and published."""
    engine, failed = app.state.pipeline.engine, []
    compute = engine.compute

    def flaky(ticks):
        if not failed:
            failed.append(sorted(ticks))
            raise RuntimeError("a feature's bug")
        return compute(ticks)

    def broken(*args, **kwargs):
        raise RuntimeError("a bug computing ahead")

    engine.compute, engine.precompute = flaky, broken
    engine.quiet_ms = 0  # no tickers in these streams: a candle completes its tick at once
    _, vectors = await _run(app, candles[:400], loops=True)
    counters = app.state.pipeline.counters
    assert counters["compute_errors"] == 1 and counters["precompute_errors"] >= 1
    assert counters["applied"] == counters["acked"] == 400  # every message recorded
    lost = {ts for _, ts in failed[0]}
    published = {v["ts"] for v in vectors}
    assert not lost & published and len(published) == 400 - len(lost)
    assert max(published) > max(lost)  # ticks after the failure came out


async def test_http_contract(app, candles):
    await _run(app, candles)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["registry"]["version"] == "1.2.0"
        assert (
            await client.get("/features/latest", params={"symbol": "BTCUSDT"})
        ).status_code == 401
        wrong = await client.get(
            "/features/latest", params={"symbol": "BTCUSDT"}, headers={"X-API-Key": "nope"}
        )
        assert wrong.status_code == 401
        latest = await client.get("/features/latest", params={"symbol": "BTCUSDT"}, headers=KEY)
        assert latest.status_code == 200 and set(latest.json()["features"]) == set(
            app.state.pipeline.plan.names
        )
        assert (
            await client.get("/features/latest", params={"symbol": "ETHUSDT"}, headers=KEY)
        ).status_code == 404
        assert (
            await client.get("/features/latest", params={"symbol": "../x"}, headers=KEY)
        ).status_code == 422
        stats = (await client.get("/stats", headers=KEY)).json()
        assert stats["processing"]["counters"]["applied"] == len(candles)
        # latency: receive of the last contributing message -> publish, for every vector
        published = stats["processing"]["counters"]["published"]
        latency = stats["processing"]["latency"]
        assert published > 0 and latency["count"] == published
        assert 0 <= latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
        assert (await client.get("/stats/nope", headers=KEY)).status_code == 404
        metrics = await client.get("/metrics", headers=KEY)
        assert "featlib_vector_latency_ms_bucket" in metrics.text
        count = [line for line in metrics.text.splitlines() if "latency_ms_count" in line]
        assert count and float(count[0].split()[-1]) >= published
        spec = (await client.get("/asyncapi.json", headers=KEY)).json()
        assert {"ws-gateway.kline", "features.live"} <= set(spec["channels"])
        docs = await client.get("/openapi.json")
        assert "/features/latest" in docs.json()["paths"]


async def test_vectors_wait_in_order_while_the_connection_is_down():
    """A write that waits (the connection is down) holds the vectors sent after it, in order;
    past the backlog the oldest waiting are dropped and counted, never the one in flight."""
    from collections import Counter

    from service import publishing

    class Publisher:  # stands in for FastStream's publisher: records, blocks while "down"
        def __init__(self):
            self.up, self.got = asyncio.Event(), []

        async def publish(self, body, **_):
            await self.up.wait()
            self.got.append(body)

    publisher, counters = Publisher(), Counter()
    writer = publishing.VectorWriter(publisher, "features.live", counters)
    writer.waiting = type(writer.waiting)(maxlen=3)
    for n in range(6):  # 0 is in flight; 1..5 wait, 3 fit: 1 and 2 are dropped
        writer.send(b"%d" % n, str(n))
    await asyncio.sleep(0)
    assert publisher.got == [] and counters["vectors_dropped"] == 2
    publisher.up.set()
    await writer.wait()
    assert publisher.got == [b"0", b"3", b"4", b"5"]
    writer.send(b"6", "6")  # up again: written at once, in the call
    assert publisher.got[-1] == b"6"
