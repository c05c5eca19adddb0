"""Unbounded top-K with early, on-time and late panes: Beam state and timers.

Three keyed stateful stages in the global window, each a thin wrapper of the
Beam-free logic (``topk.streaming.dedup``, ``topk.streaming.panes``):

    event tables
      | KeyByEventId    hash(event_id) -> dedup shard
      | Dedup           seen ids per minute, until the watermark passes the
      |                 minute + allowed lateness; older events -> late
      | KeyByItem       de-duplicated minute partials, hash(item_id) -> shard
      | ShardPanes      exact 1m/1h/1d counts of the open windows; early panes
      |                 on a processing-time timer, on-time panes on an
      |                 event-time timer at each window end, late panes
      | KeyBySpec       each shard's top-K of the windows that fired, and
      |                 the watermark it closed through
      | MergePanes      per window spec: the shards' latest candidates ->
                        exact merged panes (one on-time pane per window,
                        once every shard closed through its end)

Stages learn the watermark from their event-time timers (a Python DoFn
cannot read it): the watermark a stage acts on is the timestamp of its last
event-time firing, never later than the true one, so an on-time event is
never classified late. During a catch-up they fire coarsely, up to an hour
of event time per firing (``topk.streaming.panes``, "Catch-up").

State is Beam state (bags of Arrow tables appended per element; counts as
a log of the partials each firing absorbed, compacted every 64 firings), so
a runner with checkpoints (Flink, Dataflow) restores it after a failure.
Prism keeps state in its process only; after a restart the stream rebuilds
it by re-reading the topic from ``--start`` (panes are accumulating and
readers take the latest, so a replay never double counts).
"""
import time
import typing
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (BagStateSpec,
                                              ReadModifyWriteStateSpec,
                                              TimerSpec, on_timer)
from apache_beam.utils.timestamp import Duration, Timestamp

from topk.connectors.kafka.watermarks import ALLOWED_SKEW_MS
from topk.core import counting, ranking, schema
from topk.core.windows import WindowSpec, floor_to, now_ms
# The outputs are named after the tables they are written to.
from topk.storage.layout import (LATE_COUNTS, LATE_EVENTS, RANKED_WINDOWS,
                                 SLICES)
from topk.streaming import dedup as stream_dedup
from topk.streaming import panes as stream_panes
from topk.transforms import coders
from topk.transforms.beam_time import beam_timestamp, epoch_ms
from topk.transforms.exact import ShardTable, key_by_shard
from topk.transforms.state_cache import StateCache

#: (spec key, (shard, firing's emitted_at, pane timing, candidates,
#: totals, the shard's report: the watermarks it closed from and through,
#: or NO_WATERMARK twice)) between the stages.
ShardPane = typing.Tuple[str, typing.Tuple[int, int, str, pa.Table,
                                           pa.Table, int, int]]


def _armed(timers) -> dict:
    return timers.read() or {"early": False, "close": None,
                             "watermark": stream_dedup.NO_WATERMARK,
                             "seen": stream_dedup.NO_WATERMARK}


#: Candidates and totals of a shard pane that only reports a watermark.
_NO_PANES = (ranking.CANDIDATES_SCHEMA.empty_table(),
             ranking.TOTALS_SCHEMA.empty_table())


#: The report of a shard pane without one.
_NO_REPORT = (stream_dedup.NO_WATERMARK, stream_dedup.NO_WATERMARK)


