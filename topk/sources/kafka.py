"""``ReadFromKafkaBatches``: a pure-Python Kafka source (kafka-python) for Beam.

Beam's own ``ReadFromKafka`` is a cross-language transform that needs a Java
expansion service; this one is a Python splittable DoFn, so it runs wherever
Python Beam runs (Prism, Flink, Dataflow; see deploy/prism/README.md for the
local runners).

Shape of the pipeline::

    Impulse -> PlanPartitions: one PartitionPlan per partition (start offsets
               resolved once, at run time)
            -> Reshuffle (spread the partitions over workers)
            -> ReadPartition: splittable DoFn, restriction = OffsetRange of
               the partition's offsets

Output: **one element per poll batch**, never per message:
``(source, payload)`` with ``source = "topic/partition@first-last"`` and
``payload`` the batch's message values as newline-delimited bytes (a message
may itself carry many events), ready for ``ParseEvents``. Empty messages stay
empty records, so the parser dead-letters them.

Timestamps and watermarks (per partition):

- An element's timestamp is the largest Kafka record timestamp in its batch:
  the newest event time known without parsing (producers stamp a message
  when they send it, after its events happened; ``topk produce`` stamps it
  with its newest event's time). Records without timestamps get the wall
  clock.
- The watermark is the largest record timestamp read so far minus
  ``allowed_skew_ms``: messages may arrive up to that much out of order. So a
  batch within the skew is never behind the watermark when it is emitted.
- A partition that has had no new message for ``idle_timeout_ms`` and whose
  reader is at its end (checked with the broker, so a broker outage is not
  mistaken for idleness) advances its watermark to ``now - allowed_skew_ms``,
  so one quiet partition does not stall every window.

Checkpoints: the offsets are the restriction, i.e. the runner's state. The
DoFn claims each batch's last offset (``BatchOffsetTracker``), emits it, and
after ``max_read_s`` or an empty poll hands the rest back with
``defer_remainder`` so the runner checkpoints and resumes it later. Nothing
is auto-committed; ``commit_offsets=True`` commits the offsets of emitted
batches to ``group_id`` for monitoring (consumer lag) and as a starting point
for a *new* job (``start="committed"``).

Broker outages: kafka-python reconnects by itself; polls that fail or time
out are retried by deferring with exponential backoff, so the pipeline
neither crashes nor skips or repeats an offset. Consumers are cached per
partition in the DoFn instance (creating one is slow).
"""
import logging
import time
import typing

import apache_beam as beam
from apache_beam.io.iobase import RestrictionProgress
from apache_beam.io.restriction_trackers import (OffsetRange,
                                                 OffsetRestrictionTracker)
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from topk import kafka_offsets as ko

_LOG = logging.getLogger(__name__)

#: Known end offsets per (topic, partition), for backlog estimates of
#: unbounded restrictions (restriction_size must not call the broker).
_KNOWN_ENDS: dict = {}


