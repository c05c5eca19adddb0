"""Pieces shared by the approximate top-K sketches (no Beam here).

Both sketches answer ``top_k(k)`` with the same table, ``TOPK_SCHEMA``:
every returned item with a point estimate, deterministic lower and upper
bounds on its true count, and a flag saying whether it is certainly in the
true top-K. The flag is computed the same way for both from bounds alone,
so it is never wrong as long as the bounds hold.
"""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from topk.approx.sketches.hashing import as_string_array
from topk.core import ranking

#: Memory budget per window and slice (bytes) when none is given.
DEFAULT_BUDGET_BYTES = 64 * 1024

#: Result of ``top_k``: rank order is ``count`` descending, then
#: ``item_id`` ascending (the project's tie rule).
TOPK_SCHEMA = pa.schema([
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("count", pa.int64(), nullable=False),
    pa.field("lower_bound", pa.int64(), nullable=False),
    pa.field("upper_bound", pa.int64(), nullable=False),
    pa.field("guaranteed", pa.bool_(), nullable=False),
])

#: Largest batch weight fed to ``np.bincount`` at once: its float64
#: weights are exact integers up to 2**53.
MAX_EXACT_FLOAT = 2 ** 53


def coerce_batch(items, counts=None, drop_zeros: bool = True
                 ) -> tuple[pa.Array, np.ndarray]:
    """Validate a pre-aggregated batch: strings without nulls and
    non-negative integer counts of the same length (``None`` = all 1).
    Rows with a zero count are dropped (they change nothing), unless
    ``drop_zeros`` is False (a caller whose rows are positional)."""
    arr = as_string_array(items)
    if counts is None:
        cnt = np.ones(len(arr), dtype=np.int64)
    else:
        if isinstance(counts, (pa.Array, pa.ChunkedArray)):
            if counts.null_count:
                raise ValueError("counts must not be null")
            counts = counts.to_numpy()
        cnt = np.asarray(counts)
        if cnt.ndim != 1:
            raise ValueError("counts must be one-dimensional")
        if cnt.size and not np.issubdtype(cnt.dtype, np.integer):
            raise TypeError(f"counts must be integers, got {cnt.dtype}")
        cnt = cnt.astype(np.int64, copy=False)
    if len(cnt) != len(arr):
        raise ValueError(f"items and counts differ in length "
                         f"({len(arr)} != {len(cnt)})")
    if cnt.size and cnt.min() < 0:
        raise ValueError("counts must be >= 0")
    if drop_zeros and cnt.size and not cnt.all():
        keep = cnt > 0
        arr, cnt = arr.filter(pa.array(keep)), cnt[keep]
    return arr, cnt


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def guaranteed_flags(lower: np.ndarray, upper: np.ndarray,
                     all_upper: np.ndarray, unseen_bound: int,
                     k: int) -> np.ndarray:
    """Which items are certainly among the true top ``k``.

    ``lower``/``upper`` are the bounds of the items asked about, each of
    which is also one entry of ``all_upper``: the upper bounds of every item
    the sketch tracks. Any untracked item has a true count of at most
    ``unseen_bound``, and there may be arbitrarily many of them.

    Item i is guaranteed when ``lower_i`` exceeds the k-th largest upper
    bound among all *other* items: then at most k-1 others can have a count
    >= its count, so it ranks within the top k under any tie rule. Nothing
    here is probabilistic: the flag is right whenever the bounds are.
    """
    return beats_kth_other(lower, upper,
                           *kth_uppers(all_upper, unseen_bound, k))


def kth_uppers(all_upper: np.ndarray, unseen_bound: int, k: int
               ) -> tuple[int, int]:
    """The k-th and (k+1)-th largest upper bound among tracked items
    (``all_upper``) and any number of untracked ones (each at most
    ``unseen_bound``): what ``beats_kth_other`` compares against."""
    # Tracked bounds at or below the untracked one never matter: any number
    # of untracked items may reach it.
    above = np.asarray(all_upper, np.int64)
    above = above[above > unseen_bound]
    if len(above) > k + 1:
        above = np.partition(above, len(above) - k - 1)[len(above) - k - 1:]
    ranked = np.sort(above)[::-1]
    return tuple(int(ranked[j]) if j < len(ranked) else int(unseen_bound)
                 for j in (k - 1, k))


def beats_kth_other(lower, upper, kth_1, kth) -> np.ndarray:
    """The guaranteed flag from an item's bounds and the k-th (``kth_1``)
    and (k+1)-th (``kth``) largest upper bounds of its group (scalars, or
    arrays aligned with the items): its lower bound beats the k-th largest
    upper bound of the *others*, which is the (k+1)-th overall when its own
    upper bound is among the k largest, else the k-th."""
    return np.asarray(lower) > np.where(np.asarray(upper) >= kth_1, kth, kth_1)


def top_k_groups(group, items: pa.Array, count, lower, upper, unseen_bound,
                 k: int, kth_pairs=None) -> tuple[np.ndarray, pa.Table]:
    """Rank tracked items (``count`` desc, ``item_id`` asc), keep ``k`` and
    flag the guaranteed ones, for many groups at once (e.g. one per
    window): row ``i`` is a tracked item of group ``group[i]`` (``0 <=
    group < len(unseen_bound)``), whose untracked items are bounded by
    ``unseen_bound[group]``. Returns ``(group of each kept row, rows in
    TOPK_SCHEMA)``, by group, then rank: one sort for every group instead
    of a small table each.

    ``kth_pairs``, one ``kth_uppers`` pair per group (``unseen_bound`` is
    then unused), lets a caller pass only the rows that may rank: the
    flags compare against every tracked item's bound, which those rows
    would not show."""
    k = check_k(k)
    group = np.asarray(group, np.int64)
    if len(group) == 0:
        return group, TOPK_SCHEMA.empty_table()
    count, lower, upper = (np.asarray(c, np.int64)
                           for c in (count, lower, upper))
    if kth_pairs is None:
        kth_pairs = _kth_uppers_by_group(group, upper, np.asarray(
            unseen_bound, np.int64), k)
    kth_pairs = np.asarray(kth_pairs, np.int64).reshape(-1, 2)
    names = pc.unique(items)
    names = names.take(pc.sort_indices(names))
    codes = pc.index_in(items, value_set=names).to_numpy()
    order, rank = ranking.rank_in_groups(group, count, codes)
    top = order[rank < k]
    g = group[top]
    flags = beats_kth_other(lower[top], upper[top], kth_pairs[g, 0],
                            kth_pairs[g, 1])
    return g, pa.table({
        "item_id": items.take(pa.array(top)).cast(pa.string()),
        "count": pa.array(count[top], pa.int64()),
        "lower_bound": pa.array(lower[top], pa.int64()),
        "upper_bound": pa.array(upper[top], pa.int64()),
        "guaranteed": pa.array(flags, pa.bool_()),
    }, schema=TOPK_SCHEMA)


def _kth_uppers_by_group(group: np.ndarray, upper: np.ndarray,
                         unseen: np.ndarray, k: int) -> np.ndarray:
    """``kth_uppers`` of every group at once: ``(len(unseen), 2)``."""
    by_upper = np.lexsort((-upper, group))
    g, up = group[by_upper], upper[by_upper]
    heads = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    place = ranking.run_offsets(np.diff(np.r_[heads, len(g)]))
    pairs = np.repeat(unseen[:, None], 2, axis=1)
    for col, j in enumerate((k - 1, k)):
        at = (place == j) & (up > unseen[g])
        pairs[g[at], col] = up[at]
    return pairs
