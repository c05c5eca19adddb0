"""kafka-python consumers as this project configures them, and the retry
delay of a failed broker call (no Beam).

``check_crc32c`` warns when kafka-python would checksum in pure Python;
``consumer_config`` / ``new_consumer`` build the consumers of the planner
and of every ``PartitionReader``; ``Backoff`` spaces retries while a broker
is unreachable; ``check_broker`` finds an unreachable broker or a missing
topic in seconds, before a run, with a one-line reason.
"""
import contextlib
import functools
import logging
import random
import socket
import time

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.errors import KafkaError

_LOG = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)  # warn once per process
def check_crc32c() -> bool:
    """Whether kafka-python found the ``crc32c`` package. Without it, every
    record batch's CRC-32C is computed in pure Python at ~5 MB/s, which caps
    producing (always) and consuming (``check_crcs``) at ~40k events/s."""
    from kafka.record import util
    if getattr(util, "crc32c_c", None) is None:
        _LOG.warning("kafka-python uses its pure-Python CRC-32C (~5 MB/s): "
                     "pip install crc32c")
        return False
    return True


#: kafka-python consumer settings the reader uses unless overridden. Offsets
#: are the runner's state, so no auto-commit; large fetches make large poll
#: batches (a fetch is one partition's slice of a broker round trip);
#: ``auto_offset_reset='none'`` makes an offset that left the log (retention)
#: an error the reader handles, rather than a silent jump to the end.
CONSUMER_DEFAULTS = {
    "enable_auto_commit": False,
    "auto_offset_reset": "none",
    "max_partition_fetch_bytes": 16 << 20,
    "fetch_max_bytes": 64 << 20,
    "receive_buffer_bytes": 4 << 20,
    "fetch_max_wait_ms": 200,
    "request_timeout_ms": 15_000,
    "bootstrap_timeout_ms": 10_000,
    "reconnect_backoff_ms": 100,
    "reconnect_backoff_max_ms": 5_000,
    # Also how long an empty poll sleeps when no fetch is in flight (e.g.
    # right after a seek): kafka-python's default (100) costs catch-up
    # throughput, 20 costs nothing measurable.
    "retry_backoff_ms": 20,
}


def consumer_config(bootstrap_servers, group_id=None, client_id=None,
                    overrides: dict | None = None) -> dict:
    """kafka-python ``KafkaConsumer`` keyword arguments: the defaults above,
    then ``overrides`` (the user's ``consumer_config``)."""
    config = dict(CONSUMER_DEFAULTS, bootstrap_servers=bootstrap_servers,
                  group_id=group_id)
    if client_id:
        config["client_id"] = client_id
    config.update(overrides or {})
    config["enable_auto_commit"] = False  # offsets are the runner's state
    return config


def new_consumer(config: dict) -> KafkaConsumer:
    return KafkaConsumer(**config)


class Backoff:
    """Exponential backoff with jitter: ``next()`` gives the next delay in
    seconds (``base``, doubling up to ``cap``); ``reset()`` after a
    success."""

    def __init__(self, base: float = 0.2, cap: float = 10.0):
        self.base = base
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2 ** self.failures))
        self.failures += 1
        return delay * (0.5 + random.random() / 2)

    def reset(self) -> None:
        self.failures = 0


#: Seconds ``check_broker`` waits for a broker by default.
BROKER_CHECK_TIMEOUT_S = 10.0


class BrokerUnavailable(ValueError):
    """No Kafka broker answers at the bootstrap address (one-line reason)."""


class TopicMissing(ValueError):
    """The topic does not exist on the cluster (one-line reason)."""


def bootstrap_addresses(bootstrap_servers) -> list[tuple[str, int]]:
    """``"host:port[,host:port]"`` (or a list of them) -> ``[(host, port)]``;
    ``ValueError`` naming the bad entry. IPv6 hosts go in brackets
    (``[::1]:9092``)."""
    entries = (bootstrap_servers.split(",") if isinstance(
        bootstrap_servers, str) else list(bootstrap_servers or []))
    out = []
    for entry in (e.strip() for e in entries):
        host, sep, port = entry.rpartition(":")
        host = host.strip("[]")
        if not (sep and host and port.isdigit()
                and 0 < int(port) < 65536):
            raise ValueError(f"bad Kafka bootstrap address {entry!r}: use "
                             "host:port[,host:port]")
        out.append((host, int(port)))
    if not out:
        raise ValueError("no Kafka bootstrap address given (host:port)")
    return out


def _connect_error(e: OSError, timeout_s: float) -> str:
    if isinstance(e, socket.gaierror):
        return "unknown host"
    if isinstance(e, TimeoutError):  # socket.timeout
        return f"no answer within {timeout_s:g} s"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    return e.strerror or str(e)


@contextlib.contextmanager
def _quiet_kafka_logs():
    # kafka-python logs every failed attempt at WARNING; the check reports
    # the outcome itself, in one line.
    log = logging.getLogger("kafka")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def check_broker(bootstrap_servers, topic: str | None = None,
                 timeout_s: float = BROKER_CHECK_TIMEOUT_S) -> list[str]:
    """Check, within about ``timeout_s``, that a Kafka broker answers at
    ``bootstrap_servers`` and (if given) that ``topic`` exists there.
    Returns the cluster's topics.

    First a plain TCP connection to each address (a closed port or an
    unknown host fails at once), then one metadata request. Raises
    ``BrokerUnavailable`` or ``TopicMissing`` (both ``ValueError``, one
    line naming the address), or ``ValueError`` for a malformed address.
    """
    if timeout_s <= 0:
        raise ValueError("the broker check timeout must be positive")
    addresses = bootstrap_addresses(bootstrap_servers)
    where = ",".join(f"{h}:{p}" if ":" not in h else f"[{h}]:{p}"
                     for h, p in addresses)
    deadline = time.monotonic() + timeout_s
    problems = []
    for host, port in addresses:
        remaining = max(0.1, deadline - time.monotonic())
        try:
            socket.create_connection((host, port), timeout=remaining).close()
            break
        except OSError as e:
            reason = _connect_error(e, remaining)
            problems.append(reason if len(addresses) == 1 else
                            f"{host}:{port} {reason}")
    else:
        raise BrokerUnavailable(f"no Kafka broker reachable at {where} ("
                                f"{'; '.join(problems)})")
    remaining_ms = max(1_000, int((deadline - time.monotonic()) * 1000))
    admin = None
    try:
        with _quiet_kafka_logs():
            admin = KafkaAdminClient(
                bootstrap_servers=[f"{h}:{p}" for h, p in addresses],
                client_id="topk-broker-check",
                bootstrap_timeout_ms=remaining_ms,
                request_timeout_ms=remaining_ms)
            topics = sorted(admin.list_topics())
    except (KafkaError, OSError) as e:
        raise BrokerUnavailable(
            f"no Kafka broker answered at {where} within {timeout_s:g} s "
            f"({type(e).__name__}): is it a Kafka listener?") from None
    finally:
        if admin is not None:
            with _quiet_kafka_logs():
                admin.close()
    if topic is not None and topic not in topics:
        raise TopicMissing(f"topic {topic} does not exist on {where}")
    return topics
