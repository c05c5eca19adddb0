"""Alert delivery against real receivers (a local HTTP server, the Kafka
broker fixture) and the watcher over a real output: retries with back-off,
bounded attempts, failures counted, the watcher going on, and a restart on
the same state file sending nothing old."""
import http.server
import io
import json
import threading
import time

import pyarrow as pa
import pytest

from topk.alerts import deliver, rules, watch
from topk.core import schema
from topk.storage import tables

MIN = 60_000
T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z


class Receiver:
    """A webhook receiver: a real HTTP server on 127.0.0.1 in a thread.
    ``fail_first`` POSTs (or all, with ``always_fail``) get ``status``;
    the others are recorded (``alerts``, with their arrival time)."""

    def __init__(self, fail_first=0, always_fail=False, status=503):
        self.alerts, self.arrivals, self.requests = [], [], []
        self.fail_first, self.always_fail, self.status = (
            fail_first, always_fail, status)
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.requests.append(time.monotonic())
                    fail = receiver.always_fail or len(
                        receiver.requests) <= receiver.fail_first
                    if not fail:
                        receiver.alerts.append(json.loads(body))
                        receiver.arrivals.append(time.time())
                self.send_response(receiver.status if fail else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory():
    made = []

    def make(**kwargs):
        made.append(Receiver(**kwargs))
        return made[-1]
    yield make
    for r in made:
        r.close()


ALERT = {"alert_id": "abc123", "rule": "hot", "item_id": "x",
         "values": {"count": 5}}


def test_webhook_retries_with_backoff_and_delivers_once(receiver_factory):
    r = receiver_factory(fail_first=2)
    sink = deliver.WebhookSink(rules.WebhookTarget(
        r.url, attempts=5, backoff_s=0.1, timeout_s=2))
    assert sink.send(ALERT) is True
    assert r.alerts == [ALERT]
    assert len(r.requests) == 3
    gaps = [b - a for a, b in zip(r.requests, r.requests[1:])]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2  # exponential back-off
    sink.close()


def test_webhook_gives_up_after_bounded_attempts(receiver_factory):
    r = receiver_factory(always_fail=True, status=500)
    waits = []
    sink = deliver.WebhookSink(rules.WebhookTarget(
        r.url, attempts=4, backoff_s=0.5, max_backoff_s=1.0, timeout_s=2),
        sleep=waits.append)
    assert sink.send(ALERT) is False
    assert len(r.requests) == 4 and r.alerts == []
    assert waits == [0.5, 1.0, 1.0]


def test_webhook_does_not_retry_a_refusal(receiver_factory):
    r = receiver_factory(always_fail=True, status=400)
    sink = deliver.WebhookSink(rules.WebhookTarget(r.url, attempts=5),
                               sleep=lambda s: None)
    assert sink.send(ALERT) is False
    assert len(r.requests) == 1


def test_webhook_without_a_server():
    r = Receiver()
    url = r.url
    r.close()  # nothing listens there any more
    sink = deliver.WebhookSink(rules.WebhookTarget(url, attempts=3,
                                                   timeout_s=1),
                               sleep=lambda s: None)
    assert sink.send(ALERT) is False
    assert sink.attempts_made == 3


# --- the watcher over a real output ---------------------------------------

def ranked_rows(panes):
    """RANKED_WINDOWS_SCHEMA rows of 1m panes ``(minute, emitted_s,
    timing, {item: count})``."""
    cols = {f.name: [] for f in schema.RANKED_WINDOWS_SCHEMA}
    for minute, emitted_s, timing, counts in panes:
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        for rank, (item, count) in enumerate(ranked, 1):
            for name, value in {
                    "window_start": T0 + minute * MIN,
                    "window_end": T0 + (minute + 1) * MIN,
                    "window_length": "1m", "slide": None, "method": "exact",
                    "event_type": "*", "rank": rank, "item_id": item,
                    "count": count, "lower_bound": count,
                    "upper_bound": count, "guaranteed": True,
                    "window_total": sum(counts.values()),
                    "pane_timing": timing, "pane_index": 0,
                    "source": "stream",
                    "emitted_at": T0 + int(emitted_s * 1000),
                    "input_watermark": None}.items():
                cols[name].append(value)
    return pa.table(cols, schema=schema.RANKED_WINDOWS_SCHEMA)


HOT = rules.parse({"rules": [{"name": "hot", "when": "count_over",
                              "window": "1m", "threshold": 100}],
                   "deliver": {"log": True}})


def test_the_watcher_survives_a_failing_webhook_and_counts_it(
        tmp_path, receiver_factory):
    out, state = str(tmp_path / "out"), str(tmp_path / "state.json")
    bad = receiver_factory(always_fail=True, status=503)
    log = io.StringIO()
    sinks = [deliver.LogSink(log), deliver.WebhookSink(rules.WebhookTarget(
        bad.url, attempts=3, backoff_s=0.01, timeout_s=1))]
    w = watch.Watcher(out, HOT, state, deliver.Deliverer(sinks=sinks))
    assert w.poll_once().panes == 0  # no output yet: nothing to do
    tables.append(out, "ranked_windows", ranked_rows(
        [(0, 10, "early", {"a": 150, "b": 3})]))
    first = w.poll_once()
    assert [a["item_id"] for a in first.alerts] == ["a"]
    assert (first.delivered, first.failed) == (1, 1)
    assert len(bad.requests) == 3
    tables.append(out, "ranked_windows", ranked_rows(
        [(0, 20, "early", {"a": 160, "b": 300})]))
    second = w.poll_once()  # goes on: b fires, a is in its episode
    assert [a["item_id"] for a in second.alerts] == ["b"]
    assert (first.panes, second.panes) == (1, 1)
    assert w.stats["failed"] == {"webhook": 2}
    assert w.stats["delivered"] == {"log": 2}
    assert [json.loads(line)["item_id"] for line in
            log.getvalue().splitlines()] == ["a", "b"]
    assert w.state["pending"] == []


def test_a_restart_on_the_same_state_sends_nothing_old(tmp_path,
                                                       receiver_factory):
    out, state = str(tmp_path / "out"), str(tmp_path / "state.json")
    r = receiver_factory()
    target = rules.WebhookTarget(r.url, attempts=2, backoff_s=0.01)

    def watcher():
        return watch.Watcher(out, HOT, state, deliver.Deliverer(
            sinks=[deliver.WebhookSink(target)]))
    tables.append(out, "ranked_windows", ranked_rows(
        [(0, 10, "early", {"a": 150}), (0, 61, "on_time", {"a": 170})]))
    assert len(watcher().poll_once().alerts) == 1
    again = watcher()
    assert again.poll_once().alerts == []
    # New panes after the restart: the episode of a goes on, c is new.
    tables.append(out, "ranked_windows", ranked_rows(
        [(1, 70, "early", {"a": 200, "c": 120})]))
    assert [a["item_id"] for a in again.poll_once().alerts] == ["c"]
    assert [a["item_id"] for a in r.alerts] == ["a", "c"]
    # A fresh state would alert again (what the state file prevents).
    fresh = watch.Watcher(out, HOT, str(tmp_path / "other.json"),
                          deliver.Deliverer(sinks=[]))
    assert {a["item_id"] for a in fresh.poll_once().alerts} == {"a", "c"}


def test_a_pane_committed_after_a_newer_one_is_evaluated(tmp_path):
    """Writers of different window specs or shards commit in any order:
    what matters is what is new in the committed snapshot."""
    out = str(tmp_path / "out")
    w = watch.Watcher(out, HOT, str(tmp_path / "state.json"),
                      deliver.Deliverer(sinks=[]))
    tables.append(out, "ranked_windows", ranked_rows(
        [(1, 30, "early", {"a": 5})]))
    assert w.poll_once().panes == 1
    tables.append(out, "ranked_windows", ranked_rows(
        [(0, 20, "on_time", {"z": 500})]))  # emitted before, committed after
    result = w.poll_once()
    assert result.panes == 1
    assert [(a["item_id"], a["pane_timing"]) for a in result.alerts] == [
        ("z", "on_time")]
    assert w.poll_once().panes == 0  # nothing new


def test_alerts_pending_at_a_kill_are_delivered_on_restart(tmp_path,
                                                           receiver_factory):
    out, state = str(tmp_path / "out"), str(tmp_path / "state.json")
    r = receiver_factory()
    tables.append(out, "ranked_windows", ranked_rows(
        [(0, 10, "early", {"a": 150})]))

    class Killed(BaseException):  # as SystemExit: not a sink failure
        pass

    class Dies:
        name = "webhook"

        def send(self, alert):
            raise Killed  # the process dies mid-delivery

    w = watch.Watcher(out, HOT, state, deliver.Deliverer(sinks=[Dies()]))
    with pytest.raises(Killed):
        w.poll_once()
    restarted = watch.Watcher(out, HOT, state, deliver.Deliverer(
        sinks=[deliver.WebhookSink(rules.WebhookTarget(r.url))]))
    result = restarted.poll_once()
    assert result.alerts == [] and result.delivered == 1
    assert [a["item_id"] for a in r.alerts] == ["a"]


def test_a_corrupt_state_file_is_one_line(tmp_path):
    state = tmp_path / "state.json"
    state.write_text("{not json")
    with pytest.raises(watch.StateError, match="cannot be read"):
        watch.Watcher(str(tmp_path / "out"), HOT, str(state))


# --- Kafka ------------------------------------------------------------------

@pytest.mark.integration
def test_kafka_delivery(kafka_broker):
    from kafka import KafkaConsumer
    topic = f"alerts-{time.time_ns()}"
    sink = deliver.KafkaSink(rules.KafkaTarget(kafka_broker.bootstrap, topic))
    alerts = [dict(ALERT, alert_id=f"id-{i}", item_id=f"x{i}")
              for i in range(3)]
    assert all(sink.send(a) for a in alerts)
    sink.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_broker.bootstrap,
                             auto_offset_reset="earliest")
    got, deadline = [], time.monotonic() + 30
    while len(got) < len(alerts) and time.monotonic() < deadline:
        for partition, messages in consumer.poll(timeout_ms=1000).items():
            got += [(m.key.decode(), json.loads(m.value)) for m in messages]
    consumer.close()
    assert sorted(got, key=lambda kv: kv[0]) == [
        (a["alert_id"], a) for a in alerts]


