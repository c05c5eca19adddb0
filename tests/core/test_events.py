"""Parsing and validation of event batches (no Beam)."""
import json

import pyarrow as pa
import pytest

from topk.core import events, schema

T0 = 1714557600000  # 2024-05-01T10:00:00Z


def line(**fields) -> bytes:
    base = {"event_id": "e1", "item_id": "i1", "event_type": "play", "ts": T0}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("record, reason", [
    (b'{"event_id": "e1", "item_id":', "invalid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b"", "empty record"),
    (b"   ", "empty record"),
    (line(event_id=...), "missing event_id"),
    (line(event_id=7), "event_id must be a string"),
    (line(item_id=None), "missing item_id"),
    (line(item_id={"a": 1}), "item_id must be a string"),
    (line(event_type=...), "missing event_type"),
    (line(ts=...), "missing ts"),
    (line(ts=1.5), "ts must be an RFC 3339 string or integer epoch milliseconds"),
    (line(ts="yesterday"), "ts is not a valid RFC 3339 time or epoch-ms integer"),
    (line(ts=5), "ts out of range [2000-01-01, 2100-01-01)"),
    (line(ts="2200-01-01T00:00:00Z"), "ts out of range [2000-01-01, 2100-01-01)"),
    (line(weight=0), "weight must be a positive integer <= 1000000"),
    (line(weight=-3), "weight must be a positive integer <= 1000000"),
    (line(weight="2"), "weight must be a positive integer"),
    (line(item_id="x" * 257), "item_id longer than 256 characters"),
    (line(event_id=""), "event_id is empty"),
    (line(event_type="*"), "event_type '*' is reserved"),
    (line(user_id=12), "user_id must be a string"),
])
def test_each_rule_sends_the_record_to_dead_letters(fast, record, reason):
    block = line(event_id="ok") + b"\n" + record + b"\n"
    parsed = events.parse_json_lines(block, "unit", fast=fast)
    assert parsed.events["event_id"].to_pylist() == ["ok"]
    assert parsed.dead_letters.to_pylist() == [
        {"raw": record.decode(), "reason": reason, "source": "unit"}]


@pytest.mark.parametrize("fast", [True, False])
def test_valid_events_are_typed_and_defaulted(fast):
    block = b"\n".join([
        line(event_id="a", ts="2024-05-01T10:00:00.250Z", weight=3,
             user_id="u"),
        line(event_id="b", ts="2024-05-01T12:00:00+02:00"),
        line(event_id="c", ts=T0 + 1, weight=None, extra={"x": [1]}),
    ])
    parsed = events.parse_json_lines(block, fast=fast)
    assert parsed.dead_letters.num_rows == 0
    assert parsed.events.schema == schema.EVENT_SCHEMA
    assert parsed.events.to_pylist() == [
        {"event_id": "a", "item_id": "i1", "event_type": "play",
         "ts": T0 + 250, "user_id": "u", "weight": 3},
        {"event_id": "b", "item_id": "i1", "event_type": "play",
         "ts": T0, "user_id": None, "weight": 1},
        {"event_id": "c", "item_id": "i1", "event_type": "play",
         "ts": T0 + 1, "user_id": None, "weight": 1},
    ]


def test_mixed_ts_types_in_one_block_are_all_parsed():
    block = line(event_id="a", ts=T0) + b"\n" + line(
        event_id="b", ts="2024-05-01T10:00:00Z")
    parsed = events.parse_json_lines(block)
    assert parsed.events["ts"].to_pylist() == [T0, T0]


def test_invalid_utf8_is_a_dead_letter_not_a_crash():
    block = line(event_id="ok") + b"\n\xff\xfe" + line(event_id="bad")
    parsed = events.parse_json_lines(block)
    assert parsed.events["event_id"].to_pylist() == ["ok"]
    assert parsed.dead_letters["reason"].to_pylist() == ["invalid UTF-8"]


def test_every_record_is_accounted_for():
    records = [line(event_id=str(i)) if i % 3 else b"{bad" for i in range(300)]
    parsed = events.parse_json_lines(b"\n".join(records) + b"\n")
    assert parsed.events.num_rows == 200
    assert parsed.dead_letters.num_rows == 100


def test_split_lines_keeps_blank_records_and_drops_one_trailing_newline():
    assert events.split_lines(b"a\n\nb\n").to_pylist() == ["a", "", "b"]
    assert events.split_lines(b"").to_pylist() == []
    assert events.split_lines(b"\n").to_pylist() == [""]


def test_validate_table_accepts_timestamps_and_strings():
    t = pa.table({
        "event_id": ["a", "b", None],
        "item_id": ["i", "i", "i"],
        "event_type": ["play"] * 3,
        "ts": pa.array([T0, T0 + 5, T0]).cast(pa.timestamp("ms", tz="UTC")),
    })
    parsed = events.validate_table(t, "t.parquet")
    assert parsed.events["ts"].to_pylist() == [T0, T0 + 5]
    assert parsed.events["weight"].to_pylist() == [1, 1]
    [dead] = parsed.dead_letters.to_pylist()
    assert dead["reason"] == "missing event_id"
    assert json.loads(dead["raw"])["item_id"] == "i"

    strings = t.set_column(3, "ts", pa.array(
        ["2024-05-01T10:00:00Z", "nope", "2024-05-01T10:00:00Z"]))
    parsed = events.validate_table(strings)
    assert parsed.dead_letters["reason"].to_pylist() == [
        "ts is not a valid RFC 3339 time or epoch-ms integer",
        "missing event_id"]


def test_validate_table_rejects_wrong_column_types_whole():
    t = pa.table({"event_id": [1], "item_id": ["i"], "event_type": ["p"],
                  "ts": [T0]})
    with pytest.raises(ValueError, match="event_id must be a string column"):
        events.validate_table(t)
    with pytest.raises(ValueError, match="lacks required column"):
        events.validate_table(t.drop(["ts"]))
