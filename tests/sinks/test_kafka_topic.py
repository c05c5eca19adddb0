"""The dead-letter topic sink against a real broker: every dead letter
arrives, and one the producer gave up on fails the bundle instead of
vanishing."""
import json
import uuid

import pyarrow as pa
import pytest
from kafka import KafkaConsumer

from topk.core import schema
from topk.loadgen import producer
from topk.sinks.kafka_topic import DeadLettersNotSent, _SendDeadLettersFn

integration = pytest.mark.integration


def dead_letters(n, source="t/0@1-2"):
    return pa.Table.from_pylist(
        [{"raw": f"bad {i}", "reason": "not JSON", "source": source}
         for i in range(n)], schema=schema.DEAD_LETTER_SCHEMA)


def read_all(bootstrap, topic, expected, timeout_ms=10_000):
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap,
                             auto_offset_reset="earliest",
                             consumer_timeout_ms=timeout_ms)
    try:
        got = []
        for message in consumer:
            got.append(json.loads(message.value))
            if len(got) >= expected:
                break
        return got
    finally:
        consumer.close()


@integration
def test_every_dead_letter_of_a_bundle_arrives(kafka_broker):
    topic = f"dead-{uuid.uuid4().hex[:10]}"
    producer.ensure_topic(kafka_broker.bootstrap, topic, 1)
    fn = _SendDeadLettersFn(kafka_broker.bootstrap, topic)
    fn.setup()
    try:
        fn.process(dead_letters(3))
        fn.process(dead_letters(2, source="t/1@5-5"))
        fn.finish_bundle()
    finally:
        fn.teardown()
    got = read_all(kafka_broker.bootstrap, topic, 5)
    assert sorted(r["raw"] for r in got) == sorted(
        ["bad 0", "bad 1", "bad 2", "bad 0", "bad 1"])
    assert {r["source"] for r in got} == {"t/0@1-2", "t/1@5-5"}


@integration
def test_dead_letters_the_producer_gave_up_on_fail_the_bundle(
        kafka_broker):
    topic = f"dead-{uuid.uuid4().hex[:10]}"
    producer.ensure_topic(kafka_broker.bootstrap, topic, 1)
    # A short delivery timeout stands for a long outage.
    fn = _SendDeadLettersFn(kafka_broker.bootstrap, topic, {
        "delivery_timeout_ms": 3_000, "request_timeout_ms": 1_000,
        "linger_ms": 0})
    fn.setup()
    try:
        fn.process(dead_letters(1))
        fn.finish_bundle()  # the broker is up: sent
        kafka_broker.stop()
        try:
            fn.process(dead_letters(4))
            with pytest.raises(DeadLettersNotSent, match="4 of 4"):
                fn.finish_bundle()
        finally:
            kafka_broker.start()
    finally:
        fn.teardown()
