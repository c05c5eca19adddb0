"""Count-Min + candidates: every guarantee against a Counter oracle."""
import math
import pickle

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import assume, given, settings, strategies as st

from topk.approx.sketches import budget, count_min
from topk.approx.sketches.count_min import CountMinTopK
from sketch_oracle import (ITEMS, columns, counts, others_at_least, stream,
                           truth)

# Small sketches so that collisions, evictions and byte trimming happen.
params = st.fixed_dictionaries({
    "width": st.integers(1, 24),
    "depth": st.integers(1, 4),
    "capacity": st.integers(1, 12),
    "conservative": st.booleans(),
    "extra": st.integers(0, 200),  # budget beyond the counters
})


def make(p) -> CountMinTopK:
    return CountMinTopK(
        budget.cms_fixed_bytes(p["width"], p["depth"]) + 20 + p["extra"],
        width=p["width"], depth=p["depth"], capacity=p["capacity"],
        conservative=p["conservative"])


def feed(sketch, s):
    for b in s:
        sketch.update(*columns(b))
        assert sketch.nbytes <= sketch.budget_bytes
        assert len(sketch.to_bytes()) == sketch.nbytes
    return sketch


def check_bounds(sketch, true, k=5):
    everything = ITEMS  # seen and unseen
    lo, hi = sketch.bounds(everything)
    exact = np.array([true[i] for i in everything])
    assert (lo <= exact).all() and (exact <= hi).all()
    assert sketch.total == sum(true.values())
    top = sketch.top_k(k)
    for row in top.to_pylist():
        c = true[row["item_id"]]
        assert row["lower_bound"] <= c <= row["upper_bound"]
        assert row["lower_bound"] <= row["count"] <= row["upper_bound"]
        if row["guaranteed"]:
            assert others_at_least(true, row["item_id"]) <= k - 1
    # Any item outside the candidates is bounded by dropped_bound.
    cands = set(sketch.candidates()["item_id"].to_pylist())
    for item, c in true.items():
        if item not in cands:
            assert c <= sketch.dropped_bound


@settings(max_examples=150, deadline=None)
@given(params, stream, st.integers(1, 8))
def test_bounds_contain_truth_and_flag_is_right(p, s, k):
    sketch = feed(make(p), s)
    check_bounds(sketch, truth(s), k)


@settings(max_examples=100, deadline=None)
@given(params, stream, stream)
def test_merge_equals_concatenated_stream(p, a, b):
    left, right = feed(make(p), a), feed(make(p), b)
    merged = left.merge(right)
    assert merged.nbytes <= merged.budget_bytes
    whole = feed(make(p), a + b)
    assert merged.total == whole.total
    if not p["conservative"]:
        # The plain rule is linear: counters are exactly equal.
        np.testing.assert_array_equal(merged.counters, whole.counters)
    check_bounds(merged, truth(a, b))


@settings(max_examples=60, deadline=None)
@given(params, stream, stream, stream)
def test_merge_order_does_not_matter_for_counters(p, a, b, c):
    p = dict(p, conservative=False)
    x = feed(make(p), a).merge(feed(make(p), b).merge(feed(make(p), c)))
    y = feed(make(p), c).merge(feed(make(p), a)).merge(feed(make(p), b))
    np.testing.assert_array_equal(x.counters, y.counters)
    check_bounds(x, truth(a, b, c))
    check_bounds(y, truth(a, b, c))


@st.composite
def streams_and_ranges(draw, of=stream, max_streams=6):
    """A few streams and ranges ``(a, b)`` over them, some repeated, some
    overlapping (sliding windows), in any order."""
    streams = draw(st.lists(of, min_size=1, max_size=max_streams))
    n = len(streams)
    ranges = draw(st.lists(st.integers(0, n - 1).flatmap(
        lambda a: st.tuples(st.just(a), st.integers(a + 1, n))),
        min_size=1, max_size=8))
    return streams, ranges


