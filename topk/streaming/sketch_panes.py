"""Streaming panes of the approximate methods: slice sketches of the open
windows (no Beam).

The approximate stream has the exact stream's pane rules (early panes every
few seconds while a window is open, one on-time pane when the watermark
passes its end, late panes for changes within the allowed lateness; see
``topk.streaming.panes``) on the batch path's approximate algebra
(``topk.approx.sketch_windows``): one sketch per ``(method, event type,
slice)`` at the three slice lengths (1m, 1h, 1d; ``event_type = '*'`` for
all types), windows as merges of the slices of their step.

Memory is fixed by the windows, never by the items: a slice's sketch stays
within ``--sketch-budget-bytes`` however many items it sees, and a level's
sketches are kept only while a window of that level, or the lateness, can
still need them. What the approximate path does *not* keep is per-event
state: there is no de-duplication by ``event_id`` (that would be state per
event), so a duplicated event counts twice here. The bounds then hold for
the events as delivered; the precise path (``topk batch --from-archive``)
de-duplicates and replaces these answers.

``SketchPanes.fire`` takes the minute partial counts that arrived since the
last firing and returns a ``SketchFiring``: ranked rows of the panes due and
the sketches of slices that closed or changed after closing (the
``sketches`` table: a slice's sketch is written when the watermark passes
its end, and again when a late event changes it, not at every early
firing, which would rewrite every open slice's full budget every few
seconds).
"""
import dataclasses
import functools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from topk.approx import sketch_windows, sketches
from topk.core import counting, ranking, schema
from topk.core.windows import WindowSpec
from topk.streaming import closed_parts
from topk.streaming.dedup import NO_WATERMARK, RETENTION_MARGIN_MS
from topk.streaming.panes import (EARLY, LATE, LEVELS, ON_TIME, SOURCE,
                                  coarse_close, level_of, next_window_end,
                                  pane_timings, split_late, windows_due)


def close_after_batch(specs: list[WindowSpec], minutes: np.ndarray,
                      watermark_ms: int, armed_ms: int | None) -> int | None:
    """Where to move the stage's close timer when a batch of ``minutes``
    arrives before a firing has looked at it, with the timer at
    ``armed_ms`` (``None``: not armed); ``None`` to leave it. Until a
    firing knows the windows (``SketchPanes.close_after_firing`` takes
    over), the close comes at the next end of a window the batch changed.
    A batch of closed minutes only (stragglers within the lateness) moves
    no armed timer: their late panes come with the next early firing.
    (Moving it to the watermark fired the stage at every watermark step,
    about once a second live.) With nothing armed, they close at the next
    watermark step."""
    due = next_window_end(specs, minutes, watermark_ms)
    if due is None and armed_ms is None:
        due = watermark_ms + 1
    if due is not None and (armed_ms is None or due < armed_ms):
        return due
    return None


@dataclasses.dataclass
class SketchFiring:
    """What one firing emits."""
    ranked: pa.Table  # RANKED_WINDOWS_SCHEMA rows, every method
    sketches: pa.Table  # SKETCHES_SCHEMA rows
    late: pa.Table  # refused partials (SLICE_COUNTS_SCHEMA)
    emitted_at_ms: int
    #: Accepted partials of minutes beyond ``ABSORB_AHEAD_MS`` after the
    #: watermark (SLICE_COUNTS_SCHEMA), not sketched yet: the caller keeps
    #: them and hands them back as ``fire(..., ahead=)``.
    ahead: pa.Table = dataclasses.field(
        default_factory=schema.SLICE_COUNTS_SCHEMA.empty_table)


#: How far after the watermark a firing sketches the minutes it got; later
#: minutes wait as counts (``SketchFiring.ahead``). A sketch per minute
#: takes the budget (tens of KB) whatever it holds, so a year-long backlog
#: sketched as it arrives took tens of GB; live, every minute read is
#: within seconds of the watermark and sketched at once.
ABSORB_AHEAD_MS = schema.HOUR_MS

