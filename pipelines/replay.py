"""Publish recorded captures to the ws-gateway queues, as ws-gateway would.

    python -m pipelines.replay ../shared/data/bybit/BTCUSDT_2023-04-05_*.jsonl.gz --speed 10

Each line (the ws-gateway envelope or a raw Bybit message) goes, unchanged, to the queue of its
event type: orderbook, trades, kline, ticker, funding -> {prefix}.{type}. Several files are
merged by receive time; order within each queue is kept. --speed N replays N times faster than
recorded; --speed 0 publishes as fast as the broker takes them.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
from faststream.rabbit import RabbitBroker, RabbitQueue
from faststream.rabbit.schemas import Channel

from featlib.capture import read_lines
from pipelines._cli import require_files, run, setup_logging

QUEUE_OF = {
    "orderbook": "orderbook",
    "trades": "trades",
    "kline": "kline",
    "ticker": "ticker",
    "funding": "funding",
}
_TOPICS = {"orderbook": "orderbook", "publicTrade": "trades", "kline": "kline", "tickers": "ticker"}


def event_type(message: dict) -> str:
    """The ws-gateway event type of an enveloped or raw Bybit message."""
    if "event_type" in message:
        return QUEUE_OF.get(message["event_type"], message["event_type"])
    return _TOPICS.get(str(message.get("topic", "")).split(".")[0], "unknown")


def _stamped(path: Path) -> Iterator[tuple[int, int, bytes, str]]:
    for n, line in enumerate(read_lines(path)):
        message = orjson.loads(line)
        stamp = message.get("received_at") or message.get("ts") or 0
        yield int(stamp), n, line.strip(), event_type(message)


def merged(files: list[Path]) -> Iterator[tuple[int, bytes, str]]:
    """Lines of all files by receive time (a file's own order is kept on ties)."""
    streams = [
        (((ts, i, n), line, kind) for ts, n, line, kind in _stamped(f)) for i, f in enumerate(files)
    ]
    for (ts, _, _), line, kind in heapq.merge(*streams):
        yield ts, line, kind


async def replay(
    files: list[Path], url: str, prefix: str, speed: float, limit: int | None = None
) -> Counter:
    # one channel without publisher confirms: order kept, 10x the rate of waiting for each ack
    broker = RabbitBroker(url, default_channel=Channel(publisher_confirms=False))
    await broker.connect()
    counts: Counter[str] = Counter()
    queues: dict[str, RabbitQueue] = {}
    first_stamp = None
    started = time.monotonic()
    try:
        for stamp, line, kind in merged(files):
            if limit is not None and sum(counts.values()) >= limit:
                break
            if speed > 0:
                first_stamp = stamp if first_stamp is None else first_stamp
                wait = (stamp - first_stamp) / 1000 / speed - (time.monotonic() - started)
                if wait > 0:
                    await asyncio.sleep(wait)
            name = f"{prefix}.{kind}"
            if name not in queues:
                queues[name] = RabbitQueue(name, durable=True)
                await broker.declare_queue(queues[name])
            await broker.publish(line, queue=queues[name], persist=True)
            counts[name] += 1
    finally:
        await broker.stop()
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="times faster than recorded; 0 = as fast as possible (default 1)",
    )
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--prefix", default="ws-gateway", help="queue name prefix")
    parser.add_argument("--limit", type=int, help="stop after this many messages")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.quiet)
    require_files(args.files)
    started = time.monotonic()
    counts = asyncio.run(replay(args.files, args.url, args.prefix, args.speed, args.limit))
    seconds = time.monotonic() - started
    total = sum(counts.values())
    print(
        f"published {total:,} messages in {seconds:.1f}s ({total / max(seconds, 1e-9):,.0f}/s): "
        + ", ".join(f"{q} {n:,}" for q, n in sorted(counts.items())),
        file=sys.stdout,
    )
    return 0


if __name__ == "__main__":
    run(main)
