"""The closed part of open sliding windows, kept between early firings
(no Beam).

An early firing re-ranks every open window its batch changed; for a sliding
window (``1h/1m``) that is every window holding the open minute, all 60 of
them. Ranking each from all its panes again cost what the stage holds, every
second (``bench/early_firing_cost.py``: exact, 20k items a minute, 39 ms with
a minute held and 2.2 s with 45; Count-Min, one event type, 11 ms and 287
ms). But the panes before the open one change only with stragglers and late
events. So the stages keep, per spec, what those closed panes give the open
windows, made once when the open pane moves on, at ``cut`` (the newest pane
then): ``ClosedCounts`` (exact) and ``ClosedMerges`` (sketches). A firing
combines that with the window's panes from ``cut`` on (the tail: one or two
panes), whatever the window's length. A stage drops its cache when a pane
before ``cut`` changes.

Exact: counts only grow while a window is open, so the top K of a window
(closed part ``C`` plus tail ``T``) is among the top K of ``C`` and the
items of ``T``: any other item keeps its count, which K items already reach.
An item of ``T`` outside the top K of ``C`` enters only if ``C(i) + T(i)``
reaches the K-th count of ``C``; ``C(i)`` is at most ``U(i)``, its count in
all cached closed panes, so only the pairs with ``U(i) + T(i)`` at or above
that K-th count look ``C(i)`` up (a binary search in the closed rows, sorted
by type, item and pane, over prefix sums).

Sketches: a window's sketch is the merge of its closed part's merge and its
tail panes. Bounds stay deterministic (merges of valid sketches are valid);
they may be a little wider than one merge of every pane, which the on-time
pane still is.
"""
import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from topk.core import counting, ranking
from topk.core.windows import WindowSpec
from topk.streaming.dedup import NO_WATERMARK

#: Panes a firing adds to the cached closed part before the cache is made
#: again: the open pane, and the next one while the watermark catches up.
TAIL_PANES = 2


