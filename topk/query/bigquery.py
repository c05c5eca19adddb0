"""The BigQuery query backend: ``topk(k, start, end)`` in BigQuery SQL.

The same answers as the DuckDB backend (``topk.query``) over the same data:
the range is decomposed into the same fewest aligned day/hour/minute slices
(``windows.decompose_range``), exact answers sum the ``slices`` rows of
those slices, approximate answers merge their ``sketches`` rows. The SQL is
parameterised: user input (times, event type, k, method) only ever travels
as query parameters; table names are validated identifiers
(``bigquery_client.Target``).

The BigQuery tables are append-only (``topk.sinks.bigquery``), so the query
picks, per slice, the rows a reader must see:

1. per ``(slice_length, slice_start, event_type, item_id, source)`` (sketches:
   ``method`` instead of ``item_id``) the row with the latest ``emitted_at``:
   stream panes accumulate (each pane holds the full count so far) and a
   rerun or a replay re-appends rows, so the latest row is the answer and
   older copies never add up;
2. where a batch run wrote a slice, its rows win over the stream's (the
   same rule as ``topk.query``).

Partition pruning: every statement also filters ``slice_start`` on the
whole range, so BigQuery reads only the day partitions of the range.
"""
from topk.core import schema
from topk.approx import sketches
from topk.connectors.bigquery.client import Target, run_query
from topk.storage.layout import SKETCHES, SLICES
from topk.query.contract import (ApproxRankedItem, QueryError, RankedItem,
                                 check_query, merged_top_k)
from topk.core.windows import decompose_range


def _slices_filter(start_ms: int, end_ms: int) -> tuple[str, list]:
    """WHERE clause of the decomposition's runs, plus the whole-range
    predicate on the partitioning column."""
    clauses = []
    params = [("range_start", "TIMESTAMP", start_ms),
              ("range_end", "TIMESTAMP", end_ms)]
    for i, (length, first, stop) in enumerate(decompose_range(start_ms,
                                                              end_ms)):
        clauses.append(f"(slice_length = @length_{i} AND slice_start >= "
                       f"@from_{i} AND slice_start < @to_{i})")
        params += [(f"length_{i}", "STRING", length),
                   (f"from_{i}", "TIMESTAMP", first),
                   (f"to_{i}", "TIMESTAMP", stop)]
    where = ("slice_start >= @range_start AND slice_start < @range_end "
             f"AND ({' OR '.join(clauses)})")
    return where, params


def _latest_batch_first(table_id: str, columns: str, key: str,
                        where: str) -> str:
    """CTEs ``s`` (the latest row per key and source) and ``visible`` (batch
    rows, and stream rows of slices no batch row covers)."""
    return f"""
        WITH s AS (
          SELECT {columns}, source FROM `{table_id}`
          WHERE {where}
          QUALIFY ROW_NUMBER() OVER (
            PARTITION BY slice_length, slice_start, {key}, source
            ORDER BY emitted_at DESC) = 1
        ), batch_slices AS (
          SELECT DISTINCT slice_length, slice_start FROM s
          WHERE source = 'batch'
        ), visible AS (
          SELECT s.* FROM s LEFT JOIN batch_slices b
            ON b.slice_length = s.slice_length
           AND b.slice_start = s.slice_start
          WHERE s.source = 'batch' OR b.slice_start IS NULL
        )"""


def topk_sql(table_id: str, start_ms: int, end_ms: int,
             event_type: str | None, k: int) -> tuple[str, list]:
    """The exact top-``k`` statement over the ``slices`` table."""
    where, params = _slices_filter(start_ms, end_ms)
    if event_type is not None:
        where += " AND event_type = @event_type"
        params.append(("event_type", "STRING", event_type))
    sql = _latest_batch_first(
        table_id, "slice_length, slice_start, event_type, item_id, count",
        "event_type, item_id", where) + """
        SELECT item_id, SUM(count) AS count FROM visible
        GROUP BY item_id
        ORDER BY count DESC, item_id ASC
        LIMIT @k"""
    return sql, params + [("k", "INT64", k)]


