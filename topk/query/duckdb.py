"""DuckDB backend of the query layer: ``topk(k, start, end)`` over the
slices or sketches table.

Arguments are checked and answers shaped by ``topk.query.contract`` (the
same for the BigQuery backend); this module only turns a checked ``Query``
into DuckDB SQL. The range is decomposed into the fewest aligned
day/hour/minute slices (``Query.runs``). ``topk`` answers exactly with one
DuckDB statement over the ``slices`` table;
``topk_approx`` reads the per-slice sketches of one method for the same
slices from the ``sketches`` table and merges them, so its counts come with
bounds. The top-K of a range is not the union of the top-Ks of its parts,
so both merge mergeable slices rather than ranked windows. Per slice and
source only the latest row (by ``emitted_at``) counts, and where both the
stream and a batch reprocessing wrote a slice, the batch rows win.

The tables are Delta tables; every query reads them at the versions of the
latest manifest row (``Committed``, as ``topk.storage.tables.register_duckdb``
opens them), so it never sees part of a run, even while one commits. A
caller asking many questions (``topk serve``) keeps one ``Committed`` per
manifest row and reuses it.
"""
import collections
import contextlib
import datetime as dt
import os
import threading
import uuid

from topk.storage import layout as output_layout
from topk.storage import tables as output_tables
from topk.core import schema
from topk.core.local_duckdb import connection
from topk.core.windows import DAY_MS
from topk.query import contract
from topk.query.contract import ApproxRankedItem, QueryError, RankedItem