@settings(max_examples=100, deadline=None)
@given(params, streams_and_ranges(), st.integers(1, 8))
def test_rank_ranges_ranks_each_range_as_its_merge(p, drawn, k):
    streams, ranges = drawn
    sketches = [feed(make(p), s) for s in streams]
    before = [s.to_bytes() for s in sketches]
    rows, totals = CountMinTopK.rank_ranges(sketches, ranges, k)
    merged = CountMinTopK.merge_ranges(sketches, ranges)
    assert rows["range"].to_pylist() == sorted(rows["range"].to_pylist())
    for i, ((a, b), sketch) in enumerate(zip(ranges, merged)):
        got = rows.filter(pa.compute.equal(rows["range"], i)).drop(["range"])
        assert got.equals(sketch.top_k(k).cast(got.schema)), (a, b)
        assert totals[i] == sketch.total
        true = truth(*streams[a:b])
        for row in got.to_pylist():
            assert row["lower_bound"] <= true[row["item_id"]] \
                <= row["upper_bound"]
            if row["guaranteed"]:
                assert others_at_least(true, row["item_id"]) <= k - 1
    assert [s.to_bytes() for s in sketches] == before


#: Streams of a few items: sketches that stay exact, whose unions may not.
few_items = st.lists(st.lists(st.tuples(st.sampled_from(ITEMS), counts),
                              max_size=4), max_size=2)


#: Unions of ids sorted whole, or only the ids that reach a range's k-th
#: count (``count_min._sorts_whole`` picks one by the union's size).
sort_whole = st.sampled_from([lambda *_: True, lambda *_: False])


@settings(max_examples=150, deadline=None)
@given(streams_and_ranges(few_items, max_streams=10), st.integers(4, 12),
       st.integers(0, 200), st.integers(1, 8), sort_whole)
def test_exact_sketches_rank_ranges_as_one_at_a_time(drawn, capacity, extra,
                                                     k, whole):
    """All exact: ranges that fit are ranked at once, those whose union
    must be trimmed by the walk; both as the walk ranks every range."""
    streams, ranges = drawn
    sketches = [feed(make({"width": 8, "depth": 2, "capacity": capacity,
                           "conservative": False, "extra": extra}), s)
                for s in streams]
    assume(all(s.exact for s in sketches))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(count_min, "_sorts_whole", whole)
        rows, totals = CountMinTopK.rank_ranges(sketches, ranges, k)
    walk_rows, walk_totals = CountMinTopK._rank_walk(sketches, ranges, k)
    assert rows.equals(walk_rows)
    np.testing.assert_array_equal(totals, walk_totals)


def test_rank_ranges_refuses_what_merge_refuses():
    a, b = CountMinTopK(width=8, depth=2), CountMinTopK(width=9, depth=2)
    with pytest.raises(ValueError, match="same width"):
        CountMinTopK.rank_ranges([a, b], [(0, 2)], 3)
    with pytest.raises(ValueError, match="bad range"):
        CountMinTopK.rank_ranges([a], [(0, 2)], 3)
    with pytest.raises(ValueError, match="k must be"):
        CountMinTopK.rank_ranges([a], [(0, 1)], 0)


@settings(max_examples=100, deadline=None)
@given(params, stream)
def test_serialization_round_trips(p, s):
    sketch = feed(make(p), s)
    data = sketch.to_bytes()
    back = CountMinTopK.from_bytes(data)
    assert back.to_bytes() == data
    assert back.top_k(5).equals(sketch.top_k(5))
    assert pickle.loads(pickle.dumps(sketch)).to_bytes() == data


@settings(max_examples=60, deadline=None)
@given(stream)
def test_default_sizing_respects_budget(s):
    for b in (1024, 4096, 65536):
        sketch = feed(CountMinTopK(b), s)
        assert sketch.nbytes <= b


