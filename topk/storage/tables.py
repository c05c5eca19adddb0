"""The output tables as Delta Lake tables, committed together (no Beam).

Every output table (``ranked_windows``, ``slices``, ``sketches``,
``dead_letters``, ``late_events``, ``late_counts``) is a Delta table under
``OUTPUT/<table>`` (``deltalake``, delta-rs: the choice and its measurements
are in docs/architecture.md). A Delta commit is atomic for one table; a run
writes several, so a small Delta table ``OUTPUT/_commits`` (the manifest)
makes them visible together:

1. a writer takes ``OUTPUT/_commits.lock`` (a local file lock: writers of one
   output, a batch run and a running stream, commit one at a time; they never
   wait for each other's computation, only for each other's commits);
2. it restores every table whose Delta version is beyond the one the latest
   manifest row names, with Delta's own ``restore``: those commits are the
   orphans of a writer killed between its table commits and its manifest row;
3. it commits each table (an append, or an overwrite of the rows it owns by
   a predicate), then appends one manifest row: a sequence number, run id,
   source, span, and the version of *every* table.

Readers (``snapshot``, ``dataset``, ``register_duckdb``) open every table at
the versions of the latest manifest row, so they see all of a run or none
of it, whatever they read meanwhile. A killed run leaves Delta files no
committed version references; ``maintain`` vacuums them.

Retries are idempotent: a batch run replaces, by predicate, the rows it owns
(``batch_predicates``): its method(s)' batch rows of the slices and windows
of its time span, and the dead letters of its input (keyed by a content
hash of the input file list, ``input_id``). A commit whose run id the
manifest already holds is not applied twice.

The archive (``OUTPUT/archive``) stays plain Parquet files: it is
append-only, read by event-time globs, and de-duplicated by ``event_id``
when reprocessed, so a stray file of a killed writer only repeats events.

An output written before these tables existed (Hive-partitioned Parquet
without ``_delta_log``) is refused with a one-line ``StorageError`` naming
``migrate``, which converts it in place.
"""
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from deltalake import DeltaTable, WriterProperties, write_deltalake

from topk.approx import sketch_windows
from topk.core import schema
from topk.core.schema import DAY_MS, HOUR_MS, MINUTE_MS
from topk.core.windows import WindowSpec
from topk.storage import boundary_windows, layout

COMMITS = "_commits"
LOCK_FILE = "_commits.lock"

#: Delta stores timestamps in microseconds, UTC.
TIMESTAMP = pa.timestamp("us", tz="UTC")

#: Set by tests only: seconds to sleep after each table commit, before the
#: next one and the manifest row (to kill a writer inside its commit).
PAUSE_ENV = "TOPK_COMMIT_PAUSE_S"

#: table -> (Arrow schema of its rows or None, partition columns).
#: ``window_spec`` and ``date`` are derived from the rows (``_partitioned``).
TABLES = {
    layout.RANKED_WINDOWS: (schema.RANKED_WINDOWS_SCHEMA,
                            ["window_spec", "date"]),
    layout.SLICES: (schema.SLICES_SCHEMA, ["slice_length", "date"]),
    layout.SKETCHES: (schema.SKETCHES_SCHEMA, ["slice_length", "date"]),
    layout.DEAD_LETTERS: (schema.DEAD_LETTER_SCHEMA, []),
    layout.LATE_EVENTS: (None, ["date"]),
    layout.LATE_COUNTS: (None, ["date"]),
}

#: The time column each table's ``date`` partition is the UTC day of.
_DATE_OF = {layout.RANKED_WINDOWS: "window_start",
            layout.SLICES: "slice_start", layout.SKETCHES: "slice_start",
            layout.LATE_EVENTS: "ts", layout.LATE_COUNTS: "slice_start"}

#: A stream commits every second or so (86,400 commits a day):
#: checkpoint the logs often, so that opening a table replays a few JSON
#: commits, not thousands; keep the tombstones of removed files (carried in
#: every checkpoint) only as long as ``maintain`` 's default vacuum horizon,
#: not Delta's week; and keep the commit files two days, not Delta's 30
#: (2.6M files a table). Readers open the version the newest manifest row
#: names, so older versions serve nobody once vacuumed.
TABLE_CONFIG = {"delta.checkpointInterval": "20",
                "delta.deletedFileRetentionDuration": "interval 1 days",
                "delta.logRetentionDuration": "interval 2 days"}

#: Rows per Parquet row group the Delta writer buffers before encoding
#: them. The writer keeps one file open per partition (UTC day) until the
#: write ends, each holding its current row group as Arrow arrays; with its
#: default (about a million rows) a year of ranked windows sat in memory
#: uncompressed, several GB, until the commit. This many rows keeps it to
#: tens of MB per hundred open days, and row groups still large enough
#: for readers' statistics to skip whole groups.
ROW_GROUP_ROWS = 1 << 13
WRITER_PROPERTIES = WriterProperties(max_row_group_size=ROW_GROUP_ROWS,
                                     compression="ZSTD")

_MANIFEST_SCHEMA = pa.schema([
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("committed_at", TIMESTAMP, nullable=False),
    pa.field("versions", pa.string(), nullable=False),  # JSON {table: v}
    pa.field("wrote", pa.string(), nullable=False),  # JSON [table, ...]
    pa.field("span_start", TIMESTAMP),
    pa.field("span_end", TIMESTAMP),
    # JSON {writer: [first, last]}: the numbered parts a stream sink
    # committed, so that a sink restored from an older checkpoint skips
    # what it already wrote (``committed_parts``); null for other writers.
    pa.field("parts", pa.string()),
])


