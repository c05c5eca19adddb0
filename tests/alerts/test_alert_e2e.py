"""``topk alert`` end to end: a real broker, a real unbounded ``topk
stream`` on Prism, and ``topk alert`` as a process delivering to a webhook
receiver and a Kafka topic.

Steady traffic (three items in a fixed 3:2:1 pattern, so their ranks never
change) runs from the start; once the stream counts it, a generated burst
of one new item (``GeneratorConfig.burst_item``) is produced. Each rule
must alert exactly once, for the burst item only, within seconds of the
pane that crossed; the webhook, the Kafka topic and the log see the same
alerts; a killed and restarted ``topk alert`` on the same state file
re-sends nothing while new panes keep coming.
"""
import json
import signal
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from kafka import KafkaConsumer, KafkaProducer

from alerts.test_deliver import Receiver
from streams import Process
from topk.core.windows import format_time, now_ms
from topk.loadgen import generator, producer
from topk.pipelines.stream import prism_binary
from topk.storage import tables as output_tables

pytestmark = pytest.mark.integration

BURST_ITEM = "burst-item"
BURST_EVENTS = 1200
#: Steady events in the whole test: item a gets half, so at most 300.
STEADY_CAP = 600
STEADY = ("steady-a", "steady-b", "steady-a", "steady-c", "steady-a",
          "steady-b")
RULES = """\
cooldown: 1h
min_total: {min_total}
rules:
  - {{name: hot, when: count_over, window: 1h/1m, threshold: 800}}
  - {{name: dominant, when: share_over, window: 1h/1m, percent: 60}}
  - {{name: leader, when: enters_top_k, window: 1h/1m, k: 1}}
  - {{name: climber, when: rank_jump, window: 1h/1m, places: 2}}
deliver:
  log: true
  kafka: {{bootstrap: "{bootstrap}", topic: {alert_topic}}}
  webhook: {{url: "{url}", attempts: 5, backoff_s: 0.2, timeout_s: 5}}
"""
MIN_TOTAL = 100
MAX_DELAY_S = 15.0  # from a pane's emitted_at to the webhook


@pytest.fixture(autouse=True)
def _prism():
    if not prism_binary():
        pytest.skip("Prism is not built (deploy/prism/prism.sh install)")


class Steady:
    """Steady traffic: the STEADY pattern at ``rate`` events/s, stamped
    now, while fewer than ``allowed`` (and ``cap``) events were sent;
    ``more(n)`` allows ``n`` more."""

    def __init__(self, bootstrap, topic, rate=10.0, allowed=300,
                 cap=STEADY_CAP):
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1)
        self.topic, self.rate, self.cap = topic, rate, cap
        self.sent, self.allowed = 0, allowed
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set() and self.sent < self.cap:
            if self.sent < self.allowed:
                ts = now_ms()
                line = json.dumps({"event_id": f"steady-{self.sent}",
                                   "item_id": STEADY[self.sent % 6],
                                   "event_type": "play", "ts": ts})
                self.producer.send(self.topic, line.encode(), timestamp_ms=ts)
                self.producer.flush()
                self.sent += 1
            self.stop.wait(1.0 / self.rate)

    def more(self, n):
        self.allowed = min(self.cap, self.sent + n)

    def close(self):
        self.stop.set()
        self.thread.join(10)
        self.producer.close()


def wait_for(what, check, timeout_s, *processes):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in processes:
            assert p.alive(), f"{what}: a process exited:\n{p.tail()}"
        value = check()
        if value:
            return value
        time.sleep(0.5)
    tails = "\n".join(p.tail() for p in processes)
    pytest.fail(f"timed out waiting for {what}\n{tails}")


def max_total(output) -> int:
    ds = output_tables.dataset(output, "ranked_windows")
    if ds is None:
        return 0
    totals = ds.to_table(columns=["window_total"])["window_total"]
    return max(totals.to_pylist(), default=0)


def total_ending(output, end_ms: int) -> int:
    """The largest ``window_total`` of the window ending at ``end_ms``."""
    ds = output_tables.dataset(output, "ranked_windows")
    if ds is None:
        return 0
    end = pa.scalar(end_ms * 1000, pa.timestamp("us", tz="UTC"))
    totals = ds.to_table(columns=["window_total"],
                         filter=pc.field("window_end") == end)
    return max(totals["window_total"].to_pylist(), default=0)


def state_through(path) -> int:
    try:
        with open(path) as f:
            return json.load(f).get("emitted_through_ms") or 0
    except (FileNotFoundError, ValueError):
        return 0


def kafka_alerts(bootstrap, topic, expected: int, timeout_s=20.0):
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap,
                             auto_offset_reset="earliest",
                             consumer_timeout_ms=2000)
    got, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got += [json.loads(m.value) for m in consumer]
        if len(got) >= expected:
            break
    got += [json.loads(m.value) for m in consumer]  # anything extra
    consumer.close()
    return got


