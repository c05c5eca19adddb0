"""Separate batch runs over parts of time compose into one output.

A batch run owns the slices of its input's event-time span and recomputes
every window that overlaps the span from all committed batch slices and
sketches (``topk.storage.boundary_windows``), so runs per day or per file,
in any order, with overlaps and reruns, write the same ``ranked_windows``,
``slices`` and ``sketches`` as one run over everything, which the
brute-force oracle (``tests/oracle.py``) checks.
"""
import collections
import datetime as dt
import json
import os
import tempfile

import pyarrow.compute as pc
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import oracle
from topk.loadgen import generator
from topk.pipelines import batch
from topk.storage import tables

MINUTE, HOUR, DAY = oracle.MINUTE_MS, oracle.HOUR_MS, oracle.DAY_MS
#: 2024-05-17T00:00:00Z: a 30-day window starts here.
T30 = 19860 * DAY
K = 3
WINDOWS = list(oracle.WINDOW_SPECS)


def run_batch(lines, output, directory, name, windows="all",
              methods="exact"):
    """One ``topk batch`` run over ``lines`` (JSON records) into
    ``output``."""
    path = os.path.join(directory, f"{name}.jsonl")
    with open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)
    batch.run([f"--input={path}", f"--output={output}", f"--k={K}",
               f"--windows={windows}", f"--method={methods}",
               "--item_shards=2", "--dedup_shards=2"])


def exact_tables(output) -> dict:
    """``{"ranked_windows": sorted rows, "slices": sorted rows}`` of the
    committed snapshot, as oracle-shaped tuples (epoch ms)."""
    snap = tables.snapshot(output)
    ms = oracle._utc_ms
    ranked = [
        (r["window_length"] + ("/" + r["slide"] if r["slide"] else ""),
         r["event_type"], ms(r["window_start"]), r["rank"], r["item_id"],
         r["count"], r["window_total"], ms(r["window_end"]) - ms(
             r["window_start"]), r["method"], r["source"], r["guaranteed"])
        for r in tables.dataset(output, "ranked_windows", snap).to_table(
            filter=pc.field("method") == "exact").to_pylist()]
    slices = [(r["slice_length"], r["event_type"], ms(r["slice_start"]),
               r["item_id"], r["count"], r["source"])
              for r in tables.dataset(output, "slices", snap
                                      ).to_table().to_pylist()]
    return {"ranked_windows": sorted(ranked), "slices": sorted(slices)}


def oracle_tables(unique) -> dict:
    """What ``exact_tables`` must read for the de-duplicated events."""
    ranked = []
    for name, (length, slide) in oracle.WINDOW_SPECS.items():
        for et, w, rank, item, count, total in oracle.ranked_windows(
                unique, length, slide, K):
            ranked.append((name, et, w, rank, item, count, total, length,
                           "exact", "batch", True))
    slices = [(name, et, start, item, count, "batch")
              for name, size in oracle.SLICE_LENGTHS.items()
              for (et, start, item), count in oracle.slice_counts(
                  unique, size).items()]
    return {"ranked_windows": sorted(ranked), "slices": sorted(slices)}


APPROXIMATE = ("cms", "frequent_items")


