"""The live service against the real RabbitMQ on 127.0.0.1: replayed real captures in,
features.live out, identical to the dataset builder's batch computation."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import subprocess

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featlib import checks, compute, raw, registry
from featlib.capture import read_lines
from tests.conftest import CAPTURE_2023, CAPTURE_2024_BTC, CAPTURE_2024_ETH, shared
from tests.live_harness import (
    FakeGateway,
    batch_features,
    collector,
    purge,
    replay_cli,
    running,
    settings_for,
    settle,
    unique_prefix,
    wait_for,
)

pytestmark = pytest.mark.integration


def _count(paths) -> int:
    return sum(1 for p in paths for _ in read_lines(p))


def _in_ts_order(got) -> None:
    """Every (symbol, interval) stream came off the queue in ts order, each tick once."""
    streams: dict[tuple[str, str], list[int]] = {}
    for v in got.in_queue_order():
        streams.setdefault((v["symbol"], v["interval"]), []).append(v["ts"])
    for stream, ts in streams.items():
        wrong = [(a, b) for a, b in itertools.pairwise(ts) if a >= b]
        assert not wrong, f"{stream}: {len(wrong)} out of order, e.g. {wrong[:3]}"


def _compare(vectors: list[dict], plan: compute.Plan, data_dir) -> int:
    """Every feature of every vector equals batch to 1e-9 (nulls equal nulls); returns the
    number of compared values."""
    batch = batch_features(plan, data_dir, [(v["symbol"], v["ts"]) for v in vectors])
    compared, wrong = 0, []
    for v in vectors:
        expected = batch[(v["symbol"], v["ts"])]
        for name in plan.names:
            compared += 1
            if not checks.same(v["features"][name], expected[name]):
                wrong.append((v["symbol"], v["ts"], name, v["features"][name], expected[name]))
    assert not wrong, f"{len(wrong)} of {compared} differ, e.g. {wrong[:5]}"
    return compared


async def _replay_through_service(tmp_path, files, version, **changes):
    prefix = unique_prefix()
    cfg = settings_for(
        prefix, tmp_path / "raw", registry_version=version, cadences=["1s"], **changes
    )
    total = _count(files)
    try:
        async with collector(cfg) as got, running(cfg) as app:
            pipeline = app.state.pipeline
            await replay_cli(files, prefix)
            await wait_for(
                lambda: pipeline.counters["applied"] + pipeline.counters["rejected"] >= total,
                what="every message consumed",
            )
            await pipeline.drain()
            await settle(got)
            return app, got, cfg
    finally:
        await purge(cfg)


async def test_identity_on_the_2023_capture(tmp_path, record_property):
    version = "1.1.0"  # every source: book, trades, candles, tickers (1.3.0: tests/unit)
    files = [shared(CAPTURE_2023)]
    app, got, cfg = await _replay_through_service(tmp_path, files, version)
    plan = app.state.pipeline.plan
    assert len(got.vectors) > 400 and not got.dead
    _in_ts_order(got)
    compared = _compare(got.vectors, plan, cfg.data_dir)
    record_property("compared_values", compared)
    non_null = {n for v in got.vectors for n, x in v["features"].items() if x is not None}
    book = [f.name for f in plan.features if f.source == "orderbook"]
    assert set(book) <= non_null  # the book was really rebuilt and used


async def test_identity_on_two_symbols_at_once(tmp_path, record_property):
    files = [shared(CAPTURE_2024_BTC), shared(CAPTURE_2024_ETH)]
    app, got, cfg = await _replay_through_service(tmp_path, files, "1.1.0")
    symbols = {v["symbol"] for v in got.vectors}
    assert symbols == {"BTCUSDT", "ETHUSDT"}
    _in_ts_order(got)
    compared = _compare(got.vectors, app.state.pipeline.plan, cfg.data_dir)
    record_property("compared_values", compared)


def _capture_rows(path) -> dict[str, int]:
    counts = {}
    with gzip.open(path, "rb") as handle:
        for line in handle:
            payload = orjson.loads(line)["payload"]
            kind = payload["topic"].split(".")[0]
            rows = len(payload["data"]) if isinstance(payload["data"], list) else 1
            counts[kind] = counts.get(kind, 0) + rows
    return counts


async def test_no_loss_when_the_broker_drops_the_connection(tmp_path):
    """Everything published ends up in the raw store exactly once, although every
    connection is closed by the broker mid-way and the service reconnects; the vectors made
    after the reconnect reach the consumer (it reconnects too)."""
    path = shared(CAPTURE_2024_ETH)
    expected = _capture_rows(path)
    prefix = unique_prefix()
    cfg = settings_for(
        prefix, tmp_path / "raw", registry_version="1.2.0", cadences=["1s"], flush_ms=50
    )
    total = _count([path])
    try:
        await replay_cli([path], prefix)  # all queued before the service starts
        async with collector(cfg) as got, running(cfg) as app:
            pipeline = app.state.pipeline
            await wait_for(lambda: pipeline.counters["acked"] > total * 0.3, what="a third")
            before = pipeline.counters["published"]
            dropped = subprocess.run(
                ["rabbitmqctl", "close_all_connections", "featlib test"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert dropped.returncode == 0, dropped.stderr
            await wait_for(
                lambda: raw_rows(cfg.data_dir) >= sum(expected.values()),
                timeout=180,
                what="every row recorded after the reconnect",
            )
            await asyncio.sleep(1.0)  # redeliveries, if any, have arrived
            await pipeline.drain()
            await settle(got)
            assert pipeline.counters["published"] > before + 100
            last = pipeline.latest["ETHUSDT"]
            assert (last.symbol, last.ts) in {(v["symbol"], v["ts"]) for v in got.vectors}
            # (what was on the wire when the connections closed may be lost: a vector is a
            # moment's value, sent without confirms)
            ticks = {(v["symbol"], v["ts"], v["interval"]) for v in got.vectors}
            assert len(ticks) >= 0.95 * pipeline.counters["published"]
    finally:
        await purge(cfg)
    stored = {kind: raw.read(cfg.data_dir, kind).num_rows for kind in raw.RAW_SCHEMAS}
    assert stored["trades"] == expected["publicTrade"]
    assert stored["orderbook_snapshots"] + stored["orderbook_deltas"] == expected["orderbook"]
    assert stored["klines"] == expected["kline"]
    keys = raw.read(cfg.data_dir, "trades")["trade_id"]
    assert len(set(keys.to_pylist())) == len(keys)  # no duplicates


def raw_rows(data_dir) -> int:
    return sum(
        raw.read(data_dir, kind).num_rows for kind in raw.RAW_SCHEMAS if raw.files(data_dir, kind)
    )


_GOOD = list(read_lines(shared(CAPTURE_2023)))


@st.composite
def damaged_lines(draw) -> bytes:
    line = draw(st.sampled_from(_GOOD[:2000]))
    how = draw(st.sampled_from(["truncate", "garbage", "field"]))
    if how == "truncate":
        return line[: draw(st.integers(1, len(line) - 2))]
    if how == "garbage":
        return draw(st.binary(min_size=1, max_size=40))
    message = orjson.loads(line)
    payload = message["payload"]
    data = payload["data"][0] if isinstance(payload["data"], list) else payload["data"]
    key = draw(st.sampled_from(sorted(data)))
    data[key] = draw(st.sampled_from(["", "NaN", None, [], "abc", -1]))
    return orjson.dumps(message)


@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(damaged_lines(), min_size=25, max_size=25))
def test_fuzzed_messages_go_to_the_dead_letter_queue(tmp_path_factory, bad):
    asyncio.run(_fuzz(tmp_path_factory.mktemp("fuzz"), bad))


async def _fuzz(tmp_path, bad: list[bytes]) -> None:
    from featlib.bybit import BybitParseError, parse_message

    def invalid(line: bytes) -> bool:
        try:
            parse_message(line, received_at=1)
            return False
        except BybitParseError:
            return True

    bad = [b for b in bad if invalid(b)]  # a damage can leave a message valid; keep the bad
    good = _GOOD[:3000]
    prefix = unique_prefix()
    cfg = settings_for(prefix, tmp_path / "raw", registry_version="1.0.0", cadences=["1s"])
    try:
        async with collector(cfg) as got, running(cfg) as app:
            pipeline = app.state.pipeline
            from faststream.rabbit import RabbitBroker

            broker = RabbitBroker(cfg.rabbit_url)
            await broker.connect()
            mixed = list(good)
            for i, line in enumerate(bad):
                mixed.insert(i * 100 + 50, line)
            for line in mixed:
                queue = cfg.queue_orderbook if b'"orderbook"' in line[:40] else cfg.queue_trades
                await broker.publish(line, queue=queue)
            await broker.stop()
            await wait_for(
                lambda: pipeline.counters["applied"] + pipeline.counters["rejected"] >= len(mixed),
                what="every message consumed",
            )
            await pipeline.drain()
            await settle(got)
            await wait_for(lambda: len(got.dead) >= len(bad), what="dead letters")
    finally:
        await purge(cfg)
    assert sorted(body for body, _ in got.dead) == sorted(bad)
    assert all(headers["x-reason"] for _, headers in got.dead)
    assert pipeline.counters["rejected"] == len(bad)
    _compare(got.vectors, pipeline.plan, cfg.data_dir)  # good ones: still correct vectors


async def test_a_gap_requests_a_snapshot_and_nulls_book_features(tmp_path):
    """One delta removed from the real capture: the service detects the gap, asks the fake
    ws-gateway for a snapshot within a second, and book features are null, not wrong."""
    lines = list(read_lines(shared(CAPTURE_2023)))[:6_000]  # the first two minutes
    deltas = [
        i
        for i, line in enumerate(lines)
        if b'"type":"delta"' in line and b'"orderbook"' in line[:40]
    ]
    victim = deltas[len(deltas) // 2]
    gap_ts = orjson.loads(lines[victim])["payload"]["ts"]
    path = tmp_path / "gap.jsonl"
    path.write_bytes(
        b"".join(line.rstrip(b"\n") + b"\n" for i, line in enumerate(lines) if i != victim)
    )
    with FakeGateway() as gw:
        prefix = unique_prefix()
        cfg = settings_for(
            prefix,
            tmp_path / "raw",
            registry_version="1.0.0",
            cadences=["1s"],
            ws_gateway_url=gw.url,
        )
        try:
            async with collector(cfg) as got, running(cfg) as app:
                pipeline = app.state.pipeline
                await replay_cli([path], prefix)
                await wait_for(
                    lambda: pipeline.counters["applied"] >= len(lines) - 1,
                    what="every message consumed",
                )
                await pipeline.drain()
                await settle(got)
        finally:
            await purge(cfg)
        resyncs = [(t, body) for t, p, body in gw.requests if p == cfg.ws_gateway_resync_path]
        assert resyncs and resyncs[0][1]["symbol"] == "BTCUSDT"
        detected = pipeline.gap_detected_at["BTCUSDT"]
        assert 0 <= resyncs[0][0] - detected < 1.0  # requested within a second
        assert cfg.ws_gateway_subscribe_path in gw.paths()
    assert pipeline.counters["book_gaps"] == 1
    plan = pipeline.plan
    book = [f.name for f in plan.features if f.source == "orderbook"]
    for v in got.vectors:
        values = [v["features"][n] for n in book]
        if v["ts"] >= gap_ts:
            assert all(x is None for x in values) and v["book_desynced"], v["ts"]
        elif v["ts"] < gap_ts - 2_000:
            assert any(x is not None for x in values)
    _compare(got.vectors, plan, cfg.data_dir)  # batch replays the same gap the same way
    assert registry.load("1.0.0").names == list(plan.names)


async def test_a_restarted_service_warms_up_and_still_equals_batch(tmp_path, record_property):
    """Service A records the first half of the 2023 capture and stops; service B starts on the
    same raw store, warms its buffers and book up from it, and its vectors over the second
    half — the first ones included — equal batch over the whole store."""
    lines = list(read_lines(shared(CAPTURE_2023)))
    cut = len(lines) // 2
    halves = [tmp_path / "first.jsonl", tmp_path / "second.jsonl"]
    for path, part in zip(halves, (lines[:cut], lines[cut:]), strict=True):
        path.write_bytes(b"".join(line.rstrip(b"\n") + b"\n" for line in part))
    data_dir = tmp_path / "raw"
    vectors = []
    for n, path in enumerate(halves):
        prefix = unique_prefix()
        cfg = settings_for(prefix, data_dir, registry_version="1.1.0", cadences=["1s"])
        try:
            async with collector(cfg) as got, running(cfg) as app:
                pipeline = app.state.pipeline
                if n == 1:
                    warmed = app.state.warmed_up
                    assert warmed["trades"] > 0 and warmed["orderbook_deltas"] > 0
                await replay_cli([path], prefix)
                await wait_for(
                    lambda p=pipeline, k=n: p.counters["applied"] >= (cut, len(lines) - cut)[k],
                    what="every message consumed",
                )
                await pipeline.drain()
                await settle(got)
                _in_ts_order(got)
                vectors.append(got.vectors)
        finally:
            await purge(cfg)
    second = vectors[1]
    assert second and min(v["ts"] for v in second) > max(v["ts"] for v in vectors[0])
    plan = compute.plan(registry.load("1.1.0").names)
    record_property("compared_values", _compare(second, plan, data_dir))
    book = [f.name for f in plan.features if f.source == "orderbook"]
    first = min(second, key=lambda v: v["ts"])
    assert all(first["features"][n] is not None for n in book)  # the book came back


async def test_a_finished_dataset_build_is_announced_on_rabbitmq(tmp_path, jan_store):
    """POST /dataset/build on the running service (real broker): the build is queued, runs,
    and its catalog record arrives on the features.dataset.ready queue."""
    import httpx

    prefix = unique_prefix()
    cfg = settings_for(
        prefix,
        jan_store,
        registry_version="1.2.0",
        datasets_dir=tmp_path / "datasets",
        catalog=str(tmp_path / "catalog.db"),
        warmup=False,
    )
    body = {
        "symbols": ["BTCUSDT"],
        "start": "2022-01-05",
        "end": "2022-01-08",
        "registry_version": "1.2.0",
    }
    try:
        async with collector(cfg) as got, running(cfg) as app:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://svc") as http:
                refused = await http.post("/dataset/build", json=body)
                assert refused.status_code == 401  # no key
                answer = await http.post(
                    "/dataset/build", json=body, headers={"X-API-Key": "secret"}
                )
                assert answer.status_code == 202, answer.text
                ident = answer.json()["id"]
                await wait_for(lambda: got.ready, timeout=120, what="features.dataset.ready")
                record = (
                    await http.get(f"/dataset/{ident}", headers={"X-API-Key": "secret"})
                ).json()
    finally:
        await purge(cfg)
    announced = got.ready[0]
    assert announced["id"] == ident and announced["status"] == "ready" == record["status"]
    assert announced["counts"] == record["counts"] and announced["counts"]["rows"]