class StorageError(ValueError):
    """A one-line reason an output cannot be read or written."""


# --- Paths and legacy outputs ----------------------------------------------

def table_path(output: str, table: str) -> str:
    return layout.table_dir(output, table)


def _exists(path: str) -> bool:
    return DeltaTable.is_deltatable(path)


class OpenTables:
    """The Delta tables of one long-lived writer, kept open between its
    commits and brought up to date (``update_incremental``: the log
    entries since) instead of opened anew. The stream's sink commits every
    second; opening a table reads its last checkpoint and the log after
    it, about 10 ms, eight times a commit. Other writers' commits in
    between are read like any log entry. Local tables only; a table whose
    log no longer holds the version kept (deleted and made again) is
    opened anew."""

    def __init__(self):
        self._open: dict[str, DeltaTable] = {}

    def get(self, path: str) -> DeltaTable | None:
        """``path``'s table, up to date (``None``: no table there)."""
        table = self._open.get(path)
        if table is not None and os.path.exists(os.path.join(
                path, "_delta_log", f"{table.version():020d}.json")):
            table.update_incremental()
            return table
        self._open.pop(path, None)
        if not _exists(path):
            return None
        table = DeltaTable(path)
        if os.path.isdir(path):
            self._open[path] = table
        return table


def _open(path: str, opened: OpenTables | None) -> DeltaTable | None:
    """``path``'s table, from ``opened`` when given (``None``: none)."""
    if opened is not None:
        return opened.get(path)
    return DeltaTable(path) if _exists(path) else None


def legacy_tables(output: str) -> list[str]:
    """Tables of ``output`` written by an older topk: directories of plain
    Parquet files without a Delta log, in an output without a manifest (a
    writer creates the manifest before its first table, so a table being
    created is never mistaken for an old one)."""
    if _exists(table_path(output, COMMITS)):
        return []
    return [t for t in TABLES
            if os.path.isdir(table_path(output, t))
            and not os.path.isdir(os.path.join(table_path(output, t),
                                               "_delta_log"))]


def check_not_legacy(output: str) -> None:
    legacy = legacy_tables(output)
    if legacy:
        raise StorageError(
            f"{output!r} holds plain Parquet tables ({', '.join(legacy)}) "
            "written by an older topk: convert them once with `topk migrate "
            f"--output {output}`")


# --- Rows as stored ----------------------------------------------------------

def _to_micros(rows: pa.Table) -> pa.Table:
    fields = [pa.field(f.name, TIMESTAMP, f.nullable)
              if pa.types.is_timestamp(f.type) else f for f in rows.schema]
    return rows.cast(pa.schema(fields))


def _days(column: pa.ChunkedArray) -> pa.Array:
    if pa.types.is_timestamp(column.type):
        column = pc.cast(pc.cast(column, pa.timestamp("ms", tz="UTC")),
                         pa.int64())
    day = column.to_numpy() // DAY_MS
    # YYYY-MM-DD of each row's UTC day. Formatted once per distinct day:
    # NumPy's datetime-to-str runs in Python per element, and a long-span
    # output has millions of rows over a few hundred days.
    distinct, which = np.unique(day, return_inverse=True)
    names = pa.array(distinct.astype("datetime64[D]").astype(str))
    return names.take(pa.array(which.reshape(-1)))


def _partitioned(table: str, rows: pa.Table, input_id: str | None = None
                 ) -> pa.Table:
    """``rows`` of ``table`` as stored: its schema (timestamps in
    microseconds) plus the derived partition columns."""
    row_schema, _ = TABLES[table]
    if row_schema is not None:
        rows = rows.select(row_schema.names).cast(row_schema)
    rows = _to_micros(rows)
    if table == layout.RANKED_WINDOWS:
        spec = pc.if_else(
            pc.is_null(rows["slide"]), rows["window_length"],
            pc.binary_join_element_wise(rows["window_length"],
                                        pc.fill_null(rows["slide"], ""), "_"))
        rows = rows.append_column(pa.field("window_spec", pa.string(), False),
                                  spec)
    if table in _DATE_OF:
        rows = rows.append_column(pa.field("date", pa.string(), False),
                                  _days(rows[_DATE_OF[table]]))
    if table == layout.DEAD_LETTERS:
        rows = rows.append_column(
            pa.field("input_id", pa.string()),
            pa.array([input_id] * rows.num_rows, pa.string()))
    return rows


def stored_schema(table: str) -> pa.Schema | None:
    """The schema ``table`` is stored with (``None`` when it follows its
    rows: late events and counts)."""
    row_schema, _ = TABLES[table]
    if row_schema is None:
        return None
    return _partitioned(table, row_schema.empty_table()).schema


def prepare(table: str, rows: pa.Table, input_id: str | None = None
            ) -> pa.Table:
    """Rows of ``table`` ready to commit or stage (``_partitioned``)."""
    return _partitioned(table, rows, input_id)


