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

from topk import counting, schema
from topk.windows import WindowSpec

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
    """Per-window top-K of one shard's exact slice counts.

    ``counts`` holds exact partials (``SLICE_COUNTS_SCHEMA``, any slice length
    dividing the spec's step, all event types; add ``ALL_TYPES`` rows first
    with ``with_all_types`` to rank over all types). Every window containing
    at least one counted event is reported, as in Beam's windowing.
    """
    _check_k(k)
    panes = counting.rollup(counts, spec.step_ms)
    if panes.num_rows == 0:
        return WindowTopK.empty()
    if spec.panes_per_window == 1:
        cands = pa.table({
            "event_type": panes["event_type"],
            "window_start": panes["slice_start"],
            "item_id": panes["item_id"],
            "count": panes["count"],
        }, schema=CANDIDATES_SCHEMA)
        totals = cands.group_by(["event_type", "window_start"]).aggregate(
            [("count", "sum")]).rename_columns(
                ["event_type", "window_start", "total"])
        return WindowTopK(top_k_rows(cands, ["event_type", "window_start"], k),
                          totals.select(TOTALS_SCHEMA.names).cast(TOTALS_SCHEMA))
    parts = [
        _sliding_top_k(panes.filter(pc.equal(panes["event_type"], et)), et,
                       spec, k)
        for et in pc.unique(panes["event_type"]).to_pylist()
    ]
    return WindowTopK(
        pa.concat_tables([p.candidates for p in parts]),
        pa.concat_tables([p.totals for p in parts]))


def _sliding_top_k(panes: pa.Table, event_type: str, spec: WindowSpec,
                   k: int) -> WindowTopK:
    # Sliding windows are consecutive runs of panes. Walk the windows in
    # order, adding the pane that enters and subtracting the one that leaves
    # a dense count vector, so each pane is touched twice instead of being
    # copied into every window that contains it (stream slicing).
    items = pc.unique(panes["item_id"])
    items = items.take(pc.sort_indices(items))  # code order == item_id order
    codes = pc.index_in(panes["item_id"], value_set=items).to_numpy()
    pane_idx = panes["slice_start"].to_numpy() // spec.step_ms
    values = panes["count"].to_numpy()
    order = np.argsort(pane_idx, kind="stable")
    pane_idx, codes, values = pane_idx[order], codes[order], values[order]
    n = spec.panes_per_window
    starts = np.unique((np.unique(pane_idx)[:, None]
                        - np.arange(n)[None, :]).ravel())
    dense = np.zeros(len(items), np.int64)
    total = 0
    added = removed = 0  # row cursors into the pane-sorted arrays
    out_start, out_code, out_count, tot_start, tot_value = [], [], [], [], []
    for w in starts:
        hi = np.searchsorted(pane_idx, w + n, side="left")
        if hi > added:
            dense[codes[added:hi]] += values[added:hi]
            total += int(values[added:hi].sum())
            added = hi
        lo = np.searchsorted(pane_idx, w, side="left")
        if lo > removed:
            dense[codes[removed:lo]] -= values[removed:lo]
            total -= int(values[removed:lo].sum())
            removed = lo
        sel = top_k_codes(dense, k)
        out_start.append(np.full(len(sel), w))
        out_code.append(sel)
        out_count.append(dense[sel])
        tot_start.append(w)
        tot_value.append(total)
    sel_codes = np.concatenate(out_code)
    cands = pa.table({
        "event_type": pa.array(np.full(len(sel_codes), event_type)),
        "window_start": pa.array(np.concatenate(out_start) * spec.step_ms),
        "item_id": items.take(pa.array(sel_codes)),
        "count": pa.array(np.concatenate(out_count)),
    }, schema=CANDIDATES_SCHEMA)
    totals = pa.table({
        "event_type": pa.array(np.full(len(tot_start), event_type)),
        "window_start": pa.array(np.asarray(tot_start) * spec.step_ms),
        "total": pa.array(tot_value, pa.int64()),
    }, schema=TOTALS_SCHEMA)
    return WindowTopK(cands, totals)


def top_k_codes(dense: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest positive entries; ties go to the smaller
    index (indices are in item_id order). Unordered."""
    if k >= dense.size:
        return np.flatnonzero(dense > 0)
    kth = np.partition(dense, dense.size - k)[dense.size - k]
    if kth <= 0:
        return np.flatnonzero(dense > 0)
    above = np.flatnonzero(dense > kth)
    tied = np.flatnonzero(dense == kth)[:k - len(above)]
    return np.concatenate([above, tied])


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
                      upper: pa.Array | None = None) -> pa.Table:
    """Shape ``merge_window_top_k`` output as the ``ranked_windows`` table.
    Exact counts are their own bounds."""
    n = merged.num_rows
    start = merged["window_start"]
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
