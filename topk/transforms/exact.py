"""Exact counting transforms: de-duplicated one-minute slices per item shard.

Two shuffles, both of columnar batches. Raw events are keyed by a hash of
their ``event_id`` (uniform whatever the item popularity, so a hot item never
funnels its raw events through one key) and de-duplicated there. What leaves
that stage is pre-aggregated ``(event_type, slice_start, item_id, count)``,
re-keyed by a hash of the item: a hot item is then one row per minute and
shard, and every item's full counts meet in exactly one item shard.

De-duplication shrinks nothing until it has seen every copy of an id, so
its shuffle carries the whole input. Given a ``spill_dir``, the raw events
cross it as files (``arrow_ipc.spill``) and only their names are shuffled:
Beam's in-process runner holds a shuffle in memory, decoded and then encoded
again, and a 20M-event day peaked at 4.9 GB through it. The step that reads
the files holds one shard's events at a time.
"""
import typing

import apache_beam as beam
from apache_beam.metrics import Metrics
import pyarrow as pa

from topk.core import arrow_ipc, counting, schema, sharding
from topk.transforms import coders

#: Element type of the shuffles: (shard number, table).
ShardTable = typing.Tuple[int, pa.Table]

#: Rows an accumulator may take in between two compactions (de-duplicating
#: or summing what it holds), to bound memory between inputs.
COMPACT_ROWS = 4_000_000

_COMPACTED = {b"topk.compacted": b"1"}


class _CompactingTablesFn(beam.CombineFn):
    """A CombineFn whose accumulator is a list of Arrow tables that
    ``_shrink`` can reduce to one table with the same meaning.

    It compacts once ``compact_rows`` rows arrived since the last compaction,
    not whenever the total is large: what compaction leaves can itself be
    large (every distinct event), and re-shrinking it on every input would
    make the combine quadratic.
    """

    def __init__(self, compact_rows: int = COMPACT_ROWS):
        self._compact_rows = compact_rows

    def _shrink(self, tables: list) -> pa.Table:
        raise NotImplementedError

    def create_accumulator(self):
        return []

    def add_input(self, acc, table):
        acc.append(table)
        return self._maybe_compact(acc)

    def merge_accumulators(self, accs):
        return self._maybe_compact([t for acc in accs for t in acc])

    def get_accumulator_coder(self):
        return coders.ArrowTableListCoder()

    def _maybe_compact(self, acc):
        fresh = sum(t.num_rows for t in acc
                    if (t.schema.metadata or {}).get(b"topk.compacted") is None)
        if len(acc) > 1 and fresh > self._compact_rows:
            shrunk = self._shrink(self._plain(acc))
            return [shrunk.replace_schema_metadata(_COMPACTED)]
        return acc

    @staticmethod
    def _plain(acc) -> list:
        return [t.replace_schema_metadata(None) for t in acc]


class DedupSliceCountsFn(_CompactingTablesFn):
    """Event tables -> exact slice counts with every ``event_id`` once.

    The accumulator holds event tables (``DEDUP_COLUMNS``); compaction
    de-duplicates them, and de-duplication must see every copy of an id, so
    it keeps one row per distinct event until the output.
    """

    def __init__(self, slice_ms: int = schema.MINUTE_MS,
                 compact_rows: int = COMPACT_ROWS):
        super().__init__(compact_rows)
        self._slice_ms = slice_ms

    def add_input(self, acc, table):
        return super().add_input(acc, table.select(list(counting.DEDUP_COLUMNS)))

    def _shrink(self, tables):
        return counting.dedup_events(pa.concat_tables(tables))

    def extract_output(self, acc):
        if not acc:
            return schema.SLICE_COUNTS_SCHEMA.empty_table()
        unique = self._shrink(self._plain(acc))
        Metrics.counter("topk", "events_unique").inc(unique.num_rows)
        return counting.count_slices(unique, self._slice_ms)


class MergeSliceCountsFn(_CompactingTablesFn):
    """Exact slice-count tables -> their sum (``SLICE_COUNTS_SCHEMA``)."""

    def _shrink(self, tables):
        merged = counting.merge_counts(tables)
        release_unused_memory()
        return merged

    def compact(self, acc):
        # Beam's hook before a shuffle: partial counts do shrink when summed.
        return [self._shrink(self._plain(acc))] if len(acc) > 1 else acc

    def extract_output(self, acc):
        return self._shrink(self._plain(acc))


def release_unused_memory() -> None:
    """Hand Arrow's freed pages back to the OS: its allocator keeps them
    for reuse, and one process running every stage of a local run then
    holds what a stage freed under the next stage's peak."""
    pa.default_memory_pool().release_unused()


def key_by_shard(table: pa.Table, column: str, shards: int):
    """Split a table into ``(shard, rows)`` by a stable hash of ``column``."""
    if table.num_rows == 0:
        return []
    return sharding.split_by_shard(
        table, sharding.shard_of(table[column], shards), shards)