# --- The manifest -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The committed state: the Delta version of every table (tables never
    committed are absent) as of manifest row ``seq`` (0: nothing yet)."""
    seq: int
    versions: dict


def snapshot(output: str, check: bool = True,
             opened: OpenTables | None = None) -> Snapshot:
    """The latest committed state of ``output`` (``StorageError`` for a
    legacy output). Reads one small file: the manifest's newest rows are
    found by the file statistics in its Delta log."""
    if check:
        check_not_legacy(output)
    path = table_path(output, COMMITS)
    manifest = _open(path, opened)
    if manifest is None:
        return Snapshot(0, {})
    actions = pa.table(manifest.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return Snapshot(0, {})
    newest = pc.index(actions["max.seq"],
                      pc.max(actions["max.seq"])).as_py()
    rows = pq.read_table(os.path.join(path, actions["path"][newest].as_py()),
                         columns=["seq", "versions"])
    last = pc.index(rows["seq"], pc.max(rows["seq"])).as_py()
    return Snapshot(rows["seq"][last].as_py(),
                    json.loads(rows["versions"][last].as_py()))


def _committed_runs(output: str, run_id: str) -> bool:
    path = table_path(output, COMMITS)
    return _exists(path) and DeltaTable(path).to_pyarrow_table(
        columns=["run_id"], filters=[("run_id", "=", run_id)]).num_rows > 0


def committed_parts(output: str, after_seq: int,
                    opened: OpenTables | None = None
                    ) -> dict[str, list[tuple[int, int]]]:
    """``{writer: [(first, last), ...]}``: the parts stream sinks committed
    after manifest ``seq`` ``after_seq`` (``commit``'s ``parts``)."""
    manifest = _open(table_path(output, COMMITS), opened)
    if manifest is None or "parts" not in _column_names(manifest):
        return {}
    rows = manifest.to_pyarrow_table(columns=["parts"],
                                     filters=[("seq", ">", after_seq)])
    ranges = {}
    for listed in rows["parts"].drop_null().to_pylist():
        for writer, (first, last) in json.loads(listed).items():
            ranges.setdefault(writer, []).append((first, last))
    return {writer: sorted(held) for writer, held in ranges.items()}


def part_ranges(numbers) -> dict[str, tuple[int, int]]:
    """``(writer, n)`` part numbers -> ``{writer: (first, last)}``, what a
    commit records (``commit``'s ``parts``). A writer's parts in one
    commit are all it buffered since the buffer's last commit: one
    range."""
    ranges = {}
    for writer, n in numbers:
        first, last = ranges.get(writer, (n, n))
        ranges[writer] = (min(first, n), max(last, n))
    return ranges


def part_committed(number: tuple[str, int], done: dict) -> bool:
    """Whether the part ``(writer, n)`` lies in a range of ``done``
    (``committed_parts``)."""
    writer, n = number
    return any(first <= n <= last for first, last in done.get(writer, ()))


def history(output: str) -> pa.Table:
    """Every manifest row, oldest first."""
    path = table_path(output, COMMITS)
    if not _exists(path):
        return _MANIFEST_SCHEMA.empty_table()
    return DeltaTable(path).to_pyarrow_table().sort_by("seq")


def dataset(output: str, table: str, snap: Snapshot | None = None,
            files: list | None = None) -> pads.Dataset | None:
    """``table`` at its committed version, as an Arrow dataset (``None``
    when no commit wrote it). Read it with pyarrow, pandas, Polars, or
    register it in DuckDB (``register_duckdb``).

    ``files``: only the files that may hold rows matching these
    ``(column, op, value)`` filters (Delta's file pruning: partition
    values exactly, other columns by the log's min/max statistics). A
    stream commits a file per partition every second or so, and building
    a dataset costs about a millisecond per file: a question about one
    window reads two files instead of a day's."""
    snap = snapshot(output) if snap is None else snap
    if table not in snap.versions:
        return None
    data = DeltaTable(table_path(output, table),
                      version=snap.versions[table]).to_pyarrow_dataset(
                          file_pruning_predicate=files)
    added = _added_columns(table, data.schema.names)
    if added:
        # Written before these columns existed: they read as nulls.
        data = data.replace_schema(pa.schema([*data.schema, *added]))
    return data


def _column_names(table: DeltaTable) -> list[str]:
    return [f.name for f in table.schema().fields]


def _added_columns(table: str, held: list[str]) -> list[pa.Field]:
    """The columns of ``table``'s schema missing from a table whose
    columns are ``held``: columns added (nullable) after an older topk
    wrote it. Its next commit adds them (``_apply``)."""
    wanted, _ = TABLES[table]
    return [] if wanted is None else [f for f in wanted
                                      if f.name not in held]


def newest(output: str, table: str, snap: Snapshot, column: str,
           partition: dict) -> int | None:
    """The largest value of the timestamp ``column`` (epoch ms) in the
    committed files of ``table`` with these partition values, from the
    Delta log's file statistics: no data file is read (``None``: no such
    file, or none with statistics)."""
    if table not in snap.versions:
        return None
    actions = pa.table(DeltaTable(
        table_path(output, table),
        version=snap.versions[table]).get_add_actions(flatten=True))
    keep = pa.scalar(True)
    for name, value in partition.items():
        keep = pc.and_(keep, pc.equal(actions[f"partition.{name}"], value))
    values = actions.filter(keep)[f"max.{column}"]
    top = pc.max(values.cast(pa.int64())).as_py()
    return None if top is None else top // 1000


def register_duckdb(con, output: str, tables=None, prefix: str = ""
                    ) -> dict[str, str]:
    """Register the committed snapshot of ``output``'s tables as DuckDB
    relations named ``prefix + table``, all at the versions of one manifest
    row; returns ``{table: name}`` of the tables that hold commits."""
    snap = snapshot(output)
    names = {}
    for table in (tables or TABLES):
        ds = dataset(output, table, snap)
        if ds is not None:
            con.register(prefix + table, ds)
            names[table] = prefix + table
    return names


def connect(output: str, tables=None):
    """A new DuckDB connection (session time zone UTC) in which every
    table of ``output`` is a view of its committed snapshot (all at the
    versions of one manifest row): ``connect("out").sql("SELECT ... FROM
    slices")``."""
    import duckdb
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    register_duckdb(con, output, tables)
    return con


# --- Commits -------------------------------------------------------------------

@contextlib.contextmanager
def _locked(output: str):
    import fcntl  # POSIX; the lock serialises commits of local outputs
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, LOCK_FILE), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclasses.dataclass
class Change:
    """One table's part of a commit: ``data`` (a ``pa.Table``, a
    ``pa.RecordBatchReader`` of rows already ``prepare``d, or a list of
    readers written one Delta write each: ``staged_groups``) appended, or,
    with ``predicate`` (Delta SQL), replacing the rows it matches (every
    new row must match it)."""
    table: str
    data: object
    predicate: str | None = None


