"""Streaming dedup, lateness and panes (Beam-free) against the oracle.

``simulate`` drives ``SeenIds``, ``ShardPanes`` and ``PaneMerge`` the way
``transforms/stream_topk.py`` wires them (dedup shards -> item shards ->
per-spec merge), with a watermark that follows the newest event time minus a
skew, early firings after every batch and on-time firings at window ends.
"""
import collections
import random

import hypothesis.strategies as st
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings

import oracle
from topk.core import counting, ranking, schema, sharding
from topk.streaming import dedup as stream_dedup
from topk.streaming import panes as stream_panes
from topk.core.windows import WindowSpec

MIN = schema.MINUTE_MS
T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z


def _table(events) -> pa.Table:
    return pa.table({
        "event_id": [e.event_id for e in events],
        "item_id": [e.item_id for e in events],
        "event_type": [e.event_type for e in events],
        "ts": pa.array([e.ts for e in events], pa.int64()),
        "user_id": pa.array([None] * len(events), pa.string()),
        "weight": pa.array([e.weight for e in events], pa.int64()),
    }, schema=schema.EVENT_SCHEMA)


def _split(table, column, shards):
    if table.num_rows == 0:
        return []
    return sharding.split_by_shard(
        table, sharding.shard_of(table[column], shards), shards)


def simulate(batches, specs, k, lateness_ms, skew_ms, shards=3):
    """Returns (panes, late events, admitted events, refused partials);
    ``panes`` are ``(spec, timing, merged rows, pane index by window)`` in
    emission order; refused partials are what item shards set aside as late
    (``ShardFiring.late``: events a dedup shard admitted by an older
    watermark than the item shard's by then).

    As the stages do: partials carry their batch's minutes to every item
    shard (``TOUCHED``); item shards fire coarsely (``coarse_close``) and
    report the watermark they closed through with their on-time panes; a
    merge closes a window once every shard reported past its end.
    """
    seen = [stream_dedup.SeenIds() for _ in range(shards)]
    item = [stream_panes.ShardPanes(specs, k, lateness_ms)
            for _ in range(shards)]
    merges = {s: stream_panes.PaneMerge(s, k, lateness_ms, shards)
              for s in specs}
    pending = [[] for _ in range(shards)]
    read = [stream_dedup.NO_WATERMARK] * shards  # newest read time per shard
    panes, late, admitted, refused = [], [], [], []
    watermark = stream_dedup.NO_WATERMARK
    now = [0]

    rnd = random.Random(len(batches))
    inflight = []  # shard panes on their way to the merge

    def emit(shard, firing):
        if firing.late.num_rows:
            refused.append(firing.late)
        closed = firing.closed_through_ms
        reported = set()
        for spec, timing, top in firing.windows:
            report = ((firing.closed_from_ms, closed)
                      if timing == stream_panes.ON_TIME else None)
            if report is not None:
                reported.add(spec.key)
            inflight.append((spec, shard, timing, top, firing.emitted_at_ms,
                             report))
        if closed is not None:
            empty = ranking.WindowTopK(
                ranking.CANDIDATES_SCHEMA.empty_table(),
                ranking.TOTALS_SCHEMA.empty_table())
            for spec in specs:
                if spec.key not in reported:
                    inflight.append((spec, shard, stream_panes.ON_TIME, empty,
                                     firing.emitted_at_ms,
                                     (firing.closed_from_ms, closed)))

    def deliver(everything):
        # Runners do not keep order between elements: any pane may arrive
        # late, even after a newer pane of the same shard; a report
        # arrives with the on-time panes it vouches for.
        rnd.shuffle(inflight)
        for pane in list(inflight):
            if everything or rnd.random() < 0.7:
                inflight.remove(pane)
                spec, shard, timing, top, version, report = pane
                merge = merges[spec]
                if report is not None:
                    merge.report(shard, *report)
                wm = merge.shards_watermark()
                for name, merged, index in merge.advance(
                        [(shard, version, timing, top)],
                        wm if wm > stream_dedup.NO_WATERMARK else None):
                    panes.append((spec, name, merged, index))

    def close_due(s):
        # As the stage sets its timer: the next window end of what it
        # counted or was told of, and of what waits in its pending bag,
        # coarsely.
        due = [item[s].next_close(), stream_panes.next_window_end(
            specs, stream_panes.touched_minutes(pending[s]),
            item[s].watermark_ms)]
        due = [d for d in due if d is not None]
        return stream_panes.coarse_close(min(due) if due else None, read[s],
                                         skew_ms, item[s].held_minutes())

    for batch in batches:
        horizon = stream_dedup.late_horizon(watermark, lateness_ms)
        # As the source stamps a batch: its oldest time, never behind the
        # watermark.
        read_at = max(min(e.ts for e in batch), watermark)
        for d, part in _split(_table(batch), "event_id", shards):
            fresh, gone, _ = seen[d].admit(part, horizon)
            late.extend(gone.to_pylist())
            admitted.extend(fresh.to_pylist())
            if not fresh.num_rows:
                continue
            partials = counting.count_slices(fresh)
            minutes = np.unique(partials["slice_start"].to_numpy())
            parts = dict(_split(partials, "item_id", shards))
            for s in range(shards):  # every shard hears of the minutes
                pending[s].append(stream_panes.with_touched(
                    parts.get(s, partials.slice(0, 0)), minutes, read_at))
                read[s] = max(read[s], read_at)
        now[0] += 1000
        for s in range(shards):  # early (processing-time) firing, or not
            if rnd.random() < 0.6:  # yet: then an event-time one takes it
                emit(s, item[s].fire(pending[s], now[0]))
                pending[s] = []
        newest = max(e.ts for e in batch)
        watermark = max(watermark, newest - skew_ms)
        for s in range(shards):  # on-time (event-time) firings
            due = close_due(s)
            while due is not None and due <= watermark:
                emit(s, item[s].fire(pending[s], now[0], watermark_ms=due))
                pending[s] = []
                due = close_due(s)
        for d in range(shards):
            seen[d].expire(stream_dedup.late_horizon(watermark, lateness_ms))
        deliver(everything=False)
    # End of input: the watermark passes everything.
    for s in range(shards):
        if pending[s]:
            emit(s, item[s].fire(pending[s], now[0]))
        due = item[s].next_close()
        while due is not None:
            emit(s, item[s].fire([], now[0], watermark_ms=due))
            due = item[s].next_close()
    deliver(everything=True)
    return panes, late, admitted, refused


