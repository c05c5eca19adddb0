"""Approximate top-K sketches: fixed memory, mergeable, with error bounds.

Two methods behind one small interface (``ApproxTopK``):

- ``cms`` (``count_min.CountMinTopK``): the seed design's Count-Min sketch
  plus a bounded candidate set, with NumPy-vectorised batch updates;
- ``frequent_items`` (``frequent_items.FrequentItemsTopK``): Apache
  DataSketches' frequent-items sketch.

Both take pre-aggregated ``(item, count)`` batches, merge with sketches of
the same method and parameters (so a slice's sketch can be rolled up into
an hour, a day or any range), stay within a byte budget (default 64 KiB,
``nbytes <= budget_bytes`` after every operation), serialize to compact
versioned bytes, and answer ``top_k(k)`` with, for every item, deterministic
lower and upper bounds on its true count and a flag for items certainly in
the true top-K. See each module for which statements are deterministic
and which probabilistic.

No Beam here (the CombineFns are in ``topk.transforms.approximate``).
"""
import functools
from typing import Iterable, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from topk.core import ranking
from topk.approx.sketches.common import DEFAULT_BUDGET_BYTES, TOPK_SCHEMA
from topk.approx.sketches.count_min import CountMinTopK
from topk.approx.sketches.frequent_items import FrequentItemsTopK

__all__ = [
    "ApproxTopK", "CountMinTopK", "FrequentItemsTopK", "DEFAULT_BUDGET_BYTES",
    "METHODS", "TOPK_SCHEMA", "new_sketch", "sketch_from_bytes", "merge_all",
    "merge_many", "new_sketches", "pack", "unpack", "ranked_rows",
    "windows_ranked_rows", "spans_ranked_rows", "span_array_ranked_rows",
]

#: Method names, as in ``--method`` and the output tables' ``method``.
METHODS = ("cms", "frequent_items")
_CLASSES = {"cms": CountMinTopK, "frequent_items": FrequentItemsTopK}


