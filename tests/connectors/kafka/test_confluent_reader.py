"""Both partition readers, kafka-python (``PartitionReader``) and
confluent-kafka (``ConfluentPartitionReader``), behind ``open_reader``:
the same batches, offsets, end offsets, commits and gap handling on a real
broker (``kafka_broker`` in tests/conftest.py), plus the confluent
configuration and the factory without one."""
import threading
import time
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import IllegalStateError, OffsetOutOfRangeError

from topk.connectors import kafka as ko
from topk.connectors.kafka import confluent_reader
from topk.core import events
from topk.loadgen.producer import ensure_topic

CLIENTS = ko.KAFKA_CLIENTS
T0 = 1_714_521_600_000
integration = pytest.mark.integration


# --- no broker -------------------------------------------------------------

def test_open_reader_knows_both_clients():
    assert CLIENTS == ("kafka-python", "confluent")
    assert ko.DEFAULT_KAFKA_CLIENT in CLIENTS
    assert ko.ConfluentPartitionReader is \
        confluent_reader.ConfluentPartitionReader
    assert issubclass(ko.ConfluentPartitionReader, ko.CarryingReader)
    assert issubclass(ko.PartitionReader, ko.CarryingReader)
    with pytest.raises(ValueError, match="unknown Kafka client 'java'"):
        ko.open_reader("java", "127.0.0.1:1", "t", 0)


def test_confluent_config_translates_kafka_python_settings():
    config = confluent_reader.confluent_config(
        ["a:1", "b:2"], None, "me",
        {"max_partition_fetch_bytes": 2048, "fetch_max_bytes": 4096,
         "enable_auto_commit": True, "auto_offset_reset": "none",
         "isolation_level": "read_committed", "fetch.min.bytes": 7})
    assert config["bootstrap.servers"] == "a:1,b:2"
    assert config["client.id"] == "me"
    assert config["group.id"]  # confluent-kafka insists on one
    assert config["max.partition.fetch.bytes"] == 2048
    assert config["fetch.max.bytes"] == 4096
    assert config["message.max.bytes"] == 4096  # librdkafka's check
    assert config["enable.auto.commit"] is False
    assert config["auto.offset.reset"] == "error"
    assert config["isolation.level"] == "read_committed"
    assert config["fetch.min.bytes"] == 7  # a librdkafka property as is
    assert confluent_reader.confluent_config("a:1", "g")["group.id"] == "g"
    with pytest.raises(ValueError, match="'value_deserializer'"):
        confluent_reader.confluent_config("a:1", None, None,
                                          {"value_deserializer": str})


def test_message_records_are_columns_with_record_views():
    # A Batch of ColumnRecords gives what a Batch of records gives.
    class Rec:
        def __init__(self, offset, timestamp, value):
            self.offset, self.timestamp, self.value = offset, timestamp, value

    class Cols(ko.ColumnRecords):
        def __init__(self, recs):
            self.recs = list(recs)

        def __len__(self):
            return len(self.recs)

        def __getitem__(self, i):
            if isinstance(i, slice):
                return Cols(self.recs[i])
            r = self.recs[i]
            return ko.Record(r.offset, r.timestamp, r.value)

        def values(self):
            return [r.value or b"" for r in self.recs]

        def timestamps(self):
            return [r.timestamp for r in self.recs]

        def value_bytes(self):
            return sum(map(len, self.values()))

        def extend(self, other):
            self.recs.extend(other.recs)

    recs = [Rec(5, 10, b"a"), Rec(6, 30, None), Rec(8, 20, b"ccc\n")]
    plain = ko.Batch("t", 1, recs, 4)
    cols = ko.Batch("t", 1, Cols(recs), 4)
    for b in (plain, cols):
        assert b.source() == "t/1@5-8" and len(b) == 3
        assert b.max_timestamp() == 30 and b.min_timestamp() == 10
        assert b.payload() == plain.payload()
        head = b.before(8)
        assert [r.offset for r in head.records] == [5, 6]
        assert head.nbytes == 1


# --- a real broker -----------------------------------------------------------

def _topic(bootstrap) -> str:
    topic = f"readers-{uuid.uuid4().hex[:12]}"
    ensure_topic(bootstrap, topic, 1, topic_config={"retention.ms": -1})
    return topic


def _send(bootstrap, topic, values, timestamps=None):
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                      batch_size=1 << 20)
    try:
        for i, v in enumerate(values):
            p.send(topic, key=b"k", value=v, partition=0,
                   timestamp_ms=None if timestamps is None else timestamps[i])
        p.flush()
    finally:
        p.close()


def _send_transaction(bootstrap, topic, values):
    p = KafkaProducer(bootstrap_servers=bootstrap,
                      transactional_id=f"tx-{uuid.uuid4().hex[:8]}")
    try:
        p.init_transactions()
        p.begin_transaction()
        for v in values:
            p.send(topic, v, partition=0)
        p.commit_transaction()
    finally:
        p.close()


