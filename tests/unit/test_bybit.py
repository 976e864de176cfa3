"""Bybit v5 parsing on real messages (tardis-node fixtures, ../shared/data/sources/03_*) and on
Bybit's documented examples (../shared/data/sources/04_*). Expected values are read off the
messages themselves."""

from __future__ import annotations

import copy
import json

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featlib.bybit import (
    BybitParseError,
    parse_message,
    parse_rest_funding,
    parse_rest_klines,
)
from featlib.capture import read_lines
from featlib.schema import RAW_SCHEMAS
from tests.conftest import CAPTURE_2023, shared

RECEIVED = 1_700_000_000_000


def _lines(relative: str) -> list[dict]:
    return [json.loads(line) for line in shared(relative).read_text().splitlines() if line]


def _doc(name: str) -> list[dict]:
    examples = json.loads(
        shared(f"sources/04_bybit_v5_rest_ws_docs_examples/{name}.json").read_text()
    )
    out = []
    for example in examples["examples"]:
        data = example.get("data", example) if "_note" in example else example
        out += data if isinstance(data, list) else [data]
    return out


V5 = "sources/03_bybit_v5_ws_messages_tardis_node/bybit_v5_linear_inverse_messages.jsonl"
SPOT = "sources/03_bybit_v5_ws_messages_tardis_node/bybit_v5_spot_messages.jsonl"


def test_real_public_trades():
    msg = _lines(V5)[0]
    parsed = parse_message(msg, received_at=RECEIVED)
    assert parsed.kind == "trades" and parsed.symbol == "BTCUSD"
    first = parsed.rows[0]
    assert first["ts"] == 1680673823564
    assert first["side"] == "Buy" and first["size"] == 5823.0 and first["price"] == 28560.5
    assert first["trade_id"] == "0cbf2330-952d-5d03-a462-4bf826c867af"
    assert first["tick_direction"] == "PlusTick" and first["block_trade"] is False
    assert first["received_at"] == RECEIVED
    assert len(parsed.rows) == len(msg["data"])
    assert parsed.table().num_rows == len(msg["data"])


def test_real_orderbook_snapshot_and_delta():
    snapshot, delta = (parse_message(m, received_at=RECEIVED) for m in _lines(V5)[2:4])
    assert snapshot.kind == "orderbook_snapshots" and delta.kind == "orderbook_deltas"
    row = snapshot.rows[0]
    assert (row["depth"], row["update_id"], row["seq"]) == (1, 7003305, 50193540681)
    assert row["bid_price"] == [28552.0] and row["bid_size"] == [0.047]
    assert row["ask_price"] == [28552.1] and row["ask_size"] == [25.433]
    assert delta.rows[0]["ask_price"] == [] and delta.rows[0]["update_id"] == 7003306


def test_real_spot_delta_with_deletions():
    delta = parse_message(_lines(SPOT)[-1], received_at=RECEIVED)
    row = delta.rows[0]
    assert row["depth"] == 50 and row["bid_price"] == [28161.04, 28145.71]
    assert row["bid_size"] == [0.177474, 0.0]  # size "0" = delete this level
    assert row["ask_size"] == [0.0]


def test_real_ticker_snapshot_and_delta():
    lines = _lines(V5)
    snap = next(m for m in lines if m["topic"] == "tickers.BTCUSDT")
    row = parse_message(snap, received_at=RECEIVED).rows[0]
    assert row["type"] == "snapshot" and row["cross_seq"] == 50193544280
    assert row["funding_rate"] == 0.0001 and row["next_funding_time"] == 1680681600000
    assert row["mark_price"] == 28552.81 and row["index_price"] == 28562.25
    delta = next(m for m in lines if m["topic"] == "tickers.BTCUSD" and m["type"] == "delta")
    drow = parse_message(delta, received_at=RECEIVED).rows[0]
    assert drow["type"] == "delta" and drow["funding_rate"] == 0.0001
    assert drow["mark_price"] is None  # absent in a delta: null, not zero


def test_unsupported_topics_are_typed_errors():
    liquidation = next(m for m in _lines(V5) if m["topic"].startswith("liquidation."))
    with pytest.raises(BybitParseError) as err:
        parse_message(liquidation, received_at=RECEIVED)
    assert err.value.field == "topic"


def test_documented_ws_kline_unconfirmed():
    msg = _doc("websocket__public__kline")[0]
    row = parse_message(msg, received_at=RECEIVED).rows[0]
    # an unconfirmed candle is known at its update time, not at its close
    assert row["confirm"] is False and row["ts"] == 1672324988882
    assert row["start"] == 1672324800000 and row["interval"] == "5"
    assert (row["open"], row["close"], row["high"], row["low"]) == (16649.5, 16677, 16677, 16608)
    assert row["volume"] == 2.081 and row["turnover"] == 34666.4005


