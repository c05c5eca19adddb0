"""``--metrics-port``: the pipelines' counters in Prometheus text format,
scraped over HTTP while ``topk batch`` (in process, the local runner) and an
unbounded ``topk stream`` (a subprocess on Prism, real broker) run, checked
against the brute-force oracle and the run summary."""
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

import generated
import oracle
from topk import cli
from topk.loadgen import generator, producer
from topk.core.windows import floor_to, format_time, now_ms

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
URL = re.compile(r"metrics at (http://127\.0\.0\.1:\d+/metrics)")
SUMMARY = re.compile(r"(\d+) valid events, (\d+) unique events counted, "
                     r"(\d+) duplicates dropped, (\d+) dead letters")


def scrape(url: str, timeout: float = 5.0) -> dict:
    """``{sample name + labels: value}`` of one scrape."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            values[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return values


def totals(values: dict) -> tuple:
    """(read, valid, dead letters, duplicates) of a scrape."""
    return tuple(int(values.get(name, -1)) for name in (
        "topk_events_read_total", "topk_events_valid_total",
        "topk_events_dead_letter_total", "topk_events_duplicate"))


def expected_totals(valid, dead) -> tuple:
    unique = oracle.dedup(valid)
    return (len(valid) + len(dead), len(valid), len(dead),
            len(valid) - len(unique))


def summary_totals(out: str) -> tuple:
    """(read, valid, dead letters, duplicates) of the run summary line."""
    match = SUMMARY.search(out)
    assert match, out
    valid, _, dupes, dead = map(int, match.groups())
    return valid + dead, valid, dead, dupes


def small_config(events=3000, seed=7):
    return generator.GeneratorConfig(
        events=events, items=40, rate=5.0, start="2024-05-01T00:00:00Z",
        jitter_s=30.0, duplicate_share=0.05, malformed_share=0.02,
        ts_format="mixed", seed=seed)


class FakeMetrics:
    """A ``MetricResults`` of ``(kind, name, step, committed, attempted)``."""

    def __init__(self, *rows):
        from apache_beam.metrics.execution import MetricKey, MetricResult
        from apache_beam.metrics.metricbase import MetricName
        self._q = {"counters": [], "distributions": [], "gauges": []}
        for kind, name, step, committed, attempted in rows:
            self._q[kind].append(MetricResult(
                MetricKey(step, MetricName("topk", name)), committed,
                attempted))

    def query(self, filter=None):
        return self._q


class FakeResult:
    def __init__(self, *answers):
        self.answers = list(answers)

    def metrics(self):
        answer = self.answers.pop(0) if len(self.answers) > 1 else (
            self.answers[0])
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_counters_sum_steps_and_fall_back_to_attempted():
    from topk.pipelines.metrics_export import counter_totals
    metrics = FakeMetrics(
        ("counters", "events_late", "a", 2, 5),
        ("counters", "events_late", "b", 3, 9),
        ("counters", "events_valid", "c", None, 7))  # Flink: attempted only
    assert counter_totals(metrics) == {"events_late": 5, "events_valid": 7}


def test_exporter_serves_polls_never_fails_and_keeps_final_values():
    from apache_beam.metrics.cells import GaugeResult, GaugeData
    from topk.pipelines.metrics_export import MetricsExporter
    first = FakeMetrics(
        ("counters", "events_valid", "s", 10, None),
        ("counters", "events_dead_letter", "s", 1, None),
        ("gauges", "kafka_lag_messages_p0", "r",
         GaugeResult(GaugeData(7, 1)), None),
        ("gauges", "kafka_lag_messages_p1", "r",
         GaugeResult(GaugeData(3, 1)), None))
    final = FakeMetrics(
        ("counters", "events_valid", "s", 12, None),
        ("counters", "events_unique", "s", 11, None),
        ("counters", "events_dead_letter", "s", 1, None))
    exporter = MetricsExporter(0, addr="127.0.0.1")
    try:
        url = exporter.url
        before = scrape(url)
        # No duplicates figure before anything is de-duplicated (-1:
        # absent): valid - 0 would call every event a duplicate.
        assert totals(before) == (0, 0, 0, -1)
        assert before["topk_pipeline_running"] == 0
        result = FakeResult(first, RuntimeError("job service away"),
                            FakeMetrics())
        exporter._result = result  # polled by hand, not by the thread
        exporter.started()
        exporter.poll_once()
        got = scrape(url)
        assert got["topk_pipeline_running"] == 1
        assert totals(got) == (11, 10, 1, -1)  # unique not counted yet
        assert got["topk_kafka_lag_messages{partition=0}"] == 7
        assert got["topk_kafka_lag_messages{partition=1}"] == 3
        exporter.poll_once()  # raises inside: counted, nothing changes
        exporter.poll_once()  # an empty answer takes no counter back
        got = scrape(url)
        assert totals(got) == (11, 10, 1, -1)
        assert got["topk_metrics_poll_errors_total"] == 1
        exporter.finish(FakeResult(final))
        got = scrape(url)
        assert got["topk_pipeline_running"] == 0
        assert totals(got) == (13, 12, 1, 1)
        assert got["topk_events_unique_total"] == 11
    finally:
        exporter.close()


def test_batch_exports_the_oracles_counts(tmp_path, capsys):
    config = small_config()
    events = tmp_path / "events.jsonl"
    generator.write_json_lines(config, str(events))
    valid, dead = oracle.parse_block(events.read_bytes())
    scrapes, errors, done = [], [], threading.Event()
    seen = {"out": ""}

    def scraper():
        # Finds the URL in what the command printed, then scrapes until it
        # returns; stdout is read here only (capsys consumes it).
        url = None
        while not done.is_set():
            if url is None:
                seen["out"] += capsys.readouterr().out
                match = URL.search(seen["out"])
                url = match and match.group(1)
            else:
                try:
                    scrapes.append(scrape(url))
                except Exception as e:  # noqa: BLE001
                    errors.append(e)
            time.sleep(0.05)

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    try:
        assert cli.main(["batch", "--input", str(events), "--output",
                         str(tmp_path / "out"), "--windows", "1h",
                         "--metrics-port", "0"]) == 0
    finally:
        done.set()
        thread.join(10)
    seen["out"] += capsys.readouterr().out
    url = URL.search(seen["out"]).group(1)
    assert not errors, errors[:3]
    assert scrapes, "no scrape while the batch ran"
    # While running: the pipeline is said to run; values never go down.
    assert scrapes[0]["topk_pipeline_running"] == 1
    for name in ("topk_read_records_total", "topk_events_valid_total"):
        seen_values = [s[name] for s in scrapes if name in s]
        assert seen_values == sorted(seen_values), name
    # After the run the endpoint still answers, with the final values:
    # the oracle's counts and the run summary's.
    final = scrape(url)
    assert final["topk_pipeline_running"] == 0
    want = expected_totals(valid, dead)
    assert totals(final) == want
    assert summary_totals(seen["out"]) == want
    assert final["topk_events_unique_total"] == len(oracle.dedup(valid))
    assert final["topk_read_records_total"] == len(valid) + len(dead)


def test_port_in_use_is_a_one_line_error(tmp_path, capsys):
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen()
    port = taken.getsockname()[1]
    events = tmp_path / "events.jsonl"
    events.write_text("")
    try:
        code = cli.main(["batch", "--input", str(events), "--output",
                         str(tmp_path / "out"), "--metrics-port", str(port)])
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"topk: error: --metrics-port {port}: "), err
    assert err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("port", ["-1", "65536", "x"])
def test_bad_port_is_a_one_line_error(tmp_path, capsys, port):
    assert cli.main(["batch", "--input", "x", "--output",
                     str(tmp_path / "o"), "--metrics-port", port]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--metrics-port" in err, err


# --- unbounded topk stream on Prism against the real broker ----------------

def _prism_or_skip():
    from topk.pipelines.stream import prism_binary
    if not prism_binary():
        pytest.skip("Prism is not built (deploy/prism/prism.sh install)")


def _wait_for_url(log_path, proc, deadline) -> str:
    while time.time() < deadline:
        assert proc.poll() is None, open(log_path).read()[-3000:]
        match = URL.search(open(log_path, errors="replace").read())
        if match:
            return match.group(1)
        time.sleep(0.2)
    raise AssertionError("no metrics URL printed")


@pytest.mark.integration
def test_unbounded_stream_counters_move_and_end_at_the_oracles(
        kafka_broker, tmp_path):
    _prism_or_skip()
    bootstrap = kafka_broker.bootstrap
    topic = f"metrics-{uuid.uuid4().hex[:10]}"
    start = floor_to(now_ms(), 60_000) - 30 * 60_000

    def phase(events, seed, offset_min):
        return generator.GeneratorConfig(
            events=events, items=20, rate=events / 600.0,
            start=format_time(start + offset_min * 60_000), jitter_s=5.0,
            duplicate_share=0.04, malformed_share=0.02, ts_format="mixed",
            seed=seed)

    first, second = phase(600, 11, 0), phase(900, 12, 10)
    producer.produce(bootstrap, topic, first, events_per_message=5,
                     partitions=2, progress=None)
    log_path = tmp_path / "stream.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "topk.cli", "stream", "--bootstrap",
         bootstrap, "--topic", topic, "--output", str(tmp_path / "out"),
         "--windows", "1m", "--k", "3", "--item_shards", "1",
         "--dedup_shards", "1", "--early_firing_s", "1",
         "--allowed_lateness", "1h", "--metrics-port", "0"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        url = _wait_for_url(log_path, proc, time.time() + 60)

        def wait_for(want, what, timeout_s=60):
            got, history = None, []
            deadline = time.time() + timeout_s
            while time.time() < deadline:
                assert proc.poll() is None, "topk stream exited"
                try:
                    got = scrape(url)
                except OSError:
                    got = {}
                history.append(got.get("topk_events_read_total", 0))
                if totals(got) == want:
                    return got, history
                time.sleep(0.5)
            raise AssertionError(f"{what}: {totals(got or {})} != {want}")

        valid1, dead1 = generated.parsed_records(first)
        got1, history1 = wait_for(expected_totals(valid1, dead1),
                                  "first phase")
        assert got1["topk_pipeline_running"] == 1
        assert got1["topk_kafka_messages_total"] > 0
        lags = {k: v for k, v in got1.items()
                if k.startswith("topk_kafka_lag_messages")}
        assert set(lags) == {'topk_kafka_lag_messages{partition=0}',
                             'topk_kafka_lag_messages{partition=1}'}, lags
        # Counters move while more events are produced.
        producer.produce(bootstrap, topic, second, events_per_message=5,
                         progress=None)
        valid2, dead2 = generated.parsed_records(second)
        got2, history2 = wait_for(
            expected_totals(valid1 + valid2, dead1 + dead2), "second phase")
        # Scraped while running: from the first phase's total up to both
        # phases', never down.
        moving = history1 + history2
        assert moving == sorted(moving), moving
        assert totals(got1)[0] in moving and moving[-1] == totals(got2)[0]
        assert totals(got1)[0] < totals(got2)[0]
        assert got2["topk_kafka_messages_total"] > got1[
            "topk_kafka_messages_total"]
        # Everything read: no lag left (the gauges follow within a poll).
        deadline = time.time() + 30
        lags = {}
        while time.time() < deadline:
            lags = {k: v for k, v in scrape(url).items()
                    if k.startswith("topk_kafka_lag_messages")}
            if lags and not any(lags.values()):
                break
            time.sleep(0.5)
        assert len(lags) == 2 and not any(lags.values()), lags
    finally:
        # SIGTERM to the driver only: it cancels the job (and its Prism)
        # and prints the run summary.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            log.close()
    out = open(log_path, errors="replace").read()
    # The run summary printed at the stop says the same.
    assert summary_totals(out) == totals(got2), out[-3000:]