def _events(rows):
    return [oracle.Event(r["event_id"], r["item_id"], r["event_type"],
                         r["ts"], None, r["weight"]) for r in rows]


def _latest(panes, spec):
    latest = {}
    for s, _, merged, _ in panes:
        if s != spec:
            continue
        for row in merged.to_pylist():
            latest.setdefault((row["event_type"], row["window_start"]), {})
        for (et, w) in {(r["event_type"], r["window_start"])
                        for r in merged.to_pylist()}:
            latest[(et, w)] = [
                (r["event_type"], r["window_start"], r["rank"], r["item_id"],
                 r["count"], r["window_total"])
                for r in merged.to_pylist()
                if r["event_type"] == et and r["window_start"] == w]
    return sorted(row for rows in latest.values() for row in rows)


def _stream(seed, n, disorder_ms, late_share, items=12):
    rnd = random.Random(seed)
    events = []
    for i in range(n):
        ts = T0 + i * 2_000 + rnd.randrange(-disorder_ms, disorder_ms + 1)
        if rnd.random() < late_share:
            ts -= 3 * 3_600_000  # hours behind: always late
        events.append(oracle.Event(
            f"e{i}", f"item-{int(rnd.paretovariate(1.2)) % items:02d}",
            rnd.choice(["click", "play"]), ts, None, rnd.choice([1, 1, 2])))
    events += [events[j] for j in rnd.sample(range(n), n // 20)]  # copies
    order = sorted(range(len(events)),
                   key=lambda j: (events[j].ts + rnd.randrange(0, 30_000)))
    arrived = [events[j] for j in order]
    size = rnd.randint(5, 40)
    return [arrived[i:i + size] for i in range(0, len(arrived), size)]


SPECS = [WindowSpec.parse("1m"), WindowSpec.parse("1h"),
         WindowSpec.parse("1h/1m")]


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000), late_share=st.sampled_from([0, 0.03]))
def test_latest_panes_equal_the_oracle_of_the_admitted_events(seed,
                                                             late_share):
    batches = _stream(seed, 400, 20_000, late_share)
    panes, late, admitted, refused = simulate(batches, SPECS, 3, 2 * MIN,
                                              10_000)
    sent = [e for b in batches for e in b]
    admitted_events = _events(admitted)
    # Nothing lost, nothing counted twice: every distinct id is either
    # counted once or reported late.
    assert len({e.event_id for e in admitted_events}) == len(admitted_events)
    late_ids = {r["event_id"] for r in late}
    assert ({e.event_id for e in admitted_events} | late_ids
            == {e.event_id for e in sent})
    counted = _minus(admitted_events, refused)
    for spec in SPECS:
        assert _latest(panes, spec) == sorted(oracle.ranked_windows(
            counted, spec.length_ms, spec.slide_ms, 3)), spec.name


