"""The approximate path: per-slice sketches, the sketches table, ranked
windows. Thin wiring around ``topk.sketch_windows`` and the CombineFns of
``topk.transforms.approximate``.

It branches off the exact path after de-duplication (``DedupSliceCounts``):
partial counts are already pre-aggregated per (event type, minute, item), so
a sketch is fed one row per distinct item, never one per event.
"""
import typing

import apache_beam as beam
import pyarrow as pa

from topk import sketch_windows, sketches
from topk.schema import DAY_MS, HOUR_MS
from topk.transforms import coders  # noqa: F401 (registers the Arrow coder)
from topk.transforms.approximate import ApproximateTopKFn, MergeSketchesFn
from topk.windows import SLICE_LENGTHS, WindowSpec, duration_ms, now_ms

#: Rows fed to one sketch, keyed by ``(event_type, slice_start_ms)``.
SliceRows = typing.Tuple[typing.Tuple[str, int], pa.Table]



def _with_method(key_and_sketch, method: str):
    (event_type, start), sketch = key_and_sketch
    return (method, event_type, start), sketch


def _to_coarser(key_and_sketch, size_ms: int):
    (method, event_type, start), sketch = key_and_sketch
    return (method, event_type, start - start % size_ms), sketch


class SliceSketchFn(ApproximateTopKFn):
    """``ApproximateTopKFn`` fed in bulk: the accumulator is a
    ``sketch_windows.PendingSketch``, so the tables of one slice (one per
    de-duplication shard) update the sketch once, when the accumulator
    leaves the bundle (``compact``), not once per table. The sketch and its
    guarantees are those of ``ApproximateTopKFn``."""

    def create_accumulator(self):
        return sketch_windows.PendingSketch(super().create_accumulator())

    def add_input(self, acc, table):
        return acc.add(table)

    def merge_accumulators(self, accs):
        return sketch_windows.PendingSketch(super().merge_accumulators(
            [acc.flush() for acc in accs]))

    def compact(self, acc):
        acc.flush()
        return acc

    def extract_output(self, acc):
        return acc.flush()


class ApproximateSlices(beam.PTransform):
    """De-duplicated partial counts -> sketches of every 1m, 1h, 1d slice.

    Takes ``(dedup_shard, pa.Table)`` in ``SLICE_COUNTS_SCHEMA`` (the output
    of ``DedupSliceCounts``); returns ``{"1m": ..., "1h": ..., "1d": ...}``,
    each a PCollection of ``((method, event_type, slice_start_ms),
    sketch)`` with one sketch per method, slice and event type
    (``ALL_TYPES`` included), every one within ``budget_bytes``.
    """

    def __init__(self, methods: list[str],
                 budget_bytes: int = sketches.DEFAULT_BUDGET_BYTES):
        super().__init__()
        if not methods:
            raise ValueError("no approximate method given")
        self._methods = list(methods)
        self._budget_bytes = budget_bytes
        # Fail at construction, not on a worker.
        self._fns = {m: SliceSketchFn(m, budget_bytes) for m in methods}

    def expand(self, partials):
        keyed = partials | "KeyBySlice" >> beam.FlatMap(
            lambda kv: sketch_windows.split_slices(kv[1])
        ).with_output_types(SliceRows)
        # One combine per method (a CombineFn builds one kind of sketch);
        # Beam lifts it, so each bundle's rows are sketched before the
        # shuffle and only sketches (<= budget) cross it.
        minutes = [
            keyed
            | f"SketchMinutes[{m}]" >> beam.CombinePerKey(self._fns[m])
            | f"KeyByMethod[{m}]" >> beam.Map(_with_method, m)
            for m in self._methods]
        minutes = minutes | "AllMethods" >> beam.Flatten()
        hours = (minutes
                 | "KeyByHour" >> beam.Map(_to_coarser, HOUR_MS)
                 | "RollUpHours" >> beam.CombinePerKey(MergeSketchesFn()))
        days = (hours
                | "KeyByDay" >> beam.Map(_to_coarser, DAY_MS)
                | "RollUpDays" >> beam.CombinePerKey(MergeSketchesFn()))
        return {"1m": minutes, "1h": hours, "1d": days}


