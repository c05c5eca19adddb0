"""The approximate stream's panes (``SketchPanes``, Beam-free) against the
oracle: bounds that hold the true counts of every window's latest pane,
exact answers where the sketch holds every item, pane timing rules, late
panes, slice sketches written once closed, and memory bounded by the
windows, not the span."""
import collections
import random

import numpy as np
import pyarrow as pa
import pytest

import oracle
from topk.approx import sketches
from topk.core import counting, schema
from topk.core.windows import WindowSpec
from topk.streaming import dedup as stream_dedup
from topk.streaming.panes import next_window_end
from topk.streaming import sketch_panes
from topk.streaming.sketch_panes import SketchPanes

MIN = schema.MINUTE_MS
T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z
SPECS = [WindowSpec.parse(n) for n in ("1m", "1h", "1h/1m")]


def _partials(events, read_at_ms):
    table = pa.table({
        "item_id": [e.item_id for e in events],
        "event_type": [e.event_type for e in events],
        "ts": pa.array([e.ts for e in events], pa.int64()),
        "weight": pa.array([e.weight for e in events], pa.int64()),
    })
    return counting.count_slices(table).replace_schema_metadata(
        {stream_dedup.READ_AT: str(read_at_ms)})


def _events(seed, n, items, span_min=120):
    rnd = random.Random(seed)
    return [oracle.Event(f"e{i}", f"item-{int(rnd.paretovariate(1.1)) % items:03d}",
                         rnd.choice(["click", "play"]),
                         T0 + rnd.randrange(span_min * MIN), None,
                         rnd.choice([1, 1, 3]))
            for i in range(n)]


def run(events, methods, budget, lateness_ms=10 * MIN, batch=50,
        skew_ms=30_000, specs=SPECS, read_ahead_ms=None):
    """Feed ``events`` in time order in batches, an early firing after each
    batch and on-time firings up to the watermark; then close everything.
    ``read_ahead_ms``: the input was read that far past each batch (a
    catch-up), and closes step as the Beam stage's
    (``SketchPanes.close_after_firing``), not one window end at a time.
    Returns (ranked rows, sketch rows, refused partials, max held)."""
    panes = SketchPanes(specs, 5, methods, budget, lateness_ms)
    ranked, written, refused, held = [], [], [], [0]
    now, ahead = 0, []

    def fire(pending, watermark_ms=None):
        # As the Beam stage does: what the firing held back comes back.
        firing = panes.fire(pending, now, watermark_ms, ahead=ahead)
        ahead[:] = [firing.ahead] if firing.ahead.num_rows else []
        held[0] = max(held[0], panes.held_slices())
        ranked.extend(firing.ranked.to_pylist())
        written.extend(firing.sketches.to_pylist())
        refused.extend(firing.late.to_pylist())

    def next_close():
        held_back = pa.concat_tables(
            [schema.SLICE_COUNTS_SCHEMA.empty_table()] + ahead)
        if read_ahead_ms is not None:
            return panes.close_after_firing(
                held_back, newest + read_ahead_ms, skew_ms)
        later = np.unique(held_back["slice_start"].to_numpy())
        due = [d for d in (panes.next_close(), next_window_end(
            specs, later, panes.watermark_ms)) if d is not None]
        return min(due) if due else None

    events = sorted(events, key=lambda e: e.ts)
    watermark = stream_dedup.NO_WATERMARK
    newest = events[0].ts
    for i in range(0, len(events), batch):
        part = events[i:i + batch]
        now += 1000
        newest = part[-1].ts
        fire([_partials(part, newest)])
        watermark = max(watermark, newest - skew_ms)
        due = next_close()
        while due is not None and due <= watermark:
            fire([], watermark_ms=due)
            due = next_close()
    newest += 365 * 24 * 60 * MIN  # the end of input passes every window
    due = next_close()
    while due is not None:
        fire([], watermark_ms=due)
        due = next_close()
    return ranked, written, refused, held[0], panes


def latest_panes(ranked):
    """(spec, method, event type, window start) -> rows of its latest
    pane, by emitted_at."""
    newest = {}
    for r in ranked:
        spec = r["window_length"] + (f"/{r['slide']}" if r["slide"] else "")
        key = (spec, r["method"], r["event_type"], r["window_start"])
        at = r["emitted_at"]
        if key not in newest or at > newest[key][0]:
            newest[key] = (at, [r])
        elif at == newest[key][0]:
            newest[key][1].append(r)
    return {key: sorted(rows, key=lambda r: r["rank"])
            for key, (_, rows) in newest.items()}


def truth(events, spec, event_type, start_ms):
    end = start_ms + spec.length_ms
    return collections.Counter({e.item_id: 0 for e in events}) + \
        collections.Counter(_weights(events, event_type, start_ms, end))