def _minus(events, refused):
    """``events`` less the refused partial counts, as one event per
    (event type, minute, item) with the remaining weight (windows only see
    those sums)."""
    sums = collections.Counter()
    for e in events:
        sums[(e.event_type, e.ts - e.ts % MIN, e.item_id)] += e.weight
    for table in refused:
        for r in table.to_pylist():
            sums[(r["event_type"], r["slice_start"], r["item_id"])] -= r[
                "count"]
    assert min(sums.values(), default=0) >= 0  # refused only what was counted
    return [oracle.Event(f"sum-{i}", item, event_type, minute, None, weight)
            for i, ((event_type, minute, item), weight)
            in enumerate(sorted(sums.items())) if weight]


def test_pane_timing_rules():
    batches = _stream(7, 800, 20_000, 0.0)
    # Copies of early events resent once the watermark is past their
    # window, but within the allowed lateness: late panes, counted once.
    batches.append([e._replace(event_id=e.event_id + "-resent")
                    for e in batches[3]])
    panes, late, admitted, _ = simulate(batches, SPECS, 3, 60 * MIN, 10_000)
    assert not late
    timeline = collections.defaultdict(list)
    for spec, timing, merged, index in panes:
        for w in set(merged["window_start"].to_pylist()):
            timeline[(spec, w)].append((timing, index[w]))
    late_windows = 0
    for key, seq in timeline.items():
        timings = [t for t, _ in seq]
        assert timings.count("on_time") == 1, key
        first_on_time = timings.index("on_time")
        assert set(timings[:first_on_time]) <= {"early"}, key
        assert set(timings[first_on_time + 1:]) <= {"late"}, key
        assert [i for _, i in seq] == list(range(len(seq))), key
        late_windows += "late" in timings
    assert late_windows > 0
    assert any("early" in [t for t, _ in s] for s in timeline.values())


def test_an_event_within_the_lateness_is_never_dropped():
    # The watermark is 1 ms past a window's end; an event of that window
    # is late for the window but within the lateness: counted.
    seen = stream_dedup.SeenIds()
    event = oracle.Event("x", "a", "click", T0 + 59_999, None, 1)
    horizon = stream_dedup.late_horizon(T0 + MIN + 1, 5 * MIN)
    fresh, late, _ = seen.admit(_table([event]), horizon)
    assert fresh.num_rows == 1 and late.num_rows == 0
    # ... and it becomes late exactly when its minute ended the allowed
    # lateness before the watermark.
    assert stream_dedup.late_horizon(T0 + 6 * MIN - 1, 5 * MIN) <= event.ts
    assert stream_dedup.late_horizon(T0 + 6 * MIN, 5 * MIN) > event.ts


def test_seen_ids_survive_a_state_round_trip_and_expire_by_minute():
    seen = stream_dedup.SeenIds()
    events = [oracle.Event(f"e{i}", "a", "click", T0 + i * 20_000, None, 1)
              for i in range(9)]  # 3 minutes, 3 events each
    _, _, chunk = seen.admit(_table(events), stream_dedup.NO_WATERMARK)
    restored = stream_dedup.SeenIds([chunk.slice(0, 4), chunk.slice(4)])
    assert len(restored) == 9 and restored.minutes() == [T0, T0 + MIN,
                                                         T0 + 2 * MIN]
    fresh, _, _ = restored.admit(_table(events[:2]), stream_dedup.NO_WATERMARK)
    assert fresh.num_rows == 0
    margin = stream_dedup.RETENTION_MARGIN_MS
    assert not restored.expire(T0 + MIN)  # kept for the margin
    assert restored.expire(T0 + MIN + margin) and restored.minutes() == [
        T0 + MIN, T0 + 2 * MIN]
    # Re-read from the compacted table: the same set.
    again = stream_dedup.SeenIds([restored.to_table()])
    assert len(again) == 6


def test_seen_ids_expire_in_batches():
    seen = stream_dedup.SeenIds()
    events = [oracle.Event(f"e{i}", "a", "click", T0 + i * MIN, None, 1)
              for i in range(5)]  # one id in each of 5 minutes
    seen.admit(_table(events), stream_dedup.NO_WATERMARK)
    margin = stream_dedup.RETENTION_MARGIN_MS
    # Minute 0 has expired, but not for 3 minutes yet: kept.
    assert not seen.expire(T0 + 3 * MIN + margin, batch_ms=3 * MIN)
    assert len(seen) == 5
    # Now it has: every expired minute goes at once.
    assert seen.expire(T0 + 4 * MIN + margin, batch_ms=3 * MIN)
    assert seen.minutes() == [T0 + 4 * MIN]


