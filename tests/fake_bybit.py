"""A local fake of Bybit's public REST API and daily trade archives (127.0.0.1 only).

Answers in Bybit's documented v5 shapes (../shared/data/sources/04_bybit_v5_rest_ws_docs_examples:
`retCode/retMsg/result/retExtInfo/time`, numbers as strings, newest-first lists) from real
data: candles and trades of the recorded captures, funding settlements given by the test.

    with FakeBybit(klines=candles_from_capture(path)) as fake:
        fake.fail("/v5/market/kline", "http429", calls=[2, 3])
        ... BackfillOptions(base_url=fake.url, archive_url=fake.archive_url) ...
        assert fake.calls["/v5/market/kline"] == 4

Semantics served: `/v5/market/kline` keeps candles whose start is in [start, end] (both
inclusive, either optional) and returns at most `limit` (1..1000, default 200) of them: the
newest ones, except when only `start` is given (then the oldest from `start`); the candle still
open at the server's clock is included, as Bybit does. `/v5/market/funding/history`: rates in
[startTime, endTime], newest `limit` (1..200); startTime alone is an error. Unknown symbols get
retCode 10001. Archives: `{archive_url}/trading/SYM/SYM{YYYY-MM-DD}.csv.gz` (404 when no
trades that day). Calls are counted per endpoint (every archive file counts as `archive`).

Faults, scheduled per endpoint by call number (`fail`) or at random (`random_errors`):
`http429`, `http500`, `http502`, `http503`, `http504`, `http404`, `ratelimit` (retCode 10006),
`iplimit` (retCode 10018), `badparams` (retCode 10001), `timeout` (answer after `hang_s`),
`truncated` (half the JSON), `missing_field` (a kline row / funding item loses a field),
`misaligned` (a candle start off the minute), `garbage` (an archive that is not gzip).

    python -m tests.fake_bybit [--port 8765]   # serves the real January 2022 candles
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import csv
import datetime as dt
import gzip
import io
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

KLINE = "/v5/market/kline"
FUNDING = "/v5/market/funding/history"
TICKERS = "/v5/market/tickers"
ORDERBOOK = "/v5/market/orderbook"
RECENT_TRADE = "/v5/market/recent-trade"
TIME = "/v5/market/time"
ARCHIVE = "archive"
ARCHIVE_HEADER = (
    "timestamp,symbol,side,size,price,tickDirection,trdMatchID,grossValue,homeNotional,"
    "foreignNotional"
)
FAULTS = frozenset(
    {
        "http429",
        "http500",
        "http502",
        "http503",
        "http504",
        "http404",
        "ratelimit",
        "iplimit",
        "badparams",
        "timeout",
        "truncated",
        "missing_field",
        "misaligned",
        "garbage",
    }
)
_ARCHIVE_PATH = re.compile(r"^/archive/trading/([A-Z0-9]+)/\1(\d{4}-\d{2}-\d{2})\.csv\.gz$")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- real data in Bybit's shapes ------------------------------------------------------------


def _lines(path: Path) -> Iterable[dict[str, Any]]:
    with gzip.open(path, "rt") if str(path).endswith(".gz") else open(path) as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def candles_from_capture(path: Path) -> dict[str, list[list[str]]]:
    """Confirmed 1m candles of a capture -> {symbol: [[start, open, high, low, close, volume,
    turnover], ...]} oldest first, as strings (a REST kline row)."""
    out: dict[str, dict[int, list[str]]] = {}
    for message in _lines(path):
        payload = message.get("payload", message)
        topic = payload.get("topic", "")
        if not topic.startswith("kline.1."):
            continue
        for c in payload["data"]:
            if c["confirm"]:
                row = [str(c["start"])] + [
                    c[k] for k in ("open", "high", "low", "close", "volume", "turnover")
                ]
                out.setdefault(topic.split(".")[2], {})[int(c["start"])] = row
    return {s: [rows[k] for k in sorted(rows)] for s, rows in out.items()}


def trades_from_capture(path: Path) -> dict[str, list[dict[str, Any]]]:
    """publicTrade items of a capture -> {symbol: [{T, s, S, v, p, L, i, BT}, ...]} by time."""
    out: dict[str, list[dict[str, Any]]] = {}
    for message in _lines(path):
        payload = message.get("payload", message)
        if payload.get("topic", "").startswith("publicTrade."):
            for trade in payload["data"]:
                out.setdefault(trade["s"], []).append(trade)
    return {s: sorted(t, key=lambda x: int(x["T"])) for s, t in out.items()}


def funding_schedule(
    symbol: str, start_ms: int, end_ms: int, interval_ms: int = 8 * HOUR_MS
) -> list[dict[str, str]]:
    """Settlements every `interval_ms` in [start, end) with varying rates (oldest first)."""
    first = -(-start_ms // interval_ms) * interval_ms
    out = []
    for k, ts in enumerate(range(first, end_ms, interval_ms)):
        rate = Decimal("0.0001") + Decimal((k * 37) % 23 - 11) * Decimal("0.00001")
        out.append({"symbol": symbol, "fundingRate": str(rate), "fundingRateTimestamp": str(ts)})
    return out


def archive_csv_gz(symbol: str, trades: Sequence[Mapping[str, Any]]) -> bytes:
    """Trades in Bybit's daily archive format (timestamp in seconds with a fraction)."""
    text = io.StringIO()
    text.write(ARCHIVE_HEADER + "\n")
    writer = csv.writer(text, lineterminator="\n")
    for t in trades:
        stamp = int(t["T"])
        price, size = Decimal(t["p"]), Decimal(t["v"])
        writer.writerow(
            [
                f"{stamp // 1000}.{stamp % 1000:03d}0",
                symbol,
                t["S"],
                t["v"],
                t["p"],
                t.get("L", ""),
                t["i"],
                str(int(price * size * 100_000_000)),
                t["v"],
                str(price * size),
            ]
        )
    return gzip.compress(text.getvalue().encode(), mtime=0)


