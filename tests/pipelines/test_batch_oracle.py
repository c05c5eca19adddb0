"""End to end: the real batch pipeline against the brute-force oracle.

Each test writes a small JSON-lines file, runs ``topk.pipelines.batch.run``
on the local runner and reads back every Parquet file it wrote: every
ranked window of every spec, every 1m/1h/1d slice and every dead letter
must be exactly what ``tests/oracle.py`` derives from the same bytes. Also:
a rerun into the same directory rewrites the same files (no duplicates), and
``topk query --format json`` answers random ranges like the oracle.
"""
import collections
import datetime as dt
import json
import os
import random

import pytest

from topk.storage import tables as output_tables
from topk import cli, query
from topk.loadgen import generator
from topk.pipelines import batch


import oracle  # tests/ is on sys.path (conftest.py)
MINUTE, HOUR, DAY = oracle.MINUTE_MS, oracle.HOUR_MS, oracle.DAY_MS
#: 2024-05-17T00:00:00Z: a 30-day window starts here (30 * 661 days).
T30 = 19860 * DAY
ALL_WINDOWS = list(oracle.WINDOW_SPECS)


def iso(ms: int) -> str:
    return (oracle._EPOCH + dt.timedelta(milliseconds=ms)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def to_ms(value) -> int:
    return oracle._utc_ms(value)


def run_batch(input_path, output, k, windows="all", item_shards=None,
              dedup_shards=2):
    """``topk batch``; ``item_shards=None`` leaves the runner's default
    (one shard in process; the tests giving several cover their merge)."""
    shards = [] if item_shards is None else [f"--item_shards={item_shards}"]
    batch.run([f"--input={input_path}", f"--output={output}", f"--k={k}",
               f"--windows={windows}", *shards,
               f"--dedup_shards={dedup_shards}"])


def read_output(output: str, only: str | None = None) -> dict:
    """{table: [(partition dict, row dict), ...]} of the committed snapshot
    of every table (of table ``only``, if given)."""
    out = collections.defaultdict(list)
    snap = output_tables.snapshot(output)
    for table in ([only] if only else output_tables.TABLES):
        ds = output_tables.dataset(output, table, snap)
        if ds is None:
            continue
        partitions = output_tables.TABLES[table][1]
        for row in ds.to_table().to_pylist():
            partition = {p: row[p] for p in partitions}
            for derived in ("window_spec", "date", "input_id"):
                row.pop(derived, None)
            out[table].append((partition, row))
    return out


def spec_name(row) -> str:
    return row["window_length"] + ("/" + row["slide"] if row["slide"] else "")


def day_of(ms: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=ms // DAY)).isoformat()


def check_against_oracle(block: bytes, input_path: str, output: str, k: int,
                         windows) -> list[str]:
    """Every discrepancy between the written tables and the oracle."""
    evs, dead = oracle.parse_block(block)
    unique = oracle.dedup(evs)
    tables = read_output(output)
    problems = []

    # Dead letters: every rejected record, raw as it arrived, with a reason.
    got_dead = [row for _, row in tables["dead_letters"]]
    got_raw = collections.Counter(r["raw"] for r in got_dead)
    want_raw = collections.Counter(raw for raw, _ in dead)
    if got_raw != want_raw:
        problems.append(
            f"dead letters: accepted but invalid per spec "
            f"{sorted((want_raw - got_raw).elements())[:5]}; rejected but "
            f"valid per spec {sorted((got_raw - want_raw).elements())[:5]}")
    for r in got_dead:
        if not (r["reason"] or "").strip():
            problems.append(f"dead letter without a reason: {r}")
        if os.path.basename(input_path) not in (r["source"] or ""):
            problems.append(f"dead letter source {r['source']!r} does not "
                            f"name the input")

    # Slices: exact counts per (type, slice, item) for 1m, 1h, 1d.
    by_length = collections.defaultdict(dict)
    for partition, r in tables["slices"]:
        start = to_ms(r["slice_start"])
        key = (r["event_type"], start, r["item_id"])
        if partition != {"slice_length": r["slice_length"],
                         "date": day_of(start)}:
            problems.append(f"slice row {key} in partition {partition}")
        if key in by_length[r["slice_length"]]:
            problems.append(f"slice {r['slice_length']} {key} written twice")
        by_length[r["slice_length"]][key] = r["count"]
        if r["source"] != "batch":
            problems.append(f"slice source {r['source']!r}")
    for name, size in oracle.SLICE_LENGTHS.items():
        got, want = by_length.get(name, {}), oracle.slice_counts(unique, size)
        if got != want:
            diff = sorted(set(got.items()) ^ set(want.items()))[:6]
            problems.append(f"slices {name}: {len(got)} rows vs {len(want)} "
                            f"expected; first differences {diff}")

    # Ranked windows: the exact top-k of every window of every chosen spec.
    by_spec = collections.defaultdict(list)
    for partition, r in tables["ranked_windows"]:
        start, end = to_ms(r["window_start"]), to_ms(r["window_end"])
        name = spec_name(r)
        length, slide = oracle.WINDOW_SPECS[name]
        by_spec[name].append((r["event_type"], start, r["rank"], r["item_id"],
                              r["count"], r["window_total"]))
        want_partition = {"window_spec": name.replace("/", "_"),
                          "date": day_of(start)}
        if partition != want_partition:
            problems.append(f"{name} window at {start} in {partition}")
        if end - start != length or start % (slide or length):
            problems.append(f"{name} window [{start}, {end}) misaligned")
        if not (r["method"] == "exact" and r["lower_bound"] == r["count"]
                == r["upper_bound"] and r["pane_timing"] == "batch"
                and r["source"] == "batch" and r["pane_index"] == 0
                and r["emitted_at"] is not None):
            problems.append(f"{name} row breaks the output contract: {r}")
    for name in ALL_WINDOWS:
        length, slide = oracle.WINDOW_SPECS[name]
        want = (oracle.ranked_windows(unique, length, slide, k)
                if name in windows else [])
        got = sorted(by_spec.get(name, []))
        if got != want:
            diff = sorted(set(got) ^ set(want))[:4]
            problems.append(f"ranked windows {name}: {len(got)} rows vs "
                            f"{len(want)} expected; first differences {diff}")
    return problems


def snapshot(output: str) -> dict:
    """Every table's committed rows without ``emitted_at``, as sorted
    multisets, and the tables' names."""
    rows = {}
    for table, items in read_output(output).items():
        rows[table] = sorted(
            repr(sorted((k, v) for k, v in row.items() if k != "emitted_at"))
            for _, row in items)
    return {"files": sorted(rows), "rows": rows}


def query_cli(output, k, start, end, event_type, capsys):
    argv = ["query", "--output", output, "--k", str(k), "--start", iso(start),
            "--end", iso(end), "--format", "json"]
    if event_type is not None:
        argv += ["--event-type", event_type]
    capsys.readouterr()
    assert cli.main(argv) == 0, capsys.readouterr().err
    return [(r["rank"], r["item_id"], r["count"])
            for r in json.loads(capsys.readouterr().out)]


# ---------------------------------------------------------------------------


def test_generated_stream_with_everything_dirty(tmp_path):
    """Duplicates, every malformed kind, 30 min of jitter, mixed ts, weights,
    few items (ties), across a 30-day boundary; all windows, k=3."""
    config = generator.GeneratorConfig(
        events=1500, items=12, zipf=0.6, start="2024-05-16T21:00:00Z",
        rate=1500 / (2 * 86400), jitter_s=1800, duplicate_share=0.1,
        malformed_share=0.06, ts_format="mixed", weight_share=0.3, seed=11,
        users=50)
    path = str(tmp_path / "events.jsonl")
    generator.write_json_lines(config, path)
    block = open(path, "rb").read()
    evs, dead = oracle.parse_block(block)
    assert len(oracle.dedup(evs)) == 1500 and len(dead) >= 60
    output = str(tmp_path / "out")
    run_batch(path, output, k=3, item_shards=4, dedup_shards=3)
    problems = check_against_oracle(block, path, output, 3, ALL_WINDOWS)
    assert not problems, "\n".join(problems)
    # The raw events spilled under the run's staging directory (the
    # de-duplication's shuffle); the commit removed it with the rest.
    assert not os.path.exists(os.path.join(output, output_tables.STAGING))


def test_generated_stream_rerun_and_cli_queries(tmp_path, capsys):
    """Duplicates, jitter, mixed ts and weights, no malformed records; a
    subset of windows with k=2; rerun into the same directory; random
    ``topk query`` ranges."""
    config = generator.GeneratorConfig(
        events=1200, items=8, zipf=0.3, start="2024-05-16T23:10:00Z",
        rate=1200 / (4 * 3600), jitter_s=900, duplicate_share=0.2,
        ts_format="mixed", weight_share=0.5, seed=5, users=0)
    path = str(tmp_path / "events.jsonl")
    generator.write_json_lines(config, path)
    block = open(path, "rb").read()
    output = str(tmp_path / "out")
    windows = ["1m", "1h", "1h/1m", "1d/1h", "30d/1d"]
    run_batch(path, output, k=2, windows=",".join(windows))
    problems = check_against_oracle(block, path, output, 2, windows)
    assert not problems, "\n".join(problems)

    first = snapshot(output)
    assert first["rows"]["ranked_windows"] and first["rows"]["slices"]
    run_batch(path, output, k=2, windows=",".join(windows), item_shards=5,
              dedup_shards=1)
    assert snapshot(output) == first, "a rerun must rewrite, not add"

    unique = oracle.dedup(oracle.parse_block(block)[0])
    rng = random.Random(1)
    lo = min(e.ts for e in unique) // MINUTE * MINUTE - 30 * MINUTE
    hi = max(e.ts for e in unique) // MINUTE * MINUTE + 30 * MINUTE
    for _ in range(8):
        start = lo + rng.randrange((hi - lo) // MINUTE) * MINUTE
        end = min(start + rng.choice([1, 7, 60, 61, 1440, 3000]) * MINUTE,
                  start + 30 * DAY)
        k = rng.choice([1, 2, 5, 20])
        etype = rng.choice([None, "play", "click"])
        assert query_cli(output, k, start, end, etype, capsys) == (
            oracle.topk(unique, k, start, end, etype)), (iso(start), iso(end),
                                                         k, etype)


def _line(event_id, item, etype, ts, **extra):
    obj = {"event_id": event_id, "item_id": item, "event_type": etype,
           "ts": ts, **extra}
    return json.dumps(obj, ensure_ascii=False)


def _hand_made_stream():
    """(lines, {raw: keyword its dead-letter reason must mention})."""
    lines = [
        # Ties in minute T30: a, b, é, \ue000, 😀 all count 2 over all types.
        _line("t1", "b", "play", T30 + 5),
        _line("t2", "a", "click", T30 + 6),
        _line("t3", "a", "play", "2024-05-17T00:00:00.007Z"),
        _line("t4", "b", "click", "2024-05-17T05:30:00.008+05:30"),
        _line("t5", "é", "play", T30 + 9, weight=2),
        _line("t6", "\ue000", "view", T30 + 10, weight=2),
        _line("t7", "😀", "play", T30 + 11, weight=None, user_id=None),
        _line("t7b", "😀", "play", T30 + 12, user_id="u"),
        # Boundaries: the last ms of the day before (another 30d window),
        # the last ms of the minute, the next minute.
        _line("b1", "c", "play", T30 - 1),
        _line("b2", "c", "play", T30 + MINUTE - 1),
        _line("b3", "c", "click", "2024-05-17T00:01:00Z", weight=1000),
        _line("b4", "a", "play", "2024-05-16T23:00:00.000-01:00"),
        # Duplicates: exact, re-rendered (same instant), conflicting.
        _line("t1", "b", "play", T30 + 5),
        _line("t2", "a", "click", "2024-05-17T00:00:00.006Z"),
        _line("d1", "z", "play", T30 + HOUR),
        _line("d1", "y", "play", T30 - DAY),  # smaller ts wins: y, a day early
        _line("d2", "x", "view", T30 + 2 * HOUR, weight=5),
        _line("d2", "x", "click", T30 + 2 * HOUR, weight=5),  # click < view
        _line("d3", "w", "play", T30 + 3 * HOUR, weight=7),
        _line("d3", "w", "play", T30 + 3 * HOUR, weight=3),  # weight 3 wins
        _line("d4", "v", "play", T30 + 4 * HOUR),
        _line("d4", "u", "play", T30 + 4 * HOUR),  # item u < v wins
        # Range edges: first valid instant.
        _line("r1", "old", "play", "2000-01-01T00:00:00Z"),
    ]
    bad = {
        '{"event_id": "m1", "item_id": "a", "event_type": "play", "ts": 17': "json",
        "{'event_id': 'm2'}": "json",
        "[1, 2]": "object",
        "": "empty",
        "   ": "empty",
        _line("m3", None, "play", T30): "item_id",
        _line(7, "a", "play", T30): "event_id",
        _line("m4", "a", "*", T30): "event_type",
        _line("m5", "a", "play", "yesterday"): "ts",
        _line("m6", "a", "play", "2024-05-17"): "ts",
        _line("m7", "a", "play", T30 + 0.5): "ts",
        _line("m8", "a", "play", "1999-12-31T23:59:59.999Z"): "ts",
        _line("m9", "a", "play", oracle.MAX_TS_MS): "ts",
        _line("m10", "a", "play", T30, weight=0): "weight",
        _line("m11", "a", "play", T30, weight=1_000_001): "weight",
        _line("m12", "a", "play", T30, weight="2"): "weight",
        _line("m13", "a", "play", T30, user_id=5): "user_id",
        _line("m14", "é" * 257, "play", T30): "item_id",
        _line("m15", "a", "p" * 65, T30): "event_type",
        _line("", "a", "play", T30): "event_id",
        # A malformed copy of a valid event does not replace it.
        _line("t1", "a", "play", T30, weight=-1): "weight",
    }
    lines[5:5] = list(bad)[:10]
    lines += list(bad)[10:]
    return lines, bad


def test_hand_made_ties_duplicates_and_dead_letters(tmp_path):
    lines, bad = _hand_made_stream()
    block = ("\n".join(lines) + "\n").encode()
    evs, dead = oracle.parse_block(block)
    assert sorted(raw for raw, _ in dead) == sorted(bad)
    unique = {e.event_id: e for e in oracle.dedup(evs)}
    assert (unique["d1"].item_id, unique["d2"].event_type,
            unique["d3"].weight, unique["d4"].item_id,
            unique["t1"].weight) == ("y", "click", 3, "u", 1)
    first_minute = [r[3] for r in oracle.ranked_windows(
        unique.values(), MINUTE, None, 10) if r[:2] == ("*", T30)]
    assert first_minute == ["a", "b", "é", "\ue000", "😀", "c"]

    path = str(tmp_path / "hand.jsonl")
    with open(path, "wb") as f:
        f.write(block)
    output = str(tmp_path / "out")
    run_batch(path, output, k=2, item_shards=2, dedup_shards=2)
    problems = check_against_oracle(block, path, output, 2, ALL_WINDOWS)
    assert not problems, "\n".join(problems)
    for _, row in read_output(output)["dead_letters"]:
        keyword = bad[row["raw"]]
        assert keyword.lower() in row["reason"].lower(), row


#: (range_bytes, batch_bytes) whose blocks are parsed too (the others only
#: have their records checked: parsing ~1000 tiny blocks takes seconds).
PARSED_CUTS = {(7, 13), (100, 1), (999, 500)}


@pytest.mark.parametrize("seed", range(3))
def test_file_ranges_and_blocks_read_every_record_once(tmp_path, seed):
    """The batch source cuts files into byte ranges and blocks (64 MB and
    16 MB in production; tiny here): the blocks' records, parsed one block
    at a time, are exactly the file's, whatever the cut points (inside
    multi-byte characters, on blank lines, at CRLF, without a final
    newline)."""
    from topk.core import events
    from topk.sources.files import plan_ranges, read_json_range
    rng = random.Random(seed)
    lines = []
    for i in range(60):
        kind = rng.choice(["ok", "ok", "ok", "blank", "crlf", "bad", "wide"])
        item = rng.choice(["a", "é", "😀", "\ue000"])
        if kind == "blank":
            lines.append(rng.choice(["", " "]))
        elif kind == "bad":
            lines.append('{"event_id": "x%d", "item_id":' % i)
        else:
            line = _line(f"e{i}", item * (40 if kind == "wide" else 1),
                         rng.choice(["play", "click"]),
                         T30 + rng.randrange(3 * HOUR))
            lines.append(line + ("\r" if kind == "crlf" else ""))
    data = ("\n".join(lines) + rng.choice(["\n", ""])).encode()
    path = str(tmp_path / "cut.jsonl")
    with open(path, "wb") as f:
        f.write(data)
    want_events, want_dead = oracle.parse_block(data)
    for range_bytes in (1, 7, 100, 999, 10**6):
        for batch_bytes in (1, 13, 500):
            records, evs, dead = [], [], []
            for _, start, end in plan_ranges(path, len(data), range_bytes):
                with open(path, "rb") as f:
                    for block in read_json_range(f, start, end, batch_bytes):
                        records += oracle.split_records(block)
                        if (range_bytes, batch_bytes) not in PARSED_CUTS:
                            continue
                        parsed = events.parse_json_lines(block)
                        evs += [tuple(r.values()) for r in
                                parsed.events.to_pylist()]
                        dead += parsed.dead_letters["raw"].to_pylist()
            assert sorted(records) == sorted(oracle.split_records(data)), (
                range_bytes, batch_bytes)
            if (range_bytes, batch_bytes) in PARSED_CUTS:
                assert sorted(evs, key=repr) == sorted(
                    (tuple(e) for e in want_events), key=repr)
                assert sorted(dead) == sorted(raw for raw, _ in want_dead)


def test_invalid_utf8_item_is_a_dead_letter_and_the_day_stays_queryable(
        tmp_path):
    """A record whose item_id holds a byte that is not UTF-8 is a dead
    letter, and the query layer still reads that day. (Was: the fast parse
    path accepted it and every ``topk query`` of the day failed inside
    DuckDB. See test_properties.py::
    test_invalid_utf8_in_a_string_value_is_a_dead_letter.)"""
    good = _line("e1", "a", "play", T30).encode()
    bad = b'{"event_id":"e2","item_id":"a\xffb","event_type":"play","ts":%d}' % T30
    path = str(tmp_path / "utf.jsonl")
    with open(path, "wb") as f:
        f.write(good + b"\n" + bad + b"\n")
    output = str(tmp_path / "out")
    run_batch(path, output, k=3, windows="1m")
    dead = [row for _, row in read_output(output, "dead_letters")[
        "dead_letters"]]
    assert [d["raw"] for d in dead] == ["\ufffd".join(
        bad.decode("latin-1").split("\xff"))]
    assert query.topk(output, 3, T30, T30 + MINUTE) == [
        query.RankedItem(1, "a", 1)]
