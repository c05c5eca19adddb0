"""Approximate slices and windows without Beam: method and budget parsing,
slice splitting, pane plans, sliding-window sketches (block prefix and
suffix merges, Count-Min range merges) against a brute-force merge of every
window's panes, and the ranked windows' bounds and guaranteed flags against
the brute-force oracle (``tests/oracle.py``)."""
import collections
import functools
import random

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oracle  # tests/ is on sys.path (conftest.py)
from topk.core import ranking, schema
from topk.approx import sketch_windows, sketches
from topk.approx.sketches.hashing import hash64
from topk.core.windows import SUPPORTED_WINDOWS, WindowSpec, duration_ms


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


def test_split_runs_of_one_slice_or_all_time_with_all_types():
    counts = pa.table({
        "event_type": ["play", "click", "play", "play", "click"],
        "slice_start": [0, 0, 0, 60_000, 60_000],
        "item_id": ["a", "a", "b", "a", "c"],
        "count": [2, 3, 1, 4, 5]}, schema=schema.SLICE_COUNTS_SCHEMA)

    def split(run_ms):
        got = {}
        for key, t in sketch_windows.split_runs(counts, run_ms):
            assert key not in got, f"{key} split twice"
            summed = collections.Counter()
            assert t["item_hash"].to_pylist() == hash64(t["item_id"]).tolist()
            for start, item, n in zip(*t.drop(["item_hash"]).to_pydict(
                    ).values()):
                summed[(start, item)] += n  # ALL_TYPES repeats an item
            got[key] = sorted(summed.items())
        return got

    assert split(1) == {
        ("*", 0): [((0, "a"), 5), ((0, "b"), 1)],
        ("*", 60_000): [((60_000, "a"), 4), ((60_000, "c"), 5)],
        ("click", 0): [((0, "a"), 3)], ("click", 60_000): [((60_000, "c"), 5)],
        ("play", 0): [((0, "a"), 2), ((0, "b"), 1)],
        ("play", 60_000): [((60_000, "a"), 4)]}
    assert split(None) == {
        ("*", 0): [((0, "a"), 5), ((0, "b"), 1), ((60_000, "a"), 4),
                   ((60_000, "c"), 5)],
        ("click", 0): [((0, "a"), 3), ((60_000, "c"), 5)],
        ("play", 0): [((0, "a"), 2), ((0, "b"), 1), ((60_000, "a"), 4)]}


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
            assert first // sketch_windows.block_panes(n) == block
            assert first % step == 0
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


@pytest.mark.parametrize("method", sketches.METHODS)
@pytest.mark.parametrize("spec", ["1m", "1h/1m", "1d/1h", "30d", "30d/1d"])
def test_ranked_block_ranks_each_window_as_its_merged_sketch(method, spec):
    """Count-Min ranks a block's windows from its panes at once
    (``rank_ranges``), without the merged sketches: every row must be
    what ranking each window's merged sketch gives, also for a subset of
    the windows."""
    spec = WindowSpec.parse(spec)
    length, n, step = sketch_windows.pane_plan(spec)
    pane_ms = duration_ms(length)
    rng = random.Random(n * 10 + step)
    size = sketch_windows.block_panes(n)
    panes = sorted(rng.sample(range(0, 2 * size), min(2 * size, 20)))
    held = [(p, _pane_sketch(method, 1024, rng, 200)[0]) for p in panes]
    here = [h for h in held if h[0] < size]
    following = [h for h in held if h[0] >= size] if n > 1 else []
    every = sketch_windows.window_sketches(0, n, step, here, following)
    some = {first for first, _ in every[::3]}
    for wanted in (None, some):
        got = sketch_windows.ranked_block(
            spec, 3, "play", 0, here, following, wanted, emitted_at_ms=5)
        want = sketch_windows.ranked_windows(
            [w for w in every if wanted is None or w[0] in wanted], spec,
            pane_ms, 3, "play", emitted_at_ms=5)
        assert got.num_rows > 0
        assert got.equals(want)
    assert sketch_windows.ranked_windows_starting(
        spec, 3, "play", held, some, emitted_at_ms=5).equals(
        sketch_windows.ranked_block(spec, 3, "play", 0, here, following,
                                    some, emitted_at_ms=5))