def test_conflicting_copies_in_one_batch_keep_the_batch_rule():
    seen = stream_dedup.SeenIds()
    a = oracle.Event("x", "b-item", "play", T0 + 5, None, 1)
    b = oracle.Event("x", "a-item", "play", T0 + 5, None, 1)
    fresh, _, _ = seen.admit(_table([a, b]), stream_dedup.NO_WATERMARK)
    assert fresh["item_id"].to_pylist() == ["a-item"]


@pytest.mark.parametrize("spec,level", [("1m", MIN), ("1h/1m", MIN),
                                        ("1h", schema.HOUR_MS),
                                        ("1d/1h", schema.HOUR_MS),
                                        ("30d/1d", schema.DAY_MS),
                                        ("30d", schema.DAY_MS)])
def test_a_spec_reads_the_level_of_its_step(spec, level):
    assert stream_panes.level_of(WindowSpec.parse(spec)) == level


def test_a_shard_pane_overtaken_by_a_newer_one_is_ignored():
    # A runner may deliver a shard's early pane after its on-time pane.
    spec = WindowSpec.parse("1m")
    panes = stream_panes.ShardPanes([spec], 3, 5 * MIN)
    merge = stream_panes.PaneMerge(spec, 3, 5 * MIN)
    first = panes.fire([counting.count_slices(_table(
        [oracle.Event("1", "a", "click", T0, None, 1)]))], 10)
    second = panes.fire([counting.count_slices(_table(
        [oracle.Event("2", "a", "click", T0, None, 1)]))], 20,
        watermark_ms=T0 + MIN)
    (_, _, newer), = second.windows
    (_, _, older), = first.windows
    assert merge.update(0, "on_time", newer, second.emitted_at_ms) == []
    (timing, merged, _), = merge.tick(T0 + MIN + 1)
    assert merge.update(0, "early", older, first.emitted_at_ms) == []
    assert timing == "on_time"
    assert set(merged["count"].to_pylist()) == {2}


def test_state_expires_after_the_longest_window_and_lateness():
    specs = [WindowSpec.parse("1h/1m")]
    panes = stream_panes.ShardPanes(specs, 3, 5 * MIN)
    partial = counting.count_slices(_table(
        [oracle.Event("e", "a", "click", T0, None, 1)]))
    panes.fire([partial], 1)
    keep_until = (T0 + schema.HOUR_MS + 5 * MIN
                  + stream_panes.RETENTION_MARGIN_MS)
    panes.fire([], 2, watermark_ms=keep_until)
    assert panes.counts[MIN].num_rows == 1
    panes.fire([], 3, watermark_ms=keep_until + MIN)
    assert panes.counts[MIN].num_rows == 0
    assert np.all(panes.level_counts(schema.DAY_MS)["count"].to_numpy() == 1)


def _sorted_rows(table):
    return sorted(table.to_pylist(), key=lambda r: tuple(r.values()))


def plain_meta(panes) -> dict:
    """``meta()`` with its arrays as lists, to compare with ``==``."""
    meta = panes.meta()
    return {**meta, "touched": meta["touched"].tolist(),
            "unwritten": meta["unwritten"].tolist(),
            "deferred": {k: v.tolist() for k, v in meta["deferred"].items()}}


def test_a_shard_rebuilt_from_its_chunk_log_equals_the_live_one():
    # The log the stage persists: a delta per firing, the whole counts at
    # a compaction, more deltas; read back in any order.
    specs = [WindowSpec.parse("1m"), WindowSpec.parse("1h/1m")]
    live = stream_panes.ShardPanes(specs, 3, 5 * MIN)
    rnd = random.Random(4)
    log = []
    for i in range(40):
        events = [oracle.Event(f"e{i}-{j}", f"i{rnd.randint(0, 9)}", "click",
                               T0 + i * 20_000 + j, None, 1)
                  for j in range(rnd.randint(0, 5))]
        pending = [counting.count_slices(_table(events))] if events else []
        watermark = T0 + i * 20_000 if i % 3 == 0 else None
        firing = live.fire(pending, i + 1, watermark_ms=watermark)
        if i == 20:
            log = live.level_chunks()
        elif firing.absorbed.num_rows:
            log.append(("delta", firing.absorbed))
    rnd.shuffle(log)
    rebuilt = stream_panes.ShardPanes.from_chunks(specs, 3, 5 * MIN,
                                                  live.meta(), log)
    for size, _ in stream_panes.LEVELS:
        assert _sorted_rows(rebuilt.level_counts(size)) == _sorted_rows(
            live.level_counts(size))
    assert plain_meta(rebuilt) == plain_meta(live)
    assert sum(live.counts[MIN]["count"].to_numpy()) > 0