def _weights(events, event_type, start, end):
    out = collections.Counter()
    for e in events:
        if start <= e.ts < end and event_type in ("*", e.event_type):
            out[e.item_id] += e.weight
    return out


@pytest.mark.parametrize("method", ["cms", "frequent_items"])
def test_bounds_hold_the_true_counts_of_every_window(method):
    events = _events(3, 3000, 400)
    ranked, _, refused, _, _ = run(events, [method], 2048)
    assert not refused
    latest = latest_panes(ranked)
    assert latest
    for (name, _, event_type, start), rows in latest.items():
        spec = WindowSpec.parse(name)
        start_ms = int(start.timestamp() * 1000)
        true = _weights(events, event_type, start_ms,
                        start_ms + spec.length_ms)
        assert rows[0]["window_total"] == sum(true.values())
        for r in rows:
            assert r["lower_bound"] <= true[r["item_id"]] <= r["upper_bound"]
        # A guaranteed row is in the true top 5 (count desc, id asc).
        top = {item for item, _ in oracle.ranked(true, 5)}
        assert all(r["item_id"] in top for r in rows if r["guaranteed"])


def _on_time(ranked):
    """Each window's on-time pane, without when it was emitted."""
    return sorted(
        tuple(sorted((k, str(v)) for k, v in r.items()
                     if k not in ("emitted_at", "pane_index",
                                  "input_watermark")))
        for r in ranked if r["pane_timing"] == "on_time")


def test_a_catch_up_closes_many_windows_a_firing_with_the_same_answers():
    """Read far ahead of the watermark, the stage closes every window the
    read has passed in one firing (``close_after_firing``) instead of one
    per window end; each window's on-time pane is the same."""
    events = _events(5, 3000, 300, span_min=6 * 60)
    fine = run(events, ["cms"], 2048, batch=500)
    coarse = run(events, ["cms"], 2048, batch=500,
                 read_ahead_ms=6 * 60 * MIN)
    assert _on_time(coarse[0]) == _on_time(fine[0])
    firings = [len({r["emitted_at"] for r in ranked
                    if r["pane_timing"] == "on_time"})
               for ranked in (fine[0], coarse[0])]
    assert firings[1] * 10 < firings[0], firings


def test_live_the_next_close_is_the_next_window_end():
    """Read only up to the watermark (live), the close after a firing is
    the next window end: no window waits for a coarser step."""
    specs = [WindowSpec.parse("1m"), WindowSpec.parse("1h")]
    panes = SketchPanes(specs, 5, ["cms"], 2048, 10 * MIN)
    events = _events(7, 200, 50, span_min=30)
    newest = max(e.ts for e in events)
    firing = panes.fire([_partials(events, newest)], 1000,
                        watermark_ms=T0 + 10 * MIN)
    due = panes.close_after_firing(firing.ahead, T0 + 10 * MIN, 0)
    assert due == T0 + 11 * MIN


def test_a_sketch_that_holds_every_item_answers_exactly():
    events = _events(5, 1500, 20)
    ranked, _, _, _, _ = run(events, ["frequent_items"], 64 * 1024)
    latest = latest_panes(ranked)
    for spec in SPECS:
        expected = sorted(oracle.ranked_windows(
            events, spec.length_ms, spec.slide_ms, 5))
        got = sorted(
            (et, int(start.timestamp() * 1000), r["rank"], r["item_id"],
             r["count"], r["window_total"])
            for (name, _, et, start), rows in latest.items()
            if name == spec.name for r in rows)
        assert got == expected, spec.name


def test_one_on_time_pane_per_window_and_indexes_in_order():
    events = _events(7, 2000, 50)
    ranked, _, _, _, _ = run(events, ["cms", "frequent_items"], 4096)
    timeline = collections.defaultdict(list)
    for r in sorted(ranked, key=lambda r: r["emitted_at"]):
        key = (r["window_length"], r["slide"], r["method"], r["event_type"],
               r["window_start"])
        if not timeline[key] or timeline[key][-1] != (r["pane_timing"],
                                                      r["pane_index"]):
            timeline[key].append((r["pane_timing"], r["pane_index"]))
    assert any(t == "early" for seq in timeline.values() for t, _ in seq)
    for key, seq in timeline.items():
        timings = [t for t, _ in seq]
        assert timings.count("on_time") == 1, key
        assert set(timings[timings.index("on_time") + 1:]) <= {"late"}, key
        indexes = [i for _, i in seq]
        assert indexes == sorted(set(indexes)), key