@pytest.mark.parametrize("spec", ["1m", "1h/1m", "30d/1d"])
@pytest.mark.parametrize("group_bytes", [1, 4096, 1 << 30])
def test_windows_of_many_blocks_rank_as_block_by_block(
        spec, group_bytes, monkeypatch):
    """Count-Min ranks consecutive blocks in one call (sparse data: a few
    events per block); the rows must be those of ranking each block alone,
    whatever the size of a group."""
    monkeypatch.setattr(sketch_windows, "GROUP_BYTES", group_bytes)
    spec = WindowSpec.parse(spec)
    _, n, step = sketch_windows.pane_plan(spec)
    size = sketch_windows.block_panes(n)
    rng = random.Random(7)
    # Sparse panes over ten blocks (exact sketches), and a few full ones.
    panes = sorted(rng.sample(range(0, 10 * size), 25))
    held = [(p, _pane_sketch("cms", 1024, rng, 20 if i % 5 else 2000)[0])
            for i, p in enumerate(panes)]
    assert any(s.exact for _, s in held) and not all(s.exact for _, s in held)
    wanted = {w for p in panes for w in range(p - n + 1, p + 1)
              if w % step == 0 and w >= 0}
    got = sketch_windows.ranked_windows_starting(
        spec, 3, "play", held, wanted, emitted_at_ms=5)

    def block(b):
        return [h for h in held if h[0] // size == b]

    # Each block alone, from its windows' merged sketches: not the span
    # grouping under test.
    pane_ms = duration_ms(sketch_windows.pane_plan(spec)[0])
    want = pa.concat_tables([
        sketch_windows.ranked_windows(
            [w for w in sketch_windows.window_sketches(
                b, n, step, block(b), block(b + 1) if n > 1 else [])
             if w[0] in wanted], spec, pane_ms, 3, "play", emitted_at_ms=5)
        for b in sorted({w // size for w in wanted})])
    assert got.num_rows > 0
    assert got.equals(want)


@pytest.mark.parametrize("method", sketches.METHODS)
def test_spans_ranked_rows_of_shared_and_single_spans(method):
    a = sketches.new_sketch(method).update(["x", "y", "z"], [5, 3, 3])
    b = sketches.new_sketch(method).update(["y"], [4])
    rows = sketches.spans_ranked_rows(
        [a, b], [(10, (0, 1)), (11, (0, 2)), (12, (0, 2)), (13, (1, 2))], 2,
        "play").to_pylist()
    assert [(r["window_start"], r["rank"], r["item_id"], r["count"],
             r["window_total"]) for r in rows] == [
        (10, 1, "x", 5, 11), (10, 2, "y", 3, 11),
        (11, 1, "y", 7, 15), (11, 2, "x", 5, 15),
        (12, 1, "y", 7, 15), (12, 2, "x", 5, 15),
        (13, 1, "y", 4, 4)]
    assert sketches.spans_ranked_rows([a], [], 2, "play").num_rows == 0


def test_ranked_windows_rows():
    spec = WindowSpec.parse("1h/1m")
    a = sketches.new_sketch("cms").update(["x", "y", "z"], [5, 3, 3])
    b = sketches.new_sketch("cms").update(["y"], [4])
    ab = a.copy().merge(b)
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


def test_split_runs_one_table_per_type_and_hour_with_all_types():
    hour = schema.HOUR_MS
    counts = pa.table({
        "event_type": ["play", "click", "play", "play", "click", "play"],
        "slice_start": [hour + 60_000, 0, hour, 60_000, 60_000, 0],
        "item_id": ["a", "a", "b", "a", "c", "d"],
        "count": [2, 3, 1, 4, 5, 6]}, schema=schema.SLICE_COUNTS_SCHEMA)
    got = {}
    for key, t in sketch_windows.split_runs(counts, hour):
        assert key not in got, f"{key} split twice"
        assert t.column_names == ["slice_start", "item_id", "count",
                                  "item_hash"]
        assert t["item_hash"].to_pylist() == hash64(t["item_id"]).tolist()
        got[key] = sorted(zip(*t.drop(["item_hash"]).to_pydict().values()))
    assert got == {
        ("click", 0): [(0, "a", 3), (60_000, "c", 5)],
        ("play", 0): [(0, "d", 6), (60_000, "a", 4)],
        ("play", hour): [(hour, "b", 1), (hour + 60_000, "a", 2)],
        ("*", 0): [(0, "a", 3), (0, "d", 6), (60_000, "a", 4),
                   (60_000, "c", 5)],
        ("*", hour): [(hour, "b", 1), (hour + 60_000, "a", 2)]}
    assert sketch_windows.split_runs(
        schema.SLICE_COUNTS_SCHEMA.empty_table(), hour) == []


def test_slice_run_adds_in_bulk_merges_by_slice_and_pickles_as_sketches():
    import functools
    import pickle
    new = functools.partial(sketches.new_sketch, "cms")
    run = sketch_windows.SliceRun(new, flush_rows=5)
    rows = pa.table({"slice_start": [0, 60_000], "item_id": ["a", "b"],
                     "count": [2, 1]})
    run.add(rows).add(rows)
    assert run._sketches == {}  # 4 rows pending, below 5
    restored = pickle.loads(pickle.dumps(run))
    assert {s: ranked_items(x) for s, x in restored.flush().items()} == {
        0: [("a", 4)], 60_000: [("b", 2)]}
    run.add(rows).add(rows).add(rows)  # 6 rows pending: flushed
    assert sum(x.total for x in run._sketches.values()) == 15
    other = sketch_windows.SliceRun(new)
    other.add(pa.table({"slice_start": [60_000, 120_000],
                        "item_id": ["b", "c"], "count": [7, 1]}))
    merged = run.merge([other]).flush()
    assert {s: ranked_items(x) for s, x in merged.items()} == {
        0: [("a", 10)], 60_000: [("b", 12)], 120_000: [("c", 1)]}
    # The other run is neither modified nor shared: adding to the merge
    # leaves it as it was.
    run.add(pa.table({"slice_start": [120_000], "item_id": ["c"],
                      "count": [5]})).flush()
    assert {s: ranked_items(x) for s, x in other.flush().items()} == {
        60_000: [("b", 7)], 120_000: [("c", 1)]}
    assert ranked_items(run.flush()[120_000]) == [("c", 6)]


@pytest.mark.parametrize("method", sketches.METHODS)
def test_add_slice_rows_updates_held_sketches_and_makes_the_rest(method):
    new = functools.partial(sketches.new_sketch, method, 4096)
    held = new().update(["a"], [1])
    by_start = {60_000: held}
    rows = pa.table({"slice_start": [120_000, 60_000, 0, 120_000, 0],
                     "item_id": ["x", "a", "b", "x", "c"],
                     "count": [1, 2, 3, 4, 5]})
    assert sketch_windows.add_slice_rows(by_start, new, rows) == [
        0, 60_000, 120_000]
    assert by_start[60_000] is held
    expected = {0: new().update(["b", "c"], [3, 5]),
                60_000: new().update(["a"], [3]),
                120_000: new().update(["x"], [5])}
    assert {s: ranked_items(x) for s, x in by_start.items()} == {
        s: ranked_items(x) for s, x in expected.items()}
    assert sketch_windows.add_slice_rows(by_start, new, rows.slice(0, 0)) == []


def ranked_items(sketch):
    return [(r["item_id"], r["count"]) for r in sketch.top_k(5).to_pylist()]


# --- The guaranteed flag against the brute-force oracle --------------------

#: 2024-05-17T00:00Z starts a 30-day window: streams around it cross minute,
#: hour, day and 30-day boundaries.
T30 = 19860 * schema.DAY_MS
FLAG_SPECS = ["1m", "1h", "1h/1m", "1d/1h", "30d", "30d/1d"]


def _events(rows):
    return [oracle.Event(f"e{i}", f"i{item}", etype,
                         T30 + minute * schema.MINUTE_MS + second * 1000,
                         None, weight)
            for i, (item, etype, minute, second, weight) in enumerate(rows)]


def _partials(events, shards=2):
    """Exact minute partials of the events, one table per de-duplication
    shard (as ``DedupSliceCounts`` emits them: items repeat across
    shards)."""
    tables = []
    for s in range(shards):
        counts = oracle.slice_counts(events[s::shards], schema.MINUTE_MS)
        tables.append(pa.table(
            {"event_type": [t for t, _, _ in counts],
             "slice_start": [m for _, m, _ in counts],
             "item_id": [i for _, _, i in counts],
             "count": list(counts.values())},
            schema=schema.SLICE_COUNTS_SCHEMA))
    return tables


def _pane_levels(partials, method, budget):
    """The sketches of every 1m, 1h and 1d slice, built as the pipeline
    builds them: minute sketches fed every shard's rows an hour at a time
    (``SliceRun``), hours and days merged from the level below
    (``ApproximateSlices``)."""
    new = functools.partial(sketches.new_sketch, method, budget)
    runs = collections.defaultdict(lambda: sketch_windows.SliceRun(new))
    for table in partials:
        for key, rows in sketch_windows.split_runs(table, schema.HOUR_MS):
            runs[key].add(rows)
    levels = {"1m": {(etype, start): sketch
                     for (etype, _), run in runs.items()
                     for start, sketch in run.flush().items()}}
    for name, finer in (("1h", "1m"), ("1d", "1h")):
        size = WindowSpec.parse(name).length_ms
        groups = collections.defaultdict(list)
        for (etype, start), sketch in levels[finer].items():
            groups[(etype, start - start % size)].append(sketch)
        levels[name] = {key: sketches.merge_many(group)
                        for key, group in groups.items()}
    return levels


def _approximate_rows(levels, spec, k, grouped=False):
    """Ranked windows of one spec as ``ApproximateWindows`` computes them:
    pane sketches keyed by block (``blocks_of``), each block ranked by
    ``rank_blocks`` alone or, ``grouped``, with the others of its group
    (``group_of``), as sparse blocks are."""
    length, n, step = sketch_windows.pane_plan(spec)
    pane_ms = WindowSpec.parse(length).length_ms
    blocks = collections.defaultdict(dict)
    for (etype, start), sketch in levels[length].items():
        for block, _ in sketch_windows.blocks_of(start // pane_ms, n, step):
            group = sketch_windows.group_of(block) if grouped else block
            blocks[(etype, group)].setdefault(block, {})[
                start // pane_ms] = sketch
    tables = [sketch_windows.rank_blocks(
        spec, k, etype, list(held),
        list({p: s for panes in held.values() for p, s in panes.items()
              }.items()), emitted_at_ms=0)
        for (etype, _), held in blocks.items()]
    return pa.concat_tables(tables).to_pylist()


def _true_windows(events, spec):
    """{(event_type, window_start): {item: true count}}: the oracle's
    ranking of every window, uncut."""
    windows = collections.defaultdict(dict)
    for etype, start, _, item, count, _ in oracle.ranked_windows(
            events, spec.length_ms, spec.slide_ms, None):
        windows[(etype, start)][item] = count
    return windows


event_rows = st.lists(st.tuples(
    st.integers(0, 39),                 # item: more than a small sketch holds
    st.sampled_from(["play", "click"]),
    st.integers(-150, 150),             # minute around T30
    st.integers(0, 59),
    st.one_of(st.just(1), st.integers(1, 9))), min_size=1, max_size=200)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(rows=event_rows, k=st.integers(1, 6),
       method=st.sampled_from(sketches.METHODS),
       budget=st.sampled_from([512, 1024]), grouped=st.booleans())
def test_guaranteed_flag_is_never_wrong(rows, k, method, budget, grouped):
    """Every approximate ranked-window row: its bounds contain the true
    count, and if it is flagged guaranteed, the item is in the true top-k of
    the window whatever the tie rule (fewer than k other items reach its
    count), so in the oracle's top-k too. Windows are those the oracle
    has."""
    events = _events(rows)
    levels = _pane_levels(_partials(events), method, budget)
    for name in FLAG_SPECS:
        spec = WindowSpec.parse(name)
        true = _true_windows(events, spec)
        got = _approximate_rows(levels, spec, k, grouped)
        assert {(r["event_type"], r["window_start"].timestamp() * 1000)
                for r in got} == set(true), name
        for r in got:
            counts = true[(r["event_type"],
                           int(r["window_start"].timestamp() * 1000))]
            c = counts.get(r["item_id"], 0)
            assert r["lower_bound"] <= c <= r["upper_bound"], (name, r, c)
            assert r["method"] == method and r["rank"] <= k
            if r["guaranteed"]:
                others = sum(v >= c for i, v in counts.items()
                             if i != r["item_id"])
                assert others <= k - 1, (name, r, counts)
                assert r["item_id"] in dict(oracle.ranked(counts, k)), r


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(rows=event_rows, k=st.integers(1, 6),
       method=st.sampled_from(sketches.METHODS),
       budget=st.sampled_from([512, 1024]))
def test_blocks_ranked_in_groups_rank_as_alone(rows, k, method, budget):
    levels = _pane_levels(_partials(_events(rows)), method, budget)
    for name in FLAG_SPECS:
        spec = WindowSpec.parse(name)
        alone, grouped = ([tuple(r.values()) for r in _approximate_rows(
            levels, spec, k, g)] for g in (False, True))
        assert sorted(alone) == sorted(grouped), name


@settings(max_examples=25, deadline=None)
@given(rows=event_rows, k=st.integers(1, 6))
def test_exact_rows_are_the_oracle_top_k_and_all_guaranteed(rows, k):
    events = _events(rows)
    counts = pa.concat_tables(_partials(events))
    for name in FLAG_SPECS:
        spec = WindowSpec.parse(name)
        merged = ranking.merge_window_top_k(
            [ranking.shard_window_top_k(ranking.with_all_types(counts), spec,
                                        k)], k)
        out = ranking.to_ranked_windows(merged, spec, emitted_at_ms=0)
        assert out["guaranteed"].to_pylist() == [True] * out.num_rows
        assert sorted(
            (r["event_type"], int(r["window_start"].timestamp() * 1000),
             r["rank"], r["item_id"], r["count"], r["window_total"])
            for r in out.to_pylist()) == oracle.ranked_windows(
                events, spec.length_ms, spec.slide_ms, k)


def test_rows_with_bounds_but_no_flags_claim_nothing():
    # A caller passing bounds without flags (not the sketches' path) gets
    # False, never an unproven True.
    spec = WindowSpec.parse("1h")
    merged = pa.table({"event_type": ["play"], "window_start": [0],
                       "rank": pa.array([1], pa.int32()), "item_id": ["x"],
                       "count": [4], "window_total": [9]})
    out = ranking.to_ranked_windows(merged, spec, emitted_at_ms=0,
                                    lower=pa.array([3]), upper=pa.array([5]))
    assert out["guaranteed"].to_pylist() == [False]
    assert out.schema == schema.RANKED_WINDOWS_SCHEMA
