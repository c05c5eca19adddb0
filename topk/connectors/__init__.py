"""Clients of external systems, Beam-free: Kafka (``kafka``) and BigQuery
(``bigquery``). ``topk.sources`` and ``topk.sinks`` wrap them for Beam.
"""
