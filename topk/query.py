"""The query layer: exact ``topk(k, start, end)`` over the slices table.

The range is decomposed into the fewest aligned day/hour/minute slices
(``windows.decompose_range``) and answered by one DuckDB statement over the
Hive-partitioned Parquet ``slices`` table. The top-K of a range is not the
union of the top-Ks of its parts, so this sums exact slice counts rather
than merging ranked windows. Where both the stream and a batch
reprocessing wrote a slice, the batch rows win.
"""
import dataclasses
import datetime as dt
import os

from topk import output_layout, schema
from topk.local_duckdb import connection
from topk.windows import (DAY_MS, decompose_range, format_time, parse_time,
                          validate_range)


class QueryError(ValueError):
    """A query that cannot be answered, with a one-line reason."""


@dataclasses.dataclass(frozen=True)
class RankedItem:
    rank: int
    item_id: str
    count: int


def to_ms(t) -> int:
    """RFC 3339 string, aware ``datetime`` or epoch ms -> epoch ms."""
    if isinstance(t, bool):
        raise QueryError(f"bad time {t!r}")
    if isinstance(t, int):
        return t
    if isinstance(t, dt.datetime):
        if t.tzinfo is None:
            raise QueryError("datetime must be timezone-aware (UTC)")
        return int(t.timestamp() * 1000)
    if isinstance(t, str):
        try:
            return parse_time(t)
        except ValueError as e:
            raise QueryError(str(e)) from None
    raise QueryError(f"bad time {t!r}: expected RFC 3339 text")


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
    types. Ties rank by ``item_id``. Raises ``QueryError`` on bad arguments.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise QueryError(f"k must be a positive integer, got {k!r}")
    start_ms, end_ms = to_ms(start), to_ms(end)
    try:
        validate_range(start_ms, end_ms)
    except ValueError as e:
        raise QueryError(f"{e} ({format_time(start_ms)} .. "
                         f"{format_time(end_ms)})") from None
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
          SELECT slice_length, slice_start, item_id, count, source
          FROM read_parquet(?, hive_partitioning = true)
          WHERE ({where}) {type_filter}
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


def _check_event_type(glob: str, event_type: str) -> None:
    # Every type that ever occurred has rows in the (small) day slices.
    known = [r[0] for r in connection().execute(
        "SELECT DISTINCT event_type FROM read_parquet(?, hive_partitioning "
        "= true) WHERE slice_length = '1d' ORDER BY 1", [glob]).fetchall()]
    if event_type not in known:
        raise QueryError(f"unknown event type {event_type!r}; known: "
                         f"{', '.join(known) or 'none'}")