class _DedupFn(beam.DoFn):
    """(dedup shard, events) -> (item shard, fresh minute partials); late
    events to the ``late_events`` output."""

    SEEN = BagStateSpec("seen", coders.ArrowTableCoder())
    WATERMARK = ReadModifyWriteStateSpec("watermark", PickleCoder())
    TICK = TimerSpec("tick", TimeDomain.WATERMARK)

    def __init__(self, item_shards: int, allowed_lateness_ms: int,
                 skew_ms: int):
        self._item_shards = item_shards
        self._lateness = allowed_lateness_ms
        self._skew = skew_ms
        self._unique = Metrics.counter("topk", "events_unique")
        self._late = Metrics.counter("topk", "events_late")
        # shard -> (state generation, SeenIds): rebuilding the sorted id
        # arrays from the bag on every element would cost O(state) each
        # time. The generation (in state, a new random token on every
        # change) tells whether anything else changed the shard since.
        self._cache = StateCache()

    def setup(self):
        self._cache.setup()

    def teardown(self):
        self._cache.teardown()

    def _ids(self, shard, generation, seen) -> stream_dedup.SeenIds:
        cached = self._cache.get(shard, generation)
        if cached is not None:
            return cached
        return stream_dedup.SeenIds(list(seen.read()))

    def process(self, element, timestamp=beam.DoFn.TimestampParam,
                seen=beam.DoFn.StateParam(SEEN),
                watermark=beam.DoFn.StateParam(WATERMARK),
                tick=beam.DoFn.TimerParam(TICK)):
        shard, events = element
        known = watermark.read()
        if known is None:
            # First element: tick from the start of its minute on.
            known = {"ms": stream_dedup.NO_WATERMARK, "armed": False,
                     "generation": None}
        known["seen"] = stream_panes.newest_seen(
            known.get("seen", stream_dedup.NO_WATERMARK),
            events["ts"].to_numpy(), now_ms())
        if not known["armed"]:
            # (Or the first since the shard went idle: from the next
            # minute after the watermark it knows.)
            start = (known["ms"] + schema.MINUTE_MS
                     if known["ms"] > stream_dedup.NO_WATERMARK
                     else floor_to(epoch_ms(timestamp), schema.MINUTE_MS))
            tick.set(beam_timestamp(start))
            known["armed"] = True
        ids = self._ids(shard, known["generation"], seen)
        fresh, late, chunk = ids.admit(events, stream_dedup.late_horizon(
            stream_dedup.reading_watermark(known["ms"], epoch_ms(timestamp)),
            self._lateness))
        if chunk.num_rows:
            seen.add(chunk)
            known["generation"] = uuid.uuid4().hex
            known["bag_rows"] = known.get("bag_rows", 0) + chunk.num_rows
        self._cache.put(shard, known["generation"], ids)
        watermark.write(known)
        if late.num_rows:
            self._late.inc(late.num_rows)
            yield beam.pvalue.TaggedOutput(LATE_EVENTS, late)
        if fresh.num_rows:
            self._unique.inc(fresh.num_rows)
            partials = counting.count_slices(fresh)
            minutes = np.unique(partials["slice_start"].to_numpy())
            parts = dict(key_by_shard(partials, "item_id",
                                      self._item_shards))
            # Every item shard hears of the batch's minutes, rows or not,
            # so that each closes (and reports) every window with data.
            for shard in range(self._item_shards):
                part = parts.get(shard, partials.slice(0, 0))
                yield shard, stream_panes.with_touched(
                    part, minutes, epoch_ms(timestamp))

    @on_timer(TICK)
    def on_tick(self, shard=beam.DoFn.KeyParam,
                fired=beam.DoFn.TimestampParam,
                seen=beam.DoFn.StateParam(SEEN),
                watermark=beam.DoFn.StateParam(WATERMARK),
                tick=beam.DoFn.TimerParam(TICK)):
        now = epoch_ms(fired)
        known = watermark.read()
        ids = self._ids(shard, known["generation"], seen)
        if ids.expire(stream_dedup.late_horizon(now, self._lateness),
                      stream_dedup.EXPIRE_BATCH_MS) and (
                stream_dedup.rewrite_due(known.get("bag_rows"), len(ids))):
            # Expired ids left in the bag are harmless (a copy that old is
            # late anyway), so the bag is rewritten only once it is mostly
            # expired: each rewrite then pays for the ids it drops.
            seen.clear()
            seen.add(ids.to_table())
            known["bag_rows"] = len(ids)
            known["generation"] = uuid.uuid4().hex
        self._cache.put(shard, known["generation"], ids)
        known["armed"] = len(ids) > 0  # idle shards stop ticking
        if known["armed"]:
            tick.set(beam_timestamp(stream_panes.coarse_close(
                now + schema.MINUTE_MS,
                known.get("seen", stream_dedup.NO_WATERMARK), self._skew,
                ids.minute_rows())))
        known["ms"] = now
        watermark.write(known)


