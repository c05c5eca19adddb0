"""``topk stream --bounded`` on a real Kafka broker against the oracle."""
import uuid

import duckdb
import pytest

import generated
import oracle  # tests/ is on sys.path (conftest.py)
from topk import cli
from topk.loadgen import generator, producer
from topk.storage import tables as output_tables

pytestmark = pytest.mark.integration


def test_bounded_stream_equals_the_oracle(kafka_broker, tmp_path, capsys):
    config = generator.GeneratorConfig(
        events=6000, items=40, rate=5, duplicate_share=0.05,
        malformed_share=0.02, ts_format="mixed", seed=11)
    topic = f"stream-{uuid.uuid4().hex[:10]}"
    producer.produce(kafka_broker.bootstrap, topic, config,
                     events_per_message=7, partitions=3, progress=None)
    out = str(tmp_path / "out")
    assert cli.main(["stream", "--bootstrap", kafka_broker.bootstrap,
                     "--topic", topic, "--output", out, "--bounded",
                     "--windows", "1h,1h/1m", "--k", "3"]) == 0

    valid, dead = generated.parsed_records(config)
    events = oracle.dedup(valid)
    assert len(events) == 6000

    con = duckdb.connect()
    output_tables.register_duckdb(con, out)
    for spec, length, slide in (("1h", 3_600_000, None),
                                ("1h_1m", 3_600_000, 60_000)):
        got = con.sql(
            "SELECT event_type, epoch_ms(window_start), rank, item_id, count,"
            " window_total FROM ranked_windows"
            f" WHERE window_spec = '{spec}' AND source = 'stream'"
            " ORDER BY 1, 2, 3").fetchall()
        assert got == [tuple(r) for r in oracle.ranked_windows(
            events, length, slide, 3)], spec

    dead_rows = con.sql("SELECT raw, reason FROM dead_letters").fetchall()
    assert sorted(raw for raw, _ in dead_rows) == sorted(
        raw.decode() if isinstance(raw, bytes) else raw for raw, _ in dead)
    assert all(reason for _, reason in dead_rows)

