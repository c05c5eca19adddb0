"""The common interface, the guaranteed flag and the Beam combiners."""
import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings, strategies as st

from topk.core import ranking, schema
from topk.approx import sketches
from topk.approx.sketches.common import guaranteed_flags, top_k_groups
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


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from("abcdefg"),
                          st.integers(0, 20), st.integers(0, 8)),
                max_size=30, unique_by=lambda r: r[:2]),
       st.lists(st.integers(0, 12), min_size=4, max_size=4),
       st.integers(1, 5))
def test_top_k_groups_rank_and_flag_each_group_as_alone(rows, unseen, k):
    """Many groups ranked at once: each group's rows are its top ``k`` by
    count desc then item, flagged as ``guaranteed_flags`` flags them
    against that group's upper bounds and unseen bound."""
    group = np.array([g for g, *_ in rows], np.int64)
    items = pa.array([i for _, i, _, _ in rows], pa.string())
    lower = np.array([c for *_, c, _ in rows], np.int64)
    upper = lower + np.array([w for *_, w in rows], np.int64)
    got_group, got = top_k_groups(group, items, upper, lower, upper, unseen, k)
    assert got_group.tolist() == sorted(got_group.tolist())
    for g in range(4):
        mine = [r for r in rows if r[0] == g]
        ranked = sorted(mine, key=lambda r: (-(r[2] + r[3]), r[1]))[:k]
        hi = np.array([c + w for _, _, c, w in mine], np.int64)
        flags = guaranteed_flags(np.array([c for _, _, c, _ in ranked]),
                                 np.array([c + w for _, _, c, w in ranked]),
                                 hi, unseen[g], k) if ranked else []
        expected = [{"item_id": i, "count": c + w, "lower_bound": c,
                     "upper_bound": c + w, "guaranteed": bool(f)}
                    for (_, i, c, w), f in zip(ranked, flags)]
        assert got.filter(pa.array(got_group == g)).to_pylist() == expected


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
