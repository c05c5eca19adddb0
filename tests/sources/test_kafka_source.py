"""The pure-Python Kafka source: Beam-free helpers, then a real broker.

The integration tests start one broker for the session (``kafka_broker`` in
conftest.py, deploy/kafka/kafka.sh), create their own topics, read them in
bounded mode on the FnApiRunner and, when deploy/prism/prism.sh has built
Prism, in unbounded mode on Prism.
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

from topk.core import events
from topk.loadgen import generator, producer
from topk.connectors import kafka as ko
from topk.sources import kafka as kafka_source
from topk.pipelines.stream import use_prism_safely
from topk.sources.kafka import BatchOffsetTracker, ReadFromKafkaBatches
from topk.core.windows import parse_time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# ---------------------------------------------------------------------------
# Beam-free helpers.


def test_parse_start():
    assert ko.parse_start("earliest") == ("earliest", None)
    assert ko.parse_start(" Latest ") == ("latest", None)
    assert ko.parse_start("committed") == ("committed", None)
    assert ko.parse_start(1714521600000) == ("timestamp", 1714521600000)
    assert ko.parse_start("1714521600000") == ("timestamp", 1714521600000)
    assert ko.parse_start("2024-05-01T00:00:00Z") == ("timestamp",
                                                      1714521600000)
    for bad in ("soon", -1, True, 1.5, None):
        with pytest.raises(ValueError):
            ko.parse_start(bad)


def test_resolve_start_offset_stays_inside_the_log():
    r = ko.resolve_start_offset
    assert r("earliest", 5, 20) == 5
    assert r("latest", 5, 20) == 20
    assert r("committed", 5, 20, committed=12) == 12
    assert r("committed", 5, 20, committed=None) == 5  # fallback: earliest
    assert r("committed", 5, 20, committed=None,
             committed_fallback="latest") == 20
    assert r("committed", 5, 20, committed=2) == 5  # deleted by retention
    assert r("committed", 5, 20, committed=99) == 20
    assert r("timestamp", 5, 20, by_time=7) == 7
    assert r("timestamp", 5, 20, by_time=None) == 20  # nothing that late
    with pytest.raises(ValueError):
        r("sideways", 0, 1)


def test_plan_partitions_and_splits():
    plans = ko.plan_partitions("t", {1: 3, 0: 0}, {0: 10, 1: 2}, bounded=True)
    assert [(p.partition, p.start, p.stop) for p in plans] == [(0, 0, 10),
                                                              (1, 3, 3)]
    assert all(p.all_partitions == (0, 1) for p in plans)
    open_plans = ko.plan_partitions("t", {0: 4}, {0: 9}, bounded=False)
    assert open_plans[0].stop is None and not open_plans[0].bounded
    assert open_plans[0].restriction_stop == ko.UNBOUNDED_STOP
    assert ko.split_offsets(0, 10, 0) == [(0, 10)]
    assert ko.split_offsets(0, 17, 8) == [(0, 8), (8, 17)]  # no tail of 1
    assert ko.split_offsets(0, 10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert ko.split_offsets(0, 12, 4) == [(0, 4), (4, 8), (8, 12)]
    assert ko.split_offsets(5, 6, 4) == [(5, 6)]


@pytest.mark.parametrize("values, records", [
    ([b'{"a":1}'], ['{"a":1}']),
    ([b"a", b"b\nc"], ["a", "b", "c"]),  # a message with two events
    ([b"a\n", b"b\n"], ["a", "b"]),  # a trailing newline ends a message
    ([b"a", b""], ["a", ""]),  # an empty message is an empty record
    ([b"", b"a"], ["", "a"]),
    ([b"a", b"", b"", b"b"], ["a", "", "", "b"]),
    ([b"", b""], ["", ""]),
    ([b"a\n\nb"], ["a", "", "b"]),  # a blank line inside a message
    ([b"\na"], ["", "a"]),  # a message whose first record is empty
    ([b"a", b"b\n", b""], ["a", "b", ""]),
])
def test_join_values_keeps_every_record(values, records):
    payload = ko.join_values(values)
    assert events.split_lines(payload).to_pylist() == records


def test_join_values_common_case_is_a_plain_join():
    values = [b"x" * 10] * 5
    assert ko.join_values(values) == b"\n".join(values)
    assert ko.join_values([]) == b""


def test_a_batch_of_one_empty_message_is_one_record():
    # The parser reads a lone newline as one empty record.
    assert events.split_lines(ko.join_values([b""])).to_pylist() == [""]


class _Rec:
    def __init__(self, offset, value, timestamp=0):
        self.offset, self.value, self.timestamp = offset, value, timestamp


def test_batch_truncation_source_and_timestamps():
    batch = ko.Batch("t", 2, [_Rec(5, b"a", 10), _Rec(6, b"bb", 30),
                              _Rec(8, b"ccc", 20)], 6)
    assert batch.source() == "t/2@5-8"
    assert batch.max_timestamp() == 30
    assert batch.payload() == b"a\nbb\nccc"
    assert batch.before(9) is batch
    head = batch.before(7)
    assert [r.offset for r in head.records] == [5, 6] and head.nbytes == 3
    assert len(batch.before(5)) == 0
    assert ko.Batch("t", 0, [_Rec(1, b"x", -1)], 1).max_timestamp() is None


def test_a_batch_spans_at_most_the_skew_of_record_time():
    # A sparse backlog: one poll would hold an hour of event time, whose
    # oldest events the watermark (newest - skew) would pass at once.
    records = [_Rec(i, b"x", 1_000_000 + i * 4_000) for i in range(10)]
    assert ko._span_cut(records, 10_000) == 3  # 0, 4 and 8 s after the first
    assert ko._span_cut(records, 60_000) == 10
    assert ko._span_cut(records[:1], 0) == 1  # always at least one
    assert ko._span_cut([_Rec(0, b"x", -1), _Rec(1, b"x", 9e9)], 10) == 2


def test_watermark_arithmetic():
    assert ko.data_watermark(None, 1000, 100) == 900
    assert ko.data_watermark(950, 1000, 100) == 950  # never back
    assert ko.data_watermark(500, None, 100) == 500
    idle = ko.idle_watermark
    # Idle long enough and at the end: now - skew.
    assert idle(500, now_ms=10_000, last_data_ms=1_000, idle_timeout_ms=5_000,
                skew_ms=100, caught_up=True) == 9_900
    # Not idle long enough, or not at the end (broker unreachable): hold.
    assert idle(500, 10_000, 8_000, 5_000, 100, True) == 500
    assert idle(500, 10_000, 1_000, 5_000, 100, False) == 500
    # Record timestamps from the future: still never back.
    assert idle(20_000, 10_000, 1_000, 5_000, 100, True) == 20_000


def test_aligned_watermarks_confirm_on_the_next_call():
    reg = ko.AlignedWatermarks()
    parts = (0, 1)
    assert reg.begin("r", parts, 0) is None
    # Partition 0 reached 100, but it is pending and 1 is unknown.
    assert reg.end("r", parts, 0, 100) is None
    assert reg.begin("r", parts, 1) is None
    assert reg.end("r", parts, 1, 50) is None  # 0 confirmed, 1 pending
    assert reg.begin("r", parts, 0) == 100
    assert reg.begin("r", parts, 1) == 50
    assert reg.end("r", parts, 1, 70) == 50  # min of confirmed 100, 50
    assert reg.begin("r", parts, 1) == 70
    assert reg.end("r", parts, 0, 90) == 70  # never back: 0 stays at 100
    assert reg.end("other", parts, 0, 5) is None  # reads do not mix
    assert ko.aligned_minimum([3, 1, 2]) == 1
    assert ko.aligned_minimum([3, None]) is None


def test_backoff_grows_and_resets():
    b = ko.Backoff(base=1.0, cap=4.0)
    delays = [b.next() for _ in range(5)]
    assert 0.5 <= delays[0] <= 1.0 and all(d <= 4.0 for d in delays)
    assert delays[-1] >= 2.0
    b.reset()
    assert b.next() <= 1.0


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
    for source, payload, ts in got:
        topic_part, offsets = source.split("@")
        assert topic_part.startswith(topic + "/")
        first, last = map(int, offsets.split("-"))
        records = events.split_lines(payload).to_pylist()
        assert last - first + 1 == len(records)
        # The element's timestamp is the batch's newest record timestamp.
        assert ts == max(by_record[r] for r in records)
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
    # kafka_offsets.AlignedWatermarks).
    assert total == 30_000
    starts = [int(r[0]) for r in rows]
    assert len(starts) == len(set(starts))  # one (on-time) pane per window
    assert min(starts) == parse_time(config.start)
