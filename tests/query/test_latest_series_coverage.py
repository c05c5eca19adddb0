"""``topk.query.latest`` / ``series`` / ``coverage`` against brute force.

``latest``: an output whose ``ranked_windows`` rows are written through
``topk.storage.tables`` the way the pipelines write them (a batch run, a
stale stream of a batch window, accumulating stream panes early -> on_time
-> a later late pane, an ``insertAll`` retry), each pane ranked by the
oracle from the events it saw; the expected answer is picked from the rows
by the contract's rules, written out here independently.

``series`` and ``coverage``: the query scenario (``query_scenario``: batch,
stale stream, two accumulating stream panes, a rerun), against the true
events (``oracle``) and the rows written.
"""
import collections
import random

import pyarrow as pa
import pytest

import oracle
from query_scenario import (D, H, M, PANE2_AT, SCENARIO, T0, runs)
from topk.core import schema
from topk.query import QueryError, coverage, latest, series
from topk.query.duckdb import Committed
from topk.storage import layout, tables

K = 4
ITEMS = ["a", "b", "c", "d", "e", "f", "Z"]
L0 = T0 + 10 * D  # the ranked-windows scenario's first hour
AT = [L0 + 5 * H + i * M for i in range(8)]  # emitted_at, in write order


def _events(rng, n, first, prefix):
    return [oracle.Event(f"{prefix}{i}", rng.choice(ITEMS),
                         rng.choice(("click", "play")),
                         first + rng.randrange(H), None,
                         rng.choice((1, 1, 2, 3))) for i in range(n)]


def ranked_rows(events, window_start, pane_timing, pane_index, source,
                emitted_at, method="exact", specs=("1h",)) -> list[dict]:
    """The ranked rows of one pane: the oracle's top ``K`` of ``events``
    in the hour at ``window_start`` (spec ``1h``; ``1h/1m`` gets the same
    rows: its window of that start spans the same hour)."""
    rows = []
    for spec in specs:
        length, slide = spec.partition("/")[::2]
        for et, w, rank, item, count, total in oracle.ranked_windows(
                [e for e in events
                 if window_start <= e.ts < window_start + H], H, None, K):
            if w != window_start:
                continue
            rows.append(dict(
                window_start=w, window_end=w + H, window_length=length,
                slide=slide or None, method=method, event_type=et,
                rank=rank, item_id=item, count=count, lower_bound=count,
                upper_bound=count, guaranteed=True, window_total=total,
                pane_timing=pane_timing, pane_index=pane_index,
                source=source, emitted_at=emitted_at,
                input_watermark=input_watermark(w, pane_timing, source)))
    return rows


