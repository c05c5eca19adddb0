"""``ReadFromKafkaBatches``: a pure-Python Kafka source (kafka-python), Beam.

Beam's own ``ReadFromKafka`` is a cross-language transform that needs a Java
expansion service; this one is a Python splittable DoFn, so it runs wherever
Python Beam runs: Prism (the local streaming runner, deploy/prism/), the
FnApiRunner (bounded reads only), Flink, Dataflow.

Shape::

    Impulse -> PlanPartitions: one PartitionPlan per partition (start offsets
               and, when bounded, end offsets resolved once, at run time)
            -> Reshuffle (spreads the partitions over workers)
            -> ReadPartitions: splittable DoFn; restriction = OffsetRange
               of the partition's offsets

Output: **one element per poll batch**, never per message:
``(source, payload)``, ``source = "topic/partition@first-last"`` and
``payload`` the batch's message values as newline-delimited bytes (a message
may itself carry many events), ready for ``ParseEvents``. Empty messages stay
empty records, so the parser dead-letters them.

Timestamps and watermarks:

- An element's timestamp is the partition's own watermark before the
  batch (at or ahead of anything any partition reported: a runner drops
  elements behind the watermark), or the batch's smallest Kafka record
  timestamp before the partition has one. That is at or before every
  record of the batch that is not already behind the watermark. The
  timestamp holds the stages downstream, so no window the batch's events
  belong to closes before they are counted, however much event time one
  batch spans: a catch-up reads batches of up to ``max_batch_records``
  whatever their span, and its watermark moves by that much at once. Not
  the batch's oldest record time: a stateful stage's event-time timer
  blocks the key's elements stamped after it until the watermark reaches
  it (Prism 2.77 orders a key's elements and timers by timestamp), so a
  live batch stamped with its records' time (``allowed_skew_ms`` ahead of
  the watermark) waited that long at every window end. Records without
  timestamps get the wall clock.
- A partition's watermark is the largest record timestamp read from it so
  far minus ``allowed_skew_ms`` (messages may arrive up to that much out of
  order).
- A partition with no new message for ``idle_timeout_ms`` whose reader is at
  its end (asked of the broker, so an outage is not taken for idleness)
  moves its watermark to ``now - allowed_skew_ms``: one quiet partition does
  not stall every window.
- ``align_watermarks`` (default: on for Prism and the DirectRunner): every
  partition reports the minimum watermark over all partitions of the read,
  kept per process. Prism 2.77 takes an SDF stage's watermark from the last
  bundle's restrictions only; without alignment a partition that ran ahead
  makes the others' batches late and Prism drops them (see
  ``topk.connectors.kafka.watermarks.AlignedWatermarks``). Flink and
  Dataflow combine the restrictions' watermarks themselves and get
  per-partition ones.

Checkpoints: the offsets are the restriction, i.e. the runner's state. The
DoFn claims each batch's last offset (``BatchOffsetTracker``), emits it, and
after ``max_read_s`` or an empty poll hands the rest back with
``defer_remainder``, so the runner checkpoints and resumes it later (and
downstream stages see the output of the bundle: Prism passes a bundle's
output on when the bundle ends). A live partition (its newest record
within ``topk.core.schema.LIVE_LAG_MS`` of the clock) hands back after
``live_read_s`` instead (``topk.connectors.kafka.read_deadline``). A
catch-up that reaches the partition's end finds its poll empty at once
instead of after the poll's timeout (``CarryingReader.at_historic_end``):
Prism runs a bundle's partitions one after another, so each such wait
held back every partition and the watermark.

Nothing is auto-committed; ``commit_offsets=True`` commits offsets to
``group_id`` for monitoring (consumer lag) and as the starting point of a
*new* job (``start="committed"``): a partition's offset is committed when
its next ``process`` call starts, i.e. once the runner has taken the output
of the batches before it (a bounded read commits its end when done). That is output
handed to the runner, not yet written by the sinks: a job restarted from
committed offsets after a crash needs idempotent sinks and may have to start
a little earlier.

Broker outages: both clients reconnect by themselves; a poll that fails or
finds nothing is retried after a delay (exponential backoff for errors),
so the pipeline neither crashes nor skips or repeats an offset. Consumers
are cached per partition in the DoFn instance (creating one is slow). A
consumer that returns nothing for ``STALL_TIMEOUT_MS`` while the broker
reports messages past its position is closed and opened anew: librdkafka's
assigned consumers sometimes never fetch again after a broker restart.
"""
import logging
import time
import typing
import uuid