def test_long_ids_are_trimmed_not_over_budget():
    sketch = CountMinTopK(2048, width=16, depth=2, capacity=100)
    ids = [f"{n:04d}" + "x" * 300 for n in range(20)]
    sketch.update(ids, list(range(1, 21)))
    assert sketch.nbytes <= 2048 < 20 * 300
    lo, hi = sketch.bounds(ids)
    assert (lo <= np.arange(1, 21)).all() and (np.arange(1, 21) <= hi).all()
    # The longest-surviving candidates are the heaviest.
    assert set(sketch.candidates()["item_id"].to_pylist()) <= set(ids[-5:])


def test_single_batch_is_exact_for_candidates():
    ids = [f"item-{n:06d}" for n in range(5000)]
    counts = np.arange(5000, 0, -1)
    sketch = CountMinTopK(16384)
    sketch.update(ids, counts, assume_unique=True)
    top = sketch.top_k(100)
    assert top["item_id"].to_pylist() == ids[:100]
    assert top["count"].to_pylist() == counts[:100].tolist()
    assert top["lower_bound"].equals(top["upper_bound"])
    assert all(top["guaranteed"].to_pylist())


def test_counts_and_dimensions():
    s = CountMinTopK(epsilon=0.01, delta=0.01)
    assert s.width == math.ceil(math.e / 0.01) and s.depth == 5
    assert s.epsilon <= 0.01 and s.delta <= 0.01
    s.update(["a", "b", "a"], [2, 3, 4])
    assert s.total == 9
    assert s.max_error == math.ceil(s.epsilon * 9)
    assert s.bounds(["a"])[0][0] == 6
    assert (s.estimate(["a", "b"]) >= [6, 3]).all()


@pytest.mark.parametrize("kwargs", [
    dict(budget_bytes=0), dict(budget_bytes=-5), dict(budget_bytes=100),
    dict(budget_bytes=1.5), dict(epsilon=0), dict(epsilon=2),
    dict(epsilon=0.1, delta=1.5), dict(delta=0.1),
    dict(epsilon=0.1, width=10), dict(width=0), dict(width=10, depth=0),
    dict(width=10, capacity=0), dict(budget_bytes=4096, counter_share=1.0),
    dict(budget_bytes=300, width=100),
])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        CountMinTopK(**kwargs)


def test_bad_input():
    s = CountMinTopK(4096)
    with pytest.raises(ValueError):
        s.update(["a"], [-1])
    with pytest.raises(ValueError):
        s.update(["a", "b"], [1])
    with pytest.raises(ValueError):
        s.update(pa.array(["a", None]), [1, 1])
    with pytest.raises(TypeError):
        s.update(["a"], [1.5])
    with pytest.raises(ValueError):
        s.top_k(0)
    with pytest.raises(ValueError):
        s.merge(CountMinTopK(8192))
    with pytest.raises(ValueError):
        s.merge(CountMinTopK(4096, conservative=True))
    with pytest.raises(OverflowError):
        s.update(["a", "b"], [2 ** 62, 2 ** 62])


def test_corrupt_bytes_are_rejected():
    s = CountMinTopK(4096).update(["a", "b"], [1, 2])
    data = s.to_bytes()
    for bad in (b"", b"XXXX" + data[4:], data[:-1], data + b"x",
                data[:4] + bytes([9]) + data[5:],   # format version
                data[:5] + bytes([9]) + data[6:]):  # hash version
        with pytest.raises(ValueError):
            CountMinTopK.from_bytes(bad)


def test_merge_with_itself_doubles():
    s = CountMinTopK(4096).update(["a", "b"], [1, 2])
    s.merge(s)
    assert s.total == 6
    assert s.bounds(["b"])[0][0] == 4


def with_counters_from_the_start(p) -> CountMinTopK:
    """A sketch of ``p`` that keeps counters from its first update, as
    every sketch did before sketches started exact."""
    sketch = make(p)
    sketch._counters = np.zeros((sketch.depth, sketch.width), np.int64)
    return sketch


