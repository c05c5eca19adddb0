"""Streaming de-duplication and lateness, per dedup shard (no Beam).

A batch run de-duplicates over its whole input; a stream cannot keep every
id forever. It keeps the ids of the events it admitted while their minute
can still change a result: until the watermark passes the end of the minute
plus the allowed lateness. An event older than that horizon is *late*: it is
not counted (its windows are final) and goes to the late-events output
instead, so it is never dropped silently.

Ids are kept as 64-bit hashes (``sharding.stable_hash``) in one sorted
NumPy array per minute: membership is a vectorised ``searchsorted`` per
retained minute, and expiring a minute drops its array. Two distinct ids
collide with probability ~n²/2⁶⁵ (n ids retained at once: 1e8 ids give
~3e-4 over the whole retention); a collision would drop one event.

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


class SeenIds:
    """The ids a dedup shard admitted, by minute (see the module docstring).

    ``tables`` are ``SEEN_SCHEMA`` chunks as persisted in runner state (any
    order, any chunking); ``admit`` returns the new chunk to persist.
    """

    def __init__(self, tables: list[pa.Table] = ()):
        self._by_minute: dict[int, np.ndarray] = {}
        for t in tables:
            self._add(t["minute"].to_numpy(), t["id_hash"].to_numpy())

    def _add(self, minutes: np.ndarray, hashes: np.ndarray) -> None:
        for minute in np.unique(minutes):
            new = hashes[minutes == minute]
            old = self._by_minute.get(int(minute))
            merged = new if old is None else np.concatenate([old, new])
            self._by_minute[int(minute)] = np.sort(merged)

    def __len__(self) -> int:
        return sum(a.size for a in self._by_minute.values())

    def minutes(self) -> list[int]:
        return sorted(self._by_minute)

    def _seen(self, hashes: np.ndarray) -> np.ndarray:
        seen = np.zeros(hashes.size, bool)
        for ids in self._by_minute.values():
            pos = np.searchsorted(ids, hashes)
            pos[pos == ids.size] = 0
            seen |= ids[pos] == hashes
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
        unique = counting.dedup_events(on_time)
        hashes = sharding.stable_hash(unique["event_id"])
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
        rewrites its whole id state after a drop, so it drops in batches.
        Returns whether anything was dropped."""
        horizon_ms -= RETENTION_MARGIN_MS
        old = [m for m in self._by_minute if m + schema.MINUTE_MS <= horizon_ms]
        if not old or min(old) + schema.MINUTE_MS > horizon_ms - batch_ms:
            return False
        for m in old:
            del self._by_minute[m]
        return bool(old)

    def to_table(self) -> pa.Table:
        """The whole set as one ``SEEN_SCHEMA`` table (for compacted state)."""
        if not self._by_minute:
            return SEEN_SCHEMA.empty_table()
        minutes = np.concatenate([np.full(a.size, m, np.int64)
                                  for m, a in self._by_minute.items()])
        hashes = np.concatenate(list(self._by_minute.values()))
        return pa.table({"minute": minutes, "id_hash": hashes},
                        schema=SEEN_SCHEMA)
