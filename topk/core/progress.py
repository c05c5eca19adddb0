"""How far this process has read its input: a process-wide counter (no Beam).

The file source's read DoFn adds the bytes and records of every block it
reads (one ``add`` per block, never per event); ``topk batch`` shows the
counter on stderr while the pipeline runs. That works where the DoFns run
in the driver's process, the local FnApiRunner; on remote runners the
workers count in their own processes and progress is the runner's UI.
"""
import dataclasses
import threading
import time


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The counter at one instant. ``total_bytes`` is ``None`` when the
    input's size is unknown; ``started`` / ``first_read`` are
    ``time.monotonic()`` values (``first_read`` / ``last_read``: of the
    first and the latest block, ``None`` before the first);
    ``in_process`` says whether the readers count here at all."""
    bytes: int
    records: int
    total_bytes: int | None
    files: int
    started: float | None
    first_read: float | None
    last_read: float | None
    in_process: bool

    @property
    def active(self) -> bool:
        """Whether a run has started and counts in this process."""
        return self.started is not None and self.in_process


class ReadProgress:
    """Bytes and records read so far; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._set(None, 0, None, False)

    def _set(self, total_bytes, files, started, in_process):
        self._bytes = self._records = 0
        self._total, self._files = total_bytes, files
        self._started, self._first, self._last = started, None, None
        self._in_process = in_process

    def start(self, total_bytes: int | None, files: int = 0,
              in_process: bool = True) -> None:
        """A new run over ``files`` files of ``total_bytes`` bytes (``None``:
        unknown); counts restart at zero."""
        with self._lock:
            self._set(total_bytes, files, time.monotonic(), in_process)

    def stop(self) -> None:
        """The run is over (or never started): nothing to show."""
        with self._lock:
            self._set(None, 0, None, False)

    def add(self, nbytes: int, records: int = 0) -> None:
        """``nbytes`` more of the input read, holding ``records`` records."""
        now = time.monotonic()
        with self._lock:
            if self._first is None:
                self._first = now
            self._last = now
            self._bytes += nbytes
            self._records += records

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self._bytes, self._records, self._total,
                            self._files, self._started, self._first,
                            self._last, self._in_process)


#: The counter of this process.
READ_PROGRESS = ReadProgress()