def input_watermark(window_start, pane_timing, source):
    """A stream pane's input watermark: inside its window while early, at
    its end once closed; none for batch rows."""
    if source == "batch":
        return None
    return window_start + (H // 2 if pane_timing == "early" else H)


def _table(rows):
    return pa.Table.from_pylist(rows, schema.RANKED_WINDOWS_SCHEMA)


def make_ranked():
    rng = random.Random(5)
    hour0 = _events(rng, 60, L0, "h0-")
    hour1 = _events(rng, 60, L0 + H, "h1-")
    hour2 = _events(rng, 80, L0 + 2 * H, "h2-")
    late = _events(rng, 15, L0 + 2 * H, "late-")
    ghosts = [e._replace(item_id="ghost", weight=50) for e in hour1[:5]]
    writes = [  # (source, rows) in write order
        ("batch", ranked_rows(hour0 + hour1, L0, "batch", 0, "batch", AT[0],
                              specs=("1h", "1h/1m"))
         + ranked_rows(hour0 + hour1, L0 + H, "batch", 0, "batch", AT[0],
                       specs=("1h", "1h/1m"))),
        # A stream still emitting hour 1 after the batch run: never shows.
        ("stream", ranked_rows(hour1 + ghosts, L0 + H, "late", 3, "stream",
                               AT[1])),
        ("stream", ranked_rows(hour2[:30], L0 + 2 * H, "early", 0, "stream",
                               AT[2])),
        ("stream", ranked_rows(hour2, L0 + 2 * H, "on_time", 1, "stream",
                               AT[3])),
        ("stream", ranked_rows(hour2 + late, L0 + 2 * H, "late", 2, "stream",
                               AT[4])),
        # insertAll retry: the late pane's rows once more.
        ("stream", ranked_rows(hour2 + late, L0 + 2 * H, "late", 2, "stream",
                               AT[4])),
    ]
    return {"hour0": hour0, "hour1": hour1, "hour2": hour2, "late": late,
            "writes": writes}


RANKED = make_ranked()


@pytest.fixture(scope="module")
def ranked_output(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("ranked"))
    for source, rows in RANKED["writes"]:
        tables.append(output, layout.RANKED_WINDOWS, _table(rows),
                      source=source)
    return output


def expected_latest(spec_name, k, event_type="*", method="exact",
                    window_start=None):
    """The contract's pick, by brute force over every row written: the
    largest window_start (or the one asked), batch rows first, then the
    latest emitted_at, then the largest pane_index; rows de-duplicated."""
    length, slide = spec_name.partition("/")[::2]
    rows = [r for _, written in RANKED["writes"] for r in written
            if r["window_length"] == length and (r["slide"] or "") == slide
            and r["method"] == method and r["event_type"] == event_type]
    if window_start is not None:
        rows = [r for r in rows if r["window_start"] == window_start]
    if not rows:
        return None
    w = max(r["window_start"] for r in rows)
    rows = [r for r in rows if r["window_start"] == w]
    if any(r["source"] == "batch" for r in rows):
        rows = [r for r in rows if r["source"] == "batch"]
    best = max((r["emitted_at"], r["pane_index"]) for r in rows)
    rows = [r for r in rows if (r["emitted_at"], r["pane_index"]) == best]
    unique = sorted({(r["rank"], r["item_id"], r["count"]) for r in rows})
    return w, rows[0], unique[:k]


@pytest.mark.parametrize("spec, k, event_type, window_start", [
    ("1h", K, None, None),
    ("1h", 2, "click", None),
    ("1h", K, "play", None),
    ("1h", K, None, L0 + H),       # batch wins over the later stream pane
    ("1h", K, "click", L0),
    ("1h/1m", K, None, None),      # only the batch wrote this spec
    ("1h_1m", 3, "play", None),    # the partition spelling is accepted
])
def test_latest_is_the_contract_pick(ranked_output, spec, k, event_type,
                                     window_start):
    got = latest.latest(ranked_output, spec, k, event_type,
                        window_start=window_start)
    w, pane, rows = expected_latest(spec.replace("_", "/"), k,
                                    event_type or "*",
                                    window_start=window_start)
    assert (got.window_start, got.window_end) == (w, w + H)
    assert (got.source, got.pane_timing, got.pane_index, got.emitted_at,
            got.window_total) == (pane["source"], pane["pane_timing"],
                                  pane["pane_index"], pane["emitted_at"],
                                  pane["window_total"])
    assert [(r.rank, r.item_id, r.count) for r in got.rows] == rows


def test_latest_late_pane_holds_the_true_counts(ranked_output):
    """Independent of the rows: the latest 1h window's answer is the
    oracle's top K of every event of that hour, late ones included."""
    got = latest.latest(ranked_output, "1h", K)
    truth = oracle.topk(RANKED["hour2"] + RANKED["late"], K, L0 + 2 * H,
                        L0 + 3 * H)
    assert [(r.rank, r.item_id, r.count) for r in got.rows] == truth
    assert got.pane_timing == "late" and got.source == "stream"
    assert got.input_watermark == L0 + 3 * H  # past the window's end
    assert got.window_total == sum(e.weight for e in RANKED["hour2"]
                                   + RANKED["late"])
    # The batch window of hour 1 ignores the stale stream's ghost.
    batch = latest.latest(ranked_output, "1h", K, window_start=L0 + H)
    assert [(r.rank, r.item_id, r.count) for r in batch.rows] == \
        oracle.topk(RANKED["hour1"], K, L0 + H, L0 + 2 * H)
    assert batch.input_watermark is None


def test_latest_finds_a_method_whose_newest_window_is_older(tmp_path):
    """The log's statistics name the spec's newest window; a method (or
    event type) without rows there is answered from its own newest
    window, not refused."""
    output = str(tmp_path / "out")
    for source, rows in RANKED["writes"]:
        tables.append(output, layout.RANKED_WINDOWS, _table(rows),
                      source=source)
    tables.append(output, layout.RANKED_WINDOWS, _table(ranked_rows(
        RANKED["hour0"], L0, "on_time", 0, "stream", AT[5],
        method="cms")), source="stream")
    got = latest.latest(output, "1h", K, method="cms")
    assert (got.window_start, got.emitted_at) == (L0, AT[5])
    assert [(r.rank, r.item_id, r.count) for r in got.rows] == \
        oracle.topk(RANKED["hour0"], K, L0, L0 + H)
    assert latest.latest(output, "1h", K).window_start == L0 + 2 * H


def test_latest_reuses_a_committed_snapshot(ranked_output):
    snap = Committed(ranked_output)
    first = latest.latest(snap, "1h", K)
    assert latest.latest(snap, "1h", K) == first
    assert latest.latest(ranked_output, "1h", K) == first


@pytest.mark.parametrize("args, error", [
    (("2h",), "unknown window spec"),
    (("1h/7m",), "unknown window spec"),
    (("x' OR 1=1 --",), "unknown window spec"),
    (("1h", 0), "positive integer"),
    (("1h", 10, None, "bogus"), "unknown method"),
])
def test_latest_bad_arguments(ranked_output, args, error):
    with pytest.raises(QueryError, match=error):
        latest.latest(ranked_output, *args)


@pytest.mark.parametrize("args", [
    ("1d",), ("1h", K, None, "cms"), ("1h", K, "view"),
    ("1h", K, None, "exact", L0 + 7 * H),
])
def test_latest_nothing_is_not_found(ranked_output, args):
    with pytest.raises(latest.NotFound):
        latest.latest(ranked_output, *args)


# --- series --------------------------------------------------------------------

def true_series(item, start, end, step_ms, event_type=None):
    events = [e for e in SCENARIO["events"] if e.item_id == item
              and (event_type is None or e.event_type == event_type)]
    counts = collections.Counter()
    for e in events:
        if start <= e.ts < end:
            counts[e.ts - e.ts % step_ms] += e.weight
    return [(t, counts.get(t, 0)) for t in range(start, end, step_ms)]


@pytest.mark.parametrize("item, start, end, step, event_type", [
    ("a", T0, T0 + 3 * D, "1h", None),
    ("b", T0, T0 + 3 * D, "1d", None),
    ("c", T0 + 2 * D, T0 + 3 * D, "1h", "click"),   # stream panes
    ("d", T0 + 5 * H, T0 + 6 * H, "1m", None),       # batch minutes
    ("e", T0 + 2 * D + 5 * H, T0 + 2 * D + 7 * H, "1m", "play"),
    ("t1", T0, T0 + D, "1h", None),
    ("ghost-a", T0, T0 + 2 * D, "1h", None),   # stale stream: never counts
    ("never", T0, T0 + D, "1d", None),
])
def test_series_equals_the_true_counts(scenario_output, item, start, end,
                                       step, event_type):
    got = series.series(scenario_output, item, start, end, step, event_type)
    assert got.points == true_series(item, start, end, series.STEPS[step],
                                     event_type)
    assert got.event_type == (event_type or "*")


@pytest.mark.parametrize("args, error", [
    (("a", T0, T0 + D, "5m"), "unknown step"),
    (("a", T0 + M, T0 + D, "1h"), "not aligned"),
    (("a", T0 + D, T0, "1h"), "after start"),
    (("a", T0, T0 + 8 * D, "1m"), "at most 10080"),
    (("", T0, T0 + D, "1h"), "item_id"),
    (("x" * 300, T0, T0 + D, "1h"), "item_id"),
    (("a", T0, T0 + D, "1h", "nosuchtype"), "unknown event type"),
])
def test_series_bad_arguments(scenario_output, args, error):
    with pytest.raises(QueryError, match=error):
        series.series(scenario_output, *args)


# --- coverage ------------------------------------------------------------------

def test_coverage_of_the_scenario(scenario_output):
    cov = coverage.coverage(scenario_output)
    rows = [r for table, _, t in runs() if table == layout.SLICES
            for r in t.to_pylist()]
    sketch_rows = [r for table, _, t in runs() if table == layout.SKETCHES
                   for r in t.to_pylist()]
    ms = {"1m": M, "1h": H, "1d": D}

    def epoch(ts):
        return int(ts.timestamp() * 1000)
    assert cov.slices == (
        min(epoch(r["slice_start"]) for r in rows),
        max(epoch(r["slice_start"]) + ms[r["slice_length"]] for r in rows))
    assert cov.newest_event_time == max(
        epoch(r["slice_start"]) for r in rows if r["slice_length"] == "1m")
    assert cov.methods == ["cms", "exact", "frequent_items"]
    assert cov.event_types == sorted(
        {r["event_type"] for r in rows} | {r["event_type"] for r in
                                           sketch_rows} - {"*"})
    assert cov.newest_stream_at == PANE2_AT
    assert cov.specs == []
    assert cov.seq == tables.snapshot(scenario_output).seq
    head = coverage.manifest_head(scenario_output)
    assert head.snap == tables.snapshot(scenario_output)
    assert head.committed_at == int(tables.history(scenario_output)[
        "committed_at"][-1].value // 1000)


def test_coverage_of_ranked_windows(ranked_output):
    cov = coverage.coverage(ranked_output)
    assert [s.spec for s in cov.specs] == ["1h/1m", "1h"] or \
        [s.spec for s in cov.specs] == ["1h", "1h/1m"]
    by_spec = {s.spec: s for s in cov.specs}
    hour = by_spec["1h"]
    assert hour.methods == ["exact"]
    assert hour.event_types == ["*", "click", "play"]
    assert (hour.first_window_start, hour.last_window_end) == (L0,
                                                               L0 + 3 * H)
    assert hour.newest_emitted_at == AT[4]
    assert by_spec["1h/1m"].last_window_end == L0 + 2 * H
    assert cov.slices is None and cov.methods == []
    assert cov.newest_stream_at == AT[4]
    assert coverage.stream_lag_s(cov, AT[4] + 2500) == 2.5
    # The newest input watermark of any stream pane: the late pane's, at
    # the end of hour 2 (taken from the rows written).
    assert cov.stream_watermark == max(
        input_watermark(r["window_start"], r["pane_timing"], r["source"])
        for _, written in RANKED["writes"] for r in written
        if r["source"] == "stream")


def test_missing_output(tmp_path):
    missing = str(tmp_path / "nope")
    for call in (lambda: latest.latest(missing, "1h"),
                 lambda: series.series(missing, "a", T0, T0 + H, "1h"),
                 lambda: coverage.coverage(missing),
                 lambda: coverage.manifest_head(missing)):
        with pytest.raises(QueryError, match="does not exist"):
            call()
    empty = coverage.manifest_head(str(tmp_path))
    assert empty.seq == 0 and empty.committed_at is None


def test_coverage_from_file_statistics_equals_the_scan(scenario_output,
                                                       tmp_path):
    """The Delta file statistics answer what reading every row answers:
    pure files, and files mixing batch and stream rows (one commit of
    both, then a compaction merging them)."""
    assert coverage.slice_stats(Committed(scenario_output)) == \
        coverage.slice_scan(Committed(scenario_output))
    mixed = str(tmp_path / "mixed")
    batch = [t for table, name, t in runs()
             if table == layout.SLICES and name == "part-batch"][0]
    stale = [t for table, name, t in runs()
             if table == layout.SLICES and name == "part-stream-stale"][0]
    tables.commit(mixed, [tables.Change(layout.SLICES, tables.prepare(
        layout.SLICES, pa.concat_tables([batch, stale])))], "batch")
    tables.append(mixed, layout.SLICES, _stream_rows(T0 + D, PANE2_AT + H))
    tables.maintain(mixed, vacuum_hours=0)
    for output in (mixed,):
        snap = Committed(output)
        stats = coverage.slice_stats(snap)
        assert stats == coverage.slice_scan(snap)
        assert stats[3] == PANE2_AT + H
    empty = str(tmp_path / "empty")
    tables.append(empty, layout.SLICES, schema.SLICES_SCHEMA.empty_table())
    assert coverage.coverage(empty).slices is None


def _stream_rows(slice_start, emitted_at):
    return pa.Table.from_pylist([dict(
        slice_start=slice_start, slice_length="1d", event_type="click",
        item_id="late-item", count=3, source="stream",
        emitted_at=emitted_at)], schema.SLICES_SCHEMA)
