"""``PartitionReader.read_batch`` over a scripted consumer (no broker): the
carried-over tail of a span cut gives the same batches as the plain
"carry a list, re-sum it" reading, and a batch costs work in proportion to
the messages it returns, not to the messages carried over."""
import random

import pytest
from kafka import TopicPartition
from kafka.errors import OffsetOutOfRangeError

from topk.connectors.kafka import reader


class _Rec:
    """A ``ConsumerRecord`` stand-in that counts reads of the fields the
    reader looks at per message."""
    reads = 0

    def __init__(self, offset, timestamp, value):
        self.offset, self._timestamp, self.value = offset, timestamp, value
        self._size = -1 if value is None else len(value)

    @property
    def timestamp(self):
        _Rec.reads += 1
        return self._timestamp

    @property
    def serialized_value_size(self):
        _Rec.reads += 1
        return self._size


class _Consumer:
    """Hands out ``log`` from the position, ``fetch`` messages (at most)
    per poll as kafka-python would from its fetch buffer."""

    def __init__(self, log, fetch, tp):
        self.log, self.fetch, self.tp, self.pos = log, fetch, tp, 0
        self.polls = 0

    def assign(self, tps):
        pass

    def seek(self, tp, offset):
        self.pos = offset

    def highwater(self, tp):
        return len(self.log)  # the broker's end, as of the last fetch

    def poll(self, timeout_ms, max_records):
        self.polls += 1
        n = min(max_records, self.fetch(), len(self.log) - self.pos)
        part = self.log[self.pos:self.pos + n]
        self.pos += n
        return {self.tp: part} if part else {}


def _reader(monkeypatch, consumer):
    monkeypatch.setattr(reader, "new_consumer", lambda config: consumer)
    return reader.PartitionReader("127.0.0.1:1", "t", 0)


def _reference(consumer, max_records, max_bytes, max_span_ms):
    """The batches of the plain algorithm: carry the tail as a list and
    re-count its bytes every time."""
    def value_bytes(records):
        return sum(r._size for r in records if r._size > 0)
    carry, out = [], []
    while True:
        records, carry = carry, []
        nbytes = value_bytes(records)
        while len(records) < max_records and nbytes < max_bytes:
            part = consumer.poll(0, max_records - len(records)).get(
                consumer.tp)
            if not part:
                break
            records.extend(part)
            nbytes += value_bytes(part)
        if not records:
            return out
        if max_span_ms is not None:
            cut = reader.span_cut(records, max_span_ms)
            if cut < len(records):
                records, carry = records[:cut], records[cut:]
                nbytes = value_bytes(records)
        out.append(([r.offset for r in records], nbytes))


def _read_all(r):
    out = []
    while True:
        batch = r.read_batch(*r.args, timeout_ms=0)
        if batch is None:
            return out
        out.append(([m.offset for m in batch.records], batch.nbytes))


@pytest.mark.parametrize("seed", range(40))
def test_batches_match_the_plain_carry_over(monkeypatch, seed):
    rnd = random.Random(seed)
    n = rnd.randint(1, 600)
    t, log = 1_700_000_000_000, []
    for i in range(n):
        # Mostly ascending record time, sometimes out of order or missing.
        t += rnd.choice([0, 10, 100, 1_000, 5_000])
        ts = rnd.choice([t] * 8 + [t - 3_000, -1, None])
        value = rnd.choice([b"x" * rnd.randint(0, 40), None, b""])
        log.append(_Rec(i, ts, value))
    max_records = rnd.choice([1, 7, 50, 1_000])
    max_bytes = rnd.choice([1, 100, 1_000, 1 << 20])
    span = rnd.choice([None, 0, 500, 2_000, 20_000])
    fetch_seed = rnd.random()

    def consumer():
        f = random.Random(fetch_seed)
        return _Consumer(log, lambda: f.randint(1, 120),
                         TopicPartition("t", 0))

    want = _reference(consumer(), max_records, max_bytes, span)
    r = _reader(monkeypatch, consumer())
    r.args = (max_records, max_bytes)
    got = []
    r.seek(0)
    while True:
        batch = r.read_batch(max_records, max_bytes, timeout_ms=0,
                             max_span_ms=span)
        if batch is None:
            break
        got.append(([m.offset for m in batch.records], batch.nbytes))
        assert r._next == batch.last_offset + 1
    assert got == want
    assert [o for offsets, _ in got for o in offsets] == list(range(n))