def test_a_burst_alerts_once_per_rule_and_a_restart_resends_nothing(
        kafka_broker, tmp_path):
    bootstrap = kafka_broker.bootstrap
    topic = f"alerts-e2e-{uuid.uuid4().hex[:8]}"
    alert_topic = f"{topic}-alerts"
    producer.ensure_topic(bootstrap, topic, 1)  # one partition: in order
    output, state = str(tmp_path / "out"), str(tmp_path / "state.json")
    receiver = Receiver()
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(RULES.format(bootstrap=bootstrap, url=receiver.url,
                                       alert_topic=alert_topic,
                                       min_total=MIN_TOTAL))
    alert_argv = ["alert", "--rules", str(rules_path), "--output", output,
                  "--state", state, "--poll-s", "0.5"]
    steady = Steady(bootstrap, topic)
    stream = alert = None
    try:
        stream = Process(
            tmp_path / "stream.log", "stream", "--bootstrap", bootstrap,
            "--topic", topic, "--output", output, "--windows", "1h/1m",
            "--k", "5", "--item_shards", "1", "--dedup_shards", "1",
            "--early_firing_s", "1", "--allowed_lateness", "5m")
        alert = Process(tmp_path / "alert.log", *alert_argv)
        # The stream is up and counting the steady traffic.
        wait_for("the stream's first panes", lambda: max_total(output) >= 150,
                 100, stream, alert)
        # The comparing rules judge the burst's window against the window
        # one step before it, and only when that one holds MIN_TOTAL: wait
        # until the window ending at the current minute does, so the burst
        # (produced after this minute began) always has such a baseline,
        # whenever in the minute the test started.
        wait_for("a baseline window of the steady traffic",
                 lambda: total_ending(output, now_ms() // 60_000 * 60_000)
                 >= MIN_TOTAL, 100, stream, alert)
        steady.more(50)  # steady traffic goes on during the burst

        start = format_time(now_ms())
        producer.produce(bootstrap, topic, generator.GeneratorConfig(
            events=BURST_EVENTS, items=3, start=start, rate=200.0,
            jitter_s=0.0, ts_format="ms", burst_item=BURST_ITEM,
            burst_share=1.0, burst_start=start, burst_duration_s=60.0,
            seed=7), send_rate=200.0, partitions=1, progress=None)

        wait_for("one alert of every rule",
                 lambda: {a["rule"] for a in receiver.alerts} >= {
                     "hot", "dominant", "leader", "climber"}, 60, stream,
                 alert)
        # Let later panes through the watcher before counting: it has
        # evaluated panes emitted 5 s after the last alert's pane.
        last = max(a["emitted_at_ms"] for a in receiver.alerts)
        steady.more(120)
        wait_for("the watcher to move on",
                 lambda: state_through(state) > last + 5000, 60, stream,
                 alert)

        alerts = list(receiver.alerts)
        assert sorted(a["rule"] for a in alerts) == [
            "climber", "dominant", "hot", "leader"], alerts
        assert {a["item_id"] for a in alerts} == {BURST_ITEM}, alerts
        for a, arrived in zip(alerts, receiver.arrivals):
            delay = arrived - a["emitted_at_ms"] / 1000
            assert 0 <= delay < MAX_DELAY_S, (a["rule"], delay)
            assert a["window"] == "1h/1m" and a["event_type"] == "*"
        by_rule = {a["rule"]: a for a in alerts}
        assert by_rule["hot"]["values"]["count"] >= 800
        assert by_rule["dominant"]["values"]["share_percent"] >= 60
        assert by_rule["leader"]["values"]["rank"] == 1
        assert by_rule["climber"]["values"]["jump"] >= 2
        on_kafka = kafka_alerts(bootstrap, alert_topic, len(alerts))
        assert sorted(on_kafka, key=lambda a: a["alert_id"]) == sorted(
            alerts, key=lambda a: a["alert_id"])

        # Restart on the same state: new panes keep coming (steady
        # traffic), the burst item's episodes go on, nothing is re-sent.
        alert.kill()
        killed_at = now_ms()
        alert = Process(tmp_path / "alert2.log", *alert_argv)
        steady.more(120)
        wait_for("the restarted watcher to evaluate new panes",
                 lambda: state_through(state) > killed_at + 3000, 60,
                 stream, alert)
        assert receiver.alerts == alerts
        assert len(kafka_alerts(bootstrap, alert_topic, len(alerts) + 1,
                                timeout_s=3)) == len(alerts)
        logged = [json.loads(line) for path in ("alert.log", "alert2.log")
                  for line in (tmp_path / path).read_text().splitlines()
                  if line.startswith("{")]
        assert sorted(a["alert_id"] for a in logged) == sorted(
            a["alert_id"] for a in alerts)
    finally:
        steady.close()
        for p in (alert, stream):
            if p is not None:
                p.kill(signal.SIGTERM)
        receiver.close()
