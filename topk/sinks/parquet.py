"""Output-table sink of bounded runs: parallel staging, one commit.

The output tables are Delta tables committed together through a manifest
(``topk.storage.tables``). A bounded run (``topk batch``, ``topk stream
--bounded``) must appear whole or not at all, so:

1. workers write their rows in parallel as plain Parquet files under
   ``OUTPUT/_staging/<run id>/<table>/`` (one file per table and bundle;
   readers never look there);
2. after every table's rows are staged, a single step commits them all:
   for ``source = batch`` an overwrite, per table, of the rows the run owns
   (its methods' rows of its event-time span, and the dead letters of its
   input: ``tables.batch_predicates``), with the exact windows and slices
   straddling the span's edges recomputed from the committed slices too
   (``topk.storage.boundary_windows``), else appends; then one manifest
   row.

The final step streams the staged files into the tables rather than
gathering rows in memory, so its memory does not grow with the output;
the price is writing the rows twice. The run id is fixed when the pipeline
is built, so a runner's retry of the commit step is a no-op and a retried
staging bundle only adds files the commit replaces by predicate anyway.

``write_parquet_atomically`` stays for the stream's raw event archive,
which is plain Parquet (``topk.storage.tables`` says why).
"""
import uuid

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from topk.storage import layout as output_layout
from topk.storage import tables as output_tables
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


#: A staging writer flushes once it buffers this many bytes: a local
#: runner may hand a whole long-span output to one bundle, which must not be
#: held in memory at once.
STAGE_FLUSH_BYTES = 64 << 20


class _StageFn(beam.DoFn):
    """Buffer one table's batches; write them as staged Parquet files (in
    the table's stored form) whenever ``STAGE_FLUSH_BYTES`` are buffered
    and at the bundle's end."""

    def __init__(self, output, run_id, table, input_id):
        self._output = output
        self._run_id = run_id
        self._table = table
        self._input_id = input_id
        self._buffer = []

    def start_bundle(self):
        self._buffer = []
        self._buffered_bytes = 0

    def process(self, rows):
        if rows.num_rows:
            self._buffer.append(rows)
            self._buffered_bytes += rows.nbytes
        if self._buffered_bytes >= STAGE_FLUSH_BYTES:
            yield from self._flush()

    def finish_bundle(self):
        yield from self._flush()

    def _flush(self):
        if not self._buffer:
            return
        # Prepared once for the whole buffer: a sparse year's windows come
        # as tens of thousands of small tables, and each compute call of
        # ``prepare`` has a fixed cost.
        rows = output_tables.prepare(self._table,
                                     pa.concat_tables(self._buffer),
                                     self._input_id)
        self._buffer, self._buffered_bytes = [], 0
        for path in output_tables.stage(self._output, self._run_id,
                                        self._table, rows):
            yield WindowedValue(path, GlobalWindow().max_timestamp(),
                                [GlobalWindow()])


def _parts(pcolls) -> list:
    """``(label suffix, PCollection)`` of one table's PCollection or tuple
    of them."""
    if not isinstance(pcolls, tuple):
        return [("", pcolls)]
    return [(f"[{i}]", part) for i, part in enumerate(pcolls)]


def new_run_id() -> str:
    """A fresh staging name for a run (``WriteOutputTables``)."""
    return uuid.uuid4().hex


class WriteOutputTables(beam.PTransform):
    """Write the output tables of one bounded run in one commit.

    Takes a dict ``{table: PCollection[pa.Table]}`` (or a tuple of
    PCollections for a table made in several branches: Beam takes a
    tuple's PCollections as inputs, a list's as data) of any of
    ``ranked_windows``, ``slices``, ``sketches``, ``dead_letters``; yields
    the manifest sequence number of the commit (one element). ``methods``:
    the run's ``--method``s (a batch run replaces only their rows);
    ``input_id``: the key of its input's dead letters
    (``tables.input_id``); ``window_range``: for reprocessing, the whole
    days rebuilt (only windows inside them are replaced); ``specs`` and
    ``k``: the run's window specs (``WindowSpec`` or names) and K, with
    which a batch commit re-ranks the exact windows straddling its span's
    edges from its own and the committed slices
    (``topk.storage.boundary_windows``; without them those windows keep
    the run's own counts); ``replace_span``: a batch commit may replace
    committed counts its input lacks (``tables.commit_staged``'s
    ``replace``); ``run_id``: the run's staging name (a fresh one unless
    given: a pipeline that spills under the run's staging directory names
    it, so that the commit removes the spill files too).
    """

    def __init__(self, output: str, source: str = "batch",
                 methods=(output_layout.EXACT,), input_id: str = "",
                 window_range: tuple[int, int] | None = None,
                 specs=None, k: int | None = None,
                 replace_span: bool = False, run_id: str | None = None):
        super().__init__()
        if "://" not in output:
            # Fail before the run, not at its commit, on an old output.
            output_tables.check_not_legacy(output)
        self._output = output
        self._source = source
        self._methods = list(methods)
        self._input_id = input_id
        self._window_range = window_range
        # Names, not WindowSpecs: plain strings pickle to any worker.
        self._specs = [getattr(s, "name", s) for s in specs or ()]
        self._k = k
        self._replace_span = replace_span
        # Fixed at construction: a retried commit step finds it in the
        # manifest and does nothing.
        self._run_id = run_id or new_run_id()

    def expand(self, pcolls):
        output, run_id, source = self._output, self._run_id, self._source
        methods, input_id = self._methods, self._input_id
        window_range = self._window_range
        specs, k, replace = self._specs, self._k, self._replace_span
        # A table may come as several PCollections, each staged where it
        # is made: flattening them first would make a local runner encode,
        # hold and decode every table once more.
        staged = [
            part | f"Stage_{table}{suffix}" >> beam.ParDo(
                _StageFn(output, run_id, table, input_id))
            for table in sorted(pcolls)
            for suffix, part in _parts(pcolls[table])]

        def commit(_):
            if source == "batch":
                snap = output_tables.commit_staged(
                    output, run_id, methods, input_id, span=window_range,
                    whole_windows_only=window_range is not None,
                    specs=specs, k=k, replace=replace)
            else:
                snap = output_tables.commit_staged_appends(
                    output, run_id, source, input_id)
            return snap.seq

        return (
            staged | "AllStaged" >> beam.Flatten()
            | "CountStaged" >> beam.combiners.Count.Globally()
            | "Commit" >> beam.Map(commit))
