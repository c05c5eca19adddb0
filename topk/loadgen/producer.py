"""Synthetic events -> a Kafka topic: the load generator of ``topk produce``.

Takes the generator's JSON-lines records in emission order
(``topk.loadgen.generator.generate_records``: duplicates and malformed records
included), packs ``events_per_message`` of them into each Kafka message
(newline-delimited, as an API gateway that batches would), and sends them
with confluent-kafka (or kafka-python, ``client``; see
``topk.connectors.kafka.sender``) at a target rate (a token bucket over
groups of messages) or as fast as it can, printing progress every few
seconds.

Each message carries a Kafka record timestamp. By default it is the newest
event time among its records (``timestamps="event"``), the moment a gateway
batching those events could have sent it at the earliest. The Kafka source
derives element timestamps and watermarks from record timestamps, so replayed
synthetic days get event-time watermarks. ``timestamps="now"`` leaves
stamping to the producer's clock (wall time), like live traffic.

Messages go to one partition at a time, switching after about a producer
batch (``batch_size`` bytes), the way Kafka's sticky partitioner does: few,
full record batches, and event times within a partition stay roughly in
order. No Beam here.
"""
import dataclasses
import time
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from topk.loadgen import generator
from topk.core.schema import MAX_TS_MS, MIN_TS_MS
from topk.core.windows import now_ms, parse_time

#: Producer settings tuned on this machine (2 cores, local broker): a
#: linger lets record batches fill; 1 MB batches amortise per-request cost.
LINGER_MS = 20
BATCH_SIZE = 1 << 20
#: Messages are sent in groups of about this many events between rate
#: checks and progress lines.
SEND_GROUP_EVENTS = 10_000


@dataclasses.dataclass
class ProduceSummary:
    """What ``produce`` sent. ``events`` counts records (valid, duplicate
    and malformed alike); ``bytes`` the message values."""
    topic: str
    partitions: int
    created_topic: bool
    events: int
    messages: int
    bytes: int
    seconds: float
    failed_messages: int

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def describe(self) -> str:
        return (f"produced {self.events:,} events in {self.messages:,} "
                f"messages ({self.bytes / 1e6:,.1f} MB) to {self.topic} "
                f"({self.partitions} partitions"
                f"{', created' if self.created_topic else ''}) in "
                f"{self.seconds:.1f} s: {self.events_per_s:,.0f} events/s"
                + (f"; {self.failed_messages} messages FAILED"
                   if self.failed_messages else ""))


# ---------------------------------------------------------------------------
# Pure helpers (no broker).


_TS_MS = r'"ts":(?P<ms>-?\d{1,18})[,}]'
_TS_RFC = (r'"ts":"(?P<dt>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)'
           r'(?:\.(?P<frac>\d{1,3})\d*)?Z"')


def event_times(lines: pa.Array) -> np.ndarray:
    """Event time (epoch ms) of each JSON-lines record, ``-1`` where it
    cannot be read cheaply or lies outside the valid range (malformed
    records). Reads ``"ts":<ms>`` and ``"ts":"YYYY-MM-DDTHH:MM:SS[.mmm]Z"``,
    the generator's two formats, with vectorised regexes."""
    n = len(lines)
    out = np.full(n, -1, dtype=np.int64)
    if not n:
        return out
    # pc.struct_field (unlike StructArray.field) keeps a non-match null.
    ms = pc.struct_field(pc.extract_regex(lines, _TS_MS), "ms")
    ms = pc.cast(ms, pa.int64())
    rfc = pc.extract_regex(lines, _TS_RFC)
    base = pc.strptime(pc.struct_field(rfc, "dt"),
                       format="%Y-%m-%dT%H:%M:%S", unit="ms",
                       error_is_null=True)
    frac = pc.utf8_rpad(pc.struct_field(rfc, "frac"), 3, padding="0")
    frac_ms = pc.cast(frac, pa.int64())
    from_rfc = pc.add(pc.cast(base, pa.int64()), frac_ms)
    ts = pc.fill_null(pc.coalesce(ms, from_rfc), -1).to_numpy(
        zero_copy_only=False).astype(np.int64, copy=False)
    ok = (ts >= MIN_TS_MS) & (ts < MAX_TS_MS)
    out[ok] = ts[ok]
    return out


