"""Output-table appends for unbounded pipelines.

A bounded run stages its rows and commits them once (``topk.sinks.parquet``).
An unbounded stream cannot wait for the end. ``WriteTablesBuffered`` gathers
the rows of every output table in Beam state and appends them all in one
commit (``topk.storage.tables.commit``, a manifest row after the table
commits) at most every ``commit_interval_s`` of wall time. A commit costs
tens of milliseconds whatever its size, and a catch-up produces a bundle per
window end: committing per bundle held a catch-up to about one minute of
event time per second. Readers see whole commits only, and a batch run
committing into the same output meanwhile keeps its rows (commits are
serialised; an append never replaces rows).

A commit is a side effect the runner's state does not roll back: a job
restored from a checkpoint taken before it (Flink) finds the committed rows
in its buffer again. So every buffered part is numbered (the DoFn copy that
buffered it, and a counter), every commit records the numbers it wrote in
the manifest (``parts``), and a sink whose state is behind its own last
commit skips the parts committed since
(``topk.storage.tables.committed_parts``): each buffered row is written
once. (Input the runner delivers again, as to a bundle retried after its
commit, is new to the sink: its rows are written again, as exact copies
that readers taking one latest row per pane see once.)

Every commit adds a few small files to each table it writes and a row to
the manifest, and opening a table costs about what its files number
(``bench/commit_growth.py``: after 1,500 commits reading a table took
735 ms, 28 ms with compaction). So every ``maintain_every`` commits the sink compacts the
tables (``topk.storage.tables.maintain``: Delta's compaction, checkpoints
and vacuum), in the commit lock like any commit; the stream's cost then
follows the last few minutes of commits, not how long it has run.

The raw event archive is not a table but plain Parquet files
(``WriteArchiveFiles``): one file per hour partition and bundle, written to a
temporary name and renamed; ``topk batch --from-archive`` de-duplicates it.
"""
import logging
import time
import typing
import uuid

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.coders import PickleCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (BagStateSpec,
                                              ReadModifyWriteStateSpec,
                                              TimerSpec, on_timer)
from apache_beam.utils.timestamp import Timestamp

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


#: The manifest seq of each sink's (by token) last commit made in this
#: process. A sink whose state holds another seq lost a commit's state
#: change (a retried bundle, a restore from an older checkpoint) or runs in
#: a new process: its buffer may hold rows committed already.
_COMMITTED_SEQ: dict[str, int] = {}