class _ShardPanesFn(beam.DoFn):
    """(item shard, minute partials) -> (spec key, (shard, timing,
    candidates, totals)); changed slices to the ``slices`` output."""

    PENDING = BagStateSpec("pending", coders.ArrowTableCoder())
    #: The counts as a chunk log (``ShardPanes.from_chunks``, rewritten
    #: whole when ``panes.LogSizes`` says) and the small rest, with a
    #: generation token that changes at every firing.
    COUNTS = BagStateSpec("counts", PickleCoder())
    META = ReadModifyWriteStateSpec("meta", PickleCoder())
    TIMERS = ReadModifyWriteStateSpec("timers", PickleCoder())
    EARLY = TimerSpec("early", TimeDomain.REAL_TIME)
    CLOSE = TimerSpec("close", TimeDomain.WATERMARK)

    def __init__(self, specs: list[WindowSpec], k: int,
                 allowed_lateness_ms: int, early_firing_s: float,
                 skew_ms: int):
        self._specs = specs
        self._k = k
        self._lateness = allowed_lateness_ms
        self._early_s = early_firing_s
        self._skew = skew_ms
        self._close_rows = stream_panes.close_rows(specs)
        # Weights of partials refused as late (not events: partials are
        # sums), apart from the dedup stage's events_late.
        self._late = Metrics.counter("topk", "late_counts_refused")
        # shard -> (generation, ShardPanes): a firing whose state nobody
        # changed since the stage's last firing of the shard skips reading
        # and re-merging the chunk log (as _DedupFn's cache).
        self._cache = StateCache()

    def setup(self):
        self._cache.setup()

    def teardown(self):
        self._cache.teardown()

    # The counts are read and written only at firings; per element,
    # only the small TIMERS state is: which timers are set and the
    # watermark of the last on-time firing.
    def process(self, element, pending=beam.DoFn.StateParam(PENDING),
                timers=beam.DoFn.StateParam(TIMERS),
                early=beam.DoFn.TimerParam(EARLY),
                close=beam.DoFn.TimerParam(CLOSE)):
        _, partials = element
        pending.add(partials)
        armed = _armed(timers)
        touched = stream_panes.touched_minutes([partials])
        armed["seen"] = stream_panes.newest_seen(
            armed.get("seen", stream_dedup.NO_WATERMARK), touched, now_ms())
        if not armed["early"] and partials.num_rows:
            early.set(beam_timestamp(stream_panes.early_timer_ms(
                armed, self._early_s, now_ms())))
            armed["early"] = True
        due = stream_panes.coarse_close(stream_panes.next_window_end(
            self._specs, touched, armed["watermark"]), armed["seen"],
            self._skew)
        if due is not None and (armed["close"] is None
                                or due < armed["close"]):
            close.set(beam_timestamp(due))
            armed["close"] = due
        timers.write(armed)

    def _fire(self, shard, pending, counts, meta, timers, watermark_ms=None):
        started = time.perf_counter()
        known = meta.read() or {"generation": None}
        panes = self._cache.get(shard, known["generation"])
        if panes is None:
            panes = stream_panes.ShardPanes.from_chunks(
                self._specs, self._k, self._lateness, known.get("panes"),
                counts.read())
        now, armed = now_ms(), _armed(timers)
        early = stream_panes.fires_early(armed, watermark_ms, self._early_s,
                                         now)
        firing = panes.fire(list(pending.read()), now, watermark_ms,
                            early=early)
        pending.clear()
        log = known.get("log") or stream_panes.LogSizes()
        if log.rewrite_due(firing.absorbed.num_rows):
            counts.clear()
            chunks = panes.level_chunks()
            for chunk in chunks:
                counts.add(chunk)
            log.rewrote(sum(c[2].num_rows for c in chunks))
        elif firing.absorbed.num_rows:
            counts.add(("delta", firing.absorbed))
        generation = uuid.uuid4().hex
        meta.write({"generation": generation, "log": log,
                    "panes": panes.meta()})
        self._cache.put(shard, generation, panes)
        armed = _armed(timers)
        armed["watermark"] = panes.watermark_ms
        if early:
            stream_panes.record_early(armed, now,
                                      time.perf_counter() - started)
        timers.write(armed)
        if firing.slices.num_rows:
            yield beam.pvalue.TaggedOutput(SLICES, firing.slices)
        if firing.late.num_rows:
            self._late.inc(pa.compute.sum(firing.late["count"]).as_py())
            yield beam.pvalue.TaggedOutput(LATE_COUNTS, firing.late)
        report = _NO_REPORT
        if firing.closed_through_ms is not None:
            report = (firing.closed_from_ms, firing.closed_through_ms)
        reported = set()
        for spec, timing, top in firing.windows:
            # The on-time panes carry the report, in the same element: the
            # merge never holds a report without the panes it vouches for.
            on_time = timing == stream_panes.ON_TIME
            if on_time:
                reported.add(spec.key)
            yield spec.key, (shard, firing.emitted_at_ms, timing,
                             top.candidates, top.totals,
                             *(report if on_time else _NO_REPORT))
        if report != _NO_REPORT:
            for spec in self._specs:
                if spec.key not in reported:
                    yield spec.key, (shard, firing.emitted_at_ms,
                                     stream_panes.ON_TIME, *_NO_PANES,
                                     *report)
        return panes

    @on_timer(EARLY)
    def on_early(self, shard=beam.DoFn.KeyParam,
                 pending=beam.DoFn.StateParam(PENDING),
                 counts=beam.DoFn.StateParam(COUNTS),
                 meta=beam.DoFn.StateParam(META),
                 timers=beam.DoFn.StateParam(TIMERS)):
        yield from self._fire(shard, pending, counts, meta, timers)
        armed = _armed(timers)
        armed["early"] = False
        timers.write(armed)

    @on_timer(CLOSE)
    def on_close(self, shard=beam.DoFn.KeyParam,
                 fired=beam.DoFn.TimestampParam,
                 pending=beam.DoFn.StateParam(PENDING),
                 counts=beam.DoFn.StateParam(COUNTS),
                 meta=beam.DoFn.StateParam(META),
                 timers=beam.DoFn.StateParam(TIMERS),
                 close=beam.DoFn.TimerParam(CLOSE)):
        panes = yield from self._fire(shard, pending, counts, meta, timers,
                                      watermark_ms=epoch_ms(fired))
        due = stream_panes.coarse_close(panes.next_close(),
                                        _armed(timers)["seen"], self._skew,
                                        panes.held_minutes(),
                                        max_rows=self._close_rows)
        if due is not None:
            close.set(beam_timestamp(due))
        armed = _armed(timers)
        armed["close"] = due
        timers.write(armed)


