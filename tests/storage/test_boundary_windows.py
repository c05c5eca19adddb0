"""``topk.storage.boundary_windows`` on its own: which windows and slices
straddle a span, and the straddling rows recomputed from a run's counts
inside the span plus committed slices outside it, checked against brute
force and against a ranking of the whole merged counts."""
import collections
import os
import random
import threading

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

import oracle
from topk.approx import sketch_windows, sketches
from topk.core import counting, ranking, schema
from topk.core.windows import SUPPORTED_WINDOWS, WindowSpec
from topk.storage import boundary_windows as bw
from topk.storage import layout, tables

M, H, D = schema.MINUTE_MS, schema.HOUR_MS, schema.DAY_MS
#: 2024-05-17T00:00:00Z: a 30-day window starts here.
T30 = 19860 * D
SPECS = [WindowSpec.parse(n) for n in SUPPORTED_WINDOWS]


def overlapping_not_inside(spec, span):
    """Brute force: starts of the spec's windows overlapping ``span``
    without lying inside it."""
    s, e = span
    step = spec.step_ms
    out = []
    for w in range((s - spec.length_ms) // step * step, e + step, step):
        if w < e and w + spec.length_ms > s and not (
                w >= s and w + spec.length_ms <= e):
            out.append(w)
    return out


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_straddling_window_starts_match_brute_force(spec):
    rng = random.Random(spec.length_ms)
    spans = [(T30, T30 + D), (T30 - 7 * M, T30 + 3 * M),
             (T30 + 90 * M, T30 + 40 * D + 7 * M), (T30 + M, T30 + 2 * M)]
    for _ in range(20):
        s = T30 + rng.randrange(-2 * D, 2 * D) // M * M
        spans.append((s, s + rng.randrange(1, 4 * 24 * 60) * M))
    for span in spans:
        left, right = bw.straddling_window_starts(spec, span)
        assert (left < span[0]).all() and (right >= span[0]).all()
        assert (list(left) + list(right)
                == overlapping_not_inside(spec, span)), span
        assert len(left) <= spec.panes_per_window
        assert len(right) <= spec.panes_per_window


def test_straddling_slice_starts():
    assert bw.straddling_slice_starts((T30, T30 + D), D) == []
    assert bw.straddling_slice_starts((T30 + 5 * M, T30 + H), H) == [T30]
    assert bw.straddling_slice_starts((T30 + 5 * M, T30 + D + 3 * M), H) == [
        T30, T30 + D]
    assert bw.straddling_slice_starts((T30 + 5 * M, T30 + 6 * M), D) == [T30]


@pytest.mark.parametrize("start,end,max_ms", [
    (T30 - 7 * M, T30 + 2 * D + 3 * H + 5 * M, D),
    (T30 - 7 * M, T30 + 2 * D + 3 * H + 5 * M, H),
    (T30 + 5 * M, T30 + 50 * M, D),
    (T30, T30 + 45 * D, D),
    (T30, T30, D)])
def test_aligned_runs_tile_the_range(start, end, max_ms):
    runs = bw.aligned_runs(start, end, max_ms)
    t = start
    for name, first, stop in runs:
        size = {"1m": M, "1h": H, "1d": D}[name]
        assert size <= max_ms and first == t and first % size == 0
        assert stop > first and (stop - first) % size == 0
        t = stop
    assert t == end
    if max_ms == D and end - start >= 3 * D:
        assert any(name == "1d" for name, _, _ in runs)


# --- Recomputed rows vs a ranking of the merged counts -----------------------

def minute_counts(rng, lo, hi, n, items=("a", "b", "c", "d", "e")):
    """``SLICE_COUNTS_SCHEMA`` minute partials of ``n`` random events in
    ``[lo, hi)``."""
    ts = [rng.randrange(lo, hi) for _ in range(n)]
    return counting.count_slices(pa.table({
        "event_type": [rng.choice(("play", "click")) for _ in ts],
        "item_id": [rng.choice(items) for _ in ts],
        "ts": ts, "weight": [rng.randint(1, 3) for _ in ts]}))


def stored_slices(counts, source="batch", emitted_at=T30):
    """Stored ``slices`` rows (1m, 1h, 1d rollups) of minute partials."""
    parts = [counting.to_slices_table(counting.rollup(counts, ms), name,
                                      source, emitted_at)
             for name, ms in (("1m", M), ("1h", H), ("1d", D))]
    return tables.prepare(layout.SLICES, pa.concat_tables(parts))


def rows_of(ranked):
    return sorted(
        (r["window_length"], r["slide"] or "", r["event_type"],
         r["window_start"], r["rank"], r["item_id"], r["count"],
         r["window_total"], r["method"], r["source"], r["pane_timing"],
         r["guaranteed"])
        for r in ranked.to_pylist())


@pytest.mark.parametrize("seed,span", [
    (1, (T30 - 5 * H - 7 * M, T30 + 3 * H + 11 * M)),  # crosses midnight
    (2, (T30 + 10 * H + 30 * M, T30 + 10 * H + 31 * M)),  # one minute
    (3, (T30 - 2 * D, T30 + 2 * D)),  # whole days
    (4, (T30 + 20 * M, T30 + 2 * D + 40 * M))])
def test_recomputed_rows_equal_ranking_of_merged_counts(seed, span):
    rng = random.Random(seed)
    s, e = span
    lo, hi = T30 - 3 * D, T30 + 4 * D
    # What an earlier run committed, over everything (its rows inside the
    # span are replaced by this run's), a stream's rows and a stale
    # duplicate batch row that must not count.
    before = minute_counts(rng, lo, hi, 600)
    own = minute_counts(rng, s, e, 200)
    stream = stored_slices(minute_counts(rng, lo, hi, 300), "stream")
    stale = stored_slices(before.slice(0, 5).set_column(
        3, "count", pa.array([999] * 5, pa.int64())), emitted_at=T30 - D)
    committed = pads.dataset(pa.concat_tables(
        [stored_slices(before), stream, stale]))
    reader = bw.SliceReader(pads.dataset(stored_slices(own)), committed,
                            span)
    starts = before["slice_start"].to_numpy()
    outside = before.filter(pa.array((starts < s) | (starts >= e)))
    merged = counting.merge_counts([outside, own])

    got, replaces = bw.ranked_straddling_windows(SPECS, 2, reader,
                                                 emitted_at_ms=5)
    assert got.schema == schema.RANKED_WINDOWS_SCHEMA
    assert set(pc.unique(got["emitted_at"]).to_pylist()) <= {
        pa.scalar(5, schema.TIMESTAMP).as_py()}
    # The run's own straddling rows, minus those the recomputed rows
    # replace, plus those, are the straddling windows of all counts.
    staged = pads.dataset(tables.prepare(
        layout.RANKED_WINDOWS,
        pa.concat_tables(straddling_ranking(own, SPECS, 2, span))))
    assert replaces is not None
    kept = staged.to_table(filter=~replaces)
    assert sorted(rows_of(got) + rows_of(kept)) == rows_of(
        pa.concat_tables(straddling_ranking(merged, SPECS, 2, span)))
    assert got.num_rows > kept.num_rows

    slices, replaces = bw.straddling_slices(reader, emitted_at_ms=5)
    assert slices.schema == schema.SLICES_SCHEMA
    want = collections.Counter()
    for name, r in straddling_rollups(merged, span):
        want[(name, r["slice_start"], r["event_type"],
              r["item_id"])] += r["count"]
    # Likewise: the run's own straddling slices, minus those replaced,
    # plus the recomputed ones, are the rollups of all counts.
    cut = {(n, s_) for n, s_, _, _ in want}
    own_cut = slice_keys(stored_slices(own))
    own_cut = collections.Counter({key: c for key, c in own_cut.items()
                                   if key[:2] in cut})
    if replaces is None:
        kept = own_cut
    else:
        dropped = slice_keys(pads.dataset(stored_slices(own)).to_table(
            filter=replaces))
        assert set(dropped) <= set(own_cut)
        kept = own_cut - dropped
    assert slice_keys(slices) + kept == want
    if span == (T30 - 2 * D, T30 + 2 * D):
        assert not cut and replaces is None  # whole days: none straddles


def straddling_rollups(counts, span):
    """``(slice length, row)`` of the 1h/1d rollups of ``counts`` that
    straddle ``span``."""
    for name, ms in bw.COARSE_SLICES:
        cut = bw.straddling_slice_starts(span, ms)
        for r in counting.rollup(counts, ms).to_pylist():
            if r["slice_start"] in cut:
                yield name, r


def straddling_ranking(counts, specs, k, span):
    """The straddling windows of ``span`` in the full ranking of
    ``counts``, per spec."""
    out = []
    for spec, top in ranking.shard_top_k(counts, specs, k).items():
        ranked = ranking.to_ranked_windows(
            ranking.merge_window_top_k([top], k), spec, emitted_at_ms=0)
        starts = pc.cast(ranked["window_start"], pa.int64())
        ends = pc.cast(ranked["window_end"], pa.int64())
        inside = pc.and_(pc.greater_equal(starts, span[0]),
                         pc.less_equal(ends, span[1]))
        overlaps = pc.and_(pc.less(starts, span[1]),
                           pc.greater(ends, span[0]))
        out.append(ranked.filter(pc.and_(overlaps, pc.invert(inside))))
    return out


def slice_keys(rows):
    return collections.Counter({
        (r["slice_length"], oracle._utc_ms(r["slice_start"]),
         r["event_type"], r["item_id"]): r["count"]
        for r in rows.to_pylist()})


def test_nothing_committed_beyond_the_edges_keeps_the_runs_rows(tmp_path):
    """A first run (or one whose neighbours hold no batch slices) already
    wrote the right rows: nothing is recomputed, so they keep their
    ``emitted_at`` (and equal what a sink of the same run wrote). The
    run's own staged rows are not even read then (a first run's commit
    read them once per spec and edge for nothing): here their file is
    gone, and reading it would raise."""
    span = (T30 + 20 * M, T30 + D + 40 * M)
    own = minute_counts(random.Random(7), *span, 300)
    stream = pads.dataset(stored_slices(own, "stream"))
    path = str(tmp_path / "staged.parquet")
    pq.write_table(stored_slices(own), path)
    staged = pads.dataset(path)
    os.remove(path)
    for committed in (None, stream):
        reader = bw.SliceReader(staged, committed, span)
        rows, replaces = bw.ranked_straddling_windows(SPECS, 2, reader, 5)
        assert rows.num_rows == 0 and replaces is None
        rows, replaces = bw.straddling_slices(reader, 5)
        assert rows.num_rows == 0 and replaces is None
        assert bw.shortfall(staged, committed, span, ["exact"]) is None


# --- Approximate methods: sketches ------------------------------------------

APPROXIMATE = ("cms", "frequent_items")


def stored_sketches(counts, source="batch", emitted_at=T30,
                    budget=sketches.DEFAULT_BUDGET_BYTES):
    """Stored ``sketches`` rows (1m, 1h, 1d; per event type and all types)
    of minute partials, for both approximate methods."""
    parts = []
    for name, ms in (("1m", M), ("1h", H), ("1d", D)):
        groups = collections.defaultdict(collections.Counter)
        for r in counting.rollup(counts, ms).to_pylist():
            for et in (r["event_type"], schema.ALL_TYPES):
                groups[(et, r["slice_start"])][r["item_id"]] += r["count"]
        rows = []
        for method in APPROXIMATE:
            for (et, start), items in sorted(groups.items()):
                sketch = sketches.new_sketch(method, budget)
                sketch.update(pa.array(list(items), pa.string()),
                              pa.array(list(items.values()), pa.int64()))
                rows.append(sketch_windows.sketch_row(method, et, start,
                                                      sketch))
        parts.append(sketch_windows.sketches_table(rows, name, source,
                                                   emitted_at))
    return tables.prepare(layout.SKETCHES, pa.concat_tables(parts))


def window_counts(ranked, method):
    """``{(spec, slide, type, start): (total, sorted counts)}`` of one
    method's ranked rows."""
    out = collections.defaultdict(lambda: [0, []])
    for r in ranked.to_pylist():
        if r["method"] == method:
            key = (r["window_length"], r["slide"] or "", r["event_type"],
                   r["window_start"])
            out[key][0] = r["window_total"]
            out[key][1].append(r["count"])
    return {k: (t, sorted(c)) for k, (t, c) in out.items()}


@pytest.mark.parametrize("seed,span", [
    (1, (T30 - 5 * H - 7 * M, T30 + 3 * H + 11 * M)),  # crosses midnight
    (4, (T30 + 20 * M, T30 + 2 * D + 40 * M))])
def test_recomputed_sketch_rows_equal_the_merged_counts(seed, span):
    """The straddling windows and 1h/1d sketches of each approximate
    method, merged from the run's sketches inside the span and the
    committed batch ones outside (not a stream's, not an older write's),
    hold what the merged exact counts hold. Five items fit the default
    budget, so the sketches are exact and so must the rows be."""
    rng = random.Random(seed)
    s, e = span
    lo, hi = T30 - 3 * D, T30 + 4 * D
    before = minute_counts(rng, lo, hi, 400)
    own = minute_counts(rng, s, e, 150)
    doubled = before.set_column(3, "count", pc.multiply(before["count"], 2))
    committed = pads.dataset(pa.concat_tables([
        stored_sketches(before),
        stored_sketches(minute_counts(rng, lo, hi, 200), "stream"),
        stored_sketches(doubled, emitted_at=T30 - D)]))
    reader = bw.SketchReader(pads.dataset(stored_sketches(own)), committed,
                             span)
    starts = before["slice_start"].to_numpy()
    merged = counting.merge_counts(
        [before.filter(pa.array((starts < s) | (starts >= e))), own])

    got, replaces = bw.ranked_straddling_sketch_windows(
        SPECS, 2, reader, APPROXIMATE, emitted_at_ms=5)
    assert got.schema == schema.RANKED_WINDOWS_SCHEMA
    assert pc.all(pc.equal(got["lower_bound"], got["upper_bound"])).as_py()
    # The run's own straddling rows (its sketches are exact too), minus
    # those the recomputed rows replace, plus those, are the straddling
    # windows of all counts.
    own_rows = pa.concat_tables(straddling_ranking(own, SPECS, 2, span))
    staged = pads.dataset(tables.prepare(layout.RANKED_WINDOWS,
                                         pa.concat_tables([
        own_rows.set_column(own_rows.schema.get_field_index("method"),
                            "method", pa.array([m] * own_rows.num_rows,
                                               pa.string()))
        for m in APPROXIMATE])))
    assert replaces is not None
    kept = staged.to_table(filter=~replaces)
    want = window_counts(pa.concat_tables(
        straddling_ranking(merged, SPECS, 2, span)), "exact")
    for method in APPROXIMATE:
        assert {**window_counts(kept, method),
                **window_counts(got, method)} == want
        assert not set(window_counts(kept, method)) & set(
            window_counts(got, method))
    assert got.num_rows > kept.num_rows

    rows, replaces = bw.straddling_sketches(reader, APPROXIMATE, 5)
    assert rows.schema == schema.SKETCHES_SCHEMA
    want = collections.Counter()
    for name, r in straddling_rollups(merged, span):
        for et in (r["event_type"], schema.ALL_TYPES):
            want[(name, r["slice_start"], et)] += r["count"]
    own_sketches = pads.dataset(stored_sketches(own))
    kept = own_sketches.to_table(filter=(
        pc.field("slice_length") != "1m") if replaces is None else (
        pc.field("slice_length") != "1m") & ~replaces)
    for method in APPROXIMATE:
        totals = {(r["slice_length"], oracle._utc_ms(r["slice_start"]),
                   r["event_type"]): r["total"]
                  for r in rows.to_pylist() if r["method"] == method}
        for r in kept.to_pylist():
            key = (r["slice_length"], oracle._utc_ms(r["slice_start"]),
                   r["event_type"])
            if r["method"] == method and key[:2] in {
                    k[:2] for k in want}:
                assert key not in totals
                totals[key] = r["total"]
        assert totals == want


def test_sketches_of_other_methods_are_left_alone():
    """A run with ``cms`` only recomputes ``cms``: the committed
    ``frequent_items`` sketches are another run's, which it does not
    own."""
    span = (T30 - 5 * H, T30 + 3 * H)
    rng = random.Random(9)
    committed = pads.dataset(stored_sketches(
        minute_counts(rng, T30 - D, T30 + D, 300)))
    reader = bw.SketchReader(pads.dataset(stored_sketches(
        minute_counts(rng, *span, 100))), committed, span)
    rows, _ = bw.ranked_straddling_sketch_windows(SPECS, 2, reader, ["cms"],
                                                  5)
    assert set(rows["method"].to_pylist()) == {"cms"}
    rows, _ = bw.straddling_sketches(reader, ["cms"], 5)
    assert set(rows["method"].to_pylist()) == {"cms"}


def test_sketches_of_another_budget_are_a_clear_error():
    span = (T30 - 5 * H, T30 + 3 * H)
    rng = random.Random(10)
    committed = pads.dataset(stored_sketches(
        minute_counts(rng, T30 - D, T30 + D, 300), budget=4096))
    reader = bw.SketchReader(pads.dataset(stored_sketches(
        minute_counts(rng, *span, 100))), committed, span)
    with pytest.raises(ValueError, match="--sketch-budget-bytes"):
        bw.ranked_straddling_sketch_windows(SPECS, 2, reader, ["cms"], 5)


# --- Through the commit path (tables.commit_staged) --------------------------

def stage(output, run_id, counts, specs, k):
    """Stage a batch run's slices and ranked windows as its workers do."""
    ranked = pa.concat_tables([
        ranking.to_ranked_windows(ranking.merge_window_top_k([top], k),
                                  spec, emitted_at_ms=T30)
        for spec, top in ranking.shard_top_k(counts, specs, k).items()])
    for table, rows in ((layout.SLICES, stored_slices(counts)),
                        (layout.RANKED_WINDOWS,
                         tables.prepare(layout.RANKED_WINDOWS, ranked))):
        directory = tables.staging_dir(output, run_id, table)
        os.makedirs(directory)
        pq.write_table(rows, os.path.join(directory, "part.parquet"))


def committed_exact(output):
    """(ranked rows, {(length, start, type, item): count}) committed."""
    snap = tables.snapshot(output)
    ranked = tables.dataset(output, layout.RANKED_WINDOWS, snap).to_table()
    return rows_of(ranked), slice_keys(
        tables.dataset(output, layout.SLICES, snap).to_table())


def test_commit_staged_composes_runs_and_a_concurrent_writer_waits(
        tmp_path, monkeypatch):
    """Two runs (day 1, then the next 26 hours) committed through
    ``commit_staged`` equal one run over both; a stream commit started
    while the second computes its straddling rows waits for the batch
    commit (the lock), and both keep their rows."""
    specs = [WindowSpec.parse(n) for n in ("1h", "1d/1h", "30d", "1h/1m")]
    rng = random.Random(11)
    first = minute_counts(rng, T30 - D, T30 + 30 * M, 400)
    second = minute_counts(rng, T30 + 30 * M, T30 + D + 2 * H, 400)
    whole = str(tmp_path / "whole")
    stage(whole, "all", counting.merge_counts([first, second]), specs, 2)
    tables.commit_staged(whole, "all", ["exact"], "i", specs=specs, k=2)

    out = str(tmp_path / "out")
    stage(out, "one", first, specs, 2)
    tables.commit_staged(out, "one", ["exact"], "i1", specs=specs, k=2)
    stage(out, "two", second, specs, 2)
    real = bw.straddling_slices
    writers = []

    def with_a_concurrent_commit(reader, now):
        stream = counting.to_slices_table(minute_counts(
            rng, T30 + 2 * D, T30 + 2 * D + M, 1), "1m", "stream", now)
        writer = threading.Thread(target=tables.append,
                                  args=(out, layout.SLICES, stream))
        writer.start()
        writers.append(writer)
        writer.join(0.5)
        assert writer.is_alive()  # it waits for the batch commit
        return real(reader, now)
    monkeypatch.setattr(bw, "straddling_slices", with_a_concurrent_commit)
    tables.commit_staged(out, "two", ["exact"], "i2",
                         specs=[s.name for s in specs], k=2)
    writers[0].join(30)
    got_ranked, got_slices = committed_exact(out)
    want_ranked, want_slices = committed_exact(whole)
    assert got_ranked == want_ranked
    streamed = {key: c for key, c in got_slices.items()
                if key[1] >= T30 + 2 * D}
    assert len(streamed) == 1
    assert got_slices - collections.Counter(streamed) == want_slices
    assert [r["source"] for r in tables.history(out).to_pylist()] == [
        "batch", "batch", "stream"]


# --- A run lacking committed events ------------------------------------------

def _late_file(rng):
    """(hour-0 counts, the next file's counts: hour 1 and one late event at
    00:30:10, its minute span)."""
    first = minute_counts(rng, T30, T30 + H, 300)
    late = counting.count_slices(pa.table({
        "event_type": ["play"], "item_id": ["a"], "ts": [T30 + 30 * M + 10],
        "weight": [1]}))
    second = counting.merge_counts([minute_counts(rng, T30 + H, T30 + 2 * H,
                                                  300), late])
    return first, second, (T30 + 30 * M, T30 + 2 * H)


def test_shortfall_names_committed_minutes_a_run_lacks():
    first, second, span = _late_file(random.Random(12))
    committed = pads.dataset(stored_slices(first))
    lost = bw.shortfall(pads.dataset(stored_slices(second)), committed,
                        span, ["exact"])
    minutes = {r["slice_start"] for r in first.to_pylist()
               if r["slice_start"] >= span[0]}
    assert lost.startswith(f"{len(minutes)} committed minute(s)"), lost
    assert "2024-05-17T00:30:00" in lost
    # A rerun, or an input holding the committed one: nothing lost.
    both = counting.merge_counts([first, second])
    for own in (first, both):
        assert bw.shortfall(pads.dataset(stored_slices(own)), committed,
                            span, ["exact"]) is None
    # Stream rows are not a batch run's to lose.
    streamed = pads.dataset(stored_slices(first, source="stream"))
    assert bw.shortfall(pads.dataset(stored_slices(second)), streamed, span,
                        ["exact"]) is None


def test_shortfall_of_an_approximate_run_compares_sketch_totals():
    first, second, span = _late_file(random.Random(13))
    committed = pads.dataset(stored_sketches(first))
    own = pads.dataset(stored_sketches(second))
    lost = bw.shortfall(own, committed, span, ["cms"])
    assert lost is not None and "cms" in lost and "total" in lost, lost
    assert bw.shortfall(pads.dataset(stored_sketches(
        counting.merge_counts([first, second]))), committed, span,
        ["frequent_items"]) is None


def test_commit_staged_refuses_to_lose_committed_counts(tmp_path):
    """Nothing committed (the staged files stay, for a runner that
    retries the step, until maintenance); ``replace`` commits."""
    specs = [WindowSpec.parse("1h")]
    first, second, _ = _late_file(random.Random(14))
    out = str(tmp_path / "out")
    stage(out, "one", first, specs, 2)
    tables.commit_staged(out, "one", ["exact"], "i1", specs=specs, k=2)
    before = committed_exact(out)
    stage(out, "two", second, specs, 2)
    with pytest.raises(tables.SpanConflict, match="--replace-span"):
        tables.commit_staged(out, "two", ["exact"], "i2", specs=specs, k=2)
    assert committed_exact(out) == before
    assert tables.history(out).num_rows == 1
    with pytest.raises(tables.SpanConflict):  # a retry of the step
        tables.commit_staged(out, "two", ["exact"], "i2", specs=specs, k=2)
    tables.commit_staged(out, "two", ["exact"], "i2", specs=specs, k=2,
                         replace=True)
    assert not os.path.exists(os.path.join(out, tables.STAGING))
    _, slices = committed_exact(out)
    assert sum(c for (length, start, *_), c in slices.items()
               if length == "1m" and start >= T30 + 30 * M) == sum(
        second["count"].to_pylist())