class _CommitBufferFn(beam.DoFn):
    """``(key, (table, rows))`` -> nothing: buffer, commit every table's
    rows together once ``commit_interval_s`` passed since the last commit
    (checked per element, so a busy stream needs no timer), and on a
    processing-time timer for what arrives after the last element. Rows
    already committed are never committed again (module docstring)."""

    ROWS = BagStateSpec("rows", PickleCoder())
    META = ReadModifyWriteStateSpec("meta", PickleCoder())
    FLUSH = TimerSpec("flush", TimeDomain.REAL_TIME)

    def __init__(self, output: str, input_ids: dict, interval_s: float,
                 maintain_every: int):
        self._output = output
        self._input_ids = dict(input_ids)
        self._interval_s = interval_s
        self._maintain_every = maintain_every
        self._token = uuid.uuid4().hex  # the same in every copy
        self._opened = None
        self._writer = None
        self._numbered = 0

    def setup(self):
        # Commits every second or so: the tables stay open between them.
        self._opened = output_tables.OpenTables()
        # Numbers this copy's parts: never reused, as a copy restored from
        # a checkpoint is a new one.
        self._writer = uuid.uuid4().hex[:16]
        self._numbered = 0

    def process(self, element, rows=beam.DoFn.StateParam(ROWS),
                meta=beam.DoFn.StateParam(META),
                flush=beam.DoFn.TimerParam(FLUSH)):
        _, (table, part) = element
        if not part.num_rows:
            return
        self._numbered += 1
        rows.add((table, part, (self._writer, self._numbered)))
        known = meta.read() or {"last": 0.0, "armed": False,
                                "seq": output_tables.snapshot(
                                    self._output, opened=self._opened).seq}
        now = time.time()
        if now - known["last"] >= self._interval_s:
            self._commit(rows, known)
            known["last"] = now
        elif not known["armed"]:
            # Due one interval after the last commit, not after this
            # element: a pane waits at most the interval for its commit.
            flush.set(Timestamp(seconds=known["last"] + self._interval_s))
            known["armed"] = True
        meta.write(known)

    @on_timer(FLUSH)
    def on_flush(self, rows=beam.DoFn.StateParam(ROWS),
                 meta=beam.DoFn.StateParam(META)):
        known = meta.read() or {}
        self._commit(rows, known)
        meta.write({**known, "last": time.time(), "armed": False})

    def _commit(self, rows, known: dict) -> None:
        """Commit what ``rows`` holds; every ``maintain_every`` commits
        (counted in ``known``, the META state) compact the tables too."""
        buffered = list(rows.read())
        rows.clear()
        if _COMMITTED_SEQ.get(self._token) != known.get("seq"):
            done = output_tables.committed_parts(
                self._output, known.get("seq", 0), self._opened)
            kept = [entry for entry in buffered
                    if not output_tables.part_committed(entry[2], done)]
            if len(kept) < len(buffered):
                # Worth a line: it means the job was restored.
                logging.warning(
                    "sink: %d buffered parts were committed before the "
                    "state was restored: skipped, not written twice",
                    len(buffered) - len(kept))
            buffered = kept
        by_table = {}
        for table, part, _ in buffered:
            by_table.setdefault(table, []).append(part)
        if not by_table:
            return
        snap = output_tables.commit(self._output, [
            output_tables.Change(table, output_tables.prepare(
                table, pa.concat_tables(tables),
                self._input_ids.get(table)))
            for table, tables in sorted(by_table.items())], "stream",
            opened=self._opened,
            parts=output_tables.part_ranges([n for *_, n in buffered]))
        known["seq"] = _COMMITTED_SEQ[self._token] = snap.seq
        known["commits"] = known.get("commits", 0) + 1
        if self._maintain_every and known["commits"] >= self._maintain_every:
            output_tables.maintain(self._output)
            known["commits"] = 0


#: (the one key, (table name, rows)): typed, so that the key is encoded
#: deterministically and the rows with the Arrow coder.
_KEYED = typing.Tuple[str, typing.Tuple[str, pa.Table]]


#: Commits between two compactions of the tables by the stream's sink
#: (about ten minutes at the default commit interval; 0: never).
MAINTAIN_EVERY_COMMITS = 600


class WriteTablesBuffered(beam.PTransform):
    """Append a dict ``{table name: PCollection of pa.Table}`` to the output
    tables, all tables in one commit at most every ``commit_interval_s``
    (see the module docstring). ``input_ids`` tags dead-letter rows per
    table; ``maintain_every``: commits between two compactions (0: never).
    Yields nothing."""

    #: The one key: a single writer makes a single commit of all tables.
    KEY = "tables"

    def __init__(self, output: str, input_ids: dict | None = None,
                 commit_interval_s: float = 1.0,
                 maintain_every: int = MAINTAIN_EVERY_COMMITS):
        super().__init__()
        if commit_interval_s < 0:
            raise ValueError("the commit interval must not be negative")
        if maintain_every < 0:
            raise ValueError("maintain_every must not be negative")
        if "://" not in output:
            output_tables.check_not_legacy(output)  # fail before the run
        self._fn = _CommitBufferFn(output, input_ids or {}, commit_interval_s,
                                   maintain_every)

    def expand(self, tables):
        key = self.KEY  # not self in the lambda: it is pickled
        keyed = [pcoll | f"Key_{name}" >> beam.Map(
                     lambda rows, name: (key, (name, rows)), name
                 ).with_output_types(_KEYED)
                 for name, pcoll in sorted(tables.items())]
        return (keyed | "Gather" >> beam.Flatten().with_output_types(_KEYED)
                | "Commit" >> beam.ParDo(self._fn))


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
