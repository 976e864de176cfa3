"""live == batch as a property: any stretch of the real January 2022 candles, fed to the live
engine one message at a time with vectors taken at arbitrary moments, quiet streams released
by the wall clock and sources computed ahead of their ticks at other moments, gives the values
the dataset builder computes over the same stored rows."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featlib import checks, compute, registry
from featlib.bybit import parse_message
from featlib.capture import ingest, read_lines
from featlib.live import LiveEngine
from tests.conftest import KLINES_31D, shared
from tests.live_harness import batch_features

_LINES = list(read_lines(shared(KLINES_31D)))


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    start=st.integers(0, len(_LINES) - 400),
    length=st.integers(30, 400),
    every=st.integers(1, 120),
    ahead=st.integers(0, 30),
    version=st.sampled_from(["1.2.0", "1.3.0", "1.0.0"]),
)
def test_live_equals_batch_on_any_stretch_of_january(
    tmp_path_factory, start, length, every, ahead, version
):
    lines = _LINES[start : start + length]
    data_dir = tmp_path_factory.mktemp("stretch")
    assert ingest(data_dir, iter(lines), source="stretch").rejected == 0
    plan = compute.plan(registry.load(version).names)
    engine = LiveEngine(plan, registry_version=version, cadences_ms=[60_000])
    vectors = []
    for n, line in enumerate(lines):
        wall = n * 2_000.0  # two seconds of wall time per candle: quiet streams time out
        engine.on_message(parse_message(line, received_at=0), wall)
        if n % every == 0:
            engine.release(wall)
            vectors += engine.take_vectors()
        if ahead and n % ahead == 0:
            engine.precompute()
    vectors += engine.flush()
    ticks = [(v.symbol, v.ts) for v in vectors]
    assert len(ticks) == len(set(ticks))  # each tick once
    first = parse_message(lines[0], received_at=0).rows[0]["ts"]
    last = parse_message(lines[-1], received_at=0).rows[0]["ts"]
    assert {t for _, t in ticks} == set(range(first, last + 1, 60_000))  # every minute
    expected = batch_features(plan, data_dir, ticks)
    wrong = [
        (v.ts, name, v.features[name], expected[(v.symbol, v.ts)][name])
        for v in vectors
        for name in plan.names
        if not checks.same(v.features[name], expected[(v.symbol, v.ts)][name])
    ]
    assert not wrong, f"{len(wrong)} differ, e.g. {wrong[:3]}"
