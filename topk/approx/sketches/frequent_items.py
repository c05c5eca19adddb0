"""Apache DataSketches' frequent-items sketch behind the common interface.

DataSketches' ``frequent_strings_sketch`` is a Misra-Gries style summary
(reverse-purge hash map, Anderson et al. 2017): at most
``0.75 * 2**lg_max_map_size`` items with counters, plus one number, the
*offset* (``max_error``): the total amount purged. For every item x, tracked
or not::

    lower(x) = counter(x)  <=  true(x)  <=  counter(x) + offset = upper(x)

deterministically (counter = 0 for an untracked item). DataSketches
documents the a-priori bound ``offset <= epsilon * N`` with ``epsilon =
3.5 / 2**lg_max_map_size`` for any stream and for merges of equally sized
sketches; this wrapper reports it as ``epsilon`` and the actual offset as
``max_error``. The point estimate is DataSketches' (``upper``): an item
tracked since its first occurrence has lost exactly the offset, so for
heavy hitters the upper bound is the most accurate single number.

Budget: the map size is chosen so that a full sketch of ``item_bytes``-byte
ids serializes within ``budget_bytes``; if longer ids would overflow it, the
sketch is folded into one with half the map (a DataSketches merge into a
smaller sketch), and ``epsilon`` grows by the smaller sketch's epsilon
(its purges add at most that much, relative to everything fed to it).
If even the smallest map cannot hold the ids, ``update`` raises
``ValueError`` instead of exceeding the budget.

Updates cost one Python call per (item, count) pair (DataSketches has no
batch update in Python); pairs are pre-aggregated, so this is per distinct
item per batch, not per event. Merges are DataSketches' own, one pair at a
time. No Beam here.
"""
import struct

import datasketches
import numpy as np
import pyarrow as pa

from topk.approx.sketches import budget as _budget
from topk.approx.sketches.common import (DEFAULT_BUDGET_BYTES, TOPK_SCHEMA, check_k,
                                  coerce_batch, top_k_groups)

MAGIC = b"TKFI"
FORMAT_VERSION = 1
#: magic, format version, flags, lg_max_map_size, reserved, budget, epsilon.
_HEADER = struct.Struct("<4sBBBBQd")
assert _HEADER.size == _budget.FI_HEADER_BYTES
#: Set once the sketch was folded to a smaller map, or merged with one that
#: was: ``epsilon`` is then the composed bound, not DataSketches' own.
_FLAG_FOLDED = 1

_NO_FALSE_NEGATIVES = datasketches.frequent_items_error_type.NO_FALSE_NEGATIVES
_INT64_MAX = (1 << 63) - 1


