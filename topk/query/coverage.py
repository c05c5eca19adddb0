"""What an output holds: its committed snapshot, the window specs of its
ranked windows (methods, event types, first and last window, newest pane),
the span of its slices, the methods and event types a range query can ask
for, and how far behind the wall clock the stream is.

The slices part comes from the file statistics of the Delta log
(``slice_stats``; only files mixing batch and stream rows are read, for
their newest stream row), falling back to reading the rows
(``slice_scan``) when a file has no statistics: a 30-day output answers in
milliseconds instead of a second.

``manifest_head`` reads the newest manifest row (``seq``, table versions
and ``committed_at``) the way ``topk.storage.tables.snapshot`` finds it:
one small file, located by the file statistics of the manifest's Delta log.
"""
import dataclasses
import json
import os
import time
import urllib.parse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable

from topk.core import schema
from topk.query.contract import QueryError
from topk.query.duckdb import Committed, _committed
from topk.storage import layout as output_layout
from topk.storage import tables as output_tables


@dataclasses.dataclass(frozen=True)
class Head:
    """The newest manifest row: the snapshot and when it was committed
    (epoch ms; ``None`` when nothing was committed yet)."""
    snap: output_tables.Snapshot
    committed_at: int | None

    @property
    def seq(self) -> int:
        return self.snap.seq