@settings(max_examples=150, deadline=None)
@given(params, stream)
def test_an_exact_start_changes_nothing_but_the_bytes(p, s):
    p = dict(p, conservative=False)
    exact, counted = make(p), with_counters_from_the_start(p)
    went_dense = False
    for b in s:
        exact.update(*columns(b))
        counted.update(*columns(b))
        if exact.exact:
            assert not went_dense  # once dense, dense for good
            assert counted.dropped_bound == 0
            np.testing.assert_array_equal(exact.counters, counted.counters)
            assert exact.candidates().equals(counted.candidates())
            assert exact.nbytes < counted.nbytes
        else:
            went_dense = True
            assert exact.to_bytes() == counted.to_bytes()
    check_bounds(exact, truth(s))


def test_an_exact_sketch_carries_no_counters_until_it_must():
    sketch = CountMinTopK(4096, width=64, depth=4, capacity=8)
    sketch.update(["a", "b", "a"], [1, 2, 3])
    assert sketch.exact and sketch.dropped_bound == 0
    data = sketch.to_bytes()
    assert len(data) == sketch.nbytes < budget.cms_fixed_bytes(64, 4)
    assert data[4] == 2  # format version of exact sketches
    back = CountMinTopK.from_bytes(data)
    assert back.exact and back.to_bytes() == data
    assert back.bounds(["a", "b", "never"])[1].tolist() == [4, 2, 0]
    # The implied counters are the plain rule's.
    assert (back.estimate(["a", "b"]) >= [4, 2]).all()
    assert back.counters[0].sum() == 6

    sketch.update([f"x{n}" for n in range(20)], [1] * 20)
    assert not sketch.exact and sketch.dropped_bound >= 1
    assert sketch.to_bytes()[4] == 1
    assert sketch.nbytes >= budget.cms_fixed_bytes(64, 4)
    assert sketch.bounds(["a"])[0][0] == 4


def test_conservative_sketches_keep_counters():
    sketch = CountMinTopK(4096, conservative=True).update(["a"], [1])
    assert not sketch.exact
    assert sketch.to_bytes()[4] == 1


def test_a_merge_of_exact_sketches_is_exact_while_it_fits():
    a = CountMinTopK(4096, width=64, depth=4, capacity=5)
    b = CountMinTopK(4096, width=64, depth=4, capacity=5)
    a.update(["a", "b"], [5, 1])
    b.update(["a", "c"], [2, 7])
    merged = CountMinTopK.merge_many([a, b])
    assert merged.exact
    assert merged.top_k(3)["count"].to_pylist() == [7, 7, 1]
    b.update(["d", "e", "f"], [1, 1, 1])
    assert b.exact  # 5 items: at capacity, not over
    trimmed = CountMinTopK.merge_many([a, b])
    assert not trimmed.exact and trimmed.dropped_bound == 1
    np.testing.assert_array_equal(
        trimmed.counters, a.counters + b.counters)
    rows, totals = CountMinTopK.rank_ranges([a, b], [(0, 2), (1, 2)], 2)
    assert totals.tolist() == [18, 12]
    assert rows.to_pylist()[:2] == [
        dict(range=0, item_id="a", count=7, lower_bound=7, upper_bound=7,
             guaranteed=True),
        dict(range=0, item_id="c", count=7, lower_bound=7, upper_bound=7,
             guaranteed=True)]


def test_corrupt_exact_bytes_are_rejected():
    sketch = CountMinTopK(4096).update(["a", "b"], [1, 2])
    data = bytearray(sketch.to_bytes())
    assert data[4] == 2
    header = 48
    dropped = data[:header - 8] + (1).to_bytes(8, "little") + data[header:]
    conservative = data[:6] + bytes([1]) + data[7:]
    lo_not_hi = data[:header] + (5).to_bytes(8, "little") + data[header + 8:]
    with_counters_missing = data[:4] + bytes([1]) + data[5:]
    for bad in (dropped, conservative, lo_not_hi, with_counters_missing):
        with pytest.raises(ValueError):
            CountMinTopK.from_bytes(bytes(bad))


