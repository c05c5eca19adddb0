"""The pure-Python Kafka source: its Beam pieces, then a real broker.

The Beam-free parts (plans, watermarks, batches) have their unit tests in
tests/connectors/kafka/. The integration tests start one broker for the
session (``kafka_broker`` in conftest.py, deploy/kafka/kafka.sh), create
their own topics, read them in bounded mode on the FnApiRunner and, when
deploy/prism/prism.sh has built Prism, in unbounded mode on Prism; they
also read with ``PartitionReader`` and ``plan_topic`` directly.
"""
import os
import pickle
import subprocess
import threading
import time
import uuid

import apache_beam as beam
import pytest
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that
from apache_beam.transforms import window

from topk.connectors import kafka as ko
from topk.core import events
from topk.core.windows import parse_time
from topk.loadgen import generator, producer
from topk.pipelines.stream import use_prism_safely
from topk.sources import kafka as kafka_source
from topk.sources.kafka import BatchOffsetTracker, ReadFromKafkaBatches

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# ---------------------------------------------------------------------------
# Restriction tracking and arguments.


def test_tracker_claims_whole_batches():
    t = BatchOffsetTracker(OffsetRange(0, 10))
    assert t.try_claim(4)  # offsets 0..4
    assert t.try_claim(12)  # 5..9: the batch straddles the end
    assert t.current_restriction().stop == 10
    assert not t.try_claim(13)
    t.check_done()
    with pytest.raises(ValueError):
        t.try_claim(13)  # claims must increase


def test_tracker_keeps_a_claim_that_a_split_made_straddle():
    t = BatchOffsetTracker(OffsetRange(0, 100))
    assert t.try_claim(9)
    primary, residual = t.try_split(0.5)
    assert primary == OffsetRange(0, 54) and residual == OffsetRange(54, 100)
    # The next batch ends at 70, past the split: offsets 10..53 are still
    # ours (the caller emits the messages below the new stop), the rest is
    # the residual's.
    assert t.try_claim(70)
    assert t.current_restriction().stop == 54
    assert not t.try_claim(80)
    t.check_done()


def test_unbounded_and_aligned_trackers_only_checkpoint():
    t = BatchOffsetTracker(OffsetRange(7, ko.UNBOUNDED_STOP))
    assert not t.is_bounded()
    assert t.try_claim(20)
    assert t.try_split(0.5) is None
    primary, residual = t.try_split(0)  # a checkpoint
    assert primary == OffsetRange(7, 21)
    assert residual == OffsetRange(21, ko.UNBOUNDED_STOP)
    t.check_done()
    aligned = BatchOffsetTracker(OffsetRange(0, 100), fractional_splits=False)
    aligned.try_claim(5)
    assert aligned.try_split(0.5) is None
    assert aligned.try_split(0) is not None


def test_read_transform_validates_its_arguments():
    with pytest.raises(ValueError, match="group_id"):
        ReadFromKafkaBatches("localhost:1", "t", start="committed")
    with pytest.raises(ValueError, match="group_id"):
        ReadFromKafkaBatches("localhost:1", "t", commit_offsets=True)
    with pytest.raises(ValueError, match="start position"):
        ReadFromKafkaBatches("localhost:1", "t", start="tomorrow")
    with pytest.raises(ValueError, match="live_read_s"):
        ReadFromKafkaBatches("localhost:1", "t", live_read_s=0)
    assert kafka_source.runner_aligns(PipelineOptions(["--runner",
                                                       "PrismRunner"]))
    assert kafka_source.runner_aligns(PipelineOptions([]))
    assert not kafka_source.runner_aligns(PipelineOptions(["--runner",
                                                           "FlinkRunner"]))


# ---------------------------------------------------------------------------
# A real broker.

integration = pytest.mark.integration


def new_topic(bootstrap, partitions=1) -> str:
    topic = f"src-{uuid.uuid4().hex[:12]}"
    producer.ensure_topic(bootstrap, topic, partitions,
                          topic_config={"retention.ms": -1})
    return topic


