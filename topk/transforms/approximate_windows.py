"""The approximate path: per-slice sketches, the sketches table, ranked
windows. Thin wiring around ``topk.approx.sketch_windows`` and the CombineFns of
``topk.transforms.approximate``.

It branches off the exact path after de-duplication (``DedupSliceCounts``):
partial counts are already pre-aggregated per (event type, minute, item), so
a sketch is fed one row per distinct item, never one per event.
"""
import pickle
import typing

import apache_beam as beam
import pyarrow as pa

from topk.approx import sketch_windows, sketches
from topk.core.schema import DAY_MS
from topk.transforms import coders  # noqa: F401 (registers the Arrow coder)
from topk.transforms.approximate import ApproximateTopKFn, MergeSketchesFn
from topk.transforms.rank import WindowRanking
from topk.core.windows import duration_ms, now_ms

#: Rows fed to one sketch, keyed by ``(event_type, slice_start_ms)``.
SliceRows = typing.Tuple[typing.Tuple[str, int], pa.Table]


def _as_minute(key_and_sketch, method: str):
    (event_type, start), sketch = key_and_sketch
    return ("1m", method, event_type, start), sketch


def _to_coarser(key_and_sketch, length: str):
    (_, method, event_type, start), sketch = key_and_sketch
    return (length, method, event_type,
            start - start % duration_ms(length)), sketch


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
    of ``DedupSliceCounts``); returns one PCollection of ``((slice_length,
    method, event_type, slice_start_ms), sketch)`` with one sketch per
    slice length (``1m``, ``1h``, ``1d``), method, slice and event type
    (``ALL_TYPES`` included), every one within ``budget_bytes``. (One
    PCollection, not one per length: every step downstream is then one
    transform, and a pipeline pays a fixed cost per transform.)
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
            | f"KeyByMethod[{m}]" >> beam.Map(_as_minute, m)
            for m in self._methods]
        minutes = minutes | "AllMethods" >> beam.Flatten()
        hours = (minutes
                 | "KeyByHour" >> beam.Map(_to_coarser, "1h")
                 | "RollUpHours" >> beam.CombinePerKey(MergeSketchesFn()))
        days = (hours
                | "KeyByDay" >> beam.Map(_to_coarser, "1d")
                | "RollUpDays" >> beam.CombinePerKey(MergeSketchesFn()))
        return (minutes, hours, days) | "AllLengths" >> beam.Flatten()


class SketchTables(beam.PTransform):
    """Slice sketches -> ``sketches`` table rows.

    Takes what ``ApproximateSlices`` returns; yields ``pa.Table`` in
    ``SKETCHES_SCHEMA``, one per (slice length, day), the unit the Parquet
    sink writes (so sketches are gathered once, not one tiny table each).
    """

    def __init__(self, source: str = "batch"):
        super().__init__()
        self._source = source

    def expand(self, slices):
        source = self._source

        def locate(key_and_sketch):
            # Bytes, not the sketch object, cross the shuffle: the table
            # stores bytes anyway.
            (length, method, event_type, start), sketch = key_and_sketch
            return ((length, start // DAY_MS), sketch_windows.sketch_row(
                method, event_type, start, sketch))

        def table(where, rows):
            return sketch_windows.sketches_table(list(rows), where[0], source,
                                                 now_ms())

        return (
            slices
            | "Locate" >> beam.Map(locate)
            | "GatherDay" >> beam.GroupByKey()
            | "ToTable" >> beam.MapTuple(table).with_output_types(pa.Table))


class ApproximateWindows(WindowRanking):
    """Slice sketches -> ranked top-K windows with bounds, per method.

    Takes what ``ApproximateSlices`` returns; yields ``pa.Table`` in
    ``RANKED_WINDOWS_SCHEMA``: for every spec, method and event type
    (``ALL_TYPES`` included), the top ``k`` of every window holding an
    event, with ``count``, ``lower_bound``, ``upper_bound`` and
    ``guaranteed`` from the window's sketch (a merge of its panes, see
    ``sketch_windows``).

    Pane sketches are keyed by ``(spec, method, event type, group of
    blocks)`` (``sketch_windows.blocks_of``, ``group_of``): one shuffle for
    all specs. A group's blocks are ranked in batches of consecutive blocks
    (``sketch_windows.block_batches``): sparse blocks many at a time, a
    full one alone, so a call holds at most about ``GROUP_BYTES`` of
    sketches whatever the data's density.
    """

    def expand(self, slices):
        k, source, timing = self._k, self._source, self._pane_timing
        by_key = {spec.key: spec for spec in self._specs}
        by_length = {}
        for spec in self._specs:
            by_length.setdefault(sketch_windows.pane_plan(spec)[0],
                                 []).append(spec)

        def to_blocks(key_and_sketch):
            (length, method, event_type, start), sketch = key_and_sketch
            if length not in by_length:
                return
            pane = start // duration_ms(length)
            # The pickled sketch, as bytes, crosses the shuffle: the runner
            # decodes and re-encodes grouped values, which costs a copy for
            # bytes but a whole deserialization for a sketch, and a pickle
            # carries what makes unpickling cheap (Count-Min: the hashes).
            data = pickle.dumps(sketch)
            for spec in by_length[length]:
                _, n, step = sketch_windows.pane_plan(spec)
                for block, _ in sketch_windows.blocks_of(pane, n, step):
                    yield ((spec.key, method, event_type,
                            sketch_windows.group_of(block)),
                           (block, pane, data))

        def rank_group(key, panes):
            spec_key, _, event_type, _ = key
            blocks = {}  # block -> {pane: pickled sketch}
            for block, pane, data in panes:
                blocks.setdefault(block, {})[pane] = data
            sizes = {block: sum(map(len, held.values()))
                     for block, held in blocks.items()}
            for batch in sketch_windows.block_batches(sizes):
                # A pane is both its block's and the block before's: read
                # once per batch.
                held = {pane: data for block in batch
                        for pane, data in blocks[block].items()}
                yield sketch_windows.rank_blocks(
                    by_key[spec_key], k, event_type, batch,
                    [(pane, pickle.loads(data))
                     for pane, data in held.items()],
                    emitted_at_ms=now_ms(), source=source,
                    pane_timing=timing)

        return (
            slices
            | "KeyByBlock" >> beam.FlatMap(to_blocks)
            | "GatherBlocks" >> beam.GroupByKey()
            | "RankBlocks" >> beam.FlatMapTuple(rank_group).with_output_types(
                pa.Table))
