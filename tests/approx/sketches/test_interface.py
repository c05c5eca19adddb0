"""The common interface, the guaranteed flag and the Beam combiners."""
import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings, strategies as st

from topk.core import ranking, schema
from topk.approx import sketches
from topk.approx.sketches.common import guaranteed_flags
from topk.transforms.approximate import ApproximateTopKFn, MergeSketchesFn
from topk.core.windows import WindowSpec


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=12),
       st.lists(st.integers(0, 10), min_size=12, max_size=12),
       st.integers(0, 15), st.integers(1, 6))
def test_flag_matches_brute_force(lowers, widths, unseen, k):
    lo = np.array(lowers)
    hi = lo + np.array(widths[:len(lo)])
    flags = guaranteed_flags(lo, hi, hi, unseen, k)
    for i in range(len(lo)):
        # Brute force: certain iff fewer than k others could reach lo[i].
        others = [hi[j] for j in range(len(lo)) if j != i] + [unseen] * k
        assert flags[i] == (sum(u >= lo[i] for u in others) <= k - 1)


@pytest.mark.parametrize("method", sketches.METHODS)
def test_protocol_and_dispatch(method):
    s = sketches.new_sketch(method, 8192)
    assert isinstance(s, sketches.ApproxTopK) and s.method == method
    s.update(pa.array(["a", "b", "a"]), np.array([1, 2, 3]))
    back = sketches.sketch_from_bytes(s.to_bytes())
    assert type(back) is type(s) and back.total == 6
    merged = sketches.merge_all([s.to_bytes(), s, back])
    assert merged.total == 18 and s.total == 6
    assert merged.top_k(1).to_pylist()[0]["item_id"] == "a"
    assert merged.top_k(1).schema == sketches.TOPK_SCHEMA
    assert sketches.merge_all([]) is None
    rows = sketches.ranked_rows(merged, 2, "play", 0)
    out = ranking.to_ranked_windows(
        rows, WindowSpec.parse("1h"), method=method, emitted_at_ms=0,
        lower=rows["lower_bound"], upper=rows["upper_bound"])
    assert out.schema == schema.RANKED_WINDOWS_SCHEMA
    assert out["method"].to_pylist() == [method] * 2
    assert out["window_total"].to_pylist() == [18, 18]


def test_unknown_method_and_bytes():
    with pytest.raises(ValueError):
        sketches.new_sketch("exact")
    with pytest.raises(ValueError):
        sketches.sketch_from_bytes(b"nope")
    with pytest.raises(ValueError):
        sketches.new_sketch("cms").merge(sketches.new_sketch("frequent_items"))
    with pytest.raises(ValueError):
        ApproximateTopKFn("cms", budget_bytes=10)


def _slice_counts(items, counts):
    n = len(items)
    return pa.table({
        "event_type": ["play"] * n, "slice_start": [0] * n,
        "item_id": items, "count": counts}, schema=schema.SLICE_COUNTS_SCHEMA)


@pytest.mark.parametrize("method", sketches.METHODS)
def test_combine_fns_on_the_local_runner(pipeline, method):
    tables = [_slice_counts(["a", "b"], [5, 1]),
              _slice_counts(["a", "c"], [2, 7]),
              _slice_counts(["c"], [1])]

    def top(sketch):
        return [(r["item_id"], r["lower_bound"] <= r["count"] <=
                 r["upper_bound"]) for r in sketch.top_k(2).to_pylist()]

    with pipeline as p:
        slices = (p | beam.Create([("m1", t) for t in tables])
                  | beam.CombinePerKey(ApproximateTopKFn(method, 4096)))
        window = (slices | beam.Map(lambda kv: kv[1].to_bytes())
                  | beam.CombineGlobally(MergeSketchesFn()))
        assert_that(window | beam.Map(top), equal_to([[("c", True),
                                                       ("a", True)]]))
        assert_that(window | "Total" >> beam.Map(lambda s: s.total),
                    equal_to([16]), label="total")