def send(bootstrap, topic, messages, partitions=1, timestamps=None):
    """Send ``messages`` (bytes) round-robin over ``partitions``; returns
    their ``(partition, offset)``."""
    from kafka import KafkaProducer
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                      batch_size=1 << 20)
    try:
        futures = [p.send(topic, value=m, partition=i % partitions,
                          timestamp_ms=None if timestamps is None
                          else timestamps[i])
                   for i, m in enumerate(messages)]
        p.flush()
        return [(f.get(30).partition, f.get(30).offset) for f in futures]
    finally:
        p.close()


def _dump_to(path):
    def matcher(actual):
        with open(path, "wb") as f:
            pickle.dump(sorted(actual), f)
    return matcher


class _WithTimestamp(beam.DoFn):
    def process(self, element, ts=beam.DoFn.TimestampParam):
        source, payload = element
        yield source, payload, ts.micros // 1000


def read_bounded(tmp_path, bootstrap, topic, observe=None, **kwargs):
    """Run a bounded read on the FnApiRunner; returns the sorted
    ``(source, payload, timestamp_ms)`` of every element."""
    out = str(tmp_path / f"out-{uuid.uuid4().hex}.pkl")
    with beam.Pipeline(runner="FnApiRunner") as p:
        got = (p | ReadFromKafkaBatches(bootstrap, topic, bounded=True,
                                        **kwargs)
               | beam.ParDo(_WithTimestamp()))
        if observe is not None:
            got = got | beam.Map(observe)
        assert_that(got, _dump_to(out))
    with open(out, "rb") as f:
        return pickle.load(f)


def records_of(elements) -> list:
    """All records of the elements, in (partition, offset) order."""
    def order(e):
        part, offsets = e[0].rsplit("/", 1)[1].split("@")
        return int(part), int(offsets.split("-")[0])
    out = []
    for source, payload, _ in sorted(elements, key=order):
        out.extend(events.split_lines(payload).to_pylist())
    return out


@integration
def test_bounded_read_returns_exactly_the_produced_events(kafka_broker,
                                                          tmp_path):
    bootstrap = kafka_broker.bootstrap
    topic = new_topic(bootstrap, partitions=3)
    config = generator.GeneratorConfig(events=3000, seed=7)
    lines = [line for chunk in generator.generate_records(config)
             for line in chunk.to_pylist()]
    stamps = [1714521600000 + i for i in range(len(lines))]
    send(bootstrap, topic, [line.encode() for line in lines], partitions=3,
         timestamps=stamps)

    got = read_bounded(tmp_path, bootstrap, topic, max_batch_records=500)

    assert sorted(records_of(got)) == sorted(lines)
    # One element per poll batch, not per message.
    assert 6 <= len(got) <= len(lines) / 10
    by_record = dict(zip(lines, stamps))
    batches = []
    for source, payload, ts in got:
        topic_part, offsets = source.split("@")
        assert topic_part.startswith(topic + "/")
        first, last = map(int, offsets.split("-"))
        records = events.split_lines(payload).to_pylist()
        assert last - first + 1 == len(records)
        batches.append((topic_part, first,
                        [by_record[r] for r in records], ts))
    # The element's timestamp is its partition's watermark before the
    # batch (the newest record read so far minus the allowed skew), the
    # oldest record's before the first: never after any of its records.
    newest = {}
    for part, _, times, ts in sorted(batches):
        expected = (min(times) if part not in newest
                    else newest[part] - ko.ALLOWED_SKEW_MS)
        assert ts == expected <= min(times)
        newest[part] = max(newest.get(part, 0), *times)
    parsed = events.parse_json_lines(b"\n".join(p for _, p, _ in got))
    assert parsed.events.num_rows == 3000