def cut_at(newest: int, watermark_ms: int, step_ms: int, now_ms: int
           ) -> int | None:
    """Where a new cache cuts its windows (a pane index): at the first pane
    the stage's watermark has not closed, so that the closed part changes
    only with late events, or at the ``newest`` held pane before the first
    watermark; ``None`` during a catch-up, where the early panes go the long
    way: when more than ``TAIL_PANES`` panes would be left after the cut, or
    the newest pane is that far behind the wall clock ``now_ms`` (a cache
    made after each catch-up firing would cost a full ranking each time)."""
    cut = newest if watermark_ms <= NO_WATERMARK else min(
        newest, watermark_ms // step_ms)
    live = now_ms // step_ms - newest < TAIL_PANES
    return cut if live and newest - cut < TAIL_PANES else None


def stale(cut: int, newest: int) -> bool:
    """Whether a cache cut at ``cut`` is too far behind the ``newest``
    pane to serve."""
    return newest - cut >= TAIL_PANES


def merge_each(parts: list[list]) -> list:
    """The merge of each list of sketches in ``parts`` (one method), in one
    ``merge_ranges`` call where the sketch has it; a list of one is that
    sketch itself. Inputs are never modified."""
    out = [p[0] if len(p) == 1 else None for p in parts]
    todo = [i for i, p in enumerate(parts) if len(p) > 1]
    if not todo:
        return out
    merge_ranges = getattr(type(parts[todo[0]][0]), "merge_ranges", None)
    if merge_ranges:
        flat, ranges = [], []
        for i in todo:
            ranges.append((len(flat), len(flat) + len(parts[i])))
            flat.extend(parts[i])
        merged = merge_ranges(flat, ranges)
    else:
        merged = [type(parts[i][0]).merge_many(parts[i]) for i in todo]
    for i, sketch in zip(todo, merged):
        out[i] = sketch
    return out


@dataclasses.dataclass
class ClosedMerges:
    """Closed parts of the windows holding pane ``cut`` of one spec,
    method and event type: the merge of each window's panes before
    ``cut``, by the window's first pane."""
    cut: int
    merges: dict

    @classmethod
    def build(cls, held: list[tuple[int, object]], cut: int, n: int,
              step: int) -> "ClosedMerges":
        """From ``held`` ``(pane, sketch)`` sorted by pane, for windows of
        ``n`` panes every ``step`` panes."""
        firsts = [w for w in range(cut - n + 1, cut) if w % step == 0]
        parts = {w: [s for p, s in held if w <= p < cut] for w in firsts}
        parts = {w: p for w, p in parts.items() if p}
        return cls(cut, dict(zip(parts, merge_each(list(parts.values())))))

    def advance(self, held: list[tuple[int, object]], cut: int, n: int,
                step: int) -> "ClosedMerges":
        """The closed parts cut at a later ``cut``: each window's cached
        part merged with its held panes from this cut to the new one (a
        merge or two a window, where ``build`` merges every closed pane
        again: at a minute's end, five event types of an hour's panes
        stalled the stage for seconds)."""
        firsts = [w for w in range(cut - n + 1, cut) if w % step == 0]
        parts = {w: ([self.merges[w]] if w in self.merges else [])
                 + [s for p, s in held if max(w, self.cut) <= p < cut]
                 for w in firsts}
        parts = {w: p for w, p in parts.items() if p}
        return ClosedMerges(cut, dict(zip(parts, merge_each(
            list(parts.values())))))

    def windows(self, held: list[tuple[int, object]], wanted: list[int],
                n: int) -> list[tuple[int, object]]:
        """``(first pane, sketch)`` of the windows ``wanted`` (first panes):
        each one's closed part merged with its held panes from ``cut``
        on."""
        parts = [([self.merges[w]] if w in self.merges else [])
                 + [s for p, s in held if max(w, self.cut) <= p < w + n]
                 for w in wanted]
        firsts = [w for w, p in zip(wanted, parts) if p]
        return list(zip(firsts, merge_each([p for p in parts if p])))


def cacheable(spec: WindowSpec, level_ms: int) -> bool:
    """Whether the windows of ``spec`` can keep a closed part: sliding,
    with panes of the stage's kept slice length (``1h/1m``, ``1d/1h``,
    ``30d/1d``; not ``2h/30m``)."""
    return spec.panes_per_window > 1 and spec.step_ms == level_ms


@dataclasses.dataclass
class ClosedCounts:
    """Exact closed parts of the windows of ``spec`` holding pane ``cut``:
    their top K (``top``), and the closed rows to look any item's count up
    (``keys``: ``(type * len(items) + item) * n + pane offset``, sorted;
    ``prefix``: running sums of their counts)."""
    spec: WindowSpec
    k: int
    cut: int
    top: ranking.WindowTopK
    types: pa.Array
    items: pa.Array
    keys: np.ndarray
    prefix: np.ndarray

    @classmethod
    def build(cls, level: pa.Table, spec: WindowSpec, k: int, cut: int
              ) -> "ClosedCounts":
        """From a shard's counts at the spec's step (``SLICE_COUNTS_SCHEMA``,
        unique per key, sorted by slice)."""
        n, step = spec.panes_per_window, spec.step_ms
        lo = cut - n + 1
        rows = counting.slices_between(level, lo * step, cut * step)
        top = ranking.shard_top_k(
            rows, [spec], k,
            window_starts=np.arange(lo, cut, dtype=np.int64) * step)[spec]
        rows = ranking.with_all_types(rows)
        types, items = _sorted_unique(rows["event_type"]), _sorted_unique(
            rows["item_id"])
        keys = _keys(_codes(rows["event_type"], types),
                     _codes(rows["item_id"], items), len(items), n,
                     rows["slice_start"].to_numpy() // step - lo)
        order = np.argsort(keys, kind="stable")
        prefix = np.r_[0, np.cumsum(rows["count"].to_numpy()[order])]
        return cls(spec, k, cut, top, types, items, keys[order], prefix)

    def top_k(self, tail: pa.Table, windows: np.ndarray
              ) -> ranking.WindowTopK:
        """The top K and totals of ``windows`` (pane indices in ``(cut - n,
        cut]``) whose panes from ``cut`` on hold ``tail``
        (``SLICE_COUNTS_SCHEMA``): each window holds all of it."""
        step = self.spec.step_ms
        windows = np.unique(windows)
        tail = ranking.with_all_types(tail).group_by(
            ["event_type", "item_id"]).aggregate([("count", "sum")])
        t_types = tail["event_type"].combine_chunks()
        t_items = tail["item_id"].combine_chunks()
        t_count = tail["count_sum"].to_numpy()
        # Codes into the closed rows' dictionaries, once for every type.
        t_code, i_code = _codes(t_types, self.types), _codes(t_items,
                                                            self.items)
        cands, totals = [], []
        for event_type in _sorted_unique(pa.concat_arrays([
                self.types, t_types])).to_pylist():
            mine = pc.equal(t_types, event_type).to_numpy(
                zero_copy_only=False)
            top = self.top.candidates.filter(pc.equal(
                self.top.candidates["event_type"], event_type))
            total = _per_window(self.top.totals.filter(pc.equal(
                self.top.totals["event_type"], event_type)), "total",
                windows, step) + int(t_count[mine].sum())
            w, item, count = self._type_candidates(
                top, windows, t_items.filter(pa.array(mine)), t_count[mine],
                t_code[mine], i_code[mine])
            held = total > 0
            totals.append(pa.table({
                "event_type": pa.repeat(pa.scalar(event_type),
                                        int(held.sum())),
                "window_start": pa.array(windows[held] * step),
                "total": pa.array(total[held])},
                schema=ranking.TOTALS_SCHEMA))
            cands.append(pa.table({
                "event_type": pa.repeat(pa.scalar(event_type), len(w)),
                "window_start": pa.array(w * step),
                "item_id": item, "count": pa.array(count)},
                schema=ranking.CANDIDATES_SCHEMA))
        return ranking.WindowTopK(
            pa.concat_tables([ranking.CANDIDATES_SCHEMA.empty_table()]
                             + cands),
            pa.concat_tables([ranking.TOTALS_SCHEMA.empty_table()] + totals))

    def _type_candidates(self, top, windows, t_items, t_count, t_code,
                         i_code):
        """``(window, item_id, count)`` of the top K of one event type in
        each of ``windows``: the closed top K (``top``) with the tail added,
        and the tail's items (``t_*``, their codes) that can reach it
        (module docstring)."""
        n, k = self.spec.panes_per_window, self.k
        lo = self.cut - n + 1
        step = self.spec.step_ms
        # The closed top K, with the tail's counts of the same items.
        top_w = top["window_start"].to_numpy() // step
        keep = np.isin(top_w, windows)
        top = top.filter(pa.array(keep))
        top_w = top_w[keep]
        at = pc.index_in(top["item_id"], value_set=t_items).fill_null(
            -1).to_numpy()
        top_count = top["count"].to_numpy() + np.r_[t_count, 0][at]
        # What the K-th count of each window reaches at least: the K-th of
        # its closed part (those K only grow), and the K-th of the tail
        # (every window holds all of it). Tail items whose bound stays
        # below cannot enter.
        rows_per = np.bincount(np.searchsorted(windows, top_w),
                               minlength=len(windows))
        kth = _per_window_min(top_w, top["count"].to_numpy(), windows)
        threshold = np.maximum(
            np.where(rows_per >= k, kth, 0),
            -np.partition(-t_count, k - 1)[k - 1] if len(t_count) >= k
            else 0)
        upper = self._closed_sum(t_code, i_code, 0, n - 1) + t_count
        row, col = np.nonzero(upper[:, None] >= threshold[None, :])
        closed = self._closed_sum(t_code[row], i_code[row],
                                  windows[col] - lo, n - 1)
        w = np.concatenate([top_w, windows[col]])
        item = pa.concat_arrays([top["item_id"].combine_chunks().cast(
            pa.string()), t_items.take(pa.array(row, pa.int64()))])
        count = np.concatenate([top_count, closed + t_count[row]])
        # One row per (window, item), ranked by count, then item_id.
        names = _sorted_unique(item)
        code = _codes(item, names)
        group = np.searchsorted(windows, w)
        _, first = np.unique(group * max(len(names), 1) + code,
                             return_index=True)
        group, code, count, w = group[first], code[first], count[first], w[
            first]
        chosen = ranking.top_k_mask(group, code, count, k, len(windows))
        return (w[chosen], names.take(pa.array(code[chosen])),
                count[chosen])

    def _closed_sum(self, t_code, i_code, first, last) -> np.ndarray:
        """Counts of items (codes, ``-1`` unknown) in the closed panes at
        offsets ``[first, last)`` (arrays or scalars)."""
        out = np.zeros(len(i_code), np.int64)
        known = (t_code >= 0) & (i_code >= 0)
        if not known.any():
            return out
        base = (t_code[known] * len(self.items) + i_code[known]) * (
            self.spec.panes_per_window)
        first = first[known] if np.ndim(first) else first
        out[known] = (self.prefix[np.searchsorted(self.keys, base + last)]
                      - self.prefix[np.searchsorted(self.keys, base + first)])
        return out


def _sorted_unique(values) -> pa.Array:
    values = pc.unique(values)
    return values.take(pc.sort_indices(values))


def _codes(values, dictionary: pa.Array) -> np.ndarray:
    """Index of each value in ``dictionary``, ``-1`` where absent."""
    return pc.index_in(values, value_set=dictionary).fill_null(-1).to_numpy(
        zero_copy_only=False).astype(np.int64)


def _keys(t, i, n_items, n, offset) -> np.ndarray:
    return (t * n_items + i) * n + offset


def _per_window(table: pa.Table, column: str, windows, step) -> np.ndarray:
    """``column`` of ``table`` per window of ``windows`` (0 where absent)."""
    out = np.zeros(len(windows), np.int64)
    w = table["window_start"].to_numpy() // step
    keep = np.isin(w, windows)
    out[np.searchsorted(windows, w[keep])] = table[column].to_numpy()[keep]
    return out


def _per_window_min(w, values, windows) -> np.ndarray:
    out = np.zeros(len(windows), np.int64)
    if len(w):
        out[:] = np.iinfo(np.int64).max
        np.minimum.at(out, np.searchsorted(windows, w), values)
        out[out == np.iinfo(np.int64).max] = 0
    return out
