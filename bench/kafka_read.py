"""Reading one Kafka partition of one-event messages through
``PartitionReader.read_batch`` and ``ConfluentPartitionReader.read_batch``,
against the raw kafka-python poll loop.

Produces ``--messages`` small JSON events (~100 bytes, one per message) to a
one-partition topic, their record timestamps ``--ms-per-message`` apart, so
that a ``--span-ms`` span cut (the source's ``allowed_skew_ms``) cuts every
large poll into many batches and carries the tail over. Then, ``--repeat``
times and side by side, reads the whole topic with:

* ``floor``: a kafka-python consumer's poll loop (the values, nothing else);
* ``reader``: ``topk.connectors.kafka.PartitionReader.read_batch``;
* ``confluent``: ``ConfluentPartitionReader.read_batch`` (confluent-kafka,
  librdkafka; ``open_reader("confluent", ...)``), if installed;
* ``impl:PATH``: the same with ``PartitionReader`` of another copy of
  reader.py, e.g. the committed one::

    git show HEAD:topk/connectors/kafka/reader.py > /tmp/old_reader.py
    .venv/bin/python bench/kafka_read.py --impl /tmp/old_reader.py

Starts its own broker (deploy/kafka/kafka.sh, in a temporary dir) unless
given ``--bootstrap``; a topic named by its content is produced once and
reused. Prints events/s (medians) and the ratio to the floor.
"""
import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.admin import KafkaAdminClient, NewTopic  # noqa: E402
from kafka.errors import TopicAlreadyExistsError  # noqa: E402

from topk.connectors import kafka as ko  # noqa: E402

# The broker this benchmark starts is the one kafka_throughput.py starts.
from kafka_throughput import KAFKA_SH, start_broker  # noqa: E402

T0 = 1_714_521_600_000


def end_offset(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        if not consumer.partitions_for_topic(topic):
            return -1
        tp = TopicPartition(topic, 0)
        return consumer.end_offsets([tp])[tp]
    finally:
        consumer.close()


def event(i: int) -> bytes:
    return json.dumps({
        "event_id": f"e{i:09d}", "item_id": f"item-{(i * 7919) % 100_000}",
        "event_type": "view", "user_id": f"u{i % 50_000}",
        "ts": T0 + i}, separators=(",", ":")).encode()


def preload(bootstrap: str, messages: int, step_ms: int) -> str:
    topic = f"bench-read-{messages}-{step_ms}"
    have = end_offset(bootstrap, topic)
    if have == messages:
        return topic
    if have > 0:
        raise SystemExit(f"topic {topic} holds {have} messages, not "
                         f"{messages}: delete it or use another broker")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20,
                             batch_size=1 << 20, acks=1)
    started = time.perf_counter()
    for i in range(messages):
        producer.send(topic, event(i), partition=0,
                      timestamp_ms=T0 + i * step_ms)
    producer.flush()
    producer.close()
    print(f"produced {messages:,} messages to {topic} in "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    return topic


def read_floor(bootstrap: str, topic: str, messages: int, _span) -> int:
    ko.check_crc32c()
    consumer = KafkaConsumer(**ko.consumer_config(bootstrap,
                                                  client_id="bench-floor"))
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    n = 0
    try:
        while n < messages:
            got = consumer.poll(timeout_ms=1_000,
                                max_records=ko.MAX_BATCH_RECORDS)
            values = [r.value for r in got.get(tp, ())]
            n += len(values)
    finally:
        consumer.close()
    return n


def reader_of(module, client: str = "kafka-python"):
    def read(bootstrap: str, topic: str, messages: int, span) -> int:
        if client == "kafka-python":
            reader = module.PartitionReader(bootstrap, topic, 0)
        else:
            reader = module.open_reader(client, bootstrap, topic, 0)
        reader.seek(0)
        n = 0
        try:
            while n < messages:
                batch = reader.read_batch(timeout_ms=1_000, max_span_ms=span)
                if batch is not None:
                    n += len(batch)
        finally:
            reader.close()
        return n
    return read


def load_module(path: str):
    name = "bench_reader_" + os.path.basename(path).replace(".", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", help="an existing broker (host:port)")
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--ms-per-message", type=int, default=5,
                        help="record-time step between messages")
    parser.add_argument("--span-ms", type=int, default=10_000,
                        help="max_span_ms of read_batch; 0: no span cut")
    parser.add_argument("--impl", action="append", default=[],
                        help="another reader.py to compare (repeatable)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    workdir = None
    bootstrap = args.bootstrap
    if not bootstrap:
        workdir = tempfile.mkdtemp(prefix="topk-kafka-read-")
        bootstrap = start_broker(workdir)
    try:
        topic = preload(bootstrap, args.messages, args.ms_per_message)
        span = args.span_ms or None
        from topk.connectors.kafka import reader as current
        contenders = [("floor: kafka-python poll loop", read_floor),
                      ("PartitionReader (this tree)", reader_of(current))]
        try:
            import confluent_kafka  # noqa: F401
            contenders.append(("ConfluentPartitionReader (this tree)",
                               reader_of(current, "confluent")))
        except ImportError:
            print("confluent-kafka is not installed: its reader is skipped",
                  file=sys.stderr)
        contenders += [(f"PartitionReader ({p})", reader_of(load_module(p)))
                       for p in args.impl]
        times = {name: [] for name, _ in contenders}
        for _ in range(args.repeat):
            for name, read in contenders:
                started = time.perf_counter()
                n = read(bootstrap, topic, args.messages, span)
                times[name].append(time.perf_counter() - started)
                if n != args.messages:
                    raise SystemExit(f"{name} read {n:,} messages, not "
                                     f"{args.messages:,}")
        floor = statistics.median(times[contenders[0][0]])
        print(f"{args.messages:,} one-event messages, {args.ms_per_message} "
              f"ms apart, span cut {args.span_ms} ms, median of "
              f"{args.repeat}:")
        print("| reader | seconds | events/s | vs floor |")
        print("|---|---:|---:|---:|")
        for name, _ in contenders:
            t = statistics.median(times[name])
            print(f"| {name} | {t:.2f} | {args.messages / t:,.0f} | "
                  f"{floor / t:.2f} |")
    finally:
        if workdir:
            subprocess.run([KAFKA_SH, "stop", "--dir", workdir], check=False,
                           capture_output=True)


if __name__ == "__main__":
    main()