def _recover(output: str, snap: Snapshot,
             opened: OpenTables | None = None) -> dict:
    """Undo the orphan commits of a killed writer: every table beyond its
    committed version goes back to it (``DeltaTable.restore``; a table no
    manifest row names is emptied). Call under the lock. Returns the
    versions after recovery (restoring makes new versions with the old
    contents)."""
    versions = dict(snap.versions)
    for table in TABLES:
        path = table_path(output, table)
        current = _open(path, opened)
        if current is None:
            continue
        committed = snap.versions.get(table)
        if committed is not None and current.version() <= committed:
            continue
        if committed is None:
            current.delete()
        else:
            current.restore(committed)
        versions[table] = _open(path, opened).version()
    return versions


def _num_rows(data) -> int | None:
    return data.num_rows if isinstance(data, pa.Table) else None


def _apply(output: str, change: Change,
           opened: OpenTables | None = None) -> int | None:
    """Commit one table's change; returns its new version (``None`` when
    nothing changed)."""
    path = table_path(output, change.table)
    _, partitions = TABLES[change.table]
    table = _open(path, opened)
    empty = _num_rows(change.data) == 0
    if empty:
        if change.predicate is None or table is None:
            return None
        before = table.version()
        table.delete(change.predicate)
        after = _open(path, opened).version()
        return after if after != before else None
    if change.predicate is None or table is None:
        mode, predicate = "append", None
    else:
        mode, predicate = "overwrite", change.predicate
    pieces = change.data if isinstance(change.data, list) else [change.data]
    evolve = table is not None and _added_columns(
        change.table, _column_names(table))
    for piece in pieces:
        # Later pieces append to what the first replaced: readers see the
        # manifest's version, the last one, never one in between. A table
        # object given to the writer is updated by it: no reopening.
        write_deltalake(path if table is None else table, piece, mode=mode,
                        predicate=predicate,
                        partition_by=partitions or None,
                        writer_properties=WRITER_PROPERTIES,
                        configuration=(TABLE_CONFIG if table is None
                                       else None),
                        schema_mode="merge" if evolve else None)
        mode, predicate = "append", None
        if table is None:
            table = _open(path, opened)
    return table.version()


def commit(output: str, changes: list[Change], source: str,
           run_id: str | None = None, span: tuple[int, int] | None = None,
           then=None, opened: OpenTables | None = None,
           parts: dict[str, tuple[int, int]] | None = None) -> Snapshot:
    """Commit ``changes`` to ``output``'s tables so that readers see them
    all at once (module docstring). ``run_id`` makes a retried commit a
    no-op; ``span`` (epoch ms) and ``parts`` (``{writer: (first, last)}``,
    the numbered parts a stream sink commits: ``committed_parts``) are
    recorded in the manifest. ``then(snap)``
    returns more changes computed from the committed snapshot this commit
    lands on, under the lock (other writers wait). ``opened``: a writer
    that commits often keeps its tables open there. Returns the new
    snapshot."""
    retry = run_id is not None  # a fresh id cannot have committed yet
    run_id = run_id or uuid.uuid4().hex
    pause = float(os.environ.get(PAUSE_ENV) or 0)
    with _locked(output):
        check_not_legacy(output)
        _create_manifest(output, opened)
        snap = snapshot(output, check=False, opened=opened)
        if retry and _committed_runs(output, run_id):
            return snap
        versions = _recover(output, snap, opened)
        if then is not None:
            changes = list(changes) + then(Snapshot(snap.seq, versions))
        wrote = []
        for change in changes:
            version = _apply(output, change, opened)
            if version is not None:
                versions[change.table] = version
                wrote.append(change.table)
            if pause:
                time.sleep(pause)
        if not wrote and versions == snap.versions:
            return snap
        return _append_manifest(output, snap, versions, run_id, source,
                                wrote, span, opened, parts)


def _create_manifest(output: str, opened: OpenTables | None = None) -> None:
    path = table_path(output, COMMITS)
    if _open(path, opened) is None:
        write_deltalake(path, _MANIFEST_SCHEMA.empty_table(), mode="append",
                        configuration=TABLE_CONFIG)


