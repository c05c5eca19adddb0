"""``topk stream --method cms,frequent_items`` unbounded on Prism against a
real broker: the approximate fast path.

The approximate path keeps no per-event state, so it counts the records as
delivered (duplicates included): its bounds must hold the counts of every
valid record."""
import collections
import os
import signal
import sys
import time

import pytest

import oracle
from topk import query
from topk.pipelines.stream import prism_binary
from topk.storage import tables as output_tables

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_stream_unbounded import (K, MIN, SPECS,  # noqa: E402
                                   check_input_watermarks,
                                   stream_first_phase)

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    not prism_binary(), reason="Prism is not built (deploy/prism/prism.sh "
    "install)")]

METHODS = ("cms", "frequent_items")
#: Small enough that sketches of 30 items x 2 types must bound, not know.
BUDGET = 1024


def latest_approximate(output):
    """(method, spec, event type, window start ms) -> rows of the window's
    latest pane."""
    if output_tables.dataset(output, "ranked_windows") is None:
        return {}  # nothing committed yet
    con = output_tables.connect(output, ["ranked_windows"])
    rows = con.sql("""
        SELECT method, window_spec, event_type, epoch_ms(window_start),
               item_id, count, lower_bound, upper_bound, guaranteed, rank,
               window_total
        FROM ranked_windows WHERE method <> 'exact'
        QUALIFY emitted_at = max(emitted_at) OVER (
          PARTITION BY method, window_spec, event_type, window_start)
        """).fetchall()
    out = collections.defaultdict(list)
    for r in rows:
        out[r[:4]].append(r[4:])
    return out


def closed_minutes_through(output) -> dict:
    """method -> the newest minute with a sketch in the sketches table."""
    if output_tables.dataset(output, "sketches") is None:
        return {}
    con = output_tables.connect(output, ["sketches"])
    return dict(con.sql("""
        SELECT method, epoch_ms(max(slice_start)) FROM sketches
        WHERE slice_length = '1m' GROUP BY method""").fetchall())


def true_counts(records, length_ms, event_type, start):
    counts = collections.Counter()
    for e in records:
        if start <= e.ts < start + length_ms and event_type in (
                "*", e.event_type):
            counts[e.item_id] += e.weight
    return counts


def test_approximate_panes_bound_every_window(
        kafka_broker, tmp_path):
    # Exact and approximate in one job: the exact panes equal the oracle
    # (waited for), the approximate ones bound the truth.
    topic, valid, _, output, stream = stream_first_phase(
        kafka_broker.bootstrap, tmp_path, 6,
        extra=("--method", ",".join(("exact",) + METHODS),
               "--sketch-budget-bytes", str(BUDGET)))
    try:
        # The approximate panes of every window the oracle knows.
        lengths = {spec: length for spec, length, _ in SPECS}
        expected = {(m, spec, et, w) for m in METHODS for spec, length, slide
                    in SPECS for (et, w, *_) in oracle.ranked_windows(
                        oracle.dedup(valid), length, slide, K)}
        deadline = time.time() + 150
        latest = {}
        while time.time() < deadline:
            latest = latest_approximate(output)
            if expected <= set(latest):
                break
            time.sleep(2)
        assert expected <= set(latest), sorted(expected - set(latest))[:3]
        for (method, spec, et, start), rows in latest.items():
            truth = true_counts(valid, lengths[spec], et, start)
            for item, count, lower, upper, guaranteed, rank, total in rows:
                assert lower <= truth[item] <= upper, (method, spec, item)
                assert total == sum(truth.values())
            assert sorted(r[5] for r in rows) == list(range(1, len(rows) + 1))
        # Closed minutes' sketches are in the sketches table (written once
        # the watermark passes a minute's end, which may come after every
        # window's early pane): an approximate range query bounds the
        # records of the range.
        first = min(e.ts for e in valid) // MIN * MIN
        a, b = first + 5 * MIN, first + 20 * MIN
        closed = {}
        while time.time() < deadline:
            closed = closed_minutes_through(output)
            if all(closed.get(m, 0) >= b - MIN for m in METHODS):
                break
            time.sleep(2)
        assert all(closed.get(m, 0) >= b - MIN for m in METHODS), closed
        for method in METHODS:
            got = query.topk_approx(output, 5, a, b, method)
            truth = collections.Counter()
            for e in valid:
                if a <= e.ts < b:
                    truth[e.item_id] += e.weight
            assert got
            for row in got:
                assert row.lower_bound <= truth[row.item_id] <= \
                    row.upper_bound, (method, row)
    finally:
        stream.kill(signal.SIGTERM)
    check_input_watermarks(output_tables.connect(output, ["ranked_windows"]))
