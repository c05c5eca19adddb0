"""deploy/kafka/kafka.sh: a real single-node KRaft broker, real kafka-python clients.

Starts the broker on a free port in a temporary dir, produces and consumes, stops it,
starts it again on the same dir and checks that topics, messages and committed offsets
survived, then stops it. Needs java and mvn (the first run resolves the Kafka jars into
~/.cache/topk/kafka; later runs reuse them).
"""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "kafka" / "kafka.sh"
TOPIC = "topk-kafka-service-test"
GROUP = "topk-kafka-service-test-group"


def kafka_sh(*args, check=True, timeout=300):
    env = dict(os.environ, KAFKA_PROBE_PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            "kafka.sh %s exited %d\nstdout:\n%s\nstderr:\n%s"
            % (" ".join(args), proc.returncode, proc.stdout, proc.stderr)
        )
    return proc


def bootstrap_of(proc):
    m = re.search(r"^KAFKA_BOOTSTRAP=(127\.0\.0\.1:(\d+))$", proc.stdout, re.M)
    assert m, "no KAFKA_BOOTSTRAP line in:\n" + proc.stdout + proc.stderr
    return m.group(1), int(m.group(2))


def port_open(port):
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def consume(bootstrap, n, group_id, commit):
    """Read n messages of TOPIC (from the group's committed offsets, else the earliest)."""
    consumer = KafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        request_timeout_ms=20000,
    )
    try:
        got = []
        deadline = time.time() + 60
        while len(got) < n and time.time() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                got.extend((r.key, r.value) for r in records)
        if commit:
            consumer.commit()
        # Nothing beyond the n expected messages.
        for records in consumer.poll(timeout_ms=1000).values():
            got.extend((r.key, r.value) for r in records)
        return got
    finally:
        consumer.close()


def produce(bootstrap, messages):
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=10)
    try:
        metas = [producer.send(TOPIC, key=k, value=v).get(timeout=60) for k, v in messages]
        producer.flush()
        return metas
    finally:
        producer.close()


def test_help_and_status_of_an_unused_dir(tmp_path):
    out = kafka_sh("--help").stdout
    for word in ("install", "start", "stop", "status", "--port", "--dir"):
        assert word in out
    proc = kafka_sh("status", "--dir", str(tmp_path / "k"), check=False)
    assert proc.returncode == 3
    assert "KAFKA_BOOTSTRAP" not in proc.stdout
    # stop on a dir with no broker is a no-op that succeeds.
    kafka_sh("stop", "--dir", str(tmp_path / "k"))


def test_start_produce_consume_restart_keeps_data(tmp_path):
    d = tmp_path / "kafka"
    try:
        bootstrap, port = bootstrap_of(kafka_sh("start", "--port", "0", "--dir", str(d)))
        assert port_open(port)
        pid = int((d / "kafka.pid").read_text())
        assert (d / "data" / "meta.properties").is_file()
        assert "Kafka Server started" in (d / "kafka.log").read_text()

        # start again while running: no second broker, same address.
        again = kafka_sh("start", "--dir", str(d))
        assert bootstrap_of(again)[0] == bootstrap
        assert int((d / "kafka.pid").read_text()) == pid
        status = kafka_sh("status", "--dir", str(d))
        assert bootstrap_of(status)[0] == bootstrap

        first = [(b"item-%d" % i, b'{"item":"item-%d","n":%d}' % (i % 7, i)) for i in range(40)]
        metas = produce(bootstrap, first)
        # The topic was auto-created with the broker's default of 4 partitions.
        assert {m.partition for m in metas} <= {0, 1, 2, 3}
        assert len({m.partition for m in metas}) > 1

        got = consume(bootstrap, len(first), GROUP, commit=True)
        assert sorted(got) == sorted(first)

        kafka_sh("stop", "--dir", str(d))
        assert kafka_sh("status", "--dir", str(d), check=False).returncode == 3
        assert not (d / "kafka.pid").exists()
        assert not port_open(port)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

        # Restart on the same dir: same port, no reformat, data and offsets kept.
        cluster_id = (d / "data" / "meta.properties").read_text()
        restarted = kafka_sh("start", "--dir", str(d))
        assert bootstrap_of(restarted)[0] == bootstrap
        assert "formatting" not in restarted.stderr
        assert (d / "data" / "meta.properties").read_text() == cluster_id

        # Every message is still there for a new group reading from the start.
        assert sorted(consume(bootstrap, len(first), GROUP + "-new", commit=False)) == sorted(first)

        # The old group's committed offsets survived: it sees only what is produced now.
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP,
                                 enable_auto_commit=False)
        try:
            parts = consumer.partitions_for_topic(TOPIC)
            assert parts == {0, 1, 2, 3}
            tps = [TopicPartition(TOPIC, p) for p in parts]
            ends = consumer.end_offsets(tps)
            assert sum(ends.values()) == len(first)
            assert {tp: consumer.committed(tp) or 0 for tp in tps} == ends
        finally:
            consumer.close()

        second = [(b"late-%d" % i, b"v%d" % i) for i in range(10)]
        produce(bootstrap, second)
        assert sorted(consume(bootstrap, len(second), GROUP, commit=True)) == sorted(second)
    finally:
        kafka_sh("stop", "--dir", str(d), check=False)

    assert not (d / "kafka.pid").exists()
    assert not port_open(port)
