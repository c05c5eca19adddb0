"""The unbounded ``topk stream --method exact,cms`` on the local Flink
cluster (FlinkRunner, LOOPBACK, parallelism 2) with checkpoints every 2 s: a
TaskManager killed mid-run (SIGKILL), a new one started, the job restored
from its last checkpoint; then every window's latest exact pane equals the
oracle, and every window's latest CMS pane bounds the counts of the records
it was sent, less the late copies it refused (``late_counts``), and totals
them exactly (no loss, no double count).

The stream runs as a process, as users run it, with Flink's checkpoint
and restart options (``topk.pipelines.options.FlinkCheckpointOptions``).
"""
import collections
import os
import re
import signal
import sys
import time
import typing
import uuid

import pytest

import generated
import oracle
from streams import (SPECS, Stream, event_line,
                     latest_panes, oracle_mismatch, phase,
                     produce_second_phase, send_lines)
from topk.loadgen import producer
from topk.storage import layout as output_layout
from topk.storage import tables as output_tables

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "pipelines"))
from test_stream_unbounded_approximate import (  # noqa: E402
    latest_approximate, true_counts)

pytestmark = pytest.mark.integration


def _poll(what, check, timeout_s, every_s=1.0):
    """``check()`` until it returns something truthy; returns that."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _running_job(cluster, stream, started_after_ms):
    """The stream's job once all its tasks run, else None."""
    assert stream.proc.poll() is None, "topk stream exited"
    for job in cluster.jobs("RUNNING"):
        if job["start-time"] >= started_after_ms and all(
                v["status"] == "RUNNING"
                for v in cluster.rest(f"/jobs/{job['jid']}")["vertices"]):
            return job["jid"]
    return None


def _checkpoints(cluster, jid):
    return cluster.rest(f"/jobs/{jid}/checkpoints")


def _pane_copies(output):
    """(rows, distinct rows, distinct pane rows by window, rank and
    emission) of ``ranked_windows``: rows - distinct rows are exact copies
    (a commit replayed after a restore); distinct rows = distinct pane rows
    means no pane row was written twice with different contents."""
    con = output_tables.connect(output, ["ranked_windows"])
    con.execute("CREATE TABLE r AS SELECT * FROM ranked_windows")
    return con.sql("""
        SELECT (SELECT count(*) FROM r),
               (SELECT count(*) FROM (SELECT DISTINCT * FROM r)),
               (SELECT count(*) FROM (SELECT DISTINCT method, window_spec,
                  window_start, event_type, rank, emitted_at, pane_index
                FROM r))""").fetchall()[0]


def _skipped(log) -> int:
    """Parts the sink found committed already after the restore (its log)."""
    return sum(int(m) for m in re.findall(
        r"sink: (\d+) buffered parts were committed", log.read_text()))


def _late_event_ids(output) -> set[str]:
    if output_tables.dataset(output, output_layout.LATE_EVENTS) \
            is None:
        return set()
    con = output_tables.connect(output, [output_layout.LATE_EVENTS])
    return {r[0] for r in con.sql(
        "SELECT event_id FROM late_events").fetchall()}


class _Refused(typing.NamedTuple):
    """A partial the sketch stage refused as late, as a record that takes
    its weight off the truth."""
    ts: int
    event_type: str
    item_id: str
    weight: int


def _refused(output) -> list[_Refused]:
    """The ``late_counts`` rows (minute partials refused as late: here the
    sketch stage's, as the copies never pass de-duplication to reach the
    exact item shards) as negative records."""
    if output_tables.dataset(output, output_layout.LATE_COUNTS) is None:
        return []
    con = output_tables.connect(output, [output_layout.LATE_COUNTS])
    # (slice_start is the minute's start in ms, as in SLICE_COUNTS_SCHEMA.)
    return [_Refused(ts, et, item, -count) for et, ts, item, count in con.sql(
        "SELECT event_type, slice_start, item_id, count "
        "FROM late_counts").fetchall()]


def _cms_mismatch(output, counted, windows, timeout_s=60) -> str | None:
    """Poll until the latest CMS pane of each of ``windows`` ((spec, event
    type, start ms)) bounds every item's count in ``counted()`` (the
    records counted so far) and totals them; returns ``None`` then, or the
    first difference at the timeout."""
    lengths = {spec: length for spec, length, _ in SPECS}
    deadline = time.time() + timeout_s
    while True:
        records = counted()
        latest = latest_approximate(output)
        problem = None
        for spec, et, start in sorted(windows):
            rows = latest.get(("cms", spec, et, start))
            truth = true_counts(records, lengths[spec], et, start)
            if not rows:
                problem = f"no cms pane of {(spec, et, start)}"
            elif rows[0][-1] != sum(truth.values()):
                problem = (f"{(spec, et, start)}: window_total {rows[0][-1]}"
                           f" != {sum(truth.values())}")
            else:
                problem = next((
                    f"{(spec, et, start)}: {item} {truth[item]} outside "
                    f"[{lower}, {upper}]"
                    for item, _, lower, upper, *_ in rows
                    if not lower <= truth[item] <= upper), None)
            if problem:
                break
        if problem is None or time.time() > deadline:
            return problem
        time.sleep(2)