def _append_manifest(output, snap, versions, run_id, source, wrote, span,
                     opened=None, parts=None):
    def ts(ms):
        return None if ms is None else ms * 1000
    row = pa.table({
        "seq": [snap.seq + 1], "run_id": [run_id], "source": [source],
        "committed_at": [int(time.time() * 1e6)],
        "versions": [json.dumps(versions, sort_keys=True)],
        "wrote": [json.dumps(wrote)],
        "span_start": [ts(span[0]) if span else None],
        "span_end": [ts(span[1]) if span else None],
        "parts": [None if parts is None else json.dumps(parts)]},
        schema=pa.schema([f.with_type(pa.int64())
                          if pa.types.is_timestamp(f.type) else f
                          for f in _MANIFEST_SCHEMA])).cast(_MANIFEST_SCHEMA)
    path = table_path(output, COMMITS)
    manifest = _open(path, opened)
    # A manifest made before the parts column gets it now.
    older = manifest is not None and "parts" not in _column_names(manifest)
    write_deltalake(path if manifest is None else manifest, row,
                    mode="append", schema_mode="merge" if older else None)
    return Snapshot(snap.seq + 1, versions)


def append(output: str, table: str, rows: pa.Table, source: str = "stream",
           input_id: str | None = None) -> Snapshot:
    """Append ``rows`` of ``table`` in one commit of its own (a stream
    bundle)."""
    return commit(output, [Change(table, prepare(table, rows, input_id))],
                  source)


# --- What a batch run owns ------------------------------------------------------

def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


