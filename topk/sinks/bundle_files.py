"""Parquet files per bundle, for unbounded pipelines.

A bounded run gathers each partition to one writer and replaces one file
(``topk.sinks.parquet``). An unbounded stream cannot wait for the end: each
bundle writes what it received as new files, named by the time of writing
and a random id (``part-stream-<epoch ms>-<id>.parquet``), each written to a
temporary name and renamed, so readers never see half a file. Readers take
the latest pane or slice row by ``emitted_at`` (``topk.query``); the archive
de-duplicates by ``event_id`` when reprocessed.
"""
import uuid

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from topk.core.windows import now_ms
from topk.sinks.parquet import write_parquet_atomically
from topk.storage import layout as output_layout


class _WriteBundleFilesFn(beam.DoFn):

    def __init__(self, output, table, partitions, sort_keys, prefix):
        self._output = output
        self._table = table
        self._partitions = partitions
        self._sort_keys = sort_keys
        self._prefix = prefix
        self._buffer = []

    def start_bundle(self):
        self._buffer = []

    def process(self, table):
        if table.num_rows:
            self._buffer.append(table)

    def finish_bundle(self):
        if not self._buffer:
            return
        rows = pa.concat_tables(self._buffer)
        self._buffer = []
        name = f"{self._prefix}-{now_ms()}-{uuid.uuid4().hex[:8]}"
        for partition, part in self._partitions(rows):
            if self._sort_keys:
                part = part.take(pc.sort_indices(part, sort_keys=[
                    (k, "ascending") for k in self._sort_keys]))
            write_parquet_atomically(part, output_layout.partition_path(
                self._output, self._table, partition, f"{name}.parquet"))


class WriteBundleFiles(beam.PTransform):
    """Write ``pa.Table`` batches of one output table as new Parquet files,
    one per partition and bundle (see the module docstring). ``partitions``
    maps a table to ``[(partition, rows)]`` as in ``output_layout``. Yields
    nothing."""

    def __init__(self, output: str, table: str, partitions,
                 sort_keys: list[str] = (), prefix: str = "part-stream"):
        super().__init__()
        self._fn = _WriteBundleFilesFn(output, table, partitions,
                                       list(sort_keys), prefix)

    def expand(self, tables):
        return tables | "WriteFiles" >> beam.ParDo(self._fn)