class FrequentItemsTopK:
    """DataSketches frequent items, sized from a budget or a target error.

    Sizing, in order of precedence: ``lg_max_map_size``; ``epsilon`` (the
    smallest map with ``3.5 / 2**lg <= epsilon``); ``budget_bytes`` (default
    64 KiB; the largest map whose full sketch of ``item_bytes``-byte ids
    fits). Without a budget, the budget is that full size.
    """

    method = "frequent_items"

    def __init__(self, budget_bytes: int | None = None, *,
                 epsilon: float | None = None,
                 lg_max_map_size: int | None = None,
                 item_bytes: int = _budget.DEFAULT_ITEM_BYTES):
        if (isinstance(item_bytes, bool) or not isinstance(item_bytes, int)
                or item_bytes < 0):
            raise ValueError(f"item_bytes must be a non-negative integer, "
                             f"got {item_bytes!r}")
        if lg_max_map_size is not None and epsilon is not None:
            raise ValueError("give either epsilon or lg_max_map_size, not "
                             "both")
        if lg_max_map_size is not None:
            if (isinstance(lg_max_map_size, bool)
                    or not isinstance(lg_max_map_size, int)
                    or not _budget.FI_MIN_LG <= lg_max_map_size
                    <= _budget.FI_MAX_LG):
                raise ValueError(
                    f"lg_max_map_size must be an integer in "
                    f"[{_budget.FI_MIN_LG}, {_budget.FI_MAX_LG}], got "
                    f"{lg_max_map_size!r}")
            lg = lg_max_map_size
        elif epsilon is not None:
            lg = _budget.fi_lg_for_epsilon(epsilon)
        else:
            lg = _budget.fi_lg_for_budget(
                DEFAULT_BUDGET_BYTES if budget_bytes is None else budget_bytes,
                item_bytes)
        if budget_bytes is None:
            budget_bytes = _budget.fi_max_bytes(lg, item_bytes)
        _budget.check_budget(budget_bytes)
        if _budget.fi_max_bytes(lg, item_bytes) > budget_bytes:
            raise ValueError(
                f"lg_max_map_size {lg} needs up to "
                f"{_budget.fi_max_bytes(lg, item_bytes)} bytes for "
                f"{item_bytes}-byte ids, more than the budget of "
                f"{budget_bytes}")
        self._budget_bytes = int(budget_bytes)
        self._sketch = datasketches.frequent_strings_sketch(lg)
        self._lg = lg
        self._epsilon = _budget.fi_epsilon(lg)
        self._folded = False

    # -- properties ---------------------------------------------------------

    @property
    def lg_max_map_size(self) -> int:
        return self._lg

    @property
    def budget_bytes(self) -> int:
        return self._budget_bytes

    @property
    def total(self) -> int:
        """Sum of all counts added (exact)."""
        return int(self._sketch.total_weight)

    @property
    def epsilon(self) -> float:
        """A-priori relative error: ``max_error <= epsilon * total``."""
        return self._epsilon

    @property
    def folded(self) -> bool:
        """Whether the map was ever halved to stay within the budget."""
        return self._folded

    @property
    def max_error(self) -> int:
        """The offset: ``upper - lower`` of every item (deterministic)."""
        # upper - lower is the offset for any item, tracked or not.
        return int(self._sketch.get_upper_bound("")
                   - self._sketch.get_lower_bound(""))

    @property
    def num_items(self) -> int:
        return int(self._sketch.num_active_items)

    @property
    def nbytes(self) -> int:
        """Exact size of ``to_bytes()``; never above ``budget_bytes``."""
        return _HEADER.size + int(self._sketch.get_serialized_size_bytes())

    # -- updates --------------------------------------------------------

    def update(self, items, counts=None, *,
               assume_unique: bool = False) -> "FrequentItemsTopK":
        """Add a batch of pre-aggregated ``(item, count)`` pairs (repeated
        items are fine; ``assume_unique`` is accepted for interface
        compatibility and changes nothing). Returns ``self``."""
        items, counts = coerce_batch(items, counts)
        if len(items) == 0:
            return self
        if self.total + int(counts.sum(dtype=np.float64)) > _INT64_MAX:
            raise OverflowError("total count would exceed 2**63 - 1")
        update = self._sketch.update
        for item, count in zip(items.to_pylist(), counts.tolist()):
            update(item, count)
        self._fit_budget()
        return self

    def merge(self, other: "FrequentItemsTopK") -> "FrequentItemsTopK":
        """Add ``other`` into this sketch (any map size; this sketch keeps
        its own map size and budget). Returns ``self``."""
        if not isinstance(other, FrequentItemsTopK):
            raise ValueError(f"cannot merge {type(other).__name__} into a "
                             "frequent-items sketch")
        if self.total + other.total > _INT64_MAX:
            raise OverflowError("total count would exceed 2**63 - 1")
        if other is self:
            other = FrequentItemsTopK.from_bytes(other.to_bytes())
        if (not self._folded and not other._folded
                and other._lg == self._lg):
            # DataSketches' documented guarantee for merges of equally
            # sized sketches: the merged offset stays within epsilon * N.
            epsilon = self._epsilon
        else:
            # Composed bound: the other side's offset (<= its epsilon times
            # its weight), plus this map's purges over everything fed to it.
            epsilon = _budget.fi_epsilon(self._lg) + max(self._epsilon,
                                                         other._epsilon)
            self._folded = True
        self._sketch.merge(other._sketch)
        self._epsilon = epsilon
        self._fit_budget()
        return self

    @classmethod
    def merge_many(cls, sketches) -> "FrequentItemsTopK":
        """The merge of ``sketches`` as a new sketch (a copy of the first,
        the others merged into it in order); inputs are not modified."""
        sketches = iter(sketches)
        merged = next(sketches).copy()
        for s in sketches:
            merged.merge(s)
        return merged

    def copy(self) -> "FrequentItemsTopK":
        """An independent copy (DataSketches objects copy only through
        their bytes)."""
        return FrequentItemsTopK.from_bytes(self.to_bytes())

    # -- queries --------------------------------------------------------

    def top_k(self, k: int) -> pa.Table:
        """The ``k`` items with the largest estimates (``TOPK_SCHEMA``):
        ``count`` is DataSketches' estimate (the upper bound), bounds are
        deterministic, ``guaranteed`` marks items certainly in the true top
        ``k``."""
        return self.top_k_many([self], k)[1]

    @classmethod
    def top_k_many(cls, sketches, k: int) -> tuple[np.ndarray, pa.Table]:
        """``top_k`` of many sketches in one table: ``(index of each row's
        sketch, rows)``, by sketch, then rank (``top_k_groups``: the
        windows of a block rank in one sort, not a table each)."""
        k = check_k(k)
        rows = [s._rows_above_kth(k + 1) for s in sketches]
        flat = [row for held in rows for row in held]
        if not flat:
            return np.zeros(0, np.int64), TOPK_SCHEMA.empty_table()
        # A pass per column, not ``zip(*flat)``: that makes an iterator per
        # row, and with a runner's large heap behind it the garbage
        # collections they set off cost 18x the copies (a year of sparse
        # windows is tens of millions of rows).
        items, est, lower, upper = ([row[c] for row in flat]
                                    for c in range(4))
        # Untracked items have counter 0, so their upper bound is the offset.
        return top_k_groups(
            np.repeat(np.arange(len(rows)), [len(held) for held in rows]),
            pa.array(items, pa.string()), est, lower, upper,
            [s.max_error for s in sketches], k)

    def _rows_above_kth(self, n: int) -> list:
        """DataSketches' rows ``(item, estimate, lower, upper)`` of at least
        every item whose upper bound reaches the ``n``-th largest one (all
        of them if fewer are tracked).

        Ranking and the guaranteed flag only need those; asking
        DataSketches for items above a threshold returns them without
        turning the whole map (up to thousands of items) into Python
        tuples. The threshold starts high and drops until ``n`` items
        clear it; a lower threshold only returns more rows, never wrong
        ones."""
        offset = self.max_error
        threshold = offset + self.total // n
        while True:
            rows = self._sketch.get_frequent_items(_NO_FALSE_NEGATIVES,
                                                   threshold)
            if len(rows) >= n or threshold <= offset:
                return rows  # at the offset: every tracked item
            # Upper bounds are counter + offset; quarter the margin.
            threshold = offset + (threshold - offset) // 4

    def bounds(self, items) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic (lower, upper) bounds of any items."""
        arr, _ = coerce_batch(items)
        names = arr.to_pylist()
        lower = np.fromiter((self._sketch.get_lower_bound(x) for x in names),
                            np.int64, len(names))
        upper = np.fromiter((self._sketch.get_upper_bound(x) for x in names),
                            np.int64, len(names))
        return lower, upper

    # -- serialization --------------------------------------------------

    def to_bytes(self) -> bytes:
        """Wrapper header (format version, budget, map size, epsilon) plus
        DataSketches' own serialization; ``nbytes`` long."""
        header = _HEADER.pack(MAGIC, FORMAT_VERSION,
                              _FLAG_FOLDED if self._folded else 0, self._lg, 0,
                              self._budget_bytes, self._epsilon)
        return header + self._sketch.serialize()

    @classmethod
    def from_bytes(cls, data: bytes) -> "FrequentItemsTopK":
        """Inverse of ``to_bytes``; ``ValueError`` on invalid input."""
        data = bytes(data)
        if len(data) < _HEADER.size or data[:4] != MAGIC:
            raise ValueError("not a frequent-items top-K sketch")
        _, version, flags, lg, _, budget_bytes, epsilon = _HEADER.unpack_from(
            data)
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported frequent-items sketch format "
                             f"version {version} (this build reads "
                             f"{FORMAT_VERSION})")
        if (flags & ~_FLAG_FOLDED or not _budget.FI_MIN_LG <= lg
                <= _budget.FI_MAX_LG or len(data) > budget_bytes
                or not epsilon >= _budget.fi_epsilon(lg)):
            raise ValueError("corrupt frequent-items sketch header")
        try:
            inner = datasketches.frequent_strings_sketch.deserialize(
                data[_HEADER.size:])
        except (ValueError, RuntimeError, IndexError) as e:
            raise ValueError(f"corrupt frequent-items sketch: {e}") from None
        sketch = cls.__new__(cls)
        sketch._budget_bytes = int(budget_bytes)
        sketch._sketch = inner
        sketch._lg = lg
        sketch._epsilon = float(epsilon)
        sketch._folded = bool(flags & _FLAG_FOLDED)
        if sketch.nbytes != len(data):
            raise ValueError("corrupt frequent-items sketch: wrong length")
        return sketch

    def __reduce__(self):
        # The DataSketches object cannot be pickled; its bytes can.
        return (FrequentItemsTopK.from_bytes, (self.to_bytes(),))

    def __repr__(self) -> str:
        return (f"FrequentItemsTopK(lg_max_map_size={self._lg}, "
                f"{self.num_items} items, total={self.total}, "
                f"max_error={self.max_error}, "
                f"{self.nbytes}/{self._budget_bytes} B)")

    # -- internals ------------------------------------------------------

    def _fit_budget(self) -> None:
        """Halve the map until the serialized sketch fits the budget."""
        while self.nbytes > self._budget_bytes:
            if self._lg <= _budget.FI_MIN_LG:
                raise ValueError(
                    f"item ids too long for a budget of {self._budget_bytes} "
                    f"bytes: even the smallest frequent-items sketch takes "
                    f"{self.nbytes}")
            smaller = datasketches.frequent_strings_sketch(self._lg - 1)
            smaller.merge(self._sketch)
            self._lg -= 1
            # The old offset is at most epsilon_old * N; the smaller map's
            # purges add at most its epsilon times what it was fed (<= N).
            self._epsilon += _budget.fi_epsilon(self._lg)
            self._sketch = smaller
            self._folded = True