import apache_beam as beam
from apache_beam.io.iobase import RestrictionProgress
from apache_beam.io.restriction_trackers import (OffsetRange,
                                                 OffsetRestrictionTracker)
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp
from kafka.errors import KafkaError

from topk.connectors import kafka as ko
from topk.connectors.kafka.call_watch import CallWatch
from topk.core.windows import now_ms
from topk.transforms.beam_time import beam_timestamp, epoch_ms

_LOG = logging.getLogger(__name__)

#: Known end offsets per (topic, partition), for backlog estimates of
#: unbounded restrictions (restriction_size must not call the broker).
_KNOWN_ENDS: dict = {}

#: Process-wide partition watermarks of aligned reads.
_ALIGNED = ko.AlignedWatermarks()

#: Read calls in progress in this process: one stuck far past its deadline
#: is logged with its stack (``call_watch``).
_CALLS = CallWatch()

#: Runners that get aligned watermarks by default (single process, and
#: Prism's SDF watermark is the last bundle's, see the module docstring).
ALIGNING_RUNNERS = ("PrismRunner", "DirectRunner", "SwitchingDirectRunner")


class BatchOffsetTracker(OffsetRestrictionTracker):
    """An ``OffsetRestrictionTracker`` whose claims cover whole batches.

    ``try_claim(last)`` claims every offset after the previous claim up to
    ``last``, or up to the restriction's end if that comes first: it
    succeeds when at least one offset of the batch is still in the range.
    The caller then emits the batch's messages below
    ``current_restriction().stop``. A split can only cut above the last
    claimed offset, so what was claimed stays claimed even if the runner
    splits right after the claim. (With the plain tracker a batch that a
    concurrent split made straddle the end would be refused, and its
    messages before the end lost.)

    Unbounded restrictions (stop = ``UNBOUNDED_STOP``) and trackers built
    with ``fractional_splits=False`` accept only checkpoints
    (``try_split(0)``): a fractional split of an open-ended range would cut
    at an offset that will not exist for ages, and aligned watermarks assume
    one restriction per partition.
    """

    def __init__(self, offset_range: OffsetRange,
                 fractional_splits: bool = True):
        super().__init__(offset_range)
        self._fractional_splits = fractional_splits

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
        if fraction_of_remainder > 0 and (
                not self.is_bounded() or not self._fractional_splits):
            return None
        return super().try_split(fraction_of_remainder)

    def current_progress(self) -> RestrictionProgress:
        if self.is_bounded():
            return super().current_progress()
        # Open-ended: report offsets done; what is left is unknown here.
        done = 0 if self._current_position is None else (
            self._current_position + 1 - self._range.start)
        return RestrictionProgress(completed=float(done), remaining=0.0)

    def is_bounded(self):
        return self._range.stop != ko.UNBOUNDED_STOP


