"""Kafka reading without Beam: start positions, offset plans, poll batches,
payloads and watermark arithmetic, plus a kafka-python reader of one partition.

``topk.sources.kafka.ReadFromKafkaBatches`` is thin Beam wiring around this
module; benchmarks and tests use it directly. Nothing here imports
``apache_beam``.

Offsets follow Kafka's convention: a partition's *end offset* (high
watermark) is the offset the next produced message will get, so a partition
holds the messages ``[beginning, end)``. A *plan* is the offset range a
reader owns: ``[start, stop)``, where ``stop`` is ``None`` when unbounded.

All instants are epoch milliseconds (UTC), like the rest of the project.
"""
import dataclasses
import functools
import logging
import random
import threading
import time

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, OffsetOutOfRangeError
from kafka.structs import OffsetAndMetadata

from topk.core.windows import parse_time

_LOG = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)  # warn once per process
def check_crc32c() -> bool:
    """Whether kafka-python found the ``crc32c`` package. Without it, every
    record batch's CRC-32C is computed in pure Python at ~5 MB/s, which caps
    producing (always) and consuming (``check_crcs``) at ~40k events/s."""
    from kafka.record import util
    if getattr(util, "crc32c_c", None) is None:
        _LOG.warning("kafka-python uses its pure-Python CRC-32C (~5 MB/s): "
                     "pip install crc32c")
        return False
    return True

#: The ``stop`` of an unbounded restriction: an offset no partition reaches.
UNBOUNDED_STOP = (1 << 63) - 1

START_KINDS = ("earliest", "latest", "committed", "timestamp")

#: Defaults of the source's knobs (see ``ReadFromKafkaBatches``).
MAX_BATCH_RECORDS = 200_000
MAX_BATCH_BYTES = 16 << 20
POLL_TIMEOUT_MS = 500
ALLOWED_SKEW_MS = 10_000
IDLE_TIMEOUT_MS = 5_000

#: kafka-python consumer settings the reader uses unless overridden. Offsets
#: are the runner's state, so no auto-commit; large fetches make large poll
#: batches (a fetch is one partition's slice of a broker round trip);
#: ``auto_offset_reset='none'`` makes an offset that left the log (retention)
#: an error the reader handles, rather than a silent jump to the end.
CONSUMER_DEFAULTS = {
    "enable_auto_commit": False,
    "auto_offset_reset": "none",
    "max_partition_fetch_bytes": 16 << 20,
    "fetch_max_bytes": 64 << 20,
    "receive_buffer_bytes": 4 << 20,
    "fetch_max_wait_ms": 200,
    "request_timeout_ms": 15_000,
    "bootstrap_timeout_ms": 10_000,
    "reconnect_backoff_ms": 100,
    "reconnect_backoff_max_ms": 5_000,
    # Also how long an empty poll sleeps when no fetch is in flight (e.g.
    # right after a seek): kafka-python's default (100) costs catch-up
    # throughput, 20 costs nothing measurable.
    "retry_backoff_ms": 20,
}


# ---------------------------------------------------------------------------
# Start positions and offset plans.


def parse_start(start) -> tuple[str, int | None]:
    """``start`` -> ``(kind, timestamp_ms)``.

    ``start`` is ``"earliest"``, ``"latest"``, ``"committed"``, an epoch-ms
    integer (or a string of digits) or an RFC 3339 time; the last two give
    ``("timestamp", ms)``, the others ``(kind, None)``. Raises ``ValueError``.
    """
    if isinstance(start, bool):
        raise ValueError(f"bad start position {start!r}")
    if isinstance(start, int):
        if start < 0:
            raise ValueError(f"start timestamp must be >= 0, not {start}")
        return "timestamp", start
    if not isinstance(start, str):
        raise ValueError(f"bad start position {start!r}: use earliest, "
                         "latest, committed, epoch ms or an RFC 3339 time")
    text = start.strip().lower()
    if text in ("earliest", "latest", "committed"):
        return text, None
    if text.isdigit():
        return "timestamp", int(text)
    try:
        return "timestamp", parse_time(start)
    except ValueError:
        raise ValueError(f"bad start position {start!r}: use earliest, "
                         "latest, committed, epoch ms or an RFC 3339 "
                         "time") from None


