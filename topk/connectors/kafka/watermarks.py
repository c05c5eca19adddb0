"""Watermark arithmetic of a Kafka read (no Beam).

All watermarks are epoch milliseconds (UTC), ``None`` meaning "not known
yet". ``data_watermark`` and ``idle_watermark`` move one partition's
watermark; ``AlignedWatermarks`` shares the partitions' watermarks of one
read between the readers of a process, for runners that need every
partition to report the minimum (Prism, see the class).
"""
import threading

#: Defaults of the source's watermark knobs (see ``ReadFromKafkaBatches``).
ALLOWED_SKEW_MS = 10_000
IDLE_TIMEOUT_MS = 5_000

#: The watermark of a partition that has been read to its (bounded) end.
DONE = (1 << 63) - 1


def later(a: int | None, b: int | None) -> int | None:
    """The later of two watermarks; ``None`` (unknown) only if both are."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def data_watermark(current: int | None, max_record_ts: int | None,
                   skew_ms: int) -> int | None:
    """The partition's watermark after reading messages whose largest
    record timestamp is ``max_record_ts``: that minus the allowed skew
    (records may arrive up to ``skew_ms`` behind the newest one), never
    moving back."""
    if max_record_ts is None:
        return current
    return later(current, max_record_ts - skew_ms)


def idle_watermark(current: int | None, now_ms: int,
                   last_data_ms: int | None, idle_timeout_ms: int,
                   skew_ms: int, caught_up: bool) -> int | None:
    """The watermark of a partition that returned no data.

    When it has had nothing new for ``idle_timeout_ms`` and the reader is at
    the partition's end (``caught_up``: not merely cut off from a broker
    that is down), new messages can only carry producer timestamps from now
    on, so the watermark advances to ``now - skew`` and an idle partition
    does not hold back every window of the pipeline. Never moves back.
    """
    if not caught_up:
        return current
    if last_data_ms is not None and now_ms - last_data_ms < idle_timeout_ms:
        return current
    return later(current, now_ms - skew_ms)


def aligned_minimum(watermarks) -> int | None:
    """The minimum of partition watermarks; ``None`` if any is unknown."""
    low = None
    for wm in watermarks:
        if wm is None:
            return None
        low = wm if low is None else min(low, wm)
    return low


class AlignedWatermarks:
    """Per-partition watermarks of one read, shared by every reader in the
    process; each reader reports the minimum over all partitions.

    Why: Prism (2.77) takes the output watermark of a splittable DoFn's stage
    from the residuals of the *last* bundle that returned any, not the
    minimum over all outstanding restrictions. With one restriction per
    partition, one partition that ran ahead would move the stage's watermark
    past the batches the others have yet to emit, and Prism drops those as
    late. If every restriction reports the minimum over all partitions, the
    last bundle's estimate is right. Correct only when all partitions are
    read in one process (Prism's loopback worker, the DirectRunner);
    runners that combine restriction watermarks themselves (Flink, Dataflow)
    use per-partition watermarks instead.

    A partition's new watermark is *pending* until its next ``process``
    call starts, and only *confirmed* values count: a runner schedules a
    residual only after it has taken the previous bundle's output, so until
    then the batches that moved the watermark may still be on their way,
    and another partition must not carry the new value to the runner before
    them. ``None`` means "not known yet" (holds everyone back); ``DONE`` a
    partition read to the end of its bounded range (which, having no next
    call, stays pending: aligned bounded reads hold the watermark until
    every partition is done, when the runner closes the input anyway).

    The table lives as long as the process (one instance per process, shared
    by the DoFn instances of a read), so a read is dropped from it as soon as
    every partition is ``DONE``: no later call of that read can come. An
    unbounded read is kept while its pipeline runs; one that was cancelled
    leaves a few integers per partition behind.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._reads = {}  # read id -> {partition: [confirmed, pending]}

    def __len__(self) -> int:
        """How many reads the table holds."""
        with self._lock:
            return len(self._reads)

    def _marks(self, read_id, partitions) -> dict:
        marks = self._reads.setdefault(read_id, {})
        for p in partitions:
            marks.setdefault(p, [None, None])
        return marks

    def begin(self, read_id, partitions, partition) -> int | None:
        """A ``process`` call of ``partition`` starts: confirm its pending
        watermark. Returns the partition's own watermark (``None`` if
        unknown)."""
        with self._lock:
            mark = self._marks(read_id, partitions)[partition]
            mark[0] = later(mark[0], mark[1])
            return mark[0]

    def end(self, read_id, partitions, partition,
            watermark: int | None) -> int | None:
        """A call ends with ``partition`` at ``watermark`` (pending). Returns
        the minimum confirmed watermark over ``partitions``; forgets the
        read when this was the last partition to reach ``DONE``."""
        with self._lock:
            marks = self._marks(read_id, partitions)
            mark = marks[partition]
            mark[1] = later(mark[1], watermark)
            low = aligned_minimum(marks[p][0] for p in partitions)
            if all(later(*marks[p]) == DONE for p in partitions):
                del self._reads[read_id]
            return low
