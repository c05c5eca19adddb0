"""Helpers of the tests that run the unbounded ``topk stream`` as a process
against a real broker and compare its panes with the oracle (on Prism:
tests/pipelines/test_stream_unbounded.py; on Flink:
tests/flink/test_flink_unbounded.py)."""
import json
import os
import signal
import subprocess
import sys
import time

from kafka import KafkaProducer

import generated
import oracle
from topk.loadgen import generator, producer
from topk.core.windows import format_time, floor_to, now_ms
from topk.storage import tables as output_tables

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
MIN = 60_000
DAY = 24 * 60 * MIN
SPECS = (("1m", MIN, None), ("1h_1m", 60 * MIN, MIN))
K = 3

class Process:
    """A ``topk`` command in its own process group, output to a log."""

    def __init__(self, log, *argv):
        self.log_path = log
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "topk.cli", *argv], cwd=REPO,
            stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL):
        """Kill the process group: the Python driver and its runner (Prism,
        or Flink's job server)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        self.log.close()

    def warnings(self, lines=15) -> str:
        """The last warnings and errors of the log: what a failed wait
        shows of why (a reconnect loop, a refused batch)."""
        with open(self.log_path, "rb") as f:
            text = f.read().decode(errors="replace")
        picked = [line[:300] for line in text.splitlines()
                  if " WARNING " in line or " ERROR " in line]
        return "\n".join(picked[-lines:])

    def stacks(self, wait_s=2.0) -> str:
        """Every thread's stack, as the process prints it on SIGUSR1
        (``topk.cli.main``), keeping the frames of this project, of the
        Kafka clients and of Beam's SDK worker (which bundle a stuck read
        belongs to): where a stream that stopped counting waits."""
        if not self.alive():
            return ""
        with open(self.log_path, "rb") as f:
            before = len(f.read())
        os.kill(self.proc.pid, signal.SIGUSR1)
        time.sleep(wait_s)
        with open(self.log_path, "rb") as f:
            text = f.read()[before:].decode(errors="replace")
        keep = ("Thread 0x", "Current thread", "topk/", "kafka",
                "apache_beam/runners/worker/")
        return "\n".join(line for line in text.splitlines()
                         if any(k in line for k in keep))

    def tail(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read()[-3000:].decode(errors="replace")


class Stream(Process):
    """``topk stream`` with the tests' windows, K, shards and lateness."""

    def __init__(self, bootstrap, topic, output, log, *extra):
        super().__init__(
            log, "stream", "--bootstrap", bootstrap, "--topic", topic,
            "--output", output, "--windows", "1m,1h/1m", "--k", str(K),
            "--item_shards", "2", "--dedup_shards", "2", "--early_firing_s",
            "1", "--allowed_lateness", "15m", *extra)


def send_lines(bootstrap, topic, lines, stamp_ms=None):
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for line in lines:
        ts = stamp_ms if stamp_ms is not None else json.loads(line)["ts"]
        p.send(topic, line.encode(), timestamp_ms=ts)
    p.flush()
    p.close()


def latest_panes(output, spec):
    """Rows of the latest exact pane of every window of ``spec``."""
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
    return "; ".join(_difference(spec, expected[spec], got[spec])
                     for spec in expected)


def _difference(spec, expected, got) -> str:
    """How the rows of a spec differ: a few of each side, and which event
    types and windows the missing rows span (the first few alone sort
    the '*' rows first and hide the rest)."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    windows = sorted({r[1] for r in missing})
    span = (f" ({len(missing)} rows of types "
            f"{sorted({r[0] for r in missing})}, {len(windows)} windows "
            f"{windows[0]}..{windows[-1]})" if missing else "")
    return (f"{spec}: missing {missing[:3]}{span} extra {extra[:3]} "
            f"repeated {len(got) - len(set(got))} rows")


def wait_for_oracle(output, events, stream, timeout_s=100):
    difference = oracle_mismatch(output, events, stream, timeout_s)
    assert difference is None, (f"{difference}\n{stream.warnings()}\n"
                                f"{stream.stacks()}")


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


def produce_second_phase(bootstrap, topic, seed):
    """Newer events, sharing the sliding windows of the first phase."""
    second = phase(minutes_ago=9, span_min=8, events=1200, seed=seed)
    producer.produce(bootstrap, topic, second, events_per_message=5,
                     progress=None)
    return generated.parsed_records(second)[0]
