"""The top K of open windows, kept between early firings (no Beam).

An early firing re-ranks every open window its batch changed: the open
``1h`` window, and the 60 ``1h/1m`` windows holding the open minute. Ranking
them reads all their rows: at 50k items a minute, at an hour's half, ~780k
(type, item) rows in the open hour (~600 ms a firing), and for the sliding
hour a cached top K of the closed minutes merged with every item of the
open minute (~280 ms), all for a second's batch of 1.7k rows
(``bench/early_firing_cost.py``, three event types).

Counts only grow while a window is open (weights are positive), so after a
batch a window's top K of a type is among its previous top K and the items
the batch changed: any other item kept its count, and each of the previous
K still ranks above it (count, then ``item_id``). ``OpenTops`` keeps, per
open window of one spec, the items of its last top K (every type and
``ALL_TYPES``), the items changed since, and the window's totals. A firing
ranks the windows from their rows of those items only, one ranking for all
of them. The totals follow the batches, since the rows ranked are no longer
all the window's.
"""
import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from topk.core import counting, ranking, schema
from topk.core.windows import WindowSpec


@dataclasses.dataclass
class _Kept:
    #: ``item_id`` arrays: the window's last top K (every type), then of
    #: the partials absorbed since.
    items: list
    #: event type -> the window's total (``ALL_TYPES``'s is their sum).
    totals: dict


class OpenTops:
    """The kept top K of the open windows of one spec, by window start."""

    def __init__(self, spec: WindowSpec, k: int):
        self.spec = spec
        self.k = k
        self.windows: dict[int, _Kept] = {}

    def keep(self, top: ranking.WindowTopK, starts: np.ndarray) -> None:
        """Keep windows ``starts`` from their top K ranked from all their
        rows (``top``, which may hold other windows too)."""
        for start, cands in _by_window(top.candidates, starts):
            self.windows[start] = _Kept(cands["item_id"].chunks, {})
        for start, totals in _by_window(top.totals, starts):
            self.windows[start].totals = {
                t: n for t, n in zip(totals["event_type"].to_pylist(),
                                     totals["total"].to_pylist())
                if t != schema.ALL_TYPES}

    def absorb(self, partials: pa.Table) -> None:
        """Count ``partials`` (``SLICE_COUNTS_SCHEMA``) that the level's
        rows have absorbed, in every kept window they fall in."""
        if partials.num_rows == 0 or not self.windows:
            return
        slices = partials["slice_start"].to_numpy()
        count = partials["count"].to_numpy()
        types = pc.unique(partials["event_type"])
        code = pc.index_in(partials["event_type"], value_set=types).to_numpy()
        names = types.to_pylist()
        for start, kept in self.windows.items():
            inside = (slices >= start) & (slices < start + self.spec.length_ms)
            if not inside.any():
                continue
            part = partials if inside.all() else partials.filter(
                pa.array(inside))
            kept.items.extend(part["item_id"].chunks)
            for c, event_type in enumerate(names):
                added = int(count[inside & (code == c)].sum())
                kept.totals[event_type] = kept.totals.get(event_type,
                                                          0) + added

    def top_k(self, level: pa.Table, starts: np.ndarray
              ) -> ranking.WindowTopK:
        """The top K and totals of the kept windows ``starts`` now, from the
        spec's level of counts (``SLICE_COUNTS_SCHEMA``, sorted by slice):
        only the rows of the kept and changed items are ranked."""
        kept = [self.windows[s] for s in starts.tolist()]
        candidates = pc.unique(pa.chunked_array(
            [a for w in kept for a in w.items], pa.string()))
        rows = counting.slices_between(level, int(starts.min()),
                                       int(starts.max()) + self.spec.length_ms)
        rows = rows.filter(pc.is_in(rows["item_id"], value_set=candidates))
        top = ranking.shard_top_k(rows, [self.spec], self.k,
                                  window_starts=starts)[self.spec]
        for w in kept:
            w.items = []
        for start, cands in _by_window(top.candidates, starts):
            self.windows[start].items = cands["item_id"].chunks
        event_type, window_start, total = [], [], []
        for start, w in zip(starts.tolist(), kept):
            totals = {**w.totals, schema.ALL_TYPES: sum(w.totals.values())}
            for name in sorted(totals):
                event_type.append(name)
                window_start.append(start)
                total.append(totals[name])
        return ranking.WindowTopK(top.candidates, pa.table({
            "event_type": pa.array(event_type, pa.string()),
            "window_start": pa.array(window_start, pa.int64()),
            "total": pa.array(total, pa.int64())},
            schema=ranking.TOTALS_SCHEMA))

    def expire(self, watermark_ms: int) -> None:
        """Forget the windows the watermark closed."""
        for start in [s for s in self.windows
                      if s + self.spec.length_ms <= watermark_ms]:
            del self.windows[start]


def _by_window(table: pa.Table, starts: np.ndarray):
    """``(start, rows)`` of ``table`` for each window of ``starts`` holding
    rows (one sort, then zero-copy slices)."""
    window = table["window_start"].to_numpy()
    order = np.argsort(window, kind="stable")
    window = window[order]
    table = table.take(pa.array(order))
    wanted = np.unique(starts)
    lo = np.searchsorted(window, wanted)
    hi = np.searchsorted(window, wanted, side="right")
    for start, a, b in zip(wanted.tolist(), lo.tolist(), hi.tolist()):
        if b > a:
            yield start, table.slice(a, b - a)
