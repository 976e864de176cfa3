"""The live engine's shortcuts, each against the definition it shortcuts:

- events derived stretch by stretch (t_done, t] equal the events of all rows at once (every
  source's events are local in time: a stretch's events depend on that stretch's rows only);
- a raw row arriving for a stretch already derived has its second derived again, so the ticks
  after it equal batch;
- a restart whose stored data ends mid-second gives the same vectors as batch."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featlib import checks, compute, local, registry
from featlib.bybit import parse_message
from featlib.capture import ingest, read_lines
from featlib.inputs import TABLE_SCHEMAS
from featlib.live import LiveEngine
from tests.conftest import CAPTURE_2023, shared
from tests.live_harness import batch_features

PLAN = compute.plan(registry.load("1.1.0").names)
_LINES = list(read_lines(shared(CAPTURE_2023)))


def _events(part, tables) -> pa.Table:
    frames = {k: local.from_arrow(tables.get(k, TABLE_SCHEMAS[k].empty_table())) for k in tables}
    table = local.to_arrow(part.local_events(frames), part.events_schema)
    return table.sort_by([("symbol", "ascending"), ("ts", "ascending")])


@pytest.mark.parametrize("source", [p.source for p in PLAN.parts if p.events is not None])
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(cuts=st.lists(st.integers(0, 600), min_size=1, max_size=6))
def test_events_of_stretches_equal_events_of_everything(source, cuts, real_captures):
    tables, symbol, first, _ = real_captures["BTCUSDT-2023-04-05"]
    part = next(p for p in PLAN.parts if p.source == source)
    times = list(range(first // 1000 * 1000 + 1000, first + 420_000, 1000))
    tables = checks.with_book(tables, symbol, times)
    kinds = compute.SOURCES[source].raw
    whole = _events(part, {k: tables[k] for k in kinds})
    edges = sorted({first // 1000 * 1000 + c * 1000 for c in cuts})
    pieces = []
    for lo, hi in zip([None, *edges], [*edges, None], strict=True):
        window = checks.window({k: tables[k] for k in kinds}, lo, hi if hi else 1 << 62)
        pieces.append(_events(part, window))
    assert (
        pa.concat_tables(pieces)
        .sort_by([("symbol", "ascending"), ("ts", "ascending")])
        .equals(whole)
    )


def _run(engine, lines, wall_step=0.0, ahead_every=None, sources=None, flush=True):
    """Feed the lines one message at a time, taking vectors as they complete; with
    `ahead_every`, the sources whose inputs are in are computed ahead every that many messages
    (at most `sources` of them a call)."""
    vectors = []
    for n, line in enumerate(lines):
        parsed = parse_message(line, received_at=0)
        if parsed is None:
            continue
        engine.on_message(parsed, n * wall_step)
        vectors += engine.take_vectors()
        if ahead_every and n % ahead_every == 0:
            engine.precompute(sources=sources)
    return vectors + (engine.flush() if flush else [])


def _wrong(vectors, data_dir):
    expected = batch_features(PLAN, data_dir, [(v.symbol, v.ts) for v in vectors])
    return [
        (v.ts, n, v.features[n], expected[(v.symbol, v.ts)][n])
        for v in vectors
        for n in PLAN.names
        if not checks.same(v.features[n], expected[(v.symbol, v.ts)][n])
    ]


def test_a_late_row_has_its_second_derived_again(tmp_path):
    """A trade message held back past its tick: the vectors from the one after its arrival on
    equal batch (the one computed before it could not know it)."""
    lines = list(_LINES[:6000])
    trades = [i for i, line in enumerate(lines) if b"publicTrade" in line]
    late = trades[len(trades) // 2]
    moved = lines.pop(late)
    lines.insert(late + 1500, moved)  # 1,500 messages later: its second was derived already
    ingest(tmp_path, iter(lines))
    engine = LiveEngine(PLAN, registry_version="1.1.0", cadences_ms=[1000])
    before = _run(engine, lines[: late + 1500])
    derived = engine.symbols["BTCUSDT"].events["trades"].done
    assert parse_message(moved, received_at=0).rows[0]["ts"] < derived  # it is late
    after = _run(engine, lines[late + 1500 :])  # the late message first
    assert engine.stats["late_rows_rederived"] >= 1
    assert before and after and not _wrong(after, tmp_path)


def test_a_restart_mid_second_equals_batch(tmp_path):
    """The store ends in the middle of a second (trades and book rows on both sides of the
    cut): the restarted engine derives that second once, from stored and new rows together."""
    cut = 3000
    first_ts = max(
        row["ts"]
        for line in _LINES[:cut]
        if (parsed := parse_message(line, received_at=0)) is not None
        for row in parsed.rows
    )
    assert first_ts % 1000  # mid-second
    ingest(tmp_path, iter(_LINES[:cut]))
    engine = LiveEngine(PLAN, registry_version="1.1.0", cadences_ms=[1000])
    assert engine.warm_up(tmp_path, now_wall_ms=0)["trades"] > 0
    ingest(tmp_path, iter(_LINES[cut:]))  # batch reads the whole store
    vectors = _run(engine, _LINES[cut:6000])
    assert len(vectors) > 30 and np.isfinite([v.features["volume_3s"] or 0 for v in vectors]).all()
    assert not _wrong(vectors, tmp_path)


@pytest.fixture(scope="module")
def stored_6000(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("first6000")
    ingest(data_dir, iter(_LINES[:6000]))
    return data_dir


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(every=st.integers(1, 60), sources=st.sampled_from([None, 1, 2]))
def test_sources_computed_ahead_equal_batch(every, sources, stored_6000):
    """Sources computed ahead of their tick's completion (once their own streams are past it),
    at any rhythm, give the vectors batch gives; the completions compute only what is left."""
    engine = LiveEngine(PLAN, registry_version="1.1.0", cadences_ms=[1000])
    vectors = _run(engine, _LINES[:6000], ahead_every=every, sources=sources)
    assert len(vectors) > 60 and engine.stats["parts_ahead"] > 0
    assert not _wrong(vectors, stored_6000)


def test_a_row_for_a_tick_computed_ahead_drops_it(tmp_path):
    """A trade message delivered after a later one (its stream had moved past its tick, so the
    trade features of that tick were computed ahead): they are computed again at the tick's
    completion, with it, and equal batch."""
    lines = list(_LINES[:6000])
    parsed = [parse_message(line, received_at=0) for line in lines]
    trades = [i for i, p in enumerate(parsed) if p is not None and p.kind == "trades"]
    # a trade message whose follower is in a later second: delivered right after that one
    moves = [
        (i, j)
        for i, j in itertools.pairwise(trades)
        if min(r["ts"] for r in parsed[j].rows)
        > -(-max(r["ts"] for r in parsed[i].rows) // 1000) * 1000
    ]
    engine = LiveEngine(PLAN, registry_version="1.1.0", cadences_ms=[1000])
    for i, j in moves:
        moved = lines[:i] + lines[i + 1 : j + 1] + [lines[i]] + lines[j + 1 :]
        engine = LiveEngine(PLAN, registry_version="1.1.0", cadences_ms=[1000])
        vectors = _run(engine, moved[: j + 1], ahead_every=1, flush=False)
        tick = -(-max(r["ts"] for r in parsed[i].rows) // 1000) * 1000
        state = engine.symbols["BTCUSDT"]
        if tick >= state.next_tick and "trades" in state.parts.get(tick, {}):
            break  # computed ahead and still open when the moved message comes
    else:
        pytest.fail("no trade message in the capture to deliver late")
    ingest(tmp_path, iter(moved))
    vectors += _run(engine, moved[j + 1 :], ahead_every=1)
    assert engine.stats["parts_dropped"] >= 1
    assert any(v.ts == tick for v in vectors) and not _wrong(vectors, tmp_path)
