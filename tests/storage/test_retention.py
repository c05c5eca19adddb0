"""Retention tiers: policy parsing, tiers, BigQuery DML, deletes from the
output's Delta tables."""
import os

import pyarrow as pa
import pytest

from topk.core import schema
from topk.core.schema import DAY_MS, HOUR_MS
from topk.core.windows import duration_ms, parse_time
from topk.storage import retention, tables


def test_parse_retention():
    assert retention.parse_retention("") == {}
    assert retention.parse_retention(None) == {}
    assert retention.parse_retention(" 1m=7d, 1h=90d,1d=730d ") == {
        "1m": 7 * DAY_MS, "1h": 90 * DAY_MS, "1d": 730 * DAY_MS}
    assert retention.parse_retention("1m=36h") == {"1m": 36 * HOUR_MS}
    for bad, message in (
            ("1w=7d", "bad retention '1w=7d': expected TIER=DURATION"),
            ("1m", "bad retention '1m'"),
            ("1m=7x", "bad duration '7x'"),
            ("1m=7d,1m=8d", "retention of 1m given twice"),
            ("1m=90d,1h=7d", "1m slices cannot be kept longer than 1h"),
            ("1h=7d", "1m slices cannot be kept longer than 1h"),
            ("1m=1d,1d=7d", "1h slices cannot be kept longer than 1d")):
        with pytest.raises(ValueError, match=message):
            retention.parse_retention(bad)


def test_ranked_windows_follow_the_tier_of_their_step():
    assert {name: retention.window_tier(*(name.split("/") + [None])[:2])
            for name in ("1m", "1h", "1d", "30d", "1h/1m", "1d/1h",
                         "30d/1d")} == {
        "1m": "1m", "1h/1m": "1m", "1h": "1h", "1d/1h": "1h", "1d": "1d",
        "30d": "1d", "30d/1d": "1d"}
    assert retention.window_steps("1m") == ["1m"]
    assert retention.window_steps("1h") == ["1h"]
    assert retention.window_steps("1d") == ["1d", "30d"]


def test_partition_expiration_is_the_longest_tier_when_all_are_bounded():
    assert retention.partition_expiration_ms({"1m": 1, "1h": 5, "1d": 9}) == 9
    assert retention.partition_expiration_ms({"1m": 1, "1h": 5}) is None
    assert retention.partition_expiration_ms({}) is None


def test_cutoff_is_a_whole_day():
    now = parse_time("2024-05-10T15:30:00Z")
    assert retention.cutoff_ms(now, 7 * DAY_MS) == parse_time(
        "2024-05-03T00:00:00Z")


def test_bigquery_deletes_cover_the_tiers_partition_expiration_does_not():
    now = parse_time("2024-05-10T15:30:00Z")
    ids = {"slices": "p.d.slices", "ranked_windows": "p.d.ranked_windows"}
    policy = retention.parse_retention("1m=2d,1h=5d,1d=30d")
    statements = retention.bigquery_deletes(policy, ids, now)
    assert [(sql.split("`")[1], params) for sql, params in statements] == [
        ("p.d.slices", [("cutoff", "TIMESTAMP", parse_time("2024-05-08")),
                        ("tier", "STRING", "1m")]),
        ("p.d.ranked_windows", [
            ("cutoff", "TIMESTAMP", parse_time("2024-05-08")),
            ("steps", "ARRAY<STRING>", ["1m"])]),
        ("p.d.slices", [("cutoff", "TIMESTAMP", parse_time("2024-05-05")),
                        ("tier", "STRING", "1h")]),
        ("p.d.ranked_windows", [
            ("cutoff", "TIMESTAMP", parse_time("2024-05-05")),
            ("steps", "ARRAY<STRING>", ["1h"])])]
    assert statements[0][0] == ("DELETE FROM `p.d.slices` WHERE slice_start "
                                "< @cutoff AND slice_length = @tier")
    # Without a bounded day tier there is no expiration: DML for all given.
    unbounded = retention.bigquery_deletes(
        retention.parse_retention("1m=2d,1h=5d"), {"slices": "p.d.s"}, now)
    assert [p[1][2] for _, p in unbounded] == ["1m", "1h"]


def _rows(table, outer, day):
    """One row of ``table`` in partition (``outer``, ``day``)."""
    start = parse_time(day)
    common = {"source": "batch", "emitted_at": start}
    if table == "ranked_windows":
        length, _, slide = outer.partition("_")
        return pa.Table.from_pylist([dict(
            common, window_start=start, window_end=start + duration_ms(length),
            window_length=length, slide=slide or None, method="exact",
            event_type="*", rank=1, item_id="a", count=1, lower_bound=1,
            upper_bound=1, guaranteed=True, window_total=1,
            pane_timing="batch", pane_index=0)],
            schema=schema.RANKED_WINDOWS_SCHEMA)
    if table == "slices":
        return pa.Table.from_pylist([dict(
            common, slice_start=start, slice_length=outer, event_type="play",
            item_id="a", count=1)], schema=schema.SLICES_SCHEMA)
    return pa.Table.from_pylist([dict(
        common, slice_start=start, slice_length=outer, method="cms",
        event_type="*", sketch=b"x", total=1, nbytes=1, budget_bytes=1)],
        schema=schema.SKETCHES_SCHEMA)


def _partitions(out):
    """Directory names of the committed partitions holding rows."""
    found = set()
    for table in retention.TABLES:
        ds = tables.dataset(out, table)
        outer = tables.TABLES[table][1][0]
        for r in ds.to_table(columns=[outer, "date"]).to_pylist():
            found.add(os.path.join(out, table, f"{outer}={r[outer]}",
                                   f"date={r['date']}"))
    return found


def test_parquet_cleanup_deletes_expired_day_partitions(tmp_path):
    out = str(tmp_path)
    partitions = [("slices", "1m", "2024-05-07"), ("slices", "1m", "2024-05-08"),
                  ("sketches", "1h", "2024-05-04"),
                  ("sketches", "1h", "2024-05-05"),
                  ("slices", "1d", "2020-01-01"),
                  ("ranked_windows", "1h_1m", "2024-05-07"),
                  ("ranked_windows", "1h", "2024-05-07")]
    tables.commit(out, [tables.Change(table, tables.prepare(
        table, _rows(table, outer, day)))
        for table, outer, day in partitions], "test")
    path = {(t, o, d): os.path.join(
        out, t, ("window_spec" if t == "ranked_windows" else "slice_length")
        + f"={o}", f"date={d}") for t, o, d in partitions}
    everything = set(path.values())
    assert _partitions(out) == everything
    policy = retention.parse_retention("1m=2d,1h=5d")
    now = parse_time("2024-05-10T15:30:00Z")
    expired = {path[("slices", "1m", "2024-05-07")],
               path[("ranked_windows", "1h_1m", "2024-05-07")],
               path[("sketches", "1h", "2024-05-04")]}
    assert set(retention.cleanup_parquet(out, policy, now, dry_run=True)
               ) == expired
    assert _partitions(out) == everything
    assert set(retention.cleanup_parquet(out, policy, now)) == expired
    assert _partitions(out) == everything - expired
    assert retention.cleanup_parquet(out, policy, now) == []