def manifest_head(output: str) -> Head:
    """The latest committed state of ``output`` with its commit time.
    ``QueryError`` when the output does not exist or cannot be read."""
    if not os.path.isdir(output):
        raise QueryError(f"output directory {output!r} does not exist")
    try:
        output_tables.check_not_legacy(output)
    except output_tables.StorageError as e:
        raise QueryError(str(e)) from None
    path = output_tables.table_path(output, output_tables.COMMITS)
    if not DeltaTable.is_deltatable(path):
        return Head(output_tables.Snapshot(0, {}), None)
    actions = pa.table(DeltaTable(path).get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return Head(output_tables.Snapshot(0, {}), None)
    newest = pc.index(actions["max.seq"],
                      pc.max(actions["max.seq"])).as_py()
    rows = pq.read_table(os.path.join(path, actions["path"][newest].as_py()),
                         columns=["seq", "versions", "committed_at"])
    last = pc.index(rows["seq"], pc.max(rows["seq"])).as_py()
    micros = pc.cast(rows["committed_at"], pa.int64())[last].as_py()
    return Head(output_tables.Snapshot(
        rows["seq"][last].as_py(), json.loads(rows["versions"][last].as_py())),
        None if micros is None else micros // 1000)


@dataclasses.dataclass(frozen=True)
class SpecCoverage:
    spec: str  # e.g. "1h/1m"
    methods: list
    event_types: list
    first_window_start: int
    last_window_end: int
    newest_emitted_at: int


@dataclasses.dataclass(frozen=True)
class Coverage:
    """Times are epoch ms. ``slices``: ``(first slice start, end of the
    last slice)`` or ``None``; ``newest_event_time``: the start of the
    newest minute slice (events are counted per minute); ``newest_stream_at``:
    the newest ``emitted_at`` of a stream row in any table;
    ``stream_watermark``: the newest ``input_watermark`` of a stream pane
    (``ranked_windows``)."""
    seq: int
    specs: list
    slices: tuple | None
    methods: list
    event_types: list
    newest_event_time: int | None
    newest_stream_at: int | None
    stream_watermark: int | None = None


_LENGTH_SQL = ("CASE slice_length WHEN '1m' THEN INTERVAL 1 MINUTE "
               "WHEN '1h' THEN INTERVAL 1 HOUR ELSE INTERVAL 1 DAY END")


def coverage(output) -> Coverage:
    """What ``output`` (a directory or a ``Committed`` snapshot) holds."""
    if isinstance(output, Committed):
        return _coverage(output)
    with _committed(output) as snap:
        return _coverage(snap)


def _coverage(snap: Committed) -> Coverage:
    specs, methods, types = [], set(), set()
    stream_at, watermarks = [], []
    if snap.has(output_layout.RANKED_WINDOWS):
        con, table = snap.table(output_layout.RANKED_WINDOWS, "")
        for (key, ms, ts, first, last, newest, stream,
             watermark) in con.execute(f"""
                SELECT window_spec, list(DISTINCT method ORDER BY method),
                       list(DISTINCT event_type ORDER BY event_type),
                       epoch_ms(min(window_start)), epoch_ms(max(window_end)),
                       epoch_ms(max(emitted_at)),
                       epoch_ms(max(emitted_at) FILTER (source = 'stream')),
                       epoch_ms(max(input_watermark))
                FROM {table} GROUP BY window_spec""").fetchall():
            specs.append(SpecCoverage(key.replace("_", "/"), list(ms),
                                      list(ts), int(first), int(last),
                                      int(newest)))
            stream_at.append(stream)
            if watermark is not None:
                watermarks.append(int(watermark))
        specs.sort(key=lambda s: (_spec_order(s.spec), s.spec))
    slices, newest_minute = None, None
    if snap.has(output_layout.SLICES):
        summary = slice_stats(snap)
        if summary is None:  # the Delta log lacks file statistics
            summary = slice_scan(snap)
        first, last, minute, stream, has_rows = summary
        if has_rows:
            slices = (int(first), int(last))
            newest_minute = None if minute is None else int(minute)
            methods.add(output_layout.EXACT)
            types.update(snap.known_types())
        stream_at.append(stream)
    if snap.has(output_layout.SKETCHES):
        con, table = snap.table(output_layout.SKETCHES, "")
        for method, etypes, stream, minute in con.execute(f"""
                SELECT method, list(DISTINCT event_type),
                       epoch_ms(max(emitted_at) FILTER (source = 'stream')),
                       epoch_ms(max(slice_start) FILTER (slice_length = '1m'))
                FROM {table} GROUP BY method""").fetchall():
            methods.add(method)
            types.update(t for t in etypes if t != schema.ALL_TYPES)
            stream_at.append(stream)
            if minute is not None and slices is None:
                newest_minute = max(newest_minute or 0, int(minute))
    stream_at = [int(t) for t in stream_at if t is not None]
    return Coverage(snap.seq, specs, slices, sorted(methods), sorted(types),
                    newest_minute, max(stream_at) if stream_at else None,
                    max(watermarks) if watermarks else None)


_LENGTH_MS = {"1m": 60_000, "1h": 3_600_000, "1d": 86_400_000}


def slice_scan(snap: Committed) -> tuple:
    """``(first slice start, end of the last slice, newest minute slice
    start, newest stream emitted_at, any rows)`` of the slices table, by
    reading its rows."""
    con, table = snap.table(output_layout.SLICES, "")
    [row] = con.execute(f"""
        SELECT epoch_ms(min(slice_start)),
               epoch_ms(max(slice_start + {_LENGTH_SQL})),
               epoch_ms(max(slice_start) FILTER (slice_length = '1m')),
               epoch_ms(max(emitted_at) FILTER (source = 'stream')),
               count(*) > 0
        FROM {table}""").fetchall()
    return row


_STATS = ("path", "num_records", "partition.slice_length", "min.slice_start",
          "max.slice_start", "min.source", "max.source", "max.emitted_at")


def slice_stats(snap: Committed) -> tuple | None:
    """What ``slice_scan`` answers, from the file statistics of the Delta
    log instead of the rows (a 30-day output: milliseconds instead of a
    second): slice starts by file min/max, the newest stream row by the
    files holding only stream rows, and by reading ``source`` and
    ``emitted_at`` of the files that mix sources. ``None`` when a file has
    no statistics."""
    path = output_tables.table_path(snap.output, output_layout.SLICES)
    actions = pa.table(DeltaTable(
        path, version=snap.snap.versions[output_layout.SLICES]
    ).get_add_actions(flatten=True))
    if any(c not in actions.column_names for c in _STATS):
        return None
    columns = {}
    for c in _STATS:
        col = actions[c]
        if pa.types.is_timestamp(col.type):  # -> epoch ms
            col = pc.cast(pc.cast(col, pa.timestamp("ms", tz="UTC"),
                                  safe=False), pa.int64())
        columns[c] = col.to_pylist()
    files = [dict(zip(_STATS, values)) for values in zip(*columns.values())]
    files = [f for f in files if f["num_records"] != 0]
    if any(v is None for f in files for v in f.values()):
        return None
    if not files:
        return None, None, None, None, False
    first = min(f["min.slice_start"] for f in files)
    last = max(f["max.slice_start"] + _LENGTH_MS[f["partition.slice_length"]]
               for f in files)
    minutes = [f["max.slice_start"] for f in files
               if f["partition.slice_length"] == "1m"]
    stream = []
    for f in files:
        if f["min.source"] == f["max.source"] == "stream":
            stream.append(f["max.emitted_at"])
        elif f["min.source"] <= "stream" <= f["max.source"]:
            rows = pq.read_table(
                os.path.join(path, urllib.parse.unquote(f["path"])),
                columns=["source", "emitted_at"])
            newest = pc.max(pc.cast(pc.cast(
                rows.filter(pc.equal(rows["source"], "stream"))[
                    "emitted_at"], pa.timestamp("ms", tz="UTC")), pa.int64()))
            if newest.as_py() is not None:
                stream.append(newest.as_py())
    return (first, last, max(minutes) if minutes else None,
            max(stream) if stream else None, True)


def _spec_order(name: str) -> int:
    from topk.core.windows import WindowSpec
    try:
        spec = WindowSpec.parse(name)
    except ValueError:
        return 0
    return spec.length_ms * 10 + (1 if spec.slide_ms else 0)


def stream_lag_s(cov: Coverage, now_ms: int | None = None) -> float | None:
    """Seconds between now and the newest stream row (``None``: none)."""
    if cov.newest_stream_at is None:
        return None
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return (now_ms - cov.newest_stream_at) / 1000
