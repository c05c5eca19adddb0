"""Reading one Kafka partition with confluent-kafka (librdkafka), without
Beam: ``ConfluentPartitionReader``, interchangeable with the kafka-python
``PartitionReader`` (``open_reader("confluent", ...)``).

Both share ``reader.CarryingReader``: the same ``Batch`` es, cut the same
way by records, bytes and record-time span, the same position and
retention handling. What differs is below it: librdkafka fetches on its
own thread and hands out messages in C, so a poll costs a few hundred
nanoseconds of Python per message instead of kafka-python's decoding in
Python. Messages stay confluent ``Message`` objects, read a column at a
time (``MessageRecords``), because building a record object per message
would cost more than the rest of the read.

Errors are raised as ``kafka.errors`` exceptions (``KafkaError`` and its
``OffsetOutOfRangeError`` / ``IllegalStateError`` / ``KafkaTimeoutError``),
which is what the source and the other reader raise and catch.
"""
import logging
import operator
import time

import confluent_kafka
from confluent_kafka import KafkaError as CKError
from confluent_kafka import KafkaException
from confluent_kafka import TopicPartition as CTopicPartition
from kafka.errors import (IllegalStateError, KafkaError, KafkaTimeoutError,
                          OffsetOutOfRangeError)

from topk.connectors.kafka.reader import CarryingReader, ColumnRecords, Record

_LOG = logging.getLogger(__name__)


class ConfluentKafkaError(KafkaError):
    """A confluent-kafka error as a ``kafka.errors.KafkaError`` (what
    callers of either reader catch); ``error`` is the confluent
    ``KafkaError`` (``code()``, ``retriable()``, ...)."""

    def __init__(self, error, where: str = ""):
        self.error = error
        super().__init__(f"{where}: {error}" if where else str(error))
        self.retriable = bool(getattr(error, "retriable", lambda: False)())


# --- configuration -------------------------------------------------------

#: librdkafka settings the reader uses unless overridden: those of
#: ``client.CONSUMER_DEFAULTS``, translated, so both clients behave alike.
#: ``auto.offset.reset=error``: an offset that left the log is an error the
#: reader handles (kafka-python's ``none``). ``isolation.level``:
#: kafka-python's default, so both return the same messages and end
#: offsets. ``check.crcs``: kafka-python checks them.
#: ``queued.min.messages``: librdkafka prefetches up to this many messages
#: (or ``queued.max.messages.kbytes``) per partition; the default (100k)
#: is half a default batch of one-event messages.
CONFLUENT_DEFAULTS = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": False,
    "auto.offset.reset": "error",
    "isolation.level": "read_uncommitted",
    "check.crcs": True,
    "max.partition.fetch.bytes": 16 << 20,
    "fetch.max.bytes": 64 << 20,
    "socket.receive.buffer.bytes": 4 << 20,
    "fetch.wait.max.ms": 200,
    "socket.timeout.ms": 15_000,
    "reconnect.backoff.ms": 100,
    "reconnect.backoff.max.ms": 5_000,
    "retry.backoff.ms": 20,
    "fetch.error.backoff.ms": 100,
    "queued.min.messages": 400_000,
    "queued.max.messages.kbytes": 128 << 10,
}

#: kafka-python ``KafkaConsumer`` settings (the source's
#: ``consumer_config``) -> librdkafka properties.
KAFKA_PYTHON_TO_LIBRDKAFKA = {
    "client_id": "client.id",
    "fetch_min_bytes": "fetch.min.bytes",
    "fetch_max_wait_ms": "fetch.wait.max.ms",
    "fetch_max_bytes": "fetch.max.bytes",
    "max_partition_fetch_bytes": "max.partition.fetch.bytes",
    "request_timeout_ms": "socket.timeout.ms",
    "retry_backoff_ms": "retry.backoff.ms",
    "reconnect_backoff_ms": "reconnect.backoff.ms",
    "reconnect_backoff_max_ms": "reconnect.backoff.max.ms",
    "receive_buffer_bytes": "socket.receive.buffer.bytes",
    "send_buffer_bytes": "socket.send.buffer.bytes",
    "check_crcs": "check.crcs",
    "isolation_level": "isolation.level",
    "metadata_max_age_ms": "topic.metadata.refresh.interval.ms",
    "connections_max_idle_ms": "connections.max.idle.ms",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
    "ssl_crlfile": "ssl.crl.location",
}