def test_documented_ws_ticker_trade_book():
    ticker = parse_message(_doc("websocket__public__ticker")[0], received_at=RECEIVED).rows[0]
    assert ticker["funding_rate"] == -0.005 and ticker["next_funding_time"] == 1760342400000
    assert ticker["last_price"] == 66666.6 and ticker["open_interest"] == 492373.72
    trade = parse_message(_doc("websocket__public__trade")[0], received_at=RECEIVED).rows[0]
    assert trade["seq"] == 1783284617 and trade["price"] == 16578.5
    snap, delta = (
        parse_message(m, received_at=RECEIVED) for m in _doc("websocket__public__orderbook")
    )
    assert snap.rows[0]["cts"] == 1672304484976 and snap.rows[0]["ask_price"] == [16611.0, 16612.0]
    assert delta.rows[0]["bid_size"][-1] == 0.0 and delta.rows[0]["update_id"] == 177400507


def test_documented_rest_kline_page_is_reordered_oldest_first():
    page = _doc("market__kline")[0]
    parsed = parse_rest_klines(page, symbol="BTCUSD", interval="60", received_at=RECEIVED)
    starts = [r["start"] for r in parsed.rows]
    assert starts == [1670601600000, 1670605200000, 1670608800000]
    last = parsed.rows[-1]
    assert last["ts"] == 1670608800000 + 3_600_000 and last["confirm"] is True
    assert (last["open"], last["high"], last["low"], last["close"]) == (
        17071,
        17073,
        17027,
        17055.5,
    )
    assert (last["volume"], last["turnover"]) == (268611, 15.74462667)


def test_rest_kline_page_marks_the_open_candle_unconfirmed():
    page = copy.deepcopy(_doc("market__kline")[0])
    page["time"] = 1670608800000 + 1_000  # server time inside the newest candle
    rows = parse_rest_klines(page, symbol="BTCUSD", interval="60", received_at=RECEIVED).rows
    assert [r["confirm"] for r in rows] == [True, True, False]


def test_documented_rest_funding_history():
    page = _doc("market__history-fund-rate")[0]
    row = parse_rest_funding(page, symbol="ETHPERP", received_at=RECEIVED).rows[0]
    assert row["ts"] == 1672041600000 and row["funding_rate"] == 0.0001 and row["source"] == "rest"


def test_rest_error_code_is_reported():
    with pytest.raises(BybitParseError, match="10001"):
        parse_rest_klines(
            {"retCode": 10001, "retMsg": "params error", "result": {}},
            symbol="BTCUSDT",
            interval="1",
            received_at=RECEIVED,
        )


def test_envelope_supplies_received_at_and_confirmed_kline_time():
    line = next(line for line in read_lines(shared(CAPTURE_2023)) if b'"confirm":true' in line)
    envelope = orjson.loads(line)
    parsed = parse_message(line)  # bytes, envelope: no receive time needed
    row = parsed.rows[0]
    assert row["received_at"] == envelope["received_at"]
    candle = envelope["payload"]["data"][0]
    assert row["ts"] == candle["end"] + 1 == candle["start"] + 60_000  # known at the close


def test_control_messages_are_not_market_data():
    assert parse_message({"success": True, "ret_msg": "", "op": "subscribe"}) is None
    assert parse_message({"op": "pong", "args": ["1"]}) is None


