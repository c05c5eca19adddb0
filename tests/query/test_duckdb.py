"""What only the DuckDB backend does: its answers to a missing output, a
missing table or missing sketches, and sketches that cannot merge. (Its
answers and argument checks are in ``test_backends.py``, shared with the
BigQuery backend.)"""
import pytest

import oracle
from query_scenario import T0, M, H, sketch_rows, slice_rows, write_parquet
from topk import query
from topk.storage import layout as output_layout

ARGS = (T0, T0 + H)


def events(*rows):
    """rows: (event_type, ts_ms, item_id, weight) -> ``oracle.Event``s."""
    return [oracle.Event(f"e{i}", item, etype, ts, None, weight)
            for i, (etype, ts, item, weight) in enumerate(rows)]


def test_missing_output_and_slices(tmp_path):
    with pytest.raises(query.QueryError, match="does not exist"):
        query.topk(str(tmp_path / "nope"), 5, *ARGS)
    with pytest.raises(query.QueryError, match="has no slices table"):
        query.topk(str(tmp_path), 5, *ARGS)


def test_missing_sketches(tmp_path):
    out = str(tmp_path)
    with pytest.raises(query.QueryError, match="does not exist"):
        query.topk_approx(out + "/nope", 5, *ARGS, "cms")
    with pytest.raises(query.QueryError, match=(
            "has no cms sketches: run `topk batch --method cms`")):
        query.topk_approx(out, 5, *ARGS, "cms")
    rows = events(("play", T0, "a", 3), ("click", T0 + M, "b", 1))
    write_parquet(out, output_layout.SLICES, "part-batch",
                  slice_rows(rows, "batch", 0))
    write_parquet(out, output_layout.SKETCHES, "part-batch-frequent_items",
                  sketch_rows(rows, "frequent_items", "batch", 0))
    with pytest.raises(query.QueryError, match="has no cms sketches"):
        query.topk_approx(out, 5, *ARGS, "cms")
    # The slices of a range without sketches: no rows, not an error.
    assert query.topk_approx(out, 5, T0 + 5 * H, T0 + 6 * H,
                             "frequent_items", "play") == []
    with pytest.raises(query.QueryError, match=(
            "unknown event type 'view'; known: click, play")):
        query.topk_approx(out, 5, *ARGS, "frequent_items", "view")


def test_sketches_of_different_budgets_do_not_merge(tmp_path):
    out = str(tmp_path)
    write_parquet(out, output_layout.SKETCHES, "part-stream-cms", sketch_rows(
        events(("play", T0, "a", 3)), "cms", "stream", 0, budget=2048))
    write_parquet(out, output_layout.SKETCHES, "part-batch-cms", sketch_rows(
        events(("play", T0 + M, "a", 3)), "cms", "batch", 0))
    with pytest.raises(query.QueryError, match="cannot merge the cms "
                       "sketches"):
        query.topk_approx(out, 5, T0, T0 + 2 * M, "cms")