#: kafka-python settings with no librdkafka counterpart that matters to an
#: assigned, non-committing consumer: accepted and ignored.
IGNORED_KAFKA_PYTHON = {"enable_auto_commit", "auto_commit_interval_ms",
                        "max_poll_records", "max_poll_interval_ms",
                        "session_timeout_ms", "heartbeat_interval_ms",
                        "api_version", "api_version_auto_timeout_ms",
                        "bootstrap_timeout_ms", "consumer_timeout_ms"}


def confluent_config(bootstrap_servers, group_id=None, client_id=None,
                     overrides: dict | None = None) -> dict:
    """librdkafka consumer properties: ``CONFLUENT_DEFAULTS``, then
    ``overrides``: kafka-python ``KafkaConsumer`` keywords (translated;
    ``ValueError`` for one without a counterpart) or librdkafka properties
    (any key with a dot, passed as is). Auto-commit stays off."""
    if not isinstance(bootstrap_servers, str):
        bootstrap_servers = ",".join(bootstrap_servers)
    config = dict(CONFLUENT_DEFAULTS, **{"bootstrap.servers":
                                         bootstrap_servers})
    # confluent-kafka requires a group.id even for a consumer that only
    # assigns; with no group, one that is never joined nor committed to.
    config["group.id"] = group_id or f"topk-unused-{client_id or 'reader'}"
    if client_id:
        config["client.id"] = client_id
    for key, value in (overrides or {}).items():
        if "." in key:
            config[key] = value
        elif key in KAFKA_PYTHON_TO_LIBRDKAFKA:
            config[KAFKA_PYTHON_TO_LIBRDKAFKA[key]] = value
        elif key == "auto_offset_reset":
            config["auto.offset.reset"] = "error" if value == "none" else value
        elif key not in IGNORED_KAFKA_PYTHON:
            raise ValueError(f"consumer setting {key!r} has no confluent-kafka"
                             " counterpart: give the librdkafka property "
                             "(e.g. 'fetch.min.bytes') instead")
    # librdkafka refuses fetch.max.bytes below message.max.bytes (a
    # producer-side limit the consumer also checks): follow a small one.
    if config["fetch.max.bytes"] < 1_000_000 and \
            "message.max.bytes" not in config:
        config["message.max.bytes"] = max(1_000, config["fetch.max.bytes"])
    config["enable.auto.commit"] = False  # offsets are the runner's state
    return config


# --- messages as columns -------------------------------------------------

_VALUE = confluent_kafka.Message.value
_OFFSET = confluent_kafka.Message.offset
_TIMESTAMP = confluent_kafka.Message.timestamp
_ERROR = confluent_kafka.Message.error
_SECOND = operator.itemgetter(1)


class MessageRecords(ColumnRecords):
    """confluent-kafka ``Message`` s (one partition, in offset order) as
    ``ColumnRecords``: values and timestamps are read once per message, a
    column at a time, when first needed; ``records[i]`` is a ``Record``."""

    __slots__ = ("_msgs", "_values", "_stamps")

    def __init__(self, msgs: list, values=None, stamps=None):
        self._msgs = msgs
        self._values = values
        self._stamps = stamps

    def __len__(self):
        return len(self._msgs)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return MessageRecords(
                self._msgs[i],
                None if self._values is None else self._values[i],
                None if self._stamps is None else self._stamps[i])
        m = self._msgs[i]
        return Record(m.offset(), m.timestamp()[1], m.value())

    def values(self) -> list:
        if self._values is None:
            values = list(map(_VALUE, self._msgs))
            if None in values:  # null values (tombstones): empty records
                values = [v or b"" for v in values]
            self._values = values
        return self._values

    def timestamps(self) -> list:
        if self._stamps is None:
            # (type, ms); -1 ms when the message has no timestamp.
            self._stamps = list(map(_SECOND, map(_TIMESTAMP, self._msgs)))
        return self._stamps

    def value_bytes(self) -> int:
        return sum(map(len, self.values()))

    def extend(self, other: "MessageRecords") -> None:
        # Columns already read stay read; a column only one side has read
        # is read again later for both.
        if self._values is not None and other._values is not None:
            self._values.extend(other._values)
        else:
            self._values = None
        if self._stamps is not None and other._stamps is not None:
            self._stamps.extend(other._stamps)
        else:
            self._stamps = None
        self._msgs.extend(other._msgs)


