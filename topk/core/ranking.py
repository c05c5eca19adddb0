"""Exact top-K of windows built from slices, per item shard, and the merge.

Order everywhere: count descending, then ``item_id`` ascending, so ranks are
deterministic under ties. Shards partition items, so the top-K of a window is
the top-K of the union of the shards' top-K lists (docs/architecture.md, decision 3);
``shard_window_top_k`` computes the per-shard lists, ``merge_window_top_k``
the exact global answer.
"""
import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from topk.core import arrow_ipc, counting, schema
from topk.core.windows import WindowSpec

#: Candidates of one shard: (event_type, window_start, item_id, count).
CANDIDATES_SCHEMA = pa.schema([
    pa.field("event_type", pa.string(), nullable=False),
    pa.field("window_start", pa.int64(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("count", pa.int64(), nullable=False),
])
#: Per-shard event totals of each window: (event_type, window_start, total).
TOTALS_SCHEMA = pa.schema([
    pa.field("event_type", pa.string(), nullable=False),
    pa.field("window_start", pa.int64(), nullable=False),
    pa.field("total", pa.int64(), nullable=False),
])


@dataclasses.dataclass
class WindowTopK:
    """Top-K candidates and totals of every window of one spec."""
    candidates: pa.Table  # CANDIDATES_SCHEMA
    totals: pa.Table  # TOTALS_SCHEMA

    @classmethod
    def empty(cls) -> "WindowTopK":
        return cls(CANDIDATES_SCHEMA.empty_table(), TOTALS_SCHEMA.empty_table())


#: Runs of windows: a row stands for ``windows`` consecutive windows of one
#: spec from ``window_start`` on, each with the same item and count (or
#: total). A sliding window's count of an item changes only where one of the
#: item's panes enters or leaves it, so on sparse data the runs of a shard's
#: top-K are about ``panes_per_window`` times fewer than its (window, item)
#: pairs; this is what a shard sends to the merge (``RankWindows``).
RUNS_FIELD = pa.field("windows", pa.int32(), nullable=False)
CANDIDATE_RUNS_SCHEMA = CANDIDATES_SCHEMA.append(RUNS_FIELD)
TOTAL_RUNS_SCHEMA = TOTALS_SCHEMA.append(RUNS_FIELD)


@dataclasses.dataclass
class WindowTopKRuns:
    """``WindowTopK`` with runs of windows folded (``RUNS_FIELD``)."""
    candidates: pa.Table  # CANDIDATE_RUNS_SCHEMA
    totals: pa.Table  # TOTAL_RUNS_SCHEMA
    step_ms: int

    def __reduce__(self):
        # Runs cross a shuffle, which a local runner holds whole and copies
        # while handing it to the worker: a year of sparse runs pickled to
        # ~540 MB there, most of a batch run's peak. LZ4-compressed Arrow
        # IPC instead of pickled buffers: that run's peak went from 2,095
        # to 1,636 MiB, and it ran 10% faster (A/B medians). Small runs
        # stay plain: the one rule for tables crossing a runner.
        return (_runs_from_ipc, (
            arrow_ipc.compact_bytes(self.candidates),
            arrow_ipc.compact_bytes(self.totals), self.step_ms))

    def expand(self) -> WindowTopK:
        """One row per window again."""
        return WindowTopK(_expand_runs(self.candidates, self.step_ms,
                                       CANDIDATES_SCHEMA),
                          _expand_runs(self.totals, self.step_ms,
                                       TOTALS_SCHEMA))


def _runs_from_ipc(candidates: bytes, totals: bytes, step_ms: int
                   ) -> "WindowTopKRuns":
    return WindowTopKRuns(arrow_ipc.from_bytes(candidates),
                          arrow_ipc.from_bytes(totals), step_ms)


def _expand_runs(runs: pa.Table, step_ms: int, out_schema: pa.Schema):
    length = runs["windows"].to_numpy().astype(np.int64)
    if len(length) and length.max() == 1:
        return runs.select(out_schema.names)
    row = np.repeat(np.arange(len(length)), length)
    offset = run_offsets(length)
    out = runs.select(out_schema.names).take(pa.array(row))
    start = out["window_start"].to_numpy() + offset * step_ms
    return out.set_column(out_schema.get_field_index("window_start"),
                          out_schema.field("window_start"), pa.array(start))


def run_offsets(lengths: np.ndarray) -> np.ndarray:
    """``0..n-1`` for each run of ``n`` in ``lengths``, concatenated: the
    position of every expanded element within its run."""
    return np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths,
                                                lengths)


def _runs(window, key, value):
    """Fold consecutive windows with the same ``key`` and ``value``:
    ``(first window, run length, key, value)``, sorted by key then window."""
    order = np.lexsort((window, key))
    w, k, v = window[order], key[order], value[order]
    new = np.r_[True, (k[1:] != k[:-1]) | (w[1:] != w[:-1] + 1)
                | (v[1:] != v[:-1])] if len(w) else np.zeros(0, bool)
    first = np.flatnonzero(new)
    return (w[first], np.diff(np.r_[first, len(w)]).astype(np.int32),
            k[first], v[first])


def with_all_types(counts: pa.Table) -> pa.Table:
    """Append ``ALL_TYPES`` rows: the counts summed over event types."""
    if counts.num_rows == 0:
        return counts
    summed = counts.group_by(["slice_start", "item_id"]).aggregate(
        [("count", "sum")])
    all_rows = pa.table({
        "event_type": pa.array(np.full(summed.num_rows, schema.ALL_TYPES)),
        "slice_start": summed["slice_start"],
        "item_id": summed["item_id"],
        "count": summed["count_sum"],
    }, schema=schema.SLICE_COUNTS_SCHEMA)
    return pa.concat_tables([counts.cast(schema.SLICE_COUNTS_SCHEMA), all_rows])


def shard_window_top_k(counts: pa.Table, spec: WindowSpec, k: int) -> WindowTopK:
    """Per-window top-K of one shard's exact counts, for one spec, ranking
    exactly the event types present in ``counts`` (see ``shard_top_k``)."""
    return shard_top_k(counts, [spec], k, all_types=False)[spec]


def shard_top_k(counts: pa.Table, specs: list[WindowSpec], k: int,
                all_types: bool = True, window_starts: np.ndarray | None = None
                ) -> dict[WindowSpec, WindowTopK]:
    """Per-window top-K candidates and totals of one item shard.

    ``counts`` holds exact partials (``SLICE_COUNTS_SCHEMA``) of any slice
    length dividing every spec's step. With ``all_types``, windows are also
    ranked over all event types (``event_type = ALL_TYPES``). Every window
    containing at least one counted event is reported, as in Beam's
    windowing.

    With ``window_starts`` (epoch ms), only those windows are ranked: a
    stream firing wants a few windows of counts that overlap many more.

    The concatenation of what ``iter_shard_top_k`` yields; a caller that
    does not need every window at once should iterate that instead.
    """
    _check_k(k)
    parts = {spec: [] for spec in specs}
    for spec, _, top in iter_shard_top_k(counts, specs, k, all_types,
                                         window_starts):
        parts[spec].append(top)
    return {spec: WindowTopK(
        pa.concat_tables([p.candidates for p in tops]),
        pa.concat_tables([p.totals for p in tops])) if tops
        else WindowTopK.empty() for spec, tops in parts.items()}


#: Windows of one output chunk: ``iter_shard_top_k`` yields a spec's
#: windows a chunk at a time, chunk ``c`` holding the windows whose index
#: (``window_start // step``) lies in ``[c * WINDOWS_PER_CHUNK, (c + 1) *
#: WINDOWS_PER_CHUNK)``, so no consumer holds more than a chunk's windows
#: (a day of ``1m`` or ``1h/1m`` windows, 60 days of ``1h`` or ``1d/1h``).
WINDOWS_PER_CHUNK = 1440
#: (window, item) pairs one step of the sliding windows expands at most: a
#: chunk whose windows hold more is ranked in several steps.
PAIRS_PER_STEP = 2_000_000


def chunk_of(spec: WindowSpec, window_start_ms):
    """The output chunk (``iter_shard_top_k``) of windows starting at
    ``window_start_ms`` (a scalar or a NumPy array)."""
    return window_start_ms // (spec.step_ms * WINDOWS_PER_CHUNK)


def iter_shard_top_k(counts: pa.Table, specs: list[WindowSpec], k: int,
                     all_types: bool = True,
                     window_starts: np.ndarray | None = None,
                     runs: bool = False):
    """``shard_top_k`` a piece at a time: yields ``(spec, chunk,
    WindowTopK)`` for every spec, event type (then ``ALL_TYPES``) and
    output chunk (``chunk_of``) holding a window, chunks in time order.
    With ``runs``, ``WindowTopKRuns`` instead (``RUNS_FIELD``).

    Memory beyond the encoded counts is bounded by one chunk, never by the
    span of the data: tumbling windows are runs of the rows sorted by pane;
    sliding windows walk time over sparse per-item count segments (see
    ``_count_segments``), never over a dense (pane x item) block.

    Items are dictionary-encoded once, in ``item_id`` order, so everything
    after that is integer NumPy work and ties break by the code.
    """
    _check_k(k)
    if counts.num_rows == 0:
        return
    panes = _PaneLevels(counts)
    for spec in specs:
        yield from panes.iter_top_k(spec, k, all_types, window_starts, runs)


class _PaneLevels:
    """One shard's counts, encoded, rolled up to each pane length once."""

    def __init__(self, counts: pa.Table):
        items = pc.unique(counts["item_id"])
        self.items = items.take(pc.sort_indices(items))
        types = pc.unique(counts["event_type"])
        self.types = types.take(pc.sort_indices(types))
        type_code = pc.index_in(counts["event_type"], value_set=self.types)
        item_code = pc.index_in(counts["item_id"], value_set=self.items)
        start = counts["slice_start"].to_numpy()
        self._levels = {}
        self._finest = (type_code.to_numpy(), start, item_code.to_numpy(),
                        counts["count"].to_numpy())

    def at(self, step_ms: int):
        """Rows ``(type, pane_index, item, count)`` unique per key, for panes
        of ``step_ms``, rolled up from the coarsest cached level dividing
        it (1m -> 1h -> 1d -> 30d each read the previous level)."""
        if step_ms in self._levels:
            return self._levels[step_ms]
        source_step, source = None, None
        for cached, rows in self._levels.items():
            if step_ms % cached == 0 and (source_step is None
                                          or cached > source_step):
                source_step, source = cached, rows
        if source is None:
            t, start, item, count = self._finest
            pane = start // step_ms
        else:
            t, pane, item, count = source
            pane = pane // (step_ms // source_step)
        rows = counting.sum_coded_rows((t, pane, item), count,
                                       len(self.items))
        self._levels[step_ms] = rows
        return rows

    def iter_top_k(self, spec: WindowSpec, k: int, all_types: bool,
                   window_starts: np.ndarray | None = None,
                   runs: bool = False):
        """Yields ``(spec, chunk, WindowTopK)`` per event type and chunk
        (``WindowTopKRuns`` with ``runs``)."""
        t, pane, item, count = self.at(spec.step_ms)
        n = spec.panes_per_window
        only = None
        if window_starts is not None:
            # Window indexes in panes; only the rows of their panes count.
            only = np.unique(np.asarray(window_starts, np.int64)
                             // spec.step_ms)
            if n == 1:
                keep = np.isin(pane, only)
            else:
                keep = (pane >= only[0]) & (pane < only[-1] + n) if len(
                    only) else np.zeros(len(pane), bool)
            t, pane, item, count = t[keep], pane[keep], item[keep], count[keep]
        for code in range(len(self.types)):
            mask = t == code
            yield from self._rank(spec, k, self.types[code].as_py(),
                                  pane[mask], item[mask], count[mask], only,
                                  runs)
        if all_types:
            _, all_pane, all_item, all_count = counting.sum_coded_rows(
                (np.zeros_like(t), pane, item), count, len(self.items))
            yield from self._rank(spec, k, schema.ALL_TYPES, all_pane,
                                  all_item, all_count, only, runs)

    def _rank(self, spec, k, event_type, pane, item, count, only=None,
              runs=False):
        # Rows are unique per (pane, item) and sorted by (pane, item).
        if spec.panes_per_window == 1:
            pieces = _tumbling_chunks(pane, item, count, k, only)
        else:
            pieces = _sliding_chunks(pane, item, count,
                                     spec.panes_per_window, k, only)
        for chunk, (start, code, value, win, total) in pieces:
            cand_cols, total_cols = {}, {}
            if runs:
                start, length, code, value = _runs(start, code, value)
                cand_cols["windows"] = pa.array(length)
                win, length, _, total = _runs(
                    win, np.zeros(len(win), np.int8), total)
                total_cols["windows"] = pa.array(length)
            cands = pa.table({
                "event_type": _repeat(event_type, len(code)),
                "window_start": pa.array(start * spec.step_ms),
                "item_id": self.items.take(pa.array(code)),
                "count": pa.array(value), **cand_cols,
            }, schema=CANDIDATE_RUNS_SCHEMA if runs else CANDIDATES_SCHEMA)
            totals = pa.table({
                "event_type": _repeat(event_type, len(win)),
                "window_start": pa.array(win * spec.step_ms),
                "total": pa.array(total), **total_cols,
            }, schema=TOTAL_RUNS_SCHEMA if runs else TOTALS_SCHEMA)
            yield spec, int(chunk), (
                WindowTopKRuns(cands, totals, spec.step_ms) if runs
                else WindowTopK(cands, totals))


def _repeat(value: str | None, n: int) -> pa.Array:
    """``n`` copies of a string (or nulls), built without a Python list."""
    return pa.repeat(pa.scalar(value, pa.string()), n)


def rank_in_groups(group: np.ndarray, value: np.ndarray, item: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Rows (non-negative integer ``group``, ``value`` and ``item`` codes)
    ordered by group, then value descending, then item: ``(order, rank)``,
    ``rank`` being each ordered row's 0-based place in its group."""
    if len(group) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    group = group.astype(np.int64, copy=False)
    top, width = int(value.max()) + 1, int(item.max()) + 1
    if (int(group.max()) + 1) * top * width < 2**62:
        # One int64 key (group, then value desc, then item) sorts faster
        # than three.
        order = np.argsort((group * top + (top - 1 - value)) * width + item,
                           kind="stable")
    else:
        order = np.lexsort((item, -value, group))
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    return order, np.arange(len(g)) - np.repeat(starts, np.diff(
        np.r_[starts, len(g)]))


def top_k_mask(group, item, value, k, n_groups):
    """Mask of the rows in the top ``k`` of their group (``group`` in
    ``0..n_groups-1``) by value desc, then item asc. Only groups with more
    than ``k`` rows are sorted; the rows of the others are all kept."""
    big = np.bincount(group, minlength=n_groups) > k
    keep = ~big[group]
    if not big.any():
        return keep
    idx = np.flatnonzero(~keep)
    order, rank = rank_in_groups(group[idx], value[idx], item[idx])
    keep[idx[order[rank < k]]] = True
    return keep


def _chunk_bounds(chunk_of_row):
    """``(chunk, lo, hi)`` runs of a sorted chunk column."""
    starts = np.flatnonzero(np.r_[True, chunk_of_row[1:] != chunk_of_row[:-1]])
    return zip(chunk_of_row[starts], starts, np.r_[starts[1:], len(chunk_of_row)])


def _tumbling_chunks(pane, item, count, k, only=None):
    """Rows unique per (pane, item), sorted by pane -> per output chunk:
    (window, item, count) of every window's top k, windows and totals."""
    if only is not None:
        keep = np.isin(pane, only)
        pane, item, count = pane[keep], item[keep], count[keep]
    if len(pane) == 0:
        return
    for chunk, lo, hi in _chunk_bounds(pane // WINDOWS_PER_CHUNK):
        p, i, c = pane[lo:hi], item[lo:hi], count[lo:hi]
        starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])
        group = np.repeat(np.arange(len(starts)),
                          np.diff(np.r_[starts, len(p)]))
        keep = top_k_mask(group, i, c, k, len(starts))
        yield chunk, (p[keep], i[keep], c[keep], p[starts],
                      np.add.reduceat(c, starts))


def _count_segments(pane, item, count, n):
    """The sliding windows of ``n`` panes, as sparse per-item segments.

    An item's count in window ``w`` (panes ``[w, w + n)``) changes only
    where one of its panes ``p`` enters (``w = p - n + 1``: + count) or
    leaves (``w = p + 1``: - count). Sorting those changes by (item, w)
    and summing them gives, for each item, runs of windows ``[start,
    end)`` where its count is a constant ``value``; an item's changes sum
    to zero, so one running sum over all items serves. Returns the runs
    with a non-zero value, sorted by ``start``: ``(start, end, item,
    value)``. A window holding the item lies between the entry and the
    exit of one of its panes, so every run is at most ``n`` windows long.
    """
    lo = int(pane.min()) - (n - 1)
    width = int(pane.max()) + 2 - lo
    if (int(item.max()) + 1) * width < 2**62:
        # One int64 key per change, (item, position), sorted and split
        # back: about half the peak memory of sorting positions and items
        # apart (a day of 20M events ranks ~4M rows per event type here).
        base = item.astype(np.int64) * width + (pane - lo)
        key = np.concatenate([base - (n - 1), base + 1])
        del base
        order = np.argsort(key, kind="stable")
        key = key[order]
        value = np.concatenate([count, -count])[order]
        del order
        np.cumsum(value, out=value)
        who, pos = np.divmod(key, width)
        del key
        pos += lo
    else:
        pos = np.concatenate([pane - (n - 1), pane + 1])
        who = np.concatenate([item, item]).astype(np.int64)
        order = np.lexsort((pos, who))
        pos, who = pos[order], who[order]
        value = np.cumsum(np.concatenate([count, -count])[order])
    keep = (who[1:] == who[:-1]) & (pos[1:] > pos[:-1]) & (value[:-1] != 0)
    start, end = pos[:-1][keep], pos[1:][keep]
    del pos
    who, value = who[:-1][keep], value[:-1][keep]
    del keep
    order = np.argsort(start, kind="stable")
    # One column at a time: each unsorted one is freed as it is replaced.
    start, end = start[order], end[order]
    who, value = who[order], value[order]
    return start, end, who, value


def _sliding_chunks(pane, item, count, n, k, only=None):
    """Rows unique per (pane, item), sorted by pane -> per output chunk:
    (window, item, count) of every window's top k, windows and totals.

    Walks the chunks in time order. A chunk's windows are ranked over the
    count segments (``_count_segments``) that reach them, expanded to
    (window, item, count) pairs: one per item active in a window, at most
    ``PAIRS_PER_STEP`` at a time. Window totals come from running sums of
    the pane totals."""
    if len(pane) == 0:
        return
    seg_start, seg_end, seg_item, seg_value = _count_segments(
        pane, item, count, n)
    first = np.flatnonzero(np.r_[True, pane[1:] != pane[:-1]])
    panes = pane[first]
    running = np.r_[0, np.cumsum(np.add.reduceat(count, first))]
    if only is None:
        # Chunks holding a window: those of the windows each pane is in.
        lo = (panes - (n - 1)) // WINDOWS_PER_CHUNK
        hi = panes // WINDOWS_PER_CHUNK
        span = hi - lo + 1
        chunks = np.unique(np.repeat(hi, span) - (
            run_offsets(span)))
        windows_of = (lambda c: np.arange(c * WINDOWS_PER_CHUNK,
                                          (c + 1) * WINDOWS_PER_CHUNK))
    else:
        chunk_of_window = only // WINDOWS_PER_CHUNK
        chunks = np.unique(chunk_of_window)
        windows_of = (lambda c: only[chunk_of_window == c])
    for chunk in chunks:
        ws = windows_of(chunk)
        parts = list(_sliding_step(ws, seg_start, seg_end, seg_item,
                                   seg_value, n, k))
        if not parts:
            continue
        w, i, v, win = (np.concatenate(col) for col in zip(*parts))
        total = (running[np.searchsorted(panes, win + n)]
                 - running[np.searchsorted(panes, win)])
        yield chunk, (w, i, v, win, total)


def _sliding_step(ws, seg_start, seg_end, seg_item, seg_value, n, k):
    """Top-k pairs ``(window, item, count)`` and the windows holding an
    event, among the sorted window indexes ``ws``, in pieces of at most
    ``PAIRS_PER_STEP`` pairs."""
    a = np.searchsorted(seg_start, ws[0] - (n - 1))
    b = np.searchsorted(seg_start, ws[-1], side="right")
    if a == b:
        return
    start, end = seg_start[a:b], seg_end[a:b]
    lo, hi = np.searchsorted(ws, start), np.searchsorted(ws, end)
    # Pairs per window (a difference array), to cut the windows into steps.
    active = np.cumsum(np.bincount(lo, minlength=len(ws) + 1)
                       - np.bincount(hi, minlength=len(ws) + 1))[:-1]
    cum = np.cumsum(active)
    cuts = np.unique(np.r_[0, np.searchsorted(
        cum, np.arange(PAIRS_PER_STEP, cum[-1], PAIRS_PER_STEP),
        side="right"), len(ws)])
    for w0, w1 in zip(cuts[:-1], cuts[1:]):
        w0 = max(int(w0), 0)
        if w1 <= w0:
            continue
        # Segments reaching windows ws[w0:w1], clipped to them.
        s_lo, s_hi = np.clip(lo, w0, w1), np.clip(hi, w0, w1)
        size = s_hi - s_lo
        has = np.flatnonzero(size > 0)
        if len(has) == 0:
            continue
        size, s_lo = size[has], s_lo[has]
        windows = ws[w0:w1][active[w0:w1] > 0]
        if size.sum() > PRUNE_ITEMS_PER_WINDOW * k * (w1 - w0):
            # Many items per window: drop the segments that cannot reach
            # the top k of any window they cover first.
            keep = _reachable(s_lo - w0, size, seg_item[a:b][has],
                              seg_value[a:b][has], w1 - w0, k)
            has, size, s_lo = has[keep], size[keep], s_lo[keep]
        rep = np.repeat(has, size)
        where = np.repeat(s_lo - w0, size) + (
            run_offsets(size))
        it, val = seg_item[a:b][rep], seg_value[a:b][rep]
        keep = top_k_mask(where, it, val, k, w1 - w0)
        yield ws[w0:w1][where[keep]], it[keep], val[keep], windows


#: Pruning (``_reachable``) starts when a step's windows hold more than this
#: many items per window and per unit of k on average.
PRUNE_ITEMS_PER_WINDOW = 4


def _reachable(first, size, item, value, n_windows, k):
    """Mask of the segments (windows ``[first, first + size)`` of
    ``0..n_windows-1``, constant ``value`` of ``item``) that may be in the
    top k of some window they cover.

    The k-th largest count of window ``w`` is at least ``bound[w]``, the
    k-th largest among any subset of items: here the 2k items with the
    largest count x windows. A segment whose value is below the bound of
    every window it covers ranks below k items there, whatever the ties.
    """
    mass = np.bincount(item, weights=value * size)
    subset = np.argsort(-mass, kind="stable")[:2 * k]
    column = np.full(len(mass), -1)
    column[subset] = np.arange(len(subset))
    mine = np.flatnonzero(column[item] >= 0)
    grid = np.zeros((n_windows, len(subset)), np.int64)
    sz = size[mine]
    rows = np.repeat(first[mine], sz) + (
        run_offsets(sz))
    grid[rows, np.repeat(column[item[mine]], sz)] = np.repeat(value[mine], sz)
    if len(subset) < k:
        return np.ones(len(first), bool)
    bound = -np.partition(-grid, k - 1, axis=1)[:, k - 1]
    # Minimum of the bound over each segment's windows: a sparse table
    # of minima over power-of-two runs, two lookups per segment.
    level = np.floor(np.log2(size)).astype(np.int64)
    table = [bound]
    while (1 << len(table)) <= size.max():
        half = 1 << (len(table) - 1)
        prev = table[-1]
        table.append(np.minimum(prev[:-half], prev[half:]) if len(prev) > half
                     else prev[:0])
    lowest = np.empty(len(first), np.int64)
    for lv in np.unique(level):
        sel = level == lv
        run = table[lv]
        lowest[sel] = np.minimum(run[first[sel]],
                                 run[first[sel] + size[sel] - (1 << lv)])
    return value >= lowest


def _sorted_codes(*columns) -> tuple[pa.Array, list[np.ndarray]]:
    """The sorted distinct values of string ``columns`` and each column's
    codes into them: codes compare as the strings do, so integer sorts
    give the string order."""
    values = pc.unique(pa.chunked_array(
        [chunk for c in columns for chunk in c.chunks], pa.string()))
    values = values.take(pc.sort_indices(values))
    return values, [pc.index_in(c, value_set=values).to_numpy()
                    for c in columns]


def merge_window_top_k(parts: list[WindowTopK], k: int) -> pa.Table:
    """Merge per-shard results into the exact ranked top-K of every window.

    Returns (event_type, window_start, rank, item_id, count, window_total),
    sorted by event_type, window_start, rank (count descending, then
    ``item_id`` ascending).
    """
    _check_k(k)
    cands = pa.concat_tables([p.candidates for p in parts]) if parts else (
        CANDIDATES_SCHEMA.empty_table())
    totals = pa.concat_tables([p.totals for p in parts]) if parts else (
        TOTALS_SCHEMA.empty_table())
    # Strings and window starts become integer codes in their own order,
    # so one int64 sort ranks every window: a multi-column sort over the
    # strings took most of a batch run's merge.
    types, (cand_type, total_type) = _sorted_codes(cands["event_type"],
                                                   totals["event_type"])
    items, (item,) = _sorted_codes(cands["item_id"])
    cand_start = cands["window_start"].to_numpy()
    total_start = totals["window_start"].to_numpy()
    starts = np.unique(np.concatenate([cand_start, total_start]))
    group = (cand_type.astype(np.int64) * len(starts)
             + np.searchsorted(starts, cand_start))
    window_total = np.zeros(len(types) * len(starts), np.int64)
    np.add.at(window_total, total_type.astype(np.int64) * len(starts)
              + np.searchsorted(starts, total_start),
              totals["total"].to_numpy())
    count = cands["count"].to_numpy()
    order, rank = rank_in_groups(group, count, item)
    keep = order[rank < k]
    return pa.table({
        "event_type": types.take(pa.array(cand_type[keep])),
        "window_start": pa.array(cand_start[keep], pa.int64()),
        "rank": pa.array(rank[rank < k] + 1, pa.int32()),
        "item_id": items.take(pa.array(item[keep])),
        "count": pa.array(count[keep], pa.int64()),
        "window_total": pa.array(window_total[group[keep]], pa.int64()),
    })


def to_ranked_windows(merged: pa.Table, spec: WindowSpec, *,
                      method: str = "exact", pane_timing: str = "batch",
                      pane_index: int = 0, source: str = "batch",
                      emitted_at_ms: int, lower: pa.Array | None = None,
                      upper: pa.Array | None = None,
                      guaranteed: pa.Array | None = None) -> pa.Table:
    """Shape ``merge_window_top_k`` output as the ``ranked_windows`` table.

    Exact counts are their own bounds and their ranks are the true top-K,
    so without ``lower``/``upper`` every row is ``guaranteed``. With
    bounds (a sketch's rows), pass the sketch's flags as ``guaranteed``;
    if they are missing, no row claims to be guaranteed (a flag is never
    set without proof)."""
    n = merged.num_rows
    start = merged["window_start"]
    if guaranteed is None:
        guaranteed = pa.array(np.full(n, lower is None and upper is None))
    return pa.table({
        "window_start": start.cast(pa.int64()).cast(schema.TIMESTAMP),
        "window_end": pc.add(start, spec.length_ms).cast(schema.TIMESTAMP),
        "window_length": _repeat(spec.length_name, n),
        "slide": _repeat(spec.slide_name, n),
        "method": _repeat(method, n),
        "event_type": merged["event_type"],
        "rank": merged["rank"],
        "item_id": merged["item_id"],
        "count": merged["count"],
        "lower_bound": merged["count"] if lower is None else lower,
        "upper_bound": merged["count"] if upper is None else upper,
        "guaranteed": guaranteed,
        "window_total": merged["window_total"],
        "pane_timing": _repeat(pane_timing, n),
        "pane_index": pa.array(np.full(n, pane_index, np.int32)),
        "source": _repeat(source, n),
        "emitted_at": pa.array(np.full(n, emitted_at_ms, np.int64)).cast(
            schema.TIMESTAMP),
        "input_watermark": pa.nulls(n, schema.TIMESTAMP),
    }, schema=schema.RANKED_WINDOWS_SCHEMA)


def with_input_watermark(rows: pa.Table, watermark_ms: int | None
                         ) -> pa.Table:
    """``ranked_windows`` rows of one stream firing with its
    ``input_watermark`` (epoch ms; ``None``: no watermark yet, null)."""
    column = rows.schema.get_field_index("input_watermark")
    value = pa.scalar(watermark_ms, pa.int64()).cast(schema.TIMESTAMP)
    return rows.set_column(column, rows.schema.field(column),
                           pa.repeat(value, rows.num_rows))


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError("k must be at least 1")