def _range_sql(runs) -> tuple[str, list]:
    """WHERE clause for the decomposed runs, with the ``date`` partition
    predicate DuckDB uses to skip files."""
    clauses, params = [], []
    for length, first, stop in runs:
        clauses.append(
            "(slice_length = ? AND date BETWEEN ? AND ? "
            "AND slice_start >= ? AND slice_start < ?)")
        params += [length,
                   output_layout.day_name(first // DAY_MS),
                   output_layout.day_name((stop - 1) // DAY_MS),
                   _ts(first), _ts(stop)]
    return " OR ".join(clauses), params


def _ts(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)


def _latest_batch_first(columns: str, key: str, value: str,
                        where: str, keep: str = "TRUE") -> str:
    """CTEs ``s`` (the latest ``value`` per slice, ``key`` and source) and
    ``visible`` (the rows of ``s`` that match ``keep``: batch rows, and
    stream rows of slices no batch row covers). Coverage is decided over
    all event types: a batch run that saw no plays in a slice still owns
    it, so a stream's play rows there must not count. arg_max, not a window
    function: DuckDB 2.0.1 computes window partitions over a
    hive-partitioned read_parquet wrongly. ``{table}`` is left for the
    caller to fill in."""
    return f"""
        WITH s AS (
          SELECT source, slice_length, slice_start, {columns}
                 arg_max({value}, emitted_at) AS {value}
          FROM {{table}}
          WHERE {where}
          GROUP BY source, slice_length, slice_start, {key}
        ), batch_slices AS (
          SELECT DISTINCT slice_length, slice_start FROM s
          WHERE source = 'batch'
        ), visible AS (
          SELECT * FROM s
          WHERE ({keep}) AND (source = 'batch' OR
            (slice_length, slice_start) NOT IN (
              SELECT (slice_length, slice_start) FROM batch_slices))
        )"""


def _check_output(output: str) -> None:
    if not os.path.isdir(output):
        raise QueryError(f"output directory {output!r} does not exist")


#: Registered relations a thread's connection keeps (oldest unregistered).
_KEEP_REGISTERED = 16
_local = threading.local()


class Committed:
    """One committed snapshot of an output (the versions of one manifest
    row), opened once and reusable across many queries and threads: each
    table's Arrow dataset is opened at most once, and registered in a
    thread's DuckDB connection (``topk.core.local_duckdb``) at most once, under
    a name of its own. ``topk`` / ``topk_approx`` open one per call; a
    server keeps one per manifest ``seq``.

    ``QueryError`` when the output does not exist or cannot be read
    (``StorageError``, e.g. an output of an older topk)."""

    def __init__(self, output: str,
                 snap: output_tables.Snapshot | None = None):
        _check_output(output)
        if snap is None:
            try:
                snap = output_tables.snapshot(output)
            except output_tables.StorageError as e:
                raise QueryError(str(e)) from None
        self.output, self.snap = output, snap
        self._datasets = {}
        self._lock = threading.Lock()
        self._prefix = f"committed_{uuid.uuid4().hex[:8]}_"

    @property
    def seq(self) -> int:
        return self.snap.seq

    def has(self, table: str) -> bool:
        return table in self.snap.versions

    def dataset(self, table: str, files: list | None = None):
        """``table``'s Arrow dataset at this snapshot (``None``: never
        committed); ``files``: of the files these filters may match
        (``topk.storage.tables.dataset``; not kept)."""
        if table not in self.snap.versions:
            return None
        if files is not None:
            return output_tables.dataset(self.output, table, self.snap,
                                         files)
        with self._lock:
            if table not in self._datasets:
                self._datasets[table] = output_tables.dataset(
                    self.output, table, self.snap)
            return self._datasets[table]

    def table(self, table: str, missing: str) -> tuple:
        """``(con, name)``: this thread's connection and the name ``table``
        is registered under in it; ``QueryError(missing)`` when no commit
        wrote the table."""
        ds = self.dataset(table)
        if ds is None:
            raise QueryError(missing)
        con = connection()
        registered = getattr(_local, "registered", None)
        if registered is None:
            registered = _local.registered = collections.OrderedDict()
        name = self._prefix + table
        if name in registered:
            registered.move_to_end(name)
        else:
            con.register(name, ds)
            registered[name] = True
            while len(registered) > _KEEP_REGISTERED:
                old, _ = registered.popitem(last=False)
                con.unregister(old)
        return con, name

    def release(self) -> None:
        """Unregister this snapshot's tables from this thread's connection
        (the other threads drop theirs as newer snapshots come)."""
        registered = getattr(_local, "registered", None) or {}
        for table in list(self._datasets):
            name = self._prefix + table
            if registered.pop(name, None):
                connection().unregister(name)

    # --- The questions ----------------------------------------------------

    def topk(self, q: contract.Query) -> list[RankedItem]:
        """The exact answer of a checked ``Query`` (``topk``)."""
        where, params = _range_sql(q.runs)
        keep = "TRUE"
        if q.event_type is not None:
            keep = "event_type = ?"
            params.append(q.event_type)
        # A stream writes a slice row per pane, each with the full count so
        # far: the latest one counts.
        sql = _latest_batch_first("event_type, item_id,",
                                  "event_type, item_id", "count", where,
                                  keep) + """
            SELECT item_id, sum(count)::BIGINT AS count FROM visible
            GROUP BY item_id
            ORDER BY count DESC, item_id ASC
            LIMIT ?"""
        missing = (f"{self.output!r} has no slices table: run `topk batch` "
                   "or `topk stream` with --output pointing there")
        con, table = self.table(output_layout.SLICES, missing)
        rows = con.execute(sql.format(table=table),
                           [*params, q.k]).fetchall()
        return contract.ranked_items(rows, q,
                                     lambda: _known_types(con, table))

    def topk_approx(self, q: contract.Query) -> list[ApproxRankedItem]:
        """The approximate answer of a checked ``Query`` (``topk_approx``)."""
        missing = (f"{self.output!r} has no {q.method} sketches: run `topk "
                   f"batch --method {q.method}` with --output pointing there")
        where, params = _range_sql(q.runs)
        sql = _latest_batch_first(
            "method, event_type,", "method, event_type", "sketch",
            f"({where}) AND method = ?",
            "event_type = ?") + """
            SELECT sketch FROM visible
            ORDER BY slice_start, slice_length, source"""
        con, table = self.table(output_layout.SKETCHES, missing)

        def has_sketches() -> bool:
            [(stored,)] = con.execute(
                f"SELECT count(*) FROM {table} WHERE method = ?",
                [q.method]).fetchall()
            return stored > 0

        blobs = [r[0] for r in con.execute(
            sql.format(table=table),
            [*params, q.method, q.sketch_event_type]).fetchall()]
        return contract.approx_items(
            blobs, q, has_sketches=has_sketches, missing=missing,
            known_types=lambda: _known_types(con, table, "AND method = ?",
                                             [q.method]))

    def known_types(self) -> list[str]:
        """Every event type the slices (else the sketches) ever held."""
        for table in (output_layout.SLICES, output_layout.SKETCHES):
            if self.has(table):
                con, name = self.table(table, "")
                return sorted(set(_known_types(con, name))
                              - {schema.ALL_TYPES})
        return []


@contextlib.contextmanager
def _committed(output: str):
    """A ``Committed`` snapshot of ``output`` for one question, released
    from this thread's connection afterwards."""
    snap = Committed(output)
    try:
        yield snap
    finally:
        snap.release()


def topk(output: str, k: int, start, end, event_type: str | None = None
         ) -> list[RankedItem]:
    """The exact ``k`` most frequent items in ``[start, end)``.

    ``start``/``end``: RFC 3339 text, aware datetimes or epoch ms, aligned
    to whole minutes, at most 30 days apart. ``event_type=None`` (or
    ``'*'``) counts all types. Ties rank by ``item_id``. A slice counted by
    a batch run is read from its rows only; a stream's slice rows are read
    at their latest ``emitted_at`` (each pane carries the full count so
    far). Raises ``QueryError`` on bad arguments (``topk.query.contract``).
    """
    q = contract.exact_query(k, start, end, event_type)
    with _committed(output) as snap:
        return snap.topk(q)


def topk_approx(output: str, k: int, start, end, method: str,
                event_type: str | None = None) -> list[ApproxRankedItem]:
    """The approximate ``k`` most frequent items in ``[start, end)``, with
    bounds, from the per-slice sketches of ``method`` (``cms`` or
    ``frequent_items``).

    Arguments as for ``topk``. The latest sketch of each of the range's
    slices (the same day/hour/minute decomposition; a batch run's sketch
    wins over the stream's) are merged into one sketch, whose top ``k`` is
    returned: ``count`` is the method's estimate, the bounds always contain
    the true count of the range. Raises ``QueryError`` on bad arguments or
    when the output holds no sketches of ``method``.
    """
    q = contract.approx_query(k, start, end, method, event_type)
    with _committed(output) as snap:
        return snap.topk_approx(q)


def _known_types(con, table: str, extra_filter: str = "", params=()
                 ) -> list[str]:
    # Every type that ever occurred has rows in the (small) day slices.
    return [r[0] for r in con.execute(
        f"SELECT DISTINCT event_type FROM {table} WHERE slice_length = '1d' "
        f"{extra_filter}", list(params)).fetchall()]
