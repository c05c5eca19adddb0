"""Streaming panes: one item shard's open windows, and their merge (no Beam).

The stream keeps the batch path's algebra (windows are sums of exact slices;
shards partition items, so the merge of the shards' top-K is exact) and adds
*when* a result is emitted, as Beam's triggers would:

- **early** panes, every few seconds of processing time while a window is
  open (its end is after the watermark), for the windows that changed;
- one **on-time** pane when the watermark passes the window's end;
- **late** panes when events within the allowed lateness change a window
  that already had its on-time pane.

Panes are accumulating: each holds the window's full top-K so far, so a
reader takes the latest pane (highest ``emitted_at``) and a replay that
re-emits a pane never double counts.

``ShardPanes`` is one item shard's state: its exact counts at three levels
(1m, 1h, 1d; a window spec reads the level of its step, so a 30-day window
sums 30 day rows, not 43,200 minute rows), the watermark of its last
event-time firing and the time of its last emission. ``PaneMerge`` is one
window spec's merge stage: the latest candidates of every shard for every
open window, and which panes were emitted.

Catch-up. A firing per window end costs a runner round per minute of event
time and stage, whatever the events in it: replaying a day of a backlog was
1,440 rounds per stage. So the stages fire coarsely when their input is far
ahead of the watermark (``coarse_close``): one event-time firing closes up to
``MAX_CLOSE_STEP_MS`` of windows. A shard's on-time panes then leave at its
own firing time, not at each window's end, so the merge cannot take the
watermark's arrival at a window end as "every shard's on-time pane is here".
Instead every item shard reports, at each event-time firing, the watermark
it closed through (``ShardFiring.closed_through_ms``), and the merge closes
a window once every shard has closed through its end
(``PaneMerge.report``). Every shard must therefore fire for every window
that holds data in any shard: each batch's distinct minutes travel to every
shard (``dedup.TOUCHED``), also to shards with no rows of it
(``ShardPanes.touched``).
"""
import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from topk.core import counting, ranking, schema
from topk.streaming import open_tops
from topk.streaming.dedup import (NO_WATERMARK, READ_AT, RETENTION_MARGIN_MS,
                                TOUCHED, late_horizon, reading_watermark)
from topk.core.windows import WindowSpec, floor_to

EARLY, ON_TIME, LATE = "early", "on_time", "late"

#: Seconds of processing time between early panes of an open window.
DEFAULT_EARLY_FIRING_S = 2.0

#: Input whose newest minute is this far behind the wall clock is catching
#: up: the watermark closes its windows within seconds, so an early pane
#: every ``DEFAULT_EARLY_FIRING_S`` would only slow the catch-up.
CATCH_UP_LAG_MS = schema.LIVE_LAG_MS

#: Seconds between early panes while catching up: progress stays visible.
CATCH_UP_EARLY_FIRING_S = 30.0

#: An early firing waits at least this many times the last early firing's
#: cost, so early panes take at most about a fifth of a stage's time. (At
#: 50,000 events/s on two cores, once instead of four times let the sketch
#: stage fall behind: p50 15 s against 6 s.)
FIRING_COST_SHARE = 4
SOURCE = "stream"

#: How much event time one catch-up firing closes at least, when its
#: input is that far ahead: on dense data, on-time panes wait about this
#: long behind the watermark.
MAX_CLOSE_STEP_MS = schema.HOUR_MS

#: Rows of held data (ids, minute counts) one catch-up firing may close
#: beyond its first ``MAX_CLOSE_STEP_MS``: sparse data (a year-long backlog
#: of a few events a minute) closes days per firing instead of an hour, so
#: the number of firings follows the data, not its span.
MAX_CLOSE_ROWS = 50_000

#: Ranked rows one catch-up firing of an exact item shard should emit at
#: most, about (``close_rows``).
MAX_CLOSE_OUTPUT_ROWS = 1_000_000


