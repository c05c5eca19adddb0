"""The output tables (``topk.storage.tables``): commits that several tables
show together, orphan recovery, predicate-owned reruns, concurrent
writers, maintenance and migration, checked against counts computed
independently from the events."""
import collections
import multiprocessing
import os
import random
import shutil

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

import oracle
from topk import query
from topk.core import counting, ranking, schema
from topk.core.windows import WindowSpec, parse_time
from topk.storage import layout, retention, tables

T0 = parse_time("2024-05-01T00:00:00Z")
M, D = schema.MINUTE_MS, schema.DAY_MS


def events(day: int, n: int, seed: int, source_items=("a", "b", "c", "d")):
    """``n`` events on day ``day`` (0-based), deterministic per seed."""
    rng = random.Random(seed)
    return [oracle.Event(
        event_id=f"{seed}-{day}-{i}", item_id=rng.choice(source_items),
        event_type=rng.choice(("play", "click")),
        ts=T0 + day * D + rng.randrange(D), user_id=None,
        weight=rng.randint(1, 3)) for i in range(n)]


def slice_rows(evs, source="batch", emitted_at=T0 + 9 * D) -> pa.Table:
    counts = counting.merge_counts([pa.table({
        "event_type": [e.event_type for e in evs],
        "slice_start": [e.ts - e.ts % M for e in evs],
        "item_id": [e.item_id for e in evs],
        "count": [e.weight for e in evs]}, schema=schema.SLICE_COUNTS_SCHEMA)])
    return pa.concat_tables(
        counting.to_slices_table(counting.rollup(counts, ms), name, source,
                                 emitted_at)
        for name, ms in (("1m", M), ("1h", schema.HOUR_MS), ("1d", D)))


def commit_batch(output, rows, run="run", pause_env=None):
    """Commit slice rows as a batch run over their span does."""
    span = tables.minute_span([rows])
    predicate = tables.batch_predicates(span, ["exact"], run)[layout.SLICES]
    return tables.commit(output, [tables.Change(
        layout.SLICES, tables.prepare(layout.SLICES, rows), predicate)],
        "batch", span=span)


def day_counts(output) -> dict:
    """{(day, item): count} of the committed 1d slices (latest row per
    slice and source, batch first: what ``topk query`` reads)."""
    ds = tables.dataset(output, layout.SLICES)
    rows = ds.to_table(filter=(pa.compute.field("slice_length") == "1d"))
    out = collections.Counter()
    for r in rows.to_pylist():
        out[(r["date"], r["item_id"], r["source"])] += r["count"]
    return dict(out)