@settings(max_examples=150, deadline=None)
@given(params, st.lists(st.lists(st.tuples(st.sampled_from(ITEMS), counts),
                                 max_size=12), max_size=8))
def test_exact_runs_equal_sketches_updated_one_by_one(p, runs):
    """Many new sketches at once (repeats within and across runs) equal
    empty sketches each updated with its run; a run left to ``update``
    (None) does not fit exactly, or has too many rows to try."""
    rows = [row for run in runs for row in run]
    offsets = np.r_[0, np.cumsum([len(run) for run in runs])]
    made = make(p).exact_runs(*columns(rows), offsets)
    assert len(made) == len(runs)
    for run, sketch in zip(runs, made):
        one = make(p).update(*columns(run)) if run else make(p)
        if sketch is None:  # not exact, or too many rows to try
            assert (p["conservative"] or not one.exact
                    or len(run) > count_min._EXACT_RUN_ROWS * p["capacity"])
            continue
        assert sketch.exact and sketch.to_bytes() == one.to_bytes()
        assert sketch.nbytes == len(one.to_bytes())  # kept, not summed
        np.testing.assert_array_equal(sketch.counters, one.counters)
        check_bounds(sketch, truth([run]))
        # A made sketch goes on as an updated one does.
        more = [("i1", 3), ("i2", 1)]
        assert (sketch.update(*columns(more)).to_bytes()
                == one.update(*columns(more)).to_bytes())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1, 2]), stream), max_size=10))
def test_pack_round_trips_a_mix_of_sketches(drawn):
    """Exact sketches of two parameter sets, full ones and frequent items,
    packed and pickled together, come back equal and in order."""
    from topk.approx import sketches as api
    kinds = [lambda: CountMinTopK(2048, width=8, depth=2, capacity=3),
             lambda: CountMinTopK(4096, width=16, depth=3),
             lambda: api.new_sketch("frequent_items", 4096)]
    made = [feed(kinds[kind](), s) for kind, s in drawn]
    back = api.unpack(pickle.loads(pickle.dumps(api.pack(made))))
    assert [type(s) for s in back] == [type(s) for s in made]
    for a, b in zip(made, back):
        if isinstance(a, CountMinTopK):
            assert a.to_bytes() == b.to_bytes()
            assert b.nbytes == a.nbytes == len(a.to_bytes())
            np.testing.assert_array_equal(a._cand_hash, b._cand_hash)
        else:  # DataSketches does not keep its items' order through bytes
            assert sorted(b.top_k(50).to_pylist(), key=str) == sorted(
                a.top_k(50).to_pylist(), key=str)


def test_packed_exact_sketches_pickle_as_builtins_and_stay_usable():
    """A shuffle pickles packed exact sketches: the packed form holds only
    builtins (a pickled NumPy array costs ~10 us each way), and sketches
    unpacked over read-only views of those bytes still update and merge
    as the originals do."""
    from topk.approx import sketches as api
    made = [CountMinTopK(2048, width=8, depth=2, capacity=5).update(ids)
            for ids in (["a", "b", "a"], ["c"], ["b", "d", "d", "e"])]
    assert all(s.exact for s in made)
    data = pickle.dumps(api.pack(made))
    assert b"numpy" not in data
    back = api.unpack(pickle.loads(data))
    assert (api.merge_many(back).to_bytes()
            == api.merge_many(made).to_bytes())
    more = (["a", "z"], np.array([2, 1]))
    for a, b in zip(made, back):
        assert b.update(*more).to_bytes() == a.update(*more).to_bytes()


def test_pack_exact_refuses_full_or_mixed_sketches():
    exact = CountMinTopK(2048, width=8, depth=2, capacity=2).update(["a"])
    full = CountMinTopK(2048, width=8, depth=2, capacity=2).update(
        ["a", "b", "c"])
    other = CountMinTopK(4096, width=8, depth=2, capacity=2).update(["a"])
    assert not full.exact
    for bad in ([exact, full], [exact, other]):
        with pytest.raises(ValueError, match="one parameter set"):
            CountMinTopK.pack_exact(bad)


