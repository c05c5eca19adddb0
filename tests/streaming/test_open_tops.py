"""The kept top K of open windows (``topk.streaming.open_tops``) against a
brute-force ranking of every event absorbed so far: batches with ties,
stragglers into older minutes and an event type that appears late."""
import collections
import random

import numpy as np
import pyarrow as pa
import pytest

from topk.core import counting, ranking, schema
from topk.core.windows import WindowSpec
from topk.streaming.open_tops import OpenTops

MIN = schema.MINUTE_MS
T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z


def _partials(rows) -> pa.Table:
    """(type, minute, item, weight) rows -> one-minute partial counts."""
    return counting.count_slices(pa.table({
        "event_type": [r[0] for r in rows],
        "ts": pa.array([T0 + r[1] * MIN + 7 for r in rows], pa.int64()),
        "item_id": [r[2] for r in rows],
        "weight": pa.array([r[3] for r in rows], pa.int64())}))


def _brute(rows, spec, k, start):
    """{(type, item, count)} of the top k and {type: total} of the window
    at ``start``, by summing every row in it (ALL_TYPES as '*')."""
    first, last = (start - T0) // MIN, (start - T0 + spec.length_ms) // MIN
    counts = collections.Counter()
    for event_type, minute, item, weight in rows:
        if first <= minute < last:
            counts[(event_type, item)] += weight
            counts[("*", item)] += weight
    top, totals = set(), collections.Counter()
    for (event_type, _), c in counts.items():
        totals[event_type] += c
    for event_type in totals:
        ranked = sorted(((-c, item) for (t, item), c in counts.items()
                         if t == event_type))
        top |= {(event_type, item, -c) for c, item in ranked[:k]}
    return top, dict(totals)


def _got(top, start):
    cands = {(r["event_type"], r["item_id"], r["count"])
             for r in top.candidates.to_pylist() if r["window_start"] == start}
    totals = {r["event_type"]: r["total"] for r in top.totals.to_pylist()
              if r["window_start"] == start}
    return cands, totals


@pytest.mark.parametrize("spec_text,k,seed", [
    ("5m/1m", 3, 1), ("5m/1m", 1, 2), ("1h", 4, 3), ("10m/1m", 10, 4)])
def test_kept_windows_rank_as_all_their_counts(spec_text, k, seed):
    spec = WindowSpec.parse(spec_text)
    rnd = random.Random(seed)
    rows = []
    level = schema.SLICE_COUNTS_SCHEMA.empty_table()
    tops = OpenTops(spec, k)
    kept_once = False
    for minute in range(12):
        starts = spec.window_starts_for(np.array([T0 + minute * MIN]))
        for _ in range(4):  # four firings a minute
            batch = []
            for _ in range(rnd.randrange(1, 25)):
                m = minute if rnd.random() > 0.1 else max(0, minute - 2)
                event_type = rnd.choice(
                    ["click", "play"] + (["skip"] if minute > 6 else []))
                # Few items and weights of 1-2: many ties.
                batch.append((event_type, m, f"i{rnd.randrange(8)}",
                              rnd.choice([1, 1, 2])))
            rows.extend(batch)
            partials = _partials(batch)
            level = counting.add_counts(level, partials)
            tops.absorb(partials)
            known = np.array([s for s in starts if s in tops.windows],
                             np.int64)
            fresh = np.array([s for s in starts if s not in tops.windows],
                             np.int64)
            if fresh.size:
                tops.keep(ranking.shard_top_k(
                    level, [spec], k, window_starts=fresh)[spec], fresh)
            if known.size:
                kept_once = True
                top = tops.top_k(level, known)
                for start in known.tolist():
                    assert _got(top, start) == _brute(rows, spec, k, start), (
                        minute, start)
        # The minute closes: windows ending by its end go.
        tops.expire(T0 + (minute + 1) * MIN)
        assert all(s + spec.length_ms > T0 + (minute + 1) * MIN
                   for s in tops.windows)
    assert kept_once


def test_a_window_kept_from_no_rows_ranks_what_comes_later():
    spec = WindowSpec.parse("1m")
    tops = OpenTops(spec, 2)
    tops.keep(ranking.WindowTopK.empty(), np.array([T0]))
    assert T0 not in tops.windows  # nothing to keep: ranked again later
    level = _partials([("play", 0, "a", 1), ("play", 0, "b", 3)])
    tops.keep(ranking.shard_top_k(level, [spec], 2,
                                  window_starts=np.array([T0]))[spec],
              np.array([T0]))
    more = _partials([("click", 0, "c", 5), ("play", 0, "a", 4)])
    level = counting.add_counts(level, more)
    tops.absorb(more)
    got = _got(tops.top_k(level, np.array([T0])), T0)
    assert got == ({("play", "a", 5), ("play", "b", 3), ("click", "c", 5),
                    ("*", "a", 5), ("*", "c", 5)},
                   {"play": 8, "click": 5, "*": 13})
