"""Kafka without Beam: start positions and offset plans, poll batches,
payloads, watermark arithmetic and a kafka-python reader of one partition.
``topk.sources.kafka.ReadFromKafkaBatches`` is thin Beam wiring around it."""
from topk.connectors.kafka.reader import *  # noqa: F401,F403
from topk.connectors.kafka.reader import _span_cut  # noqa: F401
