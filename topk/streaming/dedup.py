"""Streaming de-duplication and lateness, per dedup shard (no Beam).

A batch run de-duplicates over its whole input; a stream cannot keep every
id forever. It keeps the ids of the events it admitted while their minute
can still change a result: until the watermark passes the end of the minute
plus the allowed lateness. An event older than that horizon is *late*: it is
not counted (its windows are final) and goes to the late-events output
instead, so it is never dropped silently.

Ids are kept as 64-bit hashes (``sharding.stable_hash``) with their minute,
in a few sorted runs per hash partition (``SeenIds``): membership is a
vectorised ``searchsorted`` per run, and expiry filters the runs by minute.
Two distinct ids collide with probability ~n²/2⁶⁵ (n ids retained at once:
1e8 ids give ~3e-4 over the whole retention); a collision would drop one
event.

Copies of an id in one batch are settled as in batch mode (the smallest
``(ts, event_type, item_id, weight)`` wins, ``counting.dedup_events``);
across batches the first copy admitted wins, as it was already counted.
"""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from topk.core import counting, schema, sharding
from topk.core.windows import floor_to

#: Schema of the persisted id state: one row per admitted id.
SEEN_SCHEMA = pa.schema([
    pa.field("minute", pa.int64(), nullable=False),
    pa.field("id_hash", pa.uint64(), nullable=False),
])

#: Smallest watermark: nothing is late before the first event-time firing.
NO_WATERMARK = -(1 << 62)


#: Extra event time state is kept beyond the lateness horizon. The stages
#: learn the watermark from their own timers, and a runner may fire them
#: before it processes input that was on time when read (judged by
#: ``reading_watermark``): ids and counts must outlive that lag, or a late
#: copy of a counted event would be counted again.
RETENTION_MARGIN_MS = 60 * schema.MINUTE_MS

#: Event time of expired ids a dedup stage drops at once (``expire``):
#: dropping one minute per minute of event time would rewrite a shard's
#: whole id state that often (a catch-up passes a minute every few
#: milliseconds). Keeping ids longer never changes a count.
EXPIRE_BATCH_MS = 10 * schema.MINUTE_MS

#: Schema metadata key of a partial-count table: the timestamp (epoch ms)
#: of the batch its events were read in.
READ_AT = b"topk.read_at_ms"

#: Schema metadata key of a partial-count table: the distinct event minutes
#: (int64 epoch ms, raw bytes) of all the partials cut from one batch, sent
#: to every item shard, also those with no rows of it (see
#: ``topk.streaming.panes.ShardPanes.touched``).
TOUCHED = b"topk.touched_minutes"


def reading_watermark(known_ms: int, read_at_ms: int | None) -> int:
    """The watermark an element is judged by: what the stage knows from its
    timers, but never past the element's own timestamp. A runner may fire a
    stage's timers before it processes input that was on time when it was
    read (Prism does, after a partition goes idle), and such input is not
    late."""
    if read_at_ms is None:
        return known_ms
    return min(known_ms, read_at_ms)


def late_horizon(watermark_ms: int, allowed_lateness_ms: int) -> int:
    """Event times before this are late: their minute ended at least the
    allowed lateness before the watermark (a whole minute)."""
    if watermark_ms <= NO_WATERMARK:
        return NO_WATERMARK
    return int(floor_to(watermark_ms - allowed_lateness_ms, schema.MINUTE_MS))


def rewrite_due(stored_rows: int | None, live_rows: int) -> bool:
    """Whether a stage should rewrite its persisted ids (``stored_rows``,
    ``None`` when unknown) to the ``live_rows`` an expiry left: once at
    least half of them are expired. Rewriting at every expiry cost the
    whole state each time; this way each rewrite costs at most twice what
    it drops."""
    return stored_rows is None or stored_rows >= 2 * live_rows


#: ``SeenIds`` partitions: ids by the top bits of their hash.
PARTITION_BITS = 6


def _partition_starts(bits: int) -> np.ndarray:
    """First hash of each partition but the first."""
    return (np.arange(1, 1 << bits, dtype=np.uint64)
            << np.uint64(64 - bits)) if bits else np.empty(0, np.uint64)


def _by_partition(sorted_hashes: np.ndarray, starts: np.ndarray):
    """``(partition, slice)`` of each non-empty partition of sorted hashes
    (``starts``: ``_partition_starts``)."""
    cuts = [0, *np.searchsorted(sorted_hashes, starts).tolist(),
            sorted_hashes.size]
    return [(p, slice(lo, hi)) for p, (lo, hi)
            in enumerate(zip(cuts[:-1], cuts[1:])) if hi > lo]


