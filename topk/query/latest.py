"""The latest pane of a window spec, from the ``ranked_windows`` table.

``latest(output, "1h/1m")`` answers "what is the top K right now": the
latest window of the spec (largest ``window_start``) holding rows of the
method and event type, at its latest pane. The rules of the query contract
(``topk.query.contract``) hold here too:

1. where a batch run wrote the window, its rows win over the stream's;
2. among the panes of the chosen source, the latest ``emitted_at`` counts
   (stream panes accumulate; reruns re-append); ties go to the larger
   ``pane_index``, then to the ``pane_timing``, ``window_total`` and
   ``window_end`` that sort last, so the answer is deterministic;
3. identical rows of one pane (an ``insertAll`` retry) count once.

``window_start=`` asks for one window instead of the latest. Every value
travels as a query parameter or a pyarrow filter value; the spec is parsed
(``WindowSpec.parse``) and mapped to its partition value (``1h/1m`` ->
``1h_1m``). Only the newest day partition holding the spec's rows is read
(pyarrow skips the other files by partition and Delta file statistics),
then the pane is picked in DuckDB.
"""
import dataclasses
import datetime
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from topk.core import schema
from topk.core.local_duckdb import connection
from topk.core.schema import DAY_MS
from topk.core.windows import SUPPORTED_WINDOWS, WindowSpec
from topk.query import contract
from topk.query.contract import ApproxRankedItem, QueryError
from topk.query.duckdb import Committed, _committed, _ts
from topk.storage import layout as output_layout
from topk.storage import tables as output_tables

#: Methods whose ranked windows a pipeline writes.
METHODS = (output_layout.EXACT, "cms", "frequent_items")


class NotFound(QueryError):
    """The output holds nothing that answers the question (HTTP 404)."""


@dataclasses.dataclass(frozen=True)
class LatestPane:
    """One pane of one window: its rows ranked (``rank``, then
    ``item_id``). Times are epoch ms; ``input_watermark`` is a stream
    pane's (``ranked_windows``), ``None`` for a batch pane."""
    spec: str
    method: str
    event_type: str
    window_start: int
    window_end: int
    pane_timing: str
    pane_index: int
    source: str
    emitted_at: int
    window_total: int
    rows: list
    input_watermark: int | None = None


