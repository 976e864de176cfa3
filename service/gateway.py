"""ws-gateway's REST API, as this service uses it: ask for channel subscriptions at start-up
(retrying with backoff; they are never cancelled on shutdown) and request a fresh order-book
snapshot when a book desynchronises. Paths and base URL come from settings."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from service.settings import Settings

log = logging.getLogger(__name__)


class Gateway:
    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None):
        self.settings = settings
        self.client = client or httpx.AsyncClient(timeout=2.0)
        self.subscribed = False
        self.resyncs: dict[str, float] = {}
        self.errors = 0

    async def subscribe(self) -> bool:
        """Request every configured channel for every symbol; retry with exponential backoff."""
        s = self.settings
        if not s.ws_gateway_url:
            return False
        body = {"symbols": s.symbols, "channels": s.channels, "requester": "featlib"}
        delay = s.subscribe_backoff_s
        for attempt in range(1, s.subscribe_attempts + 1):
            try:
                response = await self.client.post(
                    s.ws_gateway_url + s.ws_gateway_subscribe_path, json=body
                )
                response.raise_for_status()
                self.subscribed = True
                log.info("ws-gateway subscriptions requested: %s", body)
                return True
            except httpx.HTTPError as exc:
                self.errors += 1
                log.warning(
                    "ws-gateway subscribe attempt %d/%d failed: %s",
                    attempt,
                    s.subscribe_attempts,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        return False

    async def resync(self, symbol: str) -> bool:
        """Ask for a fresh order-book snapshot of `symbol` (at most one request a second)."""
        s = self.settings
        if not s.ws_gateway_url:
            return False
        now = time.monotonic()
        if now - self.resyncs.get(symbol, -10.0) < 1.0:
            return False
        self.resyncs[symbol] = now
        try:
            response = await self.client.post(
                s.ws_gateway_url + s.ws_gateway_resync_path,
                json={"symbol": symbol, "requester": "featlib"},
            )
            response.raise_for_status()
            log.warning("order book %s desynchronised: snapshot requested", symbol)
            return True
        except httpx.HTTPError as exc:
            self.errors += 1
            log.error("ws-gateway resync request for %s failed: %s", symbol, exc)
            return False

    async def close(self) -> None:
        await self.client.aclose()