def _quoted(values) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def batch_predicates(span: tuple[int, int] | None, methods, input_id: str,
                     whole_windows_only: bool = False,
                     specs=None) -> dict[str, str]:
    """The rows a batch run over event times ``span = [start, end)`` (epoch
    ms) with ``methods`` owns, per table, as Delta predicates: its batch
    slices (exact) and sketches (per method) of every slice length that
    overlap the span, its batch ranked windows of its methods and window
    ``specs`` (``WindowSpec`` s; ``None``: every spec) that overlap the span
    (``whole_windows_only``: that lie inside it, for reprocessing, which
    writes only those), and the dead letters of its input."""
    out = {layout.DEAD_LETTERS: f"input_id = '{input_id}'"}
    if span is None:
        return out
    start, end = span
    last_day = layout.day_name((end - 1) // DAY_MS)
    slices = []
    for name, ms in (("1m", MINUTE_MS), ("1h", HOUR_MS), ("1d", DAY_MS)):
        first = start - start % ms
        slices.append(f"(slice_length = '{name}' AND slice_start >= "
                      f"'{_iso(first)}' AND slice_start < '{_iso(end)}')")
    slice_filter = (f"source = 'batch' AND date >= "
                    f"'{layout.day_name(start // DAY_MS)}' AND date <= "
                    f"'{last_day}' AND ({' OR '.join(slices)})")
    methods = list(methods)
    approximate = [m for m in methods if m != layout.EXACT]
    if layout.EXACT in methods:
        out[layout.SLICES] = slice_filter
    if approximate:
        out[layout.SKETCHES] = (f"{slice_filter} AND method IN "
                                f"({_quoted(approximate)})")
    if whole_windows_only:
        windows = (f"window_start >= '{_iso(start)}' AND "
                   f"window_end <= '{_iso(end)}'")
    else:
        windows = (f"window_start < '{_iso(end)}' AND "
                   f"window_end > '{_iso(start)}'")
    if specs is not None:
        # A run with other --windows leaves the windows it did not compute.
        windows += (f" AND window_spec IN "
                    f"({_quoted([s.key for s in specs]) or 'NULL'})")
    # The longest window is 30 days: its start lies at most that far back.
    out[layout.RANKED_WINDOWS] = (
        f"source = 'batch' AND method IN ({_quoted(methods)}) AND date >= "
        f"'{layout.day_name((start - 30 * DAY_MS) // DAY_MS)}' AND date <= "
        f"'{last_day}' AND {windows}")
    return out


def minute_span(tables) -> tuple[int, int] | None:
    """``[first minute, last minute + 1m)`` (epoch ms) of the minute rows
    of ``slices``/``sketches`` data (Arrow datasets or tables with
    ``slice_start`` and ``slice_length``): the event-time span of a run's
    input. ``None`` when there are none."""
    lo, hi = None, None
    for data in tables:
        if data is None:
            continue
        if isinstance(data, pa.Table):
            data = pads.dataset(data)
        minutes = data.to_table(columns=["slice_start"],
                                filter=pc.field("slice_length") == "1m")
        if minutes.num_rows == 0:
            continue
        ms = pc.cast(pc.cast(minutes["slice_start"],
                             pa.timestamp("ms", tz="UTC")), pa.int64())
        bounds = pc.min_max(ms).as_py()
        lo = bounds["min"] if lo is None else min(lo, bounds["min"])
        hi = bounds["max"] if hi is None else max(hi, bounds["max"])
    return None if lo is None else (lo, hi + MINUTE_MS)


def input_id(paths) -> str:
    """Content key of an input file list: the same files name the same
    input however they were spelled (relative, ``./``, symlinks, a glob or a
    list). Local files count by canonical path, size and modification time;
    other URLs by their text."""
    h = hashlib.sha1()
    keys = set()
    for p in paths:
        if "://" in p:
            keys.add(p)
        else:
            real = os.path.realpath(p)
            st = os.stat(real)
            keys.add(f"{real}\0{st.st_size}\0{st.st_mtime_ns}")
    for key in sorted(keys):
        h.update(key.encode() + b"\n")
    return h.hexdigest()[:16]


# --- Maintenance -----------------------------------------------------------------

def delete_where(output: str, predicates: dict[str, str], source: str
                 ) -> Snapshot:
    """Delete the rows matching ``predicates`` (table -> Delta SQL) in one
    commit (retention)."""
    changes = []
    for table, predicate in predicates.items():
        row_schema = stored_schema(table)
        if row_schema is None or not _exists(table_path(output, table)):
            continue
        changes.append(Change(table, row_schema.empty_table(), predicate))
    return commit(output, changes, source)


def maintain(output: str, vacuum_hours: float = 24.0) -> dict[str, dict]:
    """Compact small files (``optimize.compact``), checkpoint the logs,
    and vacuum files that no committed version of the last
    ``vacuum_hours`` references (nor any version a manifest row names
    newer than that). Compaction is committed like a run (manifest row),
    so readers move to the compacted files. Returns per table Delta's
    metrics."""
    metrics = {}
    with _locked(output):
        check_not_legacy(output)
        snap = snapshot(output, check=False)
        versions = _recover(output, snap)
        for table in [*TABLES, COMMITS]:
            path = table_path(output, table)
            if not _exists(path):
                continue
            dt_ = DeltaTable(path)
            configured = dt_.metadata().configuration
            missing = {k: v for k, v in TABLE_CONFIG.items()
                       if k not in configured}
            if missing:  # a table written by an earlier version
                dt_.alter.set_table_properties(missing)
                dt_ = DeltaTable(path)
            before = dt_.version()
            compacted = dt_.optimize.compact()
            dt_ = DeltaTable(path)
            if table != COMMITS and dt_.version() != before:
                versions[table] = dt_.version()
            metrics[table] = {"compacted": compacted}
        if versions != snap.versions:
            snap = _append_manifest(output, snap, versions,
                                    uuid.uuid4().hex, "maintenance",
                                    sorted(versions), None)
        for table in [*TABLES, COMMITS]:
            path = table_path(output, table)
            if not _exists(path):
                continue
            dt_ = DeltaTable(path)
            dt_.create_checkpoint()
            keep = [snap.versions[table]] if table in snap.versions else None
            removed = dt_.vacuum(
                retention_hours=int(vacuum_hours), dry_run=False,
                enforce_retention_duration=False, keep_versions=keep)
            dt_.cleanup_metadata()
            metrics.setdefault(table, {})["vacuumed"] = len(removed)
        staging = os.path.join(output, STAGING)
        if os.path.isdir(staging):
            cutoff = time.time() - vacuum_hours * 3600
            for run in os.listdir(staging):
                run_dir = os.path.join(staging, run)
                if os.path.getmtime(run_dir) < cutoff:
                    shutil.rmtree(run_dir, ignore_errors=True)
            with contextlib.suppress(OSError):  # a run is staging
                os.rmdir(staging)
    return metrics


# --- Staging (a batch run's parallel writes before its one commit) ----------------

#: Batch workers write their rows here (plain Parquet, one directory per run
#: and table) for the final commit step to read; invisible to readers.
STAGING = "_staging"


def staging_dir(output: str, run_id: str, table: str) -> str:
    return os.path.join(output, STAGING, run_id, table)


def staged(output: str, run_id: str, table: str) -> pads.Dataset | None:
    path = staging_dir(output, run_id, table)
    if not os.path.isdir(path) or not os.listdir(path):
        return None
    return pads.dataset(path, format="parquet")


#: Staged rows are grouped by the UTC month of their ``date`` (and by
#: window spec, for ranked windows) in the staging directory, and a commit
#: writes a group at a time. The Delta writer keeps a file open per
#: partition until its write ends, a few MB each: a year of days of seven
#: window specs in one write held over 1 GB.
NO_GROUP = "all"


def staging_groups(rows: pa.Table) -> list[tuple[str, pa.Table]]:
    """``(group, rows)`` of prepared rows: by month (and window spec) when
    the table is partitioned by date, else one group."""
    if rows.num_rows == 0 or "date" not in rows.column_names:
        return [(NO_GROUP, rows)]
    key = pc.utf8_slice_codeunits(rows["date"], 0, 7)
    if "window_spec" in rows.column_names:
        key = pc.binary_join_element_wise(key, rows["window_spec"], "_")
    # One stable sort by group, then a slice each: a long span has a group
    # per month and window spec (84 in a year of all 7 specs), and a
    # filter per group would read every row that many times.
    encoded = pc.dictionary_encode(key.combine_chunks())
    names = np.array(encoded.dictionary.to_pylist(), object)
    if len(names) == 1:
        return [(names[0], rows)]
    by_name = np.argsort(names)
    place = np.empty(len(names), np.int64)
    place[by_name] = np.arange(len(names))
    group = place[encoded.indices.to_numpy()]
    heads = np.flatnonzero(group[1:] != group[:-1]) + 1
    if len(heads) < STAGING_RUNS:
        # Rows mostly come in runs of one group (a ranking call's table is
        # one spec, usually in one month): each group is its runs, sliced
        # without a copy, where a sort would copy every row.
        firsts = np.r_[0, heads]
        runs = {}
        for at, start, end in zip(group[firsts].tolist(), firsts.tolist(),
                                  np.r_[heads, len(group)].tolist()):
            runs.setdefault(at, []).append(rows.slice(start, end - start))
        return [(names[by_name][at], pa.concat_tables(runs[at]))
                for at in sorted(runs)]
    sizes = np.bincount(group, minlength=len(names))
    rows = rows.take(np.argsort(group, kind="stable"))
    return [(name, rows.slice(int(start), int(size)))
            for name, start, size in zip(names[by_name],
                                         np.cumsum(sizes) - sizes, sizes)]


#: ``staging_groups`` slices rows that come in fewer runs of one group
#: than this, and sorts them otherwise.
STAGING_RUNS = 4096


def stage(output: str, run_id: str, table: str, rows: pa.Table) -> list:
    """Write ``prepare``d rows of ``table`` as staging files of run
    ``run_id`` (one per ``staging_groups`` group); returns their paths.
    The commit reads them only after every writer finished, so a plain
    write is enough."""
    paths = []
    for group, part in staging_groups(rows):
        directory = os.path.join(staging_dir(output, run_id, table), group)
        os.makedirs(directory, exist_ok=True)
        paths.append(os.path.join(directory, f"{uuid.uuid4().hex}.parquet"))
        pq.write_table(part, paths[-1], **STAGING_PARQUET)
    return paths


#: How staged files are written. They live until the commit rewrites them
#: into the tables, which is read whole: no statistics, no dictionaries,
#: and a fast codec write ranked rows about 3x faster than zstd with
#: both (0.21 against 0.72 s for 4M rows), at about twice the bytes.
STAGING_PARQUET = {"compression": "lz4", "use_dictionary": False,
                   "write_statistics": False}


def _groups_of(ds: pads.Dataset) -> list[pads.Dataset]:
    """The staged dataset ``ds`` split by its groups' directories, in
    order."""
    by_dir = {}
    for path in ds.files:
        by_dir.setdefault(os.path.dirname(path), []).append(path)
    return [pads.dataset(files, schema=ds.schema, format="parquet")
            for _, files in sorted(by_dir.items())]


def commit_staged(output: str, run_id: str, methods, input_id_: str,
                  span: tuple[int, int] | None = None,
                  whole_windows_only: bool = False, specs=None,
                  k: int | None = None, replace: bool = False) -> Snapshot:
    """Commit what a batch run staged (``staging_dir``), replacing the rows
    the run owns (``batch_predicates``; ``span`` defaults to the minutes of
    its staged slices and sketches), then remove the staging files.

    The 1h/1d slices and sketches and (given the run's window ``specs``,
    names or ``WindowSpec``s, and ``k``) the ranked windows that straddle
    an edge of the span are recomputed from the run's counts and sketches
    inside it plus the committed batch ones outside it
    (``topk.storage.boundary_windows``), in the same commit and from the
    snapshot that commit lands on (``_commit_edges``). Reprocessing
    (``whole_windows_only``) replaces no straddling window, and its
    whole-day span cuts no slice.

    A run whose input lacks events of committed batch counts in its span
    (``boundary_windows.shortfall``) would replace them: ``SpanConflict``
    and nothing committed, unless ``replace`` (the input supersedes
    them)."""
    data = {t: staged(output, run_id, t) for t in TABLES}
    if span is None:
        span = minute_span([data[layout.SLICES], data[layout.SKETCHES]])
    if specs is not None:
        specs = [WindowSpec.parse(s) if isinstance(s, str) else s
                 for s in specs]
    predicates = batch_predicates(span, methods, input_id_,
                                  whole_windows_only, specs)
    exact = layout.EXACT in methods and data[layout.SLICES] is not None
    approximate = (sketch_windows.approximate_methods(methods)
                   if data[layout.SKETCHES] is not None else [])
    if span is None or whole_windows_only or not (exact or approximate):
        changes = [Change(table, _staged_rows(table, data[table]), predicate)
                   for table, predicate in predicates.items()]
        return _commit_and_clean(output, run_id, changes, "batch", span)
    # A refused run's staged files stay, as a killed run's do, until
    # maintenance: a runner that retries the failed step must find them,
    # or it would commit an empty run.
    return _commit_edges(output, run_id, data, predicates, span, specs, k,
                         exact, approximate, replace)


class SpanConflict(StorageError):
    """A batch run would replace committed counts its input lacks."""


def _commit_edges(output, run_id, data, predicates, span, specs, k, exact,
                  approximate, replace=False) -> Snapshot:
    """``commit_staged`` with the straddling rows recomputed from the
    snapshot the commit lands on (``exact``: slices and exact windows;
    ``approximate``: those methods' sketches and windows): computed under
    the commit lock (``commit``'s ``then``), so no other writer commits in
    between; they wait for this computation, which reads about two window
    lengths of slices or sketches per edge."""
    edged = ({layout.RANKED_WINDOWS}
             | ({layout.SLICES} if exact else set())
             | ({layout.SKETCHES} if approximate else set())
             ) & set(predicates)
    windows = specs and k

    def edge_changes(snap):
        # Materialised here: delta-rs cannot read a table from inside its
        # own write of another (``_staged_rows`` below reads staging files
        # only).
        if not replace:
            _check_no_shortfall(output, snap, data, span, exact, approximate)
        now = int(time.time() * 1000)
        edges = {table: [] for table in edged}
        if exact:
            reader = boundary_windows.SliceReader(
                data[layout.SLICES], dataset(output, layout.SLICES, snap),
                span)
            edges[layout.SLICES].append(
                boundary_windows.straddling_slices(reader, now))
            if windows:
                edges[layout.RANKED_WINDOWS].append(
                    boundary_windows.ranked_straddling_windows(
                        specs, k, reader, now))
        if approximate:
            reader = boundary_windows.SketchReader(
                data[layout.SKETCHES],
                dataset(output, layout.SKETCHES, snap), span)
            edges[layout.SKETCHES].append(
                boundary_windows.straddling_sketches(reader, approximate,
                                                     now))
            if windows:
                edges[layout.RANKED_WINDOWS].append(
                    boundary_windows.ranked_straddling_sketch_windows(
                        specs, k, reader, approximate, now))
        return [Change(table, _staged_rows(table, data[table],
                                           *_joined(edges[table])),
                       predicates[table]) for table in sorted(edged)]

    changes = [Change(table, _staged_rows(table, data[table]), predicate)
               for table, predicate in predicates.items()
               if table not in edged]
    return _commit_and_clean(output, run_id, changes, "batch", span,
                             then=edge_changes)


def _check_no_shortfall(output, snap, data, span, exact, approximate):
    table, methods = ((layout.SLICES, [layout.EXACT]) if exact
                      else (layout.SKETCHES, approximate))
    lost = boundary_windows.shortfall(data[table],
                                      dataset(output, table, snap), span,
                                      methods)
    if lost:
        raise SpanConflict(
            f"{lost}: committing would replace them, so nothing was "
            "committed. This input and an earlier run's share minutes (a "
            "file cut inside a minute, a late event in the next file): run "
            "them together in one --input, cut inputs at minute boundaries, "
            "or pass --replace-span if this input supersedes those counts")


def _joined(edges) -> tuple:
    """``(rows, replaces)`` pairs of one table -> one pair (``(None,
    None)`` for none)."""
    rows = [r for r, _ in edges]
    replaces = boundary_windows.any_of([f for _, f in edges])
    return (pa.concat_tables(rows) if rows else None), replaces


def commit_staged_appends(output: str, run_id: str, source: str,
                          input_id_: str) -> Snapshot:
    """Commit what a run of ``source`` other than batch (``topk stream
    --bounded``) staged: appends (stream readers take the latest row by
    ``emitted_at``, so a rerun adds rows but never double counts), except
    the dead letters of its input, which replace the previous ones."""
    changes = []
    for table in TABLES:
        ds = staged(output, run_id, table)
        if table == layout.DEAD_LETTERS:
            changes.append(Change(table, _staged_rows(table, ds),
                                  f"input_id = '{input_id_}'"))
        elif ds is not None:
            changes.append(Change(table, _staged_rows(table, ds)))
    return _commit_and_clean(output, run_id, changes, source, None)


def _staged_rows(table: str, ds, rows: pa.Table | None = None,
                 replaces=None):
    """The staged rows of ``table`` (``ds``, or none) as stored: a reader
    per staging group (``staging_groups``). With ``rows`` (recomputed rows
    of the table's schema), those first, and the staged rows matching
    ``replaces`` (a dataset filter) left out."""
    target = stored_schema(table)
    if ds is None and rows is None:
        return target.empty_table()
    keep = None if replaces is None else ~replaces

    def batches(group, first):
        if first and rows is not None:
            for batch in prepare(table, rows).to_batches():
                yield batch.cast(target)
        if group is not None:
            # Streamed batch by batch into the Delta writer, with little
            # read-ahead: memory stays flat.
            for batch in group.to_batches(filter=keep, batch_size=1 << 16,
                                          batch_readahead=1,
                                          fragment_readahead=1):
                yield batch.cast(target)

    groups = _groups_of(ds) if ds is not None else [None]
    return [pa.RecordBatchReader.from_batches(target, batches(g, i == 0))
            for i, g in enumerate(groups)]


def _commit_and_clean(output, run_id, changes, source, span, then=None
                      ) -> Snapshot:
    snap = commit(output, changes, source, run_id=run_id, span=span,
                  then=then)
    shutil.rmtree(os.path.join(output, STAGING, run_id), ignore_errors=True)
    with contextlib.suppress(OSError):  # other runs may be staging
        os.rmdir(os.path.join(output, STAGING))
    return snap


# --- Migration -------------------------------------------------------------------

def _read_legacy(path: str) -> pa.Table | None:
    """All rows of an old table directory; partition columns the files do
    not hold (``date``, ``window_spec``) come from the directory names."""
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path)
                   for f in fs if f.endswith(".parquet"))
    if not files:
        return None
    in_files = set(pq.read_schema(files[0]).names)
    keys = []
    for part in os.path.relpath(files[0], path).split(os.sep)[:-1]:
        key = part.partition("=")[0]
        if key not in in_files:
            keys.append(key)
    partitioning = pads.partitioning(
        pa.schema([(k, pa.string()) for k in keys]), flavor="hive")
    return pads.dataset(files, format="parquet", partitioning=partitioning,
                        partition_base_dir=path).to_table()


def migrate(output: str) -> list[str]:
    """Convert an output written by an older topk (Hive-partitioned Parquet
    directories) into Delta tables, in place, in one manifest commit; the
    old directories are kept beside them as ``.<table>.parquet-backup``.
    Returns the tables converted. Everything is read before anything is
    moved, and a failed commit moves the old directories back."""
    legacy = legacy_tables(output)
    rows = {t: _read_legacy(table_path(output, t)) for t in legacy}
    changes = [Change(t, prepare(t, r, "migrated" if t == layout.DEAD_LETTERS
                                 else None))
               for t, r in rows.items() if r is not None and r.num_rows]
    moved = []
    try:
        for table in legacy:
            backup = os.path.join(output, f".{table}.parquet-backup")
            os.rename(table_path(output, table), backup)
            moved.append((backup, table_path(output, table)))
        commit(output, changes, "migrate")
    except BaseException:
        for table, _ in changes:
            shutil.rmtree(table_path(output, table), ignore_errors=True)
        shutil.rmtree(table_path(output, COMMITS), ignore_errors=True)
        for backup, original in moved:
            os.rename(backup, original)
        raise
    return legacy
