"""Composite transforms on the local runner, checked with assert_that."""
import collections
import json

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to

from topk.core import schema
from topk.transforms.exact import ExactSliceCounts
from topk.transforms.parse import DEAD_LETTERS, ParseEvents
from topk.transforms import rank
from topk.transforms.rank import RankWindows, SliceTables
from topk.core.windows import parse_windows

T0 = 1714557600000  # 2024-05-01T10:00:00Z


def ev(eid, item, ts, etype="play"):
    return json.dumps({"event_id": eid, "item_id": item, "event_type": etype,
                       "ts": ts}).encode()


def rows(table):
    return table.to_pylist()


def test_parse_events_splits_valid_and_dead_letters(pipeline):
    batches = [("s1", ev("a", "x", T0) + b"\nnot json\n"),
               ("s2", pa.table({"event_id": ["b"], "item_id": ["y"],
                                "event_type": ["click"], "ts": [T0]}))]
    with pipeline as p:
        parsed = p | beam.Create(batches) | ParseEvents()
        assert_that(parsed.events | "ids" >> beam.FlatMap(
            lambda t: t["event_id"].to_pylist()), equal_to(["a", "b"]),
            label="events")
        assert_that(parsed[DEAD_LETTERS] | "dl" >> beam.FlatMap(rows),
                    equal_to([{"raw": "not json", "reason": "invalid JSON",
                               "source": "s1"}]), label="dead")


@pytest.mark.parametrize("spill", [False, True],
                         ids=["through-shuffle", "spilled"])
def test_exact_slice_counts_dedup_across_batches_and_shards(
        pipeline, tmp_path, spill):
    # The same event id arrives in two different batches; a hot item carries
    # most events. Each item must end up in exactly one shard, counted once,
    # whether the raw events cross the shuffle or spill files.
    spill_dir = str(tmp_path / "spill") if spill else None
    batch1 = b"\n".join([ev(f"h{i}", "hot", T0 + i) for i in range(90)]
                        + [ev("dup", "x", T0)])
    batch2 = b"\n".join([ev(f"c{i}", f"i{i % 5}", T0 + 60_000) for i in range(10)]
                        + [ev("dup", "x", T0)])
    with pipeline as p:
        counts = (p | beam.Create([("a", batch1), ("b", batch2)])
                  | ParseEvents()).events | ExactSliceCounts(
                      item_shards=3, dedup_shards=4, spill_dir=spill_dir)

        def check(shard_tables):
            seen = collections.Counter()
            for shard, t in shard_tables:
                for r in t.to_pylist():
                    seen[(r["item_id"], r["slice_start"])] += r["count"]
            items_per_shard = collections.Counter(
                item for _, t in shard_tables
                for item in set(t["item_id"].to_pylist()))
            assert max(items_per_shard.values()) == 1, items_per_shard
            assert seen == {("hot", T0): 90, ("x", T0): 1,
                            **{(f"i{i}", T0 + 60_000): 2 for i in range(5)}}

        assert_that(counts, check)


def test_rank_windows_and_slice_tables(pipeline):
    lines = [ev(f"e{i}", item, T0 + i * 1000, etype)
             for i, (item, etype) in enumerate(
                 [("a", "play")] * 3 + [("b", "play")] * 2 + [("b", "click")] * 2
                 + [("c", "click")])]
    with pipeline as p:
        counts = (p | beam.Create([("s", b"\n".join(lines))])
                  | ParseEvents()).events | ExactSliceCounts(item_shards=2)
        ranked = counts | RankWindows(parse_windows("1h"), k=2)
        slices = counts | SliceTables()
        assert_that(ranked | beam.FlatMap(rows) | beam.Map(
            lambda r: (r["event_type"], r["rank"], r["item_id"], r["count"],
                       r["window_total"])),
            equal_to([("*", 1, "b", 4, 8), ("*", 2, "a", 3, 8),
                      ("click", 1, "b", 2, 3), ("click", 2, "c", 1, 3),
                      ("play", 1, "a", 3, 5), ("play", 2, "b", 2, 5)]),
            label="ranked")
        assert_that(slices | "sl" >> beam.FlatMap(rows) | "len" >> beam.Map(
            lambda r: (r["slice_length"], r["event_type"], r["item_id"],
                       r["count"])),
            equal_to([(length, et, item, n) for length in ("1m", "1h", "1d")
                      for et, item, n in [("play", "a", 3), ("play", "b", 2),
                                          ("click", "b", 2),
                                          ("click", "c", 1)]]),
            label="slices")
        assert_that(ranked | "schema" >> beam.Map(lambda t: t.schema ==
                                                   schema.RANKED_WINDOWS_SCHEMA),
                    equal_to([True]), label="schema")


def test_slice_tables_come_in_bounded_pieces_that_add_up(pipeline,
                                                         monkeypatch):
    # Seven minutes of one item in two hours: 7 minute rows, 2 hour rows,
    # 1 day row; at most 3 rows a table, every row once.
    monkeypatch.setattr(rank, "SLICE_ROWS_PER_TABLE", 3)
    lines = [ev(f"e{m}", "a", T0 + m * 15 * 60_000) for m in range(7)]
    with pipeline as p:
        counts = (p | beam.Create([("s", b"\n".join(lines))])
                  | ParseEvents()).events | ExactSliceCounts(item_shards=1)
        slices = counts | SliceTables()
        assert_that(slices | "sizes" >> beam.Map(lambda t: t.num_rows <= 3),
                    equal_to([True] * 5), label="sizes")
        assert_that(slices | beam.FlatMap(rows) | beam.Map(
            lambda r: (r["slice_length"], r["slice_start"].timestamp())),
            equal_to([("1m", (T0 + m * 15 * 60_000) / 1000)
                      for m in range(7)]
                     + [("1h", T0 / 1000), ("1h", T0 / 1000 + 3600)]
                     + [("1d", (T0 - T0 % 86_400_000) / 1000)]),
            label="rows")


def test_dedup_accumulator_compaction_keeps_exact_counts():
    # Compaction (de-duplicating inside the accumulator once it grows) must
    # mix compacted and fresh tables without changing any count.
    from topk.core.events import parse_json_lines
    from topk.transforms.exact import DedupSliceCountsFn

    fn = DedupSliceCountsFn(compact_rows=5)
    ids = [[(b * 7 + i) % 20 for i in range(7)] for b in range(6)]
    batches = [parse_json_lines(b"\n".join(
        ev(f"e{n}", f"i{n % 3}", T0) for n in batch)).events
        for batch in ids]
    acc = fn.create_accumulator()
    for t in batches:
        acc = fn.add_input(acc, t)
    acc = fn.merge_accumulators([acc, fn.add_input(fn.create_accumulator(),
                                                   batches[0])])
    out = fn.extract_output(acc)
    unique = {r["event_id"]: r["item_id"] for t in batches
              for r in t.to_pylist()}
    expected = collections.Counter(unique.values())
    assert dict(zip(out["item_id"].to_pylist(), out["count"].to_pylist())) == expected