def test_a_window_closed_in_the_round_of_its_early_update_gets_one_pane():
    # The merge's event-time timer may find early shard panes in its log:
    # the window it closes must get its on-time pane only (an early pane
    # emitted with it would share its emitted_at).
    spec = WindowSpec.parse("1m")
    panes = stream_panes.ShardPanes([spec], 3, 5 * MIN)
    merge = stream_panes.PaneMerge(spec, 3, 5 * MIN)
    early = panes.fire([counting.count_slices(_table(
        [oracle.Event("1", "a", "click", T0, None, 1),
         oracle.Event("2", "b", "click", T0 + MIN, None, 1)]))], 10)
    (_, timing, top), = early.windows
    assert timing == "early"
    out = merge.advance([(0, early.emitted_at_ms, timing, top)],
                        watermark_ms=T0 + MIN + 1)
    windows = collections.Counter()
    for name, merged, index in out:
        for start in set(merged["window_start"].to_pylist()):
            windows[(start, name)] += 1
    # The first minute closes (on time only); the second is still open.
    assert windows == {(T0, "on_time"): 1, (T0 + MIN, "early"): 1}
    assert merge.emission_time(5) < merge.emission_time(5)


def test_a_merge_closes_only_what_every_shard_reported_in_a_chain():
    spec = WindowSpec.parse("1m")
    merge = stream_panes.PaneMerge(spec, 3, 5 * MIN, shards=2)
    no = stream_dedup.NO_WATERMARK
    assert merge.shards_watermark() == no  # shard 1 has not reported
    merge.report(0, no, T0 + MIN)
    assert merge.shards_watermark() == no
    # Shard 1's second report arrives before its first: it vouches for
    # nothing until the first (and the panes that came with it) is here.
    merge.report(1, T0 + MIN, T0 + 3 * MIN)
    assert merge.shards_watermark() == no
    merge.report(1, no, T0 + MIN)
    assert merge.shards_watermark() == T0 + MIN + 1
    merge.report(0, T0 + MIN, T0 + 2 * MIN)
    assert merge.shards_watermark() == T0 + 2 * MIN + 1
    assert merge.closed == {0: T0 + 2 * MIN, 1: T0 + 3 * MIN}


def test_coarse_close_steps_ahead_only_when_the_input_is():
    due = T0 + MIN
    assert stream_panes.coarse_close(None, T0, 10_000) is None
    # Live: the input is within the skew of the watermark.
    assert stream_panes.coarse_close(due, due + 5_000, 10_000) == due
    # Catch-up: up to the last minute the input passed, at most an hour on.
    assert stream_panes.coarse_close(due, T0 + 30 * MIN, 10_000) == \
        T0 + 29 * MIN
    assert stream_panes.coarse_close(due, T0 + 9 * 60 * MIN, 10_000) == \
        due + stream_panes.MAX_CLOSE_STEP_MS


def test_coarse_close_steps_over_sparse_data_by_rows(monkeypatch):
    """Beyond its first hour a catch-up firing closes ``MAX_CLOSE_ROWS``
    more held rows, however much event time they span: a sparse backlog
    of a year fires a few times, not once per hour."""
    monkeypatch.setattr(stream_panes, "MAX_CLOSE_ROWS", 3)
    due, seen = T0 + MIN, T0 + 400 * 24 * 60 * MIN
    hour = stream_panes.MAX_CLOSE_STEP_MS
    # Nothing held beyond the first hour: straight to what the input passed.
    assert stream_panes.coarse_close(
        due, seen, 10_000, np.array([due, due + 5 * MIN])) == seen - MIN
    # Five rows a day apart beyond it: up to the fourth one.
    days = due + hour + np.arange(1, 6) * 1440 * MIN
    held = np.r_[np.array([due]), days[::-1]]
    assert stream_panes.coarse_close(due, seen, 10_000, held) == days[3]
    # Never before the first hour, never beyond the input.
    dense = due + np.arange(10) * MIN
    assert stream_panes.coarse_close(due, seen, 10_000, dense) == seen - MIN
    assert stream_panes.coarse_close(due, T0 + 30 * MIN, 10_000,
                                     days) == T0 + 29 * MIN