def test_late_events_within_the_lateness_make_late_panes_beyond_are_refused():
    panes = SketchPanes([WindowSpec.parse("1m")], 3, ["frequent_items"],
                        8192, 5 * MIN)
    first = [oracle.Event(f"a{i}", "a", "click", T0 + i, None, 1)
             for i in range(3)]
    panes.fire([_partials(first, T0)], 1)
    on_time = panes.fire([], 2, watermark_ms=T0 + MIN)
    assert {r["pane_timing"] for r in on_time.ranked.to_pylist()} == {
        "on_time"}
    # Three minutes later, a late event of the first minute: a late pane.
    late = [oracle.Event("b", "b", "click", T0 + 5, None, 4)]
    panes.fire([], 3, watermark_ms=T0 + 3 * MIN)
    firing = panes.fire([_partials(late, T0 + 3 * MIN)], 4)
    rows = [r for r in firing.ranked.to_pylist()
            if r["event_type"] == "click"]
    assert [(r["pane_timing"], r["item_id"], r["count"]) for r in rows] == [
        ("late", "b", 4), ("late", "a", 3)]
    # The changed, closed minute's sketch is written again.
    assert {r["event_type"] for r in firing.sketches.to_pylist()
            if r["slice_length"] == "1m"} == {"click", "*"}
    # Beyond the lateness: refused, reported, not counted.
    panes.fire([], 5, watermark_ms=T0 + 30 * MIN)
    gone = panes.fire([_partials(late, T0 + 30 * MIN)], 6)
    assert gone.ranked.num_rows == 0
    assert sum(gone.late["count"].to_pylist()) == 4


def test_closed_slices_are_written_with_their_totals():
    events = _events(9, 1200, 30, span_min=90)
    _, written, _, _, _ = run(events, ["cms"], 4096)
    latest = {}
    for r in written:
        latest[(r["slice_length"], r["event_type"], r["slice_start"])] = r
    for size, name in ((MIN, "1m"), (60 * MIN, "1h"),
                       (24 * 60 * MIN, "1d")):
        totals = collections.Counter()
        for e in events:
            for et in (e.event_type, "*"):
                totals[(et, e.ts - e.ts % size)] += e.weight
        got = {(et, int(start.timestamp() * 1000)): r["total"]
               for (length, et, start), r in latest.items()
               if length == name}
        assert got == dict(totals), name
        for (length, _, _), r in latest.items():
            if length == name:
                assert sketches.sketch_from_bytes(r["sketch"]).total == \
                    r["total"]


def test_memory_is_bounded_by_the_windows_not_the_span():
    # Two days against six hours: the held slices do not grow with span.
    specs = [WindowSpec.parse("1h")]
    short = run(_events(11, 1000, 100, span_min=6 * 60), ["cms"], 1024,
                batch=100, specs=specs)[3]
    long = run(_events(11, 8000, 100, span_min=48 * 60), ["cms"], 1024,
               batch=100, specs=specs)[3]
    # (A day's sketch more, per type: the day level keeps the open day.)
    assert long <= short * 1.2, (short, long)
    # Far from a sketch per minute and type held (8,640).
    assert long < 48 * 60 / 4, long


def test_a_state_rebuilt_from_its_chunk_log_equals_the_live_one():
    # As the Beam stage persists it: meta() plus the changes of each
    # firing (sometimes all slices instead); the rebuild fires alike.
    events = sorted(_events(13, 1500, 40, span_min=150), key=lambda e: e.ts)
    args = (SPECS, 5, ["cms", "frequent_items"], 2048, 10 * MIN)
    live = SketchPanes(*args)
    log = []
    for n, i in enumerate(range(0, len(events), 100)):
        part = events[i:i + 100]
        live.fire([_partials(part, part[-1].ts)], n, watermark_ms=part[0].ts)
        log = [live.all_slices()] if n % 5 == 4 else log + [
            live.take_changes()]
    rebuilt = SketchPanes.from_chunks(*args, live.meta(), log)

    def held(panes):  # what a sketch answers (bytes may differ in order)
        return {(*key, start): (sketch.total, sorted(
                    sketch.top_k(50).to_pylist(), key=lambda r: r["item_id"]))
                for key, by_start in panes.slices.items()
                for start, sketch in by_start.items()}
    assert held(rebuilt) == held(live) and held(live)
    late = [oracle.Event("x", "item-000", "play", events[-1].ts - MIN, None, 2)]
    a = live.fire([_partials(late, events[-1].ts)], 10**6,
                  watermark_ms=events[-1].ts)
    b = rebuilt.fire([_partials(late, events[-1].ts)], 10**6,
                     watermark_ms=events[-1].ts)

    def rows(table):
        return sorted(table.to_pylist(), key=lambda r: sorted(
            (k, str(v)) for k, v in r.items()))
    assert rows(a.ranked) == rows(b.ranked) and a.ranked.num_rows
    assert rows(a.sketches.drop_columns(["sketch"])) == rows(
        b.sketches.drop_columns(["sketch"]))


