"""The BigQuery backend of ``latest``, ``series`` and ``coverage``.

The same questions as ``topk.query.latest``, ``topk.query.series`` and
``topk.query.coverage`` (DuckDB over the local output), over the BigQuery
tables of a ``Target``, with the same arguments checks, the same result
dataclasses and the same errors (``QueryError``; ``NotFound`` when no pane
answers). The rows read follow the same rules (``topk.query.contract``,
``topk.query.latest``):

- ``latest``: the newest window of the spec, method and event type (or the
  one at ``window_start``); batch rows win over stream rows of that window;
  then the latest ``emitted_at``, then the larger ``pane_index``, then the
  ``pane_timing``, ``window_total`` and ``window_end`` that sort last;
  identical rows of one pane (an ``insertAll`` retry) count once;
- ``series``: per slice, source and event type the item's latest row (by
  ``emitted_at``) counts; a slice a batch run wrote (any item, any type) is
  read from the batch rows only;
- ``coverage``: window specs, methods, event types and time spans from
  ``GROUP BY``s over ``ranked_windows``, ``slices`` and ``sketches``;
  ``seq`` is ``None`` (BigQuery has no manifest). A table that does not
  exist yet counts as empty.

Every user value travels as a query parameter; table names are validated
identifiers (``Target``). Only standard SQL the BigQuery emulator also
runs: ``QUALIFY ROW_NUMBER()`` (as ``topk.query.bigquery``), ``CASE``,
``MIN``/``MAX``/``COUNT``/``SUM`` with ``GROUP BY``; timestamps come back
as ``datetime`` and are turned into epoch ms here (no ``UNIX_MILLIS``,
``ARRAY_AGG(DISTINCT ... ORDER BY)`` or ``TIMESTAMP_ADD`` by a computed
interval).
"""
import datetime as dt

from topk.connectors.bigquery.client import BigQueryError, Target, run_query
from topk.core import schema
from topk.query import contract
from topk.query.bigquery import _known_types
from topk.query.contract import ApproxRankedItem, QueryError
from topk.query.coverage import Coverage, SpecCoverage, _spec_order
from topk.query.latest import LatestPane, NotFound, check_latest
from topk.query.series import STEPS, Series, check_series
from topk.storage import layout as output_layout

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_LENGTH_MS = {"1m": schema.MINUTE_MS, "1h": 60 * schema.MINUTE_MS,
              "1d": schema.DAY_MS}


def _ms(value) -> int | None:
    """A BigQuery ``TIMESTAMP`` (``datetime``) -> epoch ms."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return (value - _EPOCH) // dt.timedelta(milliseconds=1)


def _query(client, target: Target, sql: str, params, missing: str):
    """``run_query``; ``None`` when the table is missing (a 404 raises
    ``BigQueryError(missing)``), other problems raise ``BigQueryError``."""
    try:
        return run_query(client, target, sql, params, missing=missing)
    except BigQueryError as e:
        if str(e) == missing:
            return None
        raise


# --- latest ------------------------------------------------------------------

def latest_sql(table_id: str, spec, method: str, event_type: str,
               start_ms: int | None) -> tuple[str, list]:
    """The statement returning the rows of the contract's pane (one spec,
    method and event type), each with the pane's fields, ranked."""
    length, _, slide = spec.name.partition("/")
    where = ("window_length = @length AND method = @method "
             "AND event_type = @event_type")
    params = [("length", "STRING", length), ("method", "STRING", method),
              ("event_type", "STRING", event_type)]
    if slide:
        where += " AND slide = @slide"
        params.append(("slide", "STRING", slide))
    else:
        where += " AND slide IS NULL"
    if start_ms is not None:
        where += " AND window_start = @window_start"
        params.append(("window_start", "TIMESTAMP", start_ms))
    sql = f"""
        WITH c AS (
          SELECT * FROM `{table_id}` WHERE {where}
        ), w AS (
          SELECT MAX(window_start) AS window_start FROM c
        ), pane AS (
          SELECT c.source, c.emitted_at, c.pane_index, c.pane_timing,
                 c.window_total, c.window_end, c.window_start
          FROM c JOIN w ON c.window_start = w.window_start
          ORDER BY CASE WHEN c.source = 'batch' THEN 1 ELSE 0 END DESC,
                   c.emitted_at DESC, c.pane_index DESC, c.pane_timing DESC,
                   c.window_total DESC, c.window_end DESC
          LIMIT 1
        )
        SELECT DISTINCT c.window_start AS window_start,
               c.window_end AS window_end, c.pane_timing AS pane_timing,
               c.pane_index AS pane_index, c.source AS source,
               c.emitted_at AS emitted_at, c.window_total AS window_total,
               c.rank AS rank, c.item_id AS item_id, c.count AS count,
               c.lower_bound AS lower_bound, c.upper_bound AS upper_bound,
               c.guaranteed AS guaranteed,
               c.input_watermark AS input_watermark
        FROM c JOIN pane
          ON c.window_start = pane.window_start
         AND c.source = pane.source AND c.emitted_at = pane.emitted_at
         AND c.pane_index = pane.pane_index
         AND c.pane_timing = pane.pane_timing
         AND c.window_total = pane.window_total
         AND c.window_end = pane.window_end
        ORDER BY rank, item_id
        LIMIT @k"""
    return sql, params


