"""Unbounded approximate top-K with early, on-time and late panes: Beam
state and timers around ``topk.streaming.sketch_panes``.

    event tables
      | CountMinutes   exact partial counts per (event type, minute, item),
      |                stamped with the batch's read time; one key
      | SketchPanes    slice sketches of the open windows (every method);
                       early panes on a processing-time timer, on-time panes
                       and closed slices' sketches on an event-time timer,
                       late panes

No de-duplication stage: the approximate path keeps no state per event
(``topk.streaming.sketch_panes`` says what duplicates do). Its state is one
sketch per (method, event type, slice) of the open windows, whatever the
number of items, under one key: a sketch update is vectorised over a whole
batch, so one key keeps up with what one worker reads.
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

from topk.core import counting, schema
from topk.connectors.kafka.watermarks import ALLOWED_SKEW_MS
from topk.core.windows import WindowSpec, now_ms
from topk.storage.layout import LATE_COUNTS, RANKED_WINDOWS, SKETCHES
from topk.streaming import dedup as stream_dedup
from topk.streaming import panes as stream_panes
from topk.streaming.sketch_panes import SketchPanes, close_after_batch
from topk.transforms import coders
from topk.transforms.beam_time import beam_timestamp, epoch_ms
from topk.transforms.state_cache import StateCache

#: The one key of the sketch stage.
_KEY = "sketches"



def _count_minutes(events: pa.Table, timestamp=beam.DoFn.TimestampParam):
    if events.num_rows:
        partials = counting.count_slices(events).replace_schema_metadata(
            {stream_dedup.READ_AT: str(epoch_ms(timestamp)).encode()})
        yield _KEY, partials


class _SketchPanesFn(beam.DoFn):
    """(key, minute partials) -> ``ranked_windows`` rows; closed slices'
    sketches to the ``sketches`` output, refused partials to
    ``late_counts``."""

    PENDING = BagStateSpec("pending", coders.ArrowTableCoder())
    #: Accepted partials of minutes far after the watermark, not sketched
    #: yet (``SketchFiring.ahead``).
    AHEAD = BagStateSpec("ahead", coders.ArrowTableCoder())
    #: ``SketchPanes.meta()`` with a generation token and the
    #: ``panes.LogSizes``; the slices as a chunk log
    #: (``SketchPanes.from_chunks``).
    META = ReadModifyWriteStateSpec("meta", PickleCoder())
    CHUNKS = BagStateSpec("chunks", PickleCoder())
    TIMERS = ReadModifyWriteStateSpec("timers", PickleCoder())

    EARLY = TimerSpec("early", TimeDomain.REAL_TIME)
    CLOSE = TimerSpec("close", TimeDomain.WATERMARK)

    def __init__(self, specs, k, methods, budget_bytes, allowed_lateness_ms,
                 early_firing_s):
        self._args = (list(specs), k, list(methods), budget_bytes,
                      allowed_lateness_ms)
        self._early_s = early_firing_s
        # Weights of partials refused as late (this path has no dedup
        # stage to count late events).
        self._late = Metrics.counter("topk", "late_counts_refused")
        # (generation, SketchPanes): a firing that finds the generation it
        # wrote last skips reading and rebuilding the chunk log (a restore
        # or another worker changes the generation).
        self._cache = StateCache()

    def setup(self):
        self._cache.setup()

    def teardown(self):
        self._cache.teardown()

    def _panes(self, meta, chunks) -> tuple[dict, SketchPanes]:
        known = meta.read() or {"generation": None, "panes": None}
        panes = self._cache.get(None, known["generation"])
        if panes is not None:
            return known, panes
        return known, SketchPanes.from_chunks(*self._args, known["panes"],
                                              chunks.read())

    def process(self, element, pending=beam.DoFn.StateParam(PENDING),
                timers=beam.DoFn.StateParam(TIMERS),
                early=beam.DoFn.TimerParam(EARLY),
                close=beam.DoFn.TimerParam(CLOSE)):
        _, partials = element
        pending.add(partials)
        armed = timers.read() or {"early": False, "close": None,
                                  "watermark": stream_dedup.NO_WATERMARK,
                                  "seen": stream_dedup.NO_WATERMARK}
        armed["seen"] = stream_panes.newest_seen(
            armed["seen"], partials["slice_start"].to_numpy(), now_ms())
        if not armed["early"]:
            early.set(beam_timestamp(stream_panes.early_timer_ms(
                armed, self._early_s, now_ms())))
            armed["early"] = True
        due = close_after_batch(
            self._args[0], np.unique(partials["slice_start"].to_numpy()),
            armed["watermark"], armed["close"])
        if due is not None:
            close.set(beam_timestamp(due))
            armed["close"] = due
        timers.write(armed)

    def _fire(self, pending, ahead, meta, chunks, timers, watermark_ms=None):
        started = time.perf_counter()
        known, panes = self._panes(meta, chunks)
        now, armed = now_ms(), timers.read()
        early = stream_panes.fires_early(armed, watermark_ms, self._early_s,
                                         now)
        firing = panes.fire(list(pending.read()), now, watermark_ms,
                            ahead=list(ahead.read()), early=early)
        pending.clear()
        ahead.clear()
        if firing.ahead.num_rows:
            ahead.add(firing.ahead)
        changed = panes.take_changes()
        log = known.get("log") or stream_panes.LogSizes()
        if log.rewrite_due(len(changed)):
            chunks.clear()
            held = panes.all_slices()
            chunks.add(held)
            log.rewrote(len(held))
        elif changed:
            chunks.add(changed)
        generation = uuid.uuid4().hex
        meta.write({"generation": generation, "log": log,
                    "panes": panes.meta()})
        self._cache.put(None, generation, panes)
        armed = timers.read()
        armed["watermark"] = panes.watermark_ms
        if early:
            stream_panes.record_early(armed, now,
                                      time.perf_counter() - started)
        timers.write(armed)
        if firing.sketches.num_rows:
            yield beam.pvalue.TaggedOutput(SKETCHES, firing.sketches)
        if firing.late.num_rows:
            self._late.inc(pa.compute.sum(firing.late["count"]).as_py())
            yield beam.pvalue.TaggedOutput(LATE_COUNTS, firing.late)
        if firing.ranked.num_rows:
            yield firing.ranked
        return panes, firing.ahead

    @on_timer(EARLY)
    def on_early(self, pending=beam.DoFn.StateParam(PENDING),
                 meta=beam.DoFn.StateParam(META),
                 chunks=beam.DoFn.StateParam(CHUNKS),
                 ahead=beam.DoFn.StateParam(AHEAD),
                 timers=beam.DoFn.StateParam(TIMERS)):
        yield from self._fire(pending, ahead, meta, chunks, timers)
        armed = timers.read()
        armed["early"] = False
        timers.write(armed)

    @on_timer(CLOSE)
    def on_close(self, fired=beam.DoFn.TimestampParam,
                 pending=beam.DoFn.StateParam(PENDING),
                 meta=beam.DoFn.StateParam(META),
                 chunks=beam.DoFn.StateParam(CHUNKS),
                 ahead=beam.DoFn.StateParam(AHEAD),
                 timers=beam.DoFn.StateParam(TIMERS),
                 close=beam.DoFn.TimerParam(CLOSE)):
        panes, held_back = yield from self._fire(
            pending, ahead, meta, chunks, timers,
            watermark_ms=epoch_ms(fired))
        armed = timers.read()
        due = panes.close_after_firing(held_back, armed["seen"],
                                       ALLOWED_SKEW_MS)
        if due is not None:
            close.set(beam_timestamp(due))
        armed["close"] = due
        timers.write(armed)


class StreamSketchTopK(beam.PTransform):
    """Validated event tables (unbounded) -> approximate panes of every
    window's top-K, for every method of ``methods`` (``cms``,
    ``frequent_items``).

    Takes ``pa.Table`` batches in ``EVENT_SCHEMA``. Yields a dict of
    PCollections of ``pa.Table``: ``ranked_windows`` (panes with bounds and
    the guaranteed flag, ``pane_timing`` early / on_time / late),
    ``sketches`` (slice sketches once closed, and again when a late event
    changes them, ``SKETCHES_SCHEMA``) and ``late_counts`` (minute partials
    older than the allowed lateness, not counted).
    """

    def __init__(self, specs: list[WindowSpec], k: int, methods: list[str],
                 *, budget_bytes: int,
                 allowed_lateness_ms: int = 10 * schema.MINUTE_MS,
                 early_firing_s: float = stream_panes.DEFAULT_EARLY_FIRING_S):
        super().__init__()
        if allowed_lateness_ms < 0:
            raise ValueError("allowed lateness must not be negative")
        if early_firing_s <= 0:
            raise ValueError("the early firing interval must be positive")
        SketchPanes(specs, k, methods, budget_bytes, allowed_lateness_ms)
        self._fn = _SketchPanesFn(specs, k, methods, budget_bytes,
                                  allowed_lateness_ms, early_firing_s)

    def expand(self, events):
        fired = (
            events
            | "CountMinutes" >> beam.FlatMap(_count_minutes).with_output_types(
                typing.Tuple[str, pa.Table])
            | "SketchPanes" >> beam.ParDo(self._fn).with_outputs(
                SKETCHES, LATE_COUNTS, main="ranked"))
        return {RANKED_WINDOWS: fired.ranked | "TypeRanked" >> (
                    coders.AsTables()),
                SKETCHES: fired[SKETCHES] | "TypeSketches" >> (
                    coders.AsTables()),
                LATE_COUNTS: fired[LATE_COUNTS] | "TypeLateCounts" >> (
                    coders.AsTables())}
