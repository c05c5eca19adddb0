"""The approximate path: per-slice sketches, the sketches table, ranked
windows. Thin wiring around ``topk.approx.sketch_windows`` and the CombineFns of
``topk.transforms.approximate``.

It branches off the exact path after de-duplication (``DedupSliceCounts``):
partial counts are already pre-aggregated per (event type, minute, item), so
a sketch is fed one row per distinct item, never one per event.
"""
import functools
import typing

import apache_beam as beam
import pyarrow as pa

from topk.approx import sketch_windows, sketches
from topk.core.schema import DAY_MS, HOUR_MS
from topk.transforms import coders  # noqa: F401 (registers the Arrow coder)
from topk.transforms.approximate import ApproximateTopKFn, MergeSketchesFn
from topk.transforms.rank import WindowRanking
from topk.core.windows import SLICE_LENGTHS, duration_ms, now_ms

#: Rows fed to the sketches of one run of slices, keyed by ``(event_type,
#: run_start_ms)``.
RunRows = typing.Tuple[typing.Tuple[str, int], pa.Table]

#: What ``ApproximateSlices`` yields: ``((slice_length, method,
#: event_type), {slice_start_ms: sketch})``, the sketches of a run of
#: slices (the minutes of an hour; one hour; one day).
SliceSketches = typing.Tuple[typing.Tuple[str, str, str],
                             typing.Dict[int, typing.Any]]


class SliceRunFn(ApproximateTopKFn):
    """``ApproximateTopKFn`` for every slice of a run at once: keyed by
    ``(event_type, run_start)``, fed ``split_runs`` tables, it yields
    ``{slice_start: sketch}`` (``sketch_windows.SliceRun``: rows added in
    bulk, one element for the minutes of an hour). Each sketch and its
    guarantees are those of ``ApproximateTopKFn``."""

    def create_accumulator(self):
        return sketch_windows.SliceRun(functools.partial(
            sketches.new_sketch, self._method, self._budget_bytes,
            **self._options))

    def add_input(self, acc, table):
        return acc.add(table)

    def merge_accumulators(self, accs):
        accs = list(accs)
        return accs[0].merge(accs[1:])

    def compact(self, acc):
        acc.flush()
        return acc

    def extract_output(self, acc):
        return acc.flush()


def _rolled_up(run, length: str):
    """A run of finer slices -> ``((method, event_type, start), sketch)``
    of the ``length`` slice holding it (a run never straddles one)."""
    (_, method, event_type), by_start = run
    start = next(iter(by_start))
    held = list(by_start.values())
    # One slice is its own roll-up (no step downstream modifies a sketch).
    merged = held[0] if len(held) == 1 else sketches.merge_many(held)
    return (method, event_type, start - start % duration_ms(length)), merged


def _as_run(key_and_sketch, length: str):
    (method, event_type, start), sketch = key_and_sketch
    return (length, method, event_type), sketch_windows.SketchesBySlice(
        {start: sketch})


class ApproximateSlices(beam.PTransform):
    """De-duplicated partial counts -> sketches of every 1m, 1h, 1d slice.

    Takes ``(dedup_shard, pa.Table)`` in ``SLICE_COUNTS_SCHEMA`` (the output
    of ``DedupSliceCounts``); returns a tuple of three PCollections of
    ``SliceSketches``, the minutes (an hour's at a time), the hours and the
    days (``SLICE_LENGTHS``, in that order): one sketch per slice
    length, method, slice and event type (``ALL_TYPES`` included), every
    one within ``budget_bytes``. (Not one flattened PCollection: a local runner
    materialises a Flatten, so every sketch would be encoded and decoded
    once more on its way to the consumers, which turn them into bytes
    anyway; see ``per_length``. Minutes travel an hour at a time: on sparse
    data a minute holds an event or two, and an element per minute costs
    more than its sketch.)
    """

    def __init__(self, methods: list[str],
                 budget_bytes: int = sketches.DEFAULT_BUDGET_BYTES):
        super().__init__()
        if not methods:
            raise ValueError("no approximate method given")
        self._methods = list(methods)
        self._budget_bytes = budget_bytes
        # Fail at construction, not on a worker.
        self._fns = {m: SliceRunFn(m, budget_bytes) for m in methods}

    def expand(self, partials):
        keyed = partials | "KeyByHour" >> beam.FlatMap(
            lambda kv: sketch_windows.split_runs(kv[1], HOUR_MS)
        ).with_output_types(RunRows)
        # One combine per method (a CombineFn builds one kind of sketch);
        # Beam lifts it, so each bundle's rows are sketched before the
        # shuffle and only sketches (<= budget) cross it.
        minutes = [
            keyed
            | f"SketchMinutes[{m}]" >> beam.CombinePerKey(self._fns[m])
            | f"KeyByMethod[{m}]" >> beam.MapTuple(
                lambda key, run, m=m: (("1m", m, key[0]), run))
            for m in self._methods]
        minutes = minutes | "AllMethods" >> beam.Flatten()
        # An hour is its run of minutes merged: no shuffle.
        hours = (minutes
                 | "RollUpHours" >> beam.Map(_rolled_up, "1h")
                 | "HourRuns" >> beam.Map(_as_run, "1h"))
        days = (hours
                | "KeyByDay" >> beam.Map(_rolled_up, "1d")
                | "RollUpDays" >> beam.CombinePerKey(MergeSketchesFn())
                | "DayRuns" >> beam.Map(_as_run, "1d"))
        return minutes, hours, days