class ExactSliceCounts(beam.PTransform):
    """Validated event tables -> exact one-minute slice counts per item shard.

    Takes ``pa.Table`` batches in ``EVENT_SCHEMA``; yields
    ``(item_shard, pa.Table)`` with one table per shard (per Beam window) in
    ``SLICE_COUNTS_SCHEMA``: the de-duplicated exact counts of that shard's
    items per ``(event_type, slice_start, item_id)``. The same steps as
    ``DedupSliceCounts`` followed by ``ItemShardCounts``, for pipelines that
    need nothing in between; ``spill_dir`` as there.
    """

    def __init__(self, item_shards: int = 8, dedup_shards: int = 8,
                 slice_ms: int = schema.MINUTE_MS,
                 spill_dir: str | None = None):
        super().__init__()
        self._item_shards = item_shards
        self._dedup = (dedup_shards, slice_ms, spill_dir)

    def expand(self, events):
        return _item_shard_steps(_dedup_steps(events, *self._dedup),
                                 self._item_shards)


class DedupSliceCounts(beam.PTransform):
    """Validated event tables -> de-duplicated exact partial slice counts.

    Takes ``pa.Table`` batches in ``EVENT_SCHEMA``; yields ``(dedup_shard,
    pa.Table)`` in ``SLICE_COUNTS_SCHEMA``: the exact counts of the events
    whose ``event_id`` hashes to that shard (every id counted once), any
    item, any event type. Partials of different shards add up to the exact
    counts; this is where the approximate path branches off
    (``ItemShardCounts`` continues the exact one).

    With ``spill_dir`` (a directory nothing else writes to, removed by the
    caller once the run is over), the events reach their shard as files
    written there, not through the runner's shuffle.
    """

    def __init__(self, dedup_shards: int = 8,
                 slice_ms: int = schema.MINUTE_MS,
                 spill_dir: str | None = None):
        super().__init__()
        self._dedup = (dedup_shards, slice_ms, spill_dir)

    def expand(self, events):
        return _dedup_steps(events, *self._dedup)


class ItemShardCounts(beam.PTransform):
    """De-duplicated partial counts -> exact counts per item shard.

    Takes ``(dedup_shard, pa.Table)`` from ``DedupSliceCounts``; yields
    ``(item_shard, pa.Table)`` as ``ExactSliceCounts`` does.
    """

    def __init__(self, item_shards: int = 8):
        super().__init__()
        self._item_shards = item_shards

    def expand(self, partials):
        return _item_shard_steps(partials, self._item_shards)


# The steps, shared by the composites above; their labels nest under
# whichever composite calls them, so ExactSliceCounts keeps its step names.

def _dedup_steps(events, dedup_shards: int, slice_ms: int,
                 spill_dir: str | None):
    # Type hints make Beam encode (shard, table) with ArrowTableCoder
    # instead of pickling the table (~15x slower).
    keyed = events | "KeyByEventId" >> beam.FlatMap(
        key_by_shard, "event_id", dedup_shards).with_output_types(ShardTable)
    if spill_dir is None:
        return keyed | "DedupAndCount" >> beam.CombinePerKey(
            DedupSliceCountsFn(slice_ms)).with_output_types(ShardTable)
    return (
        keyed
        | "Spill" >> beam.Map(_spill, spill_dir)
        | "GroupSpilled" >> beam.GroupByKey()
        | "DedupAndCount" >> beam.MapTuple(
            dedup_spilled, slice_ms).with_output_types(ShardTable))


def _spill(kv: ShardTable, directory: str) -> tuple[int, str]:
    shard, table = kv
    return shard, arrow_ipc.spill(
        directory, table.select(list(counting.DEDUP_COLUMNS)))


def dedup_spilled(shard: int, paths, slice_ms: int = schema.MINUTE_MS):
    """``(shard, spilled event files)`` -> ``(shard, slice counts)`` of the
    files' events with every ``event_id`` once."""
    release_unused_memory()
    events = pa.concat_tables(arrow_ipc.read_spilled(p) for p in paths)
    # Unique ids found by sorting their 64-bit hashes; only rows sharing a
    # hash are compared by id. DuckDB's DISTINCT over whole rows took 4-5x
    # the shard's size on top of it, most of a 20M-event day's peak.
    unique, _ = counting.dedup_hashed(
        events, sharding.stable_hash(events["event_id"]))
    Metrics.counter("topk", "events_unique").inc(unique.num_rows)
    return shard, counting.count_slices(unique, slice_ms)


def _item_shard_steps(partials, item_shards: int):
    return (
        partials
        | "KeyByItem" >> beam.FlatMap(
            lambda kv, n: key_by_shard(kv[1], "item_id", n),
            item_shards).with_output_types(ShardTable)
        | "MergePerItemShard" >> beam.CombinePerKey(
            MergeSliceCountsFn()).with_output_types(ShardTable))