def latest(client, target: Target, spec: str, k: int = 10,
           event_type: str | None = None,
           method: str = output_layout.EXACT, window_start=None
           ) -> LatestPane:
    """``topk.query.latest.latest`` over the BigQuery ``ranked_windows``
    table of ``target``. Raises ``QueryError`` on bad arguments,
    ``NotFound`` when no pane answers (or the table does not exist) and
    ``BigQueryError`` on BigQuery problems."""
    k, parsed, event_type, method, start_ms = check_latest(
        spec, k, event_type, method, window_start)
    table_id = target.table_id(output_layout.RANKED_WINDOWS)
    nothing = (f"no {method} pane of window {parsed.name} for event type "
               f"{event_type!r}" + ("" if start_ms is None else
                                    " starting at that window_start")
               + f" in BigQuery table {table_id}")
    sql, params = latest_sql(table_id, parsed, method, event_type, start_ms)
    rows = _query(client, target, sql, params + [("k", "INT64", k)],
                  missing=f"BigQuery table {table_id} does not exist")
    if not rows:
        raise NotFound(nothing)
    first = rows[0]
    return LatestPane(
        parsed.name, method, event_type, _ms(first["window_start"]),
        _ms(first["window_end"]), first["pane_timing"],
        int(first["pane_index"]), first["source"], _ms(first["emitted_at"]),
        int(first["window_total"]),
        [ApproxRankedItem(int(r["rank"]), r["item_id"], int(r["count"]),
                          int(r["lower_bound"]), int(r["upper_bound"]),
                          bool(r["guaranteed"])) for r in rows],
        _ms(first["input_watermark"]))


# --- series ------------------------------------------------------------------

def series_sql(table_id: str, item_id: str, start_ms: int, end_ms: int,
               step: str, event_type: str | None) -> tuple[str, list]:
    """The statement of the item's visible count per slice of ``step``."""
    where = ("slice_start >= @range_start AND slice_start < @range_end "
             "AND slice_length = @step")
    params = [("range_start", "TIMESTAMP", start_ms),
              ("range_end", "TIMESTAMP", end_ms), ("step", "STRING", step),
              ("item_id", "STRING", item_id)]
    item_filter = "item_id = @item_id"
    if event_type is not None:
        item_filter += " AND event_type = @event_type"
        params.append(("event_type", "STRING", event_type))
    sql = f"""
        WITH s AS (
          SELECT source, slice_start, event_type, count FROM `{table_id}`
          WHERE {where} AND {item_filter}
          QUALIFY ROW_NUMBER() OVER (
            PARTITION BY source, slice_start, event_type
            ORDER BY emitted_at DESC) = 1
        ), batch_slices AS (
          SELECT DISTINCT slice_start FROM `{table_id}`
          WHERE {where} AND source = 'batch'
        )
        SELECT s.slice_start AS slice_start, SUM(s.count) AS count
        FROM s LEFT JOIN batch_slices b ON b.slice_start = s.slice_start
        WHERE s.source = 'batch' OR b.slice_start IS NULL
        GROUP BY s.slice_start"""
    return sql, params


