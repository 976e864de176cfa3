"""Messages in, vectors out: the service's consuming side, a thin layer over featlib.

Each ws-gateway message is parsed (featlib.bybit). A malformed one goes to the dead-letter
queue with the reason in its headers, is counted and acknowledged; it never stops the consumer.
A good one is applied to the live engine (featlib.live) at once and recorded in the raw store
in batches (featlib.raw, atomic files); it is acknowledged only after the batch holding it is
on disk, so nothing a crash could lose has been acknowledged. A redelivered message is applied
once (the engine dedupes by raw-store key; so does the store). A tick is computed in the handler
of the message that completes it, and its vectors written to `features.live` at once
(service.publishing); between completions, the sources whose inputs for an open tick are in are
computed ahead (featlib.live.LiveEngine.precompute), so a completing tick computes only what
its last message brought.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import pyarrow as pa
from faststream.rabbit import RabbitBroker
from faststream.rabbit.message import RabbitMessage

from featlib import raw
from featlib.bybit import BybitParseError, Parsed, parse_message
from featlib.compute import Plan
from featlib.live import FeatureVector, LiveEngine
from featlib.schema import RAW_SCHEMAS
from featlib.timeutil import parse_duration
from service import metrics
from service.gateway import Gateway
from service.publishing import VectorWriter
from service.settings import Settings

log = logging.getLogger(__name__)


class DeliveryOrder:
    """Apply deliveries in the order the broker sent them.

    aio-pika runs every delivery in its own task and FastStream awaits before our handler, so
    two messages of one queue can reach the handler swapped (seen: 79 of 4,000 book messages,
    each an update-id gap). Deliveries on one channel carry consecutive tags from 1: a delivery
    is held until every one tagged before it has been applied, and handlers never wait for
    each other. A tag that has not arrived after `timeout_s` (it never reached the handler) is
    given up, so it cannot stall the rest; if it turns up later it is applied then."""

    def __init__(self, apply: Callable[[Any], None], timeout_s: float = 0.5):
        self.apply = apply
        self.timeout_s = timeout_s
        self.next: dict[Any, int] = {}
        self.held: dict[Any, dict[int, tuple[float, Any]]] = {}
        self.given_up = 0
        self.holes: dict[Any, int] = defaultdict(int)
        """Per channel: tags given up (acknowledging past them would lose them)."""

    def push(self, channel: Any, tag: int, item: Any) -> None:
        expected = self.next.setdefault(channel, 1)
        if tag < expected:  # late (its turn was given up) or redelivered on this channel
            self.apply(item)
            return
        self.held.setdefault(channel, {})[tag] = (time.monotonic(), item)
        self._release(channel)

    def _release(self, channel: Any) -> None:
        held, tag = self.held[channel], self.next[channel]
        while tag in held:
            self.apply(held.pop(tag)[1])
            tag += 1
        self.next[channel] = tag

    def expire(self) -> None:
        """Give up on missing tags that held deliveries have waited for too long."""
        now = time.monotonic()
        for channel, held in list(self.held.items()):
            if held and now - min(since for since, _ in held.values()) > self.timeout_s:
                first = min(held)
                self.given_up += first - self.next[channel]
                self.holes[channel] += first - self.next[channel]
                log.warning("deliveries %d..%d never arrived", self.next[channel], first - 1)
                self.next[channel] = first
                self._release(channel)
            if not held and len(self.held) > 16:  # a closed connection's channel
                del self.held[channel], self.next[channel]
                self.holes.pop(channel, None)


class Acks:
    """Acknowledgements per channel and flush, not per message: a delivery is `settle`d once
    recorded (or dead-lettered, or found not to be market data), and the broker is told with one
    `multiple` ack up to the highest tag below which every delivery of the channel is settled
    (tags count from 1 per channel). A tag DeliveryOrder gave up on never reached the handler:
    acking past it would lose it, so such a channel's deliveries are acknowledged one by one."""

    def __init__(self) -> None:
        self.settled: dict[Any, set[int]] = defaultdict(set)
        self.upto: dict[Any, int] = defaultdict(int)

    def settle(self, channel: Any, tag: int) -> None:
        self.settled[channel].add(tag)

    async def send(self, holes: Mapping[Any, int]) -> int:
        """Tell the broker; `holes`: per channel, how many tags were given up (on such a
        channel every ack is single from then on: a `multiple` one could name a tag acked
        already, which the broker refuses). Returns how many deliveries were acknowledged."""
        acked = 0
        for channel in list(self.settled):
            settled = self.settled[channel]
            if holes.get(channel):
                for tag in sorted(settled):
                    await channel.basic_ack(delivery_tag=tag, multiple=False)
                acked += len(settled)
                settled.clear()
            else:
                upto = start = self.upto[channel]
                while upto + 1 in settled:
                    upto += 1
                    settled.discard(upto)
                if upto > start:
                    await channel.basic_ack(delivery_tag=upto, multiple=True)
                    acked += upto - start
                self.upto[channel] = upto
            if not settled and getattr(channel, "is_closed", False):
                del self.settled[channel], self.upto[channel]
        return acked


