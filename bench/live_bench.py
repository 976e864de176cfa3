"""P4 live benchmark: synthetic Bybit streams for 10 symbols through the real RabbitMQ into the
running live service, published as fast as the broker takes them.

    python -m bench.live_bench                  (prints the result; `just bench --only P4`
                                                 runs it from bench.run)

Streams (synthetic, deterministic, in ws-gateway's envelope): per symbol about what the real
2023 capture carries per second, i.e. ~28 orderbook.50 deltas (after one snapshot), ~26
publicTrade messages, a ticker and a kline.1 update, plus each candle's confirmation; ~565
messages/s for 10 symbols in real time. The service (service.app with its real lifespan:
FastStream broker, live pipeline, raw-store flushes) runs in this process, as
tests/live_harness.py runs it; the publisher, pipelines.replay (one channel, no publisher
confirms, persistent messages, what the tests replay with), runs in a subprocess beside it, as
ws-gateway would, and so does a `features.live` consumer, as a downstream one would (in the
service's process its deliveries would wait behind the service's). Queue names carry a unique
prefix and are deleted at the end.

Measured: messages/s published (in the publisher) and consumed/acknowledged (the pipeline's
counters, sampled every 0.1 s); each vector's `latency_ms` as the service publishes it (wall
time its tick was completed, i.e. the completing message reached the handler -> the vector
handed to the connection) and, beside it, the time from the completion to the consumer
process; vectors/s; the ready depth of the ws-gateway queues every 0.5 s (passive declare). To
explain the latency, two things are timed without changing what runs: every featlib compute
call the engine makes for complete ticks (ticks per call, duration) and how late a 0.1 s sleep
wakes up in this event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

RABBIT = "amqp://guest:guest@127.0.0.1:5672/"
MINUTE = 60_000
HOUR = 3_600_000
START = 1_709_251_200_000  # 2024-03-01 00:00:00 UTC, a minute boundary
# name, start price, price decimals (tick = 10**-decimals), typical trade size
SYMBOLS = [
    ("BTCUSDT", 62_000.0, 1, 0.05),
    ("ETHUSDT", 3_400.0, 2, 0.5),
    ("SOLUSDT", 130.0, 3, 5.0),
    ("XRPUSDT", 0.62, 4, 800.0),
    ("DOGEUSDT", 0.12, 5, 5_000.0),
    ("BNBUSDT", 410.0, 2, 1.0),
    ("ADAUSDT", 0.71, 4, 600.0),
    ("AVAXUSDT", 41.0, 3, 10.0),
    ("LINKUSDT", 19.5, 3, 20.0),
    ("LTCUSDT", 72.0, 2, 4.0),
]
BOOK_LEVELS = 50  # orderbook.50
BOOK_EVERY_MS = 35  # ~28 deltas/s per symbol, as in the 2023 capture
TRADES_PER_S = 26.0  # publicTrade messages/s per symbol, as in the 2023 capture
QUEUES = ("orderbook", "trades", "kline", "ticker", "funding")


# --- synthetic Bybit v5 public messages ------------------------------------------------------


def _symbol_stream(
    index: int, symbol: str, price: float, decimals: int, lot: float, seconds: int, seed: int
) -> Iterator[tuple[int, int, bytes]]:
    """One symbol's messages, in ws-gateway's envelope, in exchange-time order: an orderbook.50
    snapshot then deltas (u + 1 each, the book moves a tick at a time and keeps 50 levels a
    side), publicTrade batches at the touch, tickers at every whole second, kline.1 updates
    every second and each candle's confirmation just after its close. Yields
    (received_at, n, line)."""
    rng = random.Random(seed * 1_000 + index)
    tick = 10.0**-decimals
    end = START + seconds * 1_000

    def px(t: int) -> str:
        return f"{t * tick:.{decimals}f}"

    def size() -> float:
        return max(0.001, round(lot * rng.lognormvariate(0.0, 1.0), 3))

    bid = round(price / tick)
    best_bid, best_ask = bid, bid + 1  # one tick wide; levels contiguous from the touch
    bids = {bid - k: size() for k in range(BOOK_LEVELS)}
    asks = {best_ask + k: size() for k in range(BOOK_LEVELS)}
    update_id, trade_id, seq = 1_000, 0, 0
    last, direction, open_interest = bid, "ZeroPlusTick", 50_000.0 * lot
    previous = {"start": START - MINUTE, "o": bid, "h": bid + 3, "l": bid - 3, "c": bid}
    previous |= {"v": 40 * lot, "q": 40 * lot * bid * tick}
    candle = {"start": START, "o": bid, "h": bid, "l": bid, "c": bid, "v": 0.0, "q": 0.0}

    # the schedule: (time, order on ties, kind)
    events: list[tuple[int, int, str]] = [(START, 0, "snapshot"), (START + 3, 1, "confirm")]
    events += [(t, 2, "book") for t in range(START + 7 + index, end, BOOK_EVERY_MS)]
    t = float(START)
    while True:
        t += rng.expovariate(TRADES_PER_S / 1_000)
        if t >= end:
            break
        events.append((int(t), 3, "trades"))
    for s in range(seconds):
        events.append((START + s * 1_000, 4, "ticker"))
        events.append((START + s * 1_000 + 300, 5, "kline"))
    events += [(m + 3, 1, "confirm") for m in range(START + MINUTE, end, MINUTE)]
    events.sort()

    def envelope(kind: str, ts: int, payload: dict[str, Any]) -> tuple[int, int, bytes]:
        nonlocal seq
        seq += 1
        received = ts + 5
        line = {"event_type": kind, "symbol": symbol, "received_at": received, "payload": payload}
        return received, seq, orjson.dumps(line)

    def kline_data(c: dict[str, Any], confirm: bool, ts: int) -> dict[str, Any]:
        return {
            "start": c["start"],
            "end": c["start"] + MINUTE - 1,
            "interval": "1",
            "open": px(c["o"]),
            "close": px(c["c"]),
            "high": px(c["h"]),
            "low": px(c["l"]),
            "volume": f"{c['v']:.3f}",
            "turnover": f"{c['q']:.4f}",
            "confirm": confirm,
            "timestamp": ts,
        }

    for t, _, kind in events:
        if t >= candle["start"] + MINUTE:  # the candle closed: it waits for its confirmation
            previous = candle
            close = previous["c"]
            start = previous["start"] + MINUTE
            candle = {"start": start, "o": close, "h": close, "l": close, "c": close}
            candle |= {"v": 0.0, "q": 0.0}
        if kind == "snapshot":
            data = {
                "s": symbol,
                "b": [[px(p), f"{bids[p]:.3f}"] for p in sorted(bids, reverse=True)],
                "a": [[px(p), f"{asks[p]:.3f}"] for p in sorted(asks)],
                "u": update_id,
                "seq": update_id * 7,
            }
            topic = f"orderbook.{BOOK_LEVELS}.{symbol}"
            payload = {"topic": topic, "type": "snapshot", "ts": t, "data": data, "cts": t - 2}
            yield envelope("orderbook", t, payload)
        elif kind == "book":
            b: dict[int, float] = {}
            a: dict[int, float] = {}
            move = rng.random()
            if move < 0.06:  # the ask is taken: the book moves up a tick, 50 levels a side
                b[best_ask], a[best_ask] = size(), 0.0
                b[best_bid - BOOK_LEVELS + 1], a[best_ask + BOOK_LEVELS] = 0.0, size()
                best_bid, best_ask = best_ask, best_ask + 1
            elif move < 0.12:  # the bid is taken: down a tick
                a[best_bid], b[best_bid] = size(), 0.0
                a[best_ask + BOOK_LEVELS - 1], b[best_bid - BOOK_LEVELS] = 0.0, size()
                best_bid, best_ask = best_bid - 1, best_bid
            for side, changes in ((bids, b), (asks, a)):
                for p, q in changes.items():
                    if q:
                        side[p] = q
                    else:
                        del side[p]
            for _ in range(rng.randint(1, 4)):  # new sizes near the touch
                depth = min(int(rng.expovariate(0.3)), 9)
                if rng.random() < 0.5:
                    b[best_bid - depth] = bids[best_bid - depth] = size()
                else:
                    a[best_ask + depth] = asks[best_ask + depth] = size()
            update_id += 1
            data = {
                "s": symbol,
                "b": [[px(p), f"{q:.3f}"] for p, q in sorted(b.items(), reverse=True)],
                "a": [[px(p), f"{q:.3f}"] for p, q in sorted(a.items())],
                "u": update_id,
                "seq": update_id * 7,
            }
            topic = f"orderbook.{BOOK_LEVELS}.{symbol}"
            payload = {"topic": topic, "type": "delta", "ts": t, "data": data, "cts": t - 2}
            yield envelope("orderbook", t, payload)
        elif kind == "trades":
            trades = []
            for k in range(rng.choice((1, 1, 1, 2, 2, 3))):
                buy = rng.random() < 0.5
                price_tick = best_ask if buy else best_bid
                qty = size()
                if price_tick != last:
                    direction = "PlusTick" if price_tick > last else "MinusTick"
                last = price_tick
                trade_id += 1
                trades.append(
                    {
                        "T": t - 2 + k,
                        "s": symbol,
                        "S": "Buy" if buy else "Sell",
                        "v": f"{qty:.3f}",
                        "p": px(price_tick),
                        "L": direction,
                        "i": f"{index:02d}-{trade_id:09d}",
                        "BT": False,
                    }
                )
                candle["h"], candle["l"] = max(candle["h"], last), min(candle["l"], last)
                candle["c"] = last
                candle["v"] += qty
                candle["q"] += qty * last * tick
            payload = {"topic": f"publicTrade.{symbol}", "type": "snapshot", "ts": t + 3}
            yield envelope("trades", t, payload | {"data": trades})
        elif kind == "ticker":
            open_interest = max(1.0, open_interest * (1 + rng.gauss(0.0, 0.0005)))
            mid = (best_bid + 0.5) * tick
            data = {
                "symbol": symbol,
                "lastPrice": px(last),
                "markPrice": f"{mid:.{decimals + 1}f}",
                "indexPrice": f"{mid * (1 + rng.gauss(0.0, 0.0002)):.{decimals + 2}f}",
                "bid1Price": px(best_bid),
                "bid1Size": f"{bids[best_bid]:.3f}",
                "ask1Price": px(best_ask),
                "ask1Size": f"{asks[best_ask]:.3f}",
                "openInterest": f"{open_interest:.3f}",
                "openInterestValue": f"{open_interest * mid:.2f}",
                "fundingRate": "0.0001",
                "nextFundingTime": str((t // (8 * HOUR) + 1) * 8 * HOUR),
            }
            first = t == START
            if first:
                data |= {
                    "turnover24h": f"{2e5 * lot * mid:.4f}",
                    "volume24h": f"{2e5 * lot:.4f}",
                    "highPrice24h": px(round(best_bid * 1.02)),
                    "lowPrice24h": px(round(best_bid * 0.98)),
                    "prevPrice24h": px(best_bid),
                    "price24hPcnt": "0.0012",
                }
            payload = {
                "topic": f"tickers.{symbol}",
                "type": "snapshot" if first else "delta",
                "ts": t,
                "cs": t,
                "data": data,
            }
            yield envelope("ticker", t, payload)
        else:  # kline update of the open candle, or the confirmation of the one that closed
            confirm = kind == "confirm"
            data = kline_data(previous if confirm else candle, confirm, t)
            payload = {"topic": f"kline.1.{symbol}", "type": "snapshot", "ts": t, "data": [data]}
            yield envelope("kline", t, payload)


def synthetic_capture(path: Path, symbols: int = 10, seconds: int = 90, seed: int = 7) -> Counter:
    """Write `seconds` of exchange time for the first `symbols` of SYMBOLS to a capture file
    (JSON lines, ws-gateway's envelope, merged by receive time); returns messages per event
    type."""
    streams = [
        _symbol_stream(i, name, price, decimals, lot, seconds, seed)
        for i, (name, price, decimals, lot) in enumerate(SYMBOLS[:symbols])
    ]
    keyed = (
        (((received, i, n), line) for received, n, line in stream)
        for i, stream in enumerate(streams)
    )
    counts: Counter[str] = Counter()
    with path.open("wb") as out:
        for _, line in heapq.merge(*keyed):
            out.write(line + b"\n")
            counts[orjson.loads(line)["event_type"]] += 1
    return counts


# --- the publisher (a subprocess) ------------------------------------------------------------


def consume_main(argv: list[str]) -> int:
    """`python -m bench.live_bench consume QUEUE FILE`: a `features.live` consumer in a process
    of its own, as a downstream one would be (in the service's process its deliveries would
    wait behind the service's). Appends "arrival wall ms<TAB>body" per vector to FILE, says
    "ready" once consuming, stops on SIGTERM."""
    import signal

    import aio_pika

    parser = argparse.ArgumentParser(prog="python -m bench.live_bench consume")
    parser.add_argument("queue")
    parser.add_argument("file", type=Path)
    parser.add_argument("--url", default=RABBIT)
    args = parser.parse_args(argv)

    async def consume() -> None:
        connection = await aio_pika.connect(args.url)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1_000)
        queue = await channel.declare_queue(args.queue, durable=True)
        with args.file.open("ab") as out:

            async def on_vector(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                out.write(b"%.3f\t%s\n" % (time.time() * 1000, message.body))
                out.flush()
                await message.ack()

            await queue.consume(on_vector)
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            print("ready", flush=True)
            await stop.wait()
        await connection.close()

    asyncio.run(consume())
    return 0


def _arrivals(path: Path) -> list[tuple[float, bytes]]:
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")[:-1]  # (the last line may be half written)
    return [(float(t), body) for t, body in (line.split(b"\t", 1) for line in lines)]


def publish_main(argv: list[str]) -> int:
    """`python -m bench.live_bench publish FILE PREFIX`: pipelines.replay at full speed, timed
    inside the process; prints {"t0", "t1", "counts"} as JSON."""
    from pipelines.replay import replay

    parser = argparse.ArgumentParser(prog="python -m bench.live_bench publish")
    parser.add_argument("file", type=Path)
    parser.add_argument("prefix")
    parser.add_argument("--url", default=RABBIT)
    parser.add_argument("--speed", type=float, default=0.0)
    args = parser.parse_args(argv)
    t0 = time.time()
    counts = asyncio.run(replay([args.file], args.url, args.prefix, speed=args.speed))
    t1 = time.time()
    print(json.dumps({"t0": t0, "t1": t1, "counts": dict(counts)}))
    return 0


# --- the measurement -------------------------------------------------------------------------


def _pct(values: list[float] | np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if len(values) else None


def _slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope (per second) of (t, value) points."""
    if len(points) < 3:
        return None
    t, v = np.asarray(points, dtype=float).T
    return round(float(np.polyfit(t, v, 1)[0]), 1)


def _rate(samples: list[tuple[float, int]], total: int) -> tuple[float | None, float | None]:
    """From (t, cumulative count) samples: the sustained rate between the first sample with
    any progress and the first one at `total`, and that span in seconds."""
    start = next((t for t, n in samples if n > 0), None)
    done = next((t for t, n in samples if n >= total), None)
    if start is None or done is None or done <= start:
        return None, None
    first = next(n for t, n in samples if t == start)
    return round((total - first) / (done - start)), round(done - start, 2)


async def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"P4: timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _delete_queues(url: str, names: list[str]) -> None:
    import aio_pika

    connection = await aio_pika.connect(url)
    try:
        for name in names:
            channel = await connection.channel()
            try:
                await channel.queue_delete(name)
            except Exception:  # never declared (a failed start): nothing to delete
                pass
            finally:
                if not channel.is_closed:
                    await channel.close()
    finally:
        await connection.close()


async def measure(
    symbols: int = 10,
    seconds: int = 90,
    version: str = "1.1.0",
    url: str = RABBIT,
    timeout_s: float = 150.0,
    speed: float = 0.0,
    **changes: Any,
) -> dict:
    """Run the service, replay `seconds` of synthetic exchange time for `symbols` symbols at
    full speed, return the figures (see the module docstring). `changes`: other service
    settings (default: the service's own, e.g. prefetch 5000, flush every 250 ms)."""
    import aio_pika
    from faststream.rabbit import RabbitBroker, RabbitQueue
    from faststream.rabbit.annotations import RabbitMessage

    from service.app import create_app
    from service.settings import Settings

    prefix = f"bench-p4-{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory(prefix="featlib-p4-") as tmp:
        root = Path(tmp)
        capture = root / "synthetic.jsonl"
        t0 = time.perf_counter()
        kinds = synthetic_capture(capture, symbols, seconds)
        generate_s = time.perf_counter() - t0
        total = sum(kinds.values())
        settings = Settings(
            rabbit_url=url,
            **{f"queue_{q}": f"{prefix}.{q}" for q in QUEUES},
            queue_features=f"{prefix}.features",
            queue_dead_letter=f"{prefix}.dead",
            queue_dataset_ready=f"{prefix}.dataset-ready",
            data_dir=root / "raw",
            catalog=str(root / "catalog.db"),
            registry_version=version,
            ws_gateway_url=None,
            api_key="bench",
            symbols=[s for s, *_ in SYMBOLS[:symbols]],
            **changes,
        )
        inputs = [getattr(settings, f"queue_{q}") for q in QUEUES]
        outputs = [settings.queue_features, settings.queue_dead_letter]
        outputs.append(settings.queue_dataset_ready)

        arrived_file = root / "features.tsv"
        arrivals: list[tuple[float, bytes]] = []
        dead: list[bytes] = []
        consumer = RabbitBroker(url, logger=None)

        @consumer.subscriber(RabbitQueue(settings.queue_dead_letter, durable=True))
        async def on_dead(message: RabbitMessage) -> None:
            dead.append(message.body)

        counters: list[tuple[float, int, int, int]] = []  # t, applied, acked, vectors out
        depths: list[tuple[float, dict[str, int]]] = []
        calls: list[tuple[int, float]] = []  # ticks, seconds
        loop_lag: list[float] = []  # how late a 0.1 s sleep in this event loop woke up
        publisher: dict[str, Any] = {}
        try:
            app = create_app(settings)
            pipeline = app.state.pipeline
            engine = pipeline.engine
            compute = engine.compute

            def timed_compute(ticks):  # instrumentation only: the same call, timed
                started = time.perf_counter()
                vectors = compute(ticks)
                calls.append((len(ticks), time.perf_counter() - started))
                return vectors

            engine.compute = timed_compute

            async def sample_counters() -> None:
                while True:
                    due = time.perf_counter() + 0.1
                    c = pipeline.counters
                    done = c["rejected"] + c["control"]
                    counters.append(
                        (time.time(), c["applied"] + done, c["acked"] + done, c["published"])
                    )
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    loop_lag.append(time.perf_counter() - due)

            async def sample_depths(channel: aio_pika.abc.AbstractChannel) -> None:
                while True:
                    now, row = time.time(), {}
                    for name in inputs:
                        queue = await channel.declare_queue(name, passive=True)
                        row[name.rsplit(".", 1)[1]] = queue.declaration_result.message_count
                    depths.append((now, row))
                    await asyncio.sleep(max(0.0, 0.5 - (time.time() - now)))

            await consumer.start()
            reader = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.live_bench",
                "consume",
                settings.queue_features,
                str(arrived_file),
                "--url",
                url,
                stdout=asyncio.subprocess.PIPE,
                cwd=Path(__file__).resolve().parents[1],
            )
            if (await asyncio.wait_for(reader.stdout.readline(), 30)).strip() != b"ready":
                raise RuntimeError("P4: the features.live consumer did not start")
            async with app.router.lifespan_context(app):
                connection = await aio_pika.connect(url)
                channel = await connection.channel()
                tasks = [
                    asyncio.create_task(sample_counters()),
                    asyncio.create_task(sample_depths(channel)),
                ]
                try:
                    started = time.time()
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "bench.live_bench",
                        "publish",
                        str(capture),
                        prefix,
                        "--url",
                        url,
                        "--speed",
                        str(speed),
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.PIPE,
                        cwd=Path(__file__).resolve().parents[1],
                    )
                    try:
                        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
                    finally:
                        if proc.returncode is None:  # timed out or cancelled: stop our child
                            proc.kill()
                            await proc.wait()
                    if proc.returncode:
                        raise RuntimeError(f"P4 publisher failed: {err.decode()[-2000:]}")
                    publisher = json.loads(out.decode().strip().splitlines()[-1])
                    c = pipeline.counters
                    await _wait(
                        lambda: c["applied"] + c["rejected"] + c["control"] >= total,
                        timeout_s - (time.time() - started),
                        "every message consumed",
                    )
                    await _wait(
                        lambda: c["acked"] + c["rejected"] + c["control"] >= total,
                        10.0,
                        "every message acknowledged",
                    )
                    # every vector computed so far has reached the consumer (the last second of
                    # each symbol stays open: not every stream has moved past it)
                    deadline, seen = time.monotonic() + 30.0, None
                    quiet_since = time.monotonic()
                    while time.monotonic() - quiet_since < 1.0:
                        arrivals = _arrivals(arrived_file)
                        now = (c["published"], len(arrivals))
                        if now != seen or now[0] != now[1]:
                            seen, quiet_since = now, time.monotonic()
                        if time.monotonic() > deadline:
                            raise TimeoutError("P4: vectors kept arriving")
                        await asyncio.sleep(0.05)
                    finished = max(time.time() - 1.0, arrivals[-1][0] / 1000 if arrivals else 0)
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    await connection.close()
                stats = dict(pipeline.counters)
                stats["latency_samples"] = len(pipeline.latencies)
                gaps = sum(st.book.gaps for st in engine.symbols.values() if st.book)
                given_up = pipeline.order.given_up
        finally:
            if "reader" in locals() and reader.returncode is None:
                reader.terminate()
                await reader.wait()
            await consumer.stop()
            await _delete_queues(url, inputs + outputs)

    return _report(
        speed=speed,
        symbols=symbols,
        seconds=seconds,
        version=version,
        kinds=kinds,
        total=total,
        generate_s=generate_s,
        publisher=publisher,
        started=started,
        finished=finished,
        counters=counters,
        depths=depths,
        calls=calls,
        arrivals=arrivals,
        loop_lag=loop_lag,
        dead=len(dead),
        stats=stats,
        gaps=gaps,
        given_up=given_up,
    )