def test_close_rows_bound_a_catch_up_firings_ranked_rows():
    """Each held row is in ``panes_per_window`` windows of each spec: the
    rows a catch-up firing closes times that stay within the budget."""
    specs = [WindowSpec.parse(n) for n in ("1m", "1h", "1h/1m")]
    rows = stream_panes.close_rows(specs)
    assert rows * 62 <= stream_panes.MAX_CLOSE_OUTPUT_ROWS < (rows + 1) * 62
    assert stream_panes.close_rows([WindowSpec.parse("1d")]) == \
        stream_panes.MAX_CLOSE_OUTPUT_ROWS


def test_early_panes_of_a_catch_up_cover_the_next_windows_only():
    """A processing-time firing after a batch of 30 days (a catch-up read
    far ahead of the watermark) ranks the open windows near the first
    one, not every window the batch touched; live, every changed window;
    closed windows (late panes) always."""
    spec = WindowSpec.parse("1h/1m")
    bound = spec.length_ms + stream_panes.MAX_CLOSE_STEP_MS
    month = T0 + np.arange(0, 30 * 1440, 7) * MIN
    for watermark in (stream_dedup.NO_WATERMARK, T0 + 3 * 1440 * MIN):
        due = stream_panes.windows_due(spec, month, month, watermark,
                                       watermark, {}, defer_early=False)
        is_open = due + spec.length_ms > watermark
        first = due[is_open].min()
        assert due[is_open].max() < first + bound
        assert first == max(spec.window_starts_for(month).min(),
                            watermark - spec.length_ms + spec.step_ms)
        # The closed windows the batch changed keep their (late) panes.
        assert np.array_equal(
            due[~is_open], np.unique(spec.window_starts_for(month)[
                spec.window_starts_for(month) + spec.length_ms
                <= watermark]))
    live = T0 + np.arange(90, 92) * MIN
    due = stream_panes.windows_due(spec, live, live, T0 + 90 * MIN,
                                   T0 + 90 * MIN, {}, defer_early=False)
    assert np.array_equal(due, np.unique(spec.window_starts_for(live)))


@pytest.mark.parametrize("seed", range(30))
def test_next_window_end_equals_the_brute_force(seed):
    """The earliest window end after the watermark, from one pass over the
    minutes, equals the minimum over every window of every minute."""
    rnd = random.Random(seed)
    specs = [WindowSpec.parse(n) for n in rnd.sample(
        list(oracle.WINDOW_SPECS), rnd.randint(1, 3))]
    minutes = np.array([T0 + rnd.randrange(3 * 24 * 60) * MIN
                        for _ in range(rnd.randint(0, 40))], np.int64)
    watermark = rnd.choice([stream_dedup.NO_WATERMARK,
                            T0 + rnd.randrange(4 * 24 * 60) * MIN,
                            T0 + rnd.randrange(4 * 24 * 60 * 60) * 1000])
    ends = [e for spec in specs for e in (
        spec.window_starts_for(minutes) + spec.length_ms) if e > watermark]
    assert stream_panes.next_window_end(specs, minutes, watermark) == (
        min(ends) if ends else None)


@pytest.mark.parametrize("bits", [0, stream_dedup.PARTITION_BITS])
@pytest.mark.parametrize("seed", range(5))
def test_seen_ids_equal_a_set_through_admits_expiry_and_restore(seed, bits):
    """``SeenIds`` (sorted runs, partitioned or not) against a plain dict
    of id -> minute: the same fresh events, the same held minutes after
    expiry, and the same after a rebuild from its persisted chunks."""
    rnd = random.Random(seed)
    seen, model, chunks = stream_dedup.SeenIds(partition_bits=bits), {}, []
    margin = stream_dedup.RETENTION_MARGIN_MS
    for step in range(60):
        base = T0 + step * 10 * MIN
        evs = [oracle.Event(f"e{rnd.randrange(400)}", "a", "play",
                            base + rnd.randrange(30 * MIN), None, 1)
               for _ in range(rnd.randint(1, 30))]
        fresh, late, chunk = seen.admit(_table(evs), T0)
        chunks.append(chunk)
        first = {}
        for e in sorted(evs, key=lambda e: (e.ts, e.event_type, e.item_id)):
            first.setdefault(e.event_id, e)
        want = {i for i in first if i not in model}
        assert set(fresh["event_id"].to_pylist()) == want
        for i in want:
            model[i] = first[i].ts - first[i].ts % MIN
        if rnd.random() < 0.3:
            horizon = base - rnd.randrange(60 * MIN) + margin
            if seen.expire(horizon):
                model = {i: m for i, m in model.items()
                         if m + MIN > horizon - margin}
        assert seen.minutes() == sorted(set(model.values()))
        assert len(seen) == len(model)
    again = stream_dedup.SeenIds([seen.to_table()], partition_bits=bits)
    assert again.minutes() == seen.minutes() and len(again) == len(seen)


