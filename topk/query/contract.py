"""The query contract both backends share (DuckDB over Parquet in
``topk.query.duckdb``, BigQuery in ``topk.query.bigquery``): argument checks,
result rows and the final merge of approximate sketches. A backend only turns
a checked question into its SQL; what counts as a valid question and what an
answer looks like is decided here, once.
"""
import dataclasses
import datetime as dt

from topk.approx import sketches
from topk.core.windows import format_time, parse_time, validate_range


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


def check_query(k, start, end) -> tuple[int, int]:
    """Validate ``k`` and the range; returns ``(start_ms, end_ms)``."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise QueryError(f"k must be a positive integer, got {k!r}")
    start_ms, end_ms = to_ms(start), to_ms(end)
    try:
        validate_range(start_ms, end_ms)
    except ValueError as e:
        raise QueryError(f"{e} ({format_time(start_ms)} .. "
                         f"{format_time(end_ms)})") from None
    return start_ms, end_ms


def merged_top_k(blobs, k: int, method: str) -> list[ApproxRankedItem]:
    """The top ``k`` of the merge of serialized ``method`` sketches (also
    the BigQuery backend's last step)."""
    try:
        top = sketches.merge_all(blobs).top_k(k)
    except ValueError as e:  # e.g. sketches sized by different budgets
        raise QueryError(f"cannot merge the {method} sketches of this "
                         f"range: {e}") from None
    return [ApproxRankedItem(i + 1, **row) for i, row in
            enumerate(top.to_pylist())]