class SeenIds:
    """The ids a dedup shard admitted, with their minutes (see the module
    docstring).

    Split by the top ``PARTITION_BITS`` bits of the hash into partitions,
    each kept as a few runs sorted by hash with their minutes alongside,
    merged when a run is no bigger than the one after it (a binary
    counter): membership is one ``searchsorted`` per run of the key's
    partition, admitting costs O(log n) amortised per id, and expiry
    filters each run in one vectorised pass. The partitions bound the
    largest merge to about 1/64 of the held ids: with one counter, the
    hundreds of millions of ids an hour's retention holds at 50,000
    events/s would now and then be merged at once, a stall of seconds.
    One array per minute cost a Python loop over every held minute per
    batch, and a year-long backlog holds hundreds of thousands of minutes.

    ``tables`` are ``SEEN_SCHEMA`` chunks as persisted in runner state (any
    order, any chunking); ``admit`` returns the new chunk to persist.
    ``partition_bits``: 0 keeps one counter (``bench/dedup_ids.py``
    compares).
    """

    def __init__(self, tables: list[pa.Table] = (),
                 partition_bits: int = PARTITION_BITS):
        self._starts = _partition_starts(partition_bits)
        #: Per partition: (hashes sorted, their minutes), biggest run first.
        self._parts: list[list[tuple[np.ndarray, np.ndarray]]] = [
            [] for _ in range(1 << partition_bits)]
        tables = [t for t in tables if t.num_rows]
        if tables:
            self._add(np.concatenate([t["minute"].to_numpy() for t in tables]),
                      np.concatenate([t["id_hash"].to_numpy()
                                      for t in tables]))

    def _runs(self):
        return (run for runs in self._parts for run in runs)

    def _add(self, minutes: np.ndarray, hashes: np.ndarray) -> None:
        if hashes.size == 0:
            return
        order = np.argsort(hashes, kind="stable")
        hashes, minutes = hashes[order], np.asarray(minutes, np.int64)[order]
        for p, part in _by_partition(hashes, self._starts):
            runs, run = self._parts[p], (hashes[part], minutes[part])
            while runs and runs[-1][0].size <= run[0].size:
                last = runs.pop()
                merged = np.concatenate([last[0], run[0]])
                order = np.argsort(merged, kind="stable")
                run = (merged[order],
                       np.concatenate([last[1], run[1]])[order])
            runs.append(run)

    def __len__(self) -> int:
        return sum(h.size for h, _ in self._runs())

    def minute_rows(self) -> np.ndarray:
        """The minute of every held id (any order)."""
        return np.concatenate([np.empty(0, np.int64)]
                              + [m for _, m in self._runs()])

    def minutes(self) -> list[int]:
        return np.unique(self.minute_rows()).tolist()

    def _seen(self, hashes: np.ndarray) -> np.ndarray:
        # Sorted keys: NumPy's binary search starts each key where the
        # previous one ended, about twice as fast into tens of millions of
        # held ids as random keys (one random probe per level each).
        order = np.argsort(hashes)
        keys = hashes[order]
        found = np.zeros(keys.size, bool)
        for p, part in _by_partition(keys, self._starts):
            these = keys[part]
            for ids, _ in self._parts[p]:
                pos = np.searchsorted(ids, these)
                pos[pos == ids.size] = 0
                found[part] |= ids[pos] == these
        seen = np.empty(hashes.size, bool)
        seen[order] = found
        return seen

    def admit(self, events: pa.Table, horizon_ms: int
              ) -> tuple[pa.Table, pa.Table, pa.Table]:
        """Split a batch (columns ``counting.DEDUP_COLUMNS`` at least) into
        ``(fresh, late, seen_chunk)``: ``fresh`` events (first copy of their
        id, not late) in ``DEDUP_COLUMNS``; ``late`` events (``ts`` before
        ``horizon_ms``, all copies); ``seen_chunk`` the ids just admitted
        (``SEEN_SCHEMA``), already added to this set."""
        events = events.select(list(counting.DEDUP_COLUMNS))
        is_late = pc.less(events["ts"], horizon_ms)
        late = events.filter(is_late)
        on_time = events.filter(pc.invert(is_late))
        if on_time.num_rows == 0:
            return on_time, late, SEEN_SCHEMA.empty_table()
        unique, hashes = counting.dedup_hashed(
            on_time, sharding.stable_hash(on_time["event_id"]))
        fresh_mask = ~self._seen(hashes)
        fresh = unique.filter(pa.array(fresh_mask))
        minutes = counting.floor_ms(fresh["ts"], schema.MINUTE_MS)
        chunk = pa.table({"minute": minutes,
                          "id_hash": pa.array(hashes[fresh_mask])},
                         schema=SEEN_SCHEMA)
        self._add(chunk["minute"].to_numpy(), chunk["id_hash"].to_numpy())
        return fresh, late, chunk

    def expire(self, horizon_ms: int, batch_ms: int = 0) -> bool:
        """Forget the minutes that ended ``RETENTION_MARGIN_MS`` before
        ``horizon_ms`` (the late horizon of the watermark), but only once
        the oldest of them ended ``batch_ms`` before that: a runner stage
        rewrites its id state after a drop, so it drops in batches.
        Returns whether anything was dropped."""
        horizon_ms -= RETENTION_MARGIN_MS
        oldest = min((int(m.min()) for _, m in self._runs()), default=None)
        if oldest is None or (oldest + schema.MINUTE_MS
                              > horizon_ms - batch_ms):
            return False
        for p, runs in enumerate(self._parts):
            kept = []
            for ids, minutes in runs:
                keep = minutes + schema.MINUTE_MS > horizon_ms
                if keep.any():
                    kept.append((ids[keep], minutes[keep]))
            # Still sorted; re-establish the size order of the counter.
            kept.sort(key=lambda run: -run[0].size)
            self._parts[p] = kept
        return True

    def to_table(self) -> pa.Table:
        """The whole set as one ``SEEN_SCHEMA`` table (for compacted state)."""
        runs = list(self._runs())
        if not runs:
            return SEEN_SCHEMA.empty_table()
        return pa.table({
            "minute": np.concatenate([m for _, m in runs]),
            "id_hash": np.concatenate([h for h, _ in runs])},
            schema=SEEN_SCHEMA)
