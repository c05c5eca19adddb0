"""Count-Min sketch plus a bounded candidate set: the seed design's fast path.

A Count-Min sketch (``depth`` rows of ``width`` int64 counters) answers "at
most how often was item x seen?" for any x, but cannot list items. The
candidate set lists them: the items with the largest upper bounds, at most
``capacity`` of them and never more than the byte budget allows, each with
two exact-arithmetic bounds on its true count:

- ``lower``: the weight added while the item was a candidate (exact, since
  it entered the set);
- ``upper``: a bound on its count before it entered (the smaller of its
  Count-Min estimate and the sketch's bound for untracked items) plus the
  weight added since.

``dropped_bound`` is an upper bound on the true count of *every* item that
is not a candidate (including never-seen ones): whenever an item leaves the
set or is not admitted, its upper bound at that moment raises it, and an
untracked item's count cannot grow without the item passing through
``update`` again. Together these make the reported bounds and the
"guaranteed in top-K" flag deterministic: they hold for every input, not
with some probability, assuming only 64-bit integer arithmetic.

The one probabilistic statement is Count-Min's own: with probability at
least ``1 - delta`` (``delta = e**-depth``) an item's estimate exceeds its
true count by at most ``epsilon * total`` (``epsilon = e / width``), if the
hash behaves like a random function. It bounds how loose ``upper`` can be
(``upper <= estimate``); nothing reported relies on it being true.

Update rule: plain (every row adds the weight) by default, because it is
linear: merging two sketches with identical parameters adds counters, and
the result is *exactly* the counters of the concatenated stream, whatever
the order and grouping of slices a range query merges. ``conservative=True``
(raise each row's counter only to the new estimate) gives tighter
estimates, still valid upper bounds after merges, but merges are then no
longer equal to the sketch of the concatenated stream.

Batches are pre-aggregated (item, count) pairs and are processed whole with
NumPy: one stable 64-bit hash per item (``hashing.hash64``), ``depth``
cell indices by double hashing, ``np.bincount`` for the counters, and an
``np.partition`` to pick the candidates. No Beam here.
"""
import math
import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from topk.sketches import budget as _budget
from topk.sketches.common import (DEFAULT_BUDGET_BYTES, MAX_EXACT_FLOAT,
                                  check_k, coerce_batch, top_k_table)
from topk.sketches.hashing import HASH_VERSION, hash64

MAGIC = b"TKCM"
FORMAT_VERSION = 1
#: magic, format version, hash version, flags, reserved, depth, width,
#: capacity, candidates, budget, total, dropped bound.
_HEADER = struct.Struct("<4sBBBBIIIIQqq")
assert _HEADER.size == _budget.CMS_HEADER_BYTES
_FLAG_CONSERVATIVE = 1

#: Default failure probability when sizing from ``epsilon`` alone.
DEFAULT_DELTA = 0.01
#: Candidate capacity when dimensions are given without a budget.
DEFAULT_CAPACITY = 1024
_MAX_WIDTH = (1 << 32) - 1
_MAX_DEPTH = 64
_MASK32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_INT64_MAX = (1 << 63) - 1


