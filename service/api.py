"""The HTTP side: health (open), everything else behind the X-API-Key header."""

from __future__ import annotations

import hmac
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from featlib import raw
from featlib.live import FeatureVector
from featlib.schema import SYMBOL


def require_key(
    request: Request,
    x_api_key: Annotated[str | None, Header(description="the service's API key")] = None,
) -> None:
    """Reject a request without the right X-API-Key (compared in constant time)."""
    expected = request.app.state.settings.api_key
    if x_api_key is None or not hmac.compare_digest(x_api_key.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong X-API-Key header")


open_routes = APIRouter()
routes = APIRouter(dependencies=[Depends(require_key)])


def _symbol(symbol: str) -> str:
    if not SYMBOL.match(symbol):
        raise HTTPException(422, f"not a symbol: {symbol!r} (expected e.g. BTCUSDT)")
    return symbol


@open_routes.get("/health", tags=["service"])
async def health(request: Request) -> dict[str, Any]:
    """Dependencies' status: broker, raw store, registry, last vector age."""
    state = request.app.state
    pipeline = state.pipeline
    broker_ok = state.broker_started and all(
        getattr(b, "_connection", None) for b in (state.broker, state.out_broker)
    )
    store: Path = state.settings.data_dir
    try:
        store.mkdir(parents=True, exist_ok=True)
        probe = store / ".health"
        probe.write_text(str(time.time()))
        store_ok = True
    except OSError:
        store_ok = False
    now = time.time() * 1000
    age = None if pipeline.last_vector_wall is None else (now - pipeline.last_vector_wall) / 1000
    checks = {
        "broker": "ok" if broker_ok else "down",
        "raw_store": "ok" if store_ok else "unwritable",
        "registry": {"version": pipeline.registry_version, "features": len(pipeline.plan.names)},
        "last_vector_age_s": None if age is None else round(age, 3),
        "ws_gateway": "subscribed" if getattr(state.gateway, "subscribed", False) else "not yet",
    }
    healthy = broker_ok and store_ok
    return {"status": "ok" if healthy else "degraded", **checks}


@routes.get("/features/latest", tags=["features"], response_model=FeatureVector)
async def latest(
    request: Request, symbol: Annotated[str, Query(min_length=2, max_length=40)]
) -> FeatureVector:
    """The latest vector published for `symbol` (404 if none)."""
    vector = request.app.state.pipeline.latest.get(_symbol(symbol))
    if vector is None:
        raise HTTPException(404, f"no features for {symbol}: unknown symbol or none computed yet")
    return vector


@routes.get("/stats", tags=["stats"])
async def stats(request: Request) -> dict[str, Any]:
    return {part: await _stats_part(request, part) for part in STATS}


STATS = ("storage", "processing", "rolling-windows", "subscriptions", "service")


async def _stats_part(request: Request, part: str) -> dict[str, Any]:
    state = request.app.state
    pipeline = state.pipeline
    engine = pipeline.engine
    if part == "storage":
        root = state.settings.data_dir
        kinds = {}
        for kind in raw.RAW_SCHEMAS:
            files = raw.files(root, kind)
            kinds[kind] = {"files": len(files), "bytes": sum(f.stat().st_size for f in files)}
        return {
            "root": str(root),
            "tables": kinds,
            "pending_messages": len(pipeline.pending),
            "flush_errors": list(pipeline.flush_errors),
        }
    if part == "processing":
        return {
            "counters": dict(pipeline.counters),
            "engine": dict(engine.stats),
            "latency": pipeline.latency_summary(),
            "queues": {q: dict(c) for q, c in pipeline.per_queue.items()},
        }
    if part == "rolling-windows":
        out = {}
        for symbol, st in engine.symbols.items():
            out[symbol] = {
                "raw_rows_kept": {kind: len(rows) for kind, rows in st.raw.items()},
                "events_kept": {source: len(rows) for source, rows in st.events.items()},
                "watermarks": st.watermark,
                "next_tick": st.next_tick,
                "book": None
                if st.book is None
                else {
                    "depth": st.book_depth,
                    "desynced": st.book.desynced,
                    "update_id": st.book.update_id,
                    **st.book.counters,
                },
            }
        return out
    if part == "subscriptions":
        gateway = state.gateway
        return {
            "subscribed": getattr(gateway, "subscribed", False),
            "symbols": state.settings.symbols,
            "channels": state.settings.channels,
            "resync_requests": dict(getattr(gateway, "resyncs", {})),
            "errors": getattr(gateway, "errors", 0),
        }
    return {
        "started_at": state.started_at,
        "uptime_s": round(time.time() - state.started_at, 1),
        "registry_version": pipeline.registry_version,
        "cadences": state.settings.cadences,
    }


@routes.get("/stats/{part}", tags=["stats"])
async def stats_part(request: Request, part: str) -> dict[str, Any]:
    if part not in STATS:
        raise HTTPException(404, f"unknown stats part {part!r}; one of {', '.join(STATS)}")
    return await _stats_part(request, part)


@routes.get("/metrics", tags=["stats"])
async def metrics() -> Response:
    """Prometheus metrics (vector latency, messages, dead letters)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@routes.get("/asyncapi.json", tags=["service"])
async def asyncapi(request: Request) -> Response:
    """AsyncAPI 3 document of every queue this service reads and writes."""
    return Response(request.app.state.asyncapi.to_json(), media_type="application/json")


@routes.get("/asyncapi", tags=["service"], response_class=HTMLResponse)
async def asyncapi_html(request: Request) -> str:
    from faststream.specification.asyncapi.site import get_asyncapi_html

    return get_asyncapi_html(request.app.state.asyncapi)