class _MergePanesFn(beam.DoFn):
    """(spec key, shard pane) -> ``ranked_windows`` rows of merged panes.

    ``process`` appends the shard pane to a log (BagState). A pane that
    carries a shard's report (its event-time firing's watermark) is merged
    at once: the windows every shard has closed through get their on-time
    pane. Early and late panes wait for a processing-time timer soon after
    they arrive, so that the panes of several shards from one firing round
    become one pane, and elements write one small append instead of
    rewriting the snapshot.
    """

    LOG = BagStateSpec("log", PickleCoder())
    MERGE = ReadModifyWriteStateSpec("merge", PickleCoder())
    TIMERS = ReadModifyWriteStateSpec("timers", PickleCoder())
    EMIT = TimerSpec("emit", TimeDomain.REAL_TIME)

    #: Seconds between an early/late shard pane's arrival and its merge:
    #: panes of several shards from one firing round become one pane.
    EMIT_DELAY_S = 0.2

    def __init__(self, specs: list[WindowSpec], k: int,
                 allowed_lateness_ms: int, item_shards: int):
        self._specs = {s.key: s for s in specs}
        self._k = k
        self._lateness = allowed_lateness_ms
        self._shards = item_shards
        self._refused = Metrics.counter("topk", "panes_refused_expired")

    def process(self, element, log=beam.DoFn.StateParam(LOG),
                merge_state=beam.DoFn.StateParam(MERGE),
                timers=beam.DoFn.StateParam(TIMERS),
                emit=beam.DoFn.TimerParam(EMIT)):
        key, pane = element
        log.add(pane)
        if pane[6] > stream_dedup.NO_WATERMARK:
            yield from self._merge(key, log, merge_state)
            return
        armed = timers.read() or {"emit": False}
        if not armed["emit"]:
            emit.set(Timestamp.now() + Duration(seconds=self.EMIT_DELAY_S))
            armed["emit"] = True
            timers.write(armed)

    def _merge(self, key, log, merge_state):
        merge = merge_state.read() or stream_panes.PaneMerge(
            self._specs[key], self._k, self._lateness, self._shards)
        refused = merge.refused
        updates = []
        for (shard, version, timing, candidates, totals, closed_from,
             closed_through) in log.read():
            updates.append((shard, version, timing,
                            ranking.WindowTopK(candidates, totals)))
            if closed_through > stream_dedup.NO_WATERMARK:
                merge.report(shard, closed_from, closed_through)
        log.clear()
        watermark = merge.shards_watermark()
        panes = merge.advance(updates, watermark
                              if watermark > stream_dedup.NO_WATERMARK
                              else None)
        self._refused.inc(merge.refused - refused)
        emitted_at = merge.emission_time(now_ms()) if panes else None
        for name, merged, index in panes:
            yield stream_panes.ranked_pane_rows(merge.spec, name, merged,
                                                index, emitted_at,
                                                merge.watermark_ms)
        merge_state.write(merge)  # kept when empty: it knows the watermark

    @on_timer(EMIT)
    def on_emit(self, key=beam.DoFn.KeyParam,
                log=beam.DoFn.StateParam(LOG),
                merge_state=beam.DoFn.StateParam(MERGE),
                timers=beam.DoFn.StateParam(TIMERS)):
        timers.write({"emit": False})
        yield from self._merge(key, log, merge_state)


