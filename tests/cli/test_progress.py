"""Progress of ``topk batch`` on stderr (issue 12): plain lines with
``--progress``, nothing without it when stderr is not a terminal, one
rewritten line on a terminal (a real pseudo-terminal), and the run summary
of what was committed. The commands run as processes on real files."""
import os
import pty
import re
import subprocess
import sys
import time

import pytest

from topk import cli
from topk.cli import progress
from topk.core.progress import ReadProgress, Snapshot
from topk.loadgen import generator

#: A plain progress line; groups: bytes read, total, %, records.
LINE = re.compile(
    r"^read (?P<mb>[\d,.]+) MB of (?P<total>[\d,.]+) MB \((?P<pct>\d+)%\) "
    r"from 4 files, (?P<records>[\d,]+) records, .*\d+ (s|min \d+ s) "
    r"elapsed")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """About 5 MB of events in four files (JSON lines, gzip, Parquet)."""
    d = tmp_path_factory.mktemp("progress")
    for i, name in enumerate(["a.jsonl", "b.jsonl", "c.jsonl.gz",
                              "d.parquet"]):
        config = generator.GeneratorConfig(events=15_000, items=500,
                                           rate=2, seed=i)
        if name.endswith(".parquet"):
            generator.write_parquet(config, str(d / name))
        else:
            generator.write_json_lines(config, str(d / name))
    return d


def _argv(inputs, out, *extra):
    return [sys.executable, "-m", "topk.cli", "batch", "--input",
            str(inputs / "*"), "--output", str(out), "--windows", "1h",
            "--k", "3", *extra]


def _batch(inputs, out, *extra):
    return subprocess.run(_argv(inputs, out, *extra), capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_progress_lines_grow_to_100_percent(inputs, tmp_path):
    proc = _batch(inputs, tmp_path / "out", "--progress",
                  "--progress-every", "0.2")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines()
             if line.startswith("read ")]
    assert len(lines) >= 2, proc.stderr
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    mb = [float(m["mb"].replace(",", "")) for m in parsed]
    records = [int(m["records"].replace(",", "")) for m in parsed]
    assert mb == sorted(mb) and records == sorted(records)
    total = sum(p.stat().st_size for p in inputs.iterdir())
    last = parsed[-1]
    assert last["pct"] == "100" and last["mb"] == last["total"] == \
        f"{total / 1e6:,.1f}"
    assert lines[-1].endswith("input read; counting and writing")
    # Every record was read once: 60,000 events (plus the generator's
    # default duplicates and malformed records) are the records parsed.
    summary = proc.stdout.splitlines()
    valid, dead = (int(re.search(rf"(\d+) {what}", summary[0])[1])
                   for what in ("valid events", "dead letters"))
    assert records[-1] == valid + dead
    # What was committed, where: the rows the tables now hold.
    m = re.match(rf"output {re.escape(str(tmp_path / 'out'))}: 1 commit: "
                 r"ranked_windows ([\d,]+) rows, slices ([\d,]+) rows$",
                 summary[1])
    assert m, summary
    from topk.storage import tables
    for table, rows in zip(("ranked_windows", "slices"), m.groups()):
        assert int(rows.replace(",", "")) == tables.dataset(
            str(tmp_path / "out"), table).count_rows()


def test_no_progress_without_a_terminal_unless_asked(inputs, tmp_path):
    proc = _batch(inputs, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "read " not in proc.stderr and "records/s" not in proc.stderr
    assert "\r" not in proc.stderr


def test_a_terminal_gets_one_rewritten_line(inputs, tmp_path):
    # stderr is a real pseudo-terminal; stdout stays a pipe.
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(_argv(inputs, tmp_path / "out"),
                                stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=slave)
    finally:
        os.close(slave)
    chunks = []
    while True:  # read as it comes: a full terminal buffer would block it
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=300) == 0
    err = b"".join(chunks).decode()
    shown = [s for s in err.split("\r") if s.startswith("read ")]
    assert shown and all(s.endswith("\x1b[K") or s.endswith("\x1b[K\n")
                         for s in shown), err
    assert "(100%)" in shown[-1] and err.count("\n") <= 2, err


def test_no_progress_turns_the_terminal_line_off():
    class Tty:
        def isatty(self):
            return True
    assert progress.reporter_for(None, stream=Tty()).live
    quiet = progress.reporter_for(False, stream=Tty())
    assert not quiet.live and quiet.every_s is None


def test_progress_is_a_command_option_not_a_pipeline_option(tmp_path,
                                                          capsys):
    assert cli.main(["batch", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--progress" in out and "runner's UI" in out
    assert cli.main(["batch", "--input", "x.jsonl", "--output", "o",
                     "--progress-every", "0"]) == 2
    assert "must be a positive number of seconds" in capsys.readouterr().err


def _snap(nbytes, records, total, started=100.0, first=101.0, last=None):
    return Snapshot(nbytes, records, total, 2, started, first,
                    last if last is not None else first, True)


def test_the_line_says_percent_rate_and_eta():
    line = progress.describe(_snap(25_000_000, 50_000, 100_000_000), 111.0)
    assert line == ("read 25.0 MB of 100.0 MB (25%) from 2 files, 50,000 "
                    "records, 5,000 records/s, 11 s elapsed, ETA 30 s")
    # Unknown size: no % and no ETA.
    assert progress.describe(_snap(3_000_000, 10, None), 103.0) == (
        "read 3.0 MB from 2 files, 10 records, 5 records/s, 3 s elapsed")
    # All read: the rate is that of reading, the pipeline goes on.
    done = progress.describe(_snap(100, 10, 100, last=106.0), 400.0)
    assert done == ("read 0.0 MB of 0.0 MB (100%) from 2 files, 10 records, "
                    "2 records/s, 5 min 00 s elapsed, input read; counting "
                    "and writing")


def test_the_counter_is_safe_across_threads():
    import threading
    counter = ReadProgress()
    counter.start(None)
    threads = [threading.Thread(target=lambda: [counter.add(3, 1)
                                                for _ in range(10_000)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = counter.snapshot()
    assert (snap.bytes, snap.records) == (120_000, 40_000) and snap.active


def test_the_summary_counts_every_delta_version_of_a_commit(tmp_path):
    """A batch commit over several months writes several Delta versions
    of a table under one manifest row: the summary adds them all, and
    leaves out what earlier runs wrote."""
    from storage.test_tables import D, events, slice_rows
    from topk.storage import layout, tables
    out = str(tmp_path)
    tables.stage(out, "run-0", layout.SLICES, tables.prepare(
        layout.SLICES, slice_rows(events(0, 50, 4))))
    tables.commit_staged(out, "run-0", ["exact"], "in-0")
    first = tables.dataset(out, layout.SLICES).count_rows()
    time.sleep(1.1)  # the summary counts commits from a whole second on
    since = time.time()
    evs = [e._replace(ts=e.ts + 100 * D + (i % 75) * D)
           for i, e in enumerate(events(0, 900, 5))]
    tables.stage(out, "run-1", layout.SLICES, tables.prepare(
        layout.SLICES, slice_rows(evs)))
    tables.commit_staged(out, "run-1", ["exact"], "in-1")
    added = tables.dataset(out, layout.SLICES).count_rows() - first
    assert progress.committed(out, since) == (
        f"1 commit: slices {added:,} rows")