def check_spec(spec) -> WindowSpec:
    """A supported window spec in either spelling (``1h/1m`` or its
    partition value ``1h_1m``)."""
    if not isinstance(spec, str) or not 0 < len(spec) <= 32:
        raise QueryError(f"unknown window spec {str(spec)[:40]!r}; choose "
                         f"from {', '.join(SUPPORTED_WINDOWS)}")
    try:
        parsed = WindowSpec.parse(spec.replace("_", "/"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.name not in SUPPORTED_WINDOWS:
        raise QueryError(f"unknown window spec {spec!r}; choose from "
                         f"{', '.join(SUPPORTED_WINDOWS)}")
    return parsed


def check_method(method) -> str:
    if method is None:
        return output_layout.EXACT
    if method not in METHODS:
        raise QueryError(f"unknown method {str(method)[:40]!r}; choose from "
                         f"{', '.join(METHODS)}")
    return method


def check_latest(spec, k, event_type, method, window_start):
    """The checked arguments of a latest-pane question (both backends):
    ``(k, WindowSpec, event type or '*', method, window start ms or
    None)``; ``QueryError`` on bad ones."""
    k = contract.check_k(k)
    parsed = check_spec(spec)
    method = check_method(method)
    event_type = contract.check_event_type(event_type) or schema.ALL_TYPES
    start_ms = None if window_start is None else contract.to_ms(window_start)
    if start_ms is not None and not (contract.MIN_QUERY_MS <= start_ms
                                     < contract.MAX_QUERY_MS):
        raise QueryError(f"window_start {start_ms} ms is out of range")
    return k, parsed, event_type, method, start_ms


def latest(output, spec: str, k: int = 10, event_type: str | None = None,
           method: str = output_layout.EXACT, window_start=None
           ) -> LatestPane:
    """The top ``k`` rows of the latest pane of the latest window of
    ``spec`` (or of the window starting at ``window_start``: RFC 3339,
    datetime or epoch ms). ``output``: a directory or a ``Committed``
    snapshot. Raises ``QueryError`` on bad arguments and ``NotFound`` when
    the output holds no pane of that spec, method and event type."""
    k, parsed, event_type, method, start_ms = check_latest(
        spec, k, event_type, method, window_start)
    if isinstance(output, Committed):
        return _latest(output, parsed, k, event_type, method, start_ms)
    with _committed(output) as snap:
        return _latest(snap, parsed, k, event_type, method, start_ms)


def _candidates(snap: Committed, spec: WindowSpec, method: str,
                event_type: str, start_ms: int | None):
    """The rows of the spec, method and event type in the newest ``date``
    partition holding any (or in the day of ``start_ms``): the latest
    window lies in the newest day. Only the spec's files are opened (and
    of ``start_ms``, those whose statistics may hold it), then pyarrow
    skips files by partition and statistics again."""
    where = ((pc.field("window_spec") == spec.key)
             & (pc.field("method") == method)
             & (pc.field("event_type") == event_type))
    files = [("window_spec", "=", spec.key)]
    if start_ms is not None:
        day = output_layout.day_name(start_ms // DAY_MS)
        start = datetime.datetime.fromtimestamp(start_ms / 1000,
                                                datetime.timezone.utc)
        files += [("date", "=", day), ("window_start", "=", start)]
        dates = [day]
        where = where & (pc.field("window_start") == pa.scalar(
            start_ms * 1000, pa.timestamp("us", tz="UTC")))
    if start_ms is None:
        # The spec's newest window by the log's statistics is the answer
        # when it holds rows of this method and type (a stream writes
        # them all); otherwise the newest day is read.
        newest = output_tables.newest(
            snap.output, output_layout.RANKED_WINDOWS, snap.snap,
            "window_start", {"window_spec": spec.key})
        if newest is not None:
            rows = _candidates(snap, spec, method, event_type, newest)
            if rows is not None:
                return rows
    ds = snap.dataset(output_layout.RANKED_WINDOWS, files)
    if ds is None:
        return None
    if start_ms is None:
        dates = sorted({pads.get_partition_keys(f.partition_expression)
                        .get("date") for f in ds.get_fragments()}
                       - {None}, reverse=True)
    for date in dates:
        rows = ds.to_table(filter=where & (pc.field("date") == date))
        if rows.num_rows:
            return rows
    return None


def _latest(snap: Committed, spec: WindowSpec, k: int, event_type: str,
            method: str, start_ms: int | None) -> LatestPane:
    nothing = (f"no {method} pane of window {spec.name} for event type "
               f"{event_type!r}" + ("" if start_ms is None else
                                    " starting at that window_start")
               + f" in {snap.output!r}")
    rows = _candidates(snap, spec, method, event_type, start_ms)
    if rows is None:
        raise NotFound(nothing)
    con = connection()
    table = f"latest_{uuid.uuid4().hex[:12]}"
    con.register(table, rows)
    try:
        return _pick(con, table, spec, k, event_type, method)
    finally:
        con.unregister(table)


def _pick(con, table: str, spec: WindowSpec, k: int, event_type: str,
          method: str) -> LatestPane:
    """The contract's pane among ``table``'s rows (one spec, method and
    event type): the newest window, batch first, latest ``emitted_at``,
    then the tie-breaks of the module docstring."""
    [(start_ms,)] = con.execute(
        f"SELECT epoch_ms(max(window_start)) FROM {table}").fetchall()
    where = "window_start = ?"
    params = [_ts(start_ms)]
    panes = con.execute(f"""
        SELECT source = 'batch' AS batch, epoch_ms(emitted_at), pane_index,
               pane_timing, window_total, epoch_ms(window_end), source,
               epoch_ms(max(input_watermark))
        FROM {table} WHERE {where}
        GROUP BY ALL
        ORDER BY 1 DESC, 2 DESC, 3 DESC, 4 DESC, 5 DESC, 6 DESC
        LIMIT 1""", params).fetchall()
    (_, emitted_at, pane_index, timing, total, end_ms, source,
     watermark) = panes[0]
    rows = con.execute(f"""
        SELECT DISTINCT rank, item_id, count, lower_bound, upper_bound,
               guaranteed
        FROM {table} WHERE {where} AND source = ? AND emitted_at = ?
          AND pane_index = ? AND pane_timing = ? AND window_total = ?
          AND window_end = ?
        ORDER BY rank, item_id
        LIMIT ?""", [*params, source, _ts(emitted_at), pane_index, timing,
                     total, _ts(end_ms), k]).fetchall()
    return LatestPane(
        spec.name, method, event_type, int(start_ms), int(end_ms), timing,
        int(pane_index), source, int(emitted_at), int(total),
        [ApproxRankedItem(int(r[0]), r[1], int(r[2]), int(r[3]), int(r[4]),
                          bool(r[5])) for r in rows],
        None if watermark is None else int(watermark))