class CountMinTopK:
    """Count-Min sketch + candidate set with deterministic bounds.

    Sizing, in order of precedence:

    - ``epsilon`` (and ``delta``, default 0.01): ``width = ceil(e/epsilon)``,
      ``depth = ceil(ln(1/delta))``;
    - ``width`` (and ``depth``, default ``budget.DEFAULT_DEPTH``);
    - otherwise from ``budget_bytes`` (default 64 KiB): counters take
      ``counter_share`` of it, with ``depth`` rows.

    ``budget_bytes`` caps ``nbytes`` (the serialized size) at all times; if
    omitted with explicit dimensions, it is what the counters plus
    ``capacity`` (default 1024) candidates of ``item_bytes``-byte ids take.
    ``capacity`` defaults to as many such candidates as the budget holds.
    """

    method = "cms"

    def __init__(self, budget_bytes: int | None = None, *,
                 epsilon: float | None = None, delta: float | None = None,
                 width: int | None = None, depth: int | None = None,
                 capacity: int | None = None, conservative: bool = False,
                 counter_share: float = _budget.DEFAULT_COUNTER_SHARE,
                 item_bytes: int = _budget.DEFAULT_ITEM_BYTES):
        if epsilon is not None or delta is not None:
            if width is not None or depth is not None:
                raise ValueError("give either epsilon/delta or width/depth, "
                                 "not both")
            if epsilon is None:
                raise ValueError("delta needs epsilon")
            width, depth = _budget.cms_dimensions_for_error(
                epsilon, DEFAULT_DELTA if delta is None else delta)
        elif width is not None:
            depth = _budget.DEFAULT_DEPTH if depth is None else depth
        else:
            width, depth = _budget.cms_dimensions_for_budget(
                DEFAULT_BUDGET_BYTES if budget_bytes is None else budget_bytes,
                _budget.DEFAULT_DEPTH if depth is None else depth,
                counter_share)
        _check_int("width", width, 1, _MAX_WIDTH)
        _check_int("depth", depth, 1, _MAX_DEPTH)
        _check_int("item_bytes", item_bytes, 0, 1 << 20)
        if budget_bytes is None:
            budget_bytes = _budget.cms_fixed_bytes(width, depth) + (
                DEFAULT_CAPACITY if capacity is None else capacity
            ) * _budget.cms_candidate_bytes(item_bytes)
        _budget.check_budget(budget_bytes)
        if budget_bytes >= 1 << 31:
            raise ValueError("budget_bytes must be below 2 GiB")
        if capacity is None:
            capacity = _budget.cms_capacity(budget_bytes, width, depth,
                                            item_bytes)
        _check_int("capacity", capacity, 1, _MAX_WIDTH)
        if budget_bytes < (_budget.cms_fixed_bytes(width, depth)
                           + _budget.CMS_CANDIDATE_OVERHEAD):
            raise ValueError(
                f"a budget of {budget_bytes} bytes cannot hold {depth}x"
                f"{width} counters ({_budget.cms_fixed_bytes(width, depth)} "
                "bytes) and a candidate")
        self._width, self._depth = int(width), int(depth)
        self._capacity = int(capacity)
        self._budget_bytes = int(budget_bytes)
        self._conservative = bool(conservative)
        self._counters = np.zeros((self._depth, self._width), dtype=np.int64)
        self._total = 0
        self._dropped = 0
        self._set_candidates(pa.array([], pa.string()),
                             np.empty(0, np.uint64), np.empty(0, np.int64),
                             np.empty(0, np.int64))

    # -- properties ---------------------------------------------------------

    @property
    def width(self) -> int:
        return self._width

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def capacity(self) -> int:
        """Most candidates kept (the byte budget may keep fewer)."""
        return self._capacity

    @property
    def conservative(self) -> bool:
        return self._conservative

    @property
    def budget_bytes(self) -> int:
        return self._budget_bytes

    @property
    def total(self) -> int:
        """Sum of all counts added (exact)."""
        return self._total

    @property
    def epsilon(self) -> float:
        """Count-Min's relative error: ``estimate <= true + epsilon *
        total`` with probability ``1 - delta`` per item."""
        return math.e / self._width

    @property
    def delta(self) -> float:
        return math.exp(-self._depth)

    @property
    def max_error(self) -> int:
        """``epsilon * total``, rounded up: how far an upper bound may exceed
        the true count, with probability ``1 - delta`` per item (not a
        deterministic bound; the reported bounds are)."""
        return math.ceil(self.epsilon * self._total)

    @property
    def dropped_bound(self) -> int:
        """Deterministic upper bound on the count of any non-candidate."""
        return self._dropped

    @property
    def num_candidates(self) -> int:
        return len(self._cand_items)

    @property
    def counters(self) -> np.ndarray:
        """The counters (read-only view, shape ``(depth, width)``)."""
        view = self._counters.view()
        view.flags.writeable = False
        return view

    @property
    def nbytes(self) -> int:
        """Exact size of ``to_bytes()``; never above ``budget_bytes``."""
        return (_budget.cms_fixed_bytes(self._width, self._depth)
                + _budget.CMS_CANDIDATE_OVERHEAD * len(self._cand_items)
                + int(self._cand_len.sum()))

    def compatible(self, other: "CountMinTopK") -> bool:
        """Whether ``other`` can be merged into this sketch."""
        return (isinstance(other, CountMinTopK)
                and other._width == self._width
                and other._depth == self._depth
                and other._conservative == self._conservative)

    # -- updates --------------------------------------------------------

    def update(self, items, counts=None, *,
               assume_unique: bool = False) -> "CountMinTopK":
        """Add a batch of pre-aggregated ``(item, count)`` pairs.

        ``items``: Arrow string array (or anything ``pa.array`` takes),
        ``counts``: non-negative integers (``None`` = 1 each). Repeated
        items are summed first; ``assume_unique=True`` skips that check
        (a sort of the hashes) for callers that know, e.g. a group-by
        output. Returns ``self``.
        """
        items, counts = coerce_batch(items, counts)
        if len(items) == 0:
            return self
        if pa.types.is_large_string(items.type):
            items = items.cast(pa.string())
        h = hash64(items)
        if not assume_unique and _has_duplicates(h):
            items, counts = _aggregate(items, counts)
            h = hash64(items)
        batch_total = _checked_sum(counts)
        if self._total + batch_total > _INT64_MAX:
            raise OverflowError("total count would exceed 2**63 - 1")
        cells = self._cells(h)
        flat = self._counters.reshape(-1)
        est_before = flat[cells].min(axis=0)
        if self._conservative:
            # Raise each cell only as far as the new estimate of the items
            # in it; with pre-aggregated batches this is the batch version
            # of the sequential rule, and every item's cells stay >= its
            # true count.
            new_est = est_before + counts
            for r in range(self._depth):
                np.maximum.at(flat, cells[r], new_est)
        else:
            _add_counts(flat, cells, counts, batch_total)
        self._total += batch_total

        pos = pc.index_in(items, value_set=self._cand_items).fill_null(
            -1).to_numpy()
        known = pos >= 0
        lo, hi = self._cand_lo.copy(), self._cand_hi.copy()
        lo[pos[known]] += counts[known]
        hi[pos[known]] += counts[known]
        # A newcomer's count before this batch was at most its Count-Min
        # estimate and at most the bound on untracked items.
        fresh = np.flatnonzero(~known)
        f_hi = np.minimum(est_before[fresh], self._dropped) + counts[fresh]
        if len(hi) >= self._capacity and len(fresh):
            # A full set keeps `capacity` items whose bounds only grew, so a
            # newcomer below the smallest of them cannot get in: settle it
            # here (most of a batch) instead of in the selection below.
            low = f_hi < hi.min()
            if low.any():
                self._dropped = max(self._dropped, int(f_hi[low].max()))
                fresh, f_hi = fresh[~low], f_hi[~low]
        self._select(items.take(pa.array(fresh)) if len(fresh) < len(items)
                     else items, h[fresh], counts[fresh], f_hi, lo, hi)
        return self

    def merge(self, other: "CountMinTopK") -> "CountMinTopK":
        """Add ``other`` (same width, depth and update rule) into this
        sketch. Counters add (exactly the counters of the concatenated
        stream with the plain rule); candidate sets are unioned, each
        item's bounds combined with the other side's bound for it, and the
        union trimmed to this sketch's capacity and budget. Returns
        ``self``."""
        if not self.compatible(other):
            raise ValueError(
                "can only merge Count-Min sketches with the same width, "
                f"depth and update rule (this: {self._depth}x{self._width}"
                f"{' conservative' if self._conservative else ''}, other: "
                f"{_describe(other)})")
        if other is self:
            other = CountMinTopK.from_bytes(other.to_bytes())
        if self._total + other._total > _INT64_MAX:
            raise OverflowError("total count would exceed 2**63 - 1")
        pos = pc.index_in(other._cand_items, value_set=self._cand_items
                          ).fill_null(-1).to_numpy()
        both = pos >= 0
        lo, hi = self._cand_lo.copy(), self._cand_hi.copy()
        lo[pos[both]] += other._cand_lo[both]
        hi[pos[both]] += other._cand_hi[both]
        # An item tracked on one side only: the other side contributes
        # at least 0 and at most its bound for that item.
        mine_only = np.ones(len(lo), dtype=bool)
        mine_only[pos[both]] = False
        hi[mine_only] += np.minimum(
            other._estimate(self._cand_hash[mine_only]), other._dropped)
        theirs = np.flatnonzero(~both)
        t_lo = other._cand_lo[theirs]
        t_hi = other._cand_hi[theirs] + np.minimum(
            self._estimate(other._cand_hash[theirs]), self._dropped)
        self._counters += other._counters
        self._total += other._total
        self._dropped += other._dropped
        self._select(other._cand_items.take(pa.array(theirs)),
                     other._cand_hash[theirs], t_lo, t_hi, lo, hi)
        return self

    # -- queries --------------------------------------------------------

    def top_k(self, k: int) -> pa.Table:
        """The ``k`` candidates with the largest estimates (``TOPK_SCHEMA``).

        ``count`` is the midpoint of the bounds, so it is never further than
        ``(upper - lower) / 2`` from the true count; ``lower_bound`` and
        ``upper_bound`` always contain it; ``guaranteed`` marks items that
        are certainly in the true top ``k``.
        """
        k = check_k(k)
        lo, hi = self._cand_lo, self._cand_hi
        return top_k_table(self._cand_items, (lo + hi) // 2, lo, hi,
                           self._dropped, k)

    def bounds(self, items) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic (lower, upper) bounds on the true count of any
        items, tracked or not."""
        arr, _ = coerce_batch(items)
        lower = np.zeros(len(arr), np.int64)
        upper = np.minimum(self._estimate(hash64(arr)), self._dropped)
        pos = pc.index_in(arr, value_set=self._cand_items).fill_null(
            -1).to_numpy()
        known = pos >= 0
        lower[known] = self._cand_lo[pos[known]]
        upper[known] = self._cand_hi[pos[known]]
        return lower, upper

    def estimate(self, items) -> np.ndarray:
        """Plain Count-Min estimates (upper bounds) of any items."""
        arr, _ = coerce_batch(items)
        return self._estimate(hash64(arr))

    def candidates(self) -> pa.Table:
        """All candidates with their bounds (item_id, lower, upper)."""
        return pa.table({"item_id": self._cand_items,
                         "lower_bound": pa.array(self._cand_lo),
                         "upper_bound": pa.array(self._cand_hi)})

    # -- serialization --------------------------------------------------

    def to_bytes(self) -> bytes:
        """Compact, versioned, little-endian encoding (``nbytes`` long)."""
        n = len(self._cand_items)
        header = _HEADER.pack(
            MAGIC, FORMAT_VERSION, HASH_VERSION,
            _FLAG_CONSERVATIVE if self._conservative else 0, 0,
            self._depth, self._width, self._capacity, n, self._budget_bytes,
            self._total, self._dropped)
        return b"".join([
            header,
            self._counters.astype("<i8", copy=False).tobytes(),
            self._cand_lo.astype("<i8", copy=False).tobytes(),
            self._cand_hi.astype("<i8", copy=False).tobytes(),
            self._cand_len.astype("<u4").tobytes(),
            _string_bytes(self._cand_items),
        ])

    @classmethod
    def from_bytes(cls, data: bytes) -> "CountMinTopK":
        """Inverse of ``to_bytes``; raises ``ValueError`` on anything that
        is not a valid sketch of this format and hash version."""
        data = bytes(data)
        if len(data) < _HEADER.size or data[:4] != MAGIC:
            raise ValueError("not a Count-Min top-K sketch")
        (_, version, hash_version, flags, _, depth, width, capacity, n,
         budget_bytes, total, dropped) = _HEADER.unpack_from(data)
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported Count-Min sketch format version "
                             f"{version} (this build reads {FORMAT_VERSION})")
        if hash_version != HASH_VERSION:
            raise ValueError(f"sketch was hashed with hash version "
                             f"{hash_version}, this build uses {HASH_VERSION}")
        if flags & ~_FLAG_CONSERVATIVE:
            raise ValueError(f"unknown flags {flags:#x}")
        cells = depth * width
        fixed = _HEADER.size + 8 * cells + 20 * n
        if not (1 <= depth <= _MAX_DEPTH and width >= 1 and capacity >= 1
                and n <= capacity and len(data) >= fixed
                and len(data) <= budget_bytes and total >= 0
                and dropped >= 0):
            raise ValueError("corrupt Count-Min sketch header")
        off = _HEADER.size
        counters = np.frombuffer(data, "<i8", cells, off).astype(np.int64)
        off += 8 * cells
        lo = np.frombuffer(data, "<i8", n, off).astype(np.int64)
        hi = np.frombuffer(data, "<i8", n, off + 8 * n).astype(np.int64)
        lengths = np.frombuffer(data, "<u4", n, off + 16 * n).astype(np.int64)
        off += 20 * n
        if off + int(lengths.sum()) != len(data):
            raise ValueError("corrupt Count-Min sketch: wrong length")
        if (counters.min(initial=0) < 0 or (lo < 0).any() or (lo > hi).any()
                or counters.reshape(depth, width)[0].sum() != total
                and not flags & _FLAG_CONSERVATIVE):
            raise ValueError("corrupt Count-Min sketch: inconsistent counts")
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum(lengths, out=offsets[1:])
        items = pa.Array.from_buffers(pa.string(), n, [
            None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data[off:])])
        try:
            items.validate(full=True)
        except pa.ArrowInvalid as e:
            raise ValueError(f"corrupt Count-Min sketch: {e}") from None
        sketch = cls(budget_bytes, width=width, depth=depth,
                     capacity=capacity,
                     conservative=bool(flags & _FLAG_CONSERVATIVE))
        sketch._counters = counters.reshape(depth, width)
        sketch._total, sketch._dropped = int(total), int(dropped)
        sketch._set_candidates(items, hash64(items), lo, hi)
        return sketch

    def __reduce__(self):
        # Beam pickles accumulators; the bytes are the canonical state.
        return (CountMinTopK.from_bytes, (self.to_bytes(),))

    def __repr__(self) -> str:
        return (f"CountMinTopK({self._depth}x{self._width}, "
                f"{len(self._cand_items)}/{self._capacity} candidates, "
                f"total={self._total}, {self.nbytes}/{self._budget_bytes} B)")

    # -- internals ------------------------------------------------------

    def _cells(self, h: np.ndarray) -> np.ndarray:
        """Flat counter index of every item in every row, ``(depth, n)``.

        Double hashing (Kirsch & Mitzenmacher): row r uses ``a + r*b`` of
        the two 32-bit halves of the item hash, mapped to ``[0, width)`` by
        a multiply-shift (Lemire), so no division and no bias."""
        a = h & _MASK32
        b = (h >> _S32) | np.uint64(1)
        w = np.uint64(self._width)
        out = np.empty((self._depth, len(h)), dtype=np.int64)
        for r in range(self._depth):
            g = (a + np.uint64(r) * b) & _MASK32
            out[r] = ((g * w) >> _S32).astype(np.int64) + r * self._width
        return out

    def _estimate(self, h: np.ndarray) -> np.ndarray:
        if len(h) == 0:
            return np.empty(0, np.int64)
        return self._counters.reshape(-1)[self._cells(h)].min(axis=0)

    def _set_candidates(self, items, hashes, lo, hi) -> None:
        self._cand_items = items
        self._cand_hash = hashes
        self._cand_lo = lo
        self._cand_hi = hi
        self._cand_len = _lengths(items)

    def _select(self, new_items: pa.Array, new_hash: np.ndarray,
                new_lo: np.ndarray, new_hi: np.ndarray, old_lo: np.ndarray,
                old_hi: np.ndarray) -> None:
        """Keep the best of (current candidates with bounds old_lo/old_hi)
        and (new items), within capacity and budget; everything left out
        raises the bound on untracked items."""
        m = len(self._cand_items)
        all_hi = np.concatenate([old_hi, new_hi])
        all_hash = np.concatenate([self._cand_hash, new_hash])
        keep = _top_indices(all_hi, all_hash, self._capacity)
        new_len = _lengths(new_items)
        all_len = np.concatenate([self._cand_len, new_len])
        # Byte budget: drop the weakest candidates until everything fits.
        size = (_budget.cms_fixed_bytes(self._width, self._depth)
                + int((_budget.CMS_CANDIDATE_OVERHEAD + all_len[keep]).sum()))
        if size > self._budget_bytes:
            order = np.lexsort((~all_hash[keep], all_hi[keep]))
            freed = np.cumsum(
                _budget.CMS_CANDIDATE_OVERHEAD + all_len[keep][order])
            cut = int(np.searchsorted(freed, size - self._budget_bytes)) + 1
            keep = np.sort(keep[order[cut:]])
        dropped = np.ones(len(all_hi), dtype=bool)
        dropped[keep] = False
        if dropped.any():
            self._dropped = max(self._dropped, int(all_hi[dropped].max()))
        # Canonical order (by hash): equal states serialize identically.
        keep = keep[np.argsort(all_hash[keep], kind="stable")]
        from_old = keep < m
        pieces = pa.concat_arrays([
            self._cand_items.take(pa.array(keep[from_old], pa.int64())),
            new_items.take(pa.array(keep[~from_old] - m, pa.int64())
                           ).cast(pa.string()),
        ])
        # The concatenation lists the old candidates first; put it back in
        # hash order.
        at = np.empty(len(keep), np.int64)
        at[from_old] = np.arange(from_old.sum())
        at[~from_old] = from_old.sum() + np.arange((~from_old).sum())
        all_lo = np.concatenate([old_lo, new_lo])
        self._set_candidates(pieces.take(pa.array(at)), all_hash[keep],
                             all_lo[keep], all_hi[keep])


def _top_indices(hi: np.ndarray, hsh: np.ndarray, capacity: int) -> np.ndarray:
    """Indices of the ``capacity`` largest ``hi``; ties at the threshold go
    to the smaller hash, so the choice does not depend on input order."""
    n = len(hi)
    if n <= capacity:
        return np.arange(n)
    # A stable (radix/tim) sort, not np.partition: bounds repeat a lot
    # (every newcomer seen once gets the same one), which makes
    # introselect several times slower than this.
    threshold = np.sort(hi, kind="stable")[n - capacity]
    above = np.flatnonzero(hi > threshold)
    tied = np.flatnonzero(hi == threshold)
    need = capacity - len(above)
    tied = tied[np.argsort(hsh[tied], kind="stable")[:need]]
    return np.sort(np.concatenate([above, tied]))


def _has_duplicates(h: np.ndarray) -> bool:
    if len(h) < 2:
        return False
    s = np.sort(h)
    return bool((s[1:] == s[:-1]).any())


def _aggregate(items: pa.Array, counts: np.ndarray):
    """Sum counts of repeated items (exactly, by string)."""
    out = pa.table({"item": items, "count": counts}).group_by(
        "item").aggregate([("count", "sum")])
    return (out["item"].combine_chunks().cast(pa.string()),
            out["count_sum"].to_numpy().astype(np.int64))


def _checked_sum(counts: np.ndarray) -> int:
    if len(counts) and int(counts.max()) > _INT64_MAX // len(counts):
        total = sum(int(c) for c in counts)  # NumPy would wrap silently
    else:
        total = int(counts.sum())
    if total > _INT64_MAX:
        raise OverflowError("batch total exceeds 2**63 - 1")
    return total


def _add_counts(flat: np.ndarray, cells: np.ndarray, counts: np.ndarray,
                batch_total: int) -> None:
    depth = cells.shape[0]
    if batch_total < MAX_EXACT_FLOAT:
        # bincount sums in float64, exact below 2**53, and is ~10x faster
        # than np.add.at.
        flat += np.bincount(cells.ravel(), weights=np.tile(counts, depth),
                            minlength=len(flat)).astype(np.int64)
    else:
        np.add.at(flat, cells.ravel(), np.tile(counts, depth))


def _lengths(items: pa.Array) -> np.ndarray:
    if len(items) == 0:
        return np.empty(0, np.int64)
    off_type = np.int64 if pa.types.is_large_string(items.type) else np.int32
    off = np.frombuffer(items.buffers()[1], dtype=off_type)[
        items.offset:items.offset + len(items) + 1]
    return np.diff(off).astype(np.int64)


def _string_bytes(items: pa.Array) -> bytes:
    if len(items) == 0:
        return b""
    off = np.frombuffer(items.buffers()[1], dtype=np.int32)[
        items.offset:items.offset + len(items) + 1]
    data = items.buffers()[2]
    if data is None:
        return b""
    return data.slice(int(off[0]), int(off[-1] - off[0])).to_pybytes()


def _check_int(name: str, value, lo: int, hi: int) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
            or not lo <= value <= hi):
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got "
                         f"{value!r}")


def _describe(other) -> str:
    if isinstance(other, CountMinTopK):
        return (f"{other._depth}x{other._width}"
                f"{' conservative' if other._conservative else ''}")
    return type(other).__name__
