"""Message senders: one interface over kafka-python's ``KafkaProducer`` and
confluent-kafka's ``Producer`` (librdkafka), for ``topk produce``.

A sender sends values to explicit partitions with explicit timestamps and
counts the messages the broker refused (``failed``); ``flush`` waits for
every message in flight. confluent-kafka is the default: on this machine
(2 cores, local broker) ``topk produce --events 300000`` (one-event
messages) took 1.8 s with it against 6.1 s with kafka-python, at 0.30x the
CPU, generation and start-up included (farm-bench, medians of 5), so a load
generator at 50k events/s leaves the cores to the pipeline it feeds.
"""
import time

from topk.connectors.kafka.reader import KAFKA_CLIENTS, default_client

#: How long ``flush`` waits for messages in flight before counting them
#: as failed.
FLUSH_TIMEOUT_S = 120.0


def _wait_for_partitions(lookup, topic: str, timeout_s: float) -> list:
    """The sorted partition numbers ``lookup()`` returns, asked until it
    returns some (a topic just created may not be in the metadata yet)."""
    deadline = time.monotonic() + timeout_s
    while True:
        parts = lookup()
        if parts:
            return sorted(parts)
        if time.monotonic() > deadline:
            raise RuntimeError(f"no partitions for topic {topic!r}")
        time.sleep(0.1)


class KafkaPythonSender:
    """``KafkaProducer`` behind the sender interface; ``overrides`` are
    kafka-python settings."""

    def __init__(self, bootstrap_servers, client_id: str, acks: int,
                 linger_ms: int, batch_size: int,
                 overrides: dict | None = None):
        from kafka import KafkaProducer
        settings = dict(
            bootstrap_servers=bootstrap_servers, client_id=client_id,
            acks=acks, linger_ms=linger_ms, batch_size=batch_size,
            max_request_size=max(1 << 20, batch_size),
            # Idempotence needs acks=all; with acks 0/1 say so explicitly
            # rather than let kafka-python warn and switch it off.
            enable_idempotence=(acks == -1))
        settings.update(overrides or {})
        self.producer = KafkaProducer(**settings)
        self.failed = 0

    def partitions(self, topic: str, timeout_s: float) -> list:
        return _wait_for_partitions(
            lambda: self.producer.partitions_for(topic), topic, timeout_s)

    def send(self, topic: str, value: bytes, partition: int,
             timestamp_ms: int | None) -> None:
        self.producer.send(topic, value=value, partition=partition,
                           timestamp_ms=timestamp_ms
                           ).add_errback(self._on_error)

    def _on_error(self, _exc) -> None:
        self.failed += 1

    def flush(self) -> None:
        self.producer.flush(FLUSH_TIMEOUT_S)

    def close(self) -> None:
        self.producer.close()


class ConfluentSender:
    """confluent-kafka's ``Producer`` behind the sender interface;
    ``overrides`` are librdkafka properties (dotted names)."""

    #: Serve delivery reports every this many sends, so the callbacks
    #: (and the queue they hold) do not pile up between flushes.
    POLL_EVERY = 10_000

    def __init__(self, bootstrap_servers, client_id: str, acks: int,
                 linger_ms: int, batch_size: int,
                 overrides: dict | None = None):
        from confluent_kafka import Producer
        if not isinstance(bootstrap_servers, str):
            bootstrap_servers = ",".join(bootstrap_servers)
        config = {
            "bootstrap.servers": bootstrap_servers, "client.id": client_id,
            "acks": acks, "linger.ms": linger_ms, "batch.size": batch_size,
            "message.max.bytes": max(1 << 20, batch_size),
            "enable.idempotence": acks == -1}
        config.update(overrides or {})
        self.producer = Producer(config)
        self.failed = self._unpolled = 0

    def partitions(self, topic: str, timeout_s: float) -> list:
        def lookup():
            found = self.producer.list_topics(topic, timeout=timeout_s
                                              ).topics.get(topic)
            return (found.partitions if found is not None
                    and found.error is None else None)
        return _wait_for_partitions(lookup, topic, timeout_s)

    def send(self, topic: str, value: bytes, partition: int,
             timestamp_ms: int | None) -> None:
        while True:
            try:
                # timestamp 0: librdkafka stamps the message with its clock.
                self.producer.produce(topic, value, partition=partition,
                                      timestamp=timestamp_ms or 0,
                                      on_delivery=self._on_delivery)
                break
            except BufferError:  # the local queue is full: let it drain
                self.producer.poll(0.05)
        self._unpolled += 1
        if self._unpolled >= self.POLL_EVERY:
            self.producer.poll(0)
            self._unpolled = 0

    def _on_delivery(self, err, _msg) -> None:
        if err is not None:
            self.failed += 1

    def flush(self) -> None:
        self.failed += self.producer.flush(FLUSH_TIMEOUT_S)

    def close(self) -> None:
        self.producer.flush(0)


def open_sender(client: str | None, bootstrap_servers, client_id: str,
                acks: int, linger_ms: int, batch_size: int,
                overrides: dict | None = None):
    """A sender of ``client`` (one of ``KAFKA_CLIENTS``; ``None`` for the
    default: confluent-kafka if installed). ``acks``: 0, 1 or -1 (all)."""
    client = default_client() if client is None else client
    if client == "kafka-python":
        cls = KafkaPythonSender
    elif client == "confluent":
        cls = ConfluentSender
    else:
        raise ValueError(f"unknown Kafka client {client!r}: use one of "
                         f"{', '.join(KAFKA_CLIENTS)}")
    return cls(bootstrap_servers, client_id, acks, linger_ms, batch_size,
               overrides)
