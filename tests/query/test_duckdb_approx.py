"""``query.topk_approx`` over a hand-written sketches table (no Beam)."""
import collections
import os

import pyarrow.parquet as pq
import pytest

from topk.storage import layout as output_layout
from topk import query
from topk.core import schema
from topk.approx import sketch_windows, sketches
from topk.core.windows import parse_time

T0 = parse_time("2024-05-01T00:00:00Z")
M, H, D = schema.MINUTE_MS, schema.HOUR_MS, schema.DAY_MS


def write_sketches(output, rows, method="cms", source="batch",
                   budget=sketches.DEFAULT_BUDGET_BYTES):
    """rows: (event_type, ts_ms, item_id, count) -> 1m/1h/1d sketches of
    ``method``, per event type and over all types, as the pipeline writes
    them."""
    for length, size in (("1m", M), ("1h", H), ("1d", D)):
        counts = collections.defaultdict(collections.Counter)
        for etype, ts, item, n in rows:
            for t in (etype, schema.ALL_TYPES):
                counts[(t, ts - ts % size)][item] += n
        table = sketch_windows.sketches_table(
            [sketch_windows.sketch_row(
                method, t, start, sketches.new_sketch(method, budget).update(
                    list(c), list(c.values())))
             for (t, start), c in counts.items()], length, source, 0)
        for partition, part in output_layout.sketches_partitions(table):
            path = output_layout.partition_path(
                output, output_layout.SKETCHES, partition,
                output_layout.method_file_name(f"part-{source}", method)
                + ".parquet")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            pq.write_table(part, path)


ROWS = [
    ("play", T0 + 10 * M, "a", 5),
    ("play", T0 + 10 * M, "b", 5),
    ("click", T0 + 11 * M, "c", 7),
    ("play", T0 + 2 * H, "a", 1),
    ("play", T0 + D + 3 * H + 7 * M, "b", 4),
    ("click", T0 + 3 * D, "z", 100),
]


@pytest.fixture(params=sketches.METHODS)
def output(tmp_path, request):
    write_sketches(str(tmp_path), ROWS, method=request.param)
    return str(tmp_path), request.param


def ranked(rows):
    return [(r.rank, r.item_id, r.count, r.lower_bound, r.upper_bound)
            for r in rows]


def test_ranges_of_every_shape_merge_the_right_slices(output):
    out, method = output
    cases = [
        (10, "2024-05-01T00:00:00Z", "2024-05-01T00:11:00Z", None,
         [("a", 5), ("b", 5)]),
        (10, "2024-05-01T00:10:00Z", "2024-05-02T03:08:00Z", None,
         [("b", 9), ("c", 7), ("a", 6)]),
        (1, "2024-05-01T00:10:00Z", "2024-05-02T03:08:00Z", "play",
         [("b", 9)]),
        (2, "2024-05-01T00:00:00Z", "2024-05-31T00:00:00Z", "*",
         [("z", 100), ("b", 9)]),
        (3, "2024-05-10T00:00:00Z", "2024-05-10T01:00:00Z", None, []),
    ]
    for k, start, end, etype, want in cases:
        got = query.topk_approx(out, k, start, end, method, etype)
        # Few items: the sketches are exact, so are the bounds.
        assert ranked(got) == [(i + 1, item, n, n, n)
                               for i, (item, n) in enumerate(want)]
        assert all(r.guaranteed for r in got[:1])


def test_batch_sketches_supersede_stream_sketches(tmp_path):
    write_sketches(str(tmp_path), [("play", T0, "a", 3), ("play", T0, "b", 1)],
                   source="stream")
    write_sketches(str(tmp_path), [("play", T0, "a", 2)], source="batch")
    assert ranked(query.topk_approx(
        str(tmp_path), 5, "2024-05-01T00:00:00Z", "2024-05-01T00:01:00Z",
        "cms")) == [(1, "a", 2, 2, 2)]
    # Slices only the stream wrote still count.
    write_sketches(str(tmp_path), [("play", T0 + M, "b", 4)], source="stream")
    assert ranked(query.topk_approx(
        str(tmp_path), 5, "2024-05-01T00:00:00Z", "2024-05-01T00:02:00Z",
        "cms")) == [(1, "b", 4, 4, 4), (2, "a", 2, 2, 2)]


def test_missing_sketches_and_bad_arguments(tmp_path):
    out = str(tmp_path)
    args = ("2024-05-01T00:00:00Z", "2024-05-01T01:00:00Z")
    with pytest.raises(query.QueryError, match="does not exist"):
        query.topk_approx(out + "/nope", 5, *args, "cms")
    with pytest.raises(query.QueryError, match="has no cms sketches: run "
                       "`topk batch --method cms`"):
        query.topk_approx(out, 5, *args, "cms")
    write_sketches(out, ROWS, method="frequent_items")
    with pytest.raises(query.QueryError, match="has no cms sketches"):
        query.topk_approx(out, 5, *args, "cms")
    with pytest.raises(query.QueryError, match="unknown approximate method "
                       "'exact'"):
        query.topk_approx(out, 5, *args, "exact")
    with pytest.raises(query.QueryError, match="unknown event type 'view'; "
                       "known: click, play"):
        query.topk_approx(out, 5, *args, "frequent_items", "view")
    with pytest.raises(query.QueryError, match="k must be a positive"):
        query.topk_approx(out, 0, *args, "frequent_items")
    with pytest.raises(query.QueryError, match="whole minutes"):
        query.topk_approx(out, 3, "2024-05-01T00:00:30Z", args[1],
                          "frequent_items")


def test_sketches_of_different_budgets_do_not_merge(tmp_path):
    write_sketches(str(tmp_path), [("play", T0, "a", 3)], source="stream",
                   budget=4096)
    write_sketches(str(tmp_path), [("play", T0 + M, "a", 3)], source="batch")
    with pytest.raises(query.QueryError, match="cannot merge the cms "
                       "sketches"):
        query.topk_approx(str(tmp_path), 5, "2024-05-01T00:00:00Z",
                          "2024-05-01T00:02:00Z", "cms")