class LivePipeline:
    def __init__(
        self,
        settings: Settings,
        broker: RabbitBroker,
        plan: Plan,
        registry_version: str,
        gateway: Gateway | None = None,
        out: RabbitBroker | None = None,
    ):
        """`out`: the broker (connection) vectors are published on; default `broker`."""
        self.settings = settings
        self.plan = plan
        self.registry_version = registry_version
        self.engine = LiveEngine(
            plan,
            registry_version=registry_version,
            cadences_ms=[parse_duration(c) for c in settings.cadences],
            quiet_ms=settings.quiet_ms,
        )
        self.gateway = gateway
        features = (out or broker).publisher(
            settings.queue_features,
            schema=FeatureVector,
            title="features.live",
            description="One feature vector per symbol and cadence tick (1s/3s/15s/1m): the "
            "registry version's features at that time, null where unavailable.",
        )
        self.dead = broker.publisher(  # with publisher confirms: acked only once parked
            settings.queue_dead_letter,
            title="dead letters",
            description="Messages that could not be parsed, unchanged; headers x-reason, "
            "x-field, x-queue say why and where from.",
        )
        self.pending: list[tuple[Parsed, RabbitMessage]] = []
        self.latest: dict[str, FeatureVector] = {}
        self.counters: Counter[str] = Counter()
        self.out = VectorWriter(features, settings.queue_features, self.counters)
        self.per_queue: dict[str, Counter[str]] = defaultdict(Counter)
        self.latencies: deque[float] = deque(maxlen=10_000)
        self.last_vector_wall: float | None = None
        self.last_message_wall: float | None = None
        self.flush_errors: deque[str] = deque(maxlen=20)
        self._wake = asyncio.Event()
        self._ahead_due = False
        """ahead_loop will look at the work ahead (a message need not wake it)."""
        self._frozen_after_first = False
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._gaps: dict[str, int] = {}
        self.gap_detected_at: dict[str, float] = {}
        self.order = DeliveryOrder(self._apply)
        self.acks = Acks()

    # --- consuming ---------------------------------------------------------------------------

    async def handle(self, body: bytes, message: RabbitMessage, queue: str) -> None:
        """One ws-gateway message, applied in delivery order (see DeliveryOrder)."""
        item = (body, message, queue, time.time() * 1000)
        delivery = getattr(message, "raw_message", None)
        tag = getattr(delivery, "delivery_tag", None)
        if tag is None:  # not from a broker channel (tests calling handle directly)
            reply = self._apply(item)
            if reply is not None:  # its dead letter or ack, before returning
                await reply
            return
        self.order.push(delivery.channel, tag, item)

    def _apply(self, item: tuple[bytes, RabbitMessage, str, float]) -> asyncio.Task | None:
        """Dead-letter the message, or apply it and queue it for recording."""
        body, message, queue, received = item
        self.last_message_wall = received
        self.per_queue[queue]["received"] += 1
        try:
            parsed = parse_message(body, received_at=int(received))
        except BybitParseError as exc:
            return self._spawn(self._dead_letter(body, message, queue, exc))
        if parsed is None:  # subscription acks and pongs are not market data
            self.counters["control"] += 1
            return self._settle(message)
        self.engine.on_message(parsed, received)
        self._watch_book(parsed.symbol)
        self.pending.append((parsed, message))
        self.counters["applied"] += 1
        metrics.MESSAGES.labels("applied").inc()
        if self.engine.ready:
            self._emit()
        elif not self._ahead_due:  # work ahead
            self._wake.set()
        if len(self.pending) >= self.settings.flush_rows:
            self._spawn(self.flush())
        return None

    def _settle(self, message: RabbitMessage) -> asyncio.Task | None:
        """Done with a message: acknowledged with its channel's next batch (or now, when it
        came from no broker channel)."""
        delivery = getattr(message, "raw_message", None)
        tag = getattr(delivery, "delivery_tag", None)
        if tag is None:
            return self._spawn(message.ack())
        try:
            channel = delivery.channel
        except Exception:  # the channel closed (connection dropped): it comes again, deduped
            self.counters["ack_errors"] += 1
            return None
        self.acks.settle(channel, tag)
        return None

    async def _dead_letter(
        self, body: bytes, message: RabbitMessage, queue: str, exc: BybitParseError
    ) -> None:
        self.counters["rejected"] += 1
        self.per_queue[queue]["rejected"] += 1
        metrics.MESSAGES.labels("rejected").inc()
        log.warning("dead-lettered a message from %s: %s", queue, exc)
        await self.dead.publish(
            body, headers={"x-reason": str(exc), "x-field": exc.field, "x-queue": queue}
        )
        reply = self._settle(message)
        if reply is not None:
            await reply

    def _watch_book(self, symbol: str) -> None:
        """A new update-id gap: ask ws-gateway for a fresh snapshot (within the second)."""
        state = self.engine.symbols.get(symbol)
        book = state.book if state else None
        if book is None:
            return
        if book.gaps > self._gaps.get(symbol, 0):
            self._gaps[symbol] = book.gaps
            self.gap_detected_at[symbol] = time.time()
            self.counters["book_gaps"] += 1
            metrics.BOOK_GAPS.labels(symbol).inc()
            log.warning(
                "order book %s: update-id gap (%d so far); book features are null "
                "until the next snapshot",
                symbol,
                book.gaps,
            )
            if self.gateway is not None:
                self._spawn(self.gateway.resync(symbol))

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)
        return task

    # --- recording --------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write the pending messages' rows to the raw store, then acknowledge them."""
        async with self._lock:
            batch, self.pending = self.pending, []
            if not batch:
                return
            rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for parsed, _ in batch:
                rows[parsed.kind].extend(parsed.rows)
            try:
                written = await asyncio.to_thread(self._write, rows)
            except Exception as exc:  # the disk said no: keep the messages, try again later
                self.flush_errors.append(f"{type(exc).__name__}: {exc}")
                log.error(
                    "raw store write failed (%s); %d messages stay unacknowledged", exc, len(batch)
                )
                self.pending = batch + self.pending
                self.counters["flush_errors"] += 1
                return
            direct = [t for _, message in batch if (t := self._settle(message)) is not None]
            if direct:  # messages from no broker channel (tests): acknowledged one by one
                await asyncio.gather(*direct, return_exceptions=True)
                self.counters["acked"] += len(direct)
            await self._send_acks()
            self.counters["recorded_rows"] += written

    async def _send_acks(self) -> None:
        try:
            self.counters["acked"] += await self.acks.send(self.order.holes)
        except Exception as exc:  # channel gone: its deliveries come again, and are deduped
            self.counters["ack_errors"] += 1
            log.warning("ack failed (%s); the broker will redeliver", exc)

    def _write(self, rows: dict[str, list[dict[str, Any]]]) -> int:
        written = 0
        for kind, items in rows.items():
            table = pa.Table.from_pylist(items, schema=RAW_SCHEMAS[kind])
            written += raw.write(self.settings.data_dir, kind, table).rows_written
        return written

    async def flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_ms / 1000)
            try:
                self.order.expire()
                if self.engine.release():  # ticks a quiet stream held back
                    self._emit()
                await self.flush()
            except Exception:  # never stop recording; what failed stays pending
                self.counters["flush_loop_errors"] += 1
                log.exception("flush loop")

    # --- computing and publishing ---------------------------------------------------------

    def _emit(self) -> None:
        """Compute the ticks complete now and write their vectors. Called where a tick
        completes, in the handler of its last message: neither the deliveries already waiting
        in the event loop (~0.3 ms each in aiormq and FastStream before their handler) nor a
        task of its own to wake delays it. Measured, P4 at the exchange's pace, with a
        consumer in a process of its own: tick complete -> vector there, p50 / p99 6.8 / 35
        ms, against 15 / 71 ms computed by a task the handler woke and published through
        FastStream."""
        try:
            vectors = self.engine.take_vectors()
        except Exception:  # a bug in a feature must not stop the consumer: say so, count it
            self.counters["compute_errors"] += 1
            log.exception("computing complete ticks failed; their vectors are lost")
            return
        if not self._frozen_after_first:  # the first compute loaded numba, pandas-ta
            self._frozen_after_first = True
            _freeze(collect=False)  # (a full collection now would stall 200 ms)
        self.publish(vectors)

    async def ahead_loop(self) -> None:
        """Between completions, what can be computed ahead of them (see
        LiveEngine.precompute): after `precompute_ms` of messages (or none: then at once), a
        source at a time (all its symbols in one call), deliveries and the completions they
        bring served in between."""
        while True:
            self._wake.clear()
            if not self.engine.ahead:
                self._ahead_due = False
                await self._wake.wait()
                continue
            self._ahead_due = True
            await asyncio.sleep(self.settings.precompute_ms / 1000)
            try:
                while self.engine.precompute(sources=1):
                    await asyncio.sleep(0)
            except Exception:  # the completion computes what is missing
                self.counters["precompute_errors"] += 1
                log.exception("computing ahead failed")

    def publish(self, vectors: list[FeatureVector]) -> None:
        """Write vectors to `features.live` in ts order (a consumer gets every (symbol,
        cadence) stream in ts order), each stamped with its latency as it goes."""
        for vector in sorted(vectors, key=lambda v: v.ts):  # (stable: cadences stay in order)
            now = time.time() * 1000
            if vector.complete_at is not None:
                vector.latency_ms = round(now - vector.complete_at, 3)
                self.latencies.append(vector.latency_ms)
                metrics.VECTOR_LATENCY.observe(vector.latency_ms)
                if vector.latency_ms > self.settings.latency_warn_ms:
                    self.counters["slow_vectors"] += 1
                    log.warning(
                        "vector %s %s took %.1f ms (budget %.0f ms)",
                        vector.symbol,
                        vector.ts,
                        vector.latency_ms,
                        self.settings.latency_warn_ms,
                    )
            self.out.send(orjson.dumps(vector.model_dump(mode="json")), vector.trace_id)
            self.counters["published"] += 1
            metrics.VECTORS.labels(vector.interval).inc()
            if vector.interval == self.settings.cadences[0]:
                self.latest[vector.symbol] = vector
            self.last_vector_wall = now

    async def drain(self) -> None:
        """End of input (tests, shutdown): compute what is open, record what is pending."""
        self.publish(self.engine.flush())
        await self.out.wait()
        await self.flush()

    def start(self) -> None:
        _freeze()
        self._spawn(self.flush_loop())
        self._spawn(self.ahead_loop())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:  # the vectors made go out, unless the connection stays down
            await asyncio.wait_for(self.out.wait(), self.settings.stop_publish_s)
        except TimeoutError:
            log.warning("%d vectors not published at shutdown", len(self.out.waiting))
        await self.flush()

    # --- reporting ------------------------------------------------------------------------

    def latency_summary(self) -> dict[str, float | None]:
        values = sorted(self.latencies)
        if not values:
            return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
        return {
            "count": len(values),
            "p50_ms": values[len(values) // 2],
            "p99_ms": values[min(len(values) - 1, int(len(values) * 0.99))],
            "max_ms": values[-1],
        }


def _freeze(collect: bool = True) -> None:
    """What start-up made (the libraries, the compiled plan, the warmed-up buffers, and what
    the first compute loads lazily: numba's typing, pandas-ta) lives as long as the process:
    moved out of the cyclic GC's sight, a full collection no longer walks it (measured: 175 ms
    a full collection, the event loop stalled, then 15-30 ms every 9 s until the first
    compute's objects were frozen too). Frozen objects are still freed by reference counting."""
    if collect:
        gc.collect()
    gc.freeze()