class BatchOffsetTracker(OffsetRestrictionTracker):
    """An ``OffsetRestrictionTracker`` whose claims cover whole batches.

    ``try_claim(last)`` claims every offset after the previous claim up to
    ``last``, or up to the restriction's end if that comes first: it
    succeeds when at least one offset of the batch is still in the range.
    The caller then emits the batch's messages below
    ``current_restriction().stop``. A split can only cut above the last
    claimed offset, so what was claimed stays claimed even if the runner
    splits right after the claim. (The plain tracker would reject a batch
    that a concurrent split made straddle the end, and the messages before
    the end would be lost.)

    Unbounded restrictions (stop = ``UNBOUNDED_STOP``) accept only
    checkpoints (``try_split(0)``): a fractional split of an open-ended range
    would cut at an offset that will not exist for ages.
    """

    def try_claim(self, position):
        if (self._last_claim_attempt is not None
                and position <= self._last_claim_attempt):
            raise ValueError(
                f"claims must increase: {position} after "
                f"{self._last_claim_attempt}")
        if position < self._range.start:
            raise ValueError(
                f"claim {position} is before the range {self._range}")
        first = (self._range.start if self._last_claim_attempt is None
                 else self._last_claim_attempt + 1)
        if first >= self._range.stop:
            self._last_claim_attempt = position
            return False
        claimed = min(position, self._range.stop - 1)
        self._last_claim_attempt = claimed
        self._current_position = claimed
        return True

    def try_split(self, fraction_of_remainder):
        if fraction_of_remainder > 0 and not self.is_bounded():
            return None
        return super().try_split(fraction_of_remainder)

    def current_progress(self) -> RestrictionProgress:
        if self.is_bounded():
            return super().current_progress()
        # Open-ended: progress is offsets done and, as far as known, left.
        done = 0 if self._current_position is None else (
            self._current_position + 1 - self._range.start)
        return RestrictionProgress(completed=float(done), remaining=0.0)

    def is_bounded(self):
        return self._range.stop != ko.UNBOUNDED_STOP


class _OffsetRangeProvider(RestrictionProvider):
    """Restrictions over one partition's offsets (element: ``PartitionPlan``).

    ``split_size`` > 0 splits a bounded range into pieces of that many
    offsets up front, so a backfill of one big partition spreads over
    workers; each piece gets its own consumer position.
    """

    def __init__(self, split_size: int = 0):
        self._split_size = split_size

    def initial_restriction(self, plan):
        return OffsetRange(plan.start, plan.restriction_stop)

    def create_tracker(self, restriction):
        return BatchOffsetTracker(restriction)

    def split(self, plan, restriction):
        if not plan.bounded or self._split_size <= 0:
            yield restriction
            return
        for start, stop in ko.split_offsets(restriction.start,
                                            restriction.stop,
                                            self._split_size):
            yield OffsetRange(start, stop)

    def restriction_size(self, plan, restriction):
        if restriction.stop != ko.UNBOUNDED_STOP:
            return restriction.size()
        end = _KNOWN_ENDS.get((plan.topic, plan.partition))
        return max(0, end - restriction.start) if end is not None else 0

    def truncate(self, plan, restriction):
        # On drain, a bounded range is read to its end; an open one stops.
        if restriction.stop != ko.UNBOUNDED_STOP:
            return restriction
        return None