def test_seen_ids_merge_at_most_a_partition_at_once():
    """The largest sorted run, what one admit may have to merge, is about
    a 64th of the held ids, not half of them."""
    seen = stream_dedup.SeenIds()
    for first in range(0, 256_000, 1_000):
        seen.admit(_table([oracle.Event(f"e{i}", "a", "play", T0, None, 1)
                           for i in range(first, first + 1_000)]), T0)
    assert len(seen) == 256_000
    largest = max(ids.size for ids, _ in seen._runs())
    assert largest <= 1.3 * 256_000 / 64, largest


def test_early_firings_write_minutes_and_event_time_firings_their_hours():
    # An hour's or a day's full counts at every early firing would write
    # more rows than events arrive; they wait for the next event-time
    # firing, which writes every hour and day changed since the last one.
    panes = stream_panes.ShardPanes([WindowSpec.parse("1m")], 3, 5 * MIN)

    def fire(ts_list, watermark_ms=None):
        events = [oracle.Event(f"e{ts}", "a", "click", ts, None, 1)
                  for ts in ts_list]
        pending = [counting.count_slices(_table(events))] if events else []
        firing = panes.fire(pending, ts_list[-1] if ts_list else T0,
                            watermark_ms)
        return sorted((r["slice_length"], r["count"])
                      for r in firing.slices.to_pylist())

    assert fire([T0 + 1]) == [("1m", 1)]
    assert fire([T0 + 2, T0 + MIN + 1]) == [("1m", 1), ("1m", 2)]
    assert fire([], watermark_ms=T0 + MIN) == [
        ("1d", 3), ("1h", 3), ("1m", 1), ("1m", 2)]
    assert fire([T0 + MIN + 2]) == [("1m", 2)]
    assert fire([], watermark_ms=T0 + 2 * MIN) == [
        ("1d", 4), ("1h", 4), ("1m", 2)]


def test_an_early_firing_writes_the_rows_it_changed_with_full_counts():
    # Readers take the latest row per slice and item, so an early firing
    # writes only the items it absorbed; the latest rows still hold every
    # count.
    panes = stream_panes.ShardPanes([WindowSpec.parse("1m")], 3, 5 * MIN)
    rnd = random.Random(7)
    latest, events = {}, []
    for i in range(30):
        batch = [oracle.Event(f"e{i}-{j}", f"item-{rnd.randrange(12)}",
                              rnd.choice(["click", "play"]),
                              T0 + rnd.randrange(2 * MIN), None,
                              rnd.randrange(1, 3)) for j in range(5)]
        events.extend(batch)
        firing = panes.fire([counting.count_slices(_table(batch))],
                            T0 + 2 * MIN + i)
        written = {(r["event_type"], r["item_id"])
                   for r in firing.slices.to_pylist()}
        assert {(e.event_type, e.item_id) for e in batch} <= written
        assert {r[1] for r in written} == {e.item_id for e in batch}
        for r in firing.slices.to_pylist():
            minute = round(r["slice_start"].timestamp() * 1000)
            latest[(minute, r["event_type"], r["item_id"])] = r["count"]
    expected = collections.Counter()
    for e in events:
        expected[(e.ts - e.ts % MIN, e.event_type, e.item_id)] += e.weight
    assert latest == dict(expected)


def test_early_firings_space_out_while_catching_up_or_when_dear():
    now = 1_700_000_000_000
    live = now - 5_000
    assert stream_panes.early_delay_s(2.0, live, now, 0.1) == 2.0
    # A backlog's event times are far behind: one early pane per 30 s.
    behind = now - stream_panes.CATCH_UP_LAG_MS - 1
    assert stream_panes.early_delay_s(2.0, behind, now, 0.1) == \
        stream_panes.CATCH_UP_EARLY_FIRING_S
    assert stream_panes.early_delay_s(2.0, stream_dedup.NO_WATERMARK, now, 0.0) == \
        stream_panes.CATCH_UP_EARLY_FIRING_S
    # A firing that took 1.5 s waits 6 s: early panes stay a fifth.
    assert stream_panes.early_delay_s(2.0, live, now, 1.5) == \
        stream_panes.FIRING_COST_SHARE * 1.5


