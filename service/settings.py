"""The service's configuration: one pydantic-settings model, environment prefix FEATLIB_."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from featlib.registry import REGISTRY_DIR


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEATLIB_", env_file=".env", extra="ignore")

    rabbit_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    queue_orderbook: str = "ws-gateway.orderbook"
    queue_trades: str = "ws-gateway.trades"
    queue_kline: str = "ws-gateway.kline"
    queue_ticker: str = "ws-gateway.ticker"
    queue_funding: str = "ws-gateway.funding"
    queue_features: str = "features.live"
    queue_dead_letter: str = "features.dead-letter"
    queue_dataset_ready: str = "features.dataset.ready"
    prefetch: int = Field(default=5_000, ge=1, description="unacked messages per consumer")

    data_dir: Path = Path("data/raw")
    datasets_dir: Path = Path("data/datasets")
    cache_dir: Path | None = None
    """Dataset builds' feature/output cache; None: beside the raw store (DATA_DIR/../cache)."""
    catalog: str = "data/catalog.db"
    registry_dir: Path = REGISTRY_DIR
    registry_version: str | None = None
    """None: the catalog's active version, else featlib.registry.DEFAULT_VERSION."""

    api_key: str = Field(default="dev-key", min_length=1)
    cadences: list[str] = ["1s", "3s", "15s", "1m"]
    quiet_ms: int = 10_000
    flush_ms: int = Field(default=250, ge=1, description="raw-store write (and ack) interval")
    precompute_ms: float = Field(
        default=20.0,
        ge=0,
        description="how long messages gather before the sources whose inputs for an open "
        "tick are in are computed ahead of its completion (a completing tick goes first)",
    )
    flush_rows: int = Field(default=20_000, ge=1)
    latency_warn_ms: float = 70.0
    stop_publish_s: float = Field(
        default=5.0, ge=0, description="at shutdown, how long vectors made may wait to go out"
    )
    warmup: bool = True
    """Fill the live buffers from the raw store at start-up."""

    bybit_url: str = "https://api.bybit.com"
    """Bybit's REST API for backfill jobs (tests point it at tests/fake_bybit.py)."""
    bybit_archive_url: str = "https://public.bybit.com"
    backfill_delay_s: float = Field(default=0.1, ge=0, description="pause between API calls")
    backfill_max_days: int = Field(default=30, ge=1, description="POST /backfill/auto reach")

    ws_gateway_url: str | None = "http://127.0.0.1:8081"
    ws_gateway_subscribe_path: str = "/api/v1/subscriptions"
    ws_gateway_resync_path: str = "/api/v1/orderbook/resync"
    symbols: list[str] = ["BTCUSDT"]
    channels: list[str] = ["orderbook.200", "publicTrade", "kline.1", "tickers"]
    subscribe_attempts: int = 8
    subscribe_backoff_s: float = 0.5
