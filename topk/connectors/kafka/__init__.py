"""Kafka without Beam, one module per concept:

- ``client``: kafka-python consumers as configured here, retry backoff,
  the broker/topic check before a run;
- ``plans``: start positions and the offset range each reader owns;
- ``watermarks``: watermark arithmetic, aligned across partitions;
- ``reader``: ``PartitionReader`` and the ``Batch`` es it returns, the
  batch cutting it shares with ``confluent_reader``'s
  ``ConfluentPartitionReader`` (confluent-kafka), and ``open_reader``,
  which opens either by client name;
- ``call_watch``: read calls stuck far past their deadline, logged with
  where they wait.

``topk.sources.kafka.ReadFromKafkaBatches`` is thin Beam wiring around it;
this package re-exports what the source, the load generator and the
benchmarks use.
"""
from topk.connectors.kafka.client import (BROKER_CHECK_TIMEOUT_S,
                                          CONSUMER_DEFAULTS, Backoff,
                                          BrokerUnavailable, TopicMissing,
                                          bootstrap_addresses, check_broker,
                                          check_crc32c, consumer_config,
                                          new_consumer)
from topk.connectors.kafka.plans import (UNBOUNDED_STOP, PartitionPlan,
                                         parse_start, plan_partitions,
                                         plan_topic, resolve_start_offset,
                                         split_offsets)
from topk.connectors.kafka.reader import (DEFAULT_KAFKA_CLIENT, KAFKA_CLIENTS,
                                          LIVE_READ_S, MAX_BATCH_BYTES,
                                          MAX_BATCH_RECORDS,
                                          POLL_TIMEOUT_MS, STALL_TIMEOUT_MS,
                                          Batch, behind_since,
                                          CarryingReader, ColumnRecords,
                                          PartitionReader, Record,
                                          batch_source, join_values,
                                          open_reader, read_deadline,
                                          span_cut)
from topk.connectors.kafka.watermarks import (ALLOWED_SKEW_MS, DONE,
                                              IDLE_TIMEOUT_MS,
                                              AlignedWatermarks,
                                              aligned_minimum, data_watermark,
                                              idle_watermark, later)

__all__ = [
    # client
    "BROKER_CHECK_TIMEOUT_S", "CONSUMER_DEFAULTS", "Backoff",
    "BrokerUnavailable", "TopicMissing", "bootstrap_addresses",
    "check_broker", "check_crc32c", "consumer_config", "new_consumer",
    # plans
    "UNBOUNDED_STOP", "PartitionPlan", "parse_start", "plan_partitions",
    "plan_topic", "resolve_start_offset", "split_offsets",
    # reader
    "LIVE_READ_S", "MAX_BATCH_BYTES", "MAX_BATCH_RECORDS",
    "POLL_TIMEOUT_MS", "STALL_TIMEOUT_MS", "Batch", "behind_since",
    "read_deadline",
    "PartitionReader", "batch_source", "join_values", "span_cut",
    "CarryingReader", "ColumnRecords", "Record", "KAFKA_CLIENTS",
    "DEFAULT_KAFKA_CLIENT", "open_reader", "ConfluentPartitionReader",
    # watermarks
    "ALLOWED_SKEW_MS", "DONE", "IDLE_TIMEOUT_MS", "AlignedWatermarks",
    "aligned_minimum", "data_watermark", "idle_watermark", "later",
]


def __getattr__(name):
    # confluent-kafka is imported only when its reader is asked for, so the
    # package works without it (open_reader("kafka-python", ...)).
    if name == "ConfluentPartitionReader":
        from topk.connectors.kafka.confluent_reader import \
            ConfluentPartitionReader
        return ConfluentPartitionReader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
