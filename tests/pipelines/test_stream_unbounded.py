"""``topk stream`` unbounded on Prism against a real broker and the oracle:
early, on-time and late panes, late events, the dead-letter topic, the
archive, a SIGKILL restart and a broker restart.

The stream runs as a separate process (``python -m topk stream``), as users
run it; tests read what it writes while it runs and stop it at the end.
"""
import json
import os
import signal
import time
import uuid

import duckdb
import pytest
from kafka import KafkaConsumer

import generated
import oracle
# K and SPECS: for test_stream_unbounded_approximate, which imports them here.
from streams import (DAY, K, MIN, SPECS, Stream, event_line,  # noqa: F401
                     oracle_mismatch, phase, produce_second_phase, send_lines,
                     wait_for_oracle)
from topk import cli, query
from topk.loadgen import producer
from topk.pipelines.stream import prism_binary
from topk.core.windows import format_time, floor_to, now_ms
from topk.storage import tables as output_tables

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _prism():
    if not prism_binary():
        pytest.skip("Prism is not built (deploy/prism/prism.sh install)")


def check_input_watermarks(con):
    """Every stream pane row tells how far its input had got: an early
    pane's window was still open then, an on-time or late pane's closed,
    and the input cannot be ahead of the clock that wrote the row. Only
    early panes from before the stream's first watermark lack one."""
    [(rows, wrong, unknown)] = con.sql("""
        SELECT count(*),
               count(*) FILTER (
                 (pane_timing = 'early') != (input_watermark < window_end)
                 OR input_watermark > emitted_at),
               count(*) FILTER (input_watermark IS NULL
                                AND pane_timing <> 'early')
        FROM ranked_windows WHERE source = 'stream'""").fetchall()
    assert rows and (wrong, unknown) == (0, 0), (rows, wrong, unknown)


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
    check_input_watermarks(con)

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
    everything = oracle.dedup(valid + late_valid + oracle.parse_block(
        "\n".join(beyond).encode())[0])
    # Every day the events fall on: the late ones are four hours old, on
    # the previous day when this runs before 04:00 UTC.
    day_ms = floor_to(min(e.ts for e in everything), DAY)
    end_ms = floor_to(max(e.ts for e in everything), DAY) + DAY
    day, next_day = format_time(day_ms)[:10], format_time(end_ms)[:10]
    assert cli.main(["batch", "--from-archive", output, "--archive-start",
                     day, "--archive-end", next_day, "--output", output,
                     "--windows", "1m,1h/1m"]) == 0
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
