"""Reading one Kafka partition in batches, without Beam.

A ``PartitionReader`` (kafka-python, one partition, no group membership)
returns ``Batch`` es: the messages of one or more polls, in offset order,
cut by record count, value bytes and record-time span. A batch becomes one
element of the Beam source: its ``payload()`` (the message values as
newline-delimited bytes, ready for ``ParseEvents``) and its ``source()``
(``topic/partition@first-last``).

The cutting is ``CarryingReader`` 's, shared with
``confluent_reader.ConfluentPartitionReader`` (confluent-kafka,
librdkafka); ``open_reader`` opens either by client name.

``topk.sources.kafka.ReadFromKafkaBatches`` is thin Beam wiring around this
package; benchmarks and tests use it directly. All instants are epoch
milliseconds (UTC), like the rest of the project.
"""
import abc
import collections
import dataclasses
import logging
import operator

from kafka import TopicPartition
from kafka.errors import KafkaError, OffsetOutOfRangeError
from kafka.structs import OffsetAndMetadata

from topk.connectors.kafka.client import (check_crc32c, consumer_config,
                                          new_consumer)
from topk.core import schema
from topk.core.windows import now_ms

_LOG = logging.getLogger(__name__)

#: Defaults of the source's batch knobs (see ``ReadFromKafkaBatches``).
MAX_BATCH_RECORDS = 200_000
MAX_BATCH_BYTES = 16 << 20
POLL_TIMEOUT_MS = 500

#: Seconds one read call of a live partition lasts (``read_deadline``).
#: Each call is a bundle of the runner's, with its overhead; live, a
#: call's length adds about half of it to latency.
LIVE_READ_S = 0.25


def read_deadline(began_s: float, newest_ms: int | None, now: int,
                  max_read_s: float, live_read_s: float) -> float:
    """When a read call that began at ``began_s`` (monotonic seconds)
    hands its batches on: ``max_read_s`` after it began, or ``live_read_s``
    once the newest record it read (``newest_ms``; ``None``: none with a
    timestamp) is within ``LIVE_LAG_MS`` of the wall clock ``now``. A
    runner passes a bundle's output on when the bundle ends: live, what a
    call holds is latency, while a catch-up gains from long calls (fewer
    bundles)."""
    live = newest_ms is not None and now - newest_ms <= schema.LIVE_LAG_MS
    return began_s + (min(max_read_s, live_read_s) if live else max_read_s)


#: Milliseconds a reader may deliver nothing while the broker holds
#: messages past its position before the source reopens it. librdkafka's
#: assigned consumers sometimes never fetch again after a broker restart
#: (confluentinc/librdkafka#5153); a new consumer does.
STALL_TIMEOUT_MS = 10_000


def behind_since(since_ms: int | None, now: int, end: int | None,
                 position: int) -> int | None:
    """When a reader that returned nothing was first seen behind: the
    broker's end offset ``end`` (``None``: not known, e.g. the broker is
    down) past its ``position``. ``since_ms`` is the earlier answer, kept
    while the reader stays behind; ``None`` when it is not behind (or
    nothing is known). ``now - behind_since(...) >= STALL_TIMEOUT_MS``
    means the reader is stuck: messages exist, none come."""
    if end is None or end <= position:
        return None
    return now if since_ms is None else since_ms


def join_values(values: list) -> bytes:
    """Message values -> one newline-delimited payload for ``ParseEvents``.

    Every message is one or more newline-delimited records; a single
    trailing newline of a message ends its last record. An empty message is
    one empty record (the parser dead-letters it; it must not vanish). The
    parser reads one trailing newline of a payload as a terminator, so a
    plain join loses only a last empty message and adds a blank record per
    message that ends with a newline: in those (rare) cases every record is
    written newline-terminated instead. The common case is one join plus a
    check of each message's last byte.
    """
    if not values:
        return b""
    if values[-1] and not any(v.endswith(b"\n") for v in values):
        return b"\n".join(values)
    parts = [v[:-1] if v.endswith(b"\n") else v for v in values]
    return b"\n".join(parts) + b"\n"


def batch_source(topic: str, partition: int, first: int, last: int) -> str:
    """The ``source`` of a batch: ``topic/partition@first-last`` (offsets
    inclusive), shown in dead letters."""
    return f"{topic}/{partition}@{first}-{last}"


#: A record as ``ColumnRecords`` hand it out: offset, timestamp (epoch ms,
#: negative when the message carries none) and value (``None`` for a null).
Record = collections.namedtuple("Record", "offset timestamp value")


