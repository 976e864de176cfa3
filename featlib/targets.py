"""Training targets: what happens to the price after t.

The price known at time x is, with `price="close"`, the close of the latest confirmed 1-minute
candle with close time in (x − 1m, x]; with `price="trade"`, the last trade price of the latest
one-second trade bar ending in (x − 5m, x]. A target at grid time t compares the price at
t + horizon, taken only from a candle or bar that ended strictly after t, with the price at t:
no target reads a future price at or before t, and a row whose future price is missing gets
no target (null).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import duckdb
import ibis
import ibis.expr.types as ir
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from featlib.compute import GRID_SCHEMA
from featlib.features.orderflow import FEED_MS
from featlib.features.price import return_volatility
from featlib.inputs import kline_events, trade_bars
from featlib.timeutil import MINUTE_MS, SECOND_MS, parse_duration

PRICES = {  # price series: (events, price column, how long a price stays current, granularity)
    "close": (kline_events, "close", MINUTE_MS, MINUTE_MS),
    "trade": (trade_bars, "last_price", FEED_MS, SECOND_MS),
}


class TargetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["regression", "classification", "risk_adjusted"] = "regression"
    horizon: str = "5m"
    threshold: float = Field(default=0.001, ge=0, description="flat band for classification")
    price: Literal["close", "trade"] = "close"
    risk_window: int = Field(
        default=60, ge=2, le=1440, description="candles of trailing volatility for risk_adjusted"
    )

    @field_validator("horizon")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @model_validator(mode="after")
    def _horizon(self) -> TargetSpec:
        step = PRICES[self.price][3]
        if self.horizon_ms < step:
            raise ValueError(
                f"horizon {self.horizon} is shorter than one {self.price} price step "
                f"({step // 1000}s): the price at t + horizon could be a price known at t"
            )
        return self

    @property
    def horizon_ms(self) -> int:
        return parse_duration(self.horizon)

    @property
    def columns(self) -> list[str]:
        extra = {
            "classification": ["target_direction"],
            "risk_adjusted": ["target_risk_adjusted"],
        }.get(self.type, [])
        return ["target_return", *extra]


def _trailing_volatility(candles: int) -> ir.Table:
    """Std of the last `candles` one-minute close-to-close returns at each candle (the same
    definition as the volatility features), known at the candle's close."""
    vol = return_volatility(kline_events(), "_vol", candles)
    return vol.select(_s2="symbol", _t2="ts", _vol="_vol")


BARS_TABLE = "events_trades"
"""The trade bars (featlib.inputs.trade_bars) as a table, when computed already: the dataset
builder's trade features' events (featlib.compute materialises them under this name)."""


def _bars() -> ir.Table:
    return ibis.table(trade_bars().schema(), name=BARS_TABLE)


@functools.lru_cache(maxsize=32)
def _sql(
    horizon_ms: int, threshold: float, kind: str, price: str, risk_window: int, bars: bool
) -> str:
    grid = ibis.table(ibis.Schema.from_pyarrow(GRID_SCHEMA), name="grid")
    events, column, validity, _ = PRICES[price]
    k = _bars() if bars else events()
    now = k.select(_s0="symbol", _t0="ts", _p0=column)
    later = k.select(_s1="symbol", _t1="ts", _p1=column)
    g = grid.mutate(_future=grid.ts + horizon_ms)
    j = g.asof_join(now, on=g.ts >= now._t0, predicates=[g.symbol == now._s0])
    j = j.asof_join(later, on=j._future >= later._t1, predicates=[j.symbol == later._s1])
    base_ok = (j.ts - j._t0) < validity
    future_ok = (j._t1 > j.ts) & ((j._future - j._t1) < validity)
    ret = ibis.ifelse(base_ok & future_ok, j._p1 / j._p0 - 1, ibis.null())
    cols = {"target_return": ret}
    if kind == "risk_adjusted":
        vol = _trailing_volatility(risk_window)
        j = j.asof_join(vol, on=j.ts >= vol._t2, predicates=[j.symbol == vol._s2])
        scale = j._vol * math.sqrt(horizon_ms / MINUTE_MS)
        fresh = (j.ts - j._t2) < MINUTE_MS
        cols["target_risk_adjusted"] = ibis.ifelse(fresh & (scale > 0), ret / scale, ibis.null())
    if kind == "classification":
        cols["target_direction"] = ibis.cases(
            (ret > threshold, 1), (ret < -threshold, -1), (ret.notnull(), 0)
        ).cast("int8")
    return ibis.to_sql(
        j.select("symbol", "ts", **cols).order_by(["symbol", "ts"]), dialect="duckdb"
    )


def compute_targets(
    spec: TargetSpec,
    con: duckdb.DuckDBPyConnection,
    grid_table: pa.Table,
    bars: pa.Table | None = None,
) -> pa.Table:
    """Targets at the grid's (symbol, ts) rows from the raw `klines` (or `trades`) on `con`;
    `bars`: for trade prices, the trade bars computed already (not computed again here)."""
    con.register("grid", grid_table.cast(GRID_SCHEMA))
    on_bars = bars is not None and spec.price == "trade"
    if on_bars:
        con.register(BARS_TABLE, bars)
    try:
        sql = _sql(
            spec.horizon_ms, spec.threshold, spec.type, spec.price, spec.risk_window, on_bars
        )
        return con.sql(sql).to_arrow_table()
    finally:
        con.unregister("grid")
        if on_bars:
            con.unregister(BARS_TABLE)