# --- the server -----------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # client gave up
            self.server.fake._serve(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeBybit

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class FakeBybit:
    """Bybit's public REST market endpoints and trade archives on a random 127.0.0.1 port."""

    def __init__(
        self,
        klines: Mapping[str, Sequence[Sequence[str]]] | None = None,
        funding: Mapping[str, Sequence[Mapping[str, str]]] | None = None,
        trades: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        *,
        hang_s: float = 1.0,
    ):
        self.klines = {s: [list(r) for r in rows] for s, rows in (klines or {}).items()}
        self._starts = {s: [int(r[0]) for r in rows] for s, rows in self.klines.items()}
        self.funding = {
            s: sorted(rows, key=lambda r: int(r["fundingRateTimestamp"]))
            for s, rows in (funding or {}).items()
        }
        self.trades = {s: list(rows) for s, rows in (trades or {}).items()}
        self.symbols = set(self.klines) | set(self.funding) | set(self.trades)
        self.hang_s = hang_s
        self.calls: Counter[str] = Counter()
        self.log: list[tuple[str, dict[str, str]]] = []
        self._faults: dict[str, dict[int, str]] = {}
        self._random: tuple[float, random.Random, set[str] | None] | None = None
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._book_updates = 0

    # lifecycle

    def start(self, port: int = 0) -> FakeBybit:
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeBybit:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def archive_url(self) -> str:
        return f"{self.url}/archive"

    # test controls

    def fail(self, endpoint: str, fault: str, calls: Iterable[int]) -> None:
        """Answer call number n (1-based, counted since the last reset) of `endpoint` badly."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {sorted(FAULTS)}")
        with self._lock:
            for n in calls:
                self._faults.setdefault(endpoint, {})[n] = fault

    def random_errors(
        self, rate: float, seed: int = 0, endpoints: Iterable[str] | None = None
    ) -> None:
        """Answer a share `rate` of calls with a random HTTP 5xx (seeded)."""
        with self._lock:
            self._random = (
                rate,
                random.Random(seed),
                None if endpoints is None else set(endpoints),
            )

    def reset(self) -> None:
        """Forget counts, the call log and all faults."""
        with self._lock:
            self.calls.clear()
            self.log.clear()
            self._faults.clear()
            self._random = None

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    # serving

    def _serve(self, handler: _Handler) -> None:
        url = urlsplit(handler.path)
        query = dict(parse_qsl(url.query))
        endpoint = ARCHIVE if url.path.startswith("/archive/") else url.path
        with self._lock:
            self.calls[endpoint] += 1
            self.log.append((url.path, query))
            fault = self._faults.get(endpoint, {}).pop(self.calls[endpoint], None)
            if fault is None and self._random is not None:
                rate, rng, only = self._random
                if (only is None or endpoint in only) and rng.random() < rate:
                    fault = rng.choice(["http500", "http502", "http503", "http504"])
        now = _now_ms()
        if fault == "timeout":
            time.sleep(self.hang_s)
        elif fault is not None and fault.startswith("http"):
            code = int(fault[4:])
            headers = {"Content-Type": "text/html"}
            if code == 429:
                headers["X-Bapi-Limit-Reset-Timestamp"] = str(now + 20)
            body = f"<html><body><h1>{code}</h1></body></html>".encode()
            return self._send(handler, code, body, headers)
        elif fault in ("ratelimit", "iplimit", "badparams"):
            code, message = {
                "ratelimit": (10006, "Too many visits!"),
                "iplimit": (10018, "Exceeded the IP Rate Limit."),
                "badparams": (10001, "params error"),
            }[fault]
            headers = {"X-Bapi-Limit-Status": "0", "X-Bapi-Limit-Reset-Timestamp": str(now + 20)}
            return self._json(handler, _error(code, message, now), headers)
        if endpoint == ARCHIVE:
            return self._archive(handler, url.path, fault)
        route = {
            KLINE: self._kline,
            FUNDING: self._funding,
            TICKERS: self._tickers,
            ORDERBOOK: self._orderbook,
            RECENT_TRADE: self._recent_trade,
            TIME: self._time,
        }.get(endpoint)
        if route is None:
            return self._send(handler, 404, b"<html>404 Not Found</html>", {})
        try:
            page = route(query, now)
        except _ParamsError as exc:
            page = _error(10001, str(exc), now)
        if fault == "missing_field":
            items = page.get("result", {}).get("list") or [None]
            if isinstance(items[0], list):
                items[0].pop()
            elif isinstance(items[0], dict):
                items[0].pop(
                    next(k for k in ("fundingRate", "price", "lastPrice") if k in items[0])
                )
        elif fault == "misaligned" and page.get("result", {}).get("list"):
            page["result"]["list"][0][0] = str(int(page["result"]["list"][0][0]) + 30_000)
        body = json.dumps(page, separators=(",", ":")).encode()
        if fault == "truncated":
            body = body[: len(body) // 2]
        return self._send(handler, 200, body, {"Content-Type": "application/json"})

    def _send(self, handler: _Handler, code: int, body: bytes, headers: Mapping[str, str]) -> None:
        handler.send_response(code)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _json(self, handler: _Handler, page: dict[str, Any], headers: Mapping[str, str]) -> None:
        body = json.dumps(page, separators=(",", ":")).encode()
        self._send(handler, 200, body, {"Content-Type": "application/json", **headers})

    def _archive(self, handler: _Handler, path: str, fault: str | None) -> None:
        match = _ARCHIVE_PATH.match(path)
        trades = []
        if match:
            symbol, date = match.groups()
            day = int(dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC).timestamp()) * 1000
            trades = [t for t in self.trades.get(symbol, []) if day <= int(t["T"]) < day + DAY_MS]
        if not trades:
            return self._send(handler, 404, b"<html>404 Not Found</html>", {})
        body = b"this is not a gzip file" if fault == "garbage" else archive_csv_gz(symbol, trades)
        self._send(handler, 200, body, {"Content-Type": "application/gzip"})

    # endpoints (query -> page)

    def _symbol(self, query: Mapping[str, str], categories: Iterable[str]) -> str:
        if query.get("category") not in set(categories):
            raise _ParamsError(f"params error: category {query.get('category')!r} is invalid")
        symbol = query.get("symbol", "")
        if symbol not in self.symbols:
            raise _ParamsError("Not supported symbols")
        return symbol

    def _kline(self, query: Mapping[str, str], now: int) -> dict[str, Any]:
        symbol = self._symbol(query, ("linear", "inverse", "spot"))
        if query.get("interval") != "1":
            raise _ParamsError("Invalid period: this fake serves interval=1 only")
        limit = _int(query, "limit", 200, 1, 1000)
        start, end = _opt_int(query, "start"), _opt_int(query, "end")
        starts, rows = self._starts.get(symbol, []), self.klines.get(symbol, [])
        lo = 0 if start is None else bisect.bisect_left(starts, start)
        hi = bisect.bisect_right(starts, min(now, end) if end is not None else now)
        chosen = (
            rows[lo : lo + limit]
            if end is None and start is not None
            else rows[max(lo, hi - limit) : hi]
        )
        result = {
            "symbol": symbol,
            "category": query["category"],
            "list": [list(r) for r in reversed(chosen)],
        }
        return _ok(result, now)

    def _funding(self, query: Mapping[str, str], now: int) -> dict[str, Any]:
        symbol = self._symbol(query, ("linear", "inverse"))
        limit = _int(query, "limit", 200, 1, 200)
        start, end = _opt_int(query, "startTime"), _opt_int(query, "endTime")
        if start is not None and end is None:
            raise _ParamsError("params error: endTime is required when startTime is given")
        rows = [
            r
            for r in self.funding.get(symbol, [])
            if (start is None or int(r["fundingRateTimestamp"]) >= start)
            and int(r["fundingRateTimestamp"]) <= (now if end is None else end)
        ][-limit:]
        return _ok({"category": query["category"], "list": [dict(r) for r in reversed(rows)]}, now)

    def _last_close(self, symbol: str) -> Decimal:
        rows = self.klines.get(symbol)
        if rows:
            return Decimal(rows[-1][4])
        trades = self.trades.get(symbol)
        return Decimal(trades[-1]["p"]) if trades else Decimal("100")

    def _tickers(self, query: Mapping[str, str], now: int) -> dict[str, Any]:
        symbol = self._symbol(query, ("linear", "inverse", "spot"))
        rows = self.klines.get(symbol, [])[-1440:]
        last = self._last_close(symbol)
        funding = self.funding.get(symbol, [])
        rate = funding[-1]["fundingRate"] if funding else "0.0001"
        nxt = int(funding[-1]["fundingRateTimestamp"]) + 8 * HOUR_MS if funding else 0
        prev = Decimal(rows[0][1]) if rows else last
        item = {
            "symbol": symbol,
            "lastPrice": str(last),
            "indexPrice": str(last - Decimal("1.5")),
            "markPrice": str(last - Decimal("0.5")),
            "prevPrice24h": str(prev),
            "price24hPcnt": str(round((last - prev) / prev, 6)),
            "highPrice24h": str(max((Decimal(r[2]) for r in rows), default=last)),
            "lowPrice24h": str(min((Decimal(r[3]) for r in rows), default=last)),
            "prevPrice1h": str(Decimal(rows[-60][1]) if len(rows) >= 60 else last),
            "openInterest": "50000.123",
            "openInterestValue": str(round(last * Decimal("50000.123"), 2)),
            "turnover24h": str(sum((Decimal(r[6]) for r in rows), Decimal(0))),
            "volume24h": str(sum((Decimal(r[5]) for r in rows), Decimal(0))),
            "fundingRate": rate,
            "nextFundingTime": str(nxt),
            "predictedDeliveryPrice": "",
            "basisRate": "",
            "deliveryFeeRate": "",
            "deliveryTime": "0",
            "ask1Size": "1.5",
            "bid1Price": str(last - Decimal("0.5")),
            "ask1Price": str(last),
            "bid1Size": "2.25",
            "basis": "",
            "fundingIntervalHour": "8",
            "fundingCap": "0.005",
        }
        return _ok({"category": query["category"], "list": [item]}, now)

    def book_levels(self, symbol: str, limit: int) -> tuple[list[list[str]], list[list[str]]]:
        """The fake's order book: `limit` bids below and asks above the last close."""
        last = self._last_close(symbol)
        bids = [
            [str(last - Decimal("0.5") * (i + 1)), str(Decimal("0.1") * (i + 1))]
            for i in range(limit)
        ]
        asks = [
            [str(last + Decimal("0.5") * i), str(Decimal("0.2") * (i + 1))] for i in range(limit)
        ]
        return bids, asks

    def _orderbook(self, query: Mapping[str, str], now: int) -> dict[str, Any]:
        symbol = self._symbol(query, ("linear", "inverse", "spot"))
        limit = _int(query, "limit", 25, 1, 500)
        bids, asks = self.book_levels(symbol, limit)
        with self._lock:
            self._book_updates += 1
            update = self._book_updates
        result = {
            "s": symbol,
            "a": asks,
            "b": bids,
            "ts": now,
            "u": update,
            "seq": 1000 + update,
            "cts": now - 7,
        }
        return _ok(result, now)

    def _recent_trade(self, query: Mapping[str, str], now: int) -> dict[str, Any]:
        symbol = self._symbol(query, ("linear", "inverse", "spot"))
        limit = _int(query, "limit", 500, 1, 1000)
        items = [
            {
                "execId": t["i"],
                "symbol": symbol,
                "price": t["p"],
                "size": t["v"],
                "side": t["S"],
                "time": str(t["T"]),
                "isBlockTrade": bool(t.get("BT", False)),
                "isRPITrade": False,
            }
            for t in reversed(self.trades.get(symbol, [])[-limit:])
        ]
        return _ok({"category": query["category"], "list": items}, now)

    def _time(self, query: Mapping[str, str], now: int) -> dict[str, Any]:
        return _ok({"timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)}, now)


class _ParamsError(ValueError):
    pass


def _ok(result: Any, now: int) -> dict[str, Any]:
    return {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": now}


def _error(code: int, message: str, now: int) -> dict[str, Any]:
    return {"retCode": code, "retMsg": message, "result": {}, "retExtInfo": {}, "time": now}


def _opt_int(query: Mapping[str, str], key: str) -> int | None:
    value = query.get(key)
    if value is None:
        return None
    if not value.lstrip("-").isdigit():
        raise _ParamsError(f"params error: {key} must be an integer")
    return int(value)


def _int(query: Mapping[str, str], key: str, default: int, lo: int, hi: int) -> int:
    value = _opt_int(query, key)
    if value is None:
        return default
    if not lo <= value <= hi:
        raise _ParamsError(f"params error: {key} must be in [{lo}, {hi}]")
    return value


def main(argv: list[str] | None = None) -> None:
    """Serve the real January 2022 BTCUSDT candles (+ a month of funding, 2024 trades)."""
    from tests.conftest import CAPTURE_2024_BTC, KLINES_31D, SHARED

    parser = argparse.ArgumentParser(prog="python -m tests.fake_bybit", description=main.__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    klines = candles_from_capture(SHARED / KLINES_31D)
    first, last = int(klines["BTCUSDT"][0][0]), int(klines["BTCUSDT"][-1][0])
    fake = FakeBybit(
        klines,
        {"BTCUSDT": funding_schedule("BTCUSDT", first, last)},
        trades_from_capture(SHARED / CAPTURE_2024_BTC),
    )
    fake.start(args.port)
    print(f"fake Bybit REST at {fake.url}  archives at {fake.archive_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
