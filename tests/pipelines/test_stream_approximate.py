"""``topk stream --bounded --method cms,frequent_items`` on a real Kafka
broker: the approximate path of the steps the bounded stream shares with
``topk batch`` (``batch.add_top_k_tables``), against the oracle."""
import collections
import uuid

import pytest

import generated
import oracle  # tests/ is on sys.path (conftest.py)
from topk import cli
from topk.storage import tables
from topk.loadgen import generator, producer
from topk.approx import sketches
from topk.core.windows import WindowSpec

pytestmark = pytest.mark.integration

METHODS = ("cms", "frequent_items")
WINDOWS = ("1h", "1h/1m", "1d")
K = 5
#: Small enough that sketches of 400 items drop some: the bounds and flags
#: are really tested.
BUDGET = 2048


def read_rows(output: str, table: str) -> list[dict]:
    """The committed rows of ``table`` (its Delta snapshot)."""
    return tables.dataset(output, table).to_table().to_pylist()


def ms(value) -> int:
    return int(value.timestamp() * 1000)


def test_bounded_stream_sketches_bound_the_oracle(kafka_broker, tmp_path):
    config = generator.GeneratorConfig(
        events=5000, items=400, zipf=1.0, rate=2, duplicate_share=0.05,
        malformed_share=0.02, weight_share=0.1, ts_format="mixed", seed=23)
    topic = f"stream-approx-{uuid.uuid4().hex[:10]}"
    producer.produce(kafka_broker.bootstrap, topic, config,
                     events_per_message=9, partitions=3, progress=None)
    out = str(tmp_path / "out")
    assert cli.main(["stream", "--bootstrap", kafka_broker.bootstrap,
                     "--topic", topic, "--output", out, "--bounded",
                     "--windows", ",".join(WINDOWS), "--k", str(K),
                     "--method", ",".join(METHODS),
                     "--sketch_budget_bytes", str(BUDGET)]) == 0

    valid, _ = generated.parsed_records(config)
    events = oracle.dedup(valid)
    assert len(events) == 5000

    ranked = read_rows(out, "ranked_windows")
    assert ranked and {r["method"] for r in ranked} == set(METHODS)
    flagged = collections.Counter()
    for name in WINDOWS:
        spec = WindowSpec.parse(name)
        # All true counts of every window: the oracle's ranking, uncut.
        true = collections.defaultdict(dict)
        for etype, start, _, item, count, _ in oracle.ranked_windows(
                events, spec.length_ms, spec.slide_ms, None):
            true[(etype, start)][item] = count
        for method in METHODS:
            rows = [r for r in ranked if r["method"] == method
                    and r["window_length"] == spec.length_name
                    and r["slide"] == spec.slide_name]
            assert {(r["event_type"], ms(r["window_start"]))
                    for r in rows} == set(true), (method, name)
            for r in rows:
                assert r["source"] == "stream"
                counts = true[(r["event_type"], ms(r["window_start"]))]
                c = counts.get(r["item_id"], 0)
                assert r["lower_bound"] <= c <= r["upper_bound"], (name, r)
                assert r["window_total"] == sum(counts.values())
                if r["guaranteed"]:
                    # In the true top k whatever the tie rule.
                    assert sum(v >= c for i, v in counts.items()
                               if i != r["item_id"]) < K, (name, r, counts)
                flagged[(method, r["guaranteed"])] += 1
    # Flags are neither never nor always set: heavy hitters are proven,
    # the tail of a dropped-from sketch is not.
    for method in METHODS:
        assert flagged[(method, True)] and flagged[(method, False)], flagged

    # One sketch per method, slice length, event type and slice, within the
    # budget, holding the slice's exact total.
    stored = read_rows(out, "sketches")
    for length, size in oracle.SLICE_LENGTHS.items():
        totals = collections.Counter()
        for e in events:
            for etype in (e.event_type, oracle.ALL_TYPES):
                totals[(etype, e.ts - e.ts % size)] += e.weight
        for method in METHODS:
            rows = [r for r in stored if r["method"] == method
                    and r["slice_length"] == length]
            assert sorted((r["event_type"], ms(r["slice_start"]))
                          for r in rows) == sorted(totals), (method, length)
            for r in rows:
                assert r["source"] == "stream" and r["budget_bytes"] == BUDGET
                assert r["nbytes"] == len(r["sketch"]) <= BUDGET
                sketch = sketches.sketch_from_bytes(r["sketch"])
                assert sketch.method == method
                assert sketch.total == r["total"] == totals[
                    (r["event_type"], ms(r["slice_start"]))]