#: Minutes one catch-up firing of the sketch stage may close beyond its
#: first hour (``coarse_close``): each is a sketch per method and type.
MAX_CLOSE_MINUTES = 1000

class SketchPanes:
    """Slice sketches of the open windows of ``specs`` for ``methods``, and
    the pane bookkeeping (module docstring). Pickles as its sketches'
    compact bytes plus a few dicts: it is runner state as it is."""

    def __init__(self, specs: list[WindowSpec], k: int, methods: list[str],
                 budget_bytes: int, allowed_lateness_ms: int):
        self.specs = list(specs)
        self.k = k
        self.methods = list(methods)
        self.budget_bytes = budget_bytes
        self.allowed_lateness_ms = allowed_lateness_ms
        #: (method, slice ms, event type) -> {slice start: sketch}
        self.slices: dict[tuple[str, int, str], dict[int, object]] = {}
        self.watermark_ms = NO_WATERMARK
        self.last_emit_ms = 0
        #: spec key -> starts of open windows changed at an event-time
        #: firing: their early pane waits for the next processing-time one.
        self.deferred: dict[str, np.ndarray] = {}
        #: (spec key, window start) -> the next pane's index
        self.pane_index: dict[tuple[str, int], int] = {}
        #: (slice ms, slice start) of closed slices changed since written
        self._unwritten: set[tuple[int, int]] = set()
        #: (method, slice ms, event type, start) changed since
        #: ``take_changes``
        self._changed: set[tuple[str, int, str, int]] = set()
        #: (method, slice ms, event type, spec key) ->
        #: ``closed_parts.ClosedMerges``; made again when needed, so never
        #: runner state.
        self._closed: dict[tuple, closed_parts.ClosedMerges] = {}
        self._retention = {size: max([size] + [
            s.length_ms for s in self.specs if level_of(s) == size])
            for size, _ in LEVELS}
        for method in self.methods:  # fail now on a bad method or budget
            sketches.new_sketch(method, budget_bytes)

    # -- state ---------------------------------------------------------------
    # Runner state is ``meta()`` (small) and a log of chunks: the slices
    # each firing changed (``take_changes``), from time to time all of them
    # instead (``all_slices``). Rewriting every held sketch at every firing
    # cost the whole state (megabytes) each time.

    def meta(self) -> dict:
        return {"watermark_ms": self.watermark_ms,
                "last_emit_ms": self.last_emit_ms, "deferred": self.deferred,
                "pane_index": self.pane_index,
                "unwritten": sorted(self._unwritten)}

    def take_changes(self) -> list[tuple]:
        """``(method, slice ms, event type, start, sketch bytes)`` of the
        held slices changed since the last call."""
        out = [(*key[:3], key[3], self.slices[key[:3]][key[3]].to_bytes())
               for key in sorted(self._changed)
               if key[3] in self.slices.get(key[:3], {})]
        self._changed.clear()
        return out

    def all_slices(self) -> list[tuple]:
        """Every held slice, as ``take_changes`` gives them."""
        self._changed.clear()
        return [(*key, start, sketch.to_bytes())
                for key, by_start in sorted(self.slices.items())
                for start, sketch in sorted(by_start.items())]

    @classmethod
    def from_chunks(cls, specs, k, methods, budget_bytes,
                    allowed_lateness_ms, meta: dict | None, chunks
                    ) -> "SketchPanes":
        """Rebuild from ``meta()`` and the chunks, in log order (a later
        chunk's sketch of a slice replaces an earlier one's)."""
        panes = cls(specs, k, methods, budget_bytes, allowed_lateness_ms)
        if meta:
            panes.watermark_ms = meta["watermark_ms"]
            panes.last_emit_ms = meta["last_emit_ms"]
            panes.deferred = meta["deferred"]
            panes.pane_index = meta["pane_index"]
            panes._unwritten = {tuple(u) for u in meta["unwritten"]}
        latest = {}
        for chunk in chunks:
            for method, size, event_type, start, blob in chunk:
                latest[(method, size, event_type, start)] = blob
        for (method, size, event_type, start), blob in latest.items():
            panes.slices.setdefault((method, size, event_type), {})[
                start] = sketches.sketch_from_bytes(blob)
        panes._expire()
        return panes

    def held_slices(self) -> int:
        """How many slice sketches are held (all methods, types, levels)."""
        return sum(len(by_start) for by_start in self.slices.values())

    def next_close(self) -> int | None:
        """When the next event-time firing is due: the next on-time pane
        (as ``ShardPanes``) or the end of a held slice, whose sketch is
        written then."""
        due = []
        for (_, size, _), by_start in self.slices.items():
            if not by_start:
                continue
            starts = np.fromiter(by_start, np.int64, len(by_start))
            if size == schema.MINUTE_MS:
                due.append(next_window_end(self.specs, starts,
                                           self.watermark_ms))
            ends = starts[starts + size > self.watermark_ms] + size
            if ends.size:
                due.append(int(ends.min()))
        due = [d for d in due if d is not None]
        return min(due) if due else None

    def close_after_firing(self, ahead: pa.Table, seen_ms: int,
                           skew_ms: int) -> int | None:
        """When the event-time firing after this one is due: the next
        window or slice end of what is held or was held back (``ahead``, the
        firing's ``SketchFiring.ahead``), moved on by ``coarse_close`` during
        a catch-up (``seen_ms``, ``skew_ms`` as there) by at most
        ``MAX_CLOSE_MINUTES`` held minutes: each becomes a sketch per method
        and type once absorbed, so steps count minutes, not rows."""
        later = np.unique(ahead["slice_start"].to_numpy())
        due = [d for d in (self.next_close(), next_window_end(
            self.specs, later, self.watermark_ms)) if d is not None]
        return coarse_close(min(due) if due else None, seen_ms, skew_ms,
                            np.union1d(self.held_minutes(), later),
                            max_rows=MAX_CLOSE_MINUTES)

    def held_minutes(self) -> np.ndarray:
        """The start of every held one-minute sketch (``coarse_close``)."""
        return np.concatenate([np.empty(0, np.int64)] + [
            np.fromiter(by_start, np.int64, len(by_start))
            for (_, size, _), by_start in self.slices.items()
            if size == schema.MINUTE_MS])

    # -- firing ------------------------------------------------------------------

    def fire(self, pending: list[pa.Table], now_ms: int,
             watermark_ms: int | None = None, ahead=(), early: bool = False
             ) -> SketchFiring:
        """Absorb the minute partials that arrived since the last firing
        and emit the panes due, as ``ShardPanes.fire`` does for exact
        counts: ``watermark_ms`` (an event-time firing) closes windows
        ending by then (on-time panes) and defers the early panes of open
        windows to the next processing-time firing (``None``), unless
        ``early`` (``panes.emits_early``). ``ahead``:
        the ``SketchFiring.ahead`` of earlier firings (accepted already,
        so never refused as late)."""
        pending, late = split_late(list(pending), self.watermark_ms,
                                   self.allowed_lateness_ms)
        previous = self.watermark_ms
        watermark = previous if watermark_ms is None else max(previous,
                                                              watermark_ms)
        rows = counting.merge_counts(pending + list(ahead))
        # Before the first event-time firing, from the oldest minute read.
        base = watermark if watermark > NO_WATERMARK or not rows.num_rows \
            else pc.min(rows["slice_start"]).as_py()
        later = pc.greater_equal(rows["slice_start"], base + ABSORB_AHEAD_MS)
        held_back = rows.filter(later)
        dirty = self._absorb(rows.filter(pc.invert(later)))
        emitted_at = max(int(now_ms), self.last_emit_ms + 1)
        self.last_emit_ms = emitted_at
        ranked = [self._spec_rows(spec, dirty, previous, watermark,
                                  watermark_ms is not None and not early,
                                  emitted_at)
                  for spec in self.specs]
        self.watermark_ms = watermark
        written = self._sketch_rows(previous, watermark, emitted_at)
        self._expire()
        ranked = ranking.with_input_watermark(
            pa.concat_tables([schema.RANKED_WINDOWS_SCHEMA.empty_table()]
                             + ranked),
            watermark if watermark > NO_WATERMARK else None)
        return SketchFiring(ranked, written, late, emitted_at, held_back)

    def _absorb(self, partials: pa.Table) -> np.ndarray:
        """Add minute partials to every level's slice sketches; returns the
        changed minutes."""
        if partials.num_rows == 0:
            return np.empty(0, np.int64)
        for size, _ in LEVELS:
            rows = partials if size == schema.MINUTE_MS else counting.rollup(
                partials, size)
            for (event_type, _), part in sketch_windows.split_runs(rows,
                                                                    None):
                starts = []
                for method in self.methods:
                    # A catch-up firing makes many slice sketches: made
                    # together (``add_slice_rows``), not one at a time.
                    starts = sketch_windows.add_slice_rows(
                        self.slices.setdefault((method, size, event_type), {}),
                        functools.partial(sketches.new_sketch, method,
                                          self.budget_bytes), part)
                    for start in starts:
                        self._changed.add((method, size, event_type, start))
                        self._drop_closed(method, size, event_type, start)
                for start in starts:
                    if start + size <= self.watermark_ms:
                        self._unwritten.add((size, start))  # changed closed
        return np.unique(partials["slice_start"].to_numpy())

    def _drop_closed(self, method, size, event_type, start) -> None:
        """Forget the cached closed merges a change to slice ``start``
        makes stale."""
        for key in [key for key, closed in self._closed.items()
                    if key[:3] == (method, size, event_type)
                    and start // size < closed.cut]:
            del self._closed[key]

    def _spec_rows(self, spec, dirty, previous, watermark, defer_early,
                   emitted_at) -> pa.Table:
        size = level_of(spec)
        held = [np.fromiter(by_start, np.int64)
                for (_, level, _), by_start in self.slices.items()
                if level == size and by_start]
        wanted = windows_due(
            spec, dirty, np.concatenate(held) if held else np.empty(
                0, np.int64), previous, watermark, self.deferred, defer_early)
        if wanted.size == 0:
            return schema.RANKED_WINDOWS_SCHEMA.empty_table()
        timing = pane_timings(spec, wanted, previous, watermark)
        index = {}
        for start in wanted.tolist():
            key = (spec.key, start)
            index[start] = self.pane_index.get(key, 0)
            self.pane_index[key] = index[start] + 1
        parts = []
        for (method, level, event_type), by_start in self.slices.items():
            if level != size or not by_start:
                continue
            for name in (EARLY, ON_TIME, LATE):
                picked = wanted[timing == name]
                if picked.size:
                    parts.extend(self._windows(
                        spec, method, event_type, by_start, picked, name,
                        index, emitted_at))
        return (pa.concat_tables(parts) if parts
                else schema.RANKED_WINDOWS_SCHEMA.empty_table())

    def _windows(self, spec, method, event_type, by_start, starts, timing,
                 index, emitted_at) -> list[pa.Table]:
        """Ranked rows of the windows ``starts`` of one method and type:
        early panes of open sliding windows from their cached closed part
        (``_early_spans``), the others' blocks of panes as the batch path
        ranks them (``sketch_windows.ranked_block``)."""
        pane_ms = level_of(spec)
        _, n, step = sketch_windows.pane_plan(spec)
        held = sorted((s // pane_ms, sketch) for s, sketch in by_start.items())
        wanted = starts // pane_ms
        row_args = dict(emitted_at_ms=emitted_at, source=SOURCE,
                        pane_timing=timing)
        spans = None
        if timing == EARLY and n > 1 and held and (
                wanted + n > held[-1][0]).all():
            spans = self._early_spans(spec, method, event_type, held,
                                      wanted.tolist(), n, step)
        rows = (sketch_windows.ranked_spans(*spans, spec, pane_ms, self.k,
                                            event_type, **row_args)
                if spans is not None else
                sketch_windows.ranked_windows_starting(
                    spec, self.k, event_type, held, wanted.tolist(),
                    **row_args))
        return [with_pane_index(rows, index)] if rows.num_rows else []

    def _early_spans(self, spec, method, event_type, held, wanted, n, step
                     ) -> tuple[list, list] | None:
        """Open windows that all hold the newest pane, as spans of their
        cached closed parts and newer panes
        (``closed_parts.ClosedMerges.spans``); ``None`` when there is no
        cut (``closed_parts.cut_at``)."""
        key = (method, level_of(spec), event_type, spec.key)
        newest = held[-1][0]
        closed = self._closed.get(key)
        if closed is None or closed_parts.stale(closed.cut, newest):
            cut = closed_parts.cut_at(newest, self.watermark_ms,
                                      level_of(spec), self.last_emit_ms)
            if cut is None:
                return None
            closed = self._closed[key] = (
                closed_parts.ClosedMerges.build(held, cut, n, step)
                if closed is None or cut < closed.cut
                else closed.advance(held, cut, n, step))
        return closed.spans(held, wanted, n)

    def _sketch_rows(self, previous, watermark, emitted_at) -> pa.Table:
        """The slices to write: those the watermark just closed, and closed
        ones changed since they were written."""
        due = set(self._unwritten)
        self._unwritten.clear()
        if watermark > previous:
            for (_, size, _), by_start in self.slices.items():
                due.update((size, s) for s in by_start
                           if previous < s + size <= watermark)
        parts = []
        for size, name in LEVELS:
            rows = [sketch_windows.sketch_row(method, event_type, start,
                                              by_start[start])
                    for (method, level, event_type), by_start
                    in self.slices.items() if level == size
                    for start in sorted(by_start) if (size, start) in due]
            if rows:
                parts.append(sketch_windows.sketches_table(
                    rows, name, SOURCE, emitted_at))
        return (pa.concat_tables(parts) if parts
                else schema.SKETCHES_SCHEMA.empty_table())

    def _expire(self) -> None:
        if self.watermark_ms <= NO_WATERMARK:
            return
        for (_, size, _), by_start in self.slices.items():
            keep_after = (self.watermark_ms - self._retention[size]
                          - self.allowed_lateness_ms - RETENTION_MARGIN_MS)
            for start in [s for s in by_start if s + size <= keep_after]:
                del by_start[start]
        horizon = (self.watermark_ms - self.allowed_lateness_ms
                   - RETENTION_MARGIN_MS)
        lengths = {s.key: s.length_ms for s in self.specs}
        self.pane_index = {key: i for key, i in self.pane_index.items()
                           if key[1] + lengths[key[0]] > horizon}


def with_pane_index(rows: pa.Table, index: dict[int, int]) -> pa.Table:
    """``rows`` with ``pane_index`` set per window start (epoch ms); every
    start must be in ``index`` (``ValueError`` otherwise: a wrong index
    would hide a pane behind an older one)."""
    starts = rows["window_start"].cast(pa.int64()).to_numpy()
    keys = np.fromiter(index, np.int64, len(index))
    order = np.argsort(keys)
    keys = keys[order]
    at = np.minimum(np.searchsorted(keys, starts), max(keys.size - 1, 0))
    if starts.size and (keys.size == 0 or (keys[at] != starts).any()):
        raise ValueError("a ranked window has no pane index")
    values = np.fromiter(index.values(), np.int32, len(index))[order][at]
    return rows.set_column(rows.schema.get_field_index("pane_index"),
                           schema.RANKED_WINDOWS_SCHEMA.field("pane_index"),
                           pa.array(values))