class _ReadPartitionFn(beam.DoFn, RestrictionProvider):
    """``PartitionPlan`` -> ``(source, payload)`` batches of its partition,
    timestamped with the batch's largest Kafka record timestamp.

    It is its own restriction provider (delegating to
    ``_OffsetRangeProvider``), because ``RestrictionParam`` takes a provider
    fixed at class definition and ``split_size`` is a per-instance setting.
    """

    def __init__(self, bootstrap_servers, group_id, commit_offsets,
                 max_batch_records, max_batch_bytes, poll_timeout_ms,
                 consumer_config, allowed_skew_ms, idle_timeout_ms,
                 max_read_s, resume_delay_s, commit_interval_s,
                 split_size=0):
        self._provider = _OffsetRangeProvider(split_size)
        self._bootstrap = bootstrap_servers
        self._group_id = group_id
        self._commit = commit_offsets
        self._max_records = max_batch_records
        self._max_bytes = max_batch_bytes
        self._poll_timeout_ms = poll_timeout_ms
        self._consumer_config = dict(consumer_config or {})
        self._skew_ms = allowed_skew_ms
        self._idle_ms = idle_timeout_ms
        self._max_read_s = max_read_s
        self._resume_delay_s = resume_delay_s
        self._commit_interval_s = commit_interval_s
        self._readers = {}
        self._backoff = {}
        self._committed_at = {}
        self.messages = Metrics.counter("topk", "kafka_messages")
        self.batches = Metrics.counter("topk", "kafka_batches")
        self.value_bytes = Metrics.counter("topk", "kafka_bytes")
        self.retries = Metrics.counter("topk", "kafka_retries")
        self.skipped = Metrics.counter("topk", "kafka_offsets_lost_to_retention")
        self.batch_sizes = Metrics.distribution("topk", "kafka_batch_messages")

    # RestrictionProvider, delegated.
    def initial_restriction(self, plan):
        return self._provider.initial_restriction(plan)

    def create_tracker(self, restriction):
        return self._provider.create_tracker(restriction)

    def split(self, plan, restriction):
        return self._provider.split(plan, restriction)

    def restriction_size(self, plan, restriction):
        return self._provider.restriction_size(plan, restriction)

    def truncate(self, plan, restriction):
        return self._provider.truncate(plan, restriction)

    def setup(self):
        self._readers = {}
        self._backoff = {}
        self._committed_at = {}

    def teardown(self):
        for reader in self._readers.values():
            reader.close()
        self._readers = {}

    def _reader(self, plan) -> ko.PartitionReader:
        key = (plan.topic, plan.partition)
        reader = self._readers.get(key)
        if reader is None:
            reader = ko.PartitionReader(
                self._bootstrap, plan.topic, plan.partition, self._group_id,
                self._consumer_config)
            self._readers[key] = reader
        return reader

    def _drop_reader(self, plan) -> None:
        reader = self._readers.pop((plan.topic, plan.partition), None)
        if reader is not None:
            reader.close()

    def process(
            self, plan,
            tracker=beam.DoFn.RestrictionParam(),
            watermark=beam.DoFn.WatermarkEstimatorParam(
                ManualWatermarkEstimator.default_provider())):
        return self._read(plan, tracker, watermark)

    def _read(self, plan, tracker, watermark):
        restriction = tracker.current_restriction()
        if restriction.start >= restriction.stop:
            return
        key = (plan.topic, plan.partition)
        backoff = self._backoff.setdefault(key, ko.Backoff())
        deadline = time.monotonic() + self._max_read_s
        try:
            reader = self._reader(plan)
            reader.seek(restriction.start)
        except (ko.KafkaError, OSError) as e:
            yield from self._retry_later(plan, tracker, backoff, e)
            return
        next_offset = restriction.start
        while True:
            try:
                batch = reader.read_batch(self._max_records, self._max_bytes,
                                          self._poll_timeout_ms)
            except (ko.KafkaError, OSError) as e:
                # Keep the consumer for transient errors (it reconnects);
                # replace it when they persist.
                if backoff.failures >= 3:
                    self._drop_reader(plan)
                else:
                    reader.forget_position()
                yield from self._retry_later(plan, tracker, backoff, e)
                return
            if reader.skipped:
                self.skipped.inc(reader.skipped)
                reader.skipped = 0
            if batch is None:
                self._advance_idle(reader, watermark, next_offset)
                self._maybe_commit(reader, next_offset, force=True)
                tracker.defer_remainder(Duration.of(self._resume_delay_s))
                return
            backoff.reset()
            if not tracker.try_claim(batch.last_offset):
                reader.forget_position()
                self._maybe_commit(reader, next_offset, force=True)
                return
            stop = tracker.current_restriction().stop
            mine = batch.before(stop)
            if len(mine) < len(batch):
                reader.forget_position()  # the tail is someone else's
            if len(mine):
                max_ts = mine.max_timestamp()
                ts = (Timestamp(micros=max_ts * 1000) if max_ts is not None
                      else Timestamp.now())
                self.messages.inc(len(mine))
                self.batches.inc()
                self.value_bytes.inc(mine.nbytes)
                self.batch_sizes.update(len(mine))
                yield TimestampedValue((mine.source(), mine.payload()), ts)
                next_offset = mine.last_offset + 1
                wm = ko.data_watermark(_ms(watermark.current_watermark()),
                                       max_ts, self._skew_ms)
                _set_watermark(watermark, wm)
                self._note_end(reader)
            if batch.last_offset >= stop - 1:
                # The range is done: the last claim reached its end.
                self._maybe_commit(reader, stop, force=True)
                return
            self._maybe_commit(reader, next_offset)
            if time.monotonic() >= deadline:
                # Hand the rest back so the runner can checkpoint and
                # downstream stages see this bundle's output.
                self._maybe_commit(reader, next_offset, force=True)
                tracker.defer_remainder(Duration.of(0))
                return

    def _retry_later(self, plan, tracker, backoff, error):
        delay = backoff.next()
        self.retries.inc()
        _LOG.warning("kafka %s/%d: %r; retrying in %.1fs", plan.topic,
                     plan.partition, error, delay)
        tracker.defer_remainder(Duration.of(delay))
        return iter(())

    def _advance_idle(self, reader, watermark, next_offset) -> None:
        if self._idle_ms is None:
            return
        now = int(time.time() * 1000)
        if now - reader.last_data_ms < self._idle_ms:
            return
        try:
            end = reader.end_offset(timeout_ms=2_000)
            caught_up = next_offset >= end
            _KNOWN_ENDS[(reader.topic, reader.partition)] = end
        except (ko.KafkaError, OSError):
            caught_up = False  # a broker we cannot reach is not idleness
        wm = ko.idle_watermark(_ms(watermark.current_watermark()), now,
                               reader.last_data_ms, self._idle_ms,
                               self._skew_ms, caught_up)
        _set_watermark(watermark, wm)

    def _note_end(self, reader) -> None:
        end = reader.consumer.highwater(reader.tp)
        if end is not None:
            _KNOWN_ENDS[(reader.topic, reader.partition)] = end

    def _maybe_commit(self, reader, next_offset, force=False) -> None:
        if not self._commit:
            return
        key = (reader.topic, reader.partition)
        last_offset, last_time = self._committed_at.get(key, (None, 0.0))
        now = time.monotonic()
        if next_offset == last_offset or (
                not force and now - last_time < self._commit_interval_s):
            return
        try:
            reader.commit(next_offset)
            self._committed_at[key] = (next_offset, now)
        except (ko.KafkaError, OSError) as e:
            # Monitoring only: the runner's restriction is the truth.
            _LOG.warning("kafka %s: commit of %d failed: %r", reader.tp,
                         next_offset, e)