def resolve_start_offset(kind: str, beginning: int, end: int,
                         committed: int | None = None,
                         by_time: int | None = None,
                         committed_fallback: str = "earliest") -> int:
    """The first offset to read of one partition holding ``[beginning, end)``.

    ``committed`` is the group's committed offset (``None``: none yet, then
    ``committed_fallback`` decides); ``by_time`` is the offset of the first
    message at or after the start time (``None``: no such message yet, so
    reading starts at the end). The result always lies in
    ``[beginning, end]``: a committed offset that retention has since
    deleted starts at the beginning instead.
    """
    if kind == "earliest":
        offset = beginning
    elif kind == "latest":
        offset = end
    elif kind == "committed":
        if committed is None:
            return resolve_start_offset(committed_fallback, beginning, end)
        offset = committed
    elif kind == "timestamp":
        offset = end if by_time is None else by_time
    else:
        raise ValueError(f"unknown start kind {kind!r}")
    return min(max(offset, beginning), end)


@dataclasses.dataclass(frozen=True)
class PartitionPlan:
    """What one reader owns: ``[start, stop)`` of ``topic``/``partition``;
    ``stop`` is ``None`` when unbounded. ``all_partitions`` lists every
    partition of the topic read by the same transform (for aligned
    watermarks). (The Beam source's element.)"""
    topic: str
    partition: int
    start: int
    stop: int | None = None
    all_partitions: tuple = ()

    @property
    def bounded(self) -> bool:
        return self.stop is not None

    @property
    def restriction_stop(self) -> int:
        return UNBOUNDED_STOP if self.stop is None else self.stop


def plan_partitions(topic: str, start_offsets: dict, end_offsets: dict,
                    bounded: bool) -> list:
    """``{partition: start}`` and ``{partition: end}`` -> one
    ``PartitionPlan`` per partition, sorted by partition. Bounded plans stop
    at the end offsets present now (what a backfill or a test reads)."""
    plans = []
    everyone = tuple(sorted(start_offsets))
    for p in everyone:
        start = start_offsets[p]
        stop = max(end_offsets[p], start) if bounded else None
        plans.append(PartitionPlan(topic, p, start, stop, everyone))
    return plans


def split_offsets(start: int, stop: int, size: int) -> list:
    """``[start, stop)`` -> consecutive ``(start, stop)`` pieces of about
    ``size`` offsets (a short tail joins the piece before it)."""
    if size <= 0 or stop - start <= size:
        return [(start, stop)]
    bounds = list(range(start, stop, size)) + [stop]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < size // 4:
        del bounds[-2]
    return list(zip(bounds[:-1], bounds[1:]))


# ---------------------------------------------------------------------------
# Batches and payloads.


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


@dataclasses.dataclass
class Batch:
    """Messages of one partition from one or more polls, in offset order.

    ``records`` are kafka-python ``ConsumerRecord`` s (anything with
    ``offset``, ``timestamp`` and ``value``)."""
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
        return Batch(self.topic, self.partition, kept,
                     sum(len(r.value or b"") for r in kept))

    def max_timestamp(self) -> int | None:
        """The largest Kafka record timestamp (epoch ms), ``None`` if the
        messages carry none (pre-0.10 formats report -1)."""
        ts = max(r.timestamp for r in self.records)
        return ts if ts is not None and ts >= 0 else None

    def payload(self) -> bytes:
        return join_values([r.value or b"" for r in self.records])

    def source(self) -> str:
        return batch_source(self.topic, self.partition, self.first_offset,
                            self.last_offset)


# ---------------------------------------------------------------------------
# Watermarks.


def data_watermark(current: int | None, max_record_ts: int | None,
                   skew_ms: int) -> int | None:
    """The partition's watermark after reading messages whose largest
    record timestamp is ``max_record_ts``: that minus the allowed skew
    (records may arrive up to ``skew_ms`` behind the newest one), never
    moving back."""
    if max_record_ts is None:
        return current
    candidate = max_record_ts - skew_ms
    return candidate if current is None else max(current, candidate)


def idle_watermark(current: int | None, now_ms: int,
                   last_data_ms: int | None, idle_timeout_ms: int,
                   skew_ms: int, caught_up: bool) -> int | None:
    """The watermark of a partition that returned no data.

    When it has had nothing new for ``idle_timeout_ms`` and the reader is at
    the partition's end (``caught_up``: not merely cut off from a broker
    that is down), new messages can only carry producer timestamps from now
    on, so the watermark advances to ``now - skew`` and an idle partition
    does not hold back every window of the pipeline. Never moves back.
    """
    if not caught_up:
        return current
    if last_data_ms is not None and now_ms - last_data_ms < idle_timeout_ms:
        return current
    candidate = now_ms - skew_ms
    return candidate if current is None else max(current, candidate)


#: The watermark of a partition that has been read to its (bounded) end.
DONE = (1 << 63) - 1


def _span_cut(records, max_span_ms: int) -> int:
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