def _chunk_timestamps(chunk: MessageRecords, start: int):
    stamps = chunk.timestamps()
    return map(stamps.__getitem__, range(start, len(stamps)))


class _Consumer(confluent_kafka.Consumer):
    """A confluent-kafka consumer with kafka-python's ``highwater(tp)``:
    the end offset of the last fetch, without a broker round trip (the
    source reads it after every batch)."""

    def highwater(self, tp) -> int | None:
        try:
            got = self.get_watermark_offsets(
                CTopicPartition(tp.topic, tp.partition), cached=True)
        except (KafkaException, RuntimeError):
            return None
        return got[1] if got and got[1] >= 0 else None


_OUT_OF_RANGE = {CKError._AUTO_OFFSET_RESET, CKError.OFFSET_OUT_OF_RANGE}

#: Seconds between the non-blocking consumes of a poll that waits: while
#: nothing comes, and while messages come in.
WAIT_STEP_S = 0.01
FLOW_STEP_S = 0.001


class ConfluentPartitionReader(CarryingReader):
    """A confluent-kafka consumer assigned to one partition (``assign``,
    never ``subscribe``: no group membership; no auto-commit: the caller
    owns the offsets). Same interface and semantics as
    ``PartitionReader``.

    librdkafka prefetches on its own thread and reconnects by itself when
    the broker comes back, so readers are meant to be kept and reused; the
    caller retries empty or failed polls. ``consumer_overrides`` are the
    kafka-python settings the source takes (see ``confluent_config``).
    """

    def __init__(self, bootstrap_servers, topic: str, partition: int,
                 group_id: str | None = None,
                 consumer_overrides: dict | None = None):
        super().__init__(topic, partition)
        self.group_id = group_id
        self._ctp = CTopicPartition(topic, partition)
        # An error that ended the messages of a poll, raised by the next.
        self._error = None
        # Where to re-assign before the next poll after an error dropped
        # the messages behind it (None: no need).
        self._resume = None
        config = confluent_config(bootstrap_servers, group_id,
                                  f"topk-kafka-{topic}-{partition}",
                                  consumer_overrides)
        # librdkafka's own log and its client-wide errors (a broker down,
        # ...) go to logging, as kafka-python's do; they are not the
        # partition's errors, which come with the messages.
        config.setdefault("logger", _LOG)
        config.setdefault("error_cb", self._client_error)
        try:
            self.consumer = _Consumer(config)
        except (KafkaException, ValueError) as e:
            raise ConfluentKafkaError(e, f"{self.tp}: consumer") from e
        self._assigned = False

    def _client_error(self, error) -> None:
        _LOG.warning("kafka %s (librdkafka): %s", self.tp, error)

    def _seek_consumer(self, offset: int) -> None:
        # assign() with the offset rather than seek(): it works whether or
        # not the partition is being fetched yet, and purges what was
        # prefetched from the old position.
        try:
            self.consumer.assign([CTopicPartition(self.topic, self.partition,
                                                  offset)])
        except KafkaException as e:
            raise ConfluentKafkaError(e.args[0], f"{self.tp}: seek") from e
        self._assigned = True
        self._error = self._resume = None

    def _poll(self, max_records: int, timeout_ms: int):
        if self._error is not None:
            error = self._error
            if error.code() in _OUT_OF_RANGE:
                # Kept until a seek: librdkafka stops fetching there.
                raise OffsetOutOfRangeError(f"{self.tp}: {error}")
            self._error = None
            raise ConfluentKafkaError(error, str(self.tp))
        if not self._assigned:
            # No seek yet: the group's committed offset, as kafka-python.
            self._seek_consumer(confluent_kafka.OFFSET_STORED)
        elif self._resume is not None:
            self._seek_consumer(self._resume)
        consume = self.consumer.consume
        try:
            # consume(n, timeout)'s contract, waited for in Python: up to
            # n messages, or what came within the timeout. Never a timed
            # consume: in confluent-kafka 2.16 one sometimes never returned
            # once the broker went down (a thread dump of a failed
            # test_broker_restart_during_a_run), which stalls the partition
            # and, with aligned watermarks, the stream. Returning at the
            # first message instead cut a live partition's reads into
            # batches of a few ms each, many times the elements.
            msgs = consume(max_records, 0)
            failed = any(map(_ERROR, msgs))  # an error ends the wait
            deadline = time.monotonic() + timeout_ms / 1000
            more = msgs
            while (not failed and len(msgs) < max_records
                   and time.monotonic() < deadline
                   and not (msgs and self.at_historic_end(
                       msgs[-1].offset() + 1, msgs[-1].timestamp()[1]))):
                # Messages flowing in are taken soon; an idle wait looks
                # less often, and asks for one message (consume allocates
                # room for n), then the rest.
                time.sleep(FLOW_STEP_S if more else WAIT_STEP_S)
                more = consume(max_records - len(msgs) if msgs else 1, 0)
                if more and not msgs and max_records > 1:
                    more += consume(max_records - 1, 0)
                failed = any(map(_ERROR, more))
                msgs += more
        except KafkaException as e:
            raise ConfluentKafkaError(e.args[0], str(self.tp)) from e
        except RuntimeError as e:  # a closed consumer
            raise ConfluentKafkaError(e, str(self.tp)) from e
        if not msgs:
            return None
        if failed:
            msgs = self._until_error(msgs)
            if not msgs:
                return self._poll(max_records, 0)  # raises the error
        return MessageRecords(msgs)

    def _until_error(self, msgs: list) -> list:
        """The messages before the first error of a poll, which is kept
        for the next; the consumer re-reads any after it."""
        for i, m in enumerate(msgs):
            error = m.error()
            if error is None:
                continue
            if error.code() == CKError._PARTITION_EOF:
                # Only with enable.partition.eof: not an error.
                rest = self._until_error(msgs[i + 1:]) if i + 1 < len(
                    msgs) else []
                return msgs[:i] + rest
            self._error = error
            if i + 1 < len(msgs) and error.code() not in _OUT_OF_RANGE:
                # Messages after a passing error: read them again after it
                # is raised, rather than lose them.
                self._resume = msgs[i + 1].offset()
            return msgs[:i]
        return msgs

    _chunk_bytes = staticmethod(MessageRecords.value_bytes)
    _chunk_timestamps = staticmethod(_chunk_timestamps)

    def position(self, timeout_ms: int = 2_000) -> int:
        """The consumer's position: the offset after the last one it has
        passed, control records (transaction markers) included; -1 if
        unknown."""
        try:
            got = self.consumer.position([self._ctp])
        except (KafkaException, RuntimeError):
            return -1
        offset = got[0].offset if got else -1
        return offset if offset >= 0 else -1

    def _watermarks(self, timeout_ms: int) -> tuple:
        try:
            got = self.consumer.get_watermark_offsets(
                self._ctp, timeout=timeout_ms / 1000)
        except KafkaException as e:
            raise ConfluentKafkaError(e.args[0], f"{self.tp}: offsets") \
                from e
        if got is None:
            raise KafkaTimeoutError(f"{self.tp}: no offsets within "
                                    f"{timeout_ms} ms")
        return got

    def end_offset(self, timeout_ms: int = 5_000) -> int:
        return self._watermarks(timeout_ms)[1]

    def beginning_offset(self, timeout_ms: int = 5_000) -> int:
        return self._watermarks(timeout_ms)[0]

    def commit(self, next_offset: int, timeout_ms: int = 5_000) -> None:
        """Commit ``next_offset`` (the next offset to read) for the group,
        synchronously. (librdkafka bounds a commit by its own request
        timeouts, ``socket.timeout.ms``, not by ``timeout_ms``.)"""
        if self.group_id is None:
            raise IllegalStateError("Requires group_id")
        try:
            got = self.consumer.commit(
                offsets=[CTopicPartition(self.topic, self.partition,
                                         next_offset)],
                asynchronous=False)
        except KafkaException as e:
            raise ConfluentKafkaError(e.args[0], f"{self.tp}: commit") from e
        for tp in got or ():
            if tp.error is not None:
                raise ConfluentKafkaError(tp.error, f"{self.tp}: commit")

    def close(self) -> None:
        try:
            self.consumer.close()
        except Exception:  # closing a consumer twice or of a dead broker
            _LOG.debug("closing the consumer of %s failed", self.tp,
                       exc_info=True)
