"""DataSketches frequent items behind the common interface: guarantees
against a Counter oracle."""
import pickle

import datasketches
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from topk.approx.sketches import budget
from topk.approx.sketches.frequent_items import FrequentItemsTopK
from sketch_oracle import ITEMS, columns, others_at_least, stream, truth

lgs = st.integers(3, 6)


def feed(sketch, s):
    for b in s:
        sketch.update(*columns(b))
        assert sketch.nbytes <= sketch.budget_bytes
        assert len(sketch.to_bytes()) == sketch.nbytes
    return sketch


def check(sketch, true, k=5):
    lo, hi = sketch.bounds(ITEMS)
    exact = np.array([true[i] for i in ITEMS])
    assert (lo <= exact).all() and (exact <= hi).all()
    n = sum(true.values())
    assert sketch.total == n
    # The documented a-priori guarantee.
    assert sketch.max_error <= sketch.epsilon * n + 1e-9
    for row in sketch.top_k(k).to_pylist():
        c = true[row["item_id"]]
        assert row["lower_bound"] <= c <= row["upper_bound"]
        if row["guaranteed"]:
            assert others_at_least(true, row["item_id"]) <= k - 1


@settings(max_examples=120, deadline=None)
@given(lgs, stream, st.integers(1, 8))
def test_bounds_guarantee_and_flag(lg, s, k):
    check(feed(FrequentItemsTopK(lg_max_map_size=lg, item_bytes=40), s),
          truth(s), k)


@settings(max_examples=80, deadline=None)
@given(lgs, stream, stream)
def test_merge_within_guarantee_of_concatenated_stream(lg, a, b):
    def make():
        return FrequentItemsTopK(lg_max_map_size=lg, item_bytes=40)
    merged = feed(make(), a).merge(feed(make(), b))
    whole = feed(make(), a + b)
    true = truth(a, b)
    check(merged, true)
    check(whole, true)
    assert merged.total == whole.total
    # Both are within their error of the truth, hence of each other.
    lo_m, hi_m = merged.bounds(ITEMS)
    lo_w, hi_w = whole.bounds(ITEMS)
    assert (np.maximum(lo_m, lo_w) <= np.minimum(hi_m, hi_w)).all()
    assert merged.epsilon == whole.epsilon


@settings(max_examples=60, deadline=None)
@given(lgs, stream)
def test_serialization_round_trips(lg, s):
    sketch = feed(FrequentItemsTopK(lg_max_map_size=lg, item_bytes=40), s)
    for back in (FrequentItemsTopK.from_bytes(sketch.to_bytes()),
                 pickle.loads(pickle.dumps(sketch))):
        # DataSketches may lay its hash map out differently after a round
        # trip, so compare the state, not the bytes.
        assert back.nbytes == sketch.nbytes
        assert back.total == sketch.total
        assert back.max_error == sketch.max_error
        assert back.epsilon == sketch.epsilon
        assert back.top_k(len(ITEMS)).equals(sketch.top_k(len(ITEMS)))


@settings(max_examples=60, deadline=None)
@given(st.integers(400, 3000), stream, stream)
def test_budget_never_exceeded_even_with_long_ids(b, s, t):
    # ITEMS has 40-byte ids; sized for 4-byte ids, the sketch must fold.
    sketch = FrequentItemsTopK(b, item_bytes=4)
    feed(sketch, s)
    other = feed(FrequentItemsTopK(b, item_bytes=4), t)
    sketch.merge(other)
    assert sketch.nbytes <= b
    check(sketch, truth(s, t))


def test_fold_keeps_bounds_and_composes_epsilon():
    sketch = FrequentItemsTopK(1500, item_bytes=4)
    lg0 = sketch.lg_max_map_size
    ids = [f"{n:03d}" + "y" * 100 for n in range(30)]
    sketch.update(ids, np.arange(1, 31))
    assert sketch.folded and sketch.lg_max_map_size < lg0
    assert sketch.nbytes <= 1500
    assert sketch.epsilon > budget.fi_epsilon(sketch.lg_max_map_size)
    lo, hi = sketch.bounds(ids)
    assert (lo <= np.arange(1, 31)).all() and (np.arange(1, 31) <= hi).all()
    assert sketch.max_error <= sketch.epsilon * sketch.total


def test_ids_longer_than_budget_raise():
    sketch = FrequentItemsTopK(400, item_bytes=4)
    with pytest.raises(ValueError, match="too long"):
        sketch.update(["z" * 500], [1])


def test_sizing_matches_datasketches():
    for lg in range(3, 14):
        assert budget.fi_epsilon(lg) == pytest.approx(
            datasketches.frequent_strings_sketch.get_epsilon_for_lg_size(lg))
    assert FrequentItemsTopK(65536, item_bytes=16).lg_max_map_size == 11
    assert FrequentItemsTopK(epsilon=0.001).epsilon <= 0.001
    # A full sketch of item_bytes ids is as big as fi_max_bytes says.
    s = FrequentItemsTopK(lg_max_map_size=6, item_bytes=11)
    s.update([f"item-{n:06d}" for n in range(48)], np.full(48, 5))
    assert s.num_items == budget.fi_max_items(6)
    assert s.nbytes == budget.fi_max_bytes(6, 11) == s.budget_bytes


def test_top_k_ranking_and_exactness_without_purges():
    s = FrequentItemsTopK(65536)
    s.update(["a", "b", "c", "d"], [5, 9, 5, 1])
    top = s.top_k(3)
    assert top["item_id"].to_pylist() == ["b", "a", "c"]
    assert top["count"].to_pylist() == [9, 5, 5]
    assert top["lower_bound"].equals(top["upper_bound"])
    # With k = 3, a and c tie for ranks 2-3: both are in under any tie
    # rule. With k = 2 they compete for one place: neither is certain.
    assert top["guaranteed"].to_pylist() == [True, True, True]
    assert s.top_k(2)["guaranteed"].to_pylist() == [True, False]


@pytest.mark.parametrize("kwargs", [
    dict(budget_bytes=0), dict(budget_bytes=100), dict(budget_bytes=True),
    dict(epsilon=0), dict(epsilon=1.5), dict(lg_max_map_size=2),
    dict(lg_max_map_size=40), dict(epsilon=0.1, lg_max_map_size=5),
    dict(budget_bytes=1000, lg_max_map_size=12), dict(item_bytes=-1),
])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        FrequentItemsTopK(**kwargs)


def test_bad_input_and_bytes():
    s = FrequentItemsTopK(4096)
    with pytest.raises(ValueError):
        s.update(["a"], [-1])
    with pytest.raises(ValueError):
        s.update(pa.array([None], pa.string()), [1])
    with pytest.raises(ValueError):
        s.top_k(0)
    s.update(["a"], [3])
    data = s.to_bytes()
    for bad in (b"", b"TKCM" + data[4:], data[:-3], data[:4] + b"\x07" +
                data[5:]):
        with pytest.raises(ValueError):
            FrequentItemsTopK.from_bytes(bad)
