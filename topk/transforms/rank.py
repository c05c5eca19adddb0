"""``RankWindows`` and ``SliceTables``: from per-shard exact counts to the
output tables."""
import apache_beam as beam
import pyarrow as pa

from topk.core import counting, ranking, schema
from topk.transforms import coders  # noqa: F401 (registers the Arrow coder)
from topk.transforms.exact import release_unused_memory
from topk.core.windows import SLICE_LENGTHS, WindowSpec, duration_ms, now_ms


class WindowRanking(beam.PTransform):
    """What every ranking of windows is configured by: the window specs,
    ``k``, and how its rows are labelled (``source``, ``pane_timing``)."""

    def __init__(self, specs: list[WindowSpec], k: int, source: str = "batch",
                 pane_timing: str = "batch"):
        super().__init__()
        if k < 1:
            raise ValueError("k must be at least 1")
        self._specs = specs
        self._k = k
        self._source = source
        self._pane_timing = pane_timing


class RankWindows(WindowRanking):
    """Exact per-shard slice counts -> ranked top-K windows.

    Takes ``(item_shard, pa.Table)`` in ``SLICE_COUNTS_SCHEMA`` (one table per
    shard holding all of that shard's items); yields one ``pa.Table`` in
    ``RANKED_WINDOWS_SCHEMA`` per window spec, with the top ``k`` items of
    every window, per event type and over all types (``event_type = '*'``),
    a chunk of windows (``ranking.chunk_of``) per table: shards are merged
    per (spec, chunk), so memory follows the windows, not the data's span.
    """

    def expand(self, shard_counts):
        # Locals, not self, in the lambdas: they are pickled to the workers.
        specs, k = self._specs, self._k
        source, timing = self._source, self._pane_timing
        by_key = {spec.key: spec for spec in specs}

        def per_shard(shard_and_counts):
            # A generator: a shard's windows leave a chunk at a time
            # (ranking.WINDOWS_PER_CHUNK windows), and every merge below
            # holds one chunk of one spec, whatever the span of the data.
            # Runs of windows, not one row per (window, item): the shuffle
            # below holds every shard's candidates of the whole input.
            # Ranking's NumPy peak comes on top of what the merge of the
            # counts freed, unless Arrow hands that back first.
            release_unused_memory()
            for spec, chunk, top in ranking.iter_shard_top_k(
                    shard_and_counts[1], specs, k, runs=True):
                yield (spec.key, chunk), top

        def merge(key, parts):
            spec_key, _ = key
            return ranking.to_ranked_windows(
                ranking.merge_window_top_k([p.expand() for p in parts], k),
                by_key[spec_key],
                source=source, pane_timing=timing, emitted_at_ms=now_ms())

        return (
            shard_counts
            | "TopKPerShard" >> beam.FlatMap(per_shard)
            | "GatherShards" >> beam.GroupByKey()
            | "MergeShards" >> beam.MapTuple(merge).with_output_types(pa.Table))


#: Rows of one ``slices`` table ``SliceTables`` yields: a day of 20M events
#: has ~5M minute slices, and their output rows (with the repeated labels
#: and the staging's date column) would otherwise be made all at once.
SLICE_ROWS_PER_TABLE = 1 << 20


class SliceTables(beam.PTransform):
    """Exact per-shard minute counts -> ``slices`` rows rolled up 1m/1h/1d.

    Takes ``(item_shard, pa.Table)`` in ``SLICE_COUNTS_SCHEMA``, one row per
    key (as ``ItemShardCounts`` yields them); yields ``pa.Table`` batches
    in ``SLICES_SCHEMA`` of at most
    ``SLICE_ROWS_PER_TABLE`` rows.
    """

    def __init__(self, source: str = "batch", lengths=SLICE_LENGTHS):
        super().__init__()
        self._source = source
        self._lengths = lengths

    def expand(self, shard_counts):
        source, lengths = self._source, self._lengths

        def tables(shard_and_counts):
            counts = shard_and_counts[1]
            now = now_ms()
            for name in lengths:
                size = duration_ms(name)
                # The minute counts are one row per key already.
                rolled = counts if size == schema.MINUTE_MS else (
                    counting.rollup(counts, size))
                for start in range(0, rolled.num_rows, SLICE_ROWS_PER_TABLE):
                    yield counting.to_slices_table(
                        rolled.slice(start, SLICE_ROWS_PER_TABLE), name,
                        source, now)

        return shard_counts | "RollUp" >> beam.FlatMap(tables).with_output_types(
            pa.Table)
