"""Tests of the synthetic event generator (topk.loadgen.generator).

The checks here do not trust the generator's own bookkeeping: every record
is re-parsed with ``json.loads`` and judged by an independent statement of
the validation rules (``violation`` below), and the valid ones are compared
with ``generate_events``, the ground truth the pipeline oracles count.
"""
import collections
import gzip
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from topk.loadgen import generator as gen
from topk.core.schema import (
    EVENT_SCHEMA,
    MAX_ID_LENGTH,
    MAX_TS_MS,
    MAX_WEIGHT,
    MIN_TS_MS,
)
from topk.core.windows import parse_time

START = "2024-05-01T10:00:00Z"
START_MS = parse_time(START)
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def violation(line: str, types=("play", "click")) -> str | None:
    """The rule a JSON record breaks (a ``MALFORMED_KINDS`` name), or None."""
    if line == "":
        return "empty_line"
    try:
        obj = json.loads(line)
    except ValueError:
        return "invalid_json"
    if not isinstance(obj, dict):
        return "not_object"
    if not isinstance(obj.get("event_id"), str):
        return "event_id_not_string"
    item = obj.get("item_id")
    if not isinstance(item, str):
        return "missing_item_id"
    if len(item) > MAX_ID_LENGTH:
        return "oversized_item_id"
    ts = obj.get("ts")
    if isinstance(ts, str):
        try:
            ts = parse_time(ts)
        except ValueError:
            return "ts_garbage"
    elif not isinstance(ts, int) or isinstance(ts, bool):
        return "ts_garbage"
    if not MIN_TS_MS <= ts < MAX_TS_MS:
        return "ts_out_of_range"
    weight = obj.get("weight", 1)
    if not isinstance(weight, int) or not 0 < weight <= MAX_WEIGHT:
        return "bad_weight"
    if obj.get("event_type") not in types:
        return "bad_event_type"  # never generated; would fail the tests
    return None


def as_row(line: str) -> tuple:
    """A valid record as an ``EVENT_SCHEMA`` row tuple (weight 1 if absent)."""
    obj = json.loads(line)
    ts = obj["ts"] if isinstance(obj["ts"], int) else parse_time(obj["ts"])
    return (obj["event_id"], obj["item_id"], obj["event_type"], ts,
            obj.get("user_id"), obj.get("weight", 1))


def table_rows(table: pa.Table) -> list[tuple]:
    cols = [table.column(name).to_pylist() for name in EVENT_SCHEMA.names]
    return list(zip(*cols))


def all_lines(config, chunk_size=gen.CHUNK_SIZE) -> list[str]:
    lines = []
    for chunk in gen.generate_records(config, chunk_size=chunk_size):
        assert chunk.type == pa.large_string()
        assert len(chunk) <= chunk_size
        lines.extend(chunk.to_pylist())
    return lines


def messy(**overrides) -> gen.GeneratorConfig:
    """A small config with every kind of dirt switched on."""
    params = dict(events=20_000, items=500, start=START, rate=200.0,
                  jitter_s=5.0, duplicate_share=0.05, malformed_share=0.1,
                  weight_share=0.2, users=1000, seed=7,
                  duplicate_delay_s=30.0)
    params.update(overrides)
    return gen.GeneratorConfig(**params)


@pytest.fixture(scope="module")
def messy_lines():
    return all_lines(messy())


# -- determinism ---------------------------------------------------------


