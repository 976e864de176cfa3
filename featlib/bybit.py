"""Bybit v5 at the edge: public WebSocket messages and REST pages -> canonical rows.

Everything Bybit-specific (string numbers, topic names, the ws-gateway envelope, newest-first
REST pages, empty strings for absent values) is handled here, once. A message either parses
completely or raises `BybitParseError` naming the offending field: there are no half rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

from featlib.schema import RAW_SCHEMAS, SYMBOL
from featlib.timeutil import DAY_MS, MINUTE_MS

BOOK_DEPTHS = frozenset({1, 25, 50, 200, 500, 1000})  # 500 appears in older dumps
_TOPICS = {"orderbook", "publicTrade", "kline", "tickers"}
_ENVELOPE_KEYS = {"payload", "event_type"}


class BybitParseError(ValueError):
    """A message that is not a valid Bybit v5 public message; `field` says where."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Parsed:
    """One message's rows for one raw table (`kind` is a key of RAW_SCHEMAS)."""

    kind: str
    symbol: str
    rows: list[dict[str, Any]]

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=RAW_SCHEMAS[self.kind])


# --- field readers -------------------------------------------------------------------------


def _get(obj: Mapping[str, Any], key: str, path: str) -> Any:
    try:
        value = obj[key]
    except KeyError:
        raise BybitParseError(f"{path}{key}", "missing") from None
    except TypeError:
        raise BybitParseError(path.rstrip(".") or "<message>", "not an object") from None
    return value