class ColumnRecords(collections.abc.Sequence):
    """Records kept as columns rather than as one object per message.

    A client whose messages expose their fields through method calls
    (confluent-kafka's ``Message``) would pay an object per message to look
    like kafka-python's ``ConsumerRecord``; a ``Batch`` of ``ColumnRecords``
    instead reads whole columns. Indexing gives ``Record`` s (built on
    demand: for offsets at the edges and for tests, not per message);
    slicing gives ``ColumnRecords``; ``extend`` appends another's records.
    """

    @abc.abstractmethod
    def values(self) -> list:
        """The message values, ``b""`` for a null value."""

    @abc.abstractmethod
    def timestamps(self) -> list:
        """The record timestamps (epoch ms, negative when absent)."""

    @abc.abstractmethod
    def value_bytes(self) -> int:
        """The summed length of the values."""

    @abc.abstractmethod
    def extend(self, other: "ColumnRecords") -> None:
        """Append ``other`` 's records (later offsets)."""


def _record_bytes(records) -> int:
    if isinstance(records, ColumnRecords):
        return records.value_bytes()
    return sum(len(r.value or b"") for r in records)


@dataclasses.dataclass
class Batch:
    """Messages of one partition from one or more polls, in offset order.

    ``records`` are kafka-python ``ConsumerRecord`` s (anything with
    ``offset``, ``timestamp`` and ``value``) or ``ColumnRecords``."""
    topic: str
    partition: int
    records: list
    nbytes: int

    @property
    def first_offset(self) -> int:
        return self.records[0].offset

    @property
    def last_offset(self) -> int:
        return self.records[-1].offset

    def __len__(self):
        return len(self.records)

    def before(self, stop: int) -> "Batch":
        """The messages with offset < ``stop`` (may be empty)."""
        if self.last_offset < stop:
            return self
        lo, hi = 0, len(self.records)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.records[mid].offset < stop:
                lo = mid + 1
            else:
                hi = mid
        kept = self.records[:lo]
        return Batch(self.topic, self.partition, kept, _record_bytes(kept))

    def max_timestamp(self) -> int | None:
        """The largest Kafka record timestamp (epoch ms), ``None`` if the
        messages carry none (pre-0.10 formats report -1)."""
        if isinstance(self.records, ColumnRecords):
            ts = max(self.records.timestamps())
        else:
            ts = max(r.timestamp for r in self.records)
        return ts if ts is not None and ts >= 0 else None

    def min_timestamp(self) -> int | None:
        """The smallest Kafka record timestamp (epoch ms) of the messages
        that carry one, ``None`` if none does."""
        if isinstance(self.records, ColumnRecords):
            stamps = self.records.timestamps()
        else:
            stamps = [r.timestamp for r in self.records]
        stamped = [t for t in stamps if t is not None and t >= 0]
        return min(stamped) if stamped else None

    def payload(self) -> bytes:
        if isinstance(self.records, ColumnRecords):
            return join_values(self.records.values())
        return join_values([r.value or b"" for r in self.records])

    def source(self) -> str:
        return batch_source(self.topic, self.partition, self.first_offset,
                            self.last_offset)


def span_cut(records, max_span_ms: int) -> int:
    """How many of ``records`` are stamped within ``max_span_ms`` of the
    first (at least one). A batch is one element with one timestamp and
    the watermark moves past a whole batch at once, so a batch spanning
    more event time than the lateness allows would make its own oldest
    events late (catch-up of a sparse backlog)."""
    first = records[0].timestamp
    if first is None or first < 0:
        return len(records)
    for i, r in enumerate(records):
        if r.timestamp is not None and r.timestamp >= 0 and abs(
                r.timestamp - first) > max_span_ms:
            return max(i, 1)
    return len(records)


_SIZE = operator.attrgetter("serialized_value_size")


def _value_bytes(records) -> int:
    # kafka-python reports -1 for a message without a value.
    return sum(s for s in map(_SIZE, records) if s > 0)


_TIMESTAMP = operator.attrgetter("timestamp")


def _record_timestamps(chunk, start: int):
    """The timestamps of a list of records from index ``start``, lazily
    (one attribute read per record looked at)."""
    return map(_TIMESTAMP, map(chunk.__getitem__, range(start, len(chunk))))


def _span_cut_chunks(chunks, pos: int, max_span_ms: int,
                     timestamps=_record_timestamps) -> int | None:
    """``span_cut`` of the records held in ``chunks`` (in offset order)
    from index ``pos`` of the first: ``None`` when all of them are within
    the span, else how many are. ``timestamps(chunk, start)`` iterates a
    chunk's record timestamps from ``start``. Looks at the records it keeps
    and one more, never at the rest."""
    first = next(iter(timestamps(chunks[0], pos)))
    if first is None or first < 0:
        return None
    lo, hi = first - max_span_ms, first + max_span_ms
    seen = 0
    for chunk in chunks:
        for j, t in enumerate(timestamps(chunk, pos)):
            if t is not None and t >= 0 and (t > hi or t < lo):
                return max(seen + j, 1)
        seen += len(chunk) - pos
        pos = 0
    return None


