"""The query contract both backends share (DuckDB over Parquet in
``topk.query.duckdb``, BigQuery in ``topk.query.bigquery``): argument checks,
result rows and the final merge of approximate sketches. A backend only turns
a checked question (``Query``) into its SQL and hands the rows back here;
what counts as a valid question and what an answer looks like is decided
here, once, so both backends reject the same arguments with the same
message and answer with the same rows.

Which rows of the append-only tables a backend must read is part of the
contract too (both backends' SQL implements it):

1. per slice, source and key (``slices``: event type and item; ``sketches``:
   method and event type) only the row with the latest ``emitted_at``
   counts: stream panes accumulate (each holds the full state so far) and a
   rerun or a replay re-appends rows, so older copies never add up;
2. where a batch run wrote a slice, its rows win over the stream's.
"""
import dataclasses
import datetime as dt
import numbers
from typing import Callable, Iterable

from topk.approx import sketches
from topk.core import schema
from topk.core.windows import (decompose_range, format_time, parse_time,
                               validate_range)

#: The largest ``k`` a query may ask for: an answer is a list held in
#: memory and printed, and a top-K beyond this is a table scan, not a rank.
MAX_K = 100_000

#: Query times must lie in [1970-01-01, 10000-01-01): what both backends'
#: timestamps and the Parquet ``date`` partitions can represent.
MIN_QUERY_MS = 0
MAX_QUERY_MS = 253_402_300_800_000

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class QueryError(ValueError):
    """A query that cannot be answered, with a one-line reason."""


@dataclasses.dataclass(frozen=True)
class RankedItem:
    rank: int
    item_id: str
    count: int


@dataclasses.dataclass(frozen=True)
class ApproxRankedItem:
    """One row of an approximate answer: ``lower_bound <= true count <=
    upper_bound`` always holds; ``guaranteed`` says the item is certainly
    among the true top ``k`` of the range."""
    rank: int
    item_id: str
    count: int
    lower_bound: int
    upper_bound: int
    guaranteed: bool


@dataclasses.dataclass(frozen=True)
class Query:
    """A checked question: the top ``k`` of ``[start_ms, end_ms)``, of one
    ``event_type`` (``None``: all types), exactly (``method`` ``None``) or
    from the sketches of ``method``."""
    k: int
    start_ms: int
    end_ms: int
    event_type: str | None = None
    method: str | None = None

    @property
    def runs(self) -> list[tuple[str, int, int]]:
        """The fewest aligned day/hour/minute slices covering the range, as
        runs ``(slice_length, first_start, stop)``."""
        return decompose_range(self.start_ms, self.end_ms)

    @property
    def sketch_event_type(self) -> str:
        """The ``event_type`` of the sketches to merge (``'*'`` for all)."""
        return schema.ALL_TYPES if self.event_type is None else self.event_type


def to_ms(t) -> int:
    """RFC 3339 string, aware ``datetime`` or epoch ms -> epoch ms."""
    if isinstance(t, bool):
        raise QueryError(f"bad time {t!r}")
    if isinstance(t, numbers.Integral):
        return int(t)
    if isinstance(t, dt.datetime):
        if t.tzinfo is None:
            raise QueryError("datetime must be timezone-aware (UTC)")
        return (t - _EPOCH) // dt.timedelta(milliseconds=1)
    if isinstance(t, str):
        try:
            return parse_time(t)
        except ValueError as e:
            raise QueryError(str(e)) from None
    raise QueryError(f"bad time {t!r}: expected RFC 3339 text")


def check_k(k) -> int:
    """``k`` as an int in ``1..MAX_K`` (``bool`` is not a number here)."""
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
        raise QueryError(f"k must be a positive integer, got {k!r}")
    if k > MAX_K:
        raise QueryError(f"k must be at most {MAX_K}, got {k}")
    return int(k)


def check_range(start, end) -> tuple[int, int]:
    """``(start_ms, end_ms)`` of a minute-aligned, ordered range of at most
    30 days."""
    start_ms, end_ms = to_ms(start), to_ms(end)
    for name, ms in (("start", start_ms), ("end", end_ms)):
        if not MIN_QUERY_MS <= ms < MAX_QUERY_MS:
            raise QueryError(f"{name} {ms} ms is out of range: times lie in "
                             "1970-01-01 .. 9999-12-31")
    try:
        validate_range(start_ms, end_ms)
    except ValueError as e:
        raise QueryError(f"{e} ({format_time(start_ms)} .. "
                         f"{format_time(end_ms)})") from None
    return start_ms, end_ms