def check_approximate(output, unique):
    """Each approximate method's windows and sketch totals in ``output``
    equal the oracle's. The tests' few items fit the default sketch
    budget, so every estimate is exact: each window's counts are the
    oracle's top K counts (ties may rank other items), its bounds equal
    its count, and each sketch's total is its slice's event count."""
    want = collections.defaultdict(lambda: [0, []])
    for name, (length, slide) in oracle.WINDOW_SPECS.items():
        for et, w, _, _, count, total in oracle.ranked_windows(
                unique, length, slide, K):
            want[(name, et, w)][0] = total
            want[(name, et, w)][1].append(count)
    totals = collections.Counter()
    for name, size in oracle.SLICE_LENGTHS.items():
        for (et, start, _), count in oracle.slice_counts(unique,
                                                         size).items():
            totals[(name, et, start)] += count
            totals[(name, oracle.ALL_TYPES, start)] += count
    snap = tables.snapshot(output)
    ms = oracle._utc_ms
    rows = tables.dataset(output, "ranked_windows", snap).to_table(
        filter=pc.field("method") != "exact").to_pylist()
    sketch_rows = tables.dataset(output, "sketches", snap).to_table(
        columns=["method", "slice_length", "event_type", "slice_start",
                 "total"]).to_pylist()
    for method in APPROXIMATE:
        got = collections.defaultdict(lambda: [0, []])
        for r in rows:
            if r["method"] != method:
                continue
            assert r["lower_bound"] == r["count"] == r["upper_bound"], r
            key = (r["window_length"] + ("/" + r["slide"] if r["slide"]
                                         else ""),
                   r["event_type"], ms(r["window_start"]))
            got[key][0] = r["window_total"]
            got[key][1].append(r["count"])
        assert {k: (t, sorted(c)) for k, (t, c) in got.items()} == {
            k: (t, sorted(c)) for k, (t, c) in want.items()}, method
        sketch_totals = collections.Counter()
        for r in sketch_rows:
            if r["method"] == method:
                sketch_totals[(r["slice_length"], r["event_type"],
                               ms(r["slice_start"]))] += r["total"]
        assert sketch_totals == totals, method


def check(got, want):
    for table in want:
        g, w = collections.Counter(got[table]), collections.Counter(
            want[table])
        assert g == w, (f"{table}: {sum((g - w).values())} rows not expected, "
                        f"{sum((w - g).values())} missing; first missing "
                        f"{sorted((w - g).elements())[:3]}, first unexpected "
                        f"{sorted((g - w).elements())[:3]}")


# --- Day 1, then day 2 -------------------------------------------------------