def message_timestamps(ts: np.ndarray, events_per_message: int,
                       previous: int) -> np.ndarray:
    """Per message of ``events_per_message`` consecutive records: the
    largest known event time. A message with none (only malformed records)
    repeats the previous message's timestamp, so one bad record never moves
    a partition's watermark; ``previous`` seeds the first message."""
    n = len(ts)
    if not n:
        return np.empty(0, dtype=np.int64)
    starts = np.arange(0, n, events_per_message)
    per = np.maximum.reduceat(ts, starts)
    known = per >= 0
    # Forward fill: index of the last known message at or before each one.
    idx = np.where(known, np.arange(len(per)), -1)
    idx = np.maximum.accumulate(idx)
    filled = np.where(idx >= 0, per[np.maximum(idx, 0)], previous)
    return filled.astype(np.int64)


def pack_messages(lines: pa.Array, events_per_message: int) -> list:
    """JSON-lines records -> message values (bytes): each message is
    ``events_per_message`` consecutive records joined by newlines (the last
    message may hold fewer), without a trailing newline."""
    if events_per_message < 1:
        raise ValueError("events_per_message must be >= 1")
    n = len(lines)
    if not n:
        return []
    # One buffer of "record\n" for all records; each message is a slice of
    # it (one copy per message, no per-record Python work).
    lines = lines.cast(pa.large_string())
    newline = pa.scalar("\n", pa.large_string())
    terminated = pc.binary_join_element_wise(
        lines, newline, pa.scalar("", pa.large_string()))
    terminated = terminated.cast(pa.large_binary())
    _, offsets, data = terminated.buffers()
    off = np.frombuffer(offsets, dtype=np.int64)[
        terminated.offset:terminated.offset + n + 1]
    blob = data.to_pybytes()[off[0]:off[-1]] if off[0] else data.to_pybytes()
    off = off - off[0]
    firsts = np.append(np.arange(0, n, events_per_message), n)
    cuts = off[firsts].tolist()
    # A message's trailing newline is dropped unless its last record is
    # empty: readers take one trailing newline as a terminator, so "x\n"
    # means ["x"] and ["x", ""] must be sent as "x\n\n".
    last_empty = (np.diff(off)[firsts[1:] - 1] == 1).tolist()
    return [blob[a:b if keep else b - 1]
            for a, b, keep in zip(cuts[:-1], cuts[1:], last_empty)]


