"""Where the output tables live and how they are partitioned (no Beam).

An output directory holds one Delta table per output table (committed
together through ``OUTPUT/_commits``: ``topk.storage.tables``), partitioned
Hive-style, plus the raw event archive as plain Parquet files::

    OUTPUT/_commits/                     the manifest (a Delta table)
    OUTPUT/ranked_windows/window_spec=1h_1m/date=2024-05-01/part-*.parquet
    OUTPUT/slices/slice_length=1h/date=2024-05-01/part-*.parquet
    OUTPUT/sketches/slice_length=1h/date=2024-05-01/part-*.parquet
    OUTPUT/dead_letters/part-*.parquet
    OUTPUT/late_events/date=2024-05-01/part-*.parquet
    OUTPUT/late_counts/date=2024-05-01/part-*.parquet
    OUTPUT/archive/date=2024-05-01/hour=09/part-stream-<writer id>.parquet

``archive`` holds the validated events the stream read (``EVENT_SCHEMA``,
hourly partitions by event time), not yet de-duplicated: the input of
``topk batch --from-archive``, which de-duplicates over the whole range.
Stream writers add files (a replay may add a copy of an event; the batch
de-duplication removes it) and never rewrite them.

``date`` is the UTC day of ``window_start`` / ``slice_start``.
``archive_partitions`` splits events into the archive's files; the other
``*_partitions`` functions split rows as the tables are partitioned (and
as outputs of older versions were laid out); ``table_glob`` matches a table's
data files, which for a Delta table include replaced and uncommitted ones:
read tables through ``topk.storage.tables`` instead.
"""
import datetime as dt
import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from topk.core.schema import DAY_MS, HOUR_MS

RANKED_WINDOWS = "ranked_windows"
SLICES = "slices"
SKETCHES = "sketches"
DEAD_LETTERS = "dead_letters"
ARCHIVE = "archive"
LATE_EVENTS = "late_events"
LATE_COUNTS = "late_counts"

#: The method whose rows are written under the writer's plain file name.
EXACT = "exact"


def table_dir(output: str, table: str) -> str:
    return os.path.join(output, table)


def table_glob(output: str, table: str) -> str:
    return os.path.join(output, table, "**", "*.parquet")


def partition_path(output: str, table: str, partition: tuple, file_name: str
                   ) -> str:
    """``partition`` is a tuple of ``(column, value)`` pairs, outermost first."""
    parts = [f"{k}={v}" for k, v in partition]
    return os.path.join(output, table, *parts, file_name)


def day_name(day_index: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(day_index))).isoformat()


def method_file_name(base: str, method: str) -> str:
    """File name (without ``.parquet``) of one method's rows: ``part-batch``
    for exact rows, ``part-batch-cms`` for cms rows."""
    return base if method == EXACT else f"{base}-{method}"


def window_key(window_length: str, slide: str | None) -> str:
    return window_length if slide is None else f"{window_length}_{slide}"


def split_by_day(table: pa.Table, ts_column: str,
                 leading: tuple) -> list[tuple[tuple, pa.Table]]:
    """Split rows by the UTC day of ``ts_column`` into ``(partition, rows)``,
    partition = ``leading + (("date", "YYYY-MM-DD"),)``."""
    if table.num_rows == 0:
        return []
    ms = table[ts_column].cast(pa.int64()).to_numpy()
    days = ms // DAY_MS
    out = []
    for day in np.unique(days):
        rows = table.filter(pa.array(days == day))
        out.append((leading + (("date", day_name(day)),), rows))
    return out


def ranked_windows_partitions(ranked: pa.Table) -> list[tuple[tuple, pa.Table]]:
    """``ranked_windows`` rows -> ``(partition, rows)`` by window spec and day."""
    out = []
    specs = ranked.select(["window_length", "slide"]).group_by(
        ["window_length", "slide"]).aggregate([]).to_pylist()
    for spec in specs:
        mask = pc.equal(ranked["window_length"], spec["window_length"])
        slide_mask = (pc.is_null(ranked["slide"]) if spec["slide"] is None
                      else pc.equal(ranked["slide"], spec["slide"]))
        rows = ranked.filter(pc.and_(mask, pc.fill_null(slide_mask, False)))
        key = (("window_spec", window_key(spec["window_length"], spec["slide"])),)
        out.extend(split_by_day(rows, "window_start", key))
    return out


def slices_partitions(slices: pa.Table) -> list[tuple[tuple, pa.Table]]:
    """``slices`` rows -> ``(partition, rows)`` by slice length and day."""
    return _by_slice_length_and_day(slices)


def sketches_partitions(sketches: pa.Table) -> list[tuple[tuple, pa.Table]]:
    """``sketches`` rows -> ``(partition, rows)`` by slice length and day
    (the same partitions as ``slices``)."""
    return _by_slice_length_and_day(sketches)


def _by_slice_length_and_day(slices: pa.Table) -> list[tuple[tuple, pa.Table]]:
    out = []
    for length in pc.unique(slices["slice_length"]).to_pylist():
        rows = slices.filter(pc.equal(slices["slice_length"], length))
        out.extend(split_by_day(rows, "slice_start", (("slice_length", length),)))
    return out


def archive_partitions(events: pa.Table) -> list[tuple[tuple, pa.Table]]:
    """Validated events (``EVENT_SCHEMA``) -> ``(partition, rows)`` by UTC
    date and hour of ``ts``: ``(("date", "2024-05-01"), ("hour", "09"))``."""
    if events.num_rows == 0:
        return []
    hours = events["ts"].to_numpy() // HOUR_MS
    out = []
    for hour in np.unique(hours):
        rows = events.filter(pa.array(hours == hour))
        day, hour_of_day = divmod(int(hour), 24)
        out.append(((("date", day_name(day)), ("hour", f"{hour_of_day:02d}")),
                    rows))
    return out


def archive_hour_dirs(output: str, start_ms: int, end_ms: int) -> list[str]:
    """The archive's hourly partition directories covering event times
    ``[start_ms, end_ms)`` (whole hours: the hours that overlap the range)."""
    first, last = start_ms // HOUR_MS, -(-end_ms // HOUR_MS)
    out = []
    for hour in range(first, last):
        day, hour_of_day = divmod(hour, 24)
        out.append(os.path.join(output, ARCHIVE, f"date={day_name(day)}",
                                f"hour={hour_of_day:02d}"))
    return out


def input_fingerprint(text: str) -> str:
    """Short stable name for an input spec, e.g. a glob."""
    return hashlib.sha1(text.encode()).hexdigest()[:12]