@integration
def test_span_cut_batches_are_consecutive_and_within_the_span(kafka_broker):
    # The tail a span cut leaves is the next batch's head: every offset
    # once, in order, no batch wider than the span.
    bootstrap = kafka_broker.bootstrap
    topic = new_topic(bootstrap, partitions=1)
    stamps = [1714521600000 + 700 * i for i in range(400)]
    send(bootstrap, topic, [f"m{i}".encode() for i in range(400)],
         partitions=1, timestamps=stamps)
    reader = ko.PartitionReader(bootstrap, topic, 0)
    try:
        reader.seek(0)
        batches = []
        while sum(len(b) for b in batches) < 400:
            batch = reader.read_batch(max_span_ms=10_000, timeout_ms=5_000)
            assert batch is not None
            batches.append(batch)
    finally:
        reader.close()
    offsets = [r.offset for b in batches for r in b.records]
    assert offsets == list(range(400))
    # 15 messages 700 ms apart span 9.8 s: every batch but the last is full.
    assert len(batches) == -(-400 // 15)
    for b in batches:
        times = [r.timestamp for r in b.records]
        assert max(times) - min(times) <= 10_000


@integration
def test_an_aligned_bounded_read_leaves_no_watermarks_behind(kafka_broker,
                                                             tmp_path):
    # The aligned watermarks are a process-wide table: a read whose
    # partitions all reached their end is dropped from it.
    bootstrap = kafka_broker.bootstrap
    topic = new_topic(bootstrap, partitions=3)
    send(bootstrap, topic, [b"m%d" % i for i in range(30)], partitions=3)
    before = len(kafka_source._ALIGNED)
    got = read_bounded(tmp_path, bootstrap, topic, align_watermarks=True)
    assert sorted(records_of(got)) == sorted(f"m{i}" for i in range(30))
    assert len(kafka_source._ALIGNED) == before


@integration
def test_multi_event_and_empty_messages(kafka_broker, tmp_path):
    bootstrap = kafka_broker.bootstrap
    topic = new_topic(bootstrap)
    good = ('{"event_id":"e%d","item_id":"i","event_type":"play",'
            '"ts":1714521600000}')
    messages = [(good % 1 + "\n" + good % 2).encode(), b"",
                (good % 3 + "\n").encode(), b"not json", b"",
                (good % 4).encode()]
    send(bootstrap, topic, messages)
    got = read_bounded(tmp_path, bootstrap, topic)
    assert records_of(got) == [good % 1, good % 2, "", good % 3, "not json",
                               "", good % 4]
    reasons = []
    valid = 0
    for source, payload, _ in got:
        parsed = events.parse_json_lines(payload, source)
        valid += parsed.events.num_rows
        reasons += parsed.dead_letters.column("reason").to_pylist()
        assert set(parsed.dead_letters.column("source").to_pylist()) <= {
            source}
    assert valid == 4
    assert sorted(reasons) == ["empty record", "empty record",
                               "invalid JSON"]


@integration
def test_bounded_read_ends_after_a_transaction_marker(kafka_broker,
                                                      tmp_path):
    from kafka import KafkaProducer
    bootstrap = kafka_broker.bootstrap
    topic = new_topic(bootstrap)
    p = KafkaProducer(bootstrap_servers=bootstrap,
                      transactional_id=f"tx-{topic}")
    try:
        p.init_transactions()
        p.begin_transaction()
        for i in range(5):
            p.send(topic, b"m%d" % i, partition=0)
        p.commit_transaction()
    finally:
        p.close()
    # The end offset counts the commit marker no consumer ever returns.
    assert ko.plan_topic(bootstrap, topic, bounded=True)[0].stop == 6
    got = read_bounded(tmp_path, bootstrap, topic)
    assert records_of(got) == [f"m{i}" for i in range(5)]


@integration
def test_start_positions(kafka_broker, tmp_path):
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata
    bootstrap = kafka_broker.bootstrap
    topic = new_topic(bootstrap, partitions=2)
    base = 1714521600000
    messages = [b"m%03d" % i for i in range(100)]
    send(bootstrap, topic, messages, partitions=2,
         timestamps=[base + 1000 * i for i in range(100)])

    def read(**kwargs):
        return sorted(records_of(read_bounded(tmp_path, bootstrap, topic,
                                              **kwargs)))

    everything = sorted(m.decode() for m in messages)
    assert read(start="earliest") == everything
    assert read(start="latest") == []
    later = [m for m in everything if int(m[1:]) >= 60]
    assert read(start=base + 60_000) == later
    assert read(start="2024-05-01T00:01:00Z") == later
    assert read(start=base + 1_000_000) == []  # after the last message

    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        consumer.commit({
            TopicPartition(topic, 0): OffsetAndMetadata(10, "", -1),
            TopicPartition(topic, 1): OffsetAndMetadata(20, "", -1)})
    finally:
        consumer.close()
    # Partition 0 holds the even messages, partition 1 the odd ones.
    expected = sorted([f"m{2 * i:03d}" for i in range(10, 50)]
                      + [f"m{2 * i + 1:03d}" for i in range(20, 50)])
    assert read(start="committed", group_id=group) == expected
    # A group that never committed starts at the earliest offsets.
    assert read(start="committed", group_id=group + "-new") == everything
    plans = ko.plan_topic(bootstrap, topic, start="latest", bounded=True)
    assert [(p.start, p.stop) for p in plans] == [(50, 50), (50, 50)]
    with pytest.raises(ValueError, match="does not exist"):
        ko.plan_topic(bootstrap, topic + "-absent", timeout_s=2)


@integration
def test_resume_from_committed_offsets(kafka_broker, tmp_path):
    from kafka import KafkaConsumer, TopicPartition
    bootstrap = kafka_broker.bootstrap
    topic = new_topic(bootstrap, partitions=2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    first = [b"first-%04d" % i for i in range(1000)]
    send(bootstrap, topic, first, partitions=2)
    got = read_bounded(tmp_path, bootstrap, topic, group_id=group,
                       commit_offsets=True, max_batch_records=100)
    assert sorted(records_of(got)) == sorted(m.decode() for m in first)

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in (0, 1)]
        assert {tp: consumer.committed(tp) for tp in tps} == \
            consumer.end_offsets(tps)
    finally:
        consumer.close()

    second = [b"second-%04d" % i for i in range(600)]
    send(bootstrap, topic, second, partitions=2)
    again = read_bounded(tmp_path, bootstrap, topic, start="committed",
                         group_id=group, commit_offsets=True)
    # Exactly the new messages: nothing lost, nothing read twice.
    assert sorted(records_of(again)) == sorted(m.decode() for m in second)



@integration
def test_broker_restart_during_a_read(kafka_broker, tmp_path):
    bootstrap = kafka_broker.bootstrap
    topic = new_topic(bootstrap, partitions=2)
    messages = [b"msg-%05d" % i for i in range(4000)]
    send(bootstrap, topic, messages, partitions=2)
    progress = str(tmp_path / "progress")
    open(progress, "w").close()

    def slowly(element, path=progress):
        # Slow consumer, so the broker goes away in the middle of the read.
        with open(path, "a") as f:
            f.write("x\n")
        time.sleep(0.03)
        return element

    result = {}

    def run():
        try:
            result["got"] = read_bounded(
                tmp_path, bootstrap, topic, observe=slowly,
                max_batch_records=20, poll_timeout_ms=300,
                # Small fetches: the consumer must keep going to the broker
                # instead of holding the whole topic in its buffer.
                consumer_config={"max_partition_fetch_bytes": 2048,
                                 "fetch_max_bytes": 4096})
        except BaseException as e:  # noqa: BLE001 (re-raised below)
            result["error"] = e

    reader = threading.Thread(target=run, daemon=True)
    reader.start()
    deadline = time.time() + 60
    while sum(1 for _ in open(progress)) < 10:
        assert time.time() < deadline and reader.is_alive(), result
        time.sleep(0.1)
    kafka_broker.stop()
    batches_while_down = sum(1 for _ in open(progress))
    time.sleep(2)
    kafka_broker.start()
    reader.join(180)
    assert not reader.is_alive(), "the read did not finish after the restart"
    assert "error" not in result, result.get("error")
    got = result["got"]
    # The outage hit the middle of the read, and the read still returned
    # every message exactly once.
    assert batches_while_down < len(got)
    assert sorted(records_of(got)) == sorted(m.decode() for m in messages)


@integration
def test_a_reader_that_stops_fetching_is_reopened(kafka_broker, tmp_path,
                                                  monkeypatch):
    # librdkafka's assigned consumers sometimes never fetch again after a
    # broker restart; that cannot be caused at will, so the first reader
    # opened here returns nothing, as such a consumer does, while the
    # broker holds the messages.
    bootstrap = kafka_broker.bootstrap
    topic = new_topic(bootstrap)
    messages = [b"msg-%03d" % i for i in range(300)]
    send(bootstrap, topic, messages)
    opened = []
    open_reader = ko.open_reader
    give_up = time.time() + 60

    def nothing(*args, **kwargs):
        # Fail the run rather than hang when the source never reopens.
        assert time.time() < give_up, "the stuck reader was never replaced"

    def first_one_stuck(*args, **kwargs):
        reader = open_reader(*args, **kwargs)
        if not opened:
            reader.read_batch = nothing
        opened.append(reader)
        return reader

    monkeypatch.setattr(ko, "open_reader", first_one_stuck)
    monkeypatch.setattr(ko, "STALL_TIMEOUT_MS", 1_000)
    got = read_bounded(tmp_path, bootstrap, topic, idle_timeout_ms=200,
                       resume_delay_s=0.1, poll_timeout_ms=100)
    assert len(opened) == 2  # the stuck one, then the one that read
    assert records_of(got) == [m.decode() for m in messages]


def _prism_binary():
    try:
        out = subprocess.run(["bash", os.path.join(REPO, "deploy", "prism",
                                                   "prism.sh"), "path"],
                             capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class _AppendWindowCount(beam.DoFn):
    def __init__(self, path):
        self._path = path

    def process(self, count, w=beam.DoFn.WindowParam,
                pane=beam.DoFn.PaneInfoParam):
        with open(self._path, "a") as f:
            f.write(f"{w.start.micros // 1000} {count} {pane.timing}\n")


@integration
def test_unbounded_read_on_prism_drops_nothing_as_late(kafka_broker,
                                                       tmp_path):
    prism = _prism_binary()
    if not prism:
        pytest.skip("Prism is not built (deploy/prism/prism.sh install)")
    bootstrap = kafka_broker.bootstrap
    topic = new_topic(bootstrap, partitions=3)
    config = generator.GeneratorConfig(events=30_000, rate=1000, seed=3,
                                       jitter_s=2.0)
    sent = producer.produce(bootstrap, topic, config, events_per_message=50,
                            progress=None, batch_size=64 << 10)
    assert sent.events == 30_000
    out = str(tmp_path / "windows.txt")
    open(out, "w").close()
    options = use_prism_safely(PipelineOptions(
        ["--runner=PrismRunner", f"--prism_location={prism}"],
        streaming=True))
    p = beam.Pipeline(options=options)
    (p
     | ReadFromKafkaBatches(bootstrap, topic, max_batch_records=20,
                            max_read_s=0.3, idle_timeout_ms=2000,
                            allowed_skew_ms=5000)
     | beam.Map(lambda e: len(events.split_lines(e[1])))
     | beam.WindowInto(window.FixedWindows(5))
     | beam.CombineGlobally(sum).without_defaults()
     | beam.ParDo(_AppendWindowCount(out)))
    result = p.run()
    try:
        deadline = time.time() + 120
        total = 0
        while time.time() < deadline:
            with open(out) as f:
                rows = [line.split() for line in f]
            total = sum(int(r[1]) for r in rows)
            if total >= 30_000:
                break
            time.sleep(0.5)
    finally:
        result.cancel()
    # Every event reached its window: with per-partition watermarks Prism
    # drops the batches of partitions that lag behind (see
    # topk.connectors.kafka.watermarks.AlignedWatermarks).
    assert total == 30_000
    starts = [int(r[0]) for r in rows]
    assert len(starts) == len(set(starts))  # one (on-time) pane per window
    # Batches are stamped with their partition's watermark: up to the
    # allowed skew (5 s, one window here) before their records.
    assert min(starts) in (parse_time(config.start) - 5000,
                           parse_time(config.start))