def sketches_sql(table_id: str, start_ms: int, end_ms: int, method: str,
                 event_type: str) -> tuple[str, list]:
    """The statement selecting the sketches of the range, in the DuckDB
    backend's merge order."""
    where, params = _slices_filter(start_ms, end_ms)
    where += " AND method = @method AND event_type = @event_type"
    params += [("method", "STRING", method),
               ("event_type", "STRING", event_type)]
    sql = _latest_batch_first(
        table_id, "slice_length, slice_start, method, event_type, sketch",
        "method, event_type", where) + """
        SELECT sketch FROM visible
        ORDER BY slice_start, slice_length, source"""
    return sql, params


def topk(client, target: Target, k: int, start, end,
         event_type: str | None = None) -> list[RankedItem]:
    """``topk.query.topk`` over the BigQuery ``slices`` table of
    ``target``; raises ``QueryError`` on bad arguments and
    ``BigQueryError`` on BigQuery problems."""
    start_ms, end_ms = check_query(k, start, end)
    if event_type == schema.ALL_TYPES:
        event_type = None
    table_id = target.table_id(SLICES)
    sql, params = topk_sql(table_id, start_ms, end_ms, event_type, k)
    rows = run_query(client, target, sql, params, missing=_missing(
        table_id, "exact"))
    if not rows and event_type is not None:
        _check_event_type(client, target, table_id, event_type)
    return [RankedItem(i + 1, row["item_id"], row["count"])
            for i, row in enumerate(rows)]


def topk_approx(client, target: Target, k: int, start, end, method: str,
                event_type: str | None = None) -> list[ApproxRankedItem]:
    """``topk.query.topk_approx`` over the BigQuery ``sketches`` table."""
    if method not in sketches.METHODS:
        raise QueryError(f"unknown approximate method {method!r}; choose "
                         f"from {', '.join(sketches.METHODS)}")
    start_ms, end_ms = check_query(k, start, end)
    event_type = schema.ALL_TYPES if event_type is None else event_type
    table_id = target.table_id(SKETCHES)
    missing = _missing(table_id, method)
    sql, params = sketches_sql(table_id, start_ms, end_ms, method,
                               event_type)
    blobs = [row["sketch"] for row in run_query(client, target, sql, params,
                                                missing=missing)]
    if not blobs:
        [stored] = run_query(
            client, target, f"SELECT COUNT(*) AS n FROM `{table_id}` WHERE "
            "method = @method", [("method", "STRING", method)], missing)
        if not stored["n"]:
            raise QueryError(missing)
        if event_type != schema.ALL_TYPES:
            _check_event_type(client, target, table_id, event_type, method)
        return []
    return merged_top_k(blobs, k, method)


def _missing(table_id: str, method: str) -> str:
    flag = "" if method == "exact" else f" --method {method}"
    return (f"BigQuery table {table_id} has no {method} "
            f"{'slices' if method == 'exact' else 'sketches'}: run `topk "
            f"batch{flag} --sink bigquery` with this --bq-dataset first")


def _check_event_type(client, target: Target, table_id: str, event_type: str,
                      method: str | None = None) -> None:
    # Every type that ever occurred has rows in the (small) day slices.
    sql = (f"SELECT DISTINCT event_type FROM `{table_id}` WHERE "
           "slice_length = '1d' AND event_type <> '*'")
    params = []
    if method is not None:
        sql += " AND method = @method"
        params.append(("method", "STRING", method))
    known = sorted(row["event_type"] for row in run_query(
        client, target, sql + " ORDER BY 1", params, _missing(
            table_id, method or "exact")))
    if event_type not in known:
        raise QueryError(f"unknown event type {event_type!r}; known: "
                         f"{', '.join(known) or 'none'}")
