"""kafka-python consumers as this project configures them, and the retry
delay of a failed broker call (no Beam).

``check_crc32c`` warns when kafka-python would checksum in pure Python;
``consumer_config`` / ``new_consumer`` build the consumers of the planner
and of every ``PartitionReader``; ``Backoff`` spaces retries while a broker
is unreachable.
"""
import functools
import logging
import random

from kafka import KafkaConsumer

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
