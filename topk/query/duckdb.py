"""DuckDB backend of the query layer: ``topk(k, start, end)`` over the
Parquet slices or sketches table.

The range is decomposed into the fewest aligned day/hour/minute slices
(``windows.decompose_range``). ``topk`` answers exactly with one DuckDB
statement over the Hive-partitioned Parquet ``slices`` table; ``topk_approx``
reads the per-slice sketches of one method for the same slices from the
``sketches`` table and merges them (``sketches.merge_all``), so its counts
come with bounds. The top-K of a range is not the union of the top-Ks of its
parts, so both merge mergeable slices rather than ranked windows. Where both
the stream and a batch reprocessing wrote a slice, the batch rows win.
"""
import datetime as dt
import os

import duckdb

from topk.storage import layout as output_layout
from topk.core import schema
from topk.approx import sketches
from topk.core.local_duckdb import connection
from topk.core.windows import DAY_MS, decompose_range
from topk.query.contract import (ApproxRankedItem, QueryError, RankedItem,
                                 check_query, merged_top_k)


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


def topk(output: str, k: int, start, end, event_type: str | None = None
         ) -> list[RankedItem]:
    """The exact ``k`` most frequent items in ``[start, end)``.

    ``start``/``end``: RFC 3339 text, aware datetimes or epoch ms, aligned
    to whole minutes, at most 30 days apart. ``event_type=None`` counts all
    types. Ties rank by ``item_id``. A slice counted by a batch run is read
    from its rows only; a stream's slice rows are read at their latest
    ``emitted_at`` (each pane carries the full count so far). Raises
    ``QueryError`` on bad arguments.
    """
    start_ms, end_ms = check_query(k, start, end)
    if event_type == schema.ALL_TYPES:
        event_type = None
    slices_dir = output_layout.table_dir(output, output_layout.SLICES)
    if not os.path.isdir(output):
        raise QueryError(f"output directory {output!r} does not exist")
    if not os.path.isdir(slices_dir):
        raise QueryError(f"{output!r} has no slices table: run `topk batch` "
                         "or `topk stream` with --output pointing there")
    where, params = _range_sql(decompose_range(start_ms, end_ms))
    type_filter = ""
    if event_type is not None:
        type_filter = "AND event_type = ?"
        params.append(event_type)
    sql = f"""
        WITH s AS (
          -- A stream writes a slice row per pane, each with the full count
          -- so far: the latest one counts. (arg_max, not a window function:
          -- DuckDB 2.0.1 computes window partitions over a hive-partitioned
          -- read_parquet wrongly.)
          SELECT source, slice_length, slice_start, item_id,
                 arg_max(count, emitted_at) AS count
          FROM read_parquet(?, hive_partitioning = true)
          WHERE ({where}) {type_filter}
          GROUP BY source, slice_length, slice_start, event_type, item_id
        ), batch_slices AS (
          SELECT DISTINCT slice_length, slice_start FROM s
          WHERE source = 'batch'
        )
        SELECT item_id, sum(count)::BIGINT AS count FROM s
        WHERE source = 'batch' OR (slice_length, slice_start) NOT IN (
          SELECT (slice_length, slice_start) FROM batch_slices)
        GROUP BY item_id
        ORDER BY count DESC, item_id ASC
        LIMIT ?"""
    glob = output_layout.table_glob(output, output_layout.SLICES)
    rows = connection().execute(sql, [glob, *params, k]).fetchall()
    if not rows and event_type is not None:
        _check_event_type(glob, event_type)
    return [RankedItem(i + 1, item, count) for i, (item, count) in
            enumerate(rows)]


def topk_approx(output: str, k: int, start, end, method: str,
                event_type: str | None = None) -> list[ApproxRankedItem]:
    """The approximate ``k`` most frequent items in ``[start, end)``, with
    bounds, from the per-slice sketches of ``method`` (``cms`` or
    ``frequent_items``).

    Arguments as for ``topk``. The sketches of the range's slices (the same
    day/hour/minute decomposition) are merged into one sketch, whose top
    ``k`` is returned: ``count`` is the method's estimate, the bounds always
    contain the true count of the range. Raises ``QueryError`` on bad
    arguments or when the output holds no sketches of ``method``.
    """
    if method not in sketches.METHODS:
        raise QueryError(f"unknown approximate method {method!r}; choose "
                         f"from {', '.join(sketches.METHODS)}")
    start_ms, end_ms = check_query(k, start, end)
    event_type = schema.ALL_TYPES if event_type is None else event_type
    if not os.path.isdir(output):
        raise QueryError(f"output directory {output!r} does not exist")
    missing = QueryError(f"{output!r} has no {method} sketches: run `topk "
                         f"batch --method {method}` with --output pointing "
                         "there")
    if not os.path.isdir(output_layout.table_dir(output,
                                                 output_layout.SKETCHES)):
        raise missing
    where, params = _range_sql(decompose_range(start_ms, end_ms))
    sql = f"""
        WITH s AS (
          SELECT slice_length, slice_start, sketch, source
          FROM read_parquet(?, hive_partitioning = true)
          WHERE ({where}) AND method = ? AND event_type = ?
        ), batch_slices AS (
          SELECT DISTINCT slice_length, slice_start FROM s
          WHERE source = 'batch'
        )
        SELECT sketch FROM s
        WHERE source = 'batch' OR (slice_length, slice_start) NOT IN (
          SELECT (slice_length, slice_start) FROM batch_slices)
        ORDER BY slice_start, slice_length, source"""
    glob = output_layout.table_glob(output, output_layout.SKETCHES)
    con = connection()
    try:
        blobs = [r[0] for r in con.execute(
            sql, [glob, *params, method, event_type]).fetchall()]
        if not blobs:
            [(stored,)] = con.execute(
                "SELECT count(*) FROM read_parquet(?, hive_partitioning = "
                "true) WHERE method = ?", [glob, method]).fetchall()
    except duckdb.IOException:  # a sketches directory without files
        raise missing from None
    if not blobs:
        if not stored:
            raise missing
        if event_type != schema.ALL_TYPES:
            _check_event_type(glob, event_type, "AND method = ?", [method])
        return []
    return merged_top_k(blobs, k, method)


def _check_event_type(glob: str, event_type: str, extra_filter: str = "",
                      params=()) -> None:
    # Every type that ever occurred has rows in the (small) day slices.
    known = [r[0] for r in connection().execute(
        "SELECT DISTINCT event_type FROM read_parquet(?, hive_partitioning "
        f"= true) WHERE slice_length = '1d' AND event_type <> '*' "
        f"{extra_filter} ORDER BY 1", [glob, *params]).fetchall()]
    if event_type not in known:
        raise QueryError(f"unknown event type {event_type!r}; known: "
                         f"{', '.join(known) or 'none'}")
