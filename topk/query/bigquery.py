"""The BigQuery query backend: ``topk(k, start, end)`` in BigQuery SQL.

The same answers as the DuckDB backend (``topk.query``) over the same data:
arguments are checked and answers shaped by ``topk.query.contract``; this
module only turns a checked ``Query`` into BigQuery SQL. The range is
decomposed into the same fewest aligned day/hour/minute slices, exact
answers sum the ``slices`` rows of those slices, approximate answers merge
their ``sketches`` rows. The SQL is parameterised: user input (times, event
type, k, method) only ever travels as query parameters; table names are
validated identifiers (``bigquery_client.Target``).

The BigQuery tables are append-only (``topk.sinks.bigquery``), so the query
picks, per slice, the rows a reader must see (the contract's rule, as in
the DuckDB backend):

1. per ``(slice_length, slice_start, event_type, item_id, source)`` (sketches:
   ``method`` instead of ``item_id``) the row with the latest ``emitted_at``:
   stream panes accumulate (each pane holds the full count so far) and a
   rerun or a replay re-appends rows, so the latest row is the answer and
   older copies never add up;
2. where a batch run wrote a slice, its rows win over the stream's.

Partition pruning: every statement also filters ``slice_start`` on the
whole range, so BigQuery reads only the day partitions of the range.
"""
from topk.connectors.bigquery.client import Target, run_query
from topk.storage.layout import SKETCHES, SLICES
from topk.query import contract
from topk.query.contract import ApproxRankedItem, RankedItem


def _slices_filter(q: contract.Query) -> tuple[str, list]:
    """WHERE clause of the decomposition's runs, plus the whole-range
    predicate on the partitioning column."""
    clauses = []
    params = [("range_start", "TIMESTAMP", q.start_ms),
              ("range_end", "TIMESTAMP", q.end_ms)]
    for i, (length, first, stop) in enumerate(q.runs):
        clauses.append(f"(slice_length = @length_{i} AND slice_start >= "
                       f"@from_{i} AND slice_start < @to_{i})")
        params += [(f"length_{i}", "STRING", length),
                   (f"from_{i}", "TIMESTAMP", first),
                   (f"to_{i}", "TIMESTAMP", stop)]
    where = ("slice_start >= @range_start AND slice_start < @range_end "
             f"AND ({' OR '.join(clauses)})")
    return where, params


def _latest_batch_first(table_id: str, columns: str, key: str,
                        where: str, keep: str = "TRUE") -> str:
    """CTEs ``s`` (the latest row per key and source) and ``visible`` (the
    rows of ``s`` matching ``keep``: batch rows, and stream rows of slices
    no batch row covers). Coverage is decided over all event types, as in
    the DuckDB backend: a batch run that saw no plays in a slice still owns
    it."""
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
          WHERE ({keep}) AND (s.source = 'batch' OR b.slice_start IS NULL)
        )"""


def topk_sql(table_id: str, q: contract.Query) -> tuple[str, list]:
    """The exact top-``k`` statement over the ``slices`` table."""
    where, params = _slices_filter(q)
    keep = "TRUE"
    if q.event_type is not None:
        keep = "s.event_type = @event_type"
        params.append(("event_type", "STRING", q.event_type))
    sql = _latest_batch_first(
        table_id, "slice_length, slice_start, event_type, item_id, count",
        "event_type, item_id", where, keep) + """
        SELECT item_id, SUM(count) AS count FROM visible
        GROUP BY item_id
        ORDER BY count DESC, item_id ASC
        LIMIT @k"""
    return sql, params + [("k", "INT64", q.k)]


def sketches_sql(table_id: str, q: contract.Query) -> tuple[str, list]:
    """The statement selecting the sketches of the range, in the DuckDB
    backend's merge order."""
    where, params = _slices_filter(q)
    where += " AND method = @method"
    params += [("method", "STRING", q.method),
               ("event_type", "STRING", q.sketch_event_type)]
    sql = _latest_batch_first(
        table_id, "slice_length, slice_start, method, event_type, sketch",
        "method, event_type", where, "s.event_type = @event_type") + """
        SELECT sketch FROM visible
        ORDER BY slice_start, slice_length, source"""
    return sql, params


def topk(client, target: Target, k: int, start, end,
         event_type: str | None = None) -> list[RankedItem]:
    """``topk.query.topk`` over the BigQuery ``slices`` table of
    ``target``; raises ``QueryError`` on bad arguments and
    ``BigQueryError`` on BigQuery problems."""
    q = contract.exact_query(k, start, end, event_type)
    table_id = target.table_id(SLICES)
    missing = _missing(table_id, "exact")
    sql, params = topk_sql(table_id, q)
    rows = run_query(client, target, sql, params, missing=missing)
    return contract.ranked_items(
        ((row["item_id"], row["count"]) for row in rows), q,
        lambda: _known_types(client, target, table_id, missing))


def topk_approx(client, target: Target, k: int, start, end, method: str,
                event_type: str | None = None) -> list[ApproxRankedItem]:
    """``topk.query.topk_approx`` over the BigQuery ``sketches`` table."""
    q = contract.approx_query(k, start, end, method, event_type)
    table_id = target.table_id(SKETCHES)
    missing = _missing(table_id, q.method)
    sql, params = sketches_sql(table_id, q)
    blobs = [row["sketch"] for row in run_query(client, target, sql, params,
                                                missing=missing)]

    def has_sketches() -> bool:
        [stored] = run_query(
            client, target, f"SELECT COUNT(*) AS n FROM `{table_id}` WHERE "
            "method = @method", [("method", "STRING", q.method)], missing)
        return stored["n"] > 0

    return contract.approx_items(
        blobs, q, has_sketches=has_sketches, missing=missing,
        known_types=lambda: _known_types(client, target, table_id, missing,
                                         q.method))


def _missing(table_id: str, method: str) -> str:
    flag = "" if method == "exact" else f" --method {method}"
    return (f"BigQuery table {table_id} has no {method} "
            f"{SLICES if method == 'exact' else SKETCHES}: run `topk "
            f"batch{flag} --sink bigquery` with this --bq-dataset first")


def _known_types(client, target: Target, table_id: str, missing: str,
                 method: str | None = None) -> list[str]:
    # Every type that ever occurred has rows in the (small) day slices.
    sql = (f"SELECT DISTINCT event_type FROM `{table_id}` WHERE "
           "slice_length = '1d'")
    params = []
    if method is not None:
        sql += " AND method = @method"
        params.append(("method", "STRING", method))
    return [row["event_type"] for row in run_query(client, target, sql,
                                                   params, missing)]
