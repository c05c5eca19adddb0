"""Output-table appends per bundle, for unbounded pipelines.

A bounded run stages its rows and commits them once (``topk.sinks.parquet``).
An unbounded stream cannot wait for the end: each bundle appends what it
received to its Delta table in one commit, followed by a manifest row
(``topk.storage.tables.append``), so readers see whole bundles only, and a
batch run committing into the same output meanwhile keeps its rows (commits
are serialised; an append never replaces rows). Stream readers take the
latest pane or slice row by ``emitted_at`` (``topk.query``), so a replayed
bundle never double counts.

The raw event archive is not a table but plain Parquet files
(``WriteArchiveFiles``): one file per hour partition and bundle, written to a
temporary name and renamed; ``topk batch --from-archive`` de-duplicates it.
"""
import uuid

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from topk.core.windows import now_ms
from topk.sinks.parquet import write_parquet_atomically
from topk.storage import layout as output_layout
from topk.storage import tables as output_tables


class _BufferFn(beam.DoFn):
    """Gather a bundle's non-empty batches; ``flush`` the rows at its end."""

    def __init__(self):
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
        self.flush(rows)

    def flush(self, rows: pa.Table):
        raise NotImplementedError


class _AppendBundleFn(_BufferFn):

    def __init__(self, output, table, input_id):
        super().__init__()
        self._output = output
        self._table = table
        self._input_id = input_id

    def flush(self, rows):
        output_tables.append(self._output, self._table, rows,
                             input_id=self._input_id)


class WriteBundleFiles(beam.PTransform):
    """Append ``pa.Table`` batches to one output table, one commit per
    bundle (see the module docstring). ``input_id`` tags dead-letter rows.
    Yields nothing."""

    def __init__(self, output: str, table: str, input_id: str | None = None):
        super().__init__()
        if "://" not in output:
            output_tables.check_not_legacy(output)  # fail before the run
        self._fn = _AppendBundleFn(output, table, input_id)

    def expand(self, tables):
        return tables | "AppendBundles" >> beam.ParDo(self._fn)


class _ArchiveFilesFn(_BufferFn):

    def __init__(self, output, prefix):
        super().__init__()
        self._output = output
        self._prefix = prefix

    def flush(self, rows):
        name = f"{self._prefix}-{now_ms()}-{uuid.uuid4().hex[:8]}"
        for partition, part in output_layout.archive_partitions(rows):
            part = part.take(pc.sort_indices(part, sort_keys=[
                ("ts", "ascending")]))
            write_parquet_atomically(part, output_layout.partition_path(
                self._output, output_layout.ARCHIVE, partition,
                f"{name}.parquet"))


class WriteArchiveFiles(beam.PTransform):
    """Write validated events to the archive, one Parquet file per hour
    partition and bundle (``part-stream-<epoch ms>-<id>.parquet``). Yields
    nothing."""

    def __init__(self, output: str, prefix: str = "part-stream"):
        super().__init__()
        self._fn = _ArchiveFilesFn(output, prefix)

    def expand(self, events):
        return events | "WriteFiles" >> beam.ParDo(self._fn)
