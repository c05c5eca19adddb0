"""Property-based tests: the implementation against the brute-force oracle.

Hypothesis generates small, dirty event streams (ties, out-of-order times,
exact and conflicting duplicates, malformed records of every kind, epoch-ms
and RFC 3339 times with offsets, weights); ``tests/oracle.py`` answers from
the spec alone, and every stage of the exact path must agree with it:
parsing, de-duplication, slices, per-shard ranking and its merge, range
decomposition and the query layer over written Parquet.

The strategies stay inside what the spec decides (see ``oracle.Unspecified``).
The bugs they found have minimal regression tests at the end of this file;
the inputs of the last two (trailing commas, invalid UTF-8 inside a string
value) were left out of the strategies while those bugs were open and are
generated again now that the parser rejects them.
"""
import collections
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from topk.core import counting, events, ranking, schema, sharding
from topk.storage import layout as output_layout
from topk.storage import tables as output_tables
from topk import query
from topk.core.windows import WindowSpec, decompose_range


import oracle  # tests/ is on sys.path (conftest.py)

MINUTE, HOUR, DAY = oracle.MINUTE_MS, oracle.HOUR_MS, oracle.DAY_MS
#: 2024-05-17T00:00:00Z, a multiple of 30 days since the epoch (30d windows
#: start there), so streams around it cross every kind of boundary.
T30 = 19860 * DAY
assert T30 % (30 * DAY) == 0

#: Few items, for ties; non-ASCII ones check that ties break in UTF-8 byte
#: order ("\ue000" < "😀" in code points and UTF-8, not in UTF-16).
ITEMS = ["a", "b", "c", "B", "ab", "a b", "é", "\ue000", "😀", "item-10",
         "item-2"]
TYPES = ["play", "click", "view"]

