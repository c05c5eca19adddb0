"""Parquet sink: Hive-partitioned output tables, one atomic file per
partition and writer.

See ``topk.storage.layout`` for the layout. Every partition's rows are
gathered to one writer that writes ``<name>.parquet.tmp-<uuid>`` and renames
it over the final name, so readers never see a half-written file and a rerun
replaces what the previous run wrote instead of adding to it. Paths go
through Beam's ``FileSystems``, so ``gs://`` outputs work on Dataflow.
"""
import typing
import uuid

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from topk.storage import layout as output_layout
from topk.transforms import coders  # noqa: F401 (registers the Arrow coder)


def write_parquet_atomically(table: pa.Table, path: str) -> str:
    """Write ``table`` to ``path`` so that it appears whole or not at all."""
    directory = path.rsplit("/", 1)[0]
    if not FileSystems.exists(directory):
        try:
            FileSystems.mkdirs(directory)
        except IOError:
            pass  # another writer created it first
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(tmp) as f:
        pq.write_table(table, f, compression="zstd")
    FileSystems.rename([tmp], [path])
    return path


class WriteParquetTable(beam.PTransform):
    """Write ``pa.Table`` batches of one output table, partitioned.

    ``partitions`` maps a batch to ``[(partition, rows)]`` (see
    ``output_layout``); all rows of a partition land in one file
    ``<file_name>.parquet`` sorted by ``sort_keys``. With ``per_method``,
    each ``method`` value of a partition gets its own file instead, named
    by ``output_layout.method_file_name`` (exact rows keep ``file_name``).
    Yields the paths written.
    """

    def __init__(self, output: str, table: str, partitions, file_name: str,
                 sort_keys: list[str], per_method: bool = False):
        super().__init__()
        self._output = output
        self._table = table
        self._partitions = partitions
        self._file_name = file_name
        self._sort_keys = sort_keys
        self._per_method = per_method

    def expand(self, tables):
        output, table_name = self._output, self._table
        file_name, sort_keys = self._file_name, self._sort_keys
        partitions, per_method = self._partitions, self._per_method

        def locate(table):
            # Key = (partition, file name): one writer per file.
            for partition, rows in partitions(table):
                if not per_method:
                    yield (partition, file_name), rows
                    continue
                methods = pc.unique(rows["method"]).to_pylist()
                for method in methods:
                    yield ((partition,
                            output_layout.method_file_name(file_name, method)),
                           rows if len(methods) == 1 else rows.filter(
                               pc.equal(rows["method"], method)))

        def write(location, parts):
            partition, name = location
            rows = pa.concat_tables(list(parts))
            rows = rows.take(pc.sort_indices(
                rows, sort_keys=[(k, "ascending") for k in sort_keys]))
            return write_parquet_atomically(
                rows, output_layout.partition_path(
                    output, table_name, partition, f"{name}.parquet"))

        return (
            tables
            | "Partition" >> beam.FlatMap(locate).with_output_types(
                typing.Tuple[typing.Tuple[typing.Tuple[
                    typing.Tuple[str, str], ...], str], pa.Table])
            | "GatherPartition" >> beam.GroupByKey()
            | "WriteFile" >> beam.MapTuple(write))


class WriteOutputTables(beam.PTransform):
    """Write the ranked windows, exact slices and sketches of one run.

    Takes a dict ``{"ranked_windows": PCollection[pa.Table], "slices":
    PCollection[pa.Table], "sketches": PCollection[pa.Table]}`` (any may be
    absent); yields the paths written. Ranked windows and sketches are
    written one file per method (``output_layout.method_file_name``).
    """

    def __init__(self, output: str, source: str = "batch"):
        super().__init__()
        self._output = output
        self._file = f"part-{source}"

    #: table -> (step label, partitioner, sort keys, one file per method)
    _TABLES = {
        output_layout.RANKED_WINDOWS: (
            "WriteRankedWindows", output_layout.ranked_windows_partitions,
            ["event_type", "window_start", "rank"], True),
        output_layout.SLICES: (
            "WriteSlices", output_layout.slices_partitions, ["slice_start"],
            False),
        output_layout.SKETCHES: (
            "WriteSketches", output_layout.sketches_partitions,
            ["event_type", "slice_start"], True),
    }

    def expand(self, pcolls):
        written = [
            pcolls[table] | label >> WriteParquetTable(
                self._output, table, partitions, self._file, sort_keys,
                per_method=per_method)
            for table, (label, partitions, sort_keys, per_method)
            in self._TABLES.items() if table in pcolls]
        return tuple(written) | "AllWritten" >> beam.Flatten()