def series(client, target: Target, item_id: str, start, end,
           step: str = "1h", event_type: str | None = None) -> Series:
    """``topk.query.series.series`` over the BigQuery ``slices`` table of
    ``target``. Raises ``QueryError`` on bad arguments, a missing slices
    table or an unknown event type, ``BigQueryError`` on BigQuery
    problems."""
    item_id, start_ms, end_ms, step_ms = check_series(item_id, start, end,
                                                      step)
    event_type = contract.check_event_type(event_type)
    table_id = target.table_id(output_layout.SLICES)
    missing = (f"BigQuery table {table_id} does not exist: run `topk batch` "
               "or `topk stream` with --sink bigquery and this --bq-dataset")
    sql, params = series_sql(table_id, item_id, start_ms, end_ms, step,
                             event_type)
    rows = _query(client, target, sql, params, missing)
    if rows is None:
        raise QueryError(missing)
    counts = {_ms(r["slice_start"]): int(r["count"]) for r in rows}
    if not counts and event_type is not None:
        contract.check_known_event_type(
            event_type, _known_types(client, target, table_id, missing))
    return Series(item_id, step, event_type or schema.ALL_TYPES, start_ms,
                  end_ms, [(t, counts.get(t, 0))
                           for t in range(start_ms, end_ms, STEPS[step])])


# --- coverage ----------------------------------------------------------------

_STREAM_AT = ("MAX(CASE WHEN source = 'stream' THEN emitted_at END) "
              "AS stream_at")


def coverage(client, target: Target) -> Coverage:
    """``topk.query.coverage.coverage`` over the BigQuery tables of
    ``target`` (``seq`` ``None``). Raises ``BigQueryError`` on BigQuery
    problems; a table not created yet counts as empty."""
    specs, methods, types, stream_at = [], set(), set(), []
    watermarks = []

    ranked_id = target.table_id(output_layout.RANKED_WINDOWS)
    rows = _query(client, target, f"""
        SELECT window_length, slide, method, event_type,
               MIN(window_start) AS first, MAX(window_end) AS last,
               MAX(emitted_at) AS newest, {_STREAM_AT},
               MAX(input_watermark) AS watermark
        FROM `{ranked_id}`
        GROUP BY window_length, slide, method, event_type""", [],
                  missing=f"no table {ranked_id}")
    by_spec = {}
    for r in rows or []:
        name = r["window_length"] + (f"/{r['slide']}" if r["slide"] else "")
        spec = by_spec.setdefault(name, {
            "methods": set(), "types": set(), "first": [], "last": [],
            "newest": []})
        spec["methods"].add(r["method"])
        spec["types"].add(r["event_type"])
        spec["first"].append(_ms(r["first"]))
        spec["last"].append(_ms(r["last"]))
        spec["newest"].append(_ms(r["newest"]))
        stream_at.append(_ms(r["stream_at"]))
        watermarks.append(_ms(r["watermark"]))
    for name, spec in by_spec.items():
        specs.append(SpecCoverage(
            name, sorted(spec["methods"]), sorted(spec["types"]),
            min(spec["first"]), max(spec["last"]), max(spec["newest"])))
    specs.sort(key=lambda s: (_spec_order(s.spec), s.spec))

    slices, newest_minute = None, None
    slices_id = target.table_id(output_layout.SLICES)
    rows = _query(client, target, f"""
        SELECT slice_length, MIN(slice_start) AS first,
               MAX(slice_start) AS last, {_STREAM_AT}, COUNT(*) AS n
        FROM `{slices_id}` GROUP BY slice_length""", [],
                  missing=f"no table {slices_id}")
    rows = [r for r in rows or [] if r["n"]]
    if rows:
        slices = (min(_ms(r["first"]) for r in rows),
                  max(_ms(r["last"]) + _LENGTH_MS[r["slice_length"]]
                      for r in rows))
        minutes = [_ms(r["last"]) for r in rows if r["slice_length"] == "1m"]
        newest_minute = max(minutes) if minutes else None
        methods.add(output_layout.EXACT)
        types.update(_known_types(client, target, slices_id, ""))
        stream_at += [_ms(r["stream_at"]) for r in rows]

    sketches_id = target.table_id(output_layout.SKETCHES)
    rows = _query(client, target, f"""
        SELECT method, event_type, {_STREAM_AT},
               MAX(CASE WHEN slice_length = '1m' THEN slice_start END)
                 AS minute
        FROM `{sketches_id}` GROUP BY method, event_type""", [],
                  missing=f"no table {sketches_id}")
    for r in rows or []:
        methods.add(r["method"])
        types.add(r["event_type"])
        stream_at.append(_ms(r["stream_at"]))
        if r["minute"] is not None and slices is None:
            newest_minute = max(newest_minute or 0, _ms(r["minute"]))
    types.discard(schema.ALL_TYPES)
    stream_at = [t for t in stream_at if t is not None]
    watermarks = [t for t in watermarks if t is not None]
    return Coverage(None, specs, slices, sorted(methods), sorted(types),
                    newest_minute, max(stream_at) if stream_at else None,
                    max(watermarks) if watermarks else None)