class CarryingReader:
    """What both clients' partition readers share: ``read_batch`` (the
    cutting of polls into batches by records, bytes and record-time span,
    with the carried-over tail), the position it returns from, the guard
    against stale messages and the skipping of offsets lost to retention.

    A subclass is one client: it sets ``consumer`` and implements
    ``_poll`` (the next messages already held or arriving within a wait,
    as one chunk: a list of records or ``ColumnRecords``; raises
    ``kafka.errors.OffsetOutOfRangeError`` when the position left the
    log), ``_seek_consumer``, ``position``, ``end_offset``,
    ``beginning_offset``, ``commit`` and ``close``; and, for chunks that
    are not lists of kafka-python records, ``_chunk_bytes`` and
    ``_chunk_timestamps``.
    """

    def __init__(self, topic: str, partition: int):
        self.topic = topic
        self.partition = partition
        self.tp = TopicPartition(topic, partition)
        self._next = None  # offset of the next message read_batch returns
        # Messages polled but cut off the last batch by its span, in
        # offset order from ``_next``: the next batch starts with them.
        # (Seeking back instead would drop the client's prefetched
        # messages and cost a fetch round trip per batch.) Kept as the
        # polls returned them (a deque of chunks) with the index of the
        # first unread message of the first chunk, their count and value
        # bytes, so a batch costs work in proportion to the messages it
        # returns, not to the messages carried over (a poll may bring 200k
        # of them and the span cut may take a few at a time).
        self._drop_carry()
        # Wall clock of the last non-empty poll; the idle clock starts now.
        self.last_data_ms = now_ms()
        # Record time of the last message read_batch returned.
        self._last_stamp_ms = None
        self.skipped = 0  # offsets lost to retention before being read

    # -- what a client implements ---------------------------------------------

    def _poll(self, max_records: int, timeout_ms: int):
        """At most ``max_records`` next messages (a chunk); ``None`` or
        empty when none came within ``timeout_ms``. kafka-python's returns
        at the first messages; the confluent reader waits up to the timeout
        for the whole chunk, as ``consume(n, timeout)`` does, so a live
        partition comes in fewer, larger batches."""
        raise NotImplementedError

    def _seek_consumer(self, offset: int) -> None:
        raise NotImplementedError

    def beginning_offset(self, timeout_ms: int = 5_000) -> int:
        raise NotImplementedError

    #: The value bytes of a chunk (or of the records of a batch).
    _chunk_bytes = staticmethod(_value_bytes)
    #: ``timestamps(chunk, start)`` for ``_span_cut_chunks``.
    _chunk_timestamps = staticmethod(_record_timestamps)

    # -- shared ----------------------------------------------------------------

    def seek(self, offset: int) -> None:
        """Read from ``offset`` next. A no-op when already there, which keeps
        the messages the client has prefetched."""
        if self._next != offset:
            self._seek_consumer(offset)
            self._next = offset
            self._drop_carry()

    def _drop_carry(self) -> None:
        self._carry = collections.deque()  # chunks of records
        self._carry_pos = 0  # first unread record of self._carry[0]
        self._carry_len = 0  # records held from there on
        self._carry_bytes = 0  # their value bytes

    def read_batch(self, max_records: int = MAX_BATCH_RECORDS,
                   max_bytes: int = MAX_BATCH_BYTES,
                   timeout_ms: int = POLL_TIMEOUT_MS,
                   max_span_ms: int | None = None) -> Batch | None:
        """The next messages, or ``None`` when none came within
        ``timeout_ms``. Waits only for the first poll; then takes what the
        consumer already holds, up to ``max_records`` messages or
        ``max_bytes`` of values (a batch ends at the first poll that would
        wait), and, with ``max_span_ms``, only messages stamped within that
        much of the first one (the rest is read again next time). Raises
        ``kafka.errors.KafkaError`` s (the caller retries)."""
        chunks = self._carry
        count, nbytes = self._carry_len, self._carry_bytes
        wait = 0 if count or self.at_historic_end(
            self._next, self._last_stamp_ms) else timeout_ms
        while count < max_records and nbytes < max_bytes:
            try:
                part = self._poll(max_records - count, wait)
            except OffsetOutOfRangeError:
                if count:
                    break  # return what we have; the next call handles it
                self._skip_deleted()
                continue
            if not part:
                break
            chunks.append(part)
            count += len(part)
            nbytes += self._chunk_bytes(part)
            # Held from now on, should a later poll raise.
            self._carry_len, self._carry_bytes = count, nbytes
            wait = 0
        if not count:
            return None
        pos = self._carry_pos
        # Guard against a message before the requested position (a fetch
        # that raced a seek): it belongs to someone else's range.
        if self._next is not None and chunks[0][pos].offset < self._next:
            chunks, pos, count, nbytes = self._drop_stale(chunks, pos)
            if not count:
                return None
        take = None
        if max_span_ms is not None:
            take = _span_cut_chunks(chunks, pos, max_span_ms,
                                    self._chunk_timestamps)
        if take is None or take >= count:
            records = self._take(chunks, pos, count)
            self._drop_carry()
        else:
            records = self._take(chunks, pos, take)
            batch_bytes = self._chunk_bytes(records)
            self._carry_len = count - take
            self._carry_bytes = nbytes - batch_bytes
            nbytes = batch_bytes
        last = records[-1]
        self._next, self._last_stamp_ms = last.offset + 1, last.timestamp
        self.last_data_ms = now_ms()
        return Batch(self.topic, self.partition, records, nbytes)

    def at_historic_end(self, next_offset: int | None,
                        stamp_ms: int | None) -> bool:
        """Whether a read whose last message (offset ``next_offset - 1``,
        stamped ``stamp_ms``) is the partition's last as of the latest
        fetch, and older than ``schema.LIVE_LAG_MS``: the end of a
        catch-up. A poll that waits there for more (up to its timeout)
        holds back this partition's call and, as Prism runs a bundle's
        partitions one after another, every other partition and the
        watermark; whatever comes later is read by the next call. Live
        reads never stop early this way: their batches stay as large as
        the timeout makes them."""
        if next_offset is None or stamp_ms is None or stamp_ms < 0:
            return False
        end = self.highwater()
        return (end is not None and next_offset >= end
                and stamp_ms < now_ms() - schema.LIVE_LAG_MS)

    def _drop_stale(self, chunks, pos: int):
        """The carry without its messages before ``self._next`` (each poll
        is in offset order, so they lead their chunk): ``(chunks, pos,
        count, nbytes)`` of what is left, which becomes the carry."""
        self._drop_carry()
        kept = self._carry
        for chunk in chunks:
            j = pos
            while j < len(chunk) and chunk[j].offset < self._next:
                j += 1
            if j < len(chunk):
                kept.append(chunk[j:] if j else chunk)
            pos = 0
        self._carry_len = sum(map(len, kept))
        self._carry_bytes = sum(map(self._chunk_bytes, kept))
        return kept, 0, self._carry_len, self._carry_bytes

    def _take(self, chunks, pos: int, n: int):
        """The first ``n`` records of ``chunks`` from ``pos``, removed
        (``self._carry_pos`` follows). Copies only the records taken."""
        records = None
        while n:
            chunk = chunks[0]
            avail = len(chunk) - pos
            if avail <= n:
                chunks.popleft()
                if records is None and pos == 0:
                    records = chunk  # a whole poll: no copy
                elif records is None:
                    records = chunk[pos:]
                else:
                    records.extend(chunk[pos:] if pos else chunk)
                n -= avail
                pos = 0
            else:
                if records is None:
                    records = chunk[pos:pos + n]
                else:
                    records.extend(chunk[pos:pos + n])
                pos += n
                n = 0
        self._carry_pos = pos
        return records

    def _skip_deleted(self) -> None:
        # Our position left the log: retention deleted those messages before
        # they were read. They are gone; carry on from the oldest message
        # still there, and say so loudly. A position beyond the end is not
        # ours to skip: re-raise.
        beginning = self.beginning_offset()
        if self._next is None or self._next >= beginning:
            raise OffsetOutOfRangeError(
                f"{self.tp}: offset {self._next} is not in the log "
                f"(beginning {beginning})")
        _LOG.error("kafka %s: offsets [%d, %d) were deleted before they "
                   "were read (retention); skipping them", self.tp,
                   self._next, beginning)
        self.skipped += beginning - self._next
        self._seek_consumer(beginning)
        self._next = beginning

    def forget_position(self) -> None:
        """After a read whose tail was not used, the next ``seek`` must
        really seek."""
        self._next = None
        self._drop_carry()

    def highwater(self) -> int | None:
        """The partition's end offset as of the last fetch, without asking
        the broker; ``None`` before the first fetch. (The same as
        ``consumer.highwater(tp)``.)"""
        return self.consumer.highwater(self.tp)