def _num(value: Any, field: str, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or value is None or value == "":
        raise BybitParseError(field, f"expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BybitParseError(field, f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise BybitParseError(field, f"not finite: {value!r}")
    if positive and number <= 0:
        raise BybitParseError(field, f"must be > 0, got {value!r}")
    if nonneg and number < 0:
        raise BybitParseError(field, f"must be >= 0, got {value!r}")
    return number


def _opt_num(obj: Mapping[str, Any], key: str, path: str) -> float | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    return _num(value, f"{path}{key}")


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise BybitParseError(field, f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise BybitParseError(field, f"expected an integer, got {value!r}")


def _ms(value: Any, field: str) -> int:
    stamp = _int(value, field)
    if not 0 < stamp < 10**13:  # milliseconds between 1970 and 2286
        raise BybitParseError(field, f"not a millisecond timestamp: {value!r}")
    return stamp


def _opt_ms(obj: Mapping[str, Any], key: str, path: str) -> int | None:
    value = obj.get(key)
    if value is None or value == "" or value in (0, "0"):
        return None
    return _ms(value, f"{path}{key}")


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise BybitParseError(field, f"expected a non-empty string, got {value!r}")
    return value


def _opt_str(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BybitParseError(f"{path}{key}", f"expected a string, got {value!r}")
    return value


def _id(value: Any, field: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _str(value, field)


def _list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise BybitParseError(field, f"expected a list, got {type(value).__name__}")
    return value


def interval_ms(interval: str, start_ms: int | None = None) -> int:
    """Bybit kline interval ('1', '60', 'D', 'W', 'M') -> its length in ms."""
    if interval.isdigit():
        return int(interval) * MINUTE_MS
    if interval == "D":
        return DAY_MS
    if interval == "W":
        return 7 * DAY_MS
    if interval == "M" and start_ms is not None:
        import datetime as dt

        start = dt.datetime.fromtimestamp(start_ms / 1000, tz=dt.UTC)
        nxt = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
        return int(nxt.timestamp() * 1000) - start_ms
    raise BybitParseError("interval", f"unknown kline interval {interval!r}")


# --- WebSocket messages -------------------------------------------------------------------


def decode(raw: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(raw, Mapping):
        return raw
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BybitParseError("<message>", f"not JSON ({exc})") from None
    if not isinstance(message, dict):
        raise BybitParseError("<message>", f"expected a JSON object, got {type(message).__name__}")
    return message


def unwrap(message: Mapping[str, Any]) -> tuple[Mapping[str, Any], int | None, str | None]:
    """Accept a raw Bybit message or ws-gateway's envelope; -> (payload, received_at, event)."""
    if message.keys() >= _ENVELOPE_KEYS:
        payload = message["payload"]
        if isinstance(payload, str | bytes):
            payload = decode(payload)
        if not isinstance(payload, Mapping):
            raise BybitParseError("payload", "expected a JSON object")
        received = message.get("received_at")
        received_at = None if received is None else _received_at(received)
        event = message.get("event_type")
        return payload, received_at, event if isinstance(event, str) else None
    return message, None, None


def _received_at(value: Any) -> int:
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        from featlib.timeutil import parse_time

        try:
            return parse_time(value)
        except ValueError:
            raise BybitParseError("received_at", f"not a timestamp: {value!r}") from None
    return _ms(value, "received_at")


def is_control(message: Mapping[str, Any]) -> bool:
    """Subscription acks, pongs and other non-market messages (no topic, an `op`)."""
    return "topic" not in message and ("op" in message or "success" in message)


def parse_message(
    raw: bytes | str | Mapping[str, Any], received_at: int | None = None
) -> Parsed | None:
    """Parse one WS message (raw or enveloped). None for control messages.

    `received_at` is our receive clock in ms; the envelope's value wins when present.
    """
    payload, enveloped_at, event = unwrap(decode(raw))
    if is_control(payload):
        return None
    received = enveloped_at if enveloped_at is not None else received_at
    if received is None:
        raise BybitParseError("received_at", "missing: pass the receive time or use the envelope")
    topic = _str(_get(payload, "topic", ""), "topic")
    family, _, rest = topic.partition(".")
    if family not in _TOPICS:
        raise BybitParseError("topic", f"unsupported topic {topic!r}")
    if family == "orderbook":
        return _parse_book(payload, rest, received)
    if family == "publicTrade":
        return _parse_trades(payload, rest, received)
    if family == "kline":
        return _parse_kline(payload, rest, received)
    return _parse_ticker(payload, rest, received, as_funding=event == "funding")


def _topic_symbol(rest: str, field: str = "topic") -> str:
    symbol = rest.rpartition(".")[2]
    if not SYMBOL.match(symbol):
        raise BybitParseError(field, f"not a symbol: {symbol!r}")
    return symbol


_INF = float("inf")


def _levels(value: Any, field: str) -> tuple[list[float], list[float]]:
    levels = _list(value, field)
    try:  # fast path for well-formed levels; anything odd falls through to the exact checks
        if all(
            type(lv) is list and len(lv) == 2 and type(lv[0]) is str and type(lv[1]) is str
            for lv in levels
        ):
            prices = [float(lv[0]) for lv in levels]
            sizes = [float(lv[1]) for lv in levels]
            if all(0 < p < _INF for p in prices) and all(0 <= q < _INF for q in sizes):
                return prices, sizes
    except ValueError:
        pass
    prices, sizes = [], []
    for i, level in enumerate(levels):
        if not isinstance(level, list | tuple) or len(level) != 2:
            raise BybitParseError(f"{field}[{i}]", f"expected [price, size], got {level!r}")
        prices.append(_num(level[0], f"{field}[{i}][0]", positive=True))
        sizes.append(_num(level[1], f"{field}[{i}][1]", nonneg=True))
    return prices, sizes


def book_row(
    data: Mapping[str, Any],
    *,
    ts: int,
    depth: int,
    received_at: int,
    cts: int | None,
    path: str = "data.",
) -> dict[str, Any]:
    bid_price, bid_size = _levels(_get(data, "b", path), f"{path}b")
    ask_price, ask_size = _levels(_get(data, "a", path), f"{path}a")
    seq = data.get("seq")
    return {
        "symbol": _str(_get(data, "s", path), f"{path}s"),
        "ts": ts,
        "update_id": _int(_get(data, "u", path), f"{path}u"),
        "seq": None if seq is None else _int(seq, f"{path}seq"),
        "cts": cts,
        "depth": depth,
        "bid_price": bid_price,
        "bid_size": bid_size,
        "ask_price": ask_price,
        "ask_size": ask_size,
        "received_at": received_at,
    }


def _parse_book(msg: Mapping[str, Any], rest: str, received_at: int) -> Parsed:
    depth_text, _, symbol = rest.partition(".")
    _topic_symbol(symbol)
    if not depth_text.isdigit() or int(depth_text) not in BOOK_DEPTHS:
        raise BybitParseError("topic", f"unsupported order-book depth {depth_text!r}")
    kind = _get(msg, "type", "")
    if kind not in ("snapshot", "delta"):
        raise BybitParseError("type", f"expected 'snapshot' or 'delta', got {kind!r}")
    data = _get(msg, "data", "")
    if not isinstance(data, Mapping):
        raise BybitParseError("data", "expected an object")
    row = book_row(
        data,
        ts=_ms(_get(msg, "ts", ""), "ts"),
        depth=int(depth_text),
        received_at=received_at,
        cts=_opt_ms(msg, "cts", ""),
    )
    if row["symbol"] != symbol:
        raise BybitParseError("data.s", f"{row['symbol']!r} does not match topic {symbol!r}")
    table = "orderbook_snapshots" if kind == "snapshot" else "orderbook_deltas"
    return Parsed(table, symbol, [row])


def _parse_trades(msg: Mapping[str, Any], rest: str, received_at: int) -> Parsed:
    symbol = _topic_symbol(rest)
    rows = []
    for i, trade in enumerate(_list(_get(msg, "data", ""), "data")):
        path = f"data[{i}]."
        side = _get(trade, "S", path)
        if side not in ("Buy", "Sell"):
            raise BybitParseError(f"{path}S", f"expected 'Buy' or 'Sell', got {side!r}")
        if _get(trade, "s", path) != symbol:
            raise BybitParseError(f"{path}s", f"{trade['s']!r} does not match topic {symbol!r}")
        block = trade.get("BT")
        seq = trade.get("seq")
        rows.append(
            {
                "symbol": symbol,
                "ts": _ms(_get(trade, "T", path), f"{path}T"),
                "trade_id": _id(_get(trade, "i", path), f"{path}i"),
                "side": side,
                "price": _num(_get(trade, "p", path), f"{path}p", positive=True),
                "size": _num(_get(trade, "v", path), f"{path}v", positive=True),
                "tick_direction": _opt_str(trade, "L", path),
                "block_trade": block if isinstance(block, bool) else None,
                "seq": None if seq is None else _int(seq, f"{path}seq"),
                "received_at": received_at,
            }
        )
    if not rows:
        raise BybitParseError("data", "no trades")
    return Parsed("trades", symbol, rows)


def candle_row(
    c: Mapping[str, Any],
    *,
    symbol: str,
    interval: str,
    start: int,
    confirm: bool,
    update_ts: int,
    received_at: int,
    path: str,
) -> dict[str, Any]:
    """One candle -> a klines row; a confirmed candle is known at its close (start + interval)."""
    values = {
        key: _num(
            _get(c, key, path),
            f"{path}{key}",
            positive=key in ("open", "high", "low", "close"),
            nonneg=key in ("volume", "turnover"),
        )
        for key in ("open", "high", "low", "close", "volume", "turnover")
    }
    if values["high"] < max(values["open"], values["close"], values["low"]):
        raise BybitParseError(f"{path}high", f"{values['high']} below open/close/low")
    if values["low"] > min(values["open"], values["close"]):
        raise BybitParseError(f"{path}low", f"{values['low']} above open/close")
    close_time = start + interval_ms(interval, start)
    return {
        "symbol": symbol,
        "ts": close_time if confirm else update_ts,
        "start": start,
        "interval": interval,
        **values,
        "confirm": confirm,
        "update_ts": update_ts,
        "received_at": received_at,
    }


def _parse_kline(msg: Mapping[str, Any], rest: str, received_at: int) -> Parsed:
    interval, _, symbol = rest.partition(".")
    _topic_symbol(symbol)
    interval_ms(interval)  # validates
    rows = []
    for i, candle in enumerate(_list(_get(msg, "data", ""), "data")):
        path = f"data[{i}]."
        confirm = _get(candle, "confirm", path)
        if not isinstance(confirm, bool):
            raise BybitParseError(f"{path}confirm", f"expected true/false, got {confirm!r}")
        candle_interval = str(candle.get("interval", interval))
        if candle_interval != interval:
            raise BybitParseError(f"{path}interval", f"{candle_interval!r} != topic {interval!r}")
        start = _ms(_get(candle, "start", path), f"{path}start")
        update = candle.get("timestamp", msg.get("ts"))
        rows.append(
            candle_row(
                candle,
                symbol=symbol,
                interval=interval,
                start=start,
                confirm=confirm,
                update_ts=_ms(update, f"{path}timestamp"),
                received_at=received_at,
                path=path,
            )
        )
    if not rows:
        raise BybitParseError("data", "no candles")
    return Parsed("klines", symbol, rows)


_TICKER_FIELDS = {
    "lastPrice": "last_price",
    "markPrice": "mark_price",
    "indexPrice": "index_price",
    "fundingRate": "funding_rate",
    "bid1Price": "bid1_price",
    "bid1Size": "bid1_size",
    "ask1Price": "ask1_price",
    "ask1Size": "ask1_size",
    "openInterest": "open_interest",
    "openInterestValue": "open_interest_value",
    "turnover24h": "turnover_24h",
    "volume24h": "volume_24h",
    "highPrice24h": "high_price_24h",
    "lowPrice24h": "low_price_24h",
    "prevPrice24h": "prev_price_24h",
    "price24hPcnt": "price_24h_pcnt",
}


def _parse_ticker(
    msg: Mapping[str, Any], rest: str, received_at: int, *, as_funding: bool
) -> Parsed:
    symbol = _topic_symbol(rest)
    data = _get(msg, "data", "")
    if not isinstance(data, Mapping):
        raise BybitParseError("data", "expected an object")
    if data.get("symbol", symbol) != symbol:
        raise BybitParseError("data.symbol", f"{data['symbol']!r} does not match topic")
    kind = msg.get("type", "snapshot")
    if kind not in ("snapshot", "delta"):
        raise BybitParseError("type", f"expected 'snapshot' or 'delta', got {kind!r}")
    ts = _ms(_get(msg, "ts", ""), "ts")
    values = {col: _opt_num(data, key, "data.") for key, col in _TICKER_FIELDS.items()}
    next_funding = _opt_ms(data, "nextFundingTime", "data.")
    if as_funding:
        if values["funding_rate"] is None:
            raise BybitParseError("data.fundingRate", "missing in a funding message")
        row = {
            "symbol": symbol,
            "ts": ts,
            "funding_rate": values["funding_rate"],
            "next_funding_time": next_funding,
            "source": "ws",
            "received_at": received_at,
        }
        return Parsed("funding", symbol, [row])
    cross_seq = msg.get("cs")
    row = {
        "symbol": symbol,
        "ts": ts,
        "type": kind,
        "cross_seq": None if cross_seq is None else _int(cross_seq, "cs"),
        **values,
        "next_funding_time": next_funding,
        "received_at": received_at,
    }
    return Parsed("ticker", symbol, [row])


# --- REST pages ---------------------------------------------------------------------------


def _rest_result(page: Mapping[str, Any]) -> Mapping[str, Any]:
    code = _get(page, "retCode", "")
    if code != 0:
        raise BybitParseError("retCode", f"{code}: {page.get('retMsg', '')}")
    result = _get(page, "result", "")
    if not isinstance(result, Mapping):
        raise BybitParseError("result", "expected an object")
    return result


def parse_rest_klines(
    page: Mapping[str, Any], *, symbol: str, interval: str, received_at: int
) -> Parsed:
    """A `/v5/market/kline` page (newest first) -> klines rows, oldest first.

    A candle is confirmed when it closed before the page's server `time`; the still-open
    newest candle is kept as an unconfirmed update, exactly as the WebSocket would report it.
    """
    result = _rest_result(page)
    if result.get("symbol", symbol) != symbol:
        raise BybitParseError("result.symbol", f"{result['symbol']!r} != requested {symbol!r}")
    server_time = _ms(page.get("time", received_at), "time")
    length = None
    rows = []
    for i, item in enumerate(reversed(_list(_get(result, "list", "result."), "result.list"))):
        path = f"result.list[{i}]"
        if not isinstance(item, list) or len(item) < 7:
            raise BybitParseError(
                path, f"expected [start, open, high, low, close, volume, turnover], got {item!r}"
            )
        start = _ms(item[0], f"{path}[0]")
        length = interval_ms(interval, start)
        candle = dict(
            zip(("open", "high", "low", "close", "volume", "turnover"), item[1:7], strict=True)
        )
        confirm = start + length <= server_time
        rows.append(
            candle_row(
                candle,
                symbol=symbol,
                interval=interval,
                start=start,
                confirm=confirm,
                update_ts=start + length if confirm else server_time,
                received_at=received_at,
                path=f"{path}.",
            )
        )
    starts = [r["start"] for r in rows]
    if len(set(starts)) != len(starts):
        raise BybitParseError("result.list", "duplicate candle start times")
    return Parsed("klines", symbol, rows)


def parse_rest_funding(page: Mapping[str, Any], *, symbol: str, received_at: int) -> Parsed:
    """A `/v5/market/funding/history` page -> funding rows (settled rates), oldest first."""
    result = _rest_result(page)
    rows = []
    for i, item in enumerate(reversed(_list(_get(result, "list", "result."), "result.list"))):
        path = f"result.list[{i}]."
        if _get(item, "symbol", path) != symbol:
            raise BybitParseError(f"{path}symbol", f"{item['symbol']!r} != requested {symbol!r}")
        rows.append(
            {
                "symbol": symbol,
                "ts": _ms(_get(item, "fundingRateTimestamp", path), f"{path}fundingRateTimestamp"),
                "funding_rate": _num(_get(item, "fundingRate", path), f"{path}fundingRate"),
                "next_funding_time": None,
                "source": "rest",
                "received_at": received_at,
            }
        )
    return Parsed("funding", symbol, rows)
