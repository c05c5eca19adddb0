"""Early panes from what the stages keep between firings against the long
way: every exact early pane of a shard, ranked from its windows' kept top K
(``topk.streaming.open_tops``), equals the top K ranked from all its counts,
and every early sketch pane from cached closed parts
(``topk.streaming.closed_parts``) has bounds that hold the true counts of
the events absorbed so far."""
import collections
import random

import hypothesis.strategies as st
import numpy as np
import pyarrow as pa
from hypothesis import given, settings

from topk.approx.sketches import DEFAULT_BUDGET_BYTES
from topk.core import counting, ranking, schema
from topk.core.windows import WindowSpec
from topk.streaming import closed_parts
from topk.streaming.panes import EARLY, ON_TIME, ShardPanes, level_of
from topk.streaming.sketch_panes import SketchPanes

MIN = schema.MINUTE_MS
T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z
SPECS = [WindowSpec.parse("10m/1m"), WindowSpec.parse("1m"),
         WindowSpec.parse("5m")]


def _stream(seed: int, minutes: int, per_minute: int, items: int,
            late_share: float):
    """Batches ``(minute, [(type, minute, item, weight)])`` in time order,
    a few per minute; some rows go to older minutes (stragglers and late
    events), some to a type that appears late."""
    rnd = random.Random(seed)
    for minute in range(minutes):
        for _ in range(3):
            rows = []
            for _ in range(per_minute // 3):
                m = minute
                if rnd.random() < late_share:
                    m = max(0, minute - rnd.randrange(1, 4))
                event_type = rnd.choice(["click", "play"] + (
                    ["skip"] if minute > minutes // 2 else []))
                item = f"item-{int(rnd.paretovariate(1.2)) % items:04d}"
                rows.append((event_type, m, item, rnd.choice([1, 1, 2, 5])))
            yield minute, rows


def _partials(rows) -> pa.Table:
    table = pa.table({
        "event_type": [r[0] for r in rows],
        "ts": pa.array([T0 + r[1] * MIN + 7 for r in rows], pa.int64()),
        "item_id": [r[2] for r in rows],
        "weight": pa.array([r[3] for r in rows], pa.int64())})
    return counting.count_slices(table)


def _key(top: ranking.WindowTopK):
    cands = sorted(tuple(r.values()) for r in top.candidates.to_pylist())
    totals = sorted(tuple(r.values()) for r in top.totals.to_pylist())
    return cands, totals


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.sampled_from([1, 3, 10]),
       items=st.sampled_from([5, 60, 400]),
       late_share=st.sampled_from([0.0, 0.05]))
def test_early_and_on_time_panes_equal_the_top_k_of_all_counts(seed, k, items,
                                                   late_share):
    panes = ShardPanes(SPECS, k, 30 * MIN)
    cached = 0
    now = 0
    timings = collections.Counter()
    for minute, rows in _stream(seed, 25, 90, items, late_share):
        # On-time firing at the minute's start, as the watermark passes,
        # then an early one with the minute's batch.
        for batch, watermark in (([], T0 + minute * MIN),
                                 ([_partials(rows)], None)):
            now += 1000
            firing = panes.fire(batch, now, watermark)
            cached += any(t.windows for t in panes._open.values())
            for spec, timing, top in firing.windows:
                timings[timing] += 1
                starts = np.unique(np.concatenate([
                    top.totals["window_start"].to_numpy(),
                    top.candidates["window_start"].to_numpy()]))
                expected = ranking.shard_top_k(
                    panes.level_counts(level_of(spec)), [spec], k,
                    window_starts=starts)[spec]
                assert _key(top) == _key(expected), (spec.key, minute,
                                                     timing)
    assert cached > 10  # the kept path ran, not only the long way
    assert timings[EARLY] and timings[ON_TIME]


def test_a_cut_needs_the_watermark_near_the_newest_pane():
    now = 100 * MIN + 5
    assert closed_parts.cut_at(100, 99 * MIN, MIN, now) == 99
    assert closed_parts.cut_at(100, 101 * MIN, MIN, now) == 100
    assert closed_parts.cut_at(100, 50 * MIN, MIN, now) is None  # catch-up
    # Data far behind the wall clock: a backlog, however close the
    # watermark.
    assert closed_parts.cut_at(100, 99 * MIN, MIN, now + 60 * MIN) is None
    assert closed_parts.stale(98, 100) and not closed_parts.stale(99, 100)


def test_early_sketch_panes_bound_the_counts_absorbed_so_far():
    spec = WindowSpec.parse("10m/1m")
    panes = SketchPanes([spec], 5, ["cms"], 4096, 30 * MIN)
    absorbed = []
    now, checked = 0, 0
    for minute, rows in _stream(5, 20, 300, 300, 0.02):
        now += 1000
        panes.fire([], now, T0 + minute * MIN)
        now += 1000
        firing = panes.fire([_partials(rows)], now)
        absorbed.extend(rows)
        for r in firing.ranked.to_pylist():
            if r["pane_timing"] != EARLY:
                continue
            start = (int(r["window_start"].timestamp() * 1000) - T0) // MIN
            true = collections.Counter()
            for event_type, m, item, weight in absorbed:
                if start <= m < start + 10 and r["event_type"] in (
                        "*", event_type):
                    true[item] += weight
            assert r["window_total"] == sum(true.values())
            assert r["lower_bound"] <= true[r["item_id"]] <= r["upper_bound"]
            checked += 1
    assert panes._closed and checked > 1000
