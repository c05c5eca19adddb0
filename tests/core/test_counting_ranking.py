"""Exact counting and ranking units (no Beam); the oracle comparisons live in
test_properties.py."""
import numpy as np
import pyarrow as pa
import pytest

from topk.core import counting, ranking, schema
from topk.core.windows import WindowSpec

T0 = 1714557600000


def events(rows):
    return pa.table({
        "event_id": [r[0] for r in rows], "event_type": [r[1] for r in rows],
        "item_id": [r[2] for r in rows], "ts": [r[3] for r in rows],
        "weight": [r[4] if len(r) > 4 else 1 for r in rows]})


def test_dedup_keeps_one_copy_and_resolves_conflicts_deterministically():
    t = events([("a", "play", "x", T0), ("a", "play", "x", T0),
                ("b", "play", "y", T0 + 5), ("b", "click", "y", T0 + 1),
                ("c", "play", "z", T0)])
    for rows in (t, t.take(pa.array([4, 3, 2, 1, 0]))):
        d = counting.dedup_events(rows).sort_by("event_id").to_pylist()
        assert [(r["event_id"], r["event_type"], r["ts"]) for r in d] == [
            ("a", "play", T0), ("b", "click", T0 + 1), ("c", "play", T0)]


def test_count_slices_sums_weights_per_minute_and_rolls_up():
    t = events([("a", "play", "x", T0, 2), ("b", "play", "x", T0 + 59_999),
                ("c", "play", "x", T0 + 60_000), ("d", "click", "x", T0)])
    c = counting.count_slices(t).sort_by(
        [("event_type", "ascending"), ("slice_start", "ascending")])
    assert c.to_pylist() == [
        {"event_type": "click", "slice_start": T0, "item_id": "x", "count": 1},
        {"event_type": "play", "slice_start": T0, "item_id": "x", "count": 3},
        {"event_type": "play", "slice_start": T0 + 60_000, "item_id": "x",
         "count": 1}]
    hourly = counting.rollup(c, schema.HOUR_MS).sort_by("event_type")
    assert hourly["count"].to_pylist() == [1, 4]
    assert sum(counting.merge_counts([c, c])["count"].to_pylist()) == 10


def test_adding_a_few_counts_to_many_equals_summing_them_all():
    # Small parts added to a large held table take the in-place path
    # (``counting._upsert``): existing keys, new keys in the newest slice
    # and in an older one, a new event type; always sorted by slice.
    rng = np.random.default_rng(3)

    def partials(n, minutes, types=("play", "click")):
        return counting.rollup(pa.table({
            "event_type": pa.array(rng.choice(types, n)),
            "slice_start": pa.array(rng.choice(minutes, n) * 60_000,
                                    pa.int64()),
            "item_id": pa.array([f"i{i}" for i in rng.integers(0, 400, n)]),
            "count": pa.array(rng.integers(1, 5, n), pa.int64())},
            schema=schema.SLICE_COUNTS_SCHEMA), 60_000)  # unique per key

    held = counting.sort_by_slice(partials(3000, np.arange(10)))
    everything = [held]
    for minutes, types in (([9], ("play",)), ([9], ("play", "skip")),
                           ([4, 9], ("click",)), ([10], ("play",))):
        part = partials(10, np.array(minutes), types)
        held = counting.add_counts(held, part)
        everything.append(part)
        assert (np.diff(held["slice_start"].to_numpy()) >= 0).all()

        def as_dict(t):
            return {(r["event_type"], r["slice_start"], r["item_id"]):
                    r["count"] for r in t.to_pylist()}
        assert held.num_rows == len(as_dict(held))  # unique per key
        assert as_dict(held) == as_dict(counting.merge_counts(everything))


def test_merge_ranks_by_count_then_item_across_shards():
    def part(rows, totals):
        return ranking.WindowTopK(
            pa.table(dict(zip(ranking.CANDIDATES_SCHEMA.names, zip(*rows))),
                     schema=ranking.CANDIDATES_SCHEMA),
            pa.table(dict(zip(ranking.TOTALS_SCHEMA.names, zip(*totals))),
                     schema=ranking.TOTALS_SCHEMA))
    # Two shards (disjoint items); ties at 3 break by item, "b" < "ba".
    one = part([("play", 60, "ba", 3), ("play", 60, "c", 9),
                ("*", 60, "ba", 3), ("play", 0, "z", 1)],
               [("play", 60, 12), ("*", 60, 12), ("play", 0, 1)])
    two = part([("play", 60, "b", 3), ("*", 60, "b", 4)],
               [("play", 60, 5), ("*", 60, 6)])
    out = ranking.merge_window_top_k([two, one], 2).to_pylist()
    assert [tuple(r.values()) for r in out] == [
        ("*", 60, 1, "b", 4, 18), ("*", 60, 2, "ba", 3, 18),
        ("play", 0, 1, "z", 1, 1),
        ("play", 60, 1, "c", 9, 17), ("play", 60, 2, "b", 3, 17)]
    assert ranking.merge_window_top_k([], 2).num_rows == 0