@runtime_checkable
class ApproxTopK(Protocol):
    """What both sketches offer (the query layer and CombineFns use only
    this)."""

    method: str

    def update(self, items, counts=None, *,
               assume_unique: bool = False) -> "ApproxTopK":
        """Add pre-aggregated (item, count) pairs; returns self."""

    def merge(self, other: "ApproxTopK") -> "ApproxTopK":
        """Add another sketch of the same method and parameters; returns
        self."""

    @classmethod
    def merge_many(cls, sketches) -> "ApproxTopK":
        """The merge of several sketches as a new one; inputs unchanged."""

    def copy(self) -> "ApproxTopK":
        """An independent copy."""

    def top_k(self, k: int) -> pa.Table:
        """``TOPK_SCHEMA``: item_id, count, lower_bound, upper_bound,
        guaranteed; ranked by count desc, item_id asc."""

    @classmethod
    def top_k_many(cls, sketches, k: int) -> tuple[np.ndarray, pa.Table]:
        """``top_k`` of many sketches in one table: ``(index of each row's
        sketch, rows)``, by sketch, then rank."""

    def bounds(self, items) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic (lower, upper) bounds of any items."""

    @property
    def total(self) -> int:
        """Exact sum of all counts added."""

    @property
    def epsilon(self) -> float:
        """A-priori relative error bound (see the method's module)."""

    @property
    def max_error(self) -> int:
        """Error bound for this sketch's total (see the method's module)."""

    @property
    def nbytes(self) -> int:
        """Exact serialized size; never above ``budget_bytes``."""

    @property
    def budget_bytes(self) -> int:
        """The byte budget the sketch always respects."""

    def to_bytes(self) -> bytes:
        """Compact, versioned serialization (``nbytes`` long)."""


def new_sketch(method: str, budget_bytes: int = DEFAULT_BUDGET_BYTES,
               **options) -> ApproxTopK:
    """An empty sketch of ``method`` (``cms`` or ``frequent_items``) sized
    for ``budget_bytes``; ``options`` go to the class (e.g. ``depth``,
    ``conservative`` for cms; ``item_bytes`` for both)."""
    try:
        cls = _CLASSES[method]
    except KeyError:
        raise ValueError(f"unknown approximate method {method!r}; choose "
                         f"from {', '.join(METHODS)}") from None
    if cls is CountMinTopK:
        # Sizing and checking the parameters costs more than an empty
        # sketch: done once per parameter set.
        return _cms_prototype(budget_bytes,
                              tuple(sorted(options.items())))._empty_like()
    return cls(budget_bytes, **options)


@functools.lru_cache(maxsize=64)
def _cms_prototype(budget_bytes, options: tuple) -> CountMinTopK:
    return CountMinTopK(budget_bytes, **dict(options))


def new_sketches(new, items, counts, offsets, hashes=None) -> list:
    """One new sketch per run of rows ``offsets[i]:offsets[i + 1]`` of
    ``items`` / ``counts``, each equal to ``new()`` (an empty sketch)
    updated with its rows; Count-Min makes the exact ones at once
    (``CountMinTopK.exact_runs``, given the items' ``hashes`` if known)."""
    first = new()
    made = (first.exact_runs(items, counts, offsets, hashes=hashes)
            if isinstance(first, CountMinTopK) else [None] * (len(offsets) - 1))
    for i, sketch in enumerate(made):
        if sketch is None:
            a, b = int(offsets[i]), int(offsets[i + 1])
            made[i] = (first if i == 0 else new()).update(items[a:b],
                                                          counts[a:b])
    return made


def pack(sketches: list) -> tuple:
    """Sketches -> a picklable form that ``unpack`` turns back into equal
    sketches, in order: exact Count-Min sketches (most slices of sparse
    data) as a few byte strings per parameter set
    (``CountMinTopK.pack_exact``), the others as themselves."""
    groups, rest = {}, []
    for i, s in enumerate(sketches):
        if isinstance(s, CountMinTopK) and s.exact:
            groups.setdefault(s.exact_params, []).append(i)
        else:
            rest.append(i)
    return (len(sketches),
            [(where, CountMinTopK.pack_exact([sketches[i] for i in where]))
             for where in groups.values()],
            [(i, sketches[i]) for i in rest])


def unpack(packed: tuple) -> list:
    """Inverse of ``pack`` (trusted input: a pickle)."""
    n, groups, rest = packed
    out = [None] * n
    for where, arrays in groups:
        for i, sketch in zip(where, CountMinTopK.unpack_exact(arrays)):
            out[i] = sketch
    for i, sketch in rest:
        out[i] = sketch
    return out


def sketch_from_bytes(data: bytes) -> ApproxTopK:
    """Deserialize either kind of sketch (the format says which)."""
    head = bytes(data[:4])
    if head == b"TKCM":
        return CountMinTopK.from_bytes(data)
    if head == b"TKFI":
        return FrequentItemsTopK.from_bytes(data)
    raise ValueError("not a serialized top-K sketch")


def merge_all(sketches: Iterable) -> ApproxTopK | None:
    """Merge sketches (objects or their bytes) into a new sketch; no input
    is modified. ``None`` for no input."""
    return merge_many([sketch_from_bytes(s) if isinstance(
        s, (bytes, bytearray, memoryview)) else s for s in sketches])


def merge_many(sketches: list) -> ApproxTopK | None:
    """The merge of sketch objects of one method as a new sketch (the
    method's ``merge_many``: Count-Min merges them all at once); ``None``
    for none."""
    if not sketches:
        return None
    return type(sketches[0]).merge_many(sketches)


def ranked_rows(sketch: ApproxTopK, k: int, event_type: str,
                window_start_ms: int) -> pa.Table:
    """A sketch's top ``k`` shaped like ``ranking.merge_window_top_k``
    output (event_type, window_start, rank, item_id, count, window_total)
    plus lower_bound, upper_bound and guaranteed, so that
    ``ranking.to_ranked_windows(rows, spec, method=sketch.method,
    lower=rows["lower_bound"], upper=rows["upper_bound"],
    guaranteed=rows["guaranteed"], ...)`` writes it."""
    return windows_ranked_rows([(window_start_ms, sketch)], k, event_type)


def windows_ranked_rows(windows, k: int, event_type: str) -> pa.Table:
    """``ranked_rows`` of many ``(window_start_ms, sketch)`` in one table;
    a sketch shared by several windows is ranked once."""
    index = {}  # id(sketch) -> (its place among the distinct ones, sketch)
    for _, sketch in windows:
        index.setdefault(id(sketch), (len(index), sketch))
    distinct = [sketch for _, sketch in index.values()]
    of, top = (type(distinct[0]).top_k_many(distinct, k) if distinct
               else (np.zeros(0, np.int64), TOPK_SCHEMA.empty_table()))
    held = np.bincount(of, minlength=len(distinct)).astype(np.int64)
    which = np.array([index[id(sketch)][0] for _, sketch in windows],
                     np.int64)
    sizes = held[which]
    rows = np.repeat((np.cumsum(held) - held)[which],
                     sizes) + ranking.run_offsets(sizes)
    return _window_rows(event_type, [start for start, _ in windows], sizes,
                        [sketch.total for _, sketch in windows],
                        top.take(pa.array(rows, pa.int64())))


def _window_rows(event_type: str, starts, sizes: np.ndarray, totals,
                 top: pa.Table) -> pa.Table:
    """The rows of ``windows_ranked_rows``: ``top`` (``TOPK_SCHEMA``
    columns) holds ``sizes[i]`` rows of window ``i`` in rank order."""
    n = int(sizes.sum())
    # Ranks restart at 1 in every window.
    rank = np.arange(n) - np.repeat(np.cumsum(sizes) - sizes, sizes) + 1
    return pa.table({
        "event_type": pa.array([event_type] * n, pa.string()),
        "window_start": pa.array(np.repeat(np.asarray(starts, np.int64),
                                           sizes)),
        "rank": pa.array(rank.astype(np.int32)),
        "item_id": top["item_id"],
        "count": top["count"],
        "window_total": pa.array(np.repeat(np.asarray(totals, np.int64),
                                           sizes)),
        "lower_bound": top["lower_bound"],
        "upper_bound": top["upper_bound"],
        "guaranteed": top["guaranteed"],
    })


def spans_ranked_rows(panes: list, windows, k: int, event_type: str
                      ) -> pa.Table:
    """``windows_ranked_rows`` of windows given as spans of ``panes``
    (sketches of one method): ``windows`` is ``[(window_start_ms, (a,
    b))]``, the window being the merge of ``panes[a:b]``
    (``span_array_ranked_rows``)."""
    return span_array_ranked_rows(
        panes, np.array([start for start, _ in windows], np.int64),
        np.array([span for _, span in windows], np.int64).reshape(-1, 2), k,
        event_type)


def span_array_ranked_rows(panes: list, starts: np.ndarray,
                           spans: np.ndarray, k: int, event_type: str
                           ) -> pa.Table:
    """``spans_ranked_rows`` of windows given as arrays: window ``i``
    starts at ``starts[i]`` (ms) and is the merge of ``panes[a:b]``, ``(a,
    b) = spans[i]`` (an ``(m, 2)`` array).

    Count-Min ranks every distinct span at once from running sums, without
    making the merged sketches (``CountMinTopK.rank_ranges``: the rows
    equal each merged sketch's ``top_k``). Other sketches are merged, each
    distinct span once (``merge_many``; a span of one pane is that pane),
    and ranked one by one."""
    if not len(starts):
        return windows_ranked_rows([], k, event_type)
    # Distinct spans by one int64 key each: a year of sliding windows is
    # hundreds of thousands of them.
    _, first_of, of = np.unique(spans[:, 0] * (len(panes) + 1) + spans[:, 1],
                                return_index=True, return_inverse=True)
    distinct = spans[first_of]
    of = of.reshape(-1)
    rank_ranges = getattr(type(panes[0]), "rank_ranges", None)
    if rank_ranges is None:
        merged = [panes[a] if b - a == 1 else merge_many(panes[a:b])
                  for a, b in distinct.tolist()]
        return windows_ranked_rows(
            [(start, merged[i]) for start, i in zip(starts.tolist(),
                                                    of.tolist())],
            k, event_type)
    top, totals = rank_ranges(panes, distinct, k)
    # Rows of range i are top[first[i]:first[i] + size[i]], in rank order.
    size = np.bincount(top["range"].to_numpy(), minlength=len(distinct))
    first = np.cumsum(size) - size
    sizes = size[of]
    within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes,
                                                sizes)
    return _window_rows(
        event_type, starts, sizes, totals[of],
        top.take(pa.array(np.repeat(first[of], sizes) + within)))