def per_length(slices, label: str, steps) -> tuple:
    """``steps()`` (a new PTransform each call: keying, shuffle, finishing)
    applied to each of ``ApproximateSlices``' outputs on its own: a tuple
    of three PCollections, not flattened. A local runner materialises a
    Flatten (its inputs encoded, decoded and encoded again, and held),
    so neither the sketches, nor the elements keyed for a shuffle (a dense
    minute sketch is in three), nor the ranked tables (tens of rows per
    event over a long span) cross one; the sink takes the tuple."""
    return tuple(runs | f"{label}[{length}]" >> steps()
                 for length, runs in zip(SLICE_LENGTHS, slices))


class SketchTables(beam.PTransform):
    """Slice sketches -> ``sketches`` table rows.

    Takes what ``ApproximateSlices`` returns; returns a tuple of
    PCollections (``per_length``) of ``pa.Table`` in ``SKETCHES_SCHEMA``,
    one table per (slice length, day), the unit the Parquet sink writes
    (so sketches are gathered once, not one tiny table each).
    """

    def __init__(self, source: str = "batch"):
        super().__init__()
        self._source = source

    def expand(self, slices):
        source = self._source

        def locate(run):
            # Bytes, not sketch objects, cross the shuffle: the table
            # stores bytes anyway. A run lies within one day.
            (length, method, event_type), by_start = run
            day = next(iter(by_start)) // DAY_MS
            return ((length, day), [
                sketch_windows.sketch_row(method, event_type, start, sketch)
                for start, sketch in by_start.items()])

        def table(where, runs):
            return sketch_windows.sketches_table(
                [row for rows in runs for row in rows], where[0], source,
                now_ms())

        return per_length(slices, "Days", lambda: (
            "Locate" >> beam.Map(locate)
            | "GatherDay" >> beam.GroupByKey()
            | "ToTable" >> beam.MapTuple(table).with_output_types(pa.Table)))


class ApproximateWindows(WindowRanking):
    """Slice sketches -> ranked top-K windows with bounds, per method.

    Takes what ``ApproximateSlices`` returns; returns a tuple of
    PCollections (``per_length``) of ``pa.Table`` in
    ``RANKED_WINDOWS_SCHEMA``: for every spec, method and event type
    (``ALL_TYPES`` included), the top ``k`` of every window holding an
    event, with ``count``, ``lower_bound``, ``upper_bound`` and
    ``guaranteed`` from the window's sketch (a merge of its panes, see
    ``sketch_windows``).

    Pane sketches are keyed by ``(spec, method, event type, group of
    blocks)`` (``sketch_windows.blocks_of``, ``group_of``): one shuffle for
    all specs. A group's windows are ranked in one call, which ranks
    consecutive windows together while their panes stay within
    ``GROUP_BYTES`` (``sketch_windows.ranked_windows_starting``): sparse
    blocks many at a time, a full one alone.
    """

    def expand(self, slices):
        k, source, timing = self._k, self._source, self._pane_timing
        by_key = {spec.key: spec for spec in self._specs}
        by_length = {}  # pane length -> [(spec key, panes, step)]
        for spec in self._specs:
            length, n, step = sketch_windows.pane_plan(spec)
            by_length.setdefault(length, []).append((spec.key, n, step))

        def to_blocks(run):
            (length, method, event_type), by_start = run
            if length not in by_length:
                return
            pane_ms = duration_ms(length)
            keyed = {}  # (spec, method, type, group) -> [(block, pane)]
            for start in by_start:
                pane = start // pane_ms
                for spec_key, n, step in by_length[length]:
                    for block, _ in sketch_windows.blocks_of(pane, n, step):
                        keyed.setdefault(
                            (spec_key, method, event_type,
                             sketch_windows.group_of(block)), []).append(
                                 (block, pane))
            # One element per group a run reaches (an hour of minutes: one
            # or two per spec), not one per pane, and the run's sketches
            # cross the shuffle packed (``sketches.pack``: exact Count-Min
            # sketches as a few arrays), not one pickle each.
            panes = {start // pane_ms: sketch
                     for start, sketch in by_start.items()}
            packed = {}  # panes -> their pack: most keys take the whole run
            for key, where in keyed.items():
                mine = tuple(dict.fromkeys(pane for _, pane in where))
                if mine not in packed:
                    packed[mine] = sketches.pack([panes[p] for p in mine])
                yield key, (where, list(mine), packed[mine])

        def rank_group(key, parts):
            spec_key, _, event_type, _ = key
            held, blocks = {}, set()
            for where, pane_list, packed in parts:
                held.update(zip(pane_list, sketches.unpack(packed)))
                blocks.update(block for block, _ in where)
            yield sketch_windows.rank_blocks(
                by_key[spec_key], k, event_type, sorted(blocks),
                list(held.items()), emitted_at_ms=now_ms(), source=source,
                pane_timing=timing)

        return per_length(slices, "Blocks", lambda: (
            "KeyByBlock" >> beam.FlatMap(to_blocks)
            | "GatherBlocks" >> beam.GroupByKey()
            | "RankBlocks" >> beam.FlatMapTuple(rank_group).with_output_types(
                pa.Table)))
