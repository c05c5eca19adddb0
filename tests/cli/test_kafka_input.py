"""Bad Kafka input to ``topk stream`` and ``topk produce`` (issue 12): an
address where no broker listens and a topic that does not exist are one
line, exit status 2, within seconds and before any work. A real closed
port, a real broker for the positive cases."""
import socket
import subprocess
import sys
import time
import uuid

import pytest

from topk import cli


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("topk: error: "), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def _topk(*argv):
    """``topk ARGV`` as a process, as users run it; returns it and how
    many seconds it took."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "topk.cli", *argv],
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    return proc, time.monotonic() - started


@pytest.mark.parametrize("mode", [["--bounded"], []])
def test_stream_to_a_closed_port(closed_port, tmp_path, mode):
    address = f"127.0.0.1:{closed_port}"
    proc, seconds = _topk("stream", "--bootstrap", address, "--topic",
                          "events", "--output", str(tmp_path / "out"), *mode)
    _one_line_error(proc, f"no Kafka broker reachable at {address}",
                    "connection refused")
    assert seconds < 10


def test_produce_to_a_closed_port(closed_port):
    address = f"127.0.0.1:{closed_port}"
    proc, seconds = _topk("produce", "--bootstrap", address, "--topic",
                          "events", "--events", "1000")
    _one_line_error(proc, f"no Kafka broker reachable at {address}")
    assert seconds < 10


def test_a_bad_bootstrap_address(tmp_path, capsys):
    assert cli.main(["stream", "--bootstrap", "localhost", "--topic", "t",
                     "--output", str(tmp_path / "o"), "--bounded"]) == 2
    assert "bad Kafka bootstrap address 'localhost'" in (
        capsys.readouterr().err)
    assert cli.main(["produce", "--bootstrap", "x:1", "--topic", "t",
                     "--events", "5", "--broker-timeout-s", "-1"]) == 2
    assert "--broker-timeout-s" in capsys.readouterr().err
    assert cli.main(["stream", "--bootstrap", "x:1", "--topic", "t",
                     "--output", str(tmp_path / "o"),
                     "--broker-timeout-s", "soon"]) == 2
    assert "--broker-timeout-s" in capsys.readouterr().err


def test_the_default_timeouts_agree():
    from topk.connectors.kafka import BROKER_CHECK_TIMEOUT_S
    from topk.pipelines import stream
    from apache_beam.options.pipeline_options import PipelineOptions
    produce = next(a for a in cli.build_parser()._subparsers._actions
                   if a.choices and "produce" in a.choices
                   ).choices["produce"]
    assert produce.get_default("broker_timeout_s") == BROKER_CHECK_TIMEOUT_S
    assert PipelineOptions([]).view_as(
        stream.StreamOptions).broker_timeout_s == BROKER_CHECK_TIMEOUT_S


@pytest.mark.integration
@pytest.mark.parametrize("mode", [["--bounded"], []])
def test_stream_from_a_topic_that_does_not_exist(kafka_broker, tmp_path,
                                                 mode):
    topic = f"absent-{uuid.uuid4().hex[:8]}"
    proc, seconds = _topk("stream", "--bootstrap", kafka_broker.bootstrap,
                          "--topic", topic, "--output", str(tmp_path / "out"),
                          *mode)
    _one_line_error(proc, f"topic {topic} does not exist on "
                    f"{kafka_broker.bootstrap}")
    assert seconds < 10


@pytest.mark.integration
def test_produce_then_stream_pass_the_check(kafka_broker, tmp_path, capsys):
    topic = f"present-{uuid.uuid4().hex[:8]}"
    assert cli.main(["produce", "--bootstrap", kafka_broker.bootstrap,
                     "--topic", topic, "--events", "300",
                     "--events-per-message", "10", "--event-start",
                     "2024-05-01T00:00:00Z", "--malformed", "0"]) == 0
    assert cli.main(["stream", "--bootstrap", kafka_broker.bootstrap,
                     "--topic", topic, "--output", str(tmp_path / "out"),
                     "--bounded", "--windows", "1h", "--k", "3"]) == 0
    assert "300 unique events counted" in capsys.readouterr().out


def test_produce_sends_the_burst_generate_writes(kafka_broker, tmp_path):
    # The same options give the same events on a topic and in a file.
    from kafka import KafkaConsumer
    topic = f"burst-{uuid.uuid4().hex[:8]}"
    shape = ["--events", "2000", "--event-start", "2024-05-01T00:00:00Z",
             "--event-rate", "2", "--seed", "4", "--burst-item", "hit",
             "--burst-share", "0.6", "--burst-duration", "300",
             "--duplicates", "0", "--malformed", "0"]
    assert cli.main(["produce", "--bootstrap", kafka_broker.bootstrap,
                     "--topic", topic, *shape]) == 0
    out = tmp_path / "events.jsonl"
    assert cli.main(["generate", "--out", str(out), *shape]) == 0
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_broker.bootstrap,
                             auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    sent = [line for m in consumer for line in m.value.decode().splitlines()]
    consumer.close()
    written = out.read_text().splitlines()
    assert sorted(sent) == sorted(written)
    hits = sum('"item_id":"hit"' in line for line in written)
    assert hits > 100  # the burst is there: 60% of ~300 s at 2 events/s