def test_same_seed_gives_identical_bytes(tmp_path):
    config = messy(events=5_000)
    a = gen.write_json_lines(config, tmp_path / "a.jsonl")
    b = gen.write_json_lines(config, tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (
        tmp_path / "b.jsonl").read_bytes()
    assert a.bytes == b.bytes == (tmp_path / "a.jsonl").stat().st_size
    gz1 = gen.write_json_lines(config, tmp_path / "a.jsonl.gz")
    gen.write_json_lines(config, tmp_path / "b.jsonl.gz")
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (
        tmp_path / "b.jsonl.gz").read_bytes()
    # gzip is the same content, smaller.
    assert gzip.decompress((tmp_path / "a.jsonl.gz").read_bytes()) == (
        tmp_path / "a.jsonl").read_bytes()
    assert gz1.bytes < a.bytes


def test_other_seed_gives_other_events():
    a = gen.generate_events(messy(events=1_000, seed=1))
    b = gen.generate_events(messy(events=1_000, seed=2))
    assert not set(a.column("event_id").to_pylist()) & set(
        b.column("event_id").to_pylist())
    assert a.column("item_id") != b.column("item_id")


def test_records_do_not_depend_on_chunk_size():
    config = messy(events=3_000)
    assert all_lines(config, chunk_size=1_000_000) == all_lines(
        config, chunk_size=997)


def test_ground_truth_does_not_depend_on_dirt():
    clean = gen.generate_events(messy(duplicate_share=0, malformed_share=0))
    dirty = gen.generate_events(
        messy(duplicate_share=0.5, malformed_share=0.5))
    assert clean.equals(dirty)


# -- counts and content ----------------------------------------------------


def test_counts_match_summary_and_shares(tmp_path, messy_lines):
    config = messy()
    summary = gen.write_json_lines(config, tmp_path / "e.jsonl")
    assert summary.valid_events == 20_000
    assert summary.duplicates == round(20_000 * 0.05)
    assert summary.malformed == round(20_000 * 0.1)
    text = (tmp_path / "e.jsonl").read_bytes().decode()
    assert text.endswith("\n")
    assert text[:-1].split("\n") == messy_lines
    assert len(messy_lines) == 20_000 + 1_000 + 2_000
    bad = [line for line in messy_lines if violation(line)]
    assert len(bad) == summary.malformed
    events = gen.generate_events(config)
    ts = events.column("ts").to_numpy()
    assert (summary.first_ts_ms, summary.last_ts_ms) == (ts.min(), ts.max())


def test_valid_records_are_the_events_plus_exact_redeliveries(messy_lines):
    config = messy()
    events = gen.generate_events(config)
    assert events.schema == EVENT_SCHEMA
    valid = [line for line in messy_lines if violation(line) is None]
    assert len(valid) == 20_000 + 1_000
    # Distinct valid lines are exactly the ground-truth events ...
    distinct = list(dict.fromkeys(valid))
    assert len(distinct) == 20_000
    assert [as_row(line) for line in distinct] == table_rows(events)
    # ... and every duplicate is a byte-identical copy of an earlier line,
    # re-delivered within the configured delay.
    first_seen = {}
    dups = 0
    for pos, line in enumerate(messy_lines):
        if line in first_seen and violation(line) is None:
            dups += 1
            assert pos > first_seen[line]
        else:
            first_seen.setdefault(line, pos)
    assert dups == 1_000
    assert len(set(events.column("event_id").to_pylist())) == 20_000


def test_duplicates_follow_originals_within_the_delay(messy_lines):
    config = messy()
    index = {}
    valid_seen = 0
    for line in messy_lines:
        if violation(line) is not None:
            continue
        if line in index:
            # Nominal event slots between original and re-delivery.
            assert 0 < valid_seen - index[line] <= config.rate * 30.0 + 1
        else:
            index[line] = valid_seen
            valid_seen += 1


def test_malformed_records_break_the_rules(messy_lines):
    kinds = collections.Counter(violation(line) for line in messy_lines)
    del kinds[None]
    # Every kind is there (2000 records over 9 kinds), and nothing else.
    assert set(kinds) == set(gen.MALFORMED_KINDS)
    assert sum(kinds.values()) == 2_000
    assert min(kinds.values()) > 150
    # Malformed records never reuse a valid event id.
    ids = set(gen.generate_events(messy()).column("event_id").to_pylist())
    for line in messy_lines:
        if violation(line) in ("missing_item_id", "oversized_item_id",
                               "ts_garbage", "ts_out_of_range", "bad_weight"):
            assert json.loads(line)["event_id"] not in ids


def test_weights_are_optional_and_small(messy_lines):
    objs = [json.loads(line) for line in messy_lines
            if violation(line) is None]
    weights = [o["weight"] for o in objs if "weight" in o]
    assert set(weights) == {1, 2, 3, 4, 5}
    assert abs(len(weights) / len(objs) - 0.2) < 0.02
    plain = all_lines(messy(events=2_000, weight_share=0.0,
                            duplicate_share=0, malformed_share=0))
    assert not any('"weight"' in line for line in plain)


def test_users_can_be_left_out():
    lines = all_lines(messy(events=500, users=0, malformed_share=0))
    assert all("user_id" not in json.loads(line) for line in lines)
    assert gen.generate_events(messy(events=500, users=0)).column(
        "user_id").null_count == 500


# -- distributions --------------------------------------------------------


@pytest.mark.parametrize("s", [1.1, 0.8])
def test_zipf_skew(s):
    config = gen.GeneratorConfig(events=200_000, items=1_000, zipf=s,
                                 start=START, seed=3)
    items = gen.generate_events(config).column("item_id").to_numpy(
        zero_copy_only=False)
    counts = collections.Counter(items)
    top, top_count = counts.most_common(1)[0]
    harmonic = sum(r ** -s for r in range(1, 1_001))
    assert top == "item-000000"
    assert abs(top_count / len(items) - 1 / harmonic) < 0.005
    # The 10th most popular item is about 10^-s as popular as the first.
    assert abs(counts["item-000009"] / top_count - 10 ** -s) < 0.05


def test_event_type_mix():
    types = gen.generate_events(gen.GeneratorConfig(
        events=50_000, start=START)).column("event_type").to_pylist()
    share = types.count("play") / len(types)
    assert abs(share - 0.7) < 0.01 and set(types) == {"play", "click"}
    custom = gen.generate_events(gen.GeneratorConfig(
        events=10_000, start=START, event_types=("view", "buy", "like"),
        event_type_weights=(1, 0, 1))).column("event_type").to_pylist()
    assert set(custom) == {"view", "like"}


def test_event_time_bounds_and_disorder():
    config = gen.GeneratorConfig(events=50_000, rate=500.0, jitter_s=5.0,
                                 start=START, seed=11)
    ts = gen.generate_events(config).column("ts").to_numpy()
    end_ms = START_MS + 50_000 / 500.0 * 1000
    assert ts.min() >= START_MS
    assert ts.max() <= end_ms + 5_000
    # Out of order: many events arrive after a later one, by up to 2 jitters.
    late = np.maximum.accumulate(ts) - ts
    assert (late > 0).mean() > 0.5
    assert 9_000 < late.max() <= 10_000
    # Without jitter, emission order is event-time order.
    calm = gen.generate_events(gen.GeneratorConfig(
        events=5_000, jitter_s=0, start=START)).column("ts").to_numpy()
    assert (np.diff(calm) >= 0).all()


def test_hot_item_burst():
    config = gen.GeneratorConfig(
        events=100_000, items=1_000, rate=100.0, start=START,
        burst_item="item-000500", burst_share=0.3,
        burst_start="2024-05-01T10:05:00Z", burst_duration_s=60.0, seed=5)
    events = gen.generate_events(config)
    ts = events.column("ts").to_numpy()
    hot = np.asarray(events.column("item_id").to_pylist()) == "item-000500"
    b0 = parse_time("2024-05-01T10:05:00Z")
    inside = (ts >= b0) & (ts < b0 + 60_000)
    assert abs(hot[inside].mean() - 0.3) < 0.03
    assert hot[~inside].mean() < 0.01
    # A brand-new item (not in the catalogue) can burst too, by default in
    # the middle of the span.
    new = gen.generate_events(gen.GeneratorConfig(
        events=20_000, rate=100.0, start=START, burst_item='new "hit"',
        burst_share=0.5, burst_duration_s=20.0))
    ts = new.column("ts").to_numpy()
    hot = np.asarray(new.column("item_id").to_pylist()) == 'new "hit"'
    mid = START_MS + 100_000 - 10_000
    assert abs(hot[(ts >= mid) & (ts < mid + 20_000)].mean() - 0.5) < 0.05
    assert not hot[(ts < mid) | (ts >= mid + 20_000)].any()
    # And its JSON is escaped properly.
    lines = all_lines(gen.GeneratorConfig(
        events=20_000, rate=100.0, start=START, burst_item='new "hit"',
        burst_share=0.5, burst_duration_s=20.0))
    assert [as_row(line) for line in lines] == table_rows(new)


@pytest.mark.parametrize("fmt", ["ms", "rfc3339", "mixed"])
def test_ts_format(fmt):
    lines = all_lines(messy(events=4_000, ts_format=fmt, malformed_share=0))
    ts = [json.loads(line)["ts"] for line in lines]
    as_int = sum(isinstance(t, int) for t in ts)
    assert all(isinstance(t, int) or RFC3339_MS.match(t) for t in ts)
    if fmt == "ms":
        assert as_int == len(ts)
    elif fmt == "rfc3339":
        assert as_int == 0
    else:
        assert abs(as_int / len(ts) - 0.5) < 0.05


# -- Parquet ---------------------------------------------------------------


def parquet_violation(row: dict) -> str | None:
    if not isinstance(row["event_id"], str):
        return "event_id"
    if row["item_id"] is None:
        return "missing_item_id"
    if len(row["item_id"]) > MAX_ID_LENGTH:
        return "oversized_item_id"
    if not MIN_TS_MS <= row["ts"] < MAX_TS_MS:
        return "ts_out_of_range"
    if not 0 < row["weight"] <= MAX_WEIGHT:
        return "bad_weight"
    return None


def test_parquet_round_trip(tmp_path):
    config = messy(events=10_000)
    summary = gen.write_parquet(config, tmp_path / "e.parquet")
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.schema.names == ["event_id", "item_id", "event_type", "ts",
                                  "user_id", "weight"]
    assert table.schema.field("ts").type == pa.int64()
    assert table.num_rows == (summary.valid_events + summary.duplicates
                              + summary.malformed)
    assert summary.bytes == (tmp_path / "e.parquet").stat().st_size
    rows = table.to_pylist()
    kinds = collections.Counter(parquet_violation(r) for r in rows)
    assert kinds.pop(None) == summary.valid_events + summary.duplicates
    assert set(kinds) == set(gen.PARQUET_MALFORMED_KINDS)
    assert sum(kinds.values()) == summary.malformed
    valid = [tuple(r.values()) for r in rows if parquet_violation(r) is None]
    events = table_rows(gen.generate_events(config))
    assert list(dict.fromkeys(valid)) == events
    # Same records, in the same order, as the JSON output.
    json_valid = [as_row(line) for line in all_lines(config)
                  if violation(line) is None]
    assert json_valid == valid
    again = gen.write_parquet(config, tmp_path / "f.parquet")
    assert again.bytes == summary.bytes
    assert pq.read_table(tmp_path / "f.parquet").equals(table)


# -- edges and validation ---------------------------------------------------


def test_zero_events(tmp_path):
    config = gen.GeneratorConfig(events=0, duplicate_share=0.5,
                                 malformed_share=0.5, start=START)
    assert gen.generate_events(config).num_rows == 0
    assert all_lines(config) == []
    summary = gen.write_json_lines(config, tmp_path / "e.jsonl")
    assert (summary.valid_events, summary.duplicates, summary.malformed,
            summary.bytes) == (0, 0, 0, 0)


@pytest.mark.parametrize("bad", [
    dict(ts_format="iso"), dict(rate=0), dict(items=0), dict(events=-1),
    dict(event_types=("play",), event_type_weights=(0.5, 0.5)),
    dict(burst_share=0.2), dict(weight_share=1.5),
    dict(start="1999-12-31T23:59:59Z"), dict(start="not a time"),
    dict(burst_item="x" * 300, burst_share=0.1),
])
def test_rejects_bad_configs(bad):
    with pytest.raises(ValueError):
        gen.generate_events(gen.GeneratorConfig(**bad))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(events=st.integers(0, 300), dup=st.floats(0, 1.5),
       bad=st.floats(0, 1.5), chunk=st.integers(1, 64),
       fmt=st.sampled_from(gen.TS_FORMATS), seed=st.integers(0, 2**32))
def test_any_config_keeps_the_invariants(events, dup, bad, chunk, fmt, seed):
    config = gen.GeneratorConfig(
        events=events, items=50, duplicate_share=dup, malformed_share=bad,
        ts_format=fmt, weight_share=0.3, rate=50.0, duplicate_delay_s=1.0,
        start=START, seed=seed)
    lines = all_lines(config, chunk_size=chunk)
    assert lines == all_lines(config)
    n_dup, n_bad = round(events * dup), round(events * bad)
    assert len(lines) == events + n_dup + n_bad
    valid = [line for line in lines if violation(line) is None]
    assert len(valid) == events + n_dup
    assert [as_row(line) for line in dict.fromkeys(valid)] == table_rows(
        gen.generate_events(config))
