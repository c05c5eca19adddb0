"""Exact and approximate streaming top-K (heavy hitters) on Apache Beam.

Beam-free logic, tested without a pipeline:

- ``core``: event schema and validation, window arithmetic, sharding,
  de-duplication and slices, exact ranking;
- ``approx``: mergeable sketches and their windows;
- ``streaming``: the state machines of the unbounded stream;
- ``storage``: the output tables' layout, retention, reprocessing ranges;
- ``query``: ``topk(k, start, end)`` over DuckDB or BigQuery;
- ``connectors``: Kafka and BigQuery clients;
- ``loadgen``: synthetic events and a Kafka producer.

Beam wiring around it: ``sources`` and ``sinks`` (I/O), ``transforms``
(composite PTransforms and CombineFns), ``pipelines`` (runnable pipelines and
their options). ``cli`` is the ``topk`` command.
"""

__version__ = "0.1.0"
