"""``StreamTopK`` semantics with ``TestStream`` on Prism: on-time and late
panes, the watermark hold, and events beyond the allowed lateness.

Early panes come from processing-time timers, which a Python DoFn can only
set from the wall clock; Prism 2.77's TestStream clock starts at Go's zero
time (year 1) and moves only by ``advance_processing_time``, so within a
TestStream those timers fire only once the stream is done. Early panes are
therefore tested on a real Kafka stream (tests/pipelines/
test_stream_unbounded.py) and in the Beam-free simulation
(tests/test_stream_panes.py); here the test checks that whatever early panes
appear come before the on-time pane.
"""
import os
import subprocess

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from topk.core import schema
from topk.transforms.coders import ArrowTableCoder
from topk.pipelines.stream import use_prism_safely
from topk.transforms.stream_topk import LATE_EVENTS, StreamTopK
from topk.core.windows import WindowSpec

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
MIN = schema.MINUTE_MS
T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z
HOUR_S = 3600


def prism_or_skip() -> str:
    out = subprocess.run(["bash", os.path.join(REPO, "deploy", "prism",
                                               "prism.sh"), "path"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("Prism is not built (deploy/prism/prism.sh install)")
    return out.stdout.strip()


def events(*rows) -> pa.Table:
    """rows: (event_id, item_id, ts)."""
    return pa.table({
        "event_id": [r[0] for r in rows],
        "item_id": [r[1] for r in rows],
        "event_type": ["play"] * len(rows),
        "ts": pa.array([r[2] for r in rows], pa.int64()),
        "user_id": pa.array([None] * len(rows), pa.string()),
        "weight": pa.array([1] * len(rows), pa.int64()),
    }, schema=schema.EVENT_SCHEMA)


def at(table, ms):
    return TimestampedValue(table, Timestamp(micros=ms * 1000))


def test_on_time_and_late_panes_and_the_watermark_hold_on_prism():
    options = use_prism_safely(PipelineOptions(
        ["--runner=PrismRunner", f"--prism_location={prism_or_skip()}"],
        streaming=True))
    stream = (
        TestStream(coder=ArrowTableCoder())
        .advance_watermark_to(Timestamp(micros=T0 * 1000))
        # Minute 0: a, a, b; one copy of an event (counted once).
        .add_elements([at(events(("1", "a", T0 + 1_000),
                                 ("2", "a", T0 + 2_000),
                                 ("3", "b", T0 + 3_000),
                                 ("3", "b", T0 + 3_000)), T0 + 3_000)])
        .advance_processing_time(HOUR_S)
        # An on-time event just before the watermark passes the end: the
        # watermark is held until it is counted.
        .add_elements([at(events(("4", "b", T0 + 59_999)), T0 + 59_999)])
        .advance_watermark_to(Timestamp(micros=(T0 + MIN + 5_000) * 1000))
        .advance_processing_time(HOUR_S)
        # Late but within the 5-minute lateness: a late pane.
        .add_elements([at(events(("5", "b", T0 + 10_000)), T0 + MIN + 6_000)])
        .advance_processing_time(HOUR_S)
        .advance_watermark_to(Timestamp(micros=(T0 + 20 * MIN) * 1000))
        .advance_processing_time(HOUR_S)
        # Beyond the lateness: not counted, in the late output.
        .add_elements([at(events(("6", "c", T0 + 20_000)), T0 + 20 * MIN)])
        .advance_processing_time(HOUR_S)
        .advance_watermark_to_infinity())

    def check_panes(tables):
        rows = [r for t in tables for r in t.to_pylist()
                if r["window_start"].timestamp() * 1000 == T0
                and r["event_type"] == schema.ALL_TYPES]
        panes = {}
        for r in rows:
            panes.setdefault((r["pane_index"], r["pane_timing"]), []).append(
                (r["item_id"], r["count"], r["window_total"]))
        timings = [t for _, t in sorted(panes)]
        assert timings.count("on_time") == 1, sorted(panes.items())
        on_time = timings.index("on_time")
        assert set(timings[:on_time]) <= {"early"}, sorted(panes.items())
        assert timings[on_time + 1:] == ["late"], timings
        by_timing = {t: sorted(v) for (_, t), v in panes.items()}
        assert by_timing["on_time"] == [("a", 2, 4), ("b", 2, 4)]
        assert by_timing["late"] == [("a", 2, 5), ("b", 3, 5)]

    def check_late(tables):
        late = [r for t in tables for r in t.to_pylist()]
        assert [(r["event_id"], r["item_id"]) for r in late] == [("6", "c")]

    with beam.Pipeline(options=options) as p:
        out = (p | stream | StreamTopK(
            [WindowSpec.parse("1m")], 2, item_shards=2, dedup_shards=1,
            allowed_lateness_ms=5 * MIN, early_firing_s=1))
        assert_that(out["ranked_windows"], check_panes, label="Panes")
        assert_that(out[LATE_EVENTS], check_late, label="Late")
