"""Read calls that run far longer than they should, reported with where
they are (no Beam).

A source's read call ends within ``max_read_s`` plus one poll. One that is
still running long after has stopped its partition, and with aligned
watermarks the whole stream (``topk.connectors.kafka.watermarks``), while
nothing fails and nothing is logged. ``CallWatch`` keeps the calls in
progress; a daemon thread looks at them every few seconds and logs, once
per call, one that has run past ``slow_s``: its partition, how long, and
the stack of the thread running it (the Kafka client call it waits in).
"""
import logging
import sys
import threading
import time
import traceback

_LOG = logging.getLogger(__name__)

#: Seconds a read call may run before it is reported.
SLOW_CALL_S = 30.0
#: Seconds between looks.
CHECK_EVERY_S = 5.0


class CallWatch:
    """The calls in progress of one process, by thread."""

    def __init__(self, slow_s: float = SLOW_CALL_S,
                 check_every_s: float = CHECK_EVERY_S):
        self.slow_s = slow_s
        self.check_every_s = check_every_s
        self._calls = {}  # thread id -> [what, started (monotonic), told]
        self._lock = threading.Lock()
        self._thread = None

    def begin(self, what: str) -> None:
        """The calling thread starts a call described by ``what``."""
        with self._lock:
            self._calls[threading.get_ident()] = [what, time.monotonic(),
                                                  False]
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="topk-call-watch", daemon=True)
                self._thread.start()

    def end(self) -> None:
        """The calling thread's call has ended."""
        with self._lock:
            self._calls.pop(threading.get_ident(), None)

    def slow(self, now: float | None = None) -> list[str]:
        """One message per call past ``slow_s`` not reported yet (marked
        reported): what it is, how long it has run, its thread's stack."""
        now = time.monotonic() if now is None else now
        frames = sys._current_frames()
        out = []
        with self._lock:
            for ident, call in self._calls.items():
                what, started, told = call
                if told or now - started < self.slow_s:
                    continue
                call[2] = True
                frame = frames.get(ident)
                stack = "".join(traceback.format_stack(frame, limit=12)
                                ) if frame is not None else ""
                out.append(f"{what}: a read call has run {now - started:.0f}"
                           f" s (it should end within seconds); it is at:\n"
                           f"{stack}")
        return out

    def _run(self) -> None:
        while True:
            time.sleep(self.check_every_s)
            for message in self.slow():
                _LOG.warning("%s", message)