class SketchTables(beam.PTransform):
    """Slice sketches -> ``sketches`` table rows.

    Takes the dict ``ApproximateSlices`` returns; yields ``pa.Table`` in
    ``SKETCHES_SCHEMA``, one per (slice length, day), the unit the Parquet
    sink writes (so sketches are gathered once, not one tiny table each).
    """

    def __init__(self, source: str = "batch"):
        super().__init__()
        self._source = source

    def expand(self, levels):
        source = self._source

        def locate(key_and_sketch, length):
            # Bytes, not the sketch object, cross the shuffle: the table
            # stores bytes anyway.
            (method, event_type, start), sketch = key_and_sketch
            return ((length, start // DAY_MS), sketch_windows.sketch_row(
                method, event_type, start, sketch))

        def table(where, rows):
            return sketch_windows.sketches_table(list(rows), where[0], source,
                                                 now_ms())

        located = [levels[length] | f"Locate[{length}]" >> beam.Map(
            locate, length) for length in SLICE_LENGTHS]
        return (
            located
            | "AllLengths" >> beam.Flatten()
            | "GatherDay" >> beam.GroupByKey()
            | "ToTable" >> beam.MapTuple(table).with_output_types(pa.Table))


class ApproximateWindows(beam.PTransform):
    """Slice sketches -> ranked top-K windows with bounds, per method.

    Takes the dict ``ApproximateSlices`` returns; yields ``pa.Table`` in
    ``RANKED_WINDOWS_SCHEMA``: for every spec, method and event type
    (``ALL_TYPES`` included), the top ``k`` of every window holding an
    event, with ``count``, ``lower_bound`` and ``upper_bound`` from the
    window's sketch (a merge of its panes, see ``sketch_windows``).
    """

    def __init__(self, specs: list[WindowSpec], k: int, source: str = "batch",
                 pane_timing: str = "batch"):
        super().__init__()
        if k < 1:
            raise ValueError("k must be at least 1")
        self._specs = specs
        self._k = k
        self._source = source
        self._pane_timing = pane_timing

    def expand(self, levels):
        ranked = [levels[sketch_windows.pane_plan(spec)[0]]
                  | f"Rank[{spec.key}]" >> _RankSpec(
                      spec, self._k, self._source, self._pane_timing)
                  for spec in self._specs]
        return ranked | "AllSpecs" >> beam.Flatten()


class _RankSpec(beam.PTransform):
    """Pane sketches -> ranked windows of one spec (``ApproximateWindows``)."""

    def __init__(self, spec: WindowSpec, k: int, source: str,
                 pane_timing: str):
        super().__init__()
        self._spec = spec
        self._k = k
        self._source = source
        self._pane_timing = pane_timing

    def expand(self, panes):
        spec, k, source, timing = (self._spec, self._k, self._source,
                                   self._pane_timing)
        length, n, step = sketch_windows.pane_plan(spec)
        pane_ms = duration_ms(length)

        def rank(event_type, windows):
            return sketch_windows.ranked_windows(
                windows, spec, pane_ms, k, event_type, source=source,
                pane_timing=timing, emitted_at_ms=now_ms())

        if n == 1:
            # Each pane is a window: nothing to merge, nothing to gather.
            return panes | "RankPanes" >> beam.MapTuple(
                lambda key, sketch: rank(key[1], [(key[2] // pane_ms, sketch)])
            ).with_output_types(pa.Table)

        def to_blocks(key_and_sketch):
            (method, event_type, start), sketch = key_and_sketch
            pane = start // pane_ms
            for block, is_next in sketch_windows.blocks_of(pane, n, step):
                yield (method, event_type, block), (is_next, pane, sketch)

        def rank_block(key, panes_of_block):
            _, event_type, block = key
            here, following = [], []
            for is_next, pane, sketch in panes_of_block:
                (following if is_next else here).append((pane, sketch))
            return rank(event_type, sketch_windows.window_sketches(
                block, n, step, here, following))

        return (
            panes
            | "KeyByBlock" >> beam.FlatMap(to_blocks)
            | "GatherBlock" >> beam.GroupByKey()
            | "RankBlock" >> beam.MapTuple(rank_block).with_output_types(
                pa.Table))