def test_a_backlog_in_one_batch_is_sketched_as_the_watermark_nears_it():
    """Ten days of events read at once (a catch-up batch): minutes more
    than ``ABSORB_AHEAD_MS`` after the watermark wait as counts, so the
    sketches held stay those of a few hours, not one per minute of the
    backlog; the answers' bounds still hold the true counts."""
    specs = [WindowSpec.parse("1h")]
    events = _events(17, 1500, 60, span_min=10 * 24 * 60)
    minutes = len({e.ts - e.ts % MIN for e in events})
    ranked, _, refused, held, _ = run(events, ["cms"], 1024, batch=1500,
                                      specs=specs, skew_ms=0)
    assert not refused
    # Sketched as it arrived: a sketch per minute and type (and hours).
    assert held < minutes / 4, (held, minutes)
    latest = latest_panes(ranked)
    assert {(name, int(start.timestamp() * 1000))
            for name, _, _, start in latest} == {
        (s.name, int(w)) for s in specs
        for w in s.window_starts_for(np.array([e.ts for e in events]))}
    for key in random.Random(1).sample(sorted(latest), 200):
        name, _, event_type, start = key
        spec = WindowSpec.parse(name)
        start_ms = int(start.timestamp() * 1000)
        true = _weights(events, event_type, start_ms,
                        start_ms + spec.length_ms)
        assert latest[key][0]["window_total"] == sum(true.values())
        for r in latest[key]:
            assert r["lower_bound"] <= true[r["item_id"]] <= r["upper_bound"]


@pytest.mark.parametrize("early", [False, True])
def test_an_event_time_firing_emits_the_early_panes_when_told(early):
    # Prism may run a key's event-time work ahead of its processing-time
    # timer for seconds: the stage then lets an event-time firing emit
    # the early panes that are due.
    panes = SketchPanes([WindowSpec.parse("1m")], 3, ["frequent_items"],
                        8192, 5 * MIN)
    closed = [oracle.Event("a", "a", "click", T0 + 1, None, 1)]
    open_ = [oracle.Event("b", "b", "click", T0 + MIN + 1, None, 2)]
    panes.fire([_partials(closed, T0)], 1)
    firing = panes.fire([_partials(open_, T0 + MIN)], 2,
                        watermark_ms=T0 + MIN, early=early)
    got = {(r["pane_timing"], r["item_id"]) for r in firing.ranked.to_pylist()
           if r["event_type"] == "click"}
    assert ("on_time", "a") in got
    assert (("early", "b") in got) == early
    # Deferred or not, the next processing-time firing leaves nothing out.
    after = panes.fire([], 3)
    assert (("early", "b") in {
        (r["pane_timing"], r["item_id"]) for r in after.ranked.to_pylist()
        if r["event_type"] == "click"}) == (not early)


def test_pane_indexes_are_set_per_window_and_a_missing_one_is_an_error():
    rows = schema.RANKED_WINDOWS_SCHEMA.empty_table()
    starts = pa.array([3 * 60_000, 60_000, 3 * 60_000], pa.int64())
    rows = pa.table({
        name: (starts.cast(rows.schema.field(name).type)
               if name == "window_start"
               else pa.nulls(3, rows.schema.field(name).type))
        for name in rows.schema.names})
    got = sketch_panes.with_pane_index(rows, {60_000: 4, 3 * 60_000: 7,
                                              5 * 60_000: 1})
    assert got["pane_index"].to_pylist() == [7, 4, 7]
    for index in ({60_000: 4}, {60_000: 4, 5 * 60_000: 1}, {}):
        with pytest.raises(ValueError, match="no pane index"):
            sketch_panes.with_pane_index(rows, index)


@pytest.mark.parametrize("armed", [None, "earlier", "later"])
def test_a_batch_moves_the_close_only_to_an_earlier_window_end(armed):
    """``close_after_batch``: a batch changing open windows pulls the close
    timer to the earliest end among them, never pushes an armed one back;
    a batch of closed minutes only (stragglers) leaves an armed timer
    alone, and with nothing armed closes at the next watermark step."""
    watermark = T0 + 90 * MIN
    live = np.array([T0 + 95 * MIN, T0 + 130 * MIN], np.int64)
    # Closed in every spec: the 1h and 1h/1m windows holding them ended by
    # the watermark too.
    stragglers = np.array([T0 + 10 * MIN], np.int64)
    end = T0 + 96 * MIN  # the 1m and 1h/1m windows of the first minute
    assert next_window_end(SPECS, live, watermark) == end
    assert next_window_end(SPECS, stragglers, watermark) is None
    at = {None: None, "earlier": end - MIN, "later": end + 30 * MIN}[armed]
    moved = sketch_panes.close_after_batch(SPECS, live, watermark, at)
    assert moved == (None if armed == "earlier" else end)
    late = sketch_panes.close_after_batch(SPECS, stragglers, watermark, at)
    assert late == (watermark + 1 if armed is None else None)