class StreamTopK(beam.PTransform):
    """Validated event tables (unbounded) -> panes of every window's top-K.

    Takes ``pa.Table`` batches in ``EVENT_SCHEMA``. Yields a dict of
    PCollections of ``pa.Table``: ``ranked_windows`` (merged panes,
    ``RANKED_WINDOWS_SCHEMA``, ``pane_timing`` early / on_time / late),
    ``slices`` (changed 1m/1h/1d slices with their full counts so far,
    ``SLICES_SCHEMA``), ``late_events`` (events older than the allowed
    lateness, not counted, ``DEDUP_COLUMNS``) and ``late_counts`` (minute
    partials an item shard refused as late, ``SLICE_COUNTS_SCHEMA``: events
    a dedup shard let through before it knew the watermark). See the module
    docstring.
    """

    def __init__(self, specs: list[WindowSpec], k: int, *,
                 item_shards: int = 8, dedup_shards: int = 8,
                 allowed_lateness_ms: int = 10 * schema.MINUTE_MS,
                 early_firing_s: float = stream_panes.DEFAULT_EARLY_FIRING_S,
                 skew_ms: int = ALLOWED_SKEW_MS):
        super().__init__()
        if allowed_lateness_ms < 0:
            raise ValueError("allowed lateness must not be negative")
        if early_firing_s <= 0:
            raise ValueError("the early firing interval must be positive")
        self._specs = list(specs)
        self._k = k
        self._item_shards = item_shards
        self._dedup_shards = dedup_shards
        self._lateness = allowed_lateness_ms
        self._early_s = early_firing_s
        self._skew = skew_ms

    def expand(self, events):
        deduped = (
            events
            | "KeyByEventId" >> beam.FlatMap(
                key_by_shard, "event_id", self._dedup_shards
            ).with_output_types(ShardTable)
            | "Dedup" >> beam.ParDo(_DedupFn(
                self._item_shards, self._lateness, self._skew)).with_outputs(
                    LATE_EVENTS, main="partials"))
        shard_panes = (
            deduped.partials
            | "TypePartials" >> beam.Map(lambda kv: kv).with_output_types(
                ShardTable)
            | "ShardPanes" >> beam.ParDo(_ShardPanesFn(
                self._specs, self._k, self._lateness, self._early_s,
                self._skew)).with_outputs(SLICES, LATE_COUNTS, main="panes"))
        ranked = (
            shard_panes.panes
            | "TypePanes" >> beam.Map(lambda kv: kv).with_output_types(
                ShardPane)
            | "MergePanes" >> beam.ParDo(_MergePanesFn(
                self._specs, self._k, self._lateness, self._item_shards
            )).with_output_types(
                    pa.Table))
        return {
            RANKED_WINDOWS: ranked,
            SLICES: shard_panes[SLICES] | "TypeSlices" >> coders.AsTables(),
            LATE_EVENTS: deduped[LATE_EVENTS] | "TypeLateEvents" >> (
                coders.AsTables()),
            LATE_COUNTS: shard_panes[LATE_COUNTS] | "TypeLateCounts" >> (
                coders.AsTables()),
        }
