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
from typing import Iterable, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from topk.sketches.common import DEFAULT_BUDGET_BYTES, TOPK_SCHEMA
from topk.sketches.count_min import CountMinTopK
from topk.sketches.frequent_items import FrequentItemsTopK

__all__ = [
    "ApproxTopK", "CountMinTopK", "FrequentItemsTopK", "DEFAULT_BUDGET_BYTES",
    "METHODS", "TOPK_SCHEMA", "new_sketch", "sketch_from_bytes", "merge_all",
    "ranked_rows",
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

    def top_k(self, k: int) -> pa.Table:
        """``TOPK_SCHEMA``: item_id, count, lower_bound, upper_bound,
        guaranteed; ranked by count desc, item_id asc."""

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
    return cls(budget_bytes, **options)


def sketch_from_bytes(data: bytes) -> ApproxTopK:
    """Deserialize either kind of sketch (the format says which)."""
    head = bytes(data[:4])
    if head == b"TKCM":
        return CountMinTopK.from_bytes(data)
    if head == b"TKFI":
        return FrequentItemsTopK.from_bytes(data)
    raise ValueError("not a serialized top-K sketch")


def merge_all(sketches: Iterable) -> ApproxTopK | None:
    """Merge sketches (objects or their bytes) into a new sketch: a copy of
    the first, so no input is modified. ``None`` for no input."""
    merged = None
    for s in sketches:
        if isinstance(s, (bytes, bytearray, memoryview)):
            s = sketch_from_bytes(s)
        if merged is None:
            merged = sketch_from_bytes(s.to_bytes())
        else:
            merged.merge(s)
    return merged


def ranked_rows(sketch: ApproxTopK, k: int, event_type: str,
                window_start_ms: int) -> pa.Table:
    """A sketch's top ``k`` shaped like ``ranking.merge_window_top_k``
    output (event_type, window_start, rank, item_id, count, window_total)
    plus lower_bound, upper_bound and guaranteed, so that
    ``ranking.to_ranked_windows(rows, spec, method=sketch.method,
    lower=rows["lower_bound"], upper=rows["upper_bound"], ...)`` writes it.
    """
    top = sketch.top_k(k)
    n = top.num_rows
    return pa.table({
        "event_type": pa.array([event_type] * n, pa.string()),
        "window_start": pa.array(np.full(n, window_start_ms, np.int64)),
        "rank": pa.array(np.arange(1, n + 1, dtype=np.int32)),
        "item_id": top["item_id"],
        "count": top["count"],
        "window_total": pa.array(np.full(n, sketch.total, np.int64)),
        "lower_bound": top["lower_bound"],
        "upper_bound": top["upper_bound"],
        "guaranteed": top["guaranteed"],
    })