#: Run longer locally with e.g. TOPK_HYPOTHESIS_SCALE=20 (default: < 60 s).
SCALE = float(os.environ.get("TOPK_HYPOTHESIS_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, int(n * SCALE))


SETTINGS = dict(deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

# ---------------------------------------------------------------------------
# Strategies


def rfc3339(ts_ms: int, offset_min: int, frac: str, zulu: str) -> str:
    """``ts_ms`` as RFC 3339 local time at ``offset_min`` minutes east;
    a zero offset is written ``Z``, ``+00:00`` or ``-00:00`` (``zulu`` is
    ``"Z"``, ``"+"`` or ``"-"``)."""
    local = oracle._EPOCH + dt.timedelta(milliseconds=ts_ms + offset_min * MINUTE)
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if local.year < 1000:
        text = "%04d" % local.year + text[text.index("-"):]
    ms = ts_ms % 1000
    if frac == "full" or (frac == "trim" and ms):
        text += ".%03d" % ms
        if frac == "trim":
            text = text.rstrip("0")
    elif frac == "zero" and not ms:
        text += ".0"
    elif ms:
        text += ".%03d" % ms
    if offset_min == 0 and zulu in ("Z", "z"):
        return text + zulu
    sign = "-" if offset_min < 0 or zulu == "-" else "+"
    return text + "%s%02d:%02d" % (sign, abs(offset_min) // 60,
                                   abs(offset_min) % 60)


@st.composite
def ts_values(draw, ts_ms: int, ts_mode: str = "mixed"):
    """A JSON value denoting instant ``ts_ms``: integer ms or RFC 3339
    (``ts_mode`` "ms", "rfc" or "mixed"). A block with one kind of ``ts``
    only can take the Arrow fast path; a mixed one cannot."""
    if ts_mode == "ms" or (ts_mode == "mixed" and draw(st.booleans())):
        return ts_ms
    offset = draw(st.sampled_from([0, 0, 0, 330, -60, 600, -720, 840, 1439]))
    frac = draw(st.sampled_from(["full", "trim", "none", "zero", "micro"]))
    zulu = draw(st.sampled_from(["Z", "Z", "z", "+", "-"]))
    text = rfc3339(ts_ms, offset, "full" if frac == "micro" else frac, zulu)
    if frac == "micro":  # finer than ms: cut, never rounded
        cut = text.index(".") + 4
        text = text[:cut] + draw(st.sampled_from(["0", "5", "999", "9999"])) + (
            text[cut:])
    if draw(st.integers(0, 9)) == 0:
        text = text.replace("T", "t", 1)
    return text


@st.composite
def instants(draw, anchor: int, scale: int):
    """Event times around ``anchor``, some right on or next to boundaries."""
    if draw(st.integers(0, 3)) == 0:
        unit = draw(st.sampled_from([MINUTE, HOUR, DAY]))
        k = draw(st.integers(-(scale // unit), scale // unit))
        return anchor + k * unit + draw(st.sampled_from([-1, 0, 1]))
    return anchor + draw(st.integers(-scale, scale))


def render(draw, obj: dict):
    """A JSON object as one line, in random key order and spacing."""
    keys = draw(st.permutations(list(obj)))
    ordered = {k: obj[k] for k in keys}
    seps = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    text = json.dumps(ordered, ensure_ascii=draw(st.booleans()),
                      separators=seps)
    pad = draw(st.sampled_from(["", "", "", " ", "\t", "\r"]))
    lead = " " if draw(st.integers(0, 19)) == 0 else ""
    return lead + text + pad


@st.composite
def valid_objects(draw, event: dict, ts_mode: str = "mixed"):
    """A JSON object that the spec reads as ``event`` (dict with event_id,
    item_id, event_type, ts, weight)."""
    obj = {"event_id": event["event_id"], "item_id": event["item_id"],
           "event_type": event["event_type"],
           "ts": draw(ts_values(event["ts"], ts_mode))}
    user = draw(st.sampled_from(["absent", "null", "u1", "long"]))
    if user != "absent":
        obj["user_id"] = {"null": None, "u1": "user-1",
                          "long": "ü" * oracle.MAX_ID_LENGTH}[user]
    if event["weight"] != 1 or draw(st.integers(0, 3)) == 0:
        obj["weight"] = event["weight"]
    elif draw(st.booleans()):
        obj["weight"] = None
    if draw(st.integers(0, 5)) == 0:
        obj["extra"] = {"nested": [1, None, 2], "ts": "no"}
    return obj


TS_GARBAGE = ["yesterday", "2024-13-45T25:61:00Z", "", "1714557600000x",
              "1714557600000", "2024-02-30T10:00:00Z", "2023-02-29T00:00:00Z",
              "20240501T100000Z", "2024-05-01T10:00:00ZZ", "T", "null",
              "2024-05-01T10:60:00Z", "2024-05-01T10:00:61Z"]
TS_BOUNDARY = [oracle.MIN_TS_MS - 1, oracle.MIN_TS_MS, oracle.MAX_TS_MS - 1,
               oracle.MAX_TS_MS, 0, -1, 2**63 - 1, 2**63, 2**64 + 5, 10**20,
               "1999-12-31T23:59:59.999Z", "2000-01-01T00:00:00Z",
               "2000-01-01T00:59:59.999+01:00", "1999-12-31T23:30:00-00:30",
               "2099-12-31T23:59:59.999Z", "2100-01-01T00:00:00Z",
               "2100-01-01T00:30:00+01:00", "1900-01-01T00:00:00Z",
               "2200-01-01T00:00:00.000Z"]
WRONG_TYPES = [5, 1.5, True, False, [], ["a"], {}, {"a": 1}]
BAD_WEIGHTS = [0, -1, -1000, oracle.MAX_WEIGHT + 1, 10**20, 2.0, 1e3, "3",
               True, False, [1], {"w": 1}]
BAD_UTF8 = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80abc"]
MALFORMED_KINDS = ["truncated", "single_quotes", "bare_key", "garbage",
                   "not_object", "missing", "null_field", "wrong_type",
                   "empty", "too_long", "reserved_type", "ts_boundary",
                   "ts_garbage", "bad_weight", "bad_user", "blank",
                   "bad_utf8", "trailing_comma"]


#: Kinds that keep a block readable by Arrow's JSON reader (valid JSON
#: objects, consistent column types), so that the fast path validates them.
CLEAN_KINDS = ["missing", "null_field", "empty", "too_long", "reserved_type",
               "ts_boundary", "bad_weight", "bad_user"]


@st.composite
def malformed_records(draw, event: dict, ts_mode: str = "mixed",
                      clean: bool = False):
    """A record derived from ``event`` that (mostly) breaks one rule; the
    oracle decides which ones really are dead letters. ``clean``: only
    ``CLEAN_KINDS``, with values of the column's JSON type."""
    kind = draw(st.sampled_from(CLEAN_KINDS if clean else MALFORMED_KINDS))
    if clean:
        obj = draw(valid_objects(event, ts_mode))
        if kind == "ts_boundary":
            want = int if ts_mode == "ms" else str
            obj["ts"] = draw(st.sampled_from(
                [t for t in TS_BOUNDARY if isinstance(t, want)
                 and (want is str or t < 2**63)]))
        elif kind == "bad_weight":
            obj["weight"] = draw(st.sampled_from(
                [0, -1, -1000, oracle.MAX_WEIGHT + 1]))
        elif kind == "bad_user":
            obj["user_id"] = draw(st.sampled_from(
                ["u" * (oracle.MAX_ID_LENGTH + 1), ""]))
        if kind in ("ts_boundary", "bad_weight", "bad_user"):
            return render(draw, obj)
    obj = draw(valid_objects(event, ts_mode))
    if kind == "truncated":
        line = render(draw, obj).rstrip()
        return line[:draw(st.integers(1, len(line) - 1))]
    if kind == "single_quotes":
        return render(draw, obj).replace('"', "'")
    if kind == "bare_key":
        return render(draw, obj).replace('"item_id"', "item_id", 1)
    if kind == "garbage":
        return draw(st.sampled_from(["hello", "{", "}", "{]", "nul", "[",
                                     '{"event_id"}', "{{}}", '{"a":1}}',
                                     '{"a":1} {"b":2}', "'x'", "{'a':1}"]))
    if kind == "not_object":
        return json.dumps(draw(st.sampled_from(
            [[obj], "a string", 1714557600000, None, True, [], 1.5])))
    if kind == "bad_utf8":
        line = render(draw, obj).encode("utf-8")
        # Before or after the object, inside its first key, or inside the
        # event_id value (see
        # test_invalid_utf8_in_a_string_value_is_a_dead_letter).
        key = line.index(b'"event_id"') + len(b'"event_id"')
        in_value = line.index(b'"', key + 1) + 1
        at = draw(st.sampled_from([0, len(line), line.index(b'"') + 1,
                                   in_value]))
        return line[:at] + draw(st.sampled_from(BAD_UTF8)) + line[at:]
    if kind == "trailing_comma":
        # test_trailing_comma_is_not_json
        line = render(draw, obj)
        at = line.rindex("}")
        comma = draw(st.sampled_from([",", ", ", ",\t"]))
        return line[:at] + comma + line[at:]
    if kind == "blank":
        return draw(st.sampled_from(["", " ", "   ", "\t", " \t "]))
    if kind == "missing":
        del obj[draw(st.sampled_from(["event_id", "item_id", "event_type",
                                      "ts"]))]
    elif kind == "null_field":
        obj[draw(st.sampled_from(["event_id", "item_id", "event_type",
                                  "ts"]))] = None
    elif kind == "wrong_type":
        field = draw(st.sampled_from(["event_id", "item_id", "event_type",
                                      "ts", "user_id"]))
        obj[field] = draw(st.sampled_from(WRONG_TYPES))
    elif kind == "empty":
        obj[draw(st.sampled_from(["event_id", "item_id", "event_type"]))] = ""
    elif kind == "too_long":
        field = draw(st.sampled_from(["event_id", "item_id", "event_type"]))
        limit = (oracle.MAX_EVENT_TYPE_LENGTH if field == "event_type"
                 else oracle.MAX_ID_LENGTH)
        obj[field] = draw(st.sampled_from(["x", "é", "😀"])) * (
            limit + draw(st.sampled_from([0, 1, 1, 100])))
    elif kind == "reserved_type":
        obj["event_type"] = draw(st.sampled_from(["*", "*", " *", "**"]))
    elif kind == "ts_boundary":
        obj["ts"] = draw(st.sampled_from(TS_BOUNDARY))
    elif kind == "ts_garbage":
        obj["ts"] = draw(st.sampled_from(TS_GARBAGE + [1714557600000.0,
                                                       1.7145576e12]))
    elif kind == "bad_weight":
        obj["weight"] = draw(st.sampled_from(BAD_WEIGHTS))
    elif kind == "bad_user":
        obj["user_id"] = draw(st.sampled_from(
            [5, True, ["u"], {"u": 1}, "u" * (oracle.MAX_ID_LENGTH + 1),
             "" ]))
    return render(draw, obj)


ANCHORS = [T30, T30 + 7 * HOUR + 30 * MINUTE, T30 - 1]


@st.composite
def event_dicts(draw, anchor, scale, event_id):
    return {"event_id": event_id,
            "item_id": draw(st.sampled_from(ITEMS)),
            "event_type": draw(st.sampled_from(TYPES)),
            "ts": draw(instants(anchor, scale)),
            "weight": draw(st.sampled_from([1, 1, 1, 2, 3, 1000]))}


@st.composite
def streams(draw, max_events=25, malformed=True, anchors=tuple(ANCHORS),
            scales=(3 * MINUTE, 3 * HOUR, 3 * DAY, 70 * DAY)):
    """A list of records (str, or bytes for broken UTF-8), in arrival order:
    valid events, re-deliveries (exact, re-rendered and conflicting) and
    malformed records, shuffled."""
    anchor = draw(st.sampled_from(anchors))
    scale = draw(st.sampled_from(scales))
    ts_mode = draw(st.sampled_from(["mixed", "ms", "rfc"]))
    # Half of the unmixed streams keep every record Arrow-readable, so that
    # the fast path (not only the per-line fallback) meets dead letters.
    clean = ts_mode != "mixed" and draw(st.booleans())
    n = draw(st.integers(0, max_events))
    ids = ["e%d" % i for i in range(n)]
    if n and draw(st.booleans()):  # ids with non-ASCII and odd characters
        ids[0] = draw(st.sampled_from(["é", "e 0", "😀", "x" * 256, '"q"']))
    evs = [draw(event_dicts(anchor, scale, i)) for i in ids]
    records = []
    for e in evs:
        obj = draw(valid_objects(e, ts_mode))
        line = render(draw, obj)
        records.append(line)
        copies = draw(st.sampled_from([0, 0, 0, 1, 2]))
        for _ in range(copies):
            how = draw(st.sampled_from(["exact", "rerendered", "conflict"]))
            if how == "exact":
                records.append(line)
            elif how == "rerendered":
                records.append(render(draw, draw(valid_objects(e, ts_mode))))
            else:
                other = draw(event_dicts(anchor, scale, e["event_id"]))
                for field in ("item_id", "event_type", "ts", "weight"):
                    if draw(st.booleans()):
                        other[field] = e[field]
                records.append(render(draw, draw(valid_objects(other,
                                                                ts_mode))))
        if malformed and draw(st.integers(0, 3)) == 0:
            records.append(draw(malformed_records(e, ts_mode, clean)))
    if malformed and draw(st.integers(0, 3)) == 0:
        dummy = draw(event_dicts(anchor, scale, "m"))
        for _ in range(draw(st.integers(1, 4))):
            records.append(draw(malformed_records(dummy, ts_mode, clean)))
    return draw(st.permutations(records))


def to_block(records, trailing_newline=True, as_bytes=False):
    if as_bytes or any(isinstance(r, bytes) for r in records):
        parts = [r if isinstance(r, bytes) else r.encode() for r in records]
        return b"\n".join(parts) + (b"\n" if trailing_newline and parts
                                    else b"")
    return "\n".join(records) + ("\n" if trailing_newline and records else "")


def oracle_parse(block):
    try:
        return oracle.parse_block(block)
    except oracle.Unspecified:
        assume(False)


def event_table(evs) -> pa.Table:
    return pa.table({
        "event_id": [e.event_id for e in evs],
        "item_id": [e.item_id for e in evs],
        "event_type": [e.event_type for e in evs],
        "ts": pa.array([e.ts for e in evs], pa.int64()),
        "user_id": pa.array([e.user_id for e in evs], pa.string()),
        "weight": pa.array([e.weight for e in evs], pa.int64()),
    }, schema=schema.EVENT_SCHEMA)


def _none_first(t: tuple):
    return tuple((v is not None, v) for v in t)


def event_tuples(table: pa.Table):
    return sorted((tuple(r[c] for c in oracle.Event._fields)
                   for r in table.to_pylist()), key=_none_first)


def counts_dict(table: pa.Table) -> dict:
    out = {}
    for r in table.to_pylist():
        key = (r["event_type"], r["slice_start"], r["item_id"])
        assert key not in out, f"slice key {key} appears twice"
        assert r["count"] > 0
        out[key] = r["count"]
    return out


# ---------------------------------------------------------------------------
# Parsing


@settings(max_examples=examples(150), **SETTINGS)
@given(records=streams(max_events=12, anchors=tuple(ANCHORS) + (
           oracle.MIN_TS_MS, oracle.MAX_TS_MS - 1)),
       trailing=st.booleans(), as_bytes=st.booleans())
def test_parse_json_lines_matches_oracle(records, trailing, as_bytes):
    block = to_block(records, trailing, as_bytes)
    want_events, want_dead = oracle_parse(block)
    n_records = len(oracle.split_records(block))

    got = events.parse_json_lines(block, source="prop")
    slow = events.parse_json_lines(block, source="prop", fast=False)
    for parsed in (got, slow):
        assert parsed.events.schema == schema.EVENT_SCHEMA
        assert parsed.events.num_rows + parsed.dead_letters.num_rows == (
            n_records)
        assert event_tuples(parsed.events) == sorted(
            map(tuple, want_events), key=_none_first)
        dead = parsed.dead_letters.to_pylist()
        assert collections.Counter(d["raw"] for d in dead) == (
            collections.Counter(raw for raw, _ in want_dead))
        for d in dead:
            assert isinstance(d["reason"], str) and d["reason"].strip()
            assert d["source"] == "prop"
    # The Arrow fast path and the per-line DuckDB path agree exactly,
    # reasons included.
    assert event_tuples(got.events) == event_tuples(slow.events)

    def reasons(parsed):
        return collections.Counter(
            (d["raw"], d["reason"]) for d in parsed.dead_letters.to_pylist())
    assert reasons(got) == reasons(slow)


@settings(max_examples=examples(150), **SETTINGS)
@given(records=streams(max_events=12), trailing=st.booleans())
def test_both_block_engines_equal_the_per_line_path(records, trailing):
    """The two whole-block readers of the fast path (Arrow's, DuckDB's)
    give exactly the events and dead letters (raw text and reason) of the
    per-line path and of the oracle, on dirty input: DuckDB's reader takes
    blocks with wrongly typed fields and mixed ``ts`` kinds that Arrow's
    leaves to the per-line path."""
    block = to_block(records, trailing)
    want_events, _ = oracle_parse(block)
    slow = events.parse_json_lines(block, source="prop", fast=False)

    def outcome(parsed):
        return (event_tuples(parsed.events), collections.Counter(
            (d["raw"], d["reason"], d["source"])
            for d in parsed.dead_letters.to_pylist()))
    assert outcome(slow)[0] == sorted(map(tuple, want_events),
                                      key=_none_first)
    for engine in ("arrow", "duckdb"):
        got = events.parse_json_lines(block, source="prop", engine=engine)
        assert got.events.schema == schema.EVENT_SCHEMA
        assert outcome(got) == outcome(slow), engine


def test_duckdb_engine_reads_clean_blocks_itself():
    """The DuckDB engine does take the block (no fallback) when every line
    is a JSON object, and types each field as the per-line path does."""
    block = "\n".join([
        '{"event_id":"e1","item_id":"a\\u00e9\\"x","event_type":"play",'
        '"ts":1714557600000,"user_id":null,"weight":null}',
        '{"event_id":5,"item_id":"i","event_type":"t","ts":1714557600000}',
        '{"event_id":"e3","item_id":"i","event_type":"t","ts":"2024-05-01'
        'T10:00:00.1239Z","weight":2}',
        '{"event_id":"e4","item_id":"i","event_type":"t","ts":1.5}',
        '{"event_id":"e5","item_id":"i","event_type":"t","ts":1,"user_id":[]}',
    ]) + "\n"
    body = block.encode()[:-1]
    n = events._fits_fast_path(body)
    assert n == 5
    typed = events._parse_block_duckdb(block.encode(), n, "s")
    assert typed is not None
    assert [(e["event_id"], e["item_id"], e["ts"], e["weight"])
            for e in typed.events.to_pylist()] == [
        ("e1", 'aé"x', 1714557600000, 1), ("e3", "i", 1714557600123, 2)]
    assert [d["reason"] for d in typed.dead_letters.to_pylist()] == [
        "event_id must be a string",
        "ts must be an RFC 3339 string or integer epoch milliseconds",
        "user_id must be a string"]
    slow = events.parse_json_lines(block, source="s", fast=False)
    assert typed.dead_letters.to_pylist() == slow.dead_letters.to_pylist()


@settings(max_examples=examples(60), **SETTINGS)
@given(records=streams(max_events=8), cuts=st.lists(st.integers(0, 100)))
def test_parsing_blocks_separately_equals_parsing_them_together(records, cuts):
    """A block may be split at any line boundary (file ranges, Kafka
    messages): the parts' results add up to the whole's."""
    records = [r for r in records if not isinstance(r, bytes)]
    bounds = sorted({0, len(records), *(c % (len(records) + 1) for c in cuts)})
    whole = events.parse_json_lines(to_block(records))
    evs, dead = [], []
    for lo, hi in zip(bounds, bounds[1:]):
        part = events.parse_json_lines(to_block(records[lo:hi]))
        evs += event_tuples(part.events)
        dead += [(d["raw"], d["reason"]) for d in part.dead_letters.to_pylist()]
    assert sorted(evs, key=_none_first) == event_tuples(whole.events)
    assert collections.Counter(dead) == collections.Counter(
        (d["raw"], d["reason"]) for d in whole.dead_letters.to_pylist())


@settings(max_examples=examples(200), **SETTINGS)
@given(ts=st.integers(oracle.MIN_TS_MS - DAY, oracle.MAX_TS_MS + DAY),
       offset=st.integers(-23 * 60 - 59, 23 * 60 + 59),
       frac=st.sampled_from(["full", "trim", "none", "zero"]))
def test_rfc3339_times_with_any_offset(ts, offset, frac):
    """Any RFC 3339 rendering (offsets up to +-23:59, millisecond fractions)
    denotes its instant, on both parse paths and in the oracle."""
    text = rfc3339(ts, offset, frac, "Z")
    assert oracle.rfc3339_to_ms(text) == ts
    line = json.dumps({"event_id": "e", "item_id": "i", "event_type": "t",
                       "ts": text})
    for fast in (True, False):
        parsed = events.parse_json_lines(line, fast=fast)
        if oracle.MIN_TS_MS <= ts < oracle.MAX_TS_MS:
            assert parsed.events["ts"].to_pylist() == [ts], text
        else:
            assert parsed.dead_letters.num_rows == 1, text


# ---------------------------------------------------------------------------
# De-duplication and slices


@settings(max_examples=examples(100), **SETTINGS)
@given(records=streams(max_events=25, malformed=False),
       batches=st.integers(1, 4), data=st.data())
def test_dedup_and_slices_match_oracle(records, batches, data):
    evs, _ = oracle_parse(to_block(records))
    unique = oracle.dedup(evs)
    arrival = data.draw(st.permutations(evs))
    got = counting.dedup_events(event_table(arrival))
    assert set(got.column_names) == set(counting.DEDUP_COLUMNS)
    assert sorted(tuple(r[c] for c in ("event_id", "item_id", "event_type",
                                       "ts", "weight"))
                  for r in got.to_pylist()) == sorted(
        (e.event_id, e.item_id, e.event_type, e.ts, e.weight) for e in unique)

    # The stream's path: the same rows, knowing the ids' hashes; a weak
    # hash makes distinct ids share one, which must not merge them.
    table = event_table(arrival)
    for hashes in (sharding.stable_hash(table["event_id"]), np.array(
            [len(i) % 3 for i in table["event_id"].to_pylist()],
            dtype=np.uint64)):
        hashed, kept = counting.dedup_hashed(table, hashes)
        assert sorted(map(repr, hashed.to_pylist())) == sorted(
            map(repr, got.to_pylist()))
        by_id = dict(zip(table["event_id"].to_pylist(), hashes.tolist()))
        assert kept.tolist() == [by_id[i] for i in
                                 hashed["event_id"].to_pylist()]

    minute = counting.count_slices(got)
    assert minute.schema == schema.SLICE_COUNTS_SCHEMA
    assert counts_dict(minute) == oracle.slice_counts(unique, MINUTE)
    hour = counting.rollup(minute, HOUR)
    assert counts_dict(hour) == oracle.slice_counts(unique, HOUR)
    assert counts_dict(counting.rollup(hour, DAY)) == oracle.slice_counts(
        unique, DAY)
    assert counts_dict(counting.rollup(minute, DAY)) == oracle.slice_counts(
        unique, DAY)

    # Partials are mergeable: count disjoint batches of de-duplicated events
    # (split by event_id, as the pipeline's dedup shards are), then merge.
    parts = collections.defaultdict(list)
    for e in unique:
        parts[data.draw(st.integers(0, batches - 1))].append(e)
    partials = [counting.count_slices(counting.dedup_events(event_table(p)))
                for p in parts.values()]
    assert counts_dict(counting.merge_counts(partials)) == (
        oracle.slice_counts(unique, MINUTE))
    # Added one at a time, as a stream shard holds them: the same counts,
    # and sorted by slice throughout (what ``add_counts`` relies on).
    held = schema.SLICE_COUNTS_SCHEMA.empty_table()
    for part in partials:
        held = counting.add_counts(held, part)
        starts = held["slice_start"].to_numpy()
        assert (np.diff(starts) >= 0).all()
    assert counts_dict(held) == oracle.slice_counts(unique, MINUTE)


# ---------------------------------------------------------------------------
# Ranking: per-shard top-K and the merge


def _rows(merged: pa.Table):
    return [(r["event_type"], r["window_start"], r["rank"], r["item_id"],
             r["count"], r["window_total"]) for r in merged.to_pylist()]


def _shards(counts: pa.Table, shards: int):
    if counts.num_rows == 0:
        return []
    shard = sharding.shard_of(counts["item_id"], shards)
    return [rows for _, rows in sharding.split_by_shard(counts, shard, shards)]


def impl_ranked(counts: pa.Table, spec: WindowSpec, k: int, shards: int,
                slice_ms: int):
    """One spec at a time: ``with_all_types`` + ``shard_window_top_k`` per
    shard, then ``merge_window_top_k``."""
    parts = [ranking.shard_window_top_k(ranking.with_all_types(rows), spec, k)
             for rows in _shards(counting.rollup(counts, slice_ms), shards)]
    return _rows(ranking.merge_window_top_k(parts, k))


def impl_ranked_all_specs(counts: pa.Table, specs, k: int, shards: int):
    """All specs at once, as the pipeline does: ``shard_top_k`` per shard
    (ranking over all types itself), then one merge per spec."""
    per_shard = [ranking.shard_top_k(rows, specs, k)
                 for rows in _shards(counts, shards)]
    return {spec: _rows(ranking.merge_window_top_k(
        [p[spec] for p in per_shard], k)) for spec in specs}


@settings(max_examples=examples(50), **SETTINGS)
@given(records=streams(max_events=30, malformed=False),
       k=st.sampled_from([1, 2, 3, 1000]), shards=st.sampled_from([1, 2, 5]),
       path=st.sampled_from(["per_spec", "per_spec_coarse", "all_specs"]),
       blocks=st.sampled_from([None, (1, 1000), (40, 3), (10**6, 1)]))
def test_ranked_windows_match_oracle(records, k, shards, path, blocks):
    """``path``: one spec at a time from 1-minute counts, the same from the
    coarsest counts each spec accepts, or all specs at once (the pipeline's
    way). ``blocks`` (BLOCK_CELLS, WINDOWS_PER_BLOCK) shrinks the blocks of
    sliding windows, so that block edges are exercised by small inputs."""
    evs, _ = oracle_parse(to_block(records))
    unique = oracle.dedup(evs)
    minute = counting.count_slices(event_table(unique))
    specs = [WindowSpec.parse(name) for name in oracle.WINDOW_SPECS]
    saved = {name: getattr(ranking, name) for name in
             ("BLOCK_CELLS", "WINDOWS_PER_BLOCK") if hasattr(ranking, name)}
    if blocks is not None:
        ranking.BLOCK_CELLS = blocks[0]
        if "WINDOWS_PER_BLOCK" in saved:
            ranking.WINDOWS_PER_BLOCK = blocks[1]
    try:
        if path == "all_specs":
            got = impl_ranked_all_specs(minute, specs, k, shards)
        else:
            got = {}
            for spec in specs:
                # Counts of any slice length dividing the step are valid.
                slice_ms = MINUTE if path == "per_spec" else max(
                    s for s in (MINUTE, HOUR, DAY) if spec.step_ms % s == 0)
                got[spec] = impl_ranked(minute, spec, k, shards, slice_ms)
    finally:
        for name, value in saved.items():
            setattr(ranking, name, value)
    for spec, (name, (length, slide)) in zip(specs,
                                             oracle.WINDOW_SPECS.items()):
        want = oracle.ranked_windows(unique, length, slide, k)
        assert got[spec] == want, f"window {name}, k={k}, shards={shards}"


TIE_EVENTS = [  # (item, type, minute offset, weight): ties everywhere
    ("b", "play", 0, 1), ("a", "play", 0, 1), ("c", "click", 0, 2),
    ("😀", "play", 1, 2), ("\ue000", "click", 1, 2), ("é", "play", 59, 1),
    ("a", "click", 60, 1), ("b", "click", 61, 1), ("B", "view", 61, 1),
]


@pytest.mark.parametrize("k", [1, 2, 3, 100])
@pytest.mark.parametrize("shards", [1, 4])
def test_ranked_windows_hand_made_ties(k, shards):
    unique = [oracle.Event("id%d" % i, item, et, T30 + m * MINUTE + i, None, w)
              for i, (item, et, m, w) in enumerate(TIE_EVENTS)]
    minute = counting.count_slices(event_table(unique))
    specs = [WindowSpec.parse(name) for name in oracle.WINDOW_SPECS]
    together = impl_ranked_all_specs(minute, specs, k, shards)
    for spec, (name, (length, slide)) in zip(specs,
                                             oracle.WINDOW_SPECS.items()):
        want = oracle.ranked_windows(unique, length, slide, k)
        assert impl_ranked(minute, spec, k, shards, MINUTE) == want, name
        assert together[spec] == want, name
    # The oracle itself, on the first minute over all types: 2-2-1-1 ties.
    first = [r for r in oracle.ranked_windows(unique, MINUTE, None, 10)
             if r[0] == "*" and r[1] == T30]
    assert [(r[3], r[4]) for r in first] == [("c", 2), ("a", 1), ("b", 1)]
    second = [r for r in oracle.ranked_windows(unique, MINUTE, None, 10)
              if r[0] == "*" and r[1] == T30 + MINUTE]
    assert [r[3] for r in second] == ["\ue000", "😀"]


# ---------------------------------------------------------------------------
# Range decomposition


@st.composite
def ranges(draw):
    base = draw(st.sampled_from([T30, T30 + 13 * HOUR, oracle.MIN_TS_MS,
                                 T30 - 7 * MINUTE]))
    start = base + draw(st.one_of(
        st.integers(-3 * 1440, 3 * 1440),
        st.sampled_from([0, -1, 1, 59, 60, 61, 1439, 1440, 1441]),
        st.integers(-3, 3).map(lambda d: d * 1440 + 60 * 5))) * MINUTE
    length = draw(st.one_of(
        st.integers(1, 3 * 60),
        st.integers(1, 3 * 1440),
        st.integers(1, 30 * 1440),
        st.sampled_from([1, 59, 60, 61, 1439, 1440, 1441, 2880, 30 * 1440,
                         30 * 1440 - 1]))) * MINUTE
    return start, start + length


@settings(max_examples=examples(150), **SETTINGS)
@given(rng=ranges())
def test_decompose_range_is_an_exact_minimal_aligned_cover(rng):
    start, end = rng
    runs = decompose_range(start, end)
    sizes = {"1m": MINUTE, "1h": HOUR, "1d": DAY}
    t, n = start, 0
    for length, first, stop in runs:
        size = sizes[length]
        assert first == t, "runs must be contiguous and start at start"
        assert stop > first
        assert first % size == 0 and stop % size == 0, "unaligned run"
        n += (stop - first) // size
        t = stop
    assert t == end
    assert n == oracle.min_cover_slices(start, end)


@pytest.mark.parametrize("start, end", [
    (T30, T30), (T30 + MINUTE, T30), (T30 + 1, T30 + MINUTE),
    (T30, T30 + MINUTE + 1), (T30, T30 + 30 * DAY + MINUTE)])
def test_decompose_range_rejects_bad_ranges(start, end):
    with pytest.raises(ValueError):
        decompose_range(start, end)


# ---------------------------------------------------------------------------
# The query layer over written Parquet


def write_slices_tables(output: str, unique) -> None:
    minute = counting.count_slices(event_table(unique))
    for name, ms in (("1m", MINUTE), ("1h", HOUR), ("1d", DAY)):
        table = counting.to_slices_table(counting.rollup(minute, ms), name,
                                         "batch", 0)
        output_tables.append(output, output_layout.SLICES, table,
                             source="batch")


@st.composite
def query_ranges(draw, unique):
    if unique and draw(st.integers(0, 3)):
        around = draw(st.sampled_from(unique)).ts
    else:
        around = T30
    start = around // MINUTE * MINUTE + draw(st.one_of(
        st.integers(-120, 120), st.integers(-3 * 1440, 1440),
        st.sampled_from([0, 1, -1, -60, -1440]))) * MINUTE
    length = draw(st.one_of(st.integers(1, 200), st.integers(1, 3 * 1440),
                            st.integers(1, 30 * 1440),
                            st.sampled_from([1440, 30 * 1440]))) * MINUTE
    return start, start + length


@settings(max_examples=examples(25), **SETTINGS)
@given(records=streams(max_events=25, malformed=False), data=st.data())
def test_query_topk_over_parquet_matches_oracle(records, data):
    evs, _ = oracle_parse(to_block(records))
    unique = oracle.dedup(evs)
    assume(unique)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as out:
        write_slices_tables(out, unique)
        known = sorted({e.event_type for e in unique})
        for _ in range(6):
            start, end = data.draw(query_ranges(unique))
            k = data.draw(st.sampled_from([1, 2, 3, 50]))
            etype = data.draw(st.sampled_from([None, "*", *known]))
            got = [(r.rank, r.item_id, r.count)
                   for r in query.topk(out, k, start, end, etype)]
            want = oracle.topk(unique, k, start, end, etype)
            assert got == want, (start, end, k, etype)


# ---------------------------------------------------------------------------
# RFC 3339 corner cases (regression tests: each of these was wrong once)

_OK = '"event_id":"e","item_id":"a","event_type":"play"'


def _parse_ts(ts: str, fast: bool):
    parsed = events.parse_json_lines('{%s,"ts":"%s"}' % (_OK, ts), fast=fast)
    return parsed.events["ts"].to_pylist()


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("ts, want", [
    # 10:00:59.9995 lies in minute 10:00, and 2099-12-31T23:59:59.9999 in
    # range: sub-millisecond digits are cut, never rounded up.
    ("2024-05-01T10:00:59.9995Z", 1714557659999),
    ("2099-12-31T23:59:59.9999Z", oracle.MAX_TS_MS - 1),
    # RFC 3339 section 5.6: "T" and "Z" may be lower case.
    ("2024-05-01t10:00:00Z", 1714557600000),
    ("2024-05-01T10:00:00z", 1714557600000),
])
def test_rfc3339_valid_corner_cases(fast, ts, want):
    assert oracle.rfc3339_to_ms(ts) == want
    assert _parse_ts(ts, fast) == [want]


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("ts", [
    "2024-05-01", "2024-05-01T10:00:00", "2024-05-01T10:00Z",
    "2024-5-1T10:00:00Z", "2024-05-01T10:00:00+0530", "2024-05-01T10:00:00+05",
    "2024-05-01T10:00:00 UTC", "2024-05-01T24:00:00Z",
    "2024-05-01T10:00:00+24:00", " 2024-05-01T10:00:00Z",
    "2024-05-01 10:00:00Z", "2024-05-01T10:00:00.Z",
])
def test_rfc3339_lookalikes_are_dead_letters(fast, ts):
    """Spec: ts is integer epoch ms or an RFC 3339 string; anything else is
    a dead letter (DuckDB's TIMESTAMPTZ cast alone accepts all of these)."""
    assert oracle.rfc3339_to_ms(ts) is None
    assert _parse_ts(ts, fast) == []


# ---------------------------------------------------------------------------
# Bugs found by the properties above, each with its minimal input: all
# fixed, these are regression tests.


def test_trailing_comma_is_not_json():
    """Was: RFC 8259 has no trailing commas (the spec: one JSON object per
    line), yet both parse paths (pyarrow.json and DuckDB's json_valid)
    counted ``{...,}`` as a valid event. The parser now checks for a comma
    before a closing bracket outside string values (``events._TRAILING_COMMA``)
    and sends such blocks to the per-line path, which says "invalid JSON"."""
    line = '{%s,"ts":1714557600000,}' % _OK
    assert oracle.parse_record(line) == (None, "invalid JSON")
    for fast in (True, False):
        parsed = events.parse_json_lines(line, fast=fast)
        assert (parsed.events.num_rows, parsed.dead_letters.num_rows) == (
            0, 1), f"fast={fast}"


def test_null_first_record_does_not_crash_the_process():
    """Was: pyarrow.json.read_json (the fast path) segfaults when the first
    non-blank record of a block is the JSON literal ``null`` (the
    generator's ``not_object`` kind writes such records). Run in a child
    process, as it killed the interpreter."""
    code = ("from topk.core import events\n"
            "p = events.parse_json_lines(b'null\\n')\n"
            "print(p.events.num_rows, p.dead_letters.num_rows)\n")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-300:]}"
    assert proc.stdout.split() == ["0", "1"]


def test_fast_path_reason_for_null_record():
    """Was: after a first valid line, Arrow reads a ``null`` record as a row
    of nulls, so the fast path said "missing event_id" and the per-line path
    "not a JSON object"."""
    block = '{%s,"ts":1714557600000}\nnull\n' % _OK
    fast, slow = (events.parse_json_lines(block, fast=f).dead_letters
                  .to_pylist() for f in (True, False))
    assert fast == slow


def test_lone_blank_line_is_a_dead_letter():
    """Was: "\n\n" is two blank records and " \n" one, but "\n" none: the
    record vanished instead of becoming a dead letter."""
    assert oracle.split_records(b"\n") == [b""]
    for fast in (True, False):
        parsed = events.parse_json_lines(b"\n", fast=fast)
        assert parsed.dead_letters.num_rows == 1, f"fast={fast}"


def test_byte_order_mark_does_not_depend_on_the_neighbours():
    """Was: with a UTF-8 byte order mark before the first record, the fast
    path (a clean block) accepted the record and the per-line path (a block
    with one bad line) rejected it: its fate depended on other records."""
    line = "\ufeff" + '{%s,"ts":1714557600000}' % _OK
    alone = events.parse_json_lines(line)
    with_bad_neighbour = events.parse_json_lines(line + "\nx")
    assert alone.events.num_rows == with_bad_neighbour.events.num_rows


def test_invalid_utf8_in_a_string_value_is_a_dead_letter():
    """Was: pyarrow.json.read_json does not check UTF-8 inside string
    values, so on the fast path (a block whose lines all start with "{")
    such a record became a valid event whose item_id (or event_type,
    user_id) was not UTF-8, which the batch pipeline wrote to Parquet and
    DuckDB (the query layer) then refused to read (the end-to-end test is in
    tests/pipelines/test_batch_oracle.py). A block that is not valid UTF-8
    now takes the per-line path, which says "invalid UTF-8"."""
    line = b'{"event_id":"e","item_id":"a\xffb","event_type":"p","ts":1714557600000}'
    assert oracle.parse_record(line) == (None, "invalid UTF-8")
    for fast in (True, False):
        parsed = events.parse_json_lines(line, fast=fast)
        assert (parsed.events.num_rows, parsed.dead_letters.num_rows) == (
            0, 1), f"fast={fast}"
