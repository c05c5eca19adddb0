"""The DuckDB query layer over a hand-written slices table (no Beam)."""
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from topk.core import counting, schema
from topk.storage import layout as output_layout
from topk import query
from topk.core.windows import parse_time

T0 = parse_time("2024-05-01T00:00:00Z")


def write_slices(output, rows, source="batch"):
    """rows: (event_type, ts_ms, item_id, count) -> slices table 1m/1h/1d."""
    counts = counting.merge_counts([pa.table({
        "event_type": [r[0] for r in rows],
        "slice_start": [r[1] - r[1] % schema.MINUTE_MS for r in rows],
        "item_id": [r[2] for r in rows],
        "count": [r[3] for r in rows]}, schema=schema.SLICE_COUNTS_SCHEMA)])
    for name, ms in (("1m", schema.MINUTE_MS), ("1h", schema.HOUR_MS),
                     ("1d", schema.DAY_MS)):
        table = counting.to_slices_table(counting.rollup(counts, ms), name,
                                         source, 0)
        for partition, part in output_layout.slices_partitions(table):
            path = output_layout.partition_path(
                output, "slices", partition, f"part-{source}.parquet")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            pq.write_table(part, path)


@pytest.fixture
def output(tmp_path):
    m, h, d = schema.MINUTE_MS, schema.HOUR_MS, schema.DAY_MS
    write_slices(str(tmp_path), [
        ("play", T0 + 10 * m, "a", 5),
        ("play", T0 + 10 * m, "b", 5),
        ("click", T0 + 11 * m, "c", 7),
        ("play", T0 + 2 * h, "a", 1),
        ("play", T0 + d + 3 * h + 7 * m, "b", 4),
        ("click", T0 + 3 * d, "z", 100),
    ])
    return str(tmp_path)


def ranked(rows):
    return [(r.rank, r.item_id, r.count) for r in rows]


def test_ranges_of_every_shape(output):
    assert ranked(query.topk(output, 10, "2024-05-01T00:00:00Z",
                             "2024-05-01T00:11:00Z")) == [
        (1, "a", 5), (2, "b", 5)]
    assert ranked(query.topk(output, 10, "2024-05-01T00:10:00Z",
                             "2024-05-02T03:08:00Z")) == [
        (1, "b", 9), (2, "c", 7), (3, "a", 6)]
    assert ranked(query.topk(output, 1, "2024-05-01T00:10:00Z",
                             "2024-05-02T03:08:00Z", "play")) == [(1, "b", 9)]
    assert ranked(query.topk(output, 2, "2024-05-01T00:00:00Z",
                             "2024-05-31T00:00:00Z")) == [
        (1, "z", 100), (2, "b", 9)]
    assert query.topk(output, 3, "2024-05-10T00:00:00Z",
                      "2024-05-10T01:00:00Z") == []


def test_batch_rows_supersede_stream_rows(tmp_path):
    write_slices(str(tmp_path), [("play", T0, "a", 3), ("play", T0, "b", 1)],
                 source="stream")
    write_slices(str(tmp_path), [("play", T0, "a", 2)], source="batch")
    assert ranked(query.topk(str(tmp_path), 5, "2024-05-01T00:00:00Z",
                             "2024-05-01T00:01:00Z")) == [(1, "a", 2)]


@pytest.mark.parametrize("k, start, end, etype, message", [
    (0, "2024-05-01T00:00:00Z", "2024-05-01T01:00:00Z", None, "k must be a positive"),
    (5, "2024-05-01T01:00:00Z", "2024-05-01T00:00:00Z", None, "end must be after start"),
    (5, "2024-05-01T00:00:30Z", "2024-05-01T01:00:00Z", None, "whole minutes"),
    (5, "2024-05-01T00:00:00Z", "2024-06-01T00:00:00Z", None, "longer than 30 days"),
    (5, "noon", "2024-05-01T01:00:00Z", None, "RFC 3339"),
    (5, "2024-05-01T00:00:00Z", "2024-05-01T01:00:00Z", "view", "unknown event type 'view'; known: click, play"),
])
def test_bad_arguments(output, k, start, end, etype, message):
    with pytest.raises(query.QueryError, match=message):
        query.topk(output, k, start, end, etype)


def test_missing_output(tmp_path):
    with pytest.raises(query.QueryError, match="does not exist"):
        query.topk(str(tmp_path / "nope"), 5, "2024-05-01T00:00:00Z",
                   "2024-05-01T01:00:00Z")
    with pytest.raises(query.QueryError, match="has no slices table"):
        query.topk(str(tmp_path), 5, "2024-05-01T00:00:00Z",
                   "2024-05-01T01:00:00Z")
