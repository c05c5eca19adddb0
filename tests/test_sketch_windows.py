"""Approximate slices and windows without Beam: method and budget parsing,
slice splitting, pane plans, and sliding-window sketches (block prefix and
suffix merges) against a brute-force merge of every window's panes."""
import collections
import random

import pyarrow as pa
import pytest

from topk import schema, sketch_windows, sketches
from topk.windows import SUPPORTED_WINDOWS, WindowSpec


def test_parse_methods():
    assert sketch_windows.parse_methods("exact") == ["exact"]
    assert sketch_windows.parse_methods(" cms, exact,cms ,") == ["cms",
                                                                "exact"]
    for bad, message in [("", "no method"), ("exact,bloom", "unknown method "
                                              "'bloom'; choose from exact, "
                                              "cms, frequent_items")]:
        with pytest.raises(ValueError, match=message):
            sketch_windows.parse_methods(bad)
    assert sketch_windows.approximate_methods(["exact", "frequent_items"]) == [
        "frequent_items"]


@pytest.mark.parametrize("budget", [1024, 4096, 65536, 1 << 20])
def test_check_budget_accepts_what_both_sketches_can_use(budget):
    assert sketch_windows.check_budget(budget) == budget
    for method in sketches.METHODS:
        assert sketches.new_sketch(method, budget).nbytes <= budget


@pytest.mark.parametrize("budget", [0, -5, 64, 1 << 31])
def test_check_budget_rejects(budget):
    with pytest.raises(ValueError):
        sketch_windows.check_budget(budget)


def test_split_slices_one_table_per_type_and_slice_with_all_types():
    counts = pa.table({
        "event_type": ["play", "click", "play", "play", "click"],
        "slice_start": [0, 0, 0, 60_000, 60_000],
        "item_id": ["a", "a", "b", "a", "c"],
        "count": [2, 3, 1, 4, 5]}, schema=schema.SLICE_COUNTS_SCHEMA)
    got = {key: sorted(zip(t["item_id"].to_pylist(), t["count"].to_pylist()))
           for key, t in sketch_windows.split_slices(counts)}
    assert got == {
        ("*", 0): [("a", 5), ("b", 1)], ("*", 60_000): [("a", 4), ("c", 5)],
        ("click", 0): [("a", 3)], ("click", 60_000): [("c", 5)],
        ("play", 0): [("a", 2), ("b", 1)], ("play", 60_000): [("a", 4)]}
    assert sketch_windows.split_slices(
        schema.SLICE_COUNTS_SCHEMA.empty_table()) == []


def test_pane_plans_of_every_supported_window():
    plans = {name: sketch_windows.pane_plan(WindowSpec.parse(name))
             for name in SUPPORTED_WINDOWS}
    assert plans == {"1m": ("1m", 1, 1), "1h": ("1h", 1, 1),
                     "1d": ("1d", 1, 1), "30d": ("1d", 30, 30),
                     "1h/1m": ("1m", 60, 1), "1d/1h": ("1h", 24, 1),
                     "30d/1d": ("1d", 30, 1)}


def _pane_sketch(method, budget, rng, items):
    """A sketch of one pane and its exact counts."""
    true = collections.Counter({f"i{rng.randrange(items)}": rng.randint(1, 50)
                                for _ in range(rng.randint(1, 60))})
    sketch = sketches.new_sketch(method, budget).update(
        list(true), list(true.values()))
    return sketch, true


@pytest.mark.parametrize("method", sketches.METHODS)
@pytest.mark.parametrize("n, step", [(1, 1), (2, 1), (5, 1), (6, 2),
                                     (4, 4), (30, 1), (30, 30)])
