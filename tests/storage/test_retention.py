"""Retention tiers: policy parsing, tiers, BigQuery DML, Parquet cleanup."""
import os

import pytest

from topk.storage import retention
from topk.core.schema import DAY_MS, HOUR_MS
from topk.core.windows import parse_time


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


def touch(root, *parts):
    path = os.path.join(root, *parts)
    os.makedirs(path, exist_ok=True)
    open(os.path.join(path, "part-batch.parquet"), "w").close()
    return path


def test_parquet_cleanup_deletes_expired_day_partitions(tmp_path):
    out = str(tmp_path)
    minute_old = touch(out, "slices", "slice_length=1m", "date=2024-05-07")
    minute_new = touch(out, "slices", "slice_length=1m", "date=2024-05-08")
    hour_old = touch(out, "sketches", "slice_length=1h", "date=2024-05-04")
    hour_new = touch(out, "sketches", "slice_length=1h", "date=2024-05-05")
    day = touch(out, "slices", "slice_length=1d", "date=2020-01-01")
    sliding = touch(out, "ranked_windows", "window_spec=1h_1m",
                    "date=2024-05-07")
    hourly = touch(out, "ranked_windows", "window_spec=1h", "date=2024-05-07")
    touch(out, "dead_letters")
    policy = retention.parse_retention("1m=2d,1h=5d")
    now = parse_time("2024-05-10T15:30:00Z")
    expired = [minute_old, sliding, hour_old]
    assert sorted(retention.cleanup_parquet(out, policy, now, dry_run=True)
                  ) == sorted(expired)
    assert all(os.path.isdir(p) for p in expired)
    assert sorted(retention.cleanup_parquet(out, policy, now)) == sorted(
        expired)
    assert [os.path.isdir(p) for p in (
        minute_old, minute_new, hour_old, hour_new, day, sliding, hourly)] == [
        False, True, False, True, True, False, True]