def test_kafka_delivery_to_no_broker_fails_without_raising():
    sink = deliver.KafkaSink(rules.KafkaTarget("127.0.0.1:1", "t"),
                             timeout_s=1.0)
    d = deliver.Deliverer(sinks=[sink])
    assert d.deliver(ALERT) == {"kafka": False}
    assert d.stats["failed"] == {"kafka": 1}


def test_run_in_a_thread_until_stopped(tmp_path, receiver_factory):
    """As a server runs it: ``run`` in a thread, stopped by an event."""
    out = str(tmp_path / "out")
    r = receiver_factory()
    w = watch.Watcher(out, HOT, str(tmp_path / "state.json"),
                      deliver.Deliverer(sinks=[deliver.WebhookSink(
                          rules.WebhookTarget(r.url))]))
    stop = threading.Event()
    thread = threading.Thread(target=w.run, args=(0.05, stop))
    thread.start()
    try:
        tables.append(out, "ranked_windows", ranked_rows(
            [(0, 10, "early", {"a": 150})]))
        deadline = time.monotonic() + 20
        while not r.alerts and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert [a["item_id"] for a in r.alerts] == ["a"]


def test_the_cli_once(tmp_path, receiver_factory, capsys):
    from topk import cli
    out = str(tmp_path / "out")
    r = receiver_factory(fail_first=1)
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n  - {name: hot, when: count_over, window: 1m, "
        "threshold: 100}\ndeliver:\n  log: true\n  webhook: {url: "
        f"'{r.url}', backoff_s: 0.01}}\n")
    tables.append(out, "ranked_windows", ranked_rows(
        [(0, 10, "early", {"a": 150, "b": 120}),
         (1, 70, "early", {"a": 5})]))
    # A first start skips the output's history unless asked.
    assert cli.main(["alert", "--rules", str(path), "--output", out,
                     "--once", "--state", str(tmp_path / "new.json")]) == 0
    assert capsys.readouterr().err.startswith(
        "topk alert: 0 new panes, 0 alerts")
    argv = ["alert", "--rules", str(path), "--output", out, "--once",
            "--history"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert sorted(json.loads(line)["item_id"] for line in
                  captured.out.splitlines()) == ["a", "b"]
    assert captured.err == ("topk alert: 2 new panes, 2 alerts; delivered "
                            "log 2, webhook 2; failed 0\n")
    assert sorted(a["item_id"] for a in r.alerts) == ["a", "b"]
    assert cli.main(argv) == 0  # default state: OUTPUT/_alerts/state.json
    assert capsys.readouterr().err.startswith(
        "topk alert: 0 new panes, 0 alerts")
    assert (tmp_path / "out" / "_alerts" / "state.json").exists()
