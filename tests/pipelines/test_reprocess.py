"""``topk batch --from-archive``: rebuild a day from the raw event archive.

The archive (``OUTPUT/archive/date=/hour=/*.parquet``, as the stream writes
it) holds late events (in files written after the stream closed their
windows) and duplicate copies (replays; some copies disagree). The stream
already wrote slices for the day that are wrong: they miss the late events
and count replayed copies twice. After reprocessing the day, every range
query answers exactly what the brute-force oracle says.
"""
import datetime as dt
import os
import random

import duckdb
import pyarrow as pa
import pytest

import oracle  # tests/ is on sys.path (conftest.py)
from archive_files import write_archive
from topk import cli, query
from topk.storage import reprocess
from topk.storage import layout as output_layout
from topk.storage import tables as output_tables
from topk.core.schema import EVENT_SCHEMA, SLICES_SCHEMA

DAY = "2024-05-01"
DAY_MS = oracle._utc_ms(dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc))
H, M = oracle.HOUR_MS, oracle.MINUTE_MS
WINDOWS = "1h,1d,1h/1m,1d/1h"
K = 4


def _events(rng, n, start_ms, span_ms, prefix):
    return [oracle.Event(f"{prefix}{i}", f"item-{min(int(rng.paretovariate(1.2)), 30)}",
                         rng.choice(["click", "play"]),
                         start_ms + rng.randrange(span_ms), None,
                         rng.choice([1, 1, 1, 2]))
            for i in range(n)]


def _table(events) -> pa.Table:
    return pa.Table.from_pylist([e._asdict() for e in events],
                                schema=EVENT_SCHEMA)


def _stream_slices(out, events):
    """Slice rows as a (wrong) stream would have written them."""
    emitted = dt.datetime(2024, 5, 2, tzinfo=dt.timezone.utc)
    for length, size in oracle.SLICE_LENGTHS.items():
        rows = [{"slice_start": dt.datetime.fromtimestamp(
                    start / 1000, tz=dt.timezone.utc),
                 "slice_length": length, "event_type": et, "item_id": item,
                 "count": count, "source": "stream", "emitted_at": emitted}
                for (et, start, item), count in oracle.slice_counts(
                    events, size).items()]
        table = pa.Table.from_pylist(rows, schema=SLICES_SCHEMA)
        output_tables.append(out, output_layout.SLICES, table)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """An output dir with the archive and the stream's wrong slices; returns
    ``(out, all events in the archive)``."""
    rng = random.Random(5)
    out = str(tmp_path_factory.mktemp("reprocess") / "out")
    on_time = _events(rng, 1500, DAY_MS, 24 * H, "e")
    late = _events(rng, 200, DAY_MS, 24 * H, "late")
    # Neighbouring days: in the archive, outside the reprocessed range.
    edges = (_events(rng, 100, DAY_MS - H, H, "before")
             + _events(rng, 100, DAY_MS + 24 * H, H, "after"))
    replayed = rng.sample(on_time, 150)
    # Copies that disagree: the smallest (ts, ...) copy must win.
    changed = [e._replace(ts=e.ts + 7 * M, item_id="item-changed")
               for e in rng.sample(on_time, 30)]
    write_archive(out, _table(on_time + edges), "a")
    write_archive(out, _table(replayed + changed), "replay")
    write_archive(out, _table(late), "late")
    # The stream missed the late events and double counted the replays.
    _stream_slices(out, on_time + replayed)
    return out, on_time + edges + late + replayed + changed


RANGES = [
    (DAY_MS, DAY_MS + 24 * H, None),
    (DAY_MS + 9 * H + 17 * M, DAY_MS + 13 * H + 42 * M, None),
    (DAY_MS + 6 * H, DAY_MS + 7 * H, "click"),
    (DAY_MS + 23 * H + 59 * M, DAY_MS + 24 * H, "play"),
]


def _answers(out):
    return [[(r.rank, r.item_id, r.count) for r in query.topk(
        out, K, s, e, event_type=t)] for s, e, t in RANGES]


def test_reprocessing_a_day_makes_queries_exact(scenario, capsys):
    out, archived = scenario
    truth = oracle.dedup(archived)
    expected = [oracle.topk(truth, K, s, e, t) for s, e, t in RANGES]
    assert _answers(out) != expected  # the stream's slices are wrong

    assert cli.main(["batch", "--from-archive", out, "--archive-start", DAY,
                     "--archive-end", "2024-05-02", "--output", out,
                     "--windows", WINDOWS, "--k", str(K)]) == 0
    summary = capsys.readouterr().out
    # 1500 on-time + 200 late events of the day, each counted once.
    assert "1700 unique events counted" in summary

    assert _answers(out) == expected

    # Only the day's slices were written, and none of the neighbours'.
    con = duckdb.connect()
    output_tables.register_duckdb(con, out)
    slices = con.sql("SELECT DISTINCT date FROM slices "
                     "WHERE source = 'batch'").fetchall()
    assert slices == [("2024-05-01",)]


