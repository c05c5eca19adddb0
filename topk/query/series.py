"""Counts over time of one item, from the exact ``slices`` table.

``series(output, "item-1", start, end, "1h")`` is the item's count in every
step (``1m``, ``1h`` or ``1d``: the slice lengths the table holds) of
``[start, end)``, zero-filled. The rows read follow the query contract, as
``topk`` reads them: per slice, source and event type only the latest row
(by ``emitted_at``) counts, and a slice a batch run wrote (any item, any
event type) is read from the batch rows only. Every value travels as a
query parameter.
"""
import dataclasses

from topk.core.windows import (DAY_MS, HOUR_MS, MINUTE_MS, format_time)
from topk.query import contract
from topk.query.contract import QueryError
from topk.query.duckdb import Committed, _committed, _range_sql
from topk.storage import layout as output_layout
from topk.core import schema

STEPS = {"1m": MINUTE_MS, "1h": HOUR_MS, "1d": DAY_MS}
#: Most points one series holds (a week of minutes).
MAX_POINTS = 10_080


@dataclasses.dataclass(frozen=True)
class Series:
    item_id: str
    step: str
    event_type: str
    start_ms: int
    end_ms: int
    #: ``[(t, count)]``, one per step of ``[start, end)``; ``t`` epoch ms.
    points: list


def check_series(item_id, start, end, step) -> tuple[str, int, int, int]:
    """``(item_id, start_ms, end_ms, step_ms)`` of a valid question."""
    if not (isinstance(item_id, str)
            and 0 < len(item_id) <= schema.MAX_ID_LENGTH):
        raise QueryError(f"item_id must be a non-empty string of at most "
                         f"{schema.MAX_ID_LENGTH} characters")
    if step not in STEPS:
        raise QueryError(f"unknown step {str(step)[:40]!r}; choose from "
                         f"{', '.join(STEPS)}")
    step_ms = STEPS[step]
    start_ms, end_ms = contract.to_ms(start), contract.to_ms(end)
    for name, ms in (("start", start_ms), ("end", end_ms)):
        if not contract.MIN_QUERY_MS <= ms < contract.MAX_QUERY_MS:
            raise QueryError(f"{name} {ms} ms is out of range: times lie in "
                             "1970-01-01 .. 9999-12-31")
        if ms % step_ms:
            raise QueryError(f"{name} {format_time(ms)} is not aligned to "
                             f"the step {step}")
    if end_ms <= start_ms:
        raise QueryError("end must be after start")
    points = (end_ms - start_ms) // step_ms
    if points > MAX_POINTS:
        raise QueryError(f"{points} points of {step} asked; at most "
                         f"{MAX_POINTS}: use a coarser step or a shorter "
                         "range")
    return item_id, start_ms, end_ms, step_ms


def series(output, item_id: str, start, end, step: str = "1h",
           event_type: str | None = None) -> Series:
    """The count of ``item_id`` per ``step`` in ``[start, end)`` (aligned
    to the step, at most ``MAX_POINTS`` steps), of ``event_type`` (``None``
    or ``'*'``: all types). ``output``: a directory or a ``Committed``
    snapshot. Raises ``QueryError`` on bad arguments, a missing slices
    table or an unknown event type."""
    item_id, start_ms, end_ms, step_ms = check_series(item_id, start, end,
                                                      step)
    event_type = contract.check_event_type(event_type)
    if isinstance(output, Committed):
        return _series(output, item_id, start_ms, end_ms, step, event_type)
    with _committed(output) as snap:
        return _series(snap, item_id, start_ms, end_ms, step, event_type)


def _series(snap: Committed, item_id, start_ms, end_ms, step, event_type
            ) -> Series:
    missing = (f"{snap.output!r} has no slices table: run `topk batch` or "
               "`topk stream` with --output pointing there")
    con, table = snap.table(output_layout.SLICES, missing)
    where, params = _range_sql([(step, start_ms, end_ms)])
    item_filter = "item_id = ?"
    item_params = [item_id]
    if event_type is not None:
        item_filter += " AND event_type = ?"
        item_params.append(event_type)
    # The item's latest row per slice, source and type; which slices a
    # batch run owns is decided over every row of the slice (all items and
    # types), as ``topk`` decides it.
    rows = con.execute(f"""
        WITH s AS (
          SELECT source, slice_start, event_type,
                 arg_max(count, emitted_at) AS count
          FROM {table} WHERE ({where}) AND {item_filter}
          GROUP BY source, slice_start, event_type
        ), batch_slices AS (
          SELECT DISTINCT slice_start FROM {table}
          WHERE ({where}) AND source = 'batch'
        )
        SELECT epoch_ms(slice_start), sum(count)::BIGINT FROM s
        WHERE source = 'batch'
           OR slice_start NOT IN (SELECT slice_start FROM batch_slices)
        GROUP BY slice_start""",
        [*params, *item_params, *params]).fetchall()
    counts = {int(t): int(c) for t, c in rows}
    if not counts and event_type is not None:
        contract.check_known_event_type(event_type, snap.known_types())
    step_ms = STEPS[step]
    return Series(item_id, step, event_type or schema.ALL_TYPES, start_ms,
                  end_ms, [(t, counts.get(t, 0))
                           for t in range(start_ms, end_ms, step_ms)])