def test_one_dear_firing_does_not_space_out_the_next_early_panes():
    assert stream_panes.spacing_cost_s(None, 0.3) == 0.3
    # The once-a-minute rebuild of closed parts: a spike, not a trend.
    assert stream_panes.spacing_cost_s(0.3, 1.2) == 0.3
    # Dear again: the stage is slower now, and waits longer.
    assert stream_panes.spacing_cost_s(1.2, 1.1) == 1.1
    # As a stage's timer state keeps it, firing after firing.
    now = 1_700_000_000_000
    timers = {"seen": now - 5_000}
    for at, took in ((now, 0.2), (now + 1_000, 1.2)):
        stream_panes.record_early(timers, at, took)
    assert timers["cost_s"] == 0.2 and timers["took_s"] == 1.2
    # The next is due one early delay (not four times the dear 1.2 s)
    # after the last firing began, and an event-time firing before then
    # emits no early panes.
    assert stream_panes.early_timer_ms(timers, 1.0, now + 1_100) == \
        now + 2_000
    assert not stream_panes.fires_early(timers, now, 1.0, now + 1_900)
    assert stream_panes.fires_early(timers, now, 1.0, now + 2_000)
    assert stream_panes.fires_early(timers, None, 1.0, now + 1_100)


def test_the_next_early_firing_counts_from_the_last_one():
    now = 1_700_000_000_000
    live = now - 5_000
    # Armed 0.7 s after a firing that began at now - 700 and took 0.2 s:
    # due 1 s after that firing began, not 1 s after the arming element.
    assert stream_panes.next_early_ms(1.0, live, now, now - 700, 0.2) == \
        now + 300
    # Never in the past, however long ago the last one was.
    assert stream_panes.next_early_ms(1.0, live, now, now - 5_000, 0.2) == \
        now
    # The spacing rules still hold: a dear firing waits four times its cost.
    assert stream_panes.next_early_ms(1.0, live, now, now - 700, 1.0) == \
        now - 700 + int(1000 * stream_panes.FIRING_COST_SHARE)


@pytest.mark.parametrize("early", [False, True])
def test_an_event_time_firing_emits_the_early_panes_when_told(early):
    panes = stream_panes.ShardPanes([WindowSpec.parse("1m")], 3, 5 * MIN)

    def partials(item, ts):
        return counting.count_slices(_table(
            [oracle.Event(f"e{ts}", item, "click", ts, None, 1)]))

    panes.fire([partials("a", T0 + 1)], 1)
    firing = panes.fire([partials("b", T0 + MIN + 1)], 2,
                        watermark_ms=T0 + MIN, early=early)
    timings = {(timing, int(top.totals["window_start"][0].as_py()))
               for _, timing, top in firing.windows if top.totals.num_rows}
    assert (stream_panes.ON_TIME, T0) in timings
    assert ((stream_panes.EARLY, T0 + MIN) in timings) == early
    after = panes.fire([], 3)
    assert any(timing == stream_panes.EARLY for _, timing, _ in
               after.windows) == (not early)
    now = T0 + 10 * MIN
    assert stream_panes.emits_early(None, now, 2.0, now, now, 0.0)
    assert stream_panes.emits_early(T0, now - 2_000, 2.0, now, now, 0.0)
    assert not stream_panes.emits_early(T0, now - 1_999, 2.0, now, now, 0.0)
    # Catching up, only the processing-time timer's firings emit them.
    behind = now - stream_panes.CATCH_UP_LAG_MS - 1
    assert not stream_panes.emits_early(T0, 0, 2.0, behind, now, 0.0)
    assert stream_panes.emits_early(None, now, 2.0, behind, now, 0.0)


@pytest.mark.parametrize("growth", [0, 50, 2_000])
def test_state_rewrites_cost_what_was_appended_and_the_log_stays_bounded(
        growth):
    """A stage whose state grows by ``growth`` rows a firing (minutes kept
    for an hour and more) and appends 1,000 changed rows a firing: over
    3,000 firings the rewrites write at most about twice what was
    appended, and the log never holds much more than the state (a restore
    reads it). A rewrite every 64 firings wrote 46x what was appended at
    the fastest growth."""
    log, state, appended, written = stream_panes.LogSizes(), 0, 0, 0
    for _ in range(3_000):
        state += growth
        appended += 1_000
        if log.rewrite_due(1_000):
            log.rewrote(state)
            written += state
        assert log.logged <= max(log.rewritten, 1_000)
    assert written <= 2 * appended
    assert stream_panes.LogSizes(0, 0).rewrite_due(0) is False