def _read_all(reader, expected: int, **kwargs) -> list:
    batches = []
    deadline = time.monotonic() + 60
    while sum(len(b) for b in batches) < expected:
        assert time.monotonic() < deadline, batches
        batch = reader.read_batch(timeout_ms=5_000, **kwargs)
        if batch is not None:
            batches.append(batch)
    return batches


def _shape(batches) -> list:
    """What a caller sees of batches (client-independent)."""
    return [(b.source(), len(b), b.nbytes, b.max_timestamp(), b.payload(),
             [r.offset for r in b.records], [r.timestamp for r in b.records],
             [r.value for r in b.records]) for b in batches]


@integration
def test_both_clients_cut_the_same_batches(kafka_broker):
    # 3000 messages 10 ms apart, a null, empty and multi-event ones; a
    # 990 ms span cuts them into batches of 100, a record limit of 250
    # and a byte limit bound the others.
    bootstrap = kafka_broker.bootstrap
    topic = _topic(bootstrap)
    n = 3_000
    values = [b"m%d" % i for i in range(n)]
    values[1234], values[7], values[8] = None, b"", b"a\nb\n"
    _send(bootstrap, topic, values, [T0 + 10 * i for i in range(n)])
    shapes = {}
    for client in CLIENTS:
        reader = ko.open_reader(client, bootstrap, topic, 0)
        try:
            reader.seek(0)
            span = _read_all(reader, n, max_span_ms=990)
            reader.seek(0)
            counted = _read_all(reader, n, max_records=250)
            reader.seek(0)
            sized = _read_all(reader, n, max_bytes=1_000)
            assert reader.read_batch(timeout_ms=200) is None
        finally:
            reader.close()
        assert [len(b) for b in span] == [100] * (n // 100)
        for batches in (span, counted, sized):
            assert [r.offset for b in batches
                    for r in b.records] == list(range(n))
            assert [r.value for b in batches
                    for r in b.records] == values
            for b in batches:
                assert b.nbytes == sum(len(r.value or b"")
                                       for r in b.records)
        assert all(len(b) <= 250 for b in counted)
        # The byte limit ends a batch at the poll that reaches it (one
        # poll may bring them all).
        assert all(b.nbytes >= 1_000 for b in sized[:-1])
        assert max(b.max_timestamp() for b in span) == T0 + 10 * (n - 1)
        shapes[client] = _shape(span)
        lines = [line for b in span
                 for line in events.split_lines(b.payload()).to_pylist()]
        assert len(lines) == n + 1 and lines[8:10] == ["a", "b"]
    assert shapes["confluent"] == shapes["kafka-python"]


@integration
def test_a_waiting_poll_takes_what_arrives_within_its_timeout(kafka_broker):
    """consume(n, timeout)'s contract, which the confluent reader keeps
    without a timed consume: a poll that has to wait returns once it holds
    its record limit (or at its timeout), not at the first message. At the
    first message, a live partition's reads came in batches of a few
    milliseconds, many times the elements downstream."""
    bootstrap = kafka_broker.bootstrap
    topic = _topic(bootstrap)
    reader = ko.open_reader("confluent", bootstrap, topic, 0)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")

    def trickle():
        for i in range(10):
            producer.send(topic, b"m%d" % i, partition=0)
            producer.flush()
            time.sleep(0.05)

    try:
        reader.seek(0)
        assert reader.read_batch(timeout_ms=300) is None  # fetching now
        sender = threading.Thread(target=trickle)
        sender.start()
        batch = reader.read_batch(max_records=10, timeout_ms=10_000)
        sender.join()
    finally:
        producer.close()
        reader.close()
    assert batch is not None
    assert [r.value for r in batch.records] == [b"m%d" % i
                                                for i in range(10)]


@integration
@pytest.mark.parametrize("client", CLIENTS)
def test_a_catch_up_does_not_wait_at_the_partitions_end(kafka_broker,
                                                         client):
    """History read to the partition's end (the broker's end as of the
    last fetch, records older than the live lag) returns at once instead of
    waiting out the poll's timeout: the runner reads the partitions of a
    bundle one after another, so each such wait held back all of them.
    Records stamped now (live) keep the wait, which makes live batches
    large."""
    bootstrap = kafka_broker.bootstrap
    history, live = _topic(bootstrap), _topic(bootstrap)
    _send(bootstrap, history, [b"h%d" % i for i in range(5)],
          [T0 + i for i in range(5)])
    _send(bootstrap, live, [b"l%d" % i for i in range(5)])
    timeout_ms = 3_000
    for topic, waits in ((history, False), (live, True)):
        reader = ko.open_reader(client, bootstrap, topic, 0)
        try:
            reader.seek(0)
            got = _read_all(reader, 5)
            started = time.monotonic()
            assert reader.read_batch(timeout_ms=timeout_ms) is None
            waited = time.monotonic() - started
            last = got[-1].records[-1]
            assert reader.at_historic_end(last.offset + 1,
                                          last.timestamp) is not waits
        finally:
            reader.close()
        assert [r.offset for b in got for r in b.records] == list(range(5))
        if waits:
            assert waited >= timeout_ms / 1000 * 0.9, (topic, waited)
        else:
            assert waited < timeout_ms / 1000 / 4, (topic, waited)


@integration
@pytest.mark.parametrize("client", CLIENTS)
def test_end_offsets_and_a_transaction_marker(kafka_broker, client):
    bootstrap = kafka_broker.bootstrap
    topic = _topic(bootstrap)
    _send_transaction(bootstrap, topic, [b"t%d" % i for i in range(5)])
    reader = ko.open_reader(client, bootstrap, topic, 0)
    try:
        assert reader.end_offset() == 6  # the commit marker counts
        assert reader.beginning_offset() == 0
        assert reader.highwater() is None  # no fetch yet
        reader.seek(0)
        batch = reader.read_batch(timeout_ms=5_000)
        assert [r.offset for r in batch.records] == [0, 1, 2, 3, 4]
        assert batch.payload() == b"t0\nt1\nt2\nt3\nt4"
        before = reader.last_data_ms
        time.sleep(0.01)
        assert reader.read_batch(timeout_ms=300) is None
        assert reader.last_data_ms == before  # idle since the last data
        # Past the marker no consumer returns: a bounded read is done.
        assert reader.position() == 6
        assert reader.consumer.highwater(reader.tp) == 6
        assert reader.highwater() == 6
        _send(bootstrap, topic, [b"after"])
        batch = reader.read_batch(timeout_ms=5_000)
        assert [(r.offset, r.value) for r in batch.records] == [(6, b"after")]
        assert reader.end_offset() == 7
    finally:
        reader.close()


@integration
@pytest.mark.parametrize("client", CLIENTS)
def test_a_commit_is_visible_to_the_group_it_never_joins(kafka_broker,
                                                        client):
    bootstrap = kafka_broker.bootstrap
    topic = _topic(bootstrap)
    _send(bootstrap, topic, [b"c%d" % i for i in range(10)])
    group = f"g-{uuid.uuid4().hex[:8]}"
    reader = ko.open_reader(client, bootstrap, topic, 0, group_id=group)
    try:
        reader.seek(3)
        batch = reader.read_batch(timeout_ms=5_000)
        assert batch.first_offset == 3 and batch.last_offset == 9
        reader.commit(batch.last_offset + 1)
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            described = admin.describe_groups([group])[group]
        finally:
            admin.close()
        # Assigned, not subscribed: the group has offsets, no members.
        assert described["members"] == []
        assert described["group_state"] == "Empty"
    finally:
        reader.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        assert consumer.committed(TopicPartition(topic, 0)) == 10
    finally:
        consumer.close()
    anonymous = ko.open_reader(client, bootstrap, topic, 0)
    try:
        with pytest.raises(IllegalStateError):
            anonymous.commit(5)
    finally:
        anonymous.close()


@integration
@pytest.mark.parametrize("client", CLIENTS)
def test_seeks_across_gaps(kafka_broker, client):
    # Offsets a consumer never sees: a transaction marker (3), and
    # messages deleted (retention, here delete_records) before being read.
    bootstrap = kafka_broker.bootstrap
    topic = _topic(bootstrap)
    _send_transaction(bootstrap, topic, [b"x0", b"x1", b"x2"])
    _send(bootstrap, topic, [b"y%d" % i for i in range(4, 12)])
    reader = ko.open_reader(client, bootstrap, topic, 0)
    try:
        reader.seek(3)  # the marker: the next message is 4
        batch = reader.read_batch(timeout_ms=5_000)
        assert [r.offset for r in batch.records] == list(range(4, 12))
        reader.seek(1)
        batch = reader.read_batch(timeout_ms=5_000, max_records=2)
        assert [r.value for r in batch.records] == [b"x1", b"x2"]
        assert reader.skipped == 0
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.delete_records({TopicPartition(topic, 0): 8})
        finally:
            admin.close()
        reader.seek(2)  # deleted: skipped, counted, read from 8
        batch = reader.read_batch(timeout_ms=5_000)
        assert [r.offset for r in batch.records] == [8, 9, 10, 11]
        assert reader.skipped == 6 and reader.beginning_offset() == 8
        reader.seek(50)  # beyond the end: not ours to skip
        with pytest.raises(OffsetOutOfRangeError):
            reader.read_batch(timeout_ms=5_000)
        reader.forget_position()
        reader.seek(10)  # and the reader still reads after that
        batch = reader.read_batch(timeout_ms=5_000)
        assert [r.offset for r in batch.records] == [10, 11]
        assert reader.skipped == 6
    finally:
        reader.close()
