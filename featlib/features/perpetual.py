"""Perpetual-swap features from funding events (REST funding history, `funding` messages and
the fundingRate / nextFundingTime carried by tickers), evaluated at each grid time."""

from __future__ import annotations

import ibis
import ibis.expr.types as ir

from featlib.features.base import feature, latest

KNOWN_FOR_MS = 9 * 3_600_000  # one 8 h settlement period + 1 h


@feature(source="funding", lookback="9h", warmup="0s")
def funding_rate(f: ir.Table) -> ir.Table:
    """Latest funding rate published in the last 9 h (one 8 h settlement + 1 h); fraction/8h."""
    return f.mutate(funding_rate=latest(f, "rate", KNOWN_FOR_MS))


@feature(source="funding", lookback="9h", warmup="0s")
def time_to_funding(f: ir.Table) -> ir.Table:
    """Seconds from t to the next funding settlement last announced within 9 h; 0–28800 s."""
    nxt = latest(f, "next_funding_time", KNOWN_FOR_MS)
    value = ibis.ifelse(nxt > f.ts, (nxt - f.ts) / 1000.0, ibis.null())
    return f.mutate(time_to_funding=value)