@settings(max_examples=150, deadline=None)
@given(st.lists(few_items, min_size=2, max_size=10), st.integers(4, 12),
       st.integers(0, 200))
def test_a_merge_of_exact_sketches_equals_the_walk(streams, capacity, extra):
    """``merge_many`` of exact sketches (merged as one run of candidates
    when the union fits) gives the bytes the range walk gives."""
    made = [feed(make({"width": 8, "depth": 2, "capacity": capacity,
                       "conservative": False, "extra": extra}), s)
            for s in streams]
    assume(all(s.exact for s in made))
    before = [s.to_bytes() for s in made]
    merged = CountMinTopK.merge_many(made)
    walked = CountMinTopK.merge_ranges(made, [(0, len(made))])[0]
    assert merged.to_bytes() == walked.to_bytes()
    np.testing.assert_array_equal(merged._cand_hash, walked._cand_hash)
    check_bounds(merged, truth(*streams))
    assert [s.to_bytes() for s in made] == before


def test_exact_runs_leave_a_hash_collision_to_update():
    """Two ids with one hash in a run cannot be told apart by the sort:
    that run is left to ``update`` (None); repeats of one id are summed."""
    sketch = CountMinTopK(2048, width=8, depth=2, capacity=4)
    made = sketch.exact_runs(["a", "b", "c", "c"], [1, 1, 2, 3], [0, 2, 4],
                             hashes=np.array([7, 7, 9, 9], np.uint64))
    assert made[0] is None
    assert made[1].total == 5 and made[1].top_k(2)["count"].to_pylist() == [5]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 50)), max_size=40),
       st.sampled_from([10, 10 ** 7]))
def test_summed_by_key_sums_each_distinct_key_dense_or_sorted(pairs, span):
    """Both ways (a dense count when the span is small beside the pairs, a
    sort when it is not) give each distinct key once, ascending, with the
    sum of its values."""
    key = np.array([k * (span // 10) for k, _ in pairs], np.int64)
    value = np.array([v for _, v in pairs], np.int64)
    expected = {}
    for k, v in zip(key.tolist(), value.tolist()):
        expected[k] = expected.get(k, 0) + v
    got_key, got_sum = count_min._summed_by_key(key, value, span)
    assert got_key.tolist() == sorted(expected)
    assert got_sum.tolist() == [expected[k] for k in sorted(expected)]
    assert got_sum.dtype == np.int64


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 6), max_size=5, unique=True),
                min_size=1, max_size=12).flatmap(lambda sets: st.tuples(
                    st.just(sets), st.lists(st.tuples(
                        st.integers(0, len(sets)), st.integers(0, len(sets))
                    ).map(sorted), max_size=20))),
       st.integers(1, 8))
def test_distinct_at_least_counts_each_ranges_items(drawn, least):
    """Ranges of any lengths, repeated and out of order: flagged exactly
    when their sketches hold at least ``least`` distinct items."""
    sets, ranges = drawn
    codes = np.array([c for s in sets for c in s], np.int64)
    starts = np.r_[0, np.cumsum([len(s) for s in sets])].astype(np.int64)
    a = np.array([r[0] for r in ranges], np.int64)
    b = np.array([r[1] for r in ranges], np.int64)
    got = count_min._distinct_at_least(codes, starts, a, b, least,
                                       starts[b] - starts[a])
    expected = [len(set().union(*sets[x:y])) >= least for x, y in ranges]
    assert got.tolist() == expected


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 40), st.integers(-5, 10 ** 12)),
                min_size=1, max_size=60), st.data())
def test_nth_smallest_is_the_sorted_values_nth(values, data):
    """Counted (small non-negative bounds) or sorted (any others)."""
    values = np.array(values, np.int64)
    n = data.draw(st.integers(0, len(values) - 1))
    assert count_min._nth_smallest(values, n) == int(np.sort(values)[n])


