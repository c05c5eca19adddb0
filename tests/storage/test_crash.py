"""Crash safety: ``topk batch`` killed (SIGKILL) at several moments of its
run, its commit included, leaves readers the previous committed state, and
a rerun completes and equals a clean run; a reader querying during a run
never sees part of it.

The commit step sleeps ``TOPK_COMMIT_PAUSE_S`` seconds after each table it
commits (``topk.storage.tables.PAUSE_ENV``), which keeps the moments
between table commits open long enough to kill the writer in them.
"""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import duckdb
import pytest

from topk import query
from topk.loadgen import generator
from topk.storage import layout, tables

WINDOWS = "1h,1d"


def start_batch(input_path, out, pause=None) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop(tables.PAUSE_ENV, None)
    if pause:
        env[tables.PAUSE_ENV] = str(pause)
    return subprocess.Popen(
        [sys.executable, "-m", "topk.cli", "batch", "--input", input_path,
         "--output", out, "--windows", WINDOWS, "--k", "5",
         # B holds other events of A's days: it supersedes A's counts.
         "--replace-span"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)


def run_batch(input_path, out) -> None:
    proc = start_batch(input_path, out)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output.decode()


def state(out) -> dict:
    """Every committed table's rows (without the write time), as sorted
    multisets."""
    snap = tables.snapshot(out)
    rows = {}
    for table in tables.TABLES:
        ds = tables.dataset(out, table, snap)
        if ds is not None:
            rows[table] = sorted(
                repr(sorted((k, v) for k, v in r.items() if k != "emitted_at"))
                for r in ds.to_table().to_pylist())
    return rows


def day_totals(out) -> list[tuple]:
    """Per day, the sum of the day slices and the 1d window's total, read
    from one snapshot: equal unless a reader sees part of a run."""
    con = duckdb.connect()
    tables.register_duckdb(con, out, [layout.SLICES, layout.RANKED_WINDOWS])
    return con.sql("""
        WITH s AS (SELECT date, sum(count) AS n FROM slices
                   WHERE slice_length = '1d' GROUP BY date),
             w AS (SELECT date, max(window_total) AS n FROM ranked_windows
                   WHERE window_length = '1d' AND event_type = '*'
                   GROUP BY date)
        SELECT s.date, s.n, w.n FROM s FULL JOIN w USING (date)
        ORDER BY 1""").fetchall()


def versions_on_disk(out) -> dict:
    """Each table's newest Delta version on disk, committed or not."""
    out_versions = {}
    for table in tables.TABLES:
        log = os.path.join(tables.table_path(out, table), "_delta_log")
        if os.path.isdir(log):
            out_versions[table] = max(int(f.split(".")[0])
                                      for f in os.listdir(log)
                                      if f.endswith(".json"))
    return out_versions


def kill(proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(60)


def wait_for(condition, proc, timeout=120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the run ended before the moment came"
        assert time.monotonic() < deadline, "the moment never came"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Inputs A and B (other events over the same two days, B a corrected
    input that replaces A's), the output after A, and the clean output of
    A then B."""
    root = tmp_path_factory.mktemp("crash")
    inputs = {}
    for name, seed, n in (("a", 1, 6000), ("b", 2, 9000)):
        inputs[name] = str(root / f"{name}.jsonl")
        generator.write_json_lines(generator.GeneratorConfig(
            events=n, items=100, rate=n / 172800, seed=seed, users=0,
            malformed_share=0.01), inputs[name])
    after_a = str(root / "after_a")
    run_batch(inputs["a"], after_a)
    clean = str(root / "clean")
    shutil.copytree(after_a, clean)
    run_batch(inputs["b"], clean)
    return root, inputs, after_a, clean


@pytest.mark.parametrize("moment", ["staging", "between_tables",
                                    "before_manifest"])
def test_a_killed_run_leaves_the_previous_state_and_a_rerun_completes(
        runs, moment):
    root, inputs, after_a, clean = runs
    out = str(root / f"killed_{moment}")
    shutil.copytree(after_a, out)
    before = state(out)
    committed = tables.snapshot(out).versions
    assert day_totals(out) and all(s == w for _, s, w in day_totals(out))

    proc = start_batch(inputs["b"], out, pause=3)
    if moment == "staging":
        staging = os.path.join(out, tables.STAGING)
        wait_for(lambda: os.path.isdir(staging) and any(
            files for _, _, files in os.walk(staging)), proc)
    else:
        table = (layout.SLICES if moment == "between_tables"
                 else layout.RANKED_WINDOWS)
        wait_for(lambda: versions_on_disk(out).get(table, -1)
                 > committed[table], proc)
    kill(proc)

    if moment != "staging":  # the killed commit left an orphan version
        assert versions_on_disk(out) != committed
    assert state(out) == before
    assert all(s == w for _, s, w in day_totals(out))

    run_batch(inputs["b"], out)
    assert state(out) == state(clean)
    # What the killed run left (staged files, orphan data files) goes with
    # maintenance, and nothing committed changes.
    tables.maintain(out, vacuum_hours=0)
    assert not os.path.exists(os.path.join(out, tables.STAGING))
    assert state(out) == state(clean)


def test_a_reader_during_a_run_sees_one_run_or_the_other(runs):
    root, inputs, after_a, clean = runs
    out = str(root / "read_during")
    shutil.copytree(after_a, out)
    want = {tuple(day_totals(after_a)), tuple(day_totals(clean))}
    assert len(want) == 2
    seen, mid_commit, errors = set(), [], []
    done = threading.Event()

    def read():
        while not done.is_set():
            try:
                snap = tables.snapshot(out).versions
                on_disk = versions_on_disk(out)
                seen.add(tuple(day_totals(out)))
                if on_disk.get(layout.SLICES) != snap.get(layout.SLICES):
                    mid_commit.append(1)
                query.topk(out, 3, "2024-05-01T00:00:00Z",
                           "2024-05-02T00:00:00Z")
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        proc = start_batch(inputs["b"], out, pause=1)
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output.decode()
        time.sleep(0.3)
    finally:
        done.set()
        reader.join()
    assert not errors, errors[:3]
    assert mid_commit, "the reader never read during the commit"
    assert seen == want