class PartitionReader(CarryingReader):
    """A kafka-python consumer assigned to one partition (no group
    membership, no auto-commit: the caller owns the offsets).

    Creating a ``KafkaConsumer`` costs a broker round trip and some
    milliseconds of Python, and its fetch buffer holds messages already on
    their way, so readers are meant to be kept and reused across calls.
    kafka-python reconnects by itself when the broker comes back; the caller
    retries empty or failed polls.
    """

    def __init__(self, bootstrap_servers, topic: str, partition: int,
                 group_id: str | None = None,
                 consumer_overrides: dict | None = None):
        super().__init__(topic, partition)
        check_crc32c()
        self.consumer = new_consumer(consumer_config(
            bootstrap_servers, group_id, f"topk-kafka-{topic}-{partition}",
            consumer_overrides))
        self.consumer.assign([self.tp])

    def _poll(self, max_records: int, timeout_ms: int):
        got = self.consumer.poll(timeout_ms=timeout_ms,
                                 max_records=max_records)
        return got.get(self.tp)

    def _seek_consumer(self, offset: int) -> None:
        self.consumer.seek(self.tp, offset)

    def position(self, timeout_ms: int = 2_000) -> int:
        """The consumer's position: the offset after the last one it has
        passed, control records (transaction markers) included; -1 if
        unknown."""
        try:
            pos = self.consumer.position(self.tp, timeout_ms=timeout_ms)
        except KafkaError:
            return -1
        return -1 if pos is None else pos

    def end_offset(self, timeout_ms: int = 5_000) -> int:
        return self.consumer.end_offsets([self.tp], timeout_ms)[self.tp]

    def beginning_offset(self, timeout_ms: int = 5_000) -> int:
        return self.consumer.beginning_offsets([self.tp], timeout_ms)[self.tp]

    def commit(self, next_offset: int, timeout_ms: int = 5_000) -> None:
        """Commit ``next_offset`` (the next offset to read) for the group."""
        self.consumer.commit({self.tp: OffsetAndMetadata(next_offset, "", -1)},
                             timeout_ms=timeout_ms)

    def close(self) -> None:
        try:
            self.consumer.close(autocommit=False, timeout_ms=2_000)
        except Exception:  # closing a consumer of a dead broker may raise
            _LOG.debug("closing the consumer of %s failed", self.tp,
                       exc_info=True)


