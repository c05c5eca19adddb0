"""Batch reprocessing from the raw event archive (no Beam).

``topk batch --from-archive OUTPUT --archive-start D --archive-end D`` rebuilds the exact
results of a range from ``OUTPUT/archive`` (``output_layout``: validated
events in hourly partitions, possibly with duplicate copies) and writes them
as ``source = batch`` rows, which the query layer prefers over the stream's.

Reprocessing works on whole UTC days, the output's partitions:
``--archive-start`` is rounded down and ``--archive-end`` up to midnight UTC, so every partition it
writes (one file per table, window spec and day) holds the complete,
de-duplicated results of that day, never part of one. What is written:

- every slice (1m, 1h, 1d) of the range: complete, so range queries over it
  are exact;
- every window that lies inside the range. Windows that straddle its edges
  (sliding windows that start before it or end after it, 30-day windows)
  would be counted from part of their events, so they are left out: they
  keep the stream's rows, or an earlier run's. Reprocess a longer range to
  rebuild them (two days rebuild the first day's late sliding windows; a
  30-day window needs its 30 days).
"""
import os

import pyarrow as pa
import pyarrow.compute as pc

from topk.storage import layout as output_layout
from topk.core.schema import DAY_MS
from topk.core.windows import format_time, parse_time

def parse_time_or_date(text: str, flag: str) -> int:
    """``2024-05-01`` or an RFC 3339 time -> epoch ms; ``ValueError`` naming
    ``flag`` otherwise."""
    try:
        return parse_time(text)
    except ValueError:
        raise ValueError(f"{flag}: bad date or time {text!r}; expected "
                         "2024-05-01 or 2024-05-01T00:00:00Z") from None


def day_range(start: str, end: str) -> tuple[int, int]:
    """``--archive-start``/``--archive-end`` texts -> ``[first midnight,
    last midnight)`` in epoch ms: the whole UTC days that contain
    ``[start, end)``."""
    start_ms = parse_time_or_date(start, "--archive-start")
    end_ms = parse_time_or_date(end, "--archive-end")
    if end_ms <= start_ms:
        raise ValueError(f"--archive-end ({end}) must be after "
                         f"--archive-start ({start})")
    return start_ms // DAY_MS * DAY_MS, -(-end_ms // DAY_MS) * DAY_MS


def describe_range(start_ms: int, end_ms: int) -> str:
    return f"{format_time(start_ms)} .. {format_time(end_ms)}"


def archive_output(path: str) -> str:
    """The output directory of an archive: ``path`` itself, or its parent
    when ``path`` is the ``archive`` directory."""
    path = path.rstrip("/")
    if os.path.basename(path) == output_layout.ARCHIVE:
        return os.path.dirname(path)
    return path


def archive_day_globs(path: str, start_ms: int, end_ms: int) -> list[str]:
    """Globs of the archive's Parquet files for the days of ``[start_ms,
    end_ms)`` (whole days), one per day, oldest first."""
    hours = output_layout.archive_hour_dirs(archive_output(path), start_ms,
                                            end_ms)
    days = sorted({os.path.dirname(h) for h in hours})
    return [os.path.join(d, "*", "*.parquet") for d in days]


def events_within(batch, start_ms: int, end_ms: int):
    """Rows of an event batch (``EVENT_SCHEMA`` columns, a ``pa.Table`` or
    ``pa.RecordBatch``) whose ``ts`` lies in ``[start_ms, end_ms)``."""
    ts = batch.column("ts")
    return batch.filter(pc.and_(pc.greater_equal(ts, start_ms),
                                pc.less(ts, end_ms)))


def windows_within(ranked: pa.Table, start_ms: int, end_ms: int) -> pa.Table:
    """``ranked_windows`` rows of the windows inside ``[start_ms, end_ms)``
    (whole windows only)."""
    starts = pc.cast(ranked["window_start"], pa.int64())
    ends = pc.cast(ranked["window_end"], pa.int64())
    return ranked.filter(pc.and_(pc.greater_equal(starts, start_ms),
                                 pc.less_equal(ends, end_ms)))
