"""Batches and payloads (``topk.connectors.kafka.reader``), no broker:
``PartitionReader`` against a real one is tested in
tests/sources/test_kafka_source.py."""
import pytest

from topk.connectors import kafka as kafka_package
from topk.connectors.kafka import reader
from topk.core import events, schema


@pytest.mark.parametrize("values, records", [
    ([b'{"a":1}'], ['{"a":1}']),
    ([b"a", b"b\nc"], ["a", "b", "c"]),  # a message with two events
    ([b"a\n", b"b\n"], ["a", "b"]),  # a trailing newline ends a message
    ([b"a", b""], ["a", ""]),  # an empty message is an empty record
    ([b"", b"a"], ["", "a"]),
    ([b"a", b"", b"", b"b"], ["a", "", "", "b"]),
    ([b"", b""], ["", ""]),
    ([b"a\n\nb"], ["a", "", "b"]),  # a blank line inside a message
    ([b"\na"], ["", "a"]),  # a message whose first record is empty
    ([b"a", b"b\n", b""], ["a", "b", ""]),
])
def test_join_values_keeps_every_record(values, records):
    payload = reader.join_values(values)
    assert events.split_lines(payload).to_pylist() == records


def test_join_values_common_case_is_a_plain_join():
    values = [b"x" * 10] * 5
    assert reader.join_values(values) == b"\n".join(values)
    assert reader.join_values([]) == b""


def test_a_batch_of_one_empty_message_is_one_record():
    # The parser reads a lone newline as one empty record.
    assert events.split_lines(reader.join_values([b""])).to_pylist() == [""]


class _Rec:
    def __init__(self, offset, value, timestamp=0):
        self.offset, self.value, self.timestamp = offset, value, timestamp


def test_batch_truncation_source_and_timestamps():
    batch = reader.Batch("t", 2, [_Rec(5, b"a", 10), _Rec(6, b"bb", 30),
                                  _Rec(8, b"ccc", 20)], 6)
    assert batch.source() == "t/2@5-8"
    assert batch.max_timestamp() == 30
    assert batch.payload() == b"a\nbb\nccc"
    assert batch.before(9) is batch
    head = batch.before(7)
    assert [r.offset for r in head.records] == [5, 6] and head.nbytes == 3
    assert len(batch.before(5)) == 0
    assert reader.Batch("t", 0, [_Rec(1, b"x", -1)], 1).max_timestamp() is None


def test_a_batch_spans_at_most_the_skew_of_record_time():
    # A sparse backlog: one poll would hold an hour of event time, whose
    # oldest events the watermark (newest - skew) would pass at once.
    records = [_Rec(i, b"x", 1_000_000 + i * 4_000) for i in range(10)]
    assert reader.span_cut(records, 10_000) == 3  # 0, 4 and 8 s after
    assert reader.span_cut(records, 60_000) == 10
    assert reader.span_cut(records[:1], 0) == 1  # always at least one
    assert reader.span_cut([_Rec(0, b"x", -1), _Rec(1, b"x", 9e9)], 10) == 2


def test_a_live_partition_hands_its_batches_on_sooner():
    now = 1_796_432_400_000
    live = now - 30_000  # a record half a minute old
    old = now - schema.LIVE_LAG_MS - 1  # a backlog
    assert reader.read_deadline(100.0, live, now, 1.0, 0.25) == 100.25
    assert reader.read_deadline(100.0, old, now, 1.0, 0.25) == 101.0
    # No record time yet: the long call, as for a backlog.
    assert reader.read_deadline(100.0, None, now, 1.0, 0.25) == 101.0
    # A live call never lasts longer than max_read_s.
    assert reader.read_deadline(100.0, live, now, 0.1, 0.25) == 100.1


def test_the_package_exports_what_it_lists():
    for name in kafka_package.__all__:
        assert getattr(kafka_package, name) is not None, name
    assert kafka_package.PartitionReader is reader.PartitionReader


def test_a_reader_is_behind_from_when_the_broker_first_shows_more():
    # Not behind: nothing known (the broker is down), or at the end.
    assert reader.behind_since(None, 1_000, None, 50) is None
    assert reader.behind_since(None, 1_000, 50, 50) is None
    # Behind: the clock starts at the first sight and is kept after.
    assert reader.behind_since(None, 1_000, 60, 50) == 1_000
    assert reader.behind_since(1_000, 9_000, 61, 50) == 1_000
    # Caught up, or the broker gone again: the clock starts over.
    assert reader.behind_since(1_000, 9_000, 61, 61) is None
    assert reader.behind_since(1_000, 9_000, None, 50) is None