def close_rows(specs) -> int:
    """``coarse_close``'s ``max_rows`` for an exact item shard ranking
    ``specs``: the held (minute, item) rows whose windows give about
    ``MAX_CLOSE_OUTPUT_ROWS`` ranked rows. A row is in
    ``panes_per_window`` windows of each spec (60 of ``1h/1m``), and on
    sparse data every row of a window is ranked (K does not bind): with
    ``MAX_CLOSE_ROWS`` held rows, a firing over a year-long backlog sent
    the merge elements of hundreds of MB, and an element over 2 GB is
    more than Beam's coders can size (``OverflowError``)."""
    per_row = sum(spec.panes_per_window for spec in specs)
    return max(1, MAX_CLOSE_OUTPUT_ROWS // max(per_row, 1))


def coarse_close(due: int | None, seen_ms: int, skew_ms: int,
                 held: np.ndarray | None = None,
                 max_rows: int | None = None) -> int | None:
    """When to fire next: at ``due`` (the next window or slice end), or,
    when the input is well ahead of it (a catch-up), at the last minute the
    newest element read (``seen_ms``, its timestamp, less the source's
    allowed skew ``skew_ms``: the watermark gets there) has passed, but no
    further than ``MAX_CLOSE_STEP_MS`` after ``due`` plus the event time
    of ``max_rows`` (default ``MAX_CLOSE_ROWS``) more rows of ``held``
    data (the minute of each row the stage holds, any order): one firing
    then closes every window
    ending by then, instead of one firing per minute of event time. Live,
    the input is never more than the skew ahead, and this is ``due``."""
    if due is None:
        return None
    ahead = int(floor_to(seen_ms - skew_ms, schema.MINUTE_MS))
    limit = due + MAX_CLOSE_STEP_MS
    if held is not None:
        rows = MAX_CLOSE_ROWS if max_rows is None else max_rows
        later = held[held >= limit]
        if later.size > rows:
            limit = int(np.partition(later, rows)[rows])
        else:
            limit = ahead
    return max(due, min(ahead, limit))


def newest_seen(seen_ms: int, times: np.ndarray, now_ms: int) -> int:
    """What ``coarse_close`` is told the input reached: the newest of
    ``times`` (event times or minutes of an element), never beyond the
    wall clock ``now_ms``: the watermark follows record times, and an
    idle partition moves it to the wall clock, so it gets there; a
    future-dated event must not hold back the on-time panes before it.
    (The element timestamp is its partition's watermark before the
    batch: a catch-up batch may span a day past it.)"""
    if times.size == 0:
        return seen_ms
    return max(seen_ms, min(int(times.max()), int(now_ms)))


def catching_up(seen_ms: int, now_ms: int) -> bool:
    """Whether a stage whose input reached event time ``seen_ms``
    (``newest_seen``) is catching up at wall time ``now_ms``."""
    return now_ms - seen_ms > CATCH_UP_LAG_MS


def early_delay_s(early_firing_s: float, seen_ms: int, now_ms: int,
                  last_firing_s: float) -> float:
    """Seconds between early panes of a stage whose last early firing took
    ``last_firing_s`` and whose input reached event time ``seen_ms``
    (``newest_seen``): ``early_firing_s`` when live, longer while catching
    up (``CATCH_UP_LAG_MS``) or when firings are dear."""
    delay = early_firing_s
    if catching_up(seen_ms, now_ms):
        delay = max(delay, CATCH_UP_EARLY_FIRING_S)
    return max(delay, FIRING_COST_SHARE * last_firing_s)


def spacing_cost_s(previous_s: float | None, took_s: float) -> float:
    """The cost the next early delay is spaced by (``early_delay_s``'s
    ``last_firing_s``), after an early firing that took ``took_s`` and one
    before it that took ``previous_s`` (``None``: none yet): the lesser.
    Once a minute, the first early firing after the minute closed costs
    several times a plain one (the sketch stage rebuilds the closed parts
    of its sliding windows); spaced by that one firing, the next early
    panes waited four times as long (4-5 s at 50,000 events/s, the p99).
    A lasting rise still counts from the second firing on."""
    return took_s if previous_s is None else min(previous_s, took_s)


def next_early_ms(early_firing_s: float, seen_ms: int, now_ms: int,
                  last_early_ms: int, last_early_s: float) -> int:
    """When the next early firing is due, armed at ``now_ms`` by the
    first element after the last one (at ``last_early_ms``, taking
    ``last_early_s``): ``early_delay_s`` after that firing began, not
    after the element, never before now. (Counted from the element, the
    firing's cost and the next element's transit came on top: early panes
    1.7 s apart with a 1 s delay at 50,000 events/s.)"""
    return max(now_ms, last_early_ms + int(1000 * early_delay_s(
        early_firing_s, seen_ms, now_ms, last_early_s)))


def emits_early(watermark_ms: int | None, last_early_ms: int,
                early_firing_s: float, seen_ms: int, now_ms: int,
                last_early_s: float) -> bool:
    """Whether a firing at ``now_ms`` emits the early panes due (``fire(...,
    early=True)``): a processing-time one (``watermark_ms`` ``None``)
    always; an event-time one of a live stage once ``early_delay_s`` has
    passed since the last firing that did (at ``last_early_ms``, taking
    ``last_early_s``). Never an event-time one while catching up: its
    open windows span the hours a catch-up batch reads ahead of the
    watermark, and the processing-time timer's early pane every
    ``CATCH_UP_EARLY_FIRING_S`` shows the progress."""
    if watermark_ms is None:
        return True
    if catching_up(seen_ms, now_ms):
        return False
    return now_ms - last_early_ms >= 1000 * early_delay_s(
        early_firing_s, seen_ms, now_ms, last_early_s)


# A stage's timer state (a dict in runner state) carries its early-firing
# cadence: ``seen`` (newest event time seen), ``early_at`` (when its last
# early firing began) and ``cost_s``/``took_s`` (``spacing_cost_s``).

def early_timer_ms(timers: dict, early_firing_s: float, now_ms: int) -> int:
    """``next_early_ms`` from a stage's timer state."""
    return next_early_ms(early_firing_s, timers["seen"], now_ms,
                         timers.get("early_at", 0), timers.get("cost_s", 0.0))


def fires_early(timers: dict, watermark_ms: int | None,
                early_firing_s: float, now_ms: int) -> bool:
    """``emits_early`` from a stage's timer state."""
    return emits_early(watermark_ms, timers.get("early_at", 0),
                       early_firing_s, timers["seen"], now_ms,
                       timers.get("cost_s", 0.0))


def record_early(timers: dict, now_ms: int, took_s: float) -> None:
    """Note in a stage's timer state an early firing that began at
    ``now_ms`` and took ``took_s``."""
    timers["early_at"] = now_ms
    timers["cost_s"] = spacing_cost_s(timers.get("took_s"), took_s)
    timers["took_s"] = took_s


@dataclasses.dataclass
class LogSizes:
    """How much a stage's state chunk log holds: ``rewritten`` (any one
    unit: rows, sketches) at its last rewrite of the whole state, and
    ``logged`` appended since. Kept in the stage's small state.

    A rewrite every so many firings cost the whole state that often, and
    the exact stage's state grows for as long as it keeps minutes (an
    hour's windows plus the lateness and ``RETENTION_MARGIN_MS``): at
    50,000 events/s its latency rose through a ten-minute run. Rewriting
    once the appended units outgrow the last rewrite makes each rewrite
    cost at most what was appended since the one before, and a restore read
    at most about twice the state."""
    logged: int = 0
    rewritten: int = 0

    def rewrite_due(self, appended: int) -> bool:
        """Count ``appended`` units of a firing's changes; whether the
        firing should rewrite the whole state instead of appending them
        (then call ``rewrote``)."""
        self.logged += appended
        return self.logged > self.rewritten

    def rewrote(self, whole: int) -> None:
        """The log was replaced by the whole state, ``whole`` units."""
        self.logged, self.rewritten = 0, whole


def touched_minutes(tables) -> np.ndarray:
    """The distinct minutes the ``TOUCHED`` metadata of partial-count
    tables names (empty when none does)."""
    parts = [np.frombuffer(meta[TOUCHED], np.int64)
             for meta in ((t.schema.metadata or {}) for t in tables)
             if TOUCHED in meta]
    return np.unique(np.concatenate(parts)) if parts else np.empty(
        0, np.int64)


def with_touched(table: pa.Table, minutes: np.ndarray, read_at_ms: int
                 ) -> pa.Table:
    """``table`` stamped with ``READ_AT`` and the ``TOUCHED`` minutes."""
    return table.replace_schema_metadata({
        READ_AT: str(int(read_at_ms)).encode(),
        TOUCHED: np.asarray(minutes, np.int64).tobytes()})

#: (slice length in ms, its name) of the levels a shard keeps.
LEVELS = ((schema.MINUTE_MS, "1m"), (schema.HOUR_MS, "1h"),
          (schema.DAY_MS, "1d"))


def level_of(spec: WindowSpec) -> int:
    """The coarsest kept slice length that divides the spec's step."""
    return max(size for size, _ in LEVELS if spec.step_ms % size == 0)


def next_window_end(specs: list[WindowSpec], minutes: np.ndarray,
                    watermark_ms: int) -> int | None:
    """The earliest end after ``watermark_ms`` of the windows of ``specs``
    that contain any of ``minutes``, or ``None``.

    One pass over ``minutes``, whatever their span: a minute ``m`` is in
    the windows ending at the step boundaries from ``floor(m) + step`` to
    ``floor(m) + length``, so the earliest of them after the watermark is
    the later of ``floor(m) + step`` and the first boundary after the
    watermark, for the earliest minute with a window still open."""
    minutes = np.asarray(minutes, np.int64)
    ends = []
    for spec in specs:
        step = spec.step_ms
        pane = floor_to(minutes, step)
        open_ = pane[pane + spec.length_ms > watermark_ms]
        if open_.size:
            ends.append(max(int(open_.min()) + step,
                            int(floor_to(watermark_ms, step)) + step))
    return min(ends) if ends else None


@dataclasses.dataclass
class ShardFiring:
    """What one firing of a shard emits."""
    #: SLICES_SCHEMA rows, full counts: the changed rows of the changed
    #: minutes, and at an event-time firing every row of the minutes, hours
    #: and days changed since the last one.
    slices: pa.Table
    #: (spec, pane timing, the shard's top-K of those windows)
    windows: list[tuple[WindowSpec, str, ranking.WindowTopK]]
    emitted_at_ms: int
    #: Partial counts refused as late (SLICE_COUNTS_SCHEMA), see ``fire``.
    late: pa.Table
    #: The partials this firing counted (SLICE_COUNTS_SCHEMA, 1m): the
    #: ``("delta", absorbed)`` chunk to persist.
    absorbed: pa.Table
    #: An event-time firing's watermark: every window ending by then has
    #: had its on-time pane from this shard (``None`` for early firings).
    closed_through_ms: int | None = None
    #: The watermark of the shard's previous event-time firing: a merge
    #: chains a shard's reports (``PaneMerge.report``).
    closed_from_ms: int = NO_WATERMARK


class ShardPanes:
    """One item shard's exact counts of its open windows (see the module
    docstring). ``meta``, ``level_chunks``, ``ShardFiring.absorbed`` and
    ``from_chunks`` persist it in runner state."""

    def __init__(self, specs: list[WindowSpec], k: int,
                 allowed_lateness_ms: int):
        self.specs = list(specs)
        self.k = k
        self.allowed_lateness_ms = allowed_lateness_ms
        self.counts = {size: schema.SLICE_COUNTS_SCHEMA.empty_table()
                       for size, _ in LEVELS}
        self.watermark_ms = NO_WATERMARK
        self.last_emit_ms = 0
        #: Minutes with data in any shard (``dedup.TOUCHED``) whose windows
        #: are not all closed: this shard fires for them, data or not.
        self.touched = np.empty(0, np.int64)
        #: spec -> the kept top K of its live open windows; made again
        #: when needed, so never runner state.
        self._open: dict[WindowSpec, open_tops.OpenTops] = {}
        #: Levels no spec ranks (only the slices output reads them): their
        #: partials wait here until an event-time firing (``_settle``),
        #: since adding a second of counts to a day of them every second
        #: costs the day's rows.
        self._ranked = {level_of(s) for s in self.specs}
        self._unsettled: dict[int, list[pa.Table]] = {
            size: [] for size, _ in LEVELS if size not in self._ranked}
        #: Minutes changed since the last event-time firing: their hours
        #: and days are written to the slices output then (``fire``).
        self.unwritten = np.empty(0, np.int64)
        #: spec key -> starts of open windows that changed at an event-time
        #: firing: their early pane waits for the next processing-time one.
        self.deferred: dict[str, np.ndarray] = {}
        # How long each level's rows can still change a result or a slice.
        self._retention = {size: max([size] + [
            s.length_ms for s in self.specs if level_of(s) == size])
            for size, _ in LEVELS}

    # Runner state: ``meta()`` (small, rewritten at every firing) and a log
    # of chunks: the partials each firing absorbed (``("delta", table)``),
    # and from time to time the whole counts instead (``level_chunks``).
    # Appending what changed costs the change; rewriting every count at
    # every firing cost the whole state each time.

    def meta(self) -> dict:
        return {"watermark_ms": self.watermark_ms,
                "last_emit_ms": self.last_emit_ms, "deferred": self.deferred,
                "touched": self.touched, "unwritten": self.unwritten}

    def level_counts(self, size: int) -> pa.Table:
        """The held counts of slice length ``size`` (``LEVELS``), waiting
        partials added."""
        self._settle()
        self._expire()
        return self.counts[size]

    def level_chunks(self) -> list[tuple]:
        """The counts as chunks that replace every chunk so far."""
        self._settle()
        return [("level", size, self.counts[size]) for size, _ in LEVELS]

    @classmethod
    def from_chunks(cls, specs, k, allowed_lateness_ms, meta: dict | None,
                    chunks) -> "ShardPanes":
        """Rebuild from ``meta()`` and the chunk log, in any order."""
        panes = cls(specs, k, allowed_lateness_ms)
        if meta:
            panes.watermark_ms = meta["watermark_ms"]
            panes.last_emit_ms = meta["last_emit_ms"]
            panes.deferred = meta["deferred"]
            panes.touched = np.array(meta.get("touched", []), np.int64)
            panes.unwritten = np.array(meta.get("unwritten", []), np.int64)
        levels = {size: [panes.counts[size]] for size, _ in LEVELS}
        deltas = []
        for chunk in chunks:
            if chunk[0] == "level":
                levels[chunk[1]].append(chunk[2])
            else:
                deltas.append(chunk[1])
        panes.counts = {size: counting.sort_by_slice(
            counting.merge_counts(tables)) for size, tables in levels.items()}
        if deltas:
            panes._absorb(counting.merge_counts(deltas))
        panes._expire()
        return panes

    def next_close(self) -> int | None:
        """When the next on-time pane is due: the earliest end, after the
        watermark, of a window holding counted data here or data of any
        shard (``touched``)."""
        return next_window_end(self.specs, self.held_minutes(),
                               self.watermark_ms)

    def held_minutes(self) -> np.ndarray:
        """The minute of every held one-minute row, and the touched
        minutes (for ``coarse_close``); hour and day rows roll those up."""
        return np.concatenate([
            self.counts[schema.MINUTE_MS]["slice_start"].to_numpy(),
            self.touched])

    def fire(self, pending: list[pa.Table], now_ms: int,
             watermark_ms: int | None = None, early: bool = False
             ) -> ShardFiring:
        """Absorb the partial counts that arrived since the last firing
        (``SLICE_COUNTS_SCHEMA``, one-minute slices) and emit panes.

        ``watermark_ms`` is given by an event-time firing: windows ending by
        then get their on-time pane (all of them, changed or not), changed
        closed windows a late pane; the changed open windows wait for the
        next processing-time firing (``None``), which emits every window
        changed since the last early pane, early or late by the watermark
        known so far (of the open ones, those near the first:
        ``_near_open``). (During a catch-up the watermark passes a minute
        every few milliseconds: ranking the 60 open windows of a sliding
        hour at each would cost far more than the on-time panes, and be
        superseded at once.) ``early``: an event-time firing emits those
        early panes too (``emits_early``): a runner may run a key's
        event-time work ahead of its processing-time timer for seconds.

        Partials older than the lateness horizon of this shard's own
        watermark are refused (``ShardFiring.late``): their windows may be
        expired here already, and a pane built from part of a window would
        replace a complete one. The dedup stage routes late events out
        before they get here; this catches what a dedup shard that had not
        yet seen the watermark let through (right after a start).
        """
        pending = list(pending)
        self.touched = np.union1d(self.touched, touched_minutes(pending))
        pending, late = split_late(pending, self.watermark_ms,
                                    self.allowed_lateness_ms)
        absorbed = counting.merge_counts(pending)
        dirty = self._absorb(absorbed)
        previous = self.watermark_ms
        watermark = previous if watermark_ms is None else max(previous,
                                                              watermark_ms)
        emitted_at = max(int(now_ms), self.last_emit_ms + 1)
        self.last_emit_ms = emitted_at
        windows = []
        for spec in self.specs:
            windows.extend(self._spec_panes(spec, dirty, previous, watermark,
                                            defer_early=watermark_ms
                                            is not None and not early))
        self.unwritten = np.union1d(self.unwritten, dirty)
        if watermark_ms is None:
            written = self._slice_rows(dirty, emitted_at, LEVELS[:1],
                                       absorbed["item_id"])
        else:
            self._settle()
            written = self._slice_rows(self.unwritten, emitted_at, LEVELS)
            self.unwritten = np.empty(0, np.int64)
        firing = ShardFiring(written, windows,
                             emitted_at, late, absorbed,
                             None if watermark_ms is None else watermark,
                             previous)
        self.watermark_ms = watermark
        self._expire()
        return firing

    def _absorb(self, partials: pa.Table) -> np.ndarray:
        if partials.num_rows == 0:
            return np.empty(0, np.int64)
        for size, _ in LEVELS:
            if size in self._unsettled:
                self._unsettled[size].append(partials)
            else:
                self._add(size, partials)
        dirty = np.unique(partials["slice_start"].to_numpy())
        for tops in self._open.values():
            tops.absorb(partials)
        return dirty

    def _add(self, size: int, partials: pa.Table) -> None:
        part = partials if size == schema.MINUTE_MS else counting.rollup(
            partials, size)
        self.counts[size] = counting.add_counts(self.counts[size], part)

    def _settle(self) -> None:
        """Add the partials waiting for the levels no spec ranks."""
        for size, waiting in self._unsettled.items():
            if waiting:
                self._add(size, counting.merge_counts(waiting))
                waiting.clear()

    def _spec_panes(self, spec, dirty, previous, watermark, defer_early):
        table = self.counts[level_of(spec)]
        wanted = windows_due(spec, dirty, table["slice_start"].to_numpy(),
                             previous, watermark, self.deferred, defer_early)
        if wanted.size == 0:
            return []
        timing = pane_timings(spec, wanted, previous, watermark)
        parts = self._kept_panes(spec, table, wanted, wanted[timing == EARLY])
        covered = np.unique(np.concatenate(
            [np.empty(0, np.int64)] + [p.totals["window_start"].to_numpy()
                                       for p in parts]))
        rest = wanted[~np.isin(wanted, covered)]
        if rest.size:
            parts.append(self._rank_windows(spec, table, rest))
        top = ranking.WindowTopK(
            pa.concat_tables([ranking.CANDIDATES_SCHEMA.empty_table()]
                             + [p.candidates for p in parts]),
            pa.concat_tables([ranking.TOTALS_SCHEMA.empty_table()]
                             + [p.totals for p in parts]))
        out = []
        for name in (EARLY, ON_TIME, LATE):
            picked = wanted[timing == name]
            if picked.size:
                out.append((spec, name, _windows_of(top, picked)))
        return out

    def _kept_panes(self, spec, table, wanted, early
                    ) -> list[ranking.WindowTopK]:
        """The panes of the windows of ``wanted`` ranked from their kept top
        K (``open_tops.OpenTops``); the others go the long way.

        Windows are kept while live: a firing with at most ``2 *
        panes_per_window`` ``early`` windows (a batch of the open minute
        and its stragglers) ranks those not kept yet (born in this batch,
        or after a restart) from all their rows once, and keeps them. A
        catch-up's batches span many windows, each ranked once: one
        ranking of them all costs less. A kept window's on-time pane comes
        from what it kept too."""
        tops = self._open.get(spec)
        live = 0 < early.size <= 2 * spec.panes_per_window
        if live and tops is None:
            tops = self._open[spec] = open_tops.OpenTops(spec, self.k)
        if tops is None:
            return []
        known = np.isin(wanted, np.fromiter(tops.windows, np.int64))
        parts = []
        fresh = early[~np.isin(early, wanted[known])] if live else early[:0]
        if fresh.size:
            top = self._rank_windows(spec, table, fresh)
            tops.keep(top, fresh)
            parts.append(top)
        if known.any():
            parts.append(tops.top_k(table, wanted[known]))
        return parts

    def _rank_windows(self, spec, table, starts) -> ranking.WindowTopK:
        """The top K of the windows ``starts`` of ``spec`` from all their
        rows of ``table``."""
        rows = counting.slices_between(table, int(starts.min()),
                                       int(starts.max()) + spec.length_ms)
        return ranking.shard_top_k(rows, [spec], self.k,
                                   window_starts=starts)[spec]

    def _slice_rows(self, dirty: np.ndarray, emitted_at: int, levels,
                    items=None) -> pa.Table:
        """The full counts of the slices of ``levels`` holding a minute of
        ``dirty``; with ``items``, of those items only. (An early firing
        writes the minute rows of the items it absorbed: readers take the
        latest row per slice and item, and the whole open minute every
        second was ~40k rows a shard at 25,000 events/s, for 5k changed.
        Minutes only: an hour's or a day's full counts every second would
        write far more rows than events arrive, and an open hour or day is
        read rarely.)"""
        parts = []
        for size, name in levels:
            if dirty.size == 0:
                break
            rows = counting.slices_in(self.counts[size], floor_to(dirty, size))
            if items is not None:
                rows = rows.filter(pc.is_in(rows["item_id"],
                                            value_set=pc.unique(items)))
            parts.append(counting.to_slices_table(rows, name, SOURCE,
                                                  emitted_at))
        return (pa.concat_tables(parts) if parts
                else schema.SLICES_SCHEMA.empty_table())

    def _expire(self) -> None:
        if self.watermark_ms <= NO_WATERMARK:
            return
        # A touched minute is done once every window holding it has ended.
        longest = max(s.length_ms for s in self.specs)
        self.touched = self.touched[self.touched + longest > self.watermark_ms]
        for tops in self._open.values():
            tops.expire(self.watermark_ms)
        for size, _ in LEVELS:
            keep_after = (self.watermark_ms - self._retention[size]
                          - self.allowed_lateness_ms - RETENTION_MARGIN_MS)
            table = self.counts[size]
            if table.num_rows:
                # Sorted by slice: the expired rows are a prefix.
                self.counts[size] = table.slice(int(np.searchsorted(
                    table["slice_start"].to_numpy(), keep_after - size,
                    side="right")))


def windows_due(spec: WindowSpec, dirty: np.ndarray, held: np.ndarray,
                previous: int, watermark: int, deferred: dict,
                defer_early: bool) -> np.ndarray:
    """Starts of the windows of ``spec`` to emit at a firing: those holding
    a changed slice (``dirty`` slice starts), and those the watermark just
    closed (ends in ``(previous, watermark]``, among the windows of the
    ``held`` slice starts). An event-time firing (``defer_early``) keeps the
    changed open windows in ``deferred`` (spec key -> starts) for the next
    processing-time firing, which emits those near the first open window
    (``_near_open``; see ``ShardPanes.fire``)."""
    length = spec.length_ms
    wanted = spec.window_starts_for(dirty) if dirty.size else np.empty(
        0, np.int64)
    waiting = deferred.pop(spec.key, np.empty(0, np.int64))
    if watermark > previous and held.size:
        # Only slices in a window ending in (previous, watermark]: a firing
        # costs what it closes, not all that is held.
        pane = floor_to(held, spec.step_ms)
        held = held[(pane + length > previous)
                    & (pane + spec.step_ms <= watermark)]
        starts = spec.window_starts_for(np.unique(held))
        ends = starts + length
        wanted = np.union1d(wanted, starts[(ends > previous)
                                           & (ends <= watermark)])
    if not defer_early:
        return _near_open(spec, np.union1d(wanted, waiting), watermark)
    is_open = wanted + length > watermark
    waiting = np.union1d(waiting[waiting + length > watermark],
                         wanted[is_open])
    if waiting.size:
        deferred[spec.key] = waiting
    return wanted[~is_open]


def _near_open(spec: WindowSpec, starts: np.ndarray,
               watermark: int) -> np.ndarray:
    """``starts`` without the open windows (ending after ``watermark``)
    that start more than a window's length plus ``MAX_CLOSE_STEP_MS``
    after the first open one. Live, every open window is that close to
    the first. A catch-up's batches may bring months of data ahead of the
    watermark at once: an early pane of every window they touch (a year
    of ``1h/1m`` windows, tens of millions of rows in one element, more
    than Beam's coders can size) would be superseded by its on-time pane,
    which the watermark's firings emit anyway, a bounded span at a time."""
    is_open = starts + spec.length_ms > watermark
    if not is_open.any():
        return starts
    near = starts < starts[is_open].min() + spec.length_ms + MAX_CLOSE_STEP_MS
    return starts[~is_open | near]


def pane_timings(spec: WindowSpec, starts: np.ndarray, previous: int,
                 watermark: int) -> np.ndarray:
    """The pane timing of each window of ``starts`` at a firing that moved
    the watermark from ``previous`` to ``watermark``."""
    ends = starts + spec.length_ms
    return np.where(ends > watermark, EARLY,
                    np.where(ends > previous, ON_TIME, LATE))


def split_late(tables: list[pa.Table], watermark_ms: int,
               lateness_ms: int) -> tuple[list[pa.Table], pa.Table]:
    """Minute partials (stamped with ``READ_AT``) -> (those within the
    lateness horizon, each without the stamp; the refused rest)."""
    on_time, late = [], []
    for t in tables:
        read_at = (t.schema.metadata or {}).get(READ_AT)
        horizon = late_horizon(reading_watermark(
            watermark_ms, int(read_at) if read_at else None), lateness_ms)
        is_late = pc.less(t["slice_start"], horizon)
        t = t.replace_schema_metadata(None)
        on_time.append(t.filter(pc.invert(is_late)))
        late.append(t.filter(is_late))
    return on_time, (pa.concat_tables(late)
                     if late else schema.SLICE_COUNTS_SCHEMA.empty_table())


def _windows_of(top: ranking.WindowTopK, starts: np.ndarray
                ) -> ranking.WindowTopK:
    keys = pa.array(starts)
    return ranking.WindowTopK(
        top.candidates.filter(pc.is_in(top.candidates["window_start"], keys)),
        top.totals.filter(pc.is_in(top.totals["window_start"], keys)))


@dataclasses.dataclass
class _WindowPanes:
    on_time_done: bool = False
    next_index: int = 0


#: Shard numbers fit below this, so ``window_start * _SHARD_SLOTS + shard``
#: is one int64 key per (window, shard) (epoch-ms starts stay below 2^51).
_SHARD_SLOTS = 4096


def _held_keys(table: pa.Table) -> pa.Array:
    return pc.add(pc.multiply(table["window_start"], _SHARD_SLOTS),
                  table["shard"])


def _with_shard(table: pa.Table, shard: int) -> pa.Table:
    return table.append_column(
        "shard", pa.array(np.full(table.num_rows, shard, np.int64)))


class PaneMerge:
    """One window spec's merge of the shards' panes.

    Keeps every shard's latest top-K candidates and totals per open window:
    updates carry their shard firing's ``emitted_at`` as a version, and an
    update older than the one held is ignored (a runner may deliver a
    shard's early pane after its on-time pane). Early updates are merged
    and emitted at once. Updates from shards that closed a window (on-time,
    late) are only stored until the merge's watermark passes the window's
    end (``tick``): by then every shard's on-time pane has arrived and the
    one on-time pane counts everything on time. After that, every update
    is a late pane. The merge's watermark is what every one of the
    ``shards`` reported closing through (``report``,
    ``shards_watermark``; see the module docstring, "Catch-up").

    The held candidates and totals of all windows and shards are two
    tables with a ``shard`` column, not one small table per window and
    shard: the merge is runner state, read and written at every firing,
    and a few large tables serialise in one pass where thousands of small
    ones cost a Python round per table.
    """

    def __init__(self, spec: WindowSpec, k: int, allowed_lateness_ms: int,
                 shards: int = 1):
        self.spec = spec
        self.k = k
        self.allowed_lateness_ms = allowed_lateness_ms
        self.shards = shards
        #: shard -> the watermark its chained reports closed through.
        self.closed: dict[int, int] = {}
        #: shard -> {from: through} of reports that arrived ahead of the
        #: chain.
        self.reports: dict[int, dict[int, int]] = {}
        self.candidates = _with_shard(ranking.CANDIDATES_SCHEMA.empty_table(),
                                      0)
        self.totals = _with_shard(ranking.TOTALS_SCHEMA.empty_table(), 0)
        self.versions: dict[tuple[int, int], int] = {}
        self.windows: dict[int, _WindowPanes] = {}
        self.watermark_ms = NO_WATERMARK
        self.refused = 0  # shard panes of windows already expired here
        self.last_emit_ms = 0

    def report(self, shard: int, closed_from_ms: int,
               closed_through_ms: int) -> None:
        """Shard ``shard`` had an event-time firing that moved its
        watermark from ``closed_from_ms`` to ``closed_through_ms``: its
        on-time panes of the windows ending in between came with it.

        Reports may arrive out of order, and a later one does not vouch
        for the panes of an earlier one still on its way: a shard counts
        as closed through a point only once its reports chain up to it
        from the start."""
        self.reports.setdefault(shard, {})[closed_from_ms] = max(
            closed_through_ms,
            self.reports.get(shard, {}).get(closed_from_ms, NO_WATERMARK))
        chain = self.reports[shard]
        at = self.closed.get(shard, NO_WATERMARK)
        while at in chain:
            at = max(at, chain.pop(at))
        self.closed[shard] = at

    def shards_watermark(self) -> int:
        """The merge's watermark: just after the point every shard closed
        through (a shard firing at a window's end emits its on-time pane;
        ``tick`` closes windows ending before its watermark), or
        ``NO_WATERMARK`` until each of the ``shards`` reported."""
        low = shards_watermark(self.closed, self.shards)
        return low if low == NO_WATERMARK else low + 1

    def update(self, shard: int, timing: str, top: ranking.WindowTopK,
               version: int = 0
               ) -> list[tuple[str, pa.Table, dict[int, int]]]:
        """``advance`` with one shard pane and no new watermark."""
        return self.advance([(shard, version, timing, top)])

    def advance(self, updates, watermark_ms: int | None = None
                ) -> list[tuple[str, pa.Table, dict[int, int]]]:
        """Take shard panes ``(shard, version, timing, top)`` (``version``:
        the shard firing's emitted_at), then (with ``watermark_ms``)
        ``tick``; returns ``(timing, merged, pane_index by window_start)``
        per timing to emit, ``merged`` as ``ranking.merge_window_top_k``
        yields it: one pane per changed window, early while the window is
        open, late after its on-time pane. One round: a window that the
        tick closes gets its on-time pane only,
        not also an early pane of the updates it already counts (two panes
        of one window emitted together would share an ``emitted_at``, and
        a reader could not tell which is the latest)."""
        emit = self._absorb(updates)
        closing = set(self._closed(watermark_ms)) if watermark_ms else set()
        for start in closing:
            if emit.get(start) == EARLY:
                del emit[start]
        by_timing: dict[str, list[int]] = {}
        for start, name in sorted(emit.items()):
            by_timing.setdefault(name, []).append(start)
        out = [self._pane(name, starts) for name, starts in by_timing.items()]
        if watermark_ms is not None:
            out += self.tick(watermark_ms)
        return out

    def _absorb(self, updates) -> dict[int, str]:
        """Fold ``updates`` into the held rows; returns the timing of the
        pane each changed window is due."""
        emit: dict[int, str] = {}
        # Newest version first per (window, shard): the rows kept are those
        # of the newest update, whatever order the log holds them in.
        accepted: dict[tuple[int, int], tuple[int, int]] = {}
        for i, (shard, version, timing, top) in enumerate(updates):
            for start in self._accepted_windows(shard, version, top):
                key = (start, shard)
                if accepted.get(key, (-1, -1))[0] <= version:
                    accepted[key] = (version, i)
                if self.windows[start].on_time_done:
                    emit[start] = LATE
                elif timing == EARLY:
                    emit.setdefault(start, EARLY)
        self._replace(updates, accepted)
        return emit

    def _accepted_windows(self, shard, version, top) -> list[int]:
        """The windows of a shard pane that are neither expired nor
        overtaken by a newer pane of the same shard; records its version."""
        starts = np.unique(np.concatenate([
            top.totals["window_start"].to_numpy(),
            top.candidates["window_start"].to_numpy()]))
        changed = []
        for start in starts.tolist():
            if start <= self._horizon():
                # Expired: what this merge held of the window is gone, so
                # a pane from this update alone would be partial.
                self.refused += 1
                continue
            if self.versions.get((start, shard), -1) > version:
                continue
            self.versions[(start, shard)] = version
            self.windows.setdefault(start, _WindowPanes())
            changed.append(start)
        return changed

    def _replace(self, updates, accepted) -> None:
        """Swap in the accepted updates' rows for what was held of the same
        (window, shard)."""
        if not accepted:
            return
        replaced = pa.array([start * _SHARD_SLOTS + shard
                             for start, shard in accepted], pa.int64())
        new_cands, new_totals = [self.candidates.filter(pc.invert(pc.is_in(
            _held_keys(self.candidates), replaced)))], [self.totals.filter(
                pc.invert(pc.is_in(_held_keys(self.totals), replaced)))]
        by_update: dict[int, list[int]] = {}
        for (start, _), (_, i) in accepted.items():
            by_update.setdefault(i, []).append(start)
        for i, starts in by_update.items():
            shard, _, _, top = updates[i]
            keys = pa.array(starts, pa.int64())
            new_cands.append(_with_shard(top.candidates.filter(
                pc.is_in(top.candidates["window_start"], keys)), shard))
            new_totals.append(_with_shard(top.totals.filter(
                pc.is_in(top.totals["window_start"], keys)), shard))
        self.candidates = pa.concat_tables(new_cands).combine_chunks()
        self.totals = pa.concat_tables(new_totals).combine_chunks()

    def tick(self, watermark_ms: int
             ) -> list[tuple[str, pa.Table, dict[int, int]]]:
        """The watermark reached ``watermark_ms``: the on-time panes of the
        windows that ended before it, then expiry."""
        self.watermark_ms = max(self.watermark_ms, watermark_ms)
        closed = self._closed(self.watermark_ms)
        out = [self._pane(ON_TIME, sorted(closed))] if closed else []
        for start in closed:
            self.windows[start].on_time_done = True
        horizon = self._horizon()
        expired = [s for s in self.windows if s <= horizon]
        if expired:
            for start in expired:
                del self.windows[start]
            for key in [key for key in self.versions if key[0] <= horizon]:
                del self.versions[key]
            self.candidates = self.candidates.filter(
                pc.greater(self.candidates["window_start"], horizon))
            self.totals = self.totals.filter(
                pc.greater(self.totals["window_start"], horizon))
        return out

    def emission_time(self, now_ms: int) -> int:
        """``emitted_at`` for the panes of this round: after every earlier
        round's, even within one millisecond (readers take the latest)."""
        self.last_emit_ms = max(int(now_ms),
                                self.last_emit_ms + 1)
        return self.last_emit_ms

    def _closed(self, watermark_ms: int) -> list[int]:
        """Open windows (no on-time pane yet) that end before
        ``watermark_ms``."""
        watermark_ms = max(self.watermark_ms, watermark_ms)
        return [s for s, p in self.windows.items() if not p.on_time_done
                and s + self.spec.length_ms < watermark_ms]

    def _pane(self, timing: str, window_starts: list[int]):
        keys = pa.array(window_starts, pa.int64())
        held = ranking.WindowTopK(
            self.candidates.filter(pc.is_in(self.candidates["window_start"],
                                            keys)).drop_columns(["shard"]),
            self.totals.filter(pc.is_in(self.totals["window_start"],
                                        keys)).drop_columns(["shard"]))
        index = {}
        for start in window_starts:
            index[start] = self.windows[start].next_index
            self.windows[start].next_index += 1
        return timing, ranking.merge_window_top_k([held], self.k), index

    def _horizon(self) -> int:
        """Windows starting at or before this are expired."""
        if self.watermark_ms <= NO_WATERMARK:
            return NO_WATERMARK
        return (self.watermark_ms - self.allowed_lateness_ms
                - RETENTION_MARGIN_MS - self.spec.length_ms)


def shards_watermark(closed: dict[int, int], shards: int) -> int:
    """The minimum of the watermarks ``closed`` (shard -> ms) over shards
    ``0 .. shards - 1``; ``NO_WATERMARK`` if one has not reported yet."""
    if any(shard not in closed for shard in range(shards)):
        return NO_WATERMARK
    return min(closed[shard] for shard in range(shards))


def ranked_pane_rows(spec: WindowSpec, timing: str, merged: pa.Table,
                     pane_index: dict[int, int], emitted_at_ms: int,
                     watermark_ms: int) -> pa.Table:
    """A merged pane as ``ranked_windows`` rows (``source = stream``),
    emitted when the merge's watermark was ``watermark_ms``."""
    rows = ranking.with_input_watermark(
        ranking.to_ranked_windows(merged, spec, pane_timing=timing,
                                  source=SOURCE, emitted_at_ms=emitted_at_ms),
        watermark_ms if watermark_ms > NO_WATERMARK else None)
    starts = merged["window_start"].to_numpy()
    index = np.array([pane_index[int(s)] for s in starts], np.int32)
    return rows.set_column(rows.schema.get_field_index("pane_index"),
                           schema.RANKED_WINDOWS_SCHEMA.field("pane_index"),
                           pa.array(index, pa.int32()))