def test_k_must_be_positive():
    with pytest.raises(ValueError, match="k must be at least 1"):
        ranking.shard_window_top_k(schema.SLICE_COUNTS_SCHEMA.empty_table(),
                                   WindowSpec.parse("1h"), 0)


def test_sliding_window_over_a_gap_reports_only_windows_with_events():
    t = events([("a", "play", "x", T0), ("b", "play", "y", T0 + 5 * schema.HOUR_MS)])
    counts = counting.count_slices(t)
    spec = WindowSpec.parse("1h/1m")
    res = ranking.merge_window_top_k(
        [ranking.shard_window_top_k(counts, spec, 5)], 5)
    starts = res["window_start"].to_numpy()
    assert len(starts) == 120  # 60 windows around each event, none between
    assert (res["window_total"].to_numpy() == 1).all()


def test_to_ranked_windows_fills_the_output_contract():
    merged = pa.table({"event_type": ["play"], "window_start": [T0],
                       "rank": pa.array([1], pa.int32()), "item_id": ["x"],
                       "count": [4], "window_total": [9]})
    out = ranking.to_ranked_windows(merged, WindowSpec.parse("1h/1m"),
                                    emitted_at_ms=T0)
    assert out.schema == schema.RANKED_WINDOWS_SCHEMA
    row = out.to_pylist()[0]
    assert (row["window_length"], row["slide"], row["lower_bound"],
            row["upper_bound"], row["pane_timing"], row["source"]) == (
        "1h", "1m", 4, 4, "batch", "batch")
    assert (row["window_end"] - row["window_start"]).total_seconds() == 3600
    assert row["input_watermark"] is None  # a batch row is complete
    stream = ranking.with_input_watermark(out, T0 - 5_000)
    assert stream.schema == schema.RANKED_WINDOWS_SCHEMA
    assert [r.timestamp() * 1000 for r in stream["input_watermark"]
            .to_pylist()] == [T0 - 5_000]
    assert ranking.with_input_watermark(out, None)[
        "input_watermark"].null_count == 1


@pytest.mark.parametrize("name", ["1m", "1h", "1h/1m"])
def test_ranking_only_some_windows_equals_ranking_all_then_picking(name):
    rng = np.random.default_rng(5)
    n = 3000
    t = events([(f"e{i}", rng.choice(["play", "click"]), f"i{rng.zipf(1.5)}",
                 T0 + int(rng.integers(0, 3 * schema.HOUR_MS)))
                for i in range(n)])
    counts = counting.count_slices(t)
    spec = WindowSpec.parse(name)
    every = ranking.shard_top_k(counts, [spec], 4)[spec]
    starts = np.unique(every.totals["window_start"].to_numpy())
    wanted = np.concatenate([starts[::7], [starts[-1] + spec.step_ms * 500]])
    some = ranking.shard_top_k(counts, [spec], 4, window_starts=wanted)[spec]
    keys = pa.array(wanted)

    def rows(table):
        picked = table.filter(pa.compute.is_in(table["window_start"], keys))
        return sorted(picked.to_pylist(), key=lambda r: sorted(r.items()))

    assert rows(some.candidates) == rows(every.candidates)
    assert rows(some.totals) == rows(every.totals)
    assert len(some.totals) == len(rows(every.totals)) > 0


@pytest.mark.parametrize("starts", [
    [T0 + m * 60_000 for m in range(50)],           # minutes: coded by minute
    [T0 + m * 7_001 for m in range(50)],            # not minute-aligned
    [m * 2**55 + m for m in range(50)],             # a key beyond int64
], ids=["minutes", "milliseconds", "hash-group-by"])
def test_merged_partials_sum_every_key_once(starts):
    rng = np.random.default_rng(3)
    n = 4000
    parts = [pa.table({
        "event_type": rng.choice(["play", "click", "like"], n).tolist(),
        "slice_start": pa.array(rng.choice(starts, n), pa.int64()),
        "item_id": [f"item-{i}" for i in rng.integers(0, 300, n)],
        "count": pa.array(rng.integers(1, 5, n), pa.int64()),
    }, schema=schema.SLICE_COUNTS_SCHEMA) for _ in range(3)]
    expected = {}
    for part in parts:
        for r in part.to_pylist():
            key = (r["event_type"], r["slice_start"], r["item_id"])
            expected[key] = expected.get(key, 0) + r["count"]
    merged = counting.merge_counts(parts)
    assert merged.schema == schema.SLICE_COUNTS_SCHEMA
    got = {(r["event_type"], r["slice_start"], r["item_id"]): r["count"]
           for r in merged.to_pylist()}
    assert merged.num_rows == len(got) == len(expected)
    assert got == expected