def test_only_windows_inside_the_days_are_written(scenario):
    out, archived = scenario
    assert cli.main(["batch", "--from-archive",
                     os.path.join(out, output_layout.ARCHIVE),
                     "--archive-start", f"{DAY}T10:30:00Z",  # whole days
                     "--archive-end", f"{DAY}T13:00:00+02:00",
                     "--output", out,
                     "--windows", WINDOWS, "--k", str(K)]) == 0
    truth = [e for e in oracle.dedup(archived)
             if DAY_MS <= e.ts < DAY_MS + 24 * H]
    con = duckdb.connect()
    output_tables.register_duckdb(con, out)
    for spec in WINDOWS.split(","):
        length, slide = oracle.WINDOW_SPECS[spec]
        got = con.sql(
            "SELECT event_type, epoch_ms(window_start), rank, item_id, count, "
            "window_total FROM ranked_windows"
            f" WHERE window_spec = '{spec.replace('/', '_')}'"
            " AND source = 'batch' ORDER BY 1, 2, 3").fetchall()
        want = [r for r in oracle.ranked_windows(truth, length, slide, K)
                if r[1] >= DAY_MS and r[1] + length <= DAY_MS + 24 * H]
        assert got == want, spec
        # e.g. 1h/1m: 24 * 60 - 59 windows start and end inside the day
        step = slide or length
        assert len({r[1] for r in got}) == (24 * H - length) // step + 1


@pytest.mark.parametrize("argv, message", [
    (["--from-archive", "{out}", "--archive-start", "2024-06-01",
      "--archive-end", "2024-06-02"], "no archived events in"),
    (["--from-archive", "{out}", "--archive-start", "2024-05-02",
      "--archive-end", "2024-05-01"], "--archive-end (2024-05-01) must be after --archive-start"),
    (["--from-archive", "{out}", "--archive-start", "2024-05-01"],
     "--from-archive needs --archive-start and --archive-end"),
    (["--from-archive", "{out}", "--archive-start", "yesterday",
      "--archive-end", "today"], "bad date or time 'yesterday'"),
    (["--input", "x.jsonl", "--archive-start", "2024-05-01",
      "--archive-end", "2024-05-02"],
     "--archive-start/--archive-end need --from-archive"),
    # The old spelling (silently rewritten before) names the new one.
    (["--from-archive", "{out}", "--start", "2024-05-01", "--end",
      "2024-05-02"], "--start is no longer an option: use --archive-start"),
    (["--from-archive", "{out}", "--archive-start", "2024-05-01",
      "--end=2024-05-02"], "--end is no longer an option: use --archive-end"),
    (["--input", "x.jsonl", "--from-archive", "{out}"],
     "--input and --from-archive exclude each other"),
])
def test_bad_archive_arguments_are_one_line_errors(scenario, argv, message,
                                                   capsys):
    out, _ = scenario
    argv = [a.format(out=out) for a in argv]
    assert cli.main(["batch", *argv, "--output", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("topk: error: ")
    assert message in err


def test_range_helpers():
    assert reprocess.day_range("2024-05-01T10:00:00Z", "2024-05-01T10:01Z") \
        == (DAY_MS, DAY_MS + 24 * H)
    assert reprocess.day_range("2024-05-01", "2024-05-03") == (
        DAY_MS, DAY_MS + 48 * H)
    # An end exactly at midnight is not rounded up to another day.
    assert reprocess.day_range("2024-04-30T23:00:00Z", "2024-05-01")[1] \
        == DAY_MS
    assert reprocess.archive_day_globs("gs://b/out/archive", DAY_MS,
                                       DAY_MS + 48 * H) == [
        "gs://b/out/archive/date=2024-05-01/*/*.parquet",
        "gs://b/out/archive/date=2024-05-02/*/*.parquet"]
    assert reprocess.archive_day_globs("o/", DAY_MS, DAY_MS + H) == [
        "o/archive/date=2024-05-01/*/*.parquet"]
    events = _table([oracle.Event("a", "i", "t", DAY_MS - 1, None, 1),
                     oracle.Event("b", "i", "t", DAY_MS, None, 1),
                     oracle.Event("c", "i", "t", DAY_MS + H, None, 1)])
    assert reprocess.events_within(events, DAY_MS, DAY_MS + H)[
        "event_id"].to_pylist() == ["b"]