def test_a_batch_costs_the_messages_it_returns(monkeypatch):
    # One poll brings 20k messages; a span cut takes 10 at a time. Reading
    # them all must look at each message a few times, not once per batch.
    n = 20_000
    log = [_Rec(i, 1_000_000 + 100 * (i // 10), b"v" * 10) for i in range(n)]
    consumer = _Consumer(log, lambda: n, TopicPartition("t", 0))
    r = _reader(monkeypatch, consumer)
    r.seek(0)
    _Rec.reads = 0
    offsets = []
    while True:
        batch = r.read_batch(max_records=n, timeout_ms=0, max_span_ms=50)
        if batch is None:
            break
        assert len(batch) == 10 and batch.nbytes == 100
        offsets.extend(m.offset for m in batch.records)
    assert offsets == list(range(n))
    # Per message: its size when polled and when emitted, its timestamp in
    # the span cut, plus two looks per batch (its first and the one past
    # its end). Re-reading the carried tail would be ~n * n / 20.
    assert _Rec.reads <= 4.5 * n
    assert consumer.polls <= n // 10 + 2  # at most one poll per batch


def test_a_seek_or_forget_drops_the_carried_messages(monkeypatch):
    log = [_Rec(i, 1_000 * i, b"v") for i in range(100)]
    consumer = _Consumer(log, lambda: 100, TopicPartition("t", 0))
    r = _reader(monkeypatch, consumer)
    r.seek(0)
    first = r.read_batch(timeout_ms=0, max_span_ms=4_000)
    assert [m.offset for m in first.records] == [0, 1, 2, 3, 4]
    r.seek(first.last_offset + 1)  # already there: the carry stays
    assert [m.offset for m in r.read_batch(
        timeout_ms=0, max_span_ms=4_000).records] == [5, 6, 7, 8, 9]
    r.seek(50)  # elsewhere: the carry goes, reading resumes at 50
    assert [m.offset for m in r.read_batch(
        timeout_ms=0, max_span_ms=1_000).records] == [50, 51]
    r.forget_position()
    r.seek(20)
    batch = r.read_batch(timeout_ms=0)
    assert batch.first_offset == 20 and batch.last_offset == 99
    assert batch.nbytes == 80


def test_stale_messages_before_the_position_are_dropped(monkeypatch):
    # A fetch that raced a seek hands out messages before the position.
    log = [_Rec(i, 1_000, b"ab") for i in range(10)]
    consumer = _Consumer(log, lambda: 10, TopicPartition("t", 0))
    r = _reader(monkeypatch, consumer)
    r.seek(6)
    consumer.pos = 2  # the stale fetch
    batch = r.read_batch(timeout_ms=0, max_span_ms=10_000)
    assert [m.offset for m in batch.records] == [6, 7, 8, 9]
    assert batch.nbytes == 8
    r.seek(3)
    consumer.pos = 0
    consumer.log = log[:2]  # nothing at or after the position
    assert r.read_batch(timeout_ms=0) is None


def test_a_poll_error_keeps_what_was_polled(monkeypatch):
    log = [_Rec(i, 1_000 * i, b"v") for i in range(30)]
    consumer = _Consumer(log, lambda: 10, TopicPartition("t", 0))
    r = _reader(monkeypatch, consumer)
    r.seek(0)
    poll = consumer.poll
    calls = []

    def flaky(timeout_ms, max_records):
        calls.append(1)
        if len(calls) == 2:
            raise OffsetOutOfRangeError("gone")
        return poll(timeout_ms, max_records)
    consumer.poll = flaky
    # The error after a poll that brought messages ends the batch there.
    batch = r.read_batch(timeout_ms=0)
    assert [m.offset for m in batch.records] == list(range(10))
    batch = r.read_batch(timeout_ms=0)
    assert [m.offset for m in batch.records] == list(range(10, 30))


@pytest.mark.integration
def test_a_real_broker_poll_is_cut_into_consecutive_span_batches(
        kafka_broker):
    # 3000 messages 10 ms apart arrive in a few large polls; a 990 ms span
    # cuts them into batches of 100 read from the carried-over tail.
    import uuid

    from kafka import KafkaProducer

    from topk.loadgen.producer import ensure_topic
    bootstrap = kafka_broker.bootstrap
    topic = f"carry-{uuid.uuid4().hex[:12]}"
    ensure_topic(bootstrap, topic, 1, topic_config={"retention.ms": -1})
    n, t0 = 3_000, 1_714_521_600_000
    values = [None if i == 1234 else b"m%d" % i for i in range(n)]
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                      batch_size=1 << 20)
    try:
        for i, v in enumerate(values):
            p.send(topic, key=b"k", value=v, partition=0,
                   timestamp_ms=t0 + 10 * i)
        p.flush()
    finally:
        p.close()
    r = reader.PartitionReader(bootstrap, topic, 0)
    try:
        r.seek(0)
        batches = []
        while sum(len(b) for b in batches) < n:
            batch = r.read_batch(max_span_ms=990, timeout_ms=5_000)
            assert batch is not None
            batches.append(batch)
    finally:
        r.close()
    assert [m.offset for b in batches for m in b.records] == list(range(n))
    assert [len(b) for b in batches] == [100] * (n // 100)
    for b in batches:
        assert b.nbytes == sum(len(m.value or b"") for m in b.records)
        times = [m.timestamp for m in b.records]
        assert max(times) - min(times) == 990
    assert max(b.max_timestamp() for b in batches) == t0 + 10 * (n - 1)
