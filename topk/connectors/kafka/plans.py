"""Where a Kafka read starts and what each reader owns (no Beam).

Offsets follow Kafka's convention: a partition's *end offset* (high
watermark) is the offset the next produced message will get, so a partition
holds the messages ``[beginning, end)``. A *plan* is the offset range a
reader owns: ``[start, stop)``, where ``stop`` is ``None`` when unbounded.

``parse_start`` and ``resolve_start_offset`` turn a start position
(earliest, latest, committed, a time) into an offset; ``plan_partitions``
and ``split_offsets`` are the arithmetic of plans; ``plan_topic`` asks the
broker and returns one ``PartitionPlan`` per partition.
"""
import dataclasses
import logging
import time

from kafka import TopicPartition
from kafka.errors import KafkaError

from topk.connectors.kafka.client import Backoff, consumer_config, new_consumer
from topk.core.windows import parse_time

_LOG = logging.getLogger(__name__)

#: The ``stop`` of an unbounded restriction: an offset no partition reaches.
UNBOUNDED_STOP = (1 << 63) - 1


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
