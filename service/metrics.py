"""Prometheus metrics of the live service (served at /metrics)."""

from prometheus_client import Counter, Histogram

VECTOR_LATENCY = Histogram(
    "featlib_vector_latency_ms",
    "Receive of the last contributing message -> vector published (ms)",
    buckets=(1, 2, 5, 10, 20, 35, 50, 70, 100, 200, 500, 1000, 5000),
)
MESSAGES = Counter("featlib_messages_total", "ws-gateway messages by outcome", ["outcome"])
VECTORS = Counter("featlib_vectors_published_total", "Feature vectors published", ["interval"])
BOOK_GAPS = Counter("featlib_book_gaps_total", "Order-book update-id gaps (desyncs)", ["symbol"])