class _OffsetRangeProvider(RestrictionProvider):
    """Restrictions over one partition's offsets (element: ``PartitionPlan``).

    ``split_size`` > 0 splits a bounded range into pieces of that many
    offsets up front, so a backfill of one big partition spreads over
    workers; each piece seeks on its own.
    """

    def __init__(self, split_size: int = 0, fractional_splits: bool = True):
        self._split_size = split_size
        self._fractional_splits = fractional_splits

    def initial_restriction(self, plan):
        return OffsetRange(plan.start, plan.restriction_stop)

    def create_tracker(self, restriction):
        return BatchOffsetTracker(restriction, self._fractional_splits)

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
    timestamped with the partition's watermark before the batch (see the
    module docstring).

    It is its own restriction provider (delegating to
    ``_OffsetRangeProvider``), because ``RestrictionParam`` takes a provider
    fixed at class definition and the split settings are per instance.
    """

    def __init__(self, settings: dict):
        self._s = dict(settings)
        self._read_id = self._s["read_id"]
        self._align = self._s["align_watermarks"]
        split_size = 0 if self._align else self._s["split_size"]
        self._provider = _OffsetRangeProvider(
            split_size, fractional_splits=not self._align)
        self._readers = {}
        self._backoff = {}
        self._committed_at = {}
        self._behind = {}  # key -> when the reader was first seen stuck
        self.messages = Metrics.counter("topk", "kafka_messages")
        self.batches = Metrics.counter("topk", "kafka_batches")
        self.value_bytes = Metrics.counter("topk", "kafka_bytes")
        self.retries = Metrics.counter("topk", "kafka_retries")
        self.lost = Metrics.counter("topk", "kafka_offsets_lost_to_retention")
        self.reopened = Metrics.counter("topk", "kafka_readers_reopened")
        self.batch_sizes = Metrics.distribution("topk", "kafka_batch_messages")
        self._lag_gauges = {}

    # -- RestrictionProvider, delegated ------------------------------------

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

    # -- lifecycle -----------------------------------------------------------

    def setup(self):
        self._readers = {}
        self._backoff = {}
        self._committed_at = {}
        self._behind = {}

    def teardown(self):
        for reader in self._readers.values():
            reader.close()
        self._readers = {}

    def _reader(self, plan) -> ko.CarryingReader:
        key = (plan.topic, plan.partition)
        reader = self._readers.get(key)
        if reader is None:
            reader = ko.open_reader(
                self._s["kafka_client"], self._s["bootstrap_servers"],
                plan.topic, plan.partition, self._s["group_id"],
                self._s["consumer_config"])
            self._readers[key] = reader
        return reader

    def _drop_reader(self, plan) -> None:
        reader = self._readers.pop((plan.topic, plan.partition), None)
        if reader is not None:
            reader.close()

    # -- reading -------------------------------------------------------------

    def process(
            self, plan,
            tracker=beam.DoFn.RestrictionParam(),
            watermark=beam.DoFn.WatermarkEstimatorParam(
                ManualWatermarkEstimator.default_provider())):
        return self._read(plan, tracker, watermark)

    def _read(self, plan, tracker, watermark):
        """Read batches of ``plan`` 's partition within the restriction
        (``_read_batches``), watched by ``_CALLS``."""
        _CALLS.begin(f"kafka {plan.topic}/{plan.partition}")
        try:
            yield from self._read_batches(plan, tracker, watermark)
        finally:
            _CALLS.end()

    def _read_batches(self, plan, tracker, watermark):
        """Every exit goes through ``_end_call``, which reports the
        watermark."""
        s = self._s
        restriction = tracker.current_restriction()
        own_wm = self._begin_call(plan, watermark, restriction)
        if restriction.start >= restriction.stop:
            self._end_call(plan, watermark, own_wm, done=plan.bounded)
            return
        key = (plan.topic, plan.partition)
        backoff = self._backoff.setdefault(key, ko.Backoff())
        began = time.monotonic()
        deadline = began + s["max_read_s"]  # until a batch shows it live
        try:
            reader = self._reader(plan)
            reader.seek(restriction.start)
        except (KafkaError, OSError) as e:
            self._retry_later(plan, tracker, watermark, own_wm, backoff, e)
            return
        next_offset = restriction.start
        while True:
            try:
                batch = reader.read_batch(s["max_batch_records"],
                                          s["max_batch_bytes"],
                                          s["poll_timeout_ms"])
            except (KafkaError, OSError) as e:
                # kafka-python reconnects by itself: keep the consumer for
                # transient errors, replace it when they persist.
                if backoff.failures >= 3:
                    self._drop_reader(plan)
                else:
                    reader.forget_position()
                self._retry_later(plan, tracker, watermark, own_wm, backoff,
                                  e)
                return
            if reader.skipped:
                self.lost.inc(reader.skipped)
                reader.skipped = 0
            if batch is None:
                stop = tracker.current_restriction().stop
                if plan.bounded and reader.position() >= stop:
                    # Nothing left but offsets no consumer ever sees
                    # (transaction markers): the range is done.
                    if tracker.try_claim(stop - 1):
                        self._end_call(plan, watermark, own_wm, done=True)
                        self._maybe_commit(reader, stop, force=True)
                        return
                self._note_end(reader, next_offset)
                end = self._probe_end(reader, next_offset)
                own_wm = self._idle_watermark(reader, own_wm, end,
                                              next_offset)
                if self._stalled(plan, reader, end, next_offset):
                    self._drop_reader(plan)  # the next call opens anew
                self._end_call(plan, watermark, own_wm)
                tracker.defer_remainder(Duration.of(s["resume_delay_s"]))
                return
            backoff.reset()
            self._behind.pop(key, None)
            if not tracker.try_claim(batch.last_offset):
                # The runner split our range below this batch: the rest is
                # the residual's.
                reader.forget_position()
                self._end_call(plan, watermark, own_wm)
                return
            stop = tracker.current_restriction().stop
            mine = batch.before(stop)
            if len(mine) < len(batch):
                reader.forget_position()  # the tail is someone else's
            if len(mine):
                max_ts = mine.max_timestamp()
                first_ts = mine.min_timestamp()
                # The partition's watermark before this batch (see the
                # module docstring), its oldest event's time before the
                # first watermark.
                ts = (beam_timestamp(own_wm) if own_wm is not None
                      else beam_timestamp(first_ts) if first_ts is not None
                      else Timestamp.now())
                self.messages.inc(len(mine))
                self.batches.inc()
                self.value_bytes.inc(mine.nbytes)
                self.batch_sizes.update(len(mine))
                yield TimestampedValue((mine.source(), mine.payload()), ts)
                next_offset = mine.last_offset + 1
                own_wm = ko.data_watermark(own_wm, max_ts,
                                           s["allowed_skew_ms"])
                self._note_end(reader, next_offset)
                deadline = ko.read_deadline(began, max_ts, now_ms(),
                                            s["max_read_s"],
                                            s["live_read_s"])
            if batch.last_offset >= stop - 1:
                # The range is done: the last claim reached its end.
                self._end_call(plan, watermark, own_wm, done=plan.bounded)
                if plan.bounded:
                    # No later call will confirm it: commit the end now.
                    self._maybe_commit(reader, stop, force=True)
                return
            if time.monotonic() >= deadline:
                # Hand the rest back so the runner can checkpoint and
                # downstream stages see this bundle's output.
                self._end_call(plan, watermark, own_wm)
                tracker.defer_remainder(Duration.of(0))
                return

    def _retry_later(self, plan, tracker, watermark, own_wm, backoff,
                     error):
        delay = backoff.next()
        self.retries.inc()
        _LOG.warning("kafka %s/%d: %r; retrying in %.1fs", plan.topic,
                     plan.partition, error, delay)
        self._end_call(plan, watermark, own_wm)
        tracker.defer_remainder(Duration.of(delay))

    def _begin_call(self, plan, watermark, restriction) -> int | None:
        """Start of a ``process`` call: everything before
        ``restriction.start`` was emitted by earlier calls whose output the
        runner has taken (it only schedules a residual after that). So this
        is where an aligned partition's last watermark becomes confirmed and
        where offsets are committed to the group. Returns the partition's
        own watermark so far (ms)."""
        current = epoch_ms(watermark.current_watermark())
        if self._s["commit_offsets"] and restriction.start > plan.start:
            reader = self._readers.get((plan.topic, plan.partition))
            if reader is not None:
                self._maybe_commit(reader, restriction.start)
        if not self._align:
            return current
        own = _ALIGNED.begin(self._read_id, plan.all_partitions,
                             plan.partition)
        return ko.later(own, current)

    def _end_call(self, plan, watermark, own_wm, done=False) -> None:
        """Report the watermark at the end of a ``process`` call.

        Per-partition mode: the restriction's estimator gets the partition's
        own watermark; the runner commits it with the bundle's output.
        Aligned mode: the estimator gets the minimum confirmed watermark
        over all partitions, and this partition's new one waits for its
        next call (see ``topk.connectors.kafka.watermarks
        .AlignedWatermarks``).
        """
        final = ko.DONE if done else own_wm
        if self._align:
            wm = _ALIGNED.end(self._read_id, plan.all_partitions,
                              plan.partition, final)
        else:
            wm = own_wm
        if wm is not None and wm < ko.DONE:
            _set_watermark(watermark, wm)

    # -- watermarks ----------------------------------------------------------

    def _probe_end(self, reader, next_offset) -> int | None:
        """The partition's end offset, asked of the broker once the reader
        has returned nothing for ``idle_timeout_ms`` (at most
        ``IDLE_TIMEOUT_MS``); ``None`` before that, or when the broker does
        not answer (an outage, a consumer closed at shutdown)."""
        quiet_ms = min(self._s["idle_timeout_ms"] or ko.IDLE_TIMEOUT_MS,
                       ko.IDLE_TIMEOUT_MS)
        if now_ms() - reader.last_data_ms < quiet_ms:
            return None
        try:
            end = reader.end_offset(timeout_ms=2_000)
        except Exception:  # noqa: BLE001 (see the docstring)
            return None
        _KNOWN_ENDS[(reader.topic, reader.partition)] = end
        self._note_lag(reader.partition, end, next_offset)
        return end

    def _idle_watermark(self, reader, own_wm, end, next_offset
                        ) -> int | None:
        idle_ms = self._s["idle_timeout_ms"]
        if idle_ms is None:
            return own_wm
        # Only a reader at the end the broker reports is idle: one cut
        # off from a broker that is down is not.
        caught_up = end is not None and next_offset >= end
        return ko.idle_watermark(own_wm, now_ms(), reader.last_data_ms,
                                 idle_ms, self._s["allowed_skew_ms"],
                                 caught_up)

    def _stalled(self, plan, reader, end, next_offset) -> bool:
        """Whether the partition's reader has delivered nothing for
        ``STALL_TIMEOUT_MS`` while the broker held messages past its
        position (``ko.behind_since``): then it is to be reopened."""
        if end is None:
            self._behind.pop((plan.topic, plan.partition), None)
            return False
        key, now = (plan.topic, plan.partition), now_ms()
        # The consumer's position passes offsets it never returns
        # (transaction markers): a log ending in them is not a stall.
        position = max(next_offset, reader.position())
        since = ko.behind_since(self._behind.get(key), now, end, position)
        if since is None or now - since < ko.STALL_TIMEOUT_MS:
            self._behind[key] = since
            return False
        self._behind.pop(key, None)
        self.reopened.inc()
        _LOG.warning(
            "kafka %s/%d: no message for %.0f s though the broker holds "
            "offsets up to %d (reading from %d): reopening the consumer",
            plan.topic, plan.partition, (now - since) / 1000, end,
            position)
        return True

    def _note_end(self, reader, next_offset: int) -> None:
        end = reader.highwater()
        if end is not None:
            _KNOWN_ENDS[(reader.topic, reader.partition)] = end
            self._note_lag(reader.partition, end, next_offset)

    def _note_lag(self, partition: int, end: int, next_offset: int) -> None:
        """The partition's lag (messages not read yet) as a gauge of its
        own, ``kafka_lag_messages_p<N>``: a runner keeps a gauge's latest
        value per name, so one gauge for every partition would only show
        the partition read last (``topk.pipelines.metrics_export`` labels
        them by partition)."""
        gauge = self._lag_gauges.get(partition)
        if gauge is None:
            gauge = self._lag_gauges[partition] = Metrics.gauge(
                "topk", f"kafka_lag_messages_p{partition}")
        gauge.set(max(0, end - next_offset))

    # -- commits -------------------------------------------------------------

    def _maybe_commit(self, reader, next_offset, force=False) -> None:
        if not self._s["commit_offsets"]:
            return
        key = (reader.topic, reader.partition)
        last_offset, last_time = self._committed_at.get(key, (None, 0.0))
        now = time.monotonic()
        if next_offset == last_offset or (
                not force and now - last_time < self._s["commit_interval_s"]):
            return
        try:
            reader.commit(next_offset)
            self._committed_at[key] = (next_offset, now)
        except (KafkaError, OSError) as e:
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


def _set_watermark(estimator, wm_ms: int) -> None:
    new = beam_timestamp(wm_ms)
    current = estimator.current_watermark()
    if current is None or new > current:
        estimator.set_watermark(new)


def runner_aligns(options) -> bool:
    """Whether pipelines with these options run where aligned watermarks
    are needed (Prism, and the DirectRunner, which hands streaming work to
    Prism or to the FnApiRunner; both single-process)."""
    runner = options.view_as(StandardOptions).runner if options else None
    if runner is None:
        return True  # Beam's default, the DirectRunner
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name.rsplit(".", 1)[-1] in ALIGNING_RUNNERS


class ReadFromKafkaBatches(beam.PTransform):
    """Read a Kafka topic as batches of newline-delimited messages.

    Yields ``(source, payload)`` tuples, one per poll batch (up to about
    ``max_batch_records`` messages or ``max_batch_bytes`` of values):
    ``source = "topic/partition@first-last"``, ``payload`` = the message
    values joined by newlines (bytes), timestamped with the batch's smallest
    Kafka record timestamp (see the module docstring). Feed it to
    ``ParseEvents``.

    Args:
      bootstrap_servers: ``"host:port[,host:port]"`` or a list.
      topic: the topic; all its partitions present at start are read.
      start: ``"earliest"``, ``"latest"``, ``"committed"`` (the group's
        committed offsets; partitions without one start at the earliest), or
        a time: epoch ms or RFC 3339 (the first message whose Kafka
        timestamp is at or after it).
      bounded: stop at the end offsets present at start (backfills, tests);
        otherwise read forever.
      group_id: consumer group for ``start="committed"`` and commits; the
        source never joins the group (no rebalancing: the runner assigns).
      commit_offsets: commit the offsets whose batches the runner has taken
        to ``group_id`` (at most every ``commit_interval_s``; a bounded read
        commits its end when done), for monitoring and for a later job's
        ``start="committed"``.
      max_batch_records, max_batch_bytes, poll_timeout_ms: batch limits and
        how long one poll waits for the first message.
      consumer_config: extra kafka-python ``KafkaConsumer`` settings
        (security, fetch sizes, ...; the confluent client translates them,
        or takes librdkafka's dotted properties). ``enable_auto_commit``
        stays off.
      kafka_client: the client that reads the partitions:
        ``"confluent"`` (confluent-kafka, librdkafka; the default, 3-4x
        faster) or ``"kafka-python"`` (``None``: the default;
        ``topk.connectors.kafka.open_reader``). Planning and the broker
        checks use kafka-python either way.
      allowed_skew_ms: how far behind the newest record timestamp a message
        may arrive and still be on time: the watermark lags that much.
      idle_timeout_ms: after this long without new messages at its end, a
        partition's watermark moves to now - skew (``None``: never; use it
        for replays of old data that must not be closed by the wall clock).
      align_watermarks: report the minimum watermark over all partitions
        from every partition (``None``: yes on Prism/DirectRunner, no on
        other runners). See the module docstring.
      split_size: bounded, non-aligned reads only: split each partition's
        range into pieces of this many offsets read in parallel (0: one
        restriction per partition).
      max_read_s: how long one ``process`` call reads before it hands the
        rest of its range back for a checkpoint. Output and watermark reach
        the runner when the call ends, so this adds to latency (see
        deploy/prism/README.md).
      live_read_s: the same for a live partition (see the module
        docstring).
      resume_delay_s: how long a partition with nothing new waits before
        polling again.
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
                 align_watermarks: bool | None = None,
                 split_size: int = 0, max_read_s: float = 1.0,
                 live_read_s: float = ko.LIVE_READ_S,
                 resume_delay_s: float = 0.5,
                 commit_interval_s: float = 1.0,
                 plan_timeout_s: float = 60.0,
                 kafka_client: str | None = None):
        super().__init__()
        kind, _ = ko.parse_start(start)  # fail at construction, not at run
        if kind == "committed" and not group_id:
            raise ValueError("start='committed' needs a group_id")
        if commit_offsets and not group_id:
            raise ValueError("commit_offsets=True needs a group_id")
        if max_batch_records < 1 or max_batch_bytes < 1:
            raise ValueError("batch limits must be positive")
        if not (max_read_s > 0 and live_read_s > 0):
            raise ValueError("max_read_s and live_read_s must be positive")
        if kafka_client is not None and kafka_client not in ko.KAFKA_CLIENTS:
            raise ValueError(f"unknown Kafka client {kafka_client!r}: use "
                             f"one of {', '.join(ko.KAFKA_CLIENTS)}")
        self._topic = topic
        self._start = start
        self._bounded = bounded
        self._plan_timeout_s = plan_timeout_s
        self._align = align_watermarks
        self._settings = dict(
            bootstrap_servers=bootstrap_servers, group_id=group_id,
            commit_offsets=commit_offsets,
            max_batch_records=max_batch_records,
            max_batch_bytes=max_batch_bytes, poll_timeout_ms=poll_timeout_ms,
            consumer_config=dict(consumer_config or {}),
            allowed_skew_ms=allowed_skew_ms, idle_timeout_ms=idle_timeout_ms,
            split_size=split_size, max_read_s=max_read_s,
            live_read_s=live_read_s,
            resume_delay_s=resume_delay_s,
            commit_interval_s=commit_interval_s, kafka_client=kafka_client,
            # One id per read: aligned watermarks of two reads of the same
            # topic in one process must not mix.
            read_id=uuid.uuid4().hex)

    def expand(self, pbegin):
        settings = dict(self._settings)
        align = self._align
        if align is None:
            align = runner_aligns(pbegin.pipeline.options)
        settings["align_watermarks"] = align
        fn_class = (_ReadPartitionFn if self._bounded
                    else _ReadUnboundedPartitionFn)
        bootstrap, topic, start = (settings["bootstrap_servers"],
                                   self._topic, self._start)
        bounded, group_id = self._bounded, settings["group_id"]
        config, timeout = settings["consumer_config"], self._plan_timeout_s
        return (
            pbegin
            | "Impulse" >> beam.Impulse()
            | "PlanPartitions" >> beam.FlatMap(
                lambda _: ko.plan_topic(bootstrap, topic, start, bounded,
                                        group_id, config, timeout))
            | "Spread" >> beam.Reshuffle()
            | "ReadPartitions" >> beam.ParDo(fn_class(settings))
            .with_output_types(typing.Tuple[str, bytes]))
