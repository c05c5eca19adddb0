"""``topk produce``: packing, timestamps and pacing, then a real broker."""
import time
import uuid

import numpy as np
import pyarrow as pa
import pytest

from topk import cli
from topk.loadgen import generator, producer
from topk.core.events import split_lines
from topk.core.windows import parse_time


def test_event_times_reads_both_formats_and_skips_bad_records():
    lines = pa.array([
        '{"event_id":"a","ts":1714521600123,"x":1}',
        '{"event_id":"b","ts":"2024-05-01T00:00:01.5Z"}',
        '{"event_id":"c","ts":"2024-05-01T00:00:02Z","user_id":"u"}',
        '{"event_id":"d","ts":"yesterday"}',
        '{"event_id":"e","ts":"2024-13-45T25:61:00Z"}',
        '{"event_id":"f","ts":-5}',
        '{"event_id":"g","ts":7258118400000}',  # 2200: out of range
        '[1, 2]',
        '',
    ], pa.large_string())
    assert producer.event_times(lines).tolist() == [
        1714521600123, 1714521601500, 1714521602000, -1, -1, -1, -1, -1, -1]
    assert len(producer.event_times(pa.array([], pa.string()))) == 0


def test_event_times_of_generated_records():
    config = generator.GeneratorConfig(events=2000, ts_format="mixed",
                                       seed=5)
    lines = next(generator.generate_records(config))
    ts = producer.event_times(lines)
    assert (ts >= 0).all()
    table = generator.generate_events(config)
    assert sorted(ts.tolist()) == sorted(table.column("ts").to_pylist())


def test_message_timestamps_take_the_newest_known_event():
    ts = np.array([5, 9, 7, -1, -1, -1, 3, -1, 8, -1])
    assert producer.message_timestamps(ts, 3, previous=1).tolist() == [
        9, 9, 8, 8]  # the all-unknown message repeats its predecessor's
    assert producer.message_timestamps(np.array([-1, -1]), 1,
                                       previous=42).tolist() == [42, 42]
    assert len(producer.message_timestamps(np.array([], np.int64), 5, 0)) == 0


@pytest.mark.parametrize("per", [1, 3, 4, 100])
def test_pack_messages(per):
    records = [f"r{i}" * (i % 4 + 1) for i in range(10)]
    lines = pa.array(records, pa.large_string())
    messages = producer.pack_messages(lines, per)
    assert messages == ["\n".join(records[i:i + per]).encode()
                        for i in range(0, len(records), per)]
    sliced = producer.pack_messages(lines.slice(3, 4), 2)  # an offset array
    assert sliced == [b"\n".join(r.encode() for r in records[3:5]),
                      b"\n".join(r.encode() for r in records[5:7])]
    assert producer.pack_messages(pa.array([], pa.string()), per) == []


def test_pack_messages_rejects_zero():
    with pytest.raises(ValueError):
        producer.pack_messages(pa.array(["x"]), 0)


def test_token_bucket_paces_with_a_fake_clock():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    bucket = producer.TokenBucket(100, burst=10, clock=lambda: now[0],
                                  sleep=sleep)
    assert bucket.take(10) == 0  # the initial burst
    assert bucket.take(10) == pytest.approx(0.1)
    now[0] += 1.0  # idle time refills at most a burst
    assert bucket.take(10) == 0
    assert bucket.take(50) == pytest.approx(0.5)
    assert sum(slept) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        producer.TokenBucket(0, 1)


def test_resolve_start():
    start = producer.resolve_start("now")
    assert abs(parse_time(start) - time.time() * 1000) < 5_000
    assert producer.resolve_start("2024-05-01T00:00:00Z") == (
        "2024-05-01T00:00:00Z")
    with pytest.raises(ValueError):
        producer.resolve_start("noon")


def test_produce_validates_arguments():
    config = generator.GeneratorConfig(events=1)
    with pytest.raises(ValueError):
        producer.produce("localhost:1", "t", config, events_per_message=0)
    with pytest.raises(ValueError):
        producer.produce("localhost:1", "t", config, send_rate=0)
    with pytest.raises(ValueError):
        producer.produce("localhost:1", "t", config, timestamps="later")


