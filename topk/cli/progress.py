"""Progress of ``topk batch`` on stderr, and what a run committed.

``Reporter`` shows ``topk.core.progress.READ_PROGRESS`` (bytes and records
the file source has read in this process) while a pipeline runs: on a
terminal, one line rewritten about once a second; otherwise, with
``--progress``, a plain line every ``--progress-every`` seconds; otherwise
nothing. ``describe`` is the line; ``committed`` sums up the output's
manifest rows a run added. No Beam.
"""
import json
import math
import os
import sys
import threading
import time

from topk.core.progress import READ_PROGRESS, Snapshot

#: Seconds between refreshes of the one-line display on a terminal.
LIVE_EVERY_S = 1.0
#: Seconds between plain progress lines (--progress, not a terminal).
PLAIN_EVERY_S = 5.0
#: Erase to the end of the line (after a carriage return).
_CLEAR = "\x1b[K"


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def describe(snap: Snapshot, now: float) -> str:
    """One progress line: bytes read (with % and ETA when the input's size
    is known), records, records per second, elapsed time."""
    elapsed = now - snap.started
    total = snap.total_bytes
    read_all = bool(total) and snap.bytes >= total
    # Records per second of reading: once all is read, the rate stops.
    reading = 0.0
    if snap.first_read is not None:
        reading = (snap.last_read if read_all else now) - snap.first_read
    parts = []
    if total:
        done = min(snap.bytes, total)
        parts.append(f"read {_mb(done)} of {_mb(total)} "
                     f"({100 * done // total}%)")
    else:
        parts.append(f"read {_mb(snap.bytes)}")
    if snap.files:
        parts[-1] += f" from {snap.files:,} file{'s' * (snap.files != 1)}"
    parts.append(f"{snap.records:,} records")
    if reading > 0:
        parts.append(f"{snap.records / reading:,.0f} records/s")
    parts.append(f"{_duration(elapsed)} elapsed")
    if read_all:
        parts.append("input read; counting and writing")
    elif total and snap.bytes and reading > 0:
        eta = (total - snap.bytes) * reading / snap.bytes
        parts.append(f"ETA {_duration(eta)}")
    return ", ".join(parts)


class Reporter:
    """A thread that prints ``READ_PROGRESS`` while the ``with`` block runs.

    ``live``: rewrite one line every ``LIVE_EVERY_S`` (a terminal);
    ``every_s``: else print a plain line that often (``None``: silent). On
    a normal exit the last state is printed once more, ending the line; on
    an error a live line is erased, so the error stays the only line."""

    def __init__(self, live: bool, every_s: float | None, stream=None,
                 progress=READ_PROGRESS):
        self.live = live
        self.every_s = LIVE_EVERY_S if live else every_s
        self.stream = stream if stream is not None else sys.stderr
        self.progress = progress
        self._stop = threading.Event()
        self._thread = None
        self._shown = False

    def _show(self, final: bool = False) -> None:
        snap = self.progress.snapshot()
        if not snap.active:
            return
        line = describe(snap, time.monotonic())
        if self.live:
            self.stream.write(f"\r{line}{_CLEAR}" + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._shown = True

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._show()

    def __enter__(self):
        if self.every_s:
            self._thread = threading.Thread(
                target=self._loop, name="topk-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._thread is None:
            return False
        self._stop.set()
        self._thread.join()
        if exc_type is None:
            self._show(final=True)
        elif self.live and self._shown:
            self.stream.write(f"\r{_CLEAR}")
            self.stream.flush()
        return False


def reporter_for(explicit: bool, every_s: float | None = None,
                 stream=None) -> Reporter:
    """The reporter a run gets: live on a terminal (unless ``explicit`` is
    ``False``: ``--no-progress``), plain lines every ``every_s`` when
    ``explicit`` (``--progress``) and stderr is not a terminal, else
    silent."""
    stream = stream if stream is not None else sys.stderr
    tty = explicit is not False and _isatty(stream)
    if tty:
        return Reporter(True, None, stream)
    return Reporter(False, (every_s or PLAIN_EVERY_S) if explicit else None,
                    stream)


def _isatty(stream) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def committed(output: str, since: float) -> str | None:
    """What the runs that committed to ``output`` at or after ``since``
    (epoch seconds) added: ``"ranked_windows 1,234 rows, slices 567 rows"``
    from the output's manifest (``topk.storage.tables``) and each table's
    Delta history. ``None`` when there is nothing to say (a remote or
    empty output, no manifest)."""
    if "://" in output:
        return None
    try:
        from deltalake import DeltaTable

        from topk.storage import tables
    except ImportError:
        return None
    history = tables.history(output)
    if not history.num_rows:
        return None
    since_us = math.floor(since) * 1_000_000
    rows, commits = {}, 0
    versions_seen = {}
    before = {}  # table -> its version in the previous manifest row
    for row in sorted(history.to_pylist(), key=lambda r: r["seq"]):
        at = row["committed_at"]
        at_us = (at.timestamp() * 1e6 if hasattr(at, "timestamp") else at)
        versions = json.loads(row["versions"])
        if at_us >= since_us:
            commits += 1
            for table in json.loads(row["wrote"]):
                # A commit may write several Delta versions of a table (a
                # batch run writes a month at a time): all since the
                # previous manifest row's.
                versions_seen.setdefault(table, set()).update(range(
                    before.get(table, -1) + 1, versions[table] + 1))
        before.update(versions)
    for table, versions in versions_seen.items():
        delta = DeltaTable(tables.table_path(output, table))
        # Only the commits back to the run's first (a long stream has many).
        back = max(1, delta.version() - min(versions) + 1)
        metrics = {h.get("version"): h.get("operationMetrics") or {}
                   for h in delta.history(limit=back)}
        rows[table] = sum(int(metrics.get(v, {}).get("num_added_rows", 0))
                          for v in versions)
    if not commits:
        return None
    listed = ", ".join(f"{t} {n:,} row{'s' * (n != 1)}"
                       for t, n in sorted(rows.items()))
    return (f"{commits} commit{'s' * (commits != 1)}: {listed}" if listed
            else f"{commits} commit{'s' * (commits != 1)}")