def truth(evs, source="batch") -> dict:
    out = collections.Counter()
    for e in oracle.dedup(evs):
        day = layout.day_name(e.ts // D)
        out[(day, e.item_id, source)] += e.weight
    return dict(out)


def test_runs_over_other_days_keep_each_others_rows(tmp_path):
    """Day 1, then day 2, into one output: both days stay (the old layout
    replaced whole partitions); rerunning day 2 replaces only its rows."""
    out = str(tmp_path)
    day1, day2 = events(0, 300, 1), events(1, 300, 2)
    commit_batch(out, slice_rows(day1))
    commit_batch(out, slice_rows(day2))
    assert day_counts(out) == truth(day1 + day2)
    commit_batch(out, slice_rows(day2))
    assert day_counts(out) == truth(day1 + day2)
    # Every range answer equals the oracle's over both days.
    assert query.topk(out, 3, T0, T0 + 2 * D) == [
        query.RankedItem(*r) for r in oracle.topk(
            oracle.dedup(day1 + day2), 3, T0, T0 + 2 * D)]


def test_reader_sees_the_manifest_versions_and_writers_undo_orphans(tmp_path):
    out = str(tmp_path)
    day1 = events(0, 200, 1)
    commit_batch(out, slice_rows(day1))
    committed = tables.snapshot(out)
    # A writer killed after its table commit, before its manifest row:
    orphan = tables.prepare(layout.SLICES, slice_rows(events(0, 50, 9)))
    write_deltalake(tables.table_path(out, layout.SLICES), orphan,
                    mode="append", partition_by=["slice_length", "date"])
    assert DeltaTable(tables.table_path(out, layout.SLICES)).version() > \
        committed.versions[layout.SLICES]
    assert tables.snapshot(out) == committed
    assert day_counts(out) == truth(day1)
    # The next writer restores the table before committing its own rows.
    day2 = events(1, 200, 2)
    commit_batch(out, slice_rows(day2))
    assert day_counts(out) == truth(day1 + day2)
    latest = DeltaTable(tables.table_path(out, layout.SLICES))
    assert latest.to_pyarrow_table().num_rows == tables.dataset(
        out, layout.SLICES).count_rows()


def test_a_writer_keeping_its_tables_open_undoes_orphans_and_sees_new_tables(
        tmp_path):
    out = str(tmp_path / "out")
    opened = tables.OpenTables()
    day1 = events(0, 200, 1)
    tables.commit(out, [tables.Change(layout.SLICES, tables.prepare(
        layout.SLICES, slice_rows(day1, "stream")))], "stream", opened=opened)
    # An orphan of another writer, after this one opened the table:
    write_deltalake(tables.table_path(out, layout.SLICES),
                    tables.prepare(layout.SLICES,
                                   slice_rows(events(0, 50, 9))),
                    mode="append", partition_by=["slice_length", "date"])
    day2 = events(1, 200, 2)
    tables.commit(out, [tables.Change(layout.SLICES, tables.prepare(
        layout.SLICES, slice_rows(day2, "stream")))], "stream",
        opened=opened)
    assert day_counts(out) == truth(day1 + day2, "stream")
    # The output removed and made again: the kept table is not trusted.
    shutil.rmtree(out)
    commit_batch(out, slice_rows(day1))
    tables.commit(out, [tables.Change(layout.SLICES, tables.prepare(
        layout.SLICES, slice_rows(day2, "stream")))], "stream",
        opened=opened)
    want = truth(day1)
    want.update(truth(day2, "stream"))
    assert day_counts(out) == want
    assert tables.history(out).num_rows == 2


def test_a_retried_commit_is_applied_once(tmp_path):
    out = str(tmp_path)
    rows = slice_rows(events(0, 100, 3))
    change = tables.Change(layout.SLICES, tables.prepare(layout.SLICES, rows))
    first = tables.commit(out, [change], "stream", run_id="r1")
    again = tables.commit(out, [change], "stream", run_id="r1")
    assert first == again
    assert tables.history(out).num_rows == 1
    assert tables.dataset(out, layout.SLICES).count_rows() == rows.num_rows


def test_a_commit_shows_all_its_tables_together(tmp_path):
    out = str(tmp_path)
    rows = slice_rows(events(0, 100, 4))
    dead = pa.table({"raw": ["x"], "reason": ["bad"], "source": ["f"]},
                    schema=schema.DEAD_LETTER_SCHEMA)
    snap = tables.commit(out, [
        tables.Change(layout.SLICES, tables.prepare(layout.SLICES, rows)),
        tables.Change(layout.DEAD_LETTERS,
                      tables.prepare(layout.DEAD_LETTERS, dead, "in"))],
        "batch")
    row = tables.history(out).to_pylist()[-1]
    assert snap.seq == row["seq"] == 1
    assert set(snap.versions) == {layout.SLICES, layout.DEAD_LETTERS}
    con = duckdb.connect()
    assert set(tables.register_duckdb(con, out)) == set(snap.versions)
    assert con.sql("SELECT raw, input_id FROM dead_letters").fetchall() == [
        ("x", "in")]


def test_dead_letters_are_keyed_by_the_files_not_their_spelling(
        tmp_path, monkeypatch):
    path = tmp_path / "in.jsonl"
    path.write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    os.symlink(path, tmp_path / "link.jsonl")
    key = tables.input_id(["in.jsonl"])
    assert key == tables.input_id([str(path)]) == tables.input_id(
        ["./in.jsonl", str(path)]) == tables.input_id(["link.jsonl"])
    path.write_text("{}\n{}\n")  # other contents: another input
    assert tables.input_id(["in.jsonl"]) != key


def _stream_writer(output, bundles, seed, keep_open=False):
    # keep_open: as the stream's sink does, between commits that others'
    # commits interleave.
    opened = tables.OpenTables() if keep_open else None
    for i in range(bundles):
        rows = slice_rows(events(2, 20, seed * 1000 + i), source="stream",
                          emitted_at=T0 + 9 * D + i)
        tables.commit(output, [tables.Change(
            layout.SLICES, tables.prepare(layout.SLICES, rows))], "stream",
            opened=opened)


def _batch_writer(output, runs):
    for i in range(runs):
        commit_batch(output, slice_rows(events(i % 2, 200, 50 + i)),
                     run=f"batch-{i}")


def test_a_stream_and_a_batch_writing_at_once_keep_both(tmp_path):
    """Two processes commit into one output at once: a stream appending
    bundles, a batch replacing its days. Every bundle's rows and the last
    batch run of each day are present afterwards."""
    out = str(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_stream_writer, args=(out, 12, 1)),
             ctx.Process(target=_stream_writer, args=(out, 12, 2, True)),
             ctx.Process(target=_batch_writer, args=(out, 4))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    stream_events = [e for seed in (1, 2) for i in range(12)
                     for e in events(2, 20, seed * 1000 + i)]
    # Stream bundles hold disjoint events here, so their counts add up.
    want = truth(stream_events, "stream")
    want.update(truth(events(0, 200, 52)))
    want.update(truth(events(1, 200, 53)))
    assert day_counts(out) == want
    assert tables.history(out).num_rows == 12 + 12 + 4


def test_maintain_compacts_and_vacuums_without_changing_rows(tmp_path):
    out = str(tmp_path)
    for i in range(6):
        tables.append(out, layout.SLICES, slice_rows(
            events(0, 30, 100 + i), source="stream"))
    before = sorted(map(repr, tables.dataset(
        out, layout.SLICES).to_table().to_pylist()))
    path = tables.table_path(out, layout.SLICES)
    files_before = len(DeltaTable(path).file_uris())
    tables.maintain(out, vacuum_hours=0)
    after = tables.dataset(out, layout.SLICES)
    assert sorted(map(repr, after.to_table().to_pylist())) == before
    assert len(DeltaTable(path).file_uris()) < files_before
    on_disk = {os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
               if f.endswith(".parquet") and "_delta_log" not in d}
    assert on_disk == {u.removeprefix("file://")
                       for u in DeltaTable(path).file_uris()}
    assert DeltaTable(path).metadata().configuration == tables.TABLE_CONFIG


def test_maintain_gives_tables_of_earlier_versions_the_retention_config(
        tmp_path):
    """Tables created with Delta's week of tombstones and 30 days of logs
    get the stream-sized horizons at their next maintenance."""
    out = str(tmp_path)
    tables.append(out, layout.SLICES, slice_rows(events(0, 30, 7),
                                                 source="stream"))
    path = tables.table_path(out, layout.SLICES)
    dt = DeltaTable(path)
    # An earlier version configured the checkpoint interval only; delta-rs
    # cannot unset properties, so rebuild the table with that config.
    rows = dt.to_pyarrow_table()
    shutil.rmtree(path)
    write_deltalake(path, rows, partition_by=dt.metadata().partition_columns,
                    configuration={"delta.checkpointInterval": "20"})
    tables.maintain(out)
    assert DeltaTable(path).metadata().configuration == tables.TABLE_CONFIG
    assert sorted(map(repr, tables.dataset(out, layout.SLICES).to_table(
    ).to_pylist())) == sorted(map(repr, rows.to_pylist()))


def test_retention_deletes_by_predicate(tmp_path):
    out = str(tmp_path)
    old, recent = events(0, 200, 5), events(20, 200, 6)
    commit_batch(out, slice_rows(old + recent))
    policy = retention.parse_retention("1m=7d,1h=7d")
    now = T0 + 25 * D
    dry = retention.cleanup_parquet(out, policy, now, dry_run=True)
    assert os.path.join(out, "slices", "slice_length=1m",
                        "date=2024-05-01") in dry
    assert tables.snapshot(out).seq == 1
    retention.cleanup_parquet(out, policy, now)
    rows = tables.dataset(out, layout.SLICES).to_table().to_pylist()
    kept = collections.Counter((r["slice_length"], r["date"]) for r in rows)
    assert {length for length, day in kept if day == "2024-05-01"} == {"1d"}
    assert {length for length, day in kept if day == "2024-05-21"} == {
        "1m", "1h", "1d"}
    assert day_counts(out) == truth(old + recent)


def test_an_old_output_is_refused_until_migrated(tmp_path):
    out = str(tmp_path)
    evs = events(0, 300, 7)
    rows = slice_rows(evs)
    for partition, part in layout.slices_partitions(rows):
        path = layout.partition_path(out, layout.SLICES, partition,
                                     "part-batch.parquet")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(part, path)
    with pytest.raises(query.QueryError, match=r"topk migrate --output"):
        query.topk(out, 3, T0, T0 + D)
    with pytest.raises(tables.StorageError, match="older topk"):
        commit_batch(out, rows)
    assert tables.migrate(out) == [layout.SLICES]
    assert tables.legacy_tables(out) == []
    assert day_counts(out) == truth(evs)
    assert query.topk(out, 3, T0, T0 + D) == [
        query.RankedItem(*r) for r in oracle.topk(
            oracle.dedup(evs), 3, T0, T0 + D)]


def test_a_staged_run_over_months_commits_a_month_at_a_time(tmp_path):
    """A batch run's staged rows are grouped by month, and its commit
    writes one Delta write per month (the writer holds a file per open
    day): several table versions, one manifest row, the same rows as one
    write, and a rerun over part of the span still replaces only its own."""
    out = str(tmp_path)
    evs = [e._replace(ts=e.ts + (i % 75) * D)
           for i, e in enumerate(events(0, 900, 5))]
    before = tables.snapshot(out).seq
    rows = tables.prepare(layout.SLICES, slice_rows(evs))
    paths = tables.stage(out, "run-1", layout.SLICES, rows)
    months = {os.path.basename(os.path.dirname(p)) for p in paths}
    assert months == {"2024-05", "2024-06", "2024-07"}
    snap = tables.commit_staged(out, "run-1", ["exact"], "in-1")
    assert snap.seq == before + 1
    assert DeltaTable(tables.table_path(out, layout.SLICES)).version() >= 2
    assert day_counts(out) == truth(evs)
    assert not os.path.exists(tables.staging_dir(out, "run-1", layout.SLICES))
    # A rerun over June only, with other events there (a corrected input,
    # so ``replace``): July and May stay.
    june = [e._replace(ts=e.ts + 40 * D) for e in events(0, 300, 6)]
    tables.stage(out, "run-2", layout.SLICES,
                 tables.prepare(layout.SLICES, slice_rows(june)))
    tables.commit_staged(out, "run-2", ["exact"], "in-2", replace=True)
    # The rerun owns the minutes from its first event's to its last's.
    lo = min(e.ts for e in june) // M * M
    hi = max(e.ts for e in june) // M * M + M
    kept = [e for e in evs if not lo <= e.ts < hi]
    assert day_counts(out) == truth(kept + june)


@pytest.mark.parametrize("runs", [False, True])
@pytest.mark.parametrize("staging_runs", [0, tables.STAGING_RUNS])
def test_staging_groups_split_rows_by_month_and_spec_keeping_their_order(
        monkeypatch, runs, staging_runs):
    """Each group holds exactly its month's (and window spec's) rows in
    their input order, groups sorted by name; checked against a filter per
    group over rows of several months and specs interleaved one by one or
    in runs, both by sorting and by slicing runs (``STAGING_RUNS``)."""
    monkeypatch.setattr(tables, "STAGING_RUNS", staging_runs)
    rng = random.Random(7)
    n = 500
    keys = [(f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
             rng.choice(["1m", "1h", "1h_1m"])) for _ in range(n // 10)]
    keys = ([key for key in keys for _ in range(10)] if runs else
            [rng.choice(keys) for _ in range(n)])
    rows = pa.table({
        "date": [date for date, _ in keys],
        "window_spec": [spec for _, spec in keys],
        "row": list(range(n))})
    groups = tables.staging_groups(rows)
    names = [name for name, _ in groups]
    assert names == sorted(set(names))
    expected = {}
    for date, spec, row in zip(*(rows[c].to_pylist()
                                 for c in rows.schema.names)):
        expected.setdefault(f"{date[:7]}_{spec}", []).append(row)
    assert names == sorted(expected)
    assert {name: part["row"].to_pylist() for name, part in groups} == expected
    assert sum(part.num_rows for _, part in groups) == n
    # One group, and a table without dates, come back whole.
    one = rows.filter(pc.equal(rows["window_spec"], "1m")).slice(0, 1)
    assert tables.staging_groups(one)[0][1].equals(one)
    plain = rows.drop_columns(["date"])
    assert tables.staging_groups(plain) == [(tables.NO_GROUP, plain)]


def ranked_rows(emitted_at_ms, watermark_ms):
    merged = pa.table({
        "event_type": ["*", "*"],
        "window_start": pa.array([T0, T0], pa.int64()),
        "rank": pa.array([1, 2], pa.int32()),
        "item_id": ["a", "b"], "count": pa.array([5, 3], pa.int64()),
        "window_total": pa.array([8, 8], pa.int64())})
    rows = ranking.to_ranked_windows(merged, WindowSpec.parse("1m"),
                                     pane_timing="early", source="stream",
                                     emitted_at_ms=emitted_at_ms)
    return ranking.with_input_watermark(rows, watermark_ms)


def test_a_table_written_before_a_column_existed_reads_and_takes_it(
        tmp_path):
    out = str(tmp_path / "out")
    # An older topk wrote ranked_windows without input_watermark.
    old = tables.prepare(layout.RANKED_WINDOWS, ranked_rows(
        T0 + 1_000, None)).drop_columns(["input_watermark"])
    tables.commit(out, [tables.Change(layout.RANKED_WINDOWS, old)], "stream")
    read = tables.dataset(out, layout.RANKED_WINDOWS).to_table()
    assert read.column("input_watermark").null_count == 2
    # The next commit adds the column; the old rows keep nulls.
    tables.commit(out, [tables.Change(
        layout.RANKED_WINDOWS, tables.prepare(
            layout.RANKED_WINDOWS, ranked_rows(T0 + 2_000, T0 + 500)))],
        "stream")
    con = duckdb.connect()
    tables.register_duckdb(con, out, [layout.RANKED_WINDOWS])
    got = con.sql("""SELECT epoch_ms(emitted_at), epoch_ms(input_watermark),
                     count(*) FROM ranked_windows GROUP BY ALL ORDER BY 1
                  """).fetchall()
    assert got == [(T0 + 1_000, None, 2), (T0 + 2_000, T0 + 500, 2)]


def test_committed_parts_are_read_back_by_seq_also_from_an_older_manifest(
        tmp_path):
    """A manifest made before the ``parts`` column gets it with the next
    commit that names parts; ``committed_parts`` reads them after a seq."""
    out = str(tmp_path)
    change = tables.Change(layout.SLICES, tables.prepare(
        layout.SLICES, slice_rows(events(0, 10, 5))))
    tables.commit(out, [change], "batch")
    manifest = tables.table_path(out, tables.COMMITS)
    older = DeltaTable(manifest).to_pyarrow_table().drop_columns(["parts"])
    shutil.rmtree(manifest)
    write_deltalake(manifest, older)
    assert tables.committed_parts(out, 0) == {}
    tables.commit(out, [change], "stream", parts={"w1": (1, 4)})
    tables.commit(out, [change], "stream", parts={"w1": (5, 5), "w2": (1, 2)})
    assert tables.committed_parts(out, 0) == {"w1": [(1, 4), (5, 5)],
                                              "w2": [(1, 2)]}
    assert tables.committed_parts(out, 2) == {"w1": [(5, 5)], "w2": [(1, 2)]}
    assert tables.history(out)["parts"].to_pylist()[0] is None


def test_part_ranges_round_trip_through_committed_parts(tmp_path):
    numbers = [("w1", 3), ("w2", 1), ("w1", 4), ("w1", 5), ("w2", 2)]
    ranges = tables.part_ranges(numbers)
    assert ranges == {"w1": (3, 5), "w2": (1, 2)}
    change = tables.Change(layout.SLICES, tables.prepare(
        layout.SLICES, slice_rows(events(0, 10, 6))))
    tables.commit(str(tmp_path), [change], "stream", parts=ranges)
    done = tables.committed_parts(str(tmp_path), 0)
    assert all(tables.part_committed(n, done) for n in numbers)
    assert not any(tables.part_committed(n, done) for n in
                   [("w1", 2), ("w1", 6), ("w2", 3), ("w3", 1)])