BAD = [
    (
        {
            "topic": "orderbook.50.BTCUSDT",
            "type": "delta",
            "ts": 1,
            "data": {"s": "BTCUSDT", "b": [], "a": []},
        },
        "data.u",
    ),
    (
        {
            "topic": "orderbook.50.BTCUSDT",
            "type": "delta",
            "ts": 1672304484978,
            "data": {"s": "BTCUSDT", "b": [["abc", "1"]], "a": [], "u": 5},
        },
        "data.b[0][0]",
    ),
    (
        {
            "topic": "orderbook.50.BTCUSDT",
            "type": "delta",
            "ts": 1672304484978,
            "data": {"s": "BTCUSDT", "b": [["1.0", "-1"]], "a": [], "u": 5},
        },
        "data.b[0][1]",
    ),
    (
        {
            "topic": "orderbook.7.BTCUSDT",
            "type": "delta",
            "ts": 1672304484978,
            "data": {"s": "BTCUSDT", "b": [], "a": [], "u": 5},
        },
        "topic",
    ),
    (
        {
            "topic": "orderbook.50.BTCUSDT",
            "type": "full",
            "ts": 1672304484978,
            "data": {"s": "BTCUSDT", "b": [], "a": [], "u": 5},
        },
        "type",
    ),
    (
        {
            "topic": "publicTrade.BTCUSDT",
            "ts": 1672304486868,
            "data": [{"T": 1672304486865, "s": "BTCUSDT", "S": "Up", "v": "1", "p": "2", "i": "x"}],
        },
        "data[0].S",
    ),
    (
        {
            "topic": "publicTrade.BTCUSDT",
            "ts": 1672304486868,
            "data": [
                {"T": 1672304486865, "s": "BTCUSDT", "S": "Buy", "v": "1", "p": "NaN", "i": "x"}
            ],
        },
        "data[0].p",
    ),
    (
        {
            "topic": "publicTrade.BTCUSDT",
            "ts": 1672304486868,
            "data": [{"T": "soon", "s": "BTCUSDT", "S": "Buy", "v": "1", "p": "2", "i": "x"}],
        },
        "data[0].T",
    ),
    (
        {
            "topic": "kline.1.BTCUSDT",
            "ts": 1672324988882,
            "data": [
                {
                    "start": 1672324800000,
                    "end": 1672324859999,
                    "interval": "1",
                    "open": "2",
                    "close": "2",
                    "high": "1",
                    "low": "1",
                    "volume": "1",
                    "turnover": "1",
                    "confirm": True,
                    "timestamp": 1672324860000,
                }
            ],
        },
        "data[0].high",
    ),
    (
        {
            "topic": "kline.1.BTCUSDT",
            "ts": 1672324988882,
            "data": [
                {
                    "start": 1672324800000,
                    "interval": "1",
                    "open": "2",
                    "close": "2",
                    "high": "2",
                    "low": "1",
                    "volume": "1",
                    "turnover": "1",
                    "confirm": "yes",
                    "timestamp": 1672324860000,
                }
            ],
        },
        "data[0].confirm",
    ),
    (
        {
            "topic": "tickers.BTCUSDT",
            "type": "snapshot",
            "ts": 1680673821770,
            "data": {"symbol": "BTCUSDT", "fundingRate": "x"},
        },
        "data.fundingRate",
    ),
    ({"topic": "funding.BTCUSDT", "data": {}}, "topic"),
    ({"topic": "publicTrade.../../etc", "ts": 1672304486868, "data": []}, "topic"),
    ({"event_type": "trades", "payload": 7}, "payload"),
]


@pytest.mark.parametrize(("message", "field"), BAD, ids=[f for _, f in BAD])
def test_malformed_messages_name_the_field(message, field):
    with pytest.raises(BybitParseError) as err:
        parse_message(message, received_at=RECEIVED)
    assert err.value.field == field
    assert field in str(err.value)


def test_not_json_and_missing_receive_time():
    with pytest.raises(BybitParseError, match="not JSON"):
        parse_message(b'{"topic": "publicTrade.BTC', received_at=RECEIVED)
    with pytest.raises(BybitParseError) as err:
        parse_message(_lines(V5)[0])
    assert err.value.field == "received_at"


# --- fuzzing: whatever the damage, a message parses completely or raises BybitParseError ----

_REAL = (
    _lines(V5)[:11]
    + _lines(SPOT)
    + [orjson.loads(line) for line in list(read_lines(shared(CAPTURE_2023)))[:400:20]]
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj[:3]):
            yield from _paths(value, (*prefix, i))


@st.composite
def damaged(draw):
    message = copy.deepcopy(draw(st.sampled_from(_REAL)))
    how = draw(st.sampled_from(["replace", "delete", "truncate"]))
    if how == "truncate":
        text = orjson.dumps(message)
        return text[: draw(st.integers(0, len(text) - 1))]
    paths = [p for p in _paths(message) if p]
    path = draw(st.sampled_from(paths))
    parent = message
    for key in path[:-1]:
        parent = parent[key]
    if how == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(_json)
    return message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged())
def test_fuzzed_messages_parse_whole_or_raise_typed_error(message):
    try:
        parsed = parse_message(message, received_at=RECEIVED)
    except BybitParseError as exc:
        assert exc.field and exc.reason
        return
    if parsed is None:
        return
    table = parsed.table()  # a complete row for the canonical schema, or the test fails
    assert table.schema == RAW_SCHEMAS[parsed.kind]
    assert table.num_rows == len(parsed.rows) > 0
    for column in ("ts", "received_at"):
        assert table[column].null_count == 0
    assert isinstance(table, pa.Table)