def check_query(k, start, end) -> tuple[int, int]:
    """Validate ``k`` and the range; returns ``(start_ms, end_ms)``."""
    check_k(k)
    return check_range(start, end)


def check_method(method) -> str:
    """An approximate method of ``sketches.METHODS``."""
    if not isinstance(method, str) or method not in sketches.METHODS:
        raise QueryError(f"unknown approximate method {method!r}; choose "
                         f"from {', '.join(sketches.METHODS)}")
    return method


def check_event_type(event_type) -> str | None:
    """``None`` for all types (``None`` or ``'*'``), else the type: a
    non-empty string of at most ``MAX_EVENT_TYPE_LENGTH`` characters, as
    events' types are."""
    if event_type is None or event_type == schema.ALL_TYPES:
        return None
    if not (isinstance(event_type, str)
            and 0 < len(event_type) <= schema.MAX_EVENT_TYPE_LENGTH):
        raise QueryError(
            f"event type must be a non-empty string of at most "
            f"{schema.MAX_EVENT_TYPE_LENGTH} characters, or "
            f"'{schema.ALL_TYPES}' for all types; got {event_type!r}")
    return event_type


def exact_query(k, start, end, event_type=None) -> Query:
    """The checked arguments of ``topk``."""
    k = check_k(k)
    start_ms, end_ms = check_range(start, end)
    return Query(k, start_ms, end_ms, check_event_type(event_type))


def approx_query(k, start, end, method, event_type=None) -> Query:
    """The checked arguments of ``topk_approx``."""
    k = check_k(k)
    start_ms, end_ms = check_range(start, end)
    method = check_method(method)
    return Query(k, start_ms, end_ms, check_event_type(event_type), method)


def check_known_event_type(event_type: str,
                           known_types: Iterable[str]) -> None:
    """Raise the one ``unknown event type`` error unless ``event_type`` is
    among ``known_types`` (every type the table ever held)."""
    known = sorted(set(known_types) - {schema.ALL_TYPES})
    if event_type not in known:
        raise QueryError(f"unknown event type {event_type!r}; known: "
                         f"{', '.join(known) or 'none'}")


def ranked_items(rows: Iterable[tuple[str, int]], query: Query,
                 known_types: Callable[[], Iterable[str]]
                 ) -> list[RankedItem]:
    """A backend's ``(item_id, count)`` rows -> the exact answer, ranked by
    count descending, then ``item_id``. No rows for an event type: the
    type must be known (``known_types()``, asked only then), else
    ``QueryError``."""
    rows = sorted(((str(item), int(count)) for item, count in rows),
                  key=lambda r: (-r[1], r[0]))[:query.k]
    if not rows and query.event_type is not None:
        check_known_event_type(query.event_type, known_types())
    return [RankedItem(i + 1, item, count)
            for i, (item, count) in enumerate(rows)]


def approx_items(blobs: list, query: Query, *,
                 has_sketches: Callable[[], bool],
                 known_types: Callable[[], Iterable[str]],
                 missing: str) -> list[ApproxRankedItem]:
    """A backend's sketches of the range (in merge order) -> the
    approximate answer. No sketches: ``QueryError(missing)`` unless the
    table holds sketches of the method at all (``has_sketches()``), and the
    event type must be known (``known_types()``)."""
    if blobs:
        return merged_top_k(blobs, query.k, query.method)
    if not has_sketches():
        raise QueryError(missing)
    if query.event_type is not None:
        check_known_event_type(query.event_type, known_types())
    return []


def merged_top_k(blobs, k: int, method: str) -> list[ApproxRankedItem]:
    """The top ``k`` of the merge of serialized ``method`` sketches."""
    try:
        top = sketches.merge_all(blobs).top_k(k)
    except ValueError as e:  # e.g. sketches sized by different budgets
        raise QueryError(f"cannot merge the {method} sketches of this "
                         f"range: {e}") from None
    return [ApproxRankedItem(i + 1, **row) for i, row in
            enumerate(top.to_pylist())]
