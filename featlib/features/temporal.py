"""Time-of-day features: the grid time itself, no market data."""

from __future__ import annotations

import math

import ibis.expr.types as ir

from featlib.features.base import feature

DAY_MS = 86_400_000


def _phase(g: ir.Table) -> ir.Value:
    return (g.ts % DAY_MS).cast("float64") / DAY_MS * (2 * math.pi)


@feature(source="clock", lookback="0s")
def time_of_day_sin(g: ir.Table) -> ir.Table:
    """sin(2π · seconds since 00:00 UTC / 86400); −1..1."""
    return g.mutate(time_of_day_sin=_phase(g).sin())


@feature(source="clock", lookback="0s")
def time_of_day_cos(g: ir.Table) -> ir.Table:
    """cos(2π · seconds since 00:00 UTC / 86400); −1..1."""
    return g.mutate(time_of_day_cos=_phase(g).cos())