class TokenBucket:
    """Paces a stream to ``rate`` units per second, allowing bursts of
    ``burst`` units. ``take(n)`` sleeps until ``n`` units are available."""

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst)
        self.clock = clock
        self.sleep = sleep
        self.tokens = self.burst
        self.last = clock()

    def take(self, n: float) -> float:
        """Take ``n`` units; returns the seconds slept."""
        now = self.clock()
        self.tokens = min(self.burst,
                          self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= n
        if self.tokens >= 0:
            return 0.0
        wait = -self.tokens / self.rate
        self.sleep(wait)
        return wait


def resolve_start(text: str) -> str:
    """``now`` -> the current time as RFC 3339 (so event times track the
    wall clock); any other RFC 3339 time is validated and kept."""
    if text.strip().lower() == "now":
        ms = now_ms()
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + (
            f".{ms % 1000:03d}Z")
    parse_time(text)
    return text


# ---------------------------------------------------------------------------
# Broker side.


def ensure_topic(bootstrap_servers, topic: str, partitions: int,
                 replication_factor: int = 1, timeout_s: float = 30.0,
                 topic_config: dict | None = None) -> bool:
    """Create ``topic`` with ``partitions`` partitions and ``topic_config``
    (e.g. ``{"retention.ms": -1}``) unless it exists. Returns whether it
    was created (an existing topic keeps its own settings)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers,
                             client_id="topk-produce-admin",
                             request_timeout_ms=int(timeout_s * 1000))
    try:
        if topic in admin.list_topics():
            return False
        try:
            admin.create_topics([NewTopic(
                topic, partitions, replication_factor,
                topic_configs={k: str(v) for k, v in
                               (topic_config or {}).items()})],
                                timeout_ms=int(timeout_s * 1000))
        except TopicAlreadyExistsError:
            return False
        return True
    finally:
        admin.close()


def produce(bootstrap_servers, topic: str,
            config: generator.GeneratorConfig,
            events_per_message: int = 1, send_rate: float | None = None,
            partitions: int = 4, acks=1, linger_ms: int = LINGER_MS,
            batch_size: int = BATCH_SIZE, timestamps: str = "event",
            retention_ms: int | None = -1,
            progress: Callable[[str], None] | None = print,
            progress_every_s: float = 5.0,
            producer_config: dict | None = None,
            broker_timeout_s: float | None = None,
            client: str | None = None) -> ProduceSummary:
    """Send the events of ``config`` to ``topic``; returns a summary.

    ``send_rate``: target events per second sent (``None``: as fast as
    possible; the events' own pace in event time is ``config.rate``).
    ``acks``: 0, 1 (default: the leader wrote it) or ``"all"``.
    ``timestamps``: ``"event"`` (newest event time in the message) or
    ``"now"`` (the producer's clock). Creates the topic if it does not
    exist, with ``partitions`` partitions and, unless ``retention_ms`` is
    ``None``, that ``retention.ms`` (default -1: keep forever; Kafka's time
    retention looks at record timestamps, so a broker that keeps 7 days
    deletes a replayed day of 2024 within minutes when messages carry event
    times). ``progress`` gets a line every ``progress_every_s`` seconds
    (``None``: silent). Before anything is generated, the broker must
    answer within ``broker_timeout_s`` (default
    ``BROKER_CHECK_TIMEOUT_S``; 0 skips the check), else
    ``BrokerUnavailable``, a ``ValueError`` naming the address.
    ``client``: ``"confluent"`` (default, if installed) or
    ``"kafka-python"``; ``producer_config`` overrides that client's
    settings in its own spelling.
    """
    if events_per_message < 1:
        raise ValueError("events_per_message must be >= 1")
    if send_rate is not None and send_rate <= 0:
        raise ValueError("send_rate must be positive")
    if timestamps not in ("event", "now"):
        raise ValueError("timestamps must be 'event' or 'now'")
    if acks == "all":
        acks = -1
    from topk.connectors.kafka import (BROKER_CHECK_TIMEOUT_S, check_broker,
                                       check_crc32c)
    if broker_timeout_s is None:
        broker_timeout_s = BROKER_CHECK_TIMEOUT_S
    if broker_timeout_s:
        check_broker(bootstrap_servers, timeout_s=broker_timeout_s)
    check_crc32c()
    created = ensure_topic(
        bootstrap_servers, topic, partitions, topic_config=(
            None if retention_ms is None else {"retention.ms": retention_ms}))
    from topk.connectors.kafka.sender import open_sender
    producer = open_sender(client, bootstrap_servers, "topk-produce", acks,
                           linger_ms, batch_size, producer_config)
    try:
        parts = producer.partitions(topic, 30.0)
        # Rate-limited: groups of ~50 ms of events, so the pace is smooth
        # and the first burst small.
        group_events = (max(1, min(SEND_GROUP_EVENTS, int(send_rate / 20)))
                        if send_rate else SEND_GROUP_EVENTS)
        bucket = (TokenBucket(send_rate, burst=group_events) if send_rate
                  else None)
        started = time.monotonic()
        last_report, reported_events = started, 0
        sent_events = sent_messages = sent_bytes = 0
        previous_ts = parse_time(config.start)
        part_index, part_bytes = 0, 0
        group = max(1, group_events // events_per_message)
        # Chunks of whole messages, so no message straddles two chunks (the
        # generator's output does not depend on its chunk size).
        chunk_size = max(1, generator.CHUNK_SIZE // events_per_message) * (
            events_per_message)
        if chunk_size > generator.MAX_CHUNK_SIZE:
            chunk_size = events_per_message
        for lines in generator.generate_records(config, chunk_size):
            messages = pack_messages(lines, events_per_message)
            if timestamps == "event":
                msg_ts = message_timestamps(event_times(lines),
                                            events_per_message, previous_ts)
                if len(msg_ts):
                    previous_ts = int(msg_ts[-1])
                msg_ts = msg_ts.tolist()
            else:
                msg_ts = [None] * len(messages)
            counts = [events_per_message] * len(messages)
            if messages and len(lines) % events_per_message:
                counts[-1] = len(lines) % events_per_message
            for g in range(0, len(messages), group):
                chunk = messages[g:g + group]
                n_events = sum(counts[g:g + group])
                if bucket is not None:
                    bucket.take(n_events)
                for value, ts in zip(chunk, msg_ts[g:g + group]):
                    producer.send(topic, value, parts[part_index], ts)
                    part_bytes += len(value)
                    if part_bytes >= batch_size:
                        part_index = (part_index + 1) % len(parts)
                        part_bytes = 0
                    sent_bytes += len(value)
                sent_messages += len(chunk)
                sent_events += n_events
                now = time.monotonic()
                if progress and now - last_report >= progress_every_s:
                    interval = (sent_events - reported_events) / (
                        now - last_report)
                    progress(f"sent {sent_events:,} events "
                             f"({sent_messages:,} messages) in "
                             f"{now - started:.1f} s: {interval:,.0f} "
                             "events/s")
                    last_report, reported_events = now, sent_events
        producer.flush()
        seconds = time.monotonic() - started
    finally:
        producer.close()
    summary = ProduceSummary(topic, len(parts), created, sent_events,
                             sent_messages, sent_bytes, seconds,
                             producer.failed)
    if progress:
        progress(summary.describe())
    return summary