class _ReadUnboundedPartitionFn(_ReadPartitionFn):
    """The same reader, marked as doing unbounded work per element, which
    makes its output an unbounded PCollection (streaming). The bounded mode
    must not carry the mark: Beam would then refuse a global-window
    GroupByKey downstream, and batch runners would not run it."""

    @beam.DoFn.unbounded_per_element()
    def process(
            self, plan,
            tracker=beam.DoFn.RestrictionParam(),
            watermark=beam.DoFn.WatermarkEstimatorParam(
                ManualWatermarkEstimator.default_provider())):
        return self._read(plan, tracker, watermark)


def _ms(ts) -> int | None:
    if ts is None:
        return None
    return ts.micros // 1000


def _set_watermark(estimator, wm_ms) -> None:
    if wm_ms is None:
        return
    new = Timestamp(micros=wm_ms * 1000)
    current = estimator.current_watermark()
    if current is None or new > current:
        estimator.set_watermark(new)


class ReadFromKafkaBatches(beam.PTransform):
    """Read a Kafka topic as batches of newline-delimited messages.

    Yields ``(source, payload)`` tuples, one per poll batch (up to
    ``max_batch_records`` messages or ``max_batch_bytes`` of values):
    ``source = "topic/partition@first-last"``, ``payload`` = the message
    values joined by newlines (bytes), timestamped with the batch's largest
    Kafka record timestamp. Feed it to ``ParseEvents``.

    Args:
      bootstrap_servers: ``"host:port[,host:port]"`` or a list.
      topic: the topic; all its partitions present at start are read.
      start: ``"earliest"``, ``"latest"``, ``"committed"`` (the group's
        committed offsets; partitions without one start at the earliest), or
        a time: epoch ms or RFC 3339 (the first message at or after it).
      bounded: stop at the end offsets present at start (backfills, tests);
        otherwise read forever.
      group_id: consumer group for ``start="committed"`` and commits; the
        source never joins the group (no rebalancing: the runner assigns).
      commit_offsets: commit the offsets of emitted batches to ``group_id``
        (at most every ``commit_interval_s``, and when a read pauses or
        ends), for monitoring and for a later job's ``start="committed"``.
      max_batch_records, max_batch_bytes, poll_timeout_ms: batch limits and
        how long one poll waits for the first message.
      consumer_config: extra kafka-python ``KafkaConsumer`` settings
        (security, fetch sizes, ...). ``enable_auto_commit`` stays off.
      allowed_skew_ms: how far behind the newest record timestamp a message
        may arrive and still be on time: the watermark lags that much.
      idle_timeout_ms: after this long without new messages at its end, a
        partition's watermark moves to now - skew (``None``: never).
      split_size: bounded mode only: split each partition's range into
        pieces of this many offsets read in parallel (0: one per partition).
      max_read_s: how long one ``process`` call reads before it hands the
        rest of its range back for a checkpoint.
      resume_delay_s: how long an empty partition waits before polling again.
    """

    def __init__(self, bootstrap_servers, topic: str, start="earliest",
                 bounded: bool = False, group_id: str | None = None,
                 commit_offsets: bool = False,
                 max_batch_records: int = ko.MAX_BATCH_RECORDS,
                 max_batch_bytes: int = ko.MAX_BATCH_BYTES,
                 poll_timeout_ms: int = ko.POLL_TIMEOUT_MS,
                 consumer_config: dict | None = None,
                 allowed_skew_ms: int = ko.ALLOWED_SKEW_MS,
                 idle_timeout_ms: int | None = ko.IDLE_TIMEOUT_MS,
                 split_size: int = 0, max_read_s: float = 5.0,
                 resume_delay_s: float = 0.5,
                 commit_interval_s: float = 1.0,
                 plan_timeout_s: float = 60.0):
        super().__init__()
        kind, _ = ko.parse_start(start)  # fail at construction, not at run
        if kind == "committed" and not group_id:
            raise ValueError("start='committed' needs a group_id")
        if commit_offsets and not group_id:
            raise ValueError("commit_offsets=True needs a group_id")
        if max_batch_records < 1 or max_batch_bytes < 1:
            raise ValueError("batch limits must be positive")
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._start = start
        self._bounded = bounded
        self._group_id = group_id
        self._consumer_config = dict(consumer_config or {})
        self._plan_timeout_s = plan_timeout_s
        fn_class = _ReadPartitionFn if bounded else _ReadUnboundedPartitionFn
        self._fn = fn_class(
            bootstrap_servers, group_id, commit_offsets, max_batch_records,
            max_batch_bytes, poll_timeout_ms, self._consumer_config,
            allowed_skew_ms, idle_timeout_ms, max_read_s, resume_delay_s,
            commit_interval_s, split_size)

    def expand(self, pbegin):
        bootstrap, topic, start = self._bootstrap, self._topic, self._start
        bounded, group_id = self._bounded, self._group_id
        config, timeout = self._consumer_config, self._plan_timeout_s
        return (
            pbegin
            | "Impulse" >> beam.Impulse()
            | "PlanPartitions" >> beam.FlatMap(
                lambda _: ko.plan_topic(bootstrap, topic, start, bounded,
                                        group_id, config, timeout))
            | "Spread" >> beam.Reshuffle()
            | "ReadPartitions" >> beam.ParDo(self._fn).with_output_types(
                typing.Tuple[str, bytes]))