def day_lines(day: int, n: int) -> list[str]:
    """``n`` plays spread over UTC day ``day`` after T30, weights 1."""
    return [json.dumps({"event_id": f"d{day}-{i}", "item_id": f"i{i % 5}",
                        "event_type": "play",
                        "ts": T30 + day * DAY + i * DAY // n})
            for i in range(n)]


def test_day_one_then_day_two_keeps_the_30_day_window_whole(tmp_path):
    """The defect: the second day's run replaced the 30-day window (and
    the sliding windows crossing midnight) with its own counts only."""
    out = str(tmp_path / "out")
    day1, day2 = day_lines(0, 401), day_lines(1, 400)
    run_batch(day1, out, tmp_path, "day1")
    run_batch(day2, out, tmp_path, "day2")
    con = tables.connect(out)
    [(total,)] = con.sql(
        "SELECT DISTINCT window_total FROM ranked_windows WHERE "
        "window_length = '30d' AND slide IS NULL AND event_type = '*'"
    ).fetchall()
    assert total == 801
    # The 1d/1h window from 12:00 on day 1 to 12:00 on day 2: both halves.
    [(total,)] = con.execute(
        "SELECT DISTINCT window_total FROM ranked_windows WHERE "
        "window_length = '1d' AND slide = '1h' AND event_type = '*' AND "
        "window_start = ?", [dt.datetime.fromtimestamp(
            (T30 + 12 * HOUR) / 1000, dt.timezone.utc)]).fetchall()
    assert total == 200 + 200
    unique = oracle.dedup(oracle.parse_block(
        "\n".join(day1 + day2) + "\n")[0])
    check(exact_tables(out), oracle_tables(unique))


def test_approximate_windows_and_sketches_across_runs_hold_both_days(
        tmp_path):
    """The defect: the day-2 run's approximate windows crossing midnight
    (and the 30-day window) and its straddling sketches held day 2 only."""
    out = str(tmp_path / "out")
    day1, day2 = day_lines(0, 401), day_lines(1, 400)
    run_batch(day1, out, tmp_path, "day1", methods=",".join(APPROXIMATE))
    run_batch(day2, out, tmp_path, "day2", methods=",".join(APPROXIMATE))
    unique = oracle.dedup(oracle.parse_block(
        "\n".join(day1 + day2) + "\n")[0])
    check_approximate(out, unique)


def test_runs_with_other_windows_keep_each_others_windows(tmp_path):
    """The defect: a run over the same span with other --windows deleted
    the windows of the specs it did not compute."""
    out = str(tmp_path / "out")
    day1 = day_lines(0, 401)
    specs = sorted(oracle.WINDOW_SPECS)
    half = len(specs) // 2
    run_batch(day1, out, tmp_path, "first", ",".join(specs[:half]))
    run_batch(day1, out, tmp_path, "second", ",".join(specs[half:]))
    unique = oracle.dedup(oracle.parse_block("\n".join(day1) + "\n")[0])
    check(exact_tables(out), oracle_tables(unique))


# --- Any split, any order, an overlap and a rerun ----------------------------

#: Duplicates, jitter, weights, mixed ts, few items (ties), from 21:00 on
#: the day before a 30-day boundary to about 06:00 two days later.
CONFIG = generator.GeneratorConfig(
    events=500, items=7, zipf=0.5, start="2024-05-16T21:00:00Z",
    rate=500 / (33 * 3600), jitter_s=1200, duplicate_share=0.1,
    ts_format="mixed", weight_share=0.3, seed=3, users=0)
_CACHE = {}


def generated():
    """``(records [(ts, line)], oracle tables, one run's tables)``, built
    once."""
    if not _CACHE:
        lines = [line.as_py() for chunk in generator.generate_records(CONFIG)
                 for line in chunk]
        records = []
        for line in lines:
            event, reason = oracle.parse_record(line)
            assert event is not None, reason
            records.append((event.ts, line))
        unique = oracle.dedup(oracle.parse_record(line)[0]
                              for line in lines)
        with tempfile.TemporaryDirectory() as d:
            run_batch(lines, os.path.join(d, "out"), d, "all")
            one_run = exact_tables(os.path.join(d, "out"))
        _CACHE.update(records=records, want=oracle_tables(unique),
                      one_run=one_run, unique=unique)
    return _CACHE["records"], _CACHE["want"], _CACHE["one_run"]


#: Cut points and overlap bounds: minutes after 2024-05-16T21:00:00Z
#: (the data lies within about the first 2,000).
_MINUTE = st.integers(min_value=1, max_value=2000)
FIRST = T30 - 3 * HOUR


@st.composite
def run_plans(draw):
    """A list of ``(lo, hi)`` event-time ranges (epoch ms, whole minutes;
    ``None`` open) in run order: a partition of time, an overlapping range,
    and a rerun of one part, shuffled."""
    cuts = sorted(draw(st.sets(_MINUTE, min_size=1, max_size=2)))
    bounds = [None, *(FIRST + c * MINUTE for c in cuts), None]
    parts = list(zip(bounds[:-1], bounds[1:]))
    a, b = sorted(draw(st.lists(_MINUTE, min_size=2, max_size=2,
                                unique=True)))
    overlap = (FIRST + a * MINUTE, FIRST + b * MINUTE)
    rerun = parts[draw(st.integers(0, len(parts) - 1))]
    return draw(st.permutations([*parts, overlap, rerun]))


@settings(max_examples=3, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@example(plan=[(FIRST + 190 * MINUTE, None), (None, FIRST + 190 * MINUTE),
               (FIRST + 170 * MINUTE, FIRST + 1637 * MINUTE),
               (None, FIRST + 190 * MINUTE)])
@given(plan=run_plans())
def test_runs_over_parts_of_time_compose_like_one_run(plan):
    """Runs over minute-aligned event-time ranges (each holds every event
    of its range), in any order, overlapping and rerun, leave the exact
    tables one run over everything writes, which equal the oracle's, and
    approximate windows and sketches that equal the oracle's too."""
    records, want, one_run = generated()
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "out")
        covered = set()
        for i, (lo, hi) in enumerate(plan):
            mine = [j for j, (ts, _) in enumerate(records)
                    if (lo is None or ts >= lo) and (hi is None or ts < hi)]
            covered.update(mine)
            lines = [records[j][1] for j in mine]
            if lines:
                run_batch(lines, out, d, f"run{i}",
                          methods=",".join(("exact",) + APPROXIMATE))
        assert len(covered) == len(records)
        got = exact_tables(out)
        check_approximate(out, _CACHE["unique"])
    check(one_run, want)
    check(got, one_run)