def test_window_sketches_match_brute_force(method, n, step):
    rng = random.Random(n * 100 + step)
    budget = 1024  # small: the sketches drop items, bounds get wide
    # Sparse panes over a few blocks, some blocks empty.
    panes = sorted(rng.sample(range(-n, 5 * n), min(6 * n, 12)))
    made = {p: _pane_sketch(method, budget, rng, 300) for p in panes}
    before = {p: s.to_bytes() for p, (s, _) in made.items()}
    by_block = collections.defaultdict(lambda: ([], []))
    for p, (sketch, _) in made.items():
        for block, is_next in sketch_windows.blocks_of(p, n, step):
            by_block[block][is_next].append((p, sketch))
    got = {}
    for block, (here, following) in by_block.items():
        for first, sketch in sketch_windows.window_sketches(
                block, n, step, here, following):
            assert first not in got, "a window from two blocks"
            assert first // n == block and first % step == 0
            got[first] = sketch
    # Brute force: every window start (multiple of step) covering a pane.
    want = {w for p in panes for w in range(p - n + 1, p + 1)
            if w % step == 0}
    assert set(got) == want
    for first, sketch in got.items():
        true = sum((made[p][1] for p in panes if first <= p < first + n),
                   collections.Counter())
        assert sketch.total == sum(true.values())
        assert sketch.nbytes <= budget
        items = sorted(true) + ["never-seen"]
        lower, upper = sketch.bounds(items)
        for item, lo, hi in zip(items, lower, upper):
            assert lo <= true[item] <= hi, (first, item)
        for r in sketch.top_k(5).to_pylist():
            assert r["lower_bound"] <= true[r["item_id"]] <= r["upper_bound"]
    assert {p: s.to_bytes() for p, (s, _) in made.items()} == before, (
        "pane sketches were modified")


def test_ranked_windows_rows():
    spec = WindowSpec.parse("1h/1m")
    a = sketches.new_sketch("cms").update(["x", "y", "z"], [5, 3, 3])
    b = sketches.new_sketch("cms").update(["y"], [4])
    ab = sketch_windows.copy_sketch(a).merge(b)
    rows = sketch_windows.ranked_windows(
        [(10, a), (11, ab), (12, ab)], spec, 60_000, 2, "play",
        emitted_at_ms=7).to_pylist()
    assert [(r["window_start"].minute, r["rank"], r["item_id"], r["count"],
             r["lower_bound"], r["upper_bound"], r["window_total"],
             r["method"], r["window_length"], r["slide"]) for r in rows] == [
        (10, 1, "x", 5, 5, 5, 11, "cms", "1h", "1m"),
        (10, 2, "y", 3, 3, 3, 11, "cms", "1h", "1m"),
        (11, 1, "y", 7, 7, 7, 15, "cms", "1h", "1m"),
        (11, 2, "x", 5, 5, 5, 15, "cms", "1h", "1m"),
        (12, 1, "y", 7, 7, 7, 15, "cms", "1h", "1m"),
        (12, 2, "x", 5, 5, 5, 15, "cms", "1h", "1m")]
    assert sketch_windows.ranked_windows(
        [], spec, 60_000, 2, "play", emitted_at_ms=0).num_rows == 0


def test_sketches_table_rows():
    fi = sketches.new_sketch("frequent_items", 4096).update(["a"], [3])
    table = sketch_windows.sketches_table(
        [sketch_windows.sketch_row("frequent_items", "*", 120_000, fi)], "1m",
        "batch", 9)
    assert table.schema == schema.SKETCHES_SCHEMA
    [row] = table.to_pylist()
    assert (row["method"], row["event_type"], row["total"], row["nbytes"],
            row["budget_bytes"], row["slice_length"]) == (
        "frequent_items", "*", 3, fi.nbytes, 4096, "1m")
    assert sketches.sketch_from_bytes(row["sketch"]).total == 3


def test_pending_sketch_adds_in_bulk_and_pickles_as_its_sketch():
    import pickle
    pending = sketch_windows.PendingSketch(sketches.new_sketch("cms"),
                                           flush_rows=5)
    rows = pa.table({"item_id": ["a", "b"], "count": [2, 1]})
    pending.add(rows).add(rows)
    assert pending.sketch.total == 0  # 4 rows pending, below 5
    restored = pickle.loads(pickle.dumps(pending))
    assert restored.sketch.total == 6 == pending.sketch.total
    pending.add(rows).add(rows)
    assert pending.sketch.total == 6
    pending.add(rows)  # 6 rows pending: flushed
    assert pending.sketch.total == 15
    assert ranked_items(pending.flush()) == [("a", 10), ("b", 5)]


def ranked_items(sketch):
    return [(r["item_id"], r["count"]) for r in sketch.top_k(5).to_pylist()]
