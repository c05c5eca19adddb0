"""Exact top-K of windows built from slices, per item shard, and the merge.

Order everywhere: count descending, then ``item_id`` ascending, so ranks are
deterministic under ties. Shards partition items, so the top-K of a window is
the top-K of the union of the shards' top-K lists (DESIGN.md decision 3);
``shard_window_top_k`` computes the per-shard lists, ``merge_window_top_k``
the exact global answer.
"""
import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from topk.core import schema
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

    Items are dictionary-encoded once, in ``item_id`` order, so everything
    after that is integer NumPy work and ties break by the code.
    """
    _check_k(k)
    if counts.num_rows == 0:
        return {spec: WindowTopK.empty() for spec in specs}
    panes = _PaneLevels(counts)
    return {spec: panes.top_k(spec, k, all_types, window_starts)
            for spec in specs}


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
        rows = _sum_rows((t, pane, item), count, len(self.items))
        self._levels[step_ms] = rows
        return rows

    def top_k(self, spec: WindowSpec, k: int, all_types: bool,
              window_starts: np.ndarray | None = None) -> WindowTopK:
        t, pane, item, count = self.at(spec.step_ms)
        only = None
        if window_starts is not None:
            # Window indexes in panes; for tumbling windows also a row
            # filter (a window is one pane).
            only = np.unique(np.asarray(window_starts, np.int64)
                             // spec.step_ms)
            if spec.panes_per_window == 1:
                keep = np.isin(pane, only)
                t, pane, item, count = t[keep], pane[keep], item[keep], count[keep]
        groups = [(self.types[int(code)].as_py(), t == code)
                  for code in range(len(self.types))]
        parts = []
        for name, mask in groups:
            parts.append(self._rank(spec, k, name, pane[mask], item[mask],
                                    count[mask], only))
        if all_types:
            _, all_pane, all_item, all_count = _sum_rows(
                (np.zeros_like(t), pane, item), count, len(self.items))
            parts.append(self._rank(spec, k, schema.ALL_TYPES, all_pane,
                                    all_item, all_count, only))
        return WindowTopK(
            pa.concat_tables([p.candidates for p in parts]),
            pa.concat_tables([p.totals for p in parts]))

    def _rank(self, spec, k, event_type, pane, item, count,
              only=None) -> WindowTopK:
        if spec.panes_per_window == 1:
            start, code, value, win, total = _tumbling_top_k(pane, item, count, k)
        else:
            start, code, value, win, total = _sliding_top_k(
                pane, item, count, len(self.items), spec.panes_per_window, k,
                only)
        cands = pa.table({
            "event_type": pa.array([event_type] * len(code), pa.string()),
            "window_start": pa.array(start * spec.step_ms),
            "item_id": self.items.take(pa.array(code)),
            "count": pa.array(value),
        }, schema=CANDIDATES_SCHEMA)
        totals = pa.table({
            "event_type": pa.array([event_type] * len(win), pa.string()),
            "window_start": pa.array(win * spec.step_ms),
            "total": pa.array(total),
        }, schema=TOTALS_SCHEMA)
        return WindowTopK(cands, totals)


def _sum_rows(keys: tuple, count: np.ndarray, n_items: int):
    """Sum ``count`` by the ``(type, pane, item)`` key columns; returns the
    unique key columns and sums, ordered by (type, pane, item)."""
    t, pane, item = keys
    if len(count) == 0:
        return t, pane, item, count
    lo = pane.min()
    n_panes = int(pane.max() - lo) + 1
    key = (t.astype(np.int64) * n_panes + (pane - lo)) * n_items + item
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    sums = np.add.reduceat(count[order], starts)
    key = key[starts]
    item_out = key % n_items
    rest = key // n_items
    return (rest // n_panes).astype(t.dtype), rest % n_panes + lo, item_out, sums


def _tumbling_top_k(pane, item, count, k):
    """Rows unique per (pane, item) -> top-k per pane, and pane totals."""
    if len(count) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, empty, empty
    order = np.lexsort((item, -count, pane))
    pane, item, count = pane[order], item[order], count[order]
    first = np.r_[True, pane[1:] != pane[:-1]]
    starts = np.flatnonzero(first)
    rank = np.arange(len(pane)) - np.repeat(starts, np.diff(np.r_[starts, len(pane)]))
    keep = rank < k
    totals = np.add.reduceat(count, starts)
    return pane[keep], item[keep], count[keep], pane[starts], totals


#: Cells of the (panes x items) matrix one block of sliding windows uses.
BLOCK_CELLS = 4_000_000
#: Sliding windows ranked together (one matrix, one argpartition).
WINDOWS_PER_BLOCK = 32


def _sliding_top_k(pane, item, count, n_items, n, k, only=None):
    # Sliding windows are runs of n consecutive panes. For a block of
    # consecutive windows, lay the panes out as a dense (pane x item) matrix,
    # take cumulative sums along time, and every window's counts are one row
    # difference: each pane is added once, not copied into the n windows
    # containing it (stream slicing), and the top-k of all the block's
    # windows is one vectorised argpartition. Items that cannot reach any
    # top-k of the block are pruned before the matrix is built.
    empty = np.zeros(0, np.int64)
    if len(pane) == 0:
        return empty, empty, empty, empty, empty
    order = np.argsort(pane, kind="stable")
    pane, item, count = pane[order], item[order], count[order]
    starts = np.unique((np.unique(pane)[:, None] - np.arange(n)[None, :]).ravel())
    if only is not None:
        starts = np.intersect1d(starts, only)
        if len(starts) == 0:
            return empty, empty, empty, empty, empty
    # Small blocks keep the windows of a block alike, which prunes best.
    block = max(1, min(WINDOWS_PER_BLOCK, BLOCK_CELLS // max(n_items, 1) - n + 1))
    out_start, out_code, out_count, out_total = [], [], [], []
    i = 0
    while i < len(starts):
        w0 = starts[i]
        j = np.searchsorted(starts, w0 + block)
        windows = starts[i:j] - w0
        lo = np.searchsorted(pane, w0)
        hi = np.searchsorted(pane, w0 + int(windows[-1]) + n)
        rel = pane[lo:hi] - w0 + 1  # matrix row; row 0 stays zero
        span = int(windows[-1]) + n + 1
        codes, local = np.unique(item[lo:hi], return_inverse=True)
        values = count[lo:hi]
        out_total.append(_window_sums(rel, values, windows, n, span))
        if len(codes) > 4 * k:
            keep = _prunable(rel, local, values, len(codes), windows, n, span, k)
            rows = keep[local]
            codes = codes[keep]
            local = (np.cumsum(keep) - 1)[local[rows]]
            rel, values = rel[rows], values[rows]
        counts = _window_counts(rel, local, values, len(codes), windows, n, span)
        # One key per cell: count first, then the smaller item code wins.
        width = len(codes)
        key = counts * width + (width - 1 - np.arange(width))
        if width > k:
            sel = np.argpartition(-key, k - 1, axis=1)[:, :k]
        else:
            sel = np.broadcast_to(np.arange(width), (len(windows), width))
        picked = np.take_along_axis(counts, sel, axis=1)
        keep_cell = picked > 0
        out_start.append(np.broadcast_to((windows + w0)[:, None],
                                         sel.shape)[keep_cell])
        out_code.append(codes[sel[keep_cell]])
        out_count.append(picked[keep_cell])
        i = j
    return (np.concatenate(out_start), np.concatenate(out_code),
            np.concatenate(out_count), starts, np.concatenate(out_total))


def _window_counts(rel, local, values, width, windows, n, span):
    """(windows x items) counts from rows (matrix row, item column, value)
    that are unique per (row, column)."""
    cum = np.zeros((span, width), np.int64)
    cum[rel, local] = values
    np.cumsum(cum, axis=0, out=cum)
    return cum[windows + n] - cum[windows]


def _window_sums(rel, values, windows, n, span):
    cum = np.zeros(span, np.int64)
    np.add.at(cum, rel, values)
    cum = np.cumsum(cum)
    return cum[windows + n] - cum[windows]


def _prunable(rel, local, values, width, windows, n, span, k):
    """Mask of the items that may be in some window's top-k of the block.

    An item's count in any window of the block is at most its total over
    the block. The k-th largest count of a window is at least the k-th
    largest among any subset of items, here the 2k largest by block total.
    Items whose block total is below the smallest such lower bound can never
    make a top-k, whatever the window.
    """
    block_total = np.zeros(width, np.int64)
    np.add.at(block_total, local, values)
    subset = np.argpartition(-block_total, 2 * k)[:2 * k]
    in_subset = np.zeros(width, bool)
    in_subset[subset] = True
    rows = in_subset[local]
    position = np.cumsum(in_subset) - 1
    sub = _window_counts(rel[rows], position[local[rows]], values[rows],
                         2 * k, windows, n, span)
    kth = np.partition(sub, 2 * k - k, axis=1)[:, 2 * k - k]
    return block_total >= max(int(kth.min()), 1)


def top_k_rows(table: pa.Table, group_cols: list[str], k: int,
               rank_column: str | None = None) -> pa.Table:
    """Top ``k`` rows of every group by ``count`` desc, ``item_id`` asc,
    sorted by group then rank; optionally with a 1-based rank column."""
    _check_k(k)
    if table.num_rows == 0:
        out = table
        if rank_column:
            out = out.append_column(rank_column, pa.array([], pa.int32()))
        return out
    keys = [(c, "ascending") for c in group_cols] + [
        ("count", "descending"), ("item_id", "ascending")]
    table = table.take(pc.sort_indices(table, sort_keys=keys))
    new_group = np.zeros(table.num_rows, bool)
    new_group[0] = True
    for c in group_cols:
        col = table[c]
        new_group[1:] |= pc.not_equal(col.slice(1), col.slice(
            0, table.num_rows - 1)).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(new_group)
    rank = np.arange(table.num_rows) - np.repeat(
        starts, np.diff(np.append(starts, table.num_rows))) + 1
    keep = rank <= k
    table = table.filter(pa.array(keep))
    if rank_column:
        table = table.append_column(rank_column, pa.array(rank[keep], pa.int32()))
    return table


def merge_window_top_k(parts: list[WindowTopK], k: int) -> pa.Table:
    """Merge per-shard results into the exact ranked top-K of every window.

    Returns (event_type, window_start, rank, item_id, count, window_total),
    sorted by event_type, window_start, rank.
    """
    cands = pa.concat_tables([p.candidates for p in parts]) if parts else (
        CANDIDATES_SCHEMA.empty_table())
    totals = pa.concat_tables([p.totals for p in parts]) if parts else (
        TOTALS_SCHEMA.empty_table())
    ranked = top_k_rows(cands, ["event_type", "window_start"], k, "rank")
    totals = totals.group_by(["event_type", "window_start"]).aggregate(
        [("total", "sum")]).rename_columns(
            ["event_type", "window_start", "window_total"])
    joined = ranked.join(totals, ["event_type", "window_start"])
    joined = joined.take(pc.sort_indices(joined, sort_keys=[
        ("event_type", "ascending"), ("window_start", "ascending"),
        ("rank", "ascending")]))
    return joined.select(["event_type", "window_start", "rank", "item_id",
                          "count", "window_total"])


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
        "window_length": pa.array([spec.length_name] * n, pa.string()),
        "slide": pa.array([spec.slide_name] * n, pa.string()),
        "method": pa.array([method] * n, pa.string()),
        "event_type": merged["event_type"],
        "rank": merged["rank"],
        "item_id": merged["item_id"],
        "count": merged["count"],
        "lower_bound": merged["count"] if lower is None else lower,
        "upper_bound": merged["count"] if upper is None else upper,
        "guaranteed": guaranteed,
        "window_total": merged["window_total"],
        "pane_timing": pa.array([pane_timing] * n, pa.string()),
        "pane_index": pa.array(np.full(n, pane_index, np.int32)),
        "source": pa.array([source] * n, pa.string()),
        "emitted_at": pa.array(np.full(n, emitted_at_ms, np.int64)).cast(
            schema.TIMESTAMP),
    }, schema=schema.RANKED_WINDOWS_SCHEMA)


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError("k must be at least 1")