class AlignedWatermarks:
    """Per-partition watermarks of one read, shared by every reader in the
    process; each reader reports the minimum over all partitions.

    Why: Prism (2.77) takes the output watermark of a splittable DoFn's stage
    from the residuals of the *last* bundle that returned any, not the
    minimum over all outstanding restrictions. With one restriction per
    partition, one partition that ran ahead would move the stage's watermark
    past the batches the others have yet to emit, and Prism drops those as
    late. If every restriction reports the minimum over all partitions, the
    last bundle's estimate is right. Correct only when all partitions are
    read in one process (Prism's loopback worker, the DirectRunner);
    runners that combine restriction watermarks themselves (Flink, Dataflow)
    use per-partition watermarks instead.

    A partition's new watermark is *pending* until its next ``process``
    call starts, and only *confirmed* values count: a runner schedules a
    residual only after it has taken the previous bundle's output, so until
    then the batches that moved the watermark may still be on their way,
    and another partition must not carry the new value to the runner before
    them. ``None`` means "not known yet" (holds everyone back); ``DONE`` a
    partition read to the end of its bounded range (which, having no next
    call, stays pending: aligned bounded reads hold the watermark until
    every partition is done, when the runner closes the input anyway).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._reads = {}  # read id -> {partition: [confirmed, pending]}

    def _marks(self, read_id, partitions) -> dict:
        marks = self._reads.setdefault(read_id, {})
        for p in partitions:
            marks.setdefault(p, [None, None])
        return marks

    def begin(self, read_id, partitions, partition) -> int | None:
        """A ``process`` call of ``partition`` starts: confirm its pending
        watermark. Returns the partition's own watermark (``None`` if
        unknown)."""
        with self._lock:
            mark = self._marks(read_id, partitions)[partition]
            mark[0] = _later(mark[0], mark[1])
            return mark[0]

    def end(self, read_id, partitions, partition,
            watermark: int | None) -> int | None:
        """A call ends with ``partition`` at ``watermark`` (pending). Returns
        the minimum confirmed watermark over ``partitions``."""
        with self._lock:
            marks = self._marks(read_id, partitions)
            mark = marks[partition]
            mark[1] = _later(mark[1], watermark)
            return aligned_minimum(marks[p][0] for p in partitions)

    def forget(self, read_id) -> None:
        with self._lock:
            self._reads.pop(read_id, None)


def _later(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def aligned_minimum(watermarks) -> int | None:
    """The minimum of partition watermarks; ``None`` if any is unknown."""
    low = None
    for wm in watermarks:
        if wm is None:
            return None
        low = wm if low is None else min(low, wm)
    return low


class Backoff:
    """Exponential backoff with jitter: ``next()`` gives the next delay in
    seconds (``base``, doubling up to ``cap``); ``reset()`` after a
    success."""

    def __init__(self, base: float = 0.2, cap: float = 10.0):
        self.base = base
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2 ** self.failures))
        self.failures += 1
        return delay * (0.5 + random.random() / 2)

    def reset(self) -> None:
        self.failures = 0


# ---------------------------------------------------------------------------
# kafka-python I/O.


def consumer_config(bootstrap_servers, group_id=None, client_id=None,
                    overrides: dict | None = None) -> dict:
    """kafka-python ``KafkaConsumer`` keyword arguments: the defaults above,
    then ``overrides`` (the user's ``consumer_config``)."""
    config = dict(CONSUMER_DEFAULTS, bootstrap_servers=bootstrap_servers,
                  group_id=group_id)
    if client_id:
        config["client_id"] = client_id
    config.update(overrides or {})
    config["enable_auto_commit"] = False  # offsets are the runner's state
    return config


def new_consumer(config: dict) -> KafkaConsumer:
    return KafkaConsumer(**config)


def plan_topic(bootstrap_servers, topic: str, start="earliest",
               bounded: bool = False, group_id: str | None = None,
               consumer_overrides: dict | None = None,
               timeout_s: float = 60.0) -> list:
    """Look up ``topic``'s partitions and offsets -> ``PartitionPlan`` s.

    Retries (with backoff) while the broker is unreachable, up to
    ``timeout_s``. Raises ``ValueError`` for a topic that does not exist or
    ``start="committed"`` without a ``group_id``, and the last Kafka error
    when the broker stays unreachable.
    """
    kind, ts = parse_start(start)
    if kind == "committed" and not group_id:
        raise ValueError("start='committed' needs a group_id")
    deadline = time.monotonic() + timeout_s
    backoff = Backoff()
    while True:
        consumer = None
        try:
            consumer = new_consumer(consumer_config(
                bootstrap_servers, group_id, "topk-kafka-planner",
                consumer_overrides))
            partitions = _partitions_of(consumer, topic, deadline)
            tps = [TopicPartition(topic, p) for p in partitions]
            remaining = max(1, int((deadline - time.monotonic()) * 1000))
            beginning = consumer.beginning_offsets(tps, remaining)
            end = consumer.end_offsets(tps, remaining)
            by_time = {}
            if kind == "timestamp":
                found = consumer.offsets_for_times({tp: ts for tp in tps},
                                                   remaining)
                by_time = {tp: (o.offset if o is not None else None)
                           for tp, o in found.items()}
            committed = {}
            if kind == "committed":
                committed = {tp: consumer.committed(tp, timeout_ms=remaining)
                             for tp in tps}
            starts = {tp.partition: resolve_start_offset(
                kind, beginning[tp], end[tp], committed.get(tp),
                by_time.get(tp)) for tp in tps}
            ends = {tp.partition: end[tp] for tp in tps}
            plans = plan_partitions(topic, starts, ends, bounded)
            _LOG.info("kafka %s start=%s: %s", topic, start, ", ".join(
                f"{p.partition}:[{p.start},"
                f"{'inf' if p.stop is None else p.stop})" for p in plans))
            return plans
        except ValueError:
            raise
        except (KafkaError, OSError) as e:
            if time.monotonic() + backoff.base > deadline:
                raise
            delay = backoff.next()
            _LOG.warning("kafka %s: planning failed (%r); retrying in %.1fs",
                         topic, e, delay)
            time.sleep(delay)
        finally:
            if consumer is not None:
                consumer.close()


def _partitions_of(consumer, topic: str, deadline: float) -> list:
    # Metadata for a topic may take a moment after the broker starts or the
    # topic is created; an absent topic stays absent.
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return sorted(parts)
        if time.monotonic() > deadline:
            raise ValueError(f"Kafka topic {topic!r} does not exist")
        time.sleep(0.2)
        if parts is None:
            consumer.topics()  # refreshes the cluster metadata


class PartitionReader:
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
        self.topic = topic
        self.partition = partition
        self.tp = TopicPartition(topic, partition)
        check_crc32c()
        self.consumer = new_consumer(consumer_config(
            bootstrap_servers, group_id, f"topk-kafka-{topic}-{partition}",
            consumer_overrides))
        self.consumer.assign([self.tp])
        self._next = None  # offset of the next message read_batch returns
        # Messages polled but cut off the last batch by its span, in
        # offset order from ``_next``: the next batch starts with them.
        # (Seeking back instead would drop kafka-python's prefetched
        # messages and cost a fetch round trip per batch.)
        self._carry = []
        # Wall clock of the last non-empty poll; the idle clock starts now.
        self.last_data_ms = int(time.time() * 1000)
        self.skipped = 0  # offsets lost to retention before being read

    def seek(self, offset: int) -> None:
        """Read from ``offset`` next. A no-op when already there, which keeps
        the messages kafka-python has prefetched."""
        if self._next != offset:
            self.consumer.seek(self.tp, offset)
            self._next = offset
            self._carry = []

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
        kafka-python errors (the caller retries)."""
        records, self._carry = self._carry, []
        nbytes = sum(r.serialized_value_size for r in records
                     if r.serialized_value_size > 0)
        wait = 0 if records else timeout_ms
        while len(records) < max_records and nbytes < max_bytes:
            try:
                got = self.consumer.poll(
                    timeout_ms=wait, max_records=max_records - len(records))
            except OffsetOutOfRangeError:
                if records:
                    break  # return what we have; the next call handles it
                self._skip_deleted()
                continue
            part = got.get(self.tp)
            if not part:
                break
            records.extend(part)
            nbytes += sum(r.serialized_value_size for r in part
                          if r.serialized_value_size > 0)
            wait = 0
        if not records:
            return None
        # Guard against a message before the requested position (a fetch
        # that raced a seek): it belongs to someone else's range.
        if self._next is not None and records[0].offset < self._next:
            records = [r for r in records if r.offset >= self._next]
            if not records:
                return None
        if max_span_ms is not None:
            cut = _span_cut(records, max_span_ms)
            if cut < len(records):
                records, self._carry = records[:cut], records[cut:]
                nbytes = sum(r.serialized_value_size for r in records
                             if r.serialized_value_size > 0)
        self._next = records[-1].offset + 1
        self.last_data_ms = int(time.time() * 1000)
        return Batch(self.topic, self.partition, records, nbytes)

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
        self.consumer.seek(self.tp, beginning)
        self._next = beginning

    def forget_position(self) -> None:
        """After a read whose tail was not used, the next ``seek`` must
        really seek."""
        self._next = None
        self._carry = []

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
