"""`features.live`'s writer: each vector is written the moment it is made, in the order made.

FastStream's publisher (through aio-pika) holds the channel for every publish until the
connection's writer task has written it (aiormq `Channel.basic_publish` awaits its drain inside
the channel lock), so the ten to forty vectors of one second left one event-loop pass apart,
each pass behind every delivery ready in the loop (~0.3 ms each). Here a vector's frames are
queued on the aiormq channel without that wait (`basic_publish(wait=False)`, the wait aio-pika
cannot turn off): the call returns at once, nothing can overtake it, and the writer puts every
queued vector on the socket in its next pass. Vectors are a moment's values the next one
replaces: no publisher confirms, not persistent. On a broker without a channel (FastStream's
in-memory TestRabbitBroker) the FastStream publisher is used, in the same order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from typing import Any

from aiormq import spec

log = logging.getLogger(__name__)

BACKLOG = 100_000
"""Vectors kept while the connection is down (then the oldest go: the newest matter)."""


class VectorWriter:
    def __init__(
        self,
        publisher: Any,
        queue: str,
        counters: Counter[str],
        content_type: str = "application/json",
    ):
        self.publisher = publisher
        """FastStream's publisher: the AsyncAPI contract, and the path without a channel."""
        self.queue = queue
        self.content_type = content_type
        self.channel: Any = None
        """The aio-pika channel vectors go out on (set once the broker is connected)."""
        self.waiting: deque[tuple[bytes, str]] = deque(maxlen=BACKLOG)
        self.task: asyncio.Task | None = None
        self.counters = counters
        """publish_errors, vectors_dropped (the service's counters)."""

    def send(self, body: bytes, correlation_id: str) -> None:
        """Write a vector (now, unless earlier ones still wait for the connection)."""
        if len(self.waiting) == self.waiting.maxlen:
            self.counters["vectors_dropped"] += 1
            log.error("%s: %d vectors waiting; the oldest is dropped", self.queue, BACKLOG)
        self.waiting.append((body, correlation_id))
        if self.task is None or self.task.done():
            # eager: runs here, to its end unless the connection is down (then it waits for
            # it, and what is sent meanwhile queues behind)
            self.task = asyncio.Task(
                self._drain(), loop=asyncio.get_running_loop(), eager_start=True
            )

    async def wait(self) -> None:
        """Until every vector sent so far is handed to the connection."""
        while self.task is not None and not self.task.done():
            await asyncio.shield(self.task)

    async def _drain(self) -> None:
        while self.waiting:
            # taken off first: a full queue drops its oldest, never the one being written
            body, correlation_id = self.waiting.popleft()
            try:
                await self._write(body, correlation_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a closed channel: say so, go on with the next
                self.counters["publish_errors"] += 1
                log.warning("publishing a vector to %s failed: %s", self.queue, exc)

    async def _write(self, body: bytes, correlation_id: str) -> None:
        if self.channel is None:
            await self.publisher.publish(
                body, correlation_id=correlation_id, content_type=self.content_type
            )
            return
        channel = await self.channel.get_underlay_channel()  # waits while reconnecting
        await channel.basic_publish(
            body,
            routing_key=self.queue,
            properties=spec.Basic.Properties(
                content_type=self.content_type, correlation_id=correlation_id, delivery_mode=1
            ),
            wait=False,
        )
