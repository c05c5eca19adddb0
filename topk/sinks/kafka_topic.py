"""Dead letters to a Kafka topic (kafka-python), one message per record.

Each message is JSON ``{"raw": ..., "reason": ..., "source": ...}`` (the
``DEAD_LETTER_SCHEMA`` row), keyed by ``source`` (topic/partition@offsets),
so the records that broke a rule can be inspected, fixed and replayed with
ordinary Kafka tools. A bundle's messages are flushed before the bundle
completes, and a message the producer gave up on (after its own retries,
for ``delivery_timeout_ms``: a broker down that long) fails the bundle
with ``DeadLettersNotSent``: a runner that retries the bundle may send a
record twice, never lose one.
"""
import json

import apache_beam as beam
from kafka import KafkaProducer


class DeadLettersNotSent(RuntimeError):
    """The producer gave up on some dead letters of a bundle."""


class _SendDeadLettersFn(beam.DoFn):

    def __init__(self, bootstrap_servers, topic: str,
                 producer_config: dict | None = None):
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._config = dict(producer_config or {})
        self._producer = None
        self._sent = []  # the bundle's send futures

    def setup(self):
        config = {"acks": "all", "linger_ms": 20, **self._config}
        self._producer = KafkaProducer(bootstrap_servers=self._bootstrap,
                                       **config)

    def process(self, dead_letters):
        # Dead letters are rare and each needs its own message: a Python
        # loop is fine here (never on the events' path).
        for row in dead_letters.to_pylist():
            self._sent.append(self._producer.send(
                self._topic, key=(row["source"] or "").encode(),
                value=json.dumps(row, ensure_ascii=False).encode()))

    def finish_bundle(self):
        # flush() returns when every send has succeeded or failed; only
        # the futures tell which.
        self._producer.flush()
        sent, self._sent = self._sent, []
        failed = [f.exception for f in sent if f.failed()]
        if failed:
            raise DeadLettersNotSent(
                f"{len(failed)} of {len(sent)} dead letters were not sent "
                f"to {self._topic!r}: {failed[0]!r}")

    def teardown(self):
        if self._producer is not None:
            self._producer.close(timeout=10)


class WriteDeadLettersToKafka(beam.PTransform):
    """``pa.Table`` batches in ``DEAD_LETTER_SCHEMA`` -> one JSON message
    per record on ``topic``. Yields nothing."""

    def __init__(self, bootstrap_servers, topic: str,
                 producer_config: dict | None = None):
        super().__init__()
        self._fn = _SendDeadLettersFn(bootstrap_servers, topic,
                                      producer_config)

    def expand(self, dead_letters):
        return dead_letters | "Send" >> beam.ParDo(self._fn)