def test_taskmanager_killed_mid_run_restores_from_checkpoint_exactly(
        flink_cluster, kafka_broker, tmp_path):
    bootstrap = kafka_broker.bootstrap
    topic = f"flink-unbounded-{uuid.uuid4().hex[:8]}"
    first = phase(seed=21)
    producer.produce(bootstrap, topic, first, events_per_message=5,
                     partitions=2, progress=None)
    valid, _ = generated.parsed_records(first)
    output = str(tmp_path / "out")
    t0 = time.time()
    stream = Stream(bootstrap, topic, output, tmp_path / "stream.log",
                    "--method", "exact,cms", *flink_cluster.streaming_args())
    try:
        jid = _poll("the job's tasks to run",
                    lambda: _running_job(flink_cluster, stream,
                                         int(t0 * 1000)), 150)
        t_running = time.time()
        # A stream's state outgrows the JobManager's in-memory checkpoint
        # storage (5 MB) within seconds of a catch-up: files instead.
        storage = flink_cluster.rest(f"/jobs/{jid}/checkpoints/config")
        assert storage["checkpoint_storage"] == \
            "FileSystemCheckpointStorage", storage
        # Mid-run: some panes committed and a checkpoint completed after.
        _poll("committed panes", lambda: latest_panes(output, "1m"), 120)
        done = _checkpoints(flink_cluster, jid)["counts"]["completed"]
        _poll("a checkpoint after the panes", lambda: _checkpoints(
            flink_cluster, jid)["counts"]["completed"] > done, 60, 0.5)
        t_kill = time.time()
        killed = flink_cluster.kill_taskmanager()
        flink_cluster.start_taskmanager()

        def restored():
            cp = _checkpoints(flink_cluster, jid)
            return (cp["counts"]["restored"] >= 1
                    and _running_job(flink_cluster, stream, 0) == jid
                    and cp["latest"]["restored"])

        restore = _poll("the job's restore from a checkpoint", restored,
                        120)
        t_restored = time.time()
        assert not restore["is_savepoint"], restore
        assert restore["restore_timestamp"] >= t_kill * 1000, restore
        exceptions = flink_cluster.rest(f"/jobs/{jid}/exceptions")
        assert exceptions["exceptionHistory"]["entries"], exceptions

        # After the restore: newer events, and exact copies of counted
        # events (as a retrying client sends them).
        more = produce_second_phase(bootstrap, topic, 22)
        copies = valid[:100]
        send_lines(bootstrap, topic, [
            event_line(e.event_id, e.item_id, e.ts, e.event_type, e.weight)
            for e in copies])
        t_sent = time.time()
        difference = oracle_mismatch(output, oracle.dedup(valid + more),
                                     stream, timeout_s=150)
        t_equal = time.time()
        # CMS counts records as delivered (no de-duplication): the copies
        # count unless the sketch stage refused them as late, which it
        # decides by its own watermark (the exact path's de-duplication
        # stage may judge a copy at the lateness edge otherwise).
        windows = {(spec, et, w) for spec, length, slide in SPECS
                   for (et, w, *_) in oracle.ranked_windows(
                       oracle.dedup(valid + more), length, slide, 1)}
        cms_difference = _cms_mismatch(
            output, lambda: valid + more + copies + _refused(output),
            windows)
        late = _late_event_ids(output)
        refused = _refused(output)
    finally:
        stream.kill(signal.SIGTERM)
        flink_cluster.cancel_unfinished_jobs()
    rows, distinct_rows, pane_rows = _pane_copies(output)
    print(f"\nflink unbounded: job running {t_running - t0:.0f}s after "
          f"launch; TaskManager pid {killed} killed {t_kill - t0:.0f}s "
          f"after launch; restored checkpoint {restore['id']} "
          f"{t_restored - t_kill:.0f}s after the kill; second phase "
          f"({len(more) + 100} events) equal to the oracle "
          f"{t_equal - t_sent:.0f}s after sending; {rows - distinct_rows} "
          f"replayed copies of {rows} pane rows; sink: "
          f"{_skipped(tmp_path / 'stream.log') or 'no'} parts committed "
          "before the restore skipped; "
          f"{sum(e.event_id in late for e in copies)} of the 100 copies late "
          f"(exact), {-sum(r.weight for r in refused)} refused late (cms)")
    assert difference is None, difference
    assert cms_difference is None, cms_difference
    # Only copies were refused: no event counted once is missing.
    copied = collections.Counter()
    for e in copies:
        copied[(e.event_type, e.ts // 60_000 * 60_000, e.item_id)] += e.weight
    for r in refused:
        copied[(r.event_type, r.ts, r.item_id)] += r.weight
    assert min(copied.values(), default=0) >= 0, copied
    # The sink commits what the restored checkpoint had buffered only if
    # it had not committed it before: no row twice, no pane row written
    # twice with different contents.
    assert rows == distinct_rows == pane_rows, (rows, distinct_rows,
                                                pane_rows)