@settings(max_examples=100, deadline=None)
@given(params, st.lists(stream, min_size=1, max_size=5), st.integers(1, 6))
def test_top_k_many_ranks_each_sketch_as_alone(p, streams, k):
    """Exact and full sketches ranked in one table: each one's rows are
    its own top ``k``, with its own bound for untracked items."""
    many = [feed(make(p), s) for s in streams]
    of, rows = CountMinTopK.top_k_many(many, k)
    assert of.tolist() == sorted(of.tolist())
    for i, sketch in enumerate(many):
        alone = CountMinTopK.top_k_many([sketch], k)[1]
        assert rows.filter(pa.array(of == i)).equals(alone)
        assert alone.num_rows == min(k, len(sketch.candidates()))


#: Streams of up to three items: exact sketches whose ranges overflow a
#: small capacity, with the heaviest few standing out or tied.
three_items = st.lists(st.lists(st.tuples(st.sampled_from(ITEMS[:12]),
                                          st.integers(1, 6)),
                                max_size=3), min_size=1, max_size=1)


@settings(max_examples=200, deadline=None)
@given(streams_and_ranges(three_items, max_streams=12), st.integers(3, 6),
       st.integers(1, 3), st.sampled_from([count_min._OVERFULL_CELLS, 30]),
       sort_whole)
def test_overfull_exact_ranges_rank_as_the_walk(drawn, capacity, k, cells,
                                                whole):
    """Ranges of exact sketches whose union is over the capacity: ranked
    from their heaviest items where that gives the walk's rows (a small
    cell budget leaves some to the walk)."""
    streams, ranges = drawn
    sketches = [feed(make({"width": 8, "depth": 2, "capacity": capacity,
                           "conservative": False, "extra": 2000}), s)
                for s in streams]
    assume(all(s.exact for s in sketches))
    walk_rows, walk_totals = CountMinTopK._rank_walk(sketches, ranges, k)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(count_min, "_OVERFULL_CELLS", cells)
        patch.setattr(count_min, "_sorts_whole", whole)
        rows, totals = CountMinTopK.rank_ranges(sketches, ranges, k)
    assert rows.equals(walk_rows)
    np.testing.assert_array_equal(totals, walk_totals)


def test_overfull_ranges_with_a_clear_top_skip_the_walk(monkeypatch):
    """Sliding ranges over a capacity of 6, a hot, a warm and a mild item
    in every minute among ones seen once: ranked without the walk, as it
    ranks them; ids that could overflow the budget go to the walk."""
    def minute(i, tail):
        return CountMinTopK(4096, width=8, depth=2, capacity=6).update(
            ["hot", "warm", "mild"] + [f"{tail}{i}-{j}" for j in range(3)],
            [50, 20, 5, 1, 1, 1])

    sketches = [minute(i, "c") for i in range(10)]
    ranges = [(a, a + 5) for a in range(6)]
    expected = CountMinTopK._rank_walk(sketches, ranges, 2)
    walked = []
    monkeypatch.setattr(CountMinTopK, "_rank_walk", classmethod(
        lambda cls, s, r, k, **_: walked.append(r) or expected))
    rows, totals = CountMinTopK.rank_ranges(sketches, ranges, 2)
    assert walked == [] and rows.equals(expected[0])
    assert rows.filter(pa.compute.equal(rows["range"], 0)).to_pylist() == [
        {"range": 0, "item_id": "hot", "count": 250, "lower_bound": 250,
         "upper_bound": 250, "guaranteed": True},
        {"range": 0, "item_id": "warm", "count": 100, "lower_bound": 100,
         "upper_bound": 100, "guaranteed": True}]
    assert totals.tolist() == [390] * 6
    # Ids as long as this one, six of them, would not fit the budget. Only
    # the routing is checked here (the patched walk answers anything);
    # the rows of both paths are compared in the hypothesis test above.
    long = [minute(i, "x" * 900) for i in range(10)]
    CountMinTopK.rank_ranges(long, ranges, 2)
    assert walked == [ranges]