# ---------------------------------------------------------------------------
# A real broker.


def read_topic(bootstrap, topic):
    """Every message of ``topic``: ``{partition: [(timestamp, value)]}``."""
    from kafka import KafkaConsumer, TopicPartition
    consumer = KafkaConsumer(bootstrap_servers=bootstrap,
                             enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p)
               for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out = {tp.partition: [] for tp in tps}
        deadline = time.time() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.time() < deadline
            for tp, records in consumer.poll(timeout_ms=500).items():
                out[tp.partition] += [(r.timestamp, r.value) for r in records]
        return out
    finally:
        consumer.close()


@pytest.mark.integration
@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_produce_sends_every_record_with_event_timestamps(kafka_broker,
                                                          client):
    topic = f"prod-{uuid.uuid4().hex[:12]}"
    config = generator.GeneratorConfig(events=5000, duplicate_share=0.02,
                                       malformed_share=0.02, seed=11)
    lines = []
    progress = []
    summary = producer.produce(kafka_broker.bootstrap, topic, config,
                               events_per_message=7, partitions=3,
                               batch_size=16 << 10, progress=progress.append,
                               progress_every_s=0.0, client=client)
    for chunk in generator.generate_records(config):
        lines += chunk.to_pylist()
    assert summary.created_topic and summary.partitions == 3
    assert summary.events == len(lines) and summary.failed_messages == 0
    assert summary.messages == -(-len(lines) // 7)
    assert progress[-1] == summary.describe()
    assert any(line.startswith("sent ") for line in progress)

    by_partition = read_topic(kafka_broker.bootstrap, topic)
    assert len(by_partition) == 3
    assert sum(1 for msgs in by_partition.values() if msgs) == 3  # spread
    # Readers take one trailing newline of a message as a terminator.
    received = [split_lines(value).to_pylist()
                for msgs in by_partition.values() for _, value in msgs]
    assert sorted(r for m in received for r in m) == sorted(lines)
    # Each message: at most 7 records, stamped with its newest event time.
    for msgs in by_partition.values():
        for stamp, value in msgs:
            ts = producer.event_times(split_lines(value))
            assert len(ts) <= 7
            if (ts >= 0).any():
                assert stamp == ts.max()
    # The topic keeps old event times: no time retention.
    from kafka.admin import (ConfigResource, ConfigResourceType,
                             KafkaAdminClient)
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:
        described = repr(admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)]))
    finally:
        admin.close()
    assert "'retention.ms': {'value': '-1'" in described


@pytest.mark.integration
def test_produce_cli_paces_to_the_rate(kafka_broker, capsys):
    topic = f"prod-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    code = cli.main(["produce", "--bootstrap", kafka_broker.bootstrap,
                     "--topic", topic, "--events", "3000",
                     "--send-rate", "2000",
                     "--events-per-message", "10", "--partitions", "2",
                     "--progress-every", "0.5", "--event-start", "now"])
    took = time.monotonic() - started
    out = capsys.readouterr().out
    assert code == 0
    assert 1.2 <= took < 10  # 3000 events at 2000/s, not as fast as possible
    assert "sent " in out
    assert "produced 3,000 events in 300 messages" in out
    messages = [m for msgs in read_topic(kafka_broker.bootstrap,
                                         topic).values() for m in msgs]
    assert len(messages) == 300
    # --event-start now: event times (and so message timestamps) are recent.
    assert min(stamp for stamp, _ in messages) > (time.time() - 600) * 1000


def test_produce_cli_rejects_bad_arguments(capsys):
    assert cli.main(["produce", "--bootstrap", "x:1", "--topic", "t",
                     "--events", "0"]) == cli.EXIT_USAGE
    assert cli.main(["produce", "--bootstrap", "x:1", "--topic", "t",
                     "--events", "5", "--send-rate", "-3"]) == cli.EXIT_USAGE
    assert cli.main(["produce", "--bootstrap", "x:1", "--topic", "t",
                     "--events", "5", "--event-start", "noon"]
                    ) == cli.EXIT_USAGE
    assert "topk: error:" in capsys.readouterr().err