def _report(
    *,
    speed: float,
    symbols: int,
    seconds: int,
    version: str,
    kinds: Counter,
    total: int,
    generate_s: float,
    publisher: dict[str, Any],
    started: float,
    finished: float,
    counters: list[tuple[float, int, int, int]],
    depths: list[tuple[float, dict[str, int]]],
    calls: list[tuple[int, float]],
    arrivals: list[tuple[float, bytes]],
    loop_lag: list[float],
    dead: int,
    stats: dict[str, int],
    gaps: int,
    given_up: int,
) -> dict:
    published = sum(publisher["counts"].values())
    publish_s = publisher["t1"] - publisher["t0"]
    pub_end = publisher["t1"] - started  # seconds since the publisher was started
    consumed_rate, consume_s = _rate([(t, n) for t, n, _, _ in counters], total)
    acked_rate, ack_s = _rate([(t, a) for t, _, a, _ in counters], total)
    during = [(t, n) for t, n, _, _ in counters if publisher["t0"] <= t <= publisher["t1"]]
    consumed_while_publishing = (
        round((during[-1][1] - during[0][1]) / (during[-1][0] - during[0][0]))
        if len(during) > 2
        else None
    )

    vectors = [orjson.loads(body) for _, body in arrivals]
    arrived = np.array([t for t, _ in arrivals])
    latency = np.array([v["latency_ms"] for v in vectors], dtype=float)
    latency = latency[~np.isnan(latency)]
    feed_waits = np.array(
        [v["wait_ms"] for v in vectors if v.get("wait_ms") is not None], dtype=float
    )
    to_consumer = np.array(  # the tick complete (its last message received) -> here
        [t - v["complete_at"] for (t, _), v in zip(arrivals, vectors, strict=True)]
    )
    span = (arrived[-1] - arrived[0]) / 1000 if len(arrived) > 1 else None
    windows: dict[int, list[float]] = {}  # 5 s of run time (by completion) -> latencies
    for v in vectors:
        windows.setdefault(int((v["complete_at"] / 1000 - started) // 5), []).append(
            v["latency_ms"]
        )
    lag = np.array(loop_lag) * 1000
    per_interval = Counter(v["interval"] for v in vectors)
    ticks = {(v["symbol"], v["ts"]) for v in vectors}

    ticks_per_call = np.array([n for n, _ in calls])
    call_ms = np.array([s * 1000 for _, s in calls])
    run_s = finished - started

    series = [(t - started, sum(row.values())) for t, row in depths]
    per_queue_max = {q: max((row.get(q, 0) for _, row in depths), default=0) for q in QUEUES}
    while_publishing = [(t, d) for t, d in series if t <= pub_end]
    after = [(t, d) for t, d in series if t > pub_end]
    at_end = while_publishing[-1][1] if while_publishing else None
    empty_again = next((t for t, d in after if d == 0), None)
    slope_publishing = _slope(while_publishing)
    last = series[-1][1] if series else None
    backlog = {
        "sample_every_s": 0.5,
        "samples": len(series),
        "max_total_ready": max((d for _, d in series), default=0),
        "max_ready_per_queue": per_queue_max,
        "at_publisher_end": at_end,
        "last": last,
        "slope_while_publishing_msgs_per_s": slope_publishing,
        "slope_after_publisher_end_msgs_per_s": _slope(after),
        "empty_again_s_after_publisher_end": (
            round(empty_again - pub_end, 2) if empty_again is not None else None
        ),
        "series_total_ready_1s": [d for _, d in series[::2]],
    }
    grows = bool(slope_publishing and slope_publishing > 0.05 * published / max(publish_s, 1e-9))
    p99 = _pct(latency, 99)
    realtime_rate = total / seconds
    return {
        "name": f"P4 live over RabbitMQ: {symbols} symbols, registry {version}, synthetic "
        + ("streams replayed at full speed" if not speed else f"streams at {speed:g}x real time"),
        "speed": speed or "full",
        "symbols": symbols,
        "exchange_seconds": seconds,
        "messages": total,
        "messages_by_queue": dict(sorted(kinds.items())),
        "realtime_msgs_per_s": round(realtime_rate),
        "published_msgs_per_s": round(published / publish_s),
        "publish_s": round(publish_s, 2),
        "consumed_msgs_per_s": consumed_rate,
        "consumed_while_publishing_msgs_per_s": consumed_while_publishing,
        "consume_s": consume_s,
        "acked_msgs_per_s": acked_rate,
        "ack_s": ack_s,
        "times_realtime": round(consumed_rate / realtime_rate, 2) if consumed_rate else None,
        "vectors": len(vectors),
        "vectors_by_interval": dict(sorted(per_interval.items())),
        "ticks": len(ticks),
        "vectors_per_s": round(len(vectors) / span, 1) if span else None,
        "latency_ms": {
            "p50": _pct(latency, 50),
            "p90": _pct(latency, 90),
            "p99": p99,
            "max": round(float(latency.max()), 2) if len(latency) else None,
            "mean": round(float(latency.mean()), 2) if len(latency) else None,
        },
        "latency_ms_by_5s_of_run": {
            f"{5 * w}-{5 * w + 5}s": [len(values), _pct(values, 50), _pct(values, 99)]
            for w, values in sorted(windows.items())
        },
        "wait_ms": {
            "p50": _pct(feed_waits, 50),
            "p99": _pct(feed_waits, 99),
            "max": round(float(feed_waits.max()), 2) if len(feed_waits) else None,
        },
        "latency_to_consumer_ms": {
            "p50": _pct(to_consumer, 50),
            "p99": _pct(to_consumer, 99),
            "max": round(float(to_consumer.max()), 2) if len(to_consumer) else None,
        },
        "event_loop_lag_ms": {
            "p50": _pct(lag, 50),
            "p99": _pct(lag, 99),
            "max": round(float(lag.max()), 1) if len(lag) else None,
        },
        "compute_calls": {
            "calls": len(calls),
            "ticks_per_call_p50": _pct(ticks_per_call, 50),
            "ticks_per_call_max": int(ticks_per_call.max()) if len(calls) else None,
            "call_ms_p50": _pct(call_ms, 50),
            "call_ms_p99": _pct(call_ms, 99),
            "call_ms_max": round(float(call_ms.max()), 1) if len(calls) else None,
            "ms_per_tick": round(float(call_ms.sum() / ticks_per_call.sum()), 2) if calls else None,
            "busy_fraction_of_run": round(float(call_ms.sum()) / 1000 / run_s, 2),
        },
        "backlog": backlog,
        "backlog_grows_at_full_speed": grows,
        "backlog_drains": last is not None and last == 0,
        "dead_letters": dead,
        "book_gaps": gaps,
        "deliveries_given_up": given_up,
        "service_counters": {
            k: stats.get(k, 0)
            for k in ("applied", "acked", "published", "recorded_rows", "slow_vectors")
        },
        "service_latency_samples": stats["latency_samples"],
        "generate_s": round(generate_s, 2),
        "run_s": round(run_s, 2),
        "goal": "p99 <= 10 ms per vector, last contributing message -> vector published, "
        f"{symbols} symbols; no growing backlog",
        "met": p99 is not None and p99 <= 10 and not grows and last == 0,
    }


def offline_compute_per_tick(capture: Path, version: str = "1.1.0") -> dict:
    """No broker: the live engine on a real capture, one featlib compute call per 1 s tick as
    the service makes them in real time, against every tick of the capture in one call."""
    from featlib import compute, registry
    from featlib.bybit import parse_message
    from featlib.capture import read_lines
    from featlib.live import LiveEngine

    plan = compute.plan(registry.load(version).names)
    engine = LiveEngine(plan, registry_version=version, cadences_ms=[1_000])
    apply_s, per_tick = 0.0, []
    for line in read_lines(capture):
        parsed = parse_message(line, received_at=0)
        if parsed is None:
            continue
        t0 = time.perf_counter()
        engine.on_message(parsed, 0)
        apply_s += time.perf_counter() - t0
        for tick in engine.ready:
            t0 = time.perf_counter()
            engine.compute([tick])
            per_tick.append((time.perf_counter() - t0) * 1000)
        engine.ready = []
    values = np.sort(np.asarray(per_tick))
    # baseline: a second engine fed the whole capture, then all its ticks in one call
    whole = LiveEngine(plan, registry_version=version, cadences_ms=[1_000])
    for line in read_lines(capture):
        parsed = parse_message(line, received_at=0)
        if parsed is not None:
            whole.on_message(parsed, 0)
    ticks, whole.ready = whole.ready, []
    t0 = time.perf_counter()
    whole.compute(ticks)
    one_call_ms = (time.perf_counter() - t0) * 1000 / max(1, len(ticks))
    p50 = float(np.percentile(values, 50))
    return {
        "capture": capture.name,
        "ticks": len(values),
        "messages_applied_per_s": round(engine.stats["messages"] / apply_s),
        "tick_p50_ms": round(p50, 2),
        "tick_p99_ms": round(float(np.percentile(values, 99)), 2),
        "tick_max_ms": round(float(values[-1]), 2),
        "one_call_ticks": len(ticks),
        "one_call_for_all_ticks_per_tick_ms": round(one_call_ms, 3),
        "per_tick_p50_vs_one_call": round(p50 / one_call_ms, 1),
    }


def offline_compute_all_symbols(
    symbols: int = 10, seconds: int = 60, version: str = "1.1.0"
) -> dict:
    """No broker: the live engine on the P4 synthetic streams, as the service runs it: the
    ticks a message completed computed at once, and between completions the sources whose
    inputs are in computed ahead every 10 messages (~20 ms of these streams: the service's
    precompute_ms). Beside it, the same streams without computing ahead (every source at the
    completion). A completing call's time is split into deriving the new events, featlib.local
    on the plan, and the rest (vectors)."""
    import tempfile

    from featlib import compute, registry
    from featlib.bybit import parse_message
    from featlib.capture import read_lines
    from featlib.live import LiveEngine

    plan = compute.plan(registry.load(version).names)
    with tempfile.TemporaryDirectory() as tmp:
        capture = Path(tmp) / "streams.jsonl"
        synthetic_capture(capture, symbols=symbols, seconds=seconds)
        messages = [p for line in read_lines(capture) if (p := parse_message(line, 0))]

    def replay(ahead: bool) -> dict:
        engine = LiveEngine(plan, registry_version=version)
        spent = {"events": 0.0, "plan": 0.0}
        derive, run_plan = engine._events, compute.compute_frame

        def timed(key: str, fn: Any) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    spent[key] += time.perf_counter() - t0

            return call

        calls: list[float] = []
        ahead_calls: list[float] = []
        for n, parsed in enumerate(messages):
            engine.on_message(parsed, 0)
            if engine.ready:
                ticks, engine.ready = engine.ready, []
                engine._events = timed("events", derive)
                compute.compute_frame = timed("plan", run_plan)
                t0 = time.perf_counter()
                try:
                    engine.compute(ticks)
                finally:
                    calls.append((time.perf_counter() - t0) * 1000)
                    engine._events, compute.compute_frame = derive, run_plan
            elif ahead and n % 10 == 0:
                t0 = time.perf_counter()
                if engine.precompute():
                    ahead_calls.append((time.perf_counter() - t0) * 1000)
        n = max(1, len(calls))
        out = {
            "completing_calls": len(calls),
            "completing_call_ms_p50": round(_pct(calls, 50) or 0.0, 2),
            "completing_call_ms_p99": round(_pct(calls, 99) or 0.0, 2),
            "events_ms_per_completing_call": round(spent["events"] * 1000 / n, 2),
            "plan_ms_per_completing_call": round(spent["plan"] * 1000 / n, 2),
            "compute_cpu_s": round((sum(calls) + sum(ahead_calls)) / 1000, 2),
        }
        if ahead:
            out |= {
                "ahead_calls": len(ahead_calls),
                "ahead_call_ms_p50": round(_pct(ahead_calls, 50) or 0.0, 2),
                "ahead_call_ms_p99": round(_pct(ahead_calls, 99) or 0.0, 2),
            }
        return out

    return {"symbols": symbols, "computed_ahead": replay(True), "all_at_completion": replay(False)}


def run(**kwargs: Any) -> dict:
    return asyncio.run(measure(**kwargs))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["publish"]:
        return publish_main(argv[1:])
    if argv[:1] == ["consume"]:
        return consume_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.live_bench", description=__doc__)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=90, help="exchange time to replay")
    parser.add_argument("--version", default="1.1.0", help="registry version")
    args = parser.parse_args(argv)
    print(
        json.dumps(run(symbols=args.symbols, seconds=args.seconds, version=args.version), indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