#: The Kafka clients a source can read with (``open_reader``).
KAFKA_CLIENTS = ("kafka-python", "confluent")
#: The one ``open_reader`` uses unless told: confluent-kafka read 3-4.5x
#: the events/s of kafka-python on the source's read path, at a third of
#: the CPU (``raw_confluent`` / ``raw_reader`` of bench/kafka_throughput.py,
#: one- and 100-event messages). kafka-python when it is not installed.
DEFAULT_KAFKA_CLIENT = "confluent"


def default_client() -> str:
    """``DEFAULT_KAFKA_CLIENT`` if confluent-kafka is installed, else
    kafka-python (with a warning): the client readers and senders use
    unless told."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        _LOG.warning("confluent-kafka is not installed: using kafka-python, "
                     "3-6x slower (pip install confluent-kafka)")
        return "kafka-python"
    return DEFAULT_KAFKA_CLIENT


def open_reader(client: str | None, bootstrap_servers, topic: str,
                partition: int, group_id: str | None = None,
                consumer_overrides: dict | None = None) -> CarryingReader:
    """A partition reader of ``client`` (one of ``KAFKA_CLIENTS``; ``None``
    for ``DEFAULT_KAFKA_CLIENT``, or kafka-python without confluent-kafka):
    ``PartitionReader`` (kafka-python) or ``ConfluentPartitionReader``
    (confluent-kafka, librdkafka). Both take the same arguments, return the
    same ``Batch`` es and raise ``kafka.errors.KafkaError`` s;
    ``consumer_overrides`` are kafka-python ``KafkaConsumer`` settings,
    which the confluent reader translates (or librdkafka properties,
    dotted, for it alone)."""
    client = default_client() if client is None else client
    if client == "kafka-python":
        cls = PartitionReader
    elif client == "confluent":
        # Imported here: confluent-kafka is needed only when chosen.
        from topk.connectors.kafka.confluent_reader import \
            ConfluentPartitionReader as cls
    else:
        raise ValueError(f"unknown Kafka client {client!r}: use one of "
                         f"{', '.join(KAFKA_CLIENTS)}")
    return cls(bootstrap_servers, topic, partition, group_id,
               consumer_overrides)
