"""``topk stream`` unbounded on Prism against a real broker and the oracle:
early, on-time and late panes, late events, the dead-letter topic, the
archive, a SIGKILL restart and a broker restart.

The stream runs as a separate process (``python -m topk stream``), as users
run it; tests read what it writes while it runs and stop it at the end.
"""
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import duckdb
import pytest
from kafka import KafkaConsumer, KafkaProducer

import generated
import oracle
from topk import cli, query
from topk.loadgen import generator, producer
from topk.pipelines.stream import prism_binary
from topk.core.windows import format_time, floor_to, now_ms
from topk.storage import tables as output_tables

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
MIN = 60_000
DAY = 24 * 60 * MIN
SPECS = (("1m", MIN, None), ("1h_1m", 60 * MIN, MIN))
K = 3


@pytest.fixture(autouse=True)
def _prism():
    if not prism_binary():
        pytest.skip("Prism is not built (deploy/prism/prism.sh install)")


class Stream:
    """A ``topk stream`` process in its own process group."""

    def __init__(self, bootstrap, topic, output, log, *extra):
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "topk.cli", "stream",
             "--bootstrap", bootstrap, "--topic", topic, "--output", output,
             "--windows", "1m,1h/1m", "--k", str(K), "--item_shards", "2",
             "--dedup_shards", "2", "--early_firing_s", "1",
             "--allowed_lateness", "15m", *extra],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def kill(self, sig=signal.SIGKILL):
        """Kill the process group: the Python driver and its Prism."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        self.log.close()


def send_lines(bootstrap, topic, lines, stamp_ms=None):
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for line in lines:
        ts = stamp_ms if stamp_ms is not None else json.loads(line)["ts"]
        p.send(topic, line.encode(), timestamp_ms=ts)
    p.flush()
    p.close()


def latest_panes(output, spec):
    if output_tables.dataset(output, "ranked_windows") is None:
        return []  # nothing committed yet
    con = output_tables.connect(output, ["ranked_windows"])
    con.execute(f"""CREATE TABLE panes AS SELECT * FROM ranked_windows
        WHERE window_spec = '{spec}' AND method = 'exact'""")
    return con.sql("""
        SELECT event_type, epoch_ms(window_start), rank, item_id, count,
               window_total FROM panes
        QUALIFY emitted_at = max(emitted_at) OVER (
          PARTITION BY window_start, event_type)
        ORDER BY 1, 2, 3""").fetchall()


def oracle_mismatch(output, events, stream, timeout_s=100) -> str | None:
    """Poll until every window's latest pane equals the oracle; returns
    ``None`` then, or a description of the difference at the timeout."""
    expected = {spec: [tuple(r) for r in oracle.ranked_windows(
        events, length, slide, K)] for spec, length, slide in SPECS}
    deadline = time.time() + timeout_s
    got = {}
    while time.time() < deadline:
        assert stream.proc.poll() is None, "topk stream exited"
        got = {spec: latest_panes(output, spec) for spec in expected}
        if got == expected:
            return None
        time.sleep(2)
    return "; ".join(
        f"{spec}: missing {sorted(set(expected[spec]) - set(got[spec]))[:3]}"
        f" extra {sorted(set(got[spec]) - set(expected[spec]))[:3]}"
        f" repeated {len(got[spec]) - len(set(got[spec]))} rows"
        for spec in expected)


def wait_for_oracle(output, events, stream, timeout_s=100):
    difference = oracle_mismatch(output, events, stream, timeout_s)
    assert difference is None, difference


def phase(minutes_ago=40, span_min=30, events=2400, seed=1):
    """Events over ``span_min`` minutes from ``minutes_ago`` minutes ago,
    with out-of-order times, duplicates and malformed records."""
    start = floor_to(now_ms(), MIN) - minutes_ago * MIN
    return generator.GeneratorConfig(
        events=events, items=30, rate=events / (span_min * 60.0),
        start=format_time(start), jitter_s=20.0, duplicate_share=0.03,
        malformed_share=0.01, ts_format="mixed", seed=seed)


def event_line(event_id, item, ts, event_type="play", weight=1):
    return json.dumps({"event_id": event_id, "item_id": item,
                       "event_type": event_type, "ts": ts, "weight": weight})


def test_panes_late_events_dead_letters_and_archive(kafka_broker, tmp_path):
    bootstrap = kafka_broker.bootstrap
    topic, valid, dead, output, stream = stream_first_phase(bootstrap,
                                                            tmp_path, 1)
    try:
        # The source's idle timeout has moved the watermark to the wall
        # clock: phase one's windows are closed. Now events within the
        # 90-minute lateness (late panes) and beyond it (late output).
        now = now_ms()
        within = [event_line(f"within-{i}", "item-late", now - 3 * MIN - i)
                  for i in range(40)]
        beyond = [event_line(f"beyond-{i}", "item-gone", now - 240 * MIN)
                  for i in range(5)]
        send_lines(bootstrap, topic, within + beyond, stamp_ms=now)
        late_valid, _ = oracle.parse_block("\n".join(within).encode())
        final_diff = oracle_mismatch(
            output, oracle.dedup(valid + late_valid), stream)
        late_rows = []
        deadline = time.time() + 60
        while time.time() < deadline and len(late_rows) < 5:
            try:
                late_rows = output_tables.connect(output).sql(
                    "SELECT event_id FROM late_events").fetchall()
            except duckdb.CatalogException:  # nothing committed yet
                pass
            time.sleep(1)
    finally:
        stream.kill(signal.SIGTERM)
    assert sorted(r[0] for r in late_rows) == sorted(
        f"beyond-{i}" for i in range(5))

    con = output_tables.connect(output)
    timings = dict(con.sql(
        "SELECT pane_timing, count(*) FROM ranked_windows "
        "GROUP BY 1").fetchall())
    assert timings.get("early") and timings.get("on_time") and timings.get(
        "late"), timings
    # One on-time pane per window.
    [(dupes,)] = con.sql(
        "SELECT count(*) FROM (SELECT window_start, event_type FROM "
        "ranked_windows WHERE pane_timing = "
        "'on_time' GROUP BY window_spec, window_start, event_type "
        "HAVING count(DISTINCT pane_index) > 1)").fetchall()
    assert dupes == 0

    # Dead letters: on the topic, with reasons, and in the table.
    consumer = KafkaConsumer(f"{topic}-dead-letters",
                             bootstrap_servers=bootstrap,
                             auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    letters = [json.loads(m.value) for m in consumer]
    consumer.close()
    expected_raw = sorted(r.decode() if isinstance(r, bytes) else r
                          for r, _ in dead)
    assert sorted(m["raw"] for m in letters) == expected_raw
    assert all(m["reason"] and m["source"] for m in letters)

    # The archive holds every valid event read, by hour.
    archived = duckdb.sql(
        "SELECT DISTINCT event_id FROM read_parquet('" + os.path.join(
            output, "archive", "**", "*.parquet") + "')").fetchall()
    assert {r[0] for r in archived} == {e.event_id for e in valid} | {
        f"within-{i}" for i in range(40)} | {f"beyond-{i}" for i in range(5)}

    # Exact counts: every window's latest pane (checked above, while
    # running) and range queries over the stream's slices (latest rows).
    events = oracle.dedup(valid + late_valid)
    first = floor_to(min(e.ts for e in events), MIN)
    assert final_diff is None, final_diff
    for a, b in ((first, first + 60 * MIN), (first + 7 * MIN,
                                             first + 23 * MIN)):
        got = [(r.rank, r.item_id, r.count) for r in query.topk(output, 5,
                                                                a, b)]
        assert got == oracle.topk(events, 5, a, b), (a, b)
    # The precise path: reprocessing the day from the stream's archive
    # makes range queries exact whatever the stream's panes said; batch rows
    # supersede stream rows. Late events count too: batch has no lateness.
    day_ms = floor_to(first, DAY)
    day, next_day = format_time(day_ms)[:10], format_time(day_ms + DAY)[:10]
    assert cli.main(["batch", "--from-archive", output, "--archive-start",
                     day, "--archive-end", next_day, "--output", output,
                     "--windows", "1m,1h/1m"]) == 0
    everything = oracle.dedup(valid + late_valid + oracle.parse_block(
        "\n".join(beyond).encode())[0])
    start = floor_to(min(e.ts for e in everything), MIN)
    for a, b in ((start, start + 60 * MIN), (first + 7 * MIN,
                                             first + 23 * MIN),
                 (start, floor_to(now_ms(), MIN))):
        got = [(r.rank, r.item_id, r.count) for r in query.topk(output, 5,
                                                                a, b)]
        assert got == oracle.topk(everything, 5, a, b), (a, b)


def stream_first_phase(bootstrap, tmp_path, seed, extra=(), timeout_s=100,
                       exact=True):
    """A topic with a first phase of events and a stream (``extra``
    options) whose exact panes equal the oracle within ``timeout_s``
    (``exact=False``: not waited for); returns (topic, valid events, dead
    letters, output, stream)."""
    topic = f"run-{uuid.uuid4().hex[:10]}"
    first = phase(seed=seed)
    producer.produce(bootstrap, topic, first, events_per_message=5,
                     partitions=2, progress=None)
    valid, dead = generated.parsed_records(first)
    output = str(tmp_path / "out")
    stream = Stream(bootstrap, topic, output, tmp_path / "stream.log",
                    *extra)
    try:
        if exact:
            wait_for_oracle(output, oracle.dedup(valid), stream, timeout_s)
    except BaseException:
        stream.kill(signal.SIGTERM)
        raise
    return topic, valid, dead, output, stream


def produce_second_phase(bootstrap, topic, seed):
    """Newer events, sharing the sliding windows of the first phase."""
    second = phase(minutes_ago=9, span_min=8, events=1200, seed=seed)
    producer.produce(bootstrap, topic, second, events_per_message=5,
                     progress=None)
    return generated.parsed_records(second)[0]


def test_sigkill_and_restart_neither_loses_nor_double_counts(kafka_broker,
                                                              tmp_path):
    bootstrap = kafka_broker.bootstrap
    topic, valid, _, output, stream = stream_first_phase(bootstrap, tmp_path,
                                                         2)
    stream.kill(signal.SIGKILL)
    # While it is down: newer events, then exact copies of counted events
    # (as a retrying client sends; late by now, not counted again anyway).
    more = produce_second_phase(bootstrap, topic, 3)
    send_lines(bootstrap, topic, [
        event_line(e.event_id, e.item_id, e.ts, e.event_type, e.weight)
        for e in valid[:100]])
    stream = Stream(bootstrap, topic, output, tmp_path / "stream.log")
    try:
        wait_for_oracle(output, oracle.dedup(valid + more), stream)
    finally:
        stream.kill(signal.SIGTERM)


def test_broker_restart_during_a_run(kafka_broker, tmp_path):
    topic, valid, _, output, stream = stream_first_phase(
        kafka_broker.bootstrap, tmp_path, 4)
    try:
        kafka_broker.stop()
        time.sleep(5)
        kafka_broker.start()
        more = produce_second_phase(kafka_broker.bootstrap, topic, 5)
        wait_for_oracle(output, oracle.dedup(valid + more), stream)
    finally:
        stream.kill(signal.SIGTERM)
