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
``update`` again. A merge (``merge_ranges``: any number of sketches at once)
sums, for every item any input tracks, its bounds in each input (``[0,
dropped_bound]`` where untracked), caps the upper bound by the summed
counters' estimate, and trims the union once; its ``dropped_bound`` starts
at the sum of the inputs'. Together these make the reported bounds and the
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

A sketch starts *exact*: while nothing has been dropped (``dropped_bound``
is 0) its candidates are every item seen, with ``lower == upper`` = the true
count, and the counters are not kept: with the plain rule they are a
function of those counts (every item adds its count to its cells), made when
first needed. Only when the candidates outgrow capacity or budget are the
counters made and kept, and the sketch goes on exactly as if it had had them
all along. A minute of sparse data (a few events) then costs its candidates,
not ``depth x width`` counters, in memory, in bytes, and in every window
that merges it; a merge of exact sketches whose union fits is exact too.
(Conservative sketches keep counters from the start: their counters are not
a function of the counts.)

Batches are pre-aggregated (item, count) pairs and are processed whole with
NumPy: one stable 64-bit hash per item (``hashing.hash64``), ``depth``
cell indices by double hashing, ``np.bincount`` for the counters, and an
``np.partition`` to pick the candidates. No Beam here.
"""
import functools
import math
import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from topk.approx.sketches import budget as _budget
from topk.approx.sketches.common import (DEFAULT_BUDGET_BYTES, MAX_EXACT_FLOAT,
                                  TOPK_SCHEMA, check_k, coerce_batch,
                                  kth_uppers, top_k_groups)
from topk.approx.sketches.hashing import HASH_VERSION, hash64
from topk.core import ranking

MAGIC = b"TKCM"
#: Written for sketches with counters; 2 for exact ones, which carry none
#: (``to_bytes``). Both are read.
FORMAT_VERSION = 1
EXACT_FORMAT_VERSION = 2
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
    # Slots, not a dict per sketch: a sparse year makes hundreds of
    # thousands of small sketches (a dict each is memory, and one more
    # object for the garbage collector to walk).
    __slots__ = ("_width", "_depth", "_capacity", "_budget_bytes",
                 "_conservative", "_counters", "_total", "_dropped",
                 "_cand_items", "_cand_hash", "_cand_lo", "_cand_hi",
                 "_cand_len", "_cand_bytes")

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
        self._counters = self._initial_counters()
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
    def exact(self) -> bool:
        """Whether nothing was dropped yet and the counters are implied by
        the candidates (see the module docstring): then every count
        reported is the true count."""
        return self._counters is None

    @property
    def exact_params(self) -> tuple:
        """What exact sketches must share to be packed together
        (``pack_exact``): an exact sketch is never conservative (its
        counters start at once)."""
        return (self._budget_bytes, self._width, self._depth, self._capacity)

    @property
    def counters(self) -> np.ndarray:
        """The counters (read-only view, shape ``(depth, width)``); made
        from the candidates for an exact sketch."""
        view = self._dense_counters().view()
        view.flags.writeable = False
        return view

    @property
    def nbytes(self) -> int:
        """Exact size of ``to_bytes()``; never above ``budget_bytes``."""
        fixed = (_budget.CMS_HEADER_BYTES if self.exact else
                 _budget.cms_fixed_bytes(self._width, self._depth))
        return (fixed + _budget.CMS_CANDIDATE_OVERHEAD * len(self._cand_items)
                + self._cand_bytes)

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
        batch_total = _checked_sum(counts)
        if self._total + batch_total > _INT64_MAX:
            raise OverflowError("total count would exceed 2**63 - 1")
        if not assume_unique:
            items, counts = _aggregate(items, counts, batch_total)
        h = hash64(items)
        if self.exact:
            if self._add_exactly(items, h, counts, batch_total):
                return self
            # The candidates outgrow the budget: from here on a sketch
            # with counters, equal to one that had them from the start.
            self._counters = self._dense_counters()
        cells = self._cells(h)
        flat = self._counters.reshape(-1)
        est_before = _row_min(flat[cells])
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
        sketch: ``merge_many([self, other])``, kept in ``self`` (its
        capacity and budget). Returns ``self``."""
        merged = CountMinTopK.merge_many([self, other])
        self._counters, self._total = merged._counters, merged._total
        self._dropped = merged._dropped
        self._set_candidates(merged._cand_items, merged._cand_hash,
                             merged._cand_lo, merged._cand_hi)
        return self

    @classmethod
    def merge_many(cls, sketches) -> "CountMinTopK":
        """The merge of ``sketches`` (same width, depth and update rule) as a
        new sketch with the first one's capacity and budget; the inputs are
        not modified. See ``merge_ranges``."""
        sketches = list(sketches)
        _check_ranges(sketches, [(0, len(sketches))])
        if len(sketches) > 1 and all(s.exact for s in sketches):
            # Exact sketches whose union fits are merged as one run of
            # their candidates (an hour of sparse minutes: the walk's
            # set-up would cost ten times more).
            merged = sketches[0].exact_runs(
                pa.concat_arrays([s._cand_items for s in sketches]),
                np.concatenate([s._cand_lo for s in sketches]),
                [0, sum(len(s._cand_items) for s in sketches)],
                hashes=np.concatenate([s._cand_hash for s in sketches]))[0]
            if merged is not None:
                return merged
        return cls.merge_ranges(sketches, [(0, len(sketches))])[0]

    @classmethod
    def merge_ranges(cls, sketches, ranges) -> list["CountMinTopK"]:
        """The merge of ``sketches[a:b]`` for every ``(a, b)`` of
        ``ranges``, each a new sketch with the first sketch's capacity and
        budget; the inputs are not modified.

        A merge of m sketches at once: counters add (with the plain rule,
        exactly the counters of the concatenated streams); every item that
        any of them tracks gets, per sketch, its bounds there if tracked,
        else ``[0, that sketch's dropped bound]``, summed, and the upper
        bound is capped by the summed counters' estimate; the union is then
        trimmed once to capacity and budget (``_choose``), whatever is left
        out raising the bound on untracked items, which starts at the sum
        of the inputs' bounds. All bounds hold deterministically if the
        inputs' do.

        Sliding windows are many overlapping ranges: the items of all
        sketches are encoded once, and running sums move from one range to
        the next by adding the sketches that enter and subtracting those
        that leave, so each range costs work in proportion to its own
        candidates, not to the number of sketches it spans (and no string
        is compared twice).
        """
        sketches, ranges = list(sketches), list(ranges)
        _check_ranges(sketches, ranges)
        walk = _RangeWalk(sketches, ranges, need_counters=True)
        out = []
        for counters, total, dropped, codes, lo, hi in walk:
            merged = walk.first._empty_like()
            merged._counters = None if counters is None else counters.copy()
            merged._total, merged._dropped = total, dropped
            merged._set_candidates(walk.union.take(pa.array(codes)),
                                   walk.hashes[codes], lo, hi)
            out.append(merged)
        return out

    @classmethod
    def rank_ranges(cls, sketches, ranges, k: int
                    ) -> tuple[pa.Table, np.ndarray]:
        """``merge_ranges(sketches, ranges)[i].top_k(k)`` for every range
        ``i`` at once, without making the merged sketches: ``(rows,
        totals)``, where ``rows`` is ``TOPK_SCHEMA`` plus ``range`` (the
        range's index; rows in range order, then rank) and ``totals`` the
        merged totals.

        Many windows ranked one merged sketch at a time spent most of their
        time in the fixed cost of small calls (a sketch object, a string
        take and an Arrow sort per window); here a range costs a few NumPy
        calls on its candidates, and the ids are taken and sorted once for
        all ranges. When every sketch is exact, the ranges whose items fit
        one sketch (all of them, on sparse data) cost one sort together
        (``_rank_exact_ranges``)."""
        k = check_k(k)
        # An array: a sparse year's windows are hundreds of thousands of
        # ranges, which NumPy checks and splits at once.
        sketches = list(sketches)
        ranges = np.asarray(ranges, np.int64).reshape(-1, 2)
        _check_ranges(sketches, ranges)
        if not all(s.exact for s in sketches):
            return cls._rank_walk(sketches, _pairs(ranges), k)
        # The walk's few NumPy calls per range were most of a year of
        # sparse minutes' ranking; it keeps the ranges that must be trimmed.
        rows, totals, trimmed, encoded = _rank_exact_ranges(sketches,
                                                            ranges, k)
        if len(trimmed):
            more, totals[trimmed] = cls._rank_walk(
                sketches, _pairs(ranges[trimmed]), k, encoded=encoded)
            more = more.set_column(0, more.schema.field(0), pa.array(
                trimmed[more["range"].to_numpy()]))
            rows = pa.concat_tables([rows, more])
            rows = rows.take(np.argsort(rows["range"].to_numpy(),
                                        kind="stable"))
        return rows, totals

    @classmethod
    def _rank_walk(cls, sketches, ranges, k: int, encoded=None
                   ) -> tuple[pa.Table, np.ndarray]:
        """``rank_ranges`` one range at a time, along a ``_RangeWalk``
        (``encoded``: the sketches' ``_encode_candidates``, if made)."""
        walk = _RangeWalk(sketches, ranges, need_counters=False,
                          encoded=encoded)
        parts, totals, nth = [], [], []
        for r, (_, total, dropped, codes, lo, hi) in enumerate(walk):
            totals.append(total)
            count = (lo + hi) // 2
            near = np.arange(len(count))
            if len(count) > k:
                kth = np.partition(count, len(count) - k)[len(count) - k]
                near = np.flatnonzero(count >= kth)
            parts.append((np.full(len(near), r, np.int64), codes[near],
                          count[near], lo[near], hi[near]))
            nth.append(kth_uppers(hi, dropped, k))
        totals = np.array(totals, np.int64)
        if not parts or not sum(len(p[0]) for p in parts):
            return _RANGE_TOPK_SCHEMA.empty_table(), totals
        rng, code, count, lo, hi = (np.concatenate(c) for c in zip(*parts))
        rng, rows = top_k_groups(rng, walk.union.take(pa.array(code)), count,
                                 lo, hi, None, k, kth_pairs=nth)
        return pa.Table.from_arrays(
            [pa.array(rng)] + rows.columns,
            schema=_RANGE_TOPK_SCHEMA), totals

    # -- queries --------------------------------------------------------

    def top_k(self, k: int) -> pa.Table:
        """The ``k`` candidates with the largest estimates (``TOPK_SCHEMA``).

        ``count`` is the midpoint of the bounds, so it is never further than
        ``(upper - lower) / 2`` from the true count; ``lower_bound`` and
        ``upper_bound`` always contain it; ``guaranteed`` marks items that
        are certainly in the true top ``k``.
        """
        return self.top_k_many([self], k)[1]

    @classmethod
    def top_k_many(cls, sketches, k: int) -> tuple[np.ndarray, pa.Table]:
        """``top_k`` of many sketches in one table: ``(index of each row's
        sketch, rows)``, by sketch, then rank (``top_k_groups``)."""
        k = check_k(k)
        sketches = list(sketches)
        if not sketches:
            return np.zeros(0, np.int64), TOPK_SCHEMA.empty_table()
        lo = np.concatenate([s._cand_lo for s in sketches])
        hi = np.concatenate([s._cand_hi for s in sketches])
        return top_k_groups(
            np.repeat(np.arange(len(sketches)),
                      [len(s._cand_items) for s in sketches]),
            pa.concat_arrays([s._cand_items for s in sketches]),
            (lo + hi) // 2, lo, hi, [s._dropped for s in sketches], k)

    def bounds(self, items) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic (lower, upper) bounds on the true count of any
        items, tracked or not."""
        arr, _ = coerce_batch(items)
        lower = np.zeros(len(arr), np.int64)
        upper = (np.zeros(len(arr), np.int64) if self.exact else
                 np.minimum(self._estimate(hash64(arr)), self._dropped))
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

    def copy(self) -> "CountMinTopK":
        """An independent copy (cheaper than a round trip through bytes)."""
        sketch = self._empty_like()
        sketch._counters = (None if self._counters is None
                            else self._counters.copy())
        sketch._total, sketch._dropped = self._total, self._dropped
        # Candidate arrays are replaced, never written in place: shared.
        sketch._set_candidates(self._cand_items, self._cand_hash,
                               self._cand_lo, self._cand_hi)
        return sketch

    # -- many exact sketches at once ----------------------------------------
    # On sparse data most slice sketches hold an item or two: made, pickled
    # and read one by one, each costs a fixed tens to hundreds of
    # microseconds, far above its counting. Exact sketches are columns
    # (ids, hashes, counts), so many are made and moved as one set of
    # arrays.

    def exact_runs(self, items, counts, offsets,
                   hashes: np.ndarray | None = None) -> list:
        """New sketches with this one's parameters, the i-th counting rows
        ``offsets[i]:offsets[i + 1]`` of ``items`` / ``counts`` (repeats
        summed), made at once; each equals an empty sketch ``update``-d
        with its rows. A run whose items do not fit exactly is ``None``
        (make it with ``update``); so is every run of a conservative sketch,
        whose counters start at once. ``hashes``: the items'
        ``hashing.hash64``, when the caller has them (candidates being
        merged; rows hashed once for many runs)."""
        items, counts = coerce_batch(items, counts, drop_zeros=False)
        offsets = np.asarray(offsets, np.int64)
        runs = len(offsets) - 1
        if self._conservative or runs <= 0:
            return [None] * max(runs, 0)
        sizes = offsets[1:] - offsets[:-1]
        if offsets[0] != 0 or offsets[-1] != len(items) or sizes.min() < 0:
            raise ValueError("offsets must rise from 0 to the number of rows")
        if pa.types.is_large_string(items.type):
            items = items.cast(pa.string())
        if hashes is not None and len(hashes) != len(items):
            raise ValueError("hashes and items differ in length")
        h = hash64(items) if hashes is None else np.asarray(hashes, np.uint64)
        run = np.repeat(np.arange(runs, dtype=np.int64), sizes)
        # A run of far more rows than the sketch holds items would, on
        # dense data, not fit: left to ``update`` without sorting it.
        tried = sizes <= _EXACT_RUN_ROWS * self._capacity
        if not tried.any():
            return [None] * runs
        if not counts.all() or not tried.all():
            # Zero counts change nothing (``update`` drops them too).
            keep = (counts > 0) & tried[run]
            items = items.filter(pa.array(keep))
            counts, run, h = counts[keep], run[keep], h[keep]
        try:
            batch_total = _checked_sum(counts)
        except OverflowError:
            return [None] * runs  # each run may still fit int64 alone
        # Candidates are kept in hash order, ties in the order first seen
        # (stable), as ``update`` keeps them; a repeated item is then a run
        # of equal hashes, summed into its first row.
        order = np.lexsort((h, run))
        if (order[1:] < order[:-1]).any():
            run, h, counts = run[order], h[order], counts[order]
            items = items.take(pa.array(order))
        same = (run[1:] == run[:-1]) & (h[1:] == h[:-1])
        clash = np.zeros(runs, bool)
        if same.any():
            at = np.flatnonzero(same)
            equal = pc.equal(items.take(pa.array(at)),
                             items.take(pa.array(at + 1))).to_numpy(
                                 zero_copy_only=False)
            # Two ids with one 64-bit hash: left to ``update``.
            clash[run[at[~equal]]] = True
            first = np.concatenate(([True], ~same))
            counts = _sum_by_index(np.cumsum(first) - 1, counts,
                                   int(first.sum()), batch_total)
            keep = np.flatnonzero(first)
            run, h, items = run[keep], h[keep], items.take(pa.array(keep))
        bounds = np.searchsorted(run, np.arange(runs + 1))
        off = _string_offsets(items)
        sizes = bounds[1:] - bounds[:-1]
        fits = tried & ~clash & (sizes <= self._capacity) & (
            _budget.CMS_CANDIDATE_OVERHEAD * sizes
            + (off[bounds[1:]] - off[bounds[:-1]]) <= self._candidate_room())
        which = np.flatnonzero(fits)
        # Partial sums stay within the batch total, checked above.
        cum = np.concatenate(([0], np.cumsum(counts)))
        out = [None] * runs
        for i, sketch in zip(which.tolist(), self._exact_sketches(
                items, h, counts, off[1:] - off[:-1], bounds,
                (cum[bounds[1:]] - cum[bounds[:-1]]).tolist(), which)):
            out[i] = sketch
        return out

    @classmethod
    def pack_exact(cls, sketches) -> tuple:
        """Exact sketches of one parameter set -> a few byte strings that
        ``unpack_exact`` turns back into equal sketches (a pickle of them
        is all a shuffle moves); ``ValueError`` for others. Bytes, not
        arrays: a pickled NumPy array costs about 10 us each way, and a
        sparse year's shuffles move hundreds of thousands of these."""
        sketches = list(sketches)
        params = sketches[0].exact_params
        if not all(s.exact and s.exact_params == params for s in sketches):
            raise ValueError("pack_exact takes exact sketches of one "
                             "parameter set")
        items = pa.concat_arrays([s._cand_items for s in sketches])
        return (params, _typed_bytes(
                    np.array([len(s._cand_items) for s in sketches],
                             np.int64)),
                _typed_bytes(np.concatenate([s._cand_len for s in sketches])),
                _string_bytes(items),
                _typed_bytes(np.concatenate([s._cand_hash
                                             for s in sketches])),
                _typed_bytes(np.concatenate([s._cand_lo for s in sketches])))

    @classmethod
    def unpack_exact(cls, packed) -> list:
        """Inverse of ``pack_exact`` (trusted input: a pickle). The arrays
        are read-only views of the packed bytes (no sketch modifies its
        candidates in place)."""
        params, sizes, lengths, data, hashes, counts = packed
        sizes, lengths, hashes, counts = map(
            _typed_array, (sizes, lengths, hashes, counts))
        offsets = np.zeros(len(lengths) + 1, np.int32)
        np.cumsum(lengths, out=offsets[1:])
        items = pa.Array.from_buffers(pa.string(), len(lengths), [
            None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)])
        bounds = np.zeros(len(sizes) + 1, np.int64)
        np.cumsum(sizes, out=bounds[1:])
        return _validated(cls, *params, False)._exact_sketches(
            items, hashes, counts, lengths, bounds, _run_sums(counts, bounds),
            range(len(sizes)))

    def _exact_sketches(self, items, hashes, counts, lengths, bounds, totals,
                        which) -> list:
        """Exact sketches with this one's parameters, sketch ``i`` of
        ``which`` holding candidates ``bounds[i]:bounds[i + 1]`` (in hash
        order) of the given columns, and ``totals[i]`` events."""
        # Hundreds of thousands of these on a sparse year: the id bytes are
        # summed in bulk and the attributes set directly.
        which = np.asarray(which, np.int64)
        lo_at, hi_at = bounds[which], bounds[which + 1]
        id_offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=id_offsets[1:])
        id_bytes = (id_offsets[hi_at] - id_offsets[lo_at]).tolist()
        totals = np.asarray(totals, np.int64)[which].tolist()
        blank, cut = self._blank_like, items.slice
        out = []
        for a, b, total, n_bytes in zip(lo_at.tolist(), hi_at.tolist(),
                                        totals, id_bytes):
            sketch = blank()
            sketch._counters, sketch._total, sketch._dropped = None, total, 0
            sketch._cand_items = cut(a, b - a)
            sketch._cand_hash = hashes[a:b]
            sketch._cand_lo = sketch._cand_hi = counts[a:b]
            sketch._cand_len = lengths[a:b]
            sketch._cand_bytes = n_bytes
            out.append(sketch)
        return out

    # -- serialization --------------------------------------------------

    def to_bytes(self) -> bytes:
        """Compact, versioned, little-endian encoding (``nbytes`` long); an
        exact sketch has no counters (format version 2)."""
        n = len(self._cand_items)
        header = _HEADER.pack(
            MAGIC, EXACT_FORMAT_VERSION if self.exact else FORMAT_VERSION,
            HASH_VERSION, _FLAG_CONSERVATIVE if self._conservative else 0, 0,
            self._depth, self._width, self._capacity, n, self._budget_bytes,
            self._total, self._dropped)
        return b"".join([
            header,
            b"" if self.exact else
            self._counters.astype("<i8", copy=False).tobytes(),
            self._cand_lo.astype("<i8", copy=False).tobytes(),
            self._cand_hi.astype("<i8", copy=False).tobytes(),
            self._cand_len.astype("<u4").tobytes(),
            _string_bytes(self._cand_items),
        ])

    @classmethod
    def from_bytes(cls, data: bytes, _hashes: bytes | None = None
                   ) -> "CountMinTopK":
        """Inverse of ``to_bytes``; raises ``ValueError`` on anything that
        is not a valid sketch of this format and hash version.
        (``_hashes``: the candidates' hashes, when a pickle carries them.)"""
        data = bytes(data)
        if len(data) < _HEADER.size or data[:4] != MAGIC:
            raise ValueError("not a Count-Min top-K sketch")
        (_, version, hash_version, flags, _, depth, width, capacity, n,
         budget_bytes, total, dropped) = _HEADER.unpack_from(data)
        if version not in (FORMAT_VERSION, EXACT_FORMAT_VERSION):
            raise ValueError(
                f"unsupported Count-Min sketch format version {version} "
                f"(this build reads {FORMAT_VERSION} and "
                f"{EXACT_FORMAT_VERSION})")
        exact = version == EXACT_FORMAT_VERSION
        if hash_version != HASH_VERSION:
            raise ValueError(f"sketch was hashed with hash version "
                             f"{hash_version}, this build uses {HASH_VERSION}")
        if flags & ~_FLAG_CONSERVATIVE:
            raise ValueError(f"unknown flags {flags:#x}")
        cells = 0 if exact else depth * width
        fixed = _HEADER.size + 8 * cells + 20 * n
        if not (1 <= depth <= _MAX_DEPTH and width >= 1 and capacity >= 1
                and n <= capacity and len(data) >= fixed
                and len(data) <= budget_bytes and total >= 0
                and dropped >= 0 and not (exact and (
                    dropped or flags & _FLAG_CONSERVATIVE))):
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
                or exact and ((lo != hi).any() or lo.sum() != total)
                or not exact and not flags & _FLAG_CONSERVATIVE
                and counters.reshape(depth, width)[0].sum() != total):
            raise ValueError("corrupt Count-Min sketch: inconsistent counts")
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum(lengths, out=offsets[1:])
        items = pa.Array.from_buffers(pa.string(), n, [
            None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data[off:])])
        try:
            items.validate(full=True)
        except pa.ArrowInvalid as e:
            raise ValueError(f"corrupt Count-Min sketch: {e}") from None
        sketch = _validated(cls, budget_bytes, width, depth, capacity,
                            bool(flags & _FLAG_CONSERVATIVE))._blank_like()
        sketch._counters = None if exact else counters.reshape(depth, width)
        sketch._total, sketch._dropped = int(total), int(dropped)
        if _hashes is not None and len(_hashes) != 8 * n:
            raise ValueError("corrupt Count-Min sketch: wrong hashes")
        hashes = (hash64(items) if _hashes is None
                  else np.frombuffer(_hashes, np.uint64).copy())
        sketch._set_candidates(items, hashes, lo, hi, lengths)
        return sketch

    def __reduce__(self):
        # Beam pickles accumulators and shuffled sketches; the bytes are the
        # canonical state. The hashes travel along (a pickle is trusted
        # anyway), so unpickling does not hash every candidate again.
        return (CountMinTopK.from_bytes, (self.to_bytes(),
                                          self._cand_hash.tobytes()))

    def __repr__(self) -> str:
        return (f"CountMinTopK({self._depth}x{self._width}, "
                f"{len(self._cand_items)}/{self._capacity} candidates, "
                f"total={self._total}, {self.nbytes}/{self._budget_bytes} B)")

    # -- internals ------------------------------------------------------

    def _cells(self, h: np.ndarray) -> np.ndarray:
        """Flat counter index of every item in every row, ``(depth, n)``.

        Double hashing (Kirsch & Mitzenmacher): row r uses ``a + r*b`` of
        the two 32-bit halves of the item hash, mapped to ``[0, width)`` by
        a multiply-shift (Lemire), so no division and no bias. All rows at
        once (broadcast over r)."""
        a = h & _MASK32
        b = (h >> _S32) | np.uint64(1)
        r = np.arange(self._depth, dtype=np.uint64)[:, None]
        g = (a + r * b) & _MASK32
        cells = ((g * np.uint64(self._width)) >> _S32).astype(np.int64)
        cells += (np.arange(self._depth, dtype=np.int64) * self._width)[:, None]
        return cells

    def _estimate(self, h: np.ndarray) -> np.ndarray:
        return _row_min(self._dense_counters().reshape(-1)[self._cells(h)])

    def _initial_counters(self) -> np.ndarray | None:
        """``None`` (exact) unless the sketch is conservative."""
        if not self._conservative:
            return None
        return np.zeros((self._depth, self._width), dtype=np.int64)

    def _dense_counters(self) -> np.ndarray:
        """The counters; an exact sketch's are its candidates' counts added
        to their cells (what the plain rule would have made)."""
        if self._counters is not None:
            return self._counters
        counters = np.zeros((self._depth, self._width), dtype=np.int64)
        if len(self._cand_lo):
            _add_counts(counters.reshape(-1), self._cells(self._cand_hash),
                        self._cand_lo, self._total)
        return counters

    def _add_exactly(self, items: pa.Array, h: np.ndarray,
                     counts: np.ndarray, batch_total: int) -> bool:
        """Add unique ``items`` (hashes ``h``) to an exact sketch's
        candidates if all of them still fit capacity and budget; ``False``
        (nothing changed) if not."""
        if not len(self._cand_items):
            # A new sketch (most of them, on sparse data): its candidates
            # are the batch, in hash order.
            if not self._fits(len(items), int(_lengths(items).sum())):
                return False
            order = np.argsort(h, kind="stable")
            if len(items) > 1:
                items, h, counts = items.take(pa.array(order)), h[order], \
                    counts[order]
            self._set_candidates(items, h, counts, counts)
            self._total += batch_total
            return True
        pos = pc.index_in(items, value_set=self._cand_items).fill_null(
            -1).to_numpy()
        known = pos >= 0
        lo = self._cand_lo.copy()
        lo[pos[known]] += counts[known]
        fresh = np.flatnonzero(~known)
        if len(fresh):
            new_items = (items.take(pa.array(fresh)) if len(fresh) < len(items)
                         else items)
            all_hash = np.concatenate([self._cand_hash, h[fresh]])
            all_len = np.concatenate([self._cand_len, _lengths(new_items)])
            if not self._fits(len(all_hash), int(all_len.sum())):
                return False
            order = np.argsort(all_hash, kind="stable")
            lo = np.concatenate([lo, counts[fresh]])[order]
            self._set_candidates(
                pa.chunked_array([self._cand_items, new_items], pa.string())
                .take(pa.array(order)).combine_chunks(), all_hash[order],
                lo, lo)
        else:
            self._cand_lo = self._cand_hi = lo
        self._total += batch_total
        return True

    def _set_candidates(self, items, hashes, lo, hi, lengths=None) -> None:
        self._cand_items = items
        self._cand_hash = hashes
        self._cand_lo = lo
        self._cand_hi = hi
        self._cand_len = _lengths(items) if lengths is None else lengths
        # Kept, not summed on each ``nbytes``: ranking a sparse year asks
        # the size of hundreds of thousands of small sketches, twice each.
        self._cand_bytes = int(self._cand_len.sum())

    def _select(self, new_items: pa.Array, new_hash: np.ndarray,
                new_lo: np.ndarray, new_hi: np.ndarray, old_lo: np.ndarray,
                old_hi: np.ndarray) -> None:
        """Keep the best of (current candidates with bounds old_lo/old_hi)
        and (new items), within capacity and budget; everything left out
        raises the bound on untracked items."""
        all_hash = np.concatenate([self._cand_hash, new_hash])
        order = np.argsort(all_hash, kind="stable")
        all_hi = np.concatenate([old_hi, new_hi])[order]
        keep, worst = _choose(
            all_hi, np.concatenate([self._cand_len, _lengths(new_items)])[order],
            self._capacity, self._candidate_room())
        self._dropped = max(self._dropped, worst)
        kept = order[keep]
        items = pa.chunked_array([self._cand_items, new_items], pa.string()
                                 ).take(pa.array(kept))
        self._set_candidates(items.combine_chunks(), all_hash[kept],
                             np.concatenate([old_lo, new_lo])[kept],
                             all_hi[keep])

    def _fits(self, n: int, id_bytes: int) -> bool:
        """Whether ``n`` candidates of ``id_bytes`` bytes of ids in all fit
        capacity and budget."""
        return (n <= self._capacity and _budget.CMS_CANDIDATE_OVERHEAD * n
                + id_bytes <= self._candidate_room())

    def _candidate_room(self) -> int:
        """Bytes of the budget left for candidates beside the counters."""
        return self._budget_bytes - _budget.cms_fixed_bytes(self._width,
                                                            self._depth)

    def _blank_like(self) -> "CountMinTopK":
        """A sketch with this one's parameters (no validation: they were
        checked when this one was made) and no state yet."""
        sketch = CountMinTopK.__new__(CountMinTopK)
        sketch._width, sketch._depth = self._width, self._depth
        sketch._capacity = self._capacity
        sketch._budget_bytes = self._budget_bytes
        sketch._conservative = self._conservative
        return sketch

    def _empty_like(self) -> "CountMinTopK":
        """An empty sketch with this one's parameters."""
        sketch = self._blank_like()
        sketch._counters = sketch._initial_counters()
        sketch._total = sketch._dropped = 0
        sketch._set_candidates(pa.array([], pa.string()),
                               np.empty(0, np.uint64), np.empty(0, np.int64),
                               np.empty(0, np.int64))
        return sketch


@functools.lru_cache(maxsize=64)
def _validated(cls, budget_bytes: int, width: int, depth: int, capacity: int,
               conservative: bool) -> CountMinTopK:
    """A sketch of these parameters, made (and so checked) once: reading
    many small sketches spent a third of its time checking the same few
    parameters again."""
    return cls(budget_bytes, width=width, depth=depth, capacity=capacity,
               conservative=conservative)


class _RangeWalk:
    """The merges of ``merge_ranges`` (see there), one range at a time:
    iterating yields, per range, ``(counters, total, dropped, codes, lo,
    hi)``: the summed counters (a running array, changed by the next step:
    copy it to keep it), the total, the bound on untracked items after
    trimming, and the kept candidates as codes into ``union`` (ascending,
    which is hash order) with their bounds. ``hashes[code]`` is a code's
    hash; ``first`` the first sketch (whose capacity and budget trim).

    When every sketch is exact, a range's bounds are its exact sums and no
    counters are summed: ``counters`` is then ``None`` for a range whose
    union fits (its merge is exact), and, if ``need_counters``, made from
    the sums for one that had to be trimmed. The callers have checked the
    sketches and ranges (``_check_ranges``). ``encoded``: the sketches'
    ``_encode_candidates`` (in any order of the union), if made already:
    encoding a million ids twice was a tenth of a catch-up firing's time
    with a long tail."""

    def __init__(self, sketches, ranges, need_counters: bool = True,
                 encoded=None):
        sketches, ranges = list(sketches), list(ranges)
        first = sketches[0]
        self.first, self._sketches, self._ranges = first, sketches, ranges
        self._all_exact = all(s.exact for s in sketches)
        self._need_counters = need_counters
        union, codes, self._starts = (encoded if encoded is not None
                                      else _encode_candidates(sketches))
        hsh = np.zeros(len(union), np.uint64)
        hsh[codes] = np.concatenate([s._cand_hash for s in sketches])
        # Codes in hash order: then any subset in code order is in the
        # canonical order ``_choose`` wants.
        order = np.argsort(hsh, kind="stable")
        recode = np.empty_like(order)
        recode[order] = np.arange(len(order))
        self._codes = recode[codes]
        self.union, self.hashes = union.take(pa.array(order)), hsh[order]
        self._length = np.zeros(len(union), np.int64)
        self._length[self._codes] = np.concatenate(
            [s._cand_len for s in sketches])
        # Every item's cells, unless no range needs counters.
        self._cells = (first._cells(self.hashes)
                       if need_counters or not self._all_exact else None)
        # Per entry (sketch, candidate): its lower bound, and how far its
        # upper bound exceeds its sketch's bound for untracked items, so
        # that a range's upper bound is (sum of excesses) + (sum of the
        # untracked bounds) for every item at once.
        self._lo_in = np.concatenate([s._cand_lo for s in sketches])
        self._excess_in = np.concatenate([s._cand_hi - s._dropped
                                          for s in sketches])

    def __iter__(self):
        sketches, starts, codes = self._sketches, self._starts, self._codes
        n = len(self.union)
        lo_sum = np.zeros(n, np.int64)
        excess_sum = np.zeros(n, np.int64)
        tracked = np.zeros(n, np.int32)
        first = self.first
        counters = (None if self._all_exact else
                    np.zeros((first._depth, first._width), np.int64))
        flat = None if counters is None else counters.reshape(-1)
        total = dropped = 0

        def move(x, y, sign):
            """Add (``sign`` 1) or subtract the sketches ``[x, y)``."""
            nonlocal total, dropped
            for p in range(x, y):
                seg = slice(starts[p], starts[p + 1])
                c = codes[seg]  # unique within one sketch
                lo_sum[c] += sign * self._lo_in[seg]
                excess_sum[c] += sign * self._excess_in[seg]
                tracked[c] += sign
                sketch = sketches[p]
                if flat is None:
                    pass
                elif sketch.exact:
                    # Its implied counters: each candidate's count in its
                    # cells (few candidates: cheaper than making them).
                    np.add.at(flat, self._cells[:, c].ravel(),
                              np.tile(sign * self._lo_in[seg], first._depth))
                elif sign > 0:
                    np.add(counters, sketch._counters, out=counters)
                else:
                    np.subtract(counters, sketch._counters, out=counters)
                total += sign * sketch._total
                dropped += sign * sketch._dropped

        at = (0, 0)
        capacity = self.first._capacity
        room = self.first._candidate_room()
        for a, b in self._ranges:
            # [at) -> [a, b): add what enters, subtract what leaves.
            move(at[1], b, 1) if b >= at[1] else move(b, at[1], -1)
            move(at[0], a, -1) if a >= at[0] else move(a, at[0], 1)
            at = (a, b)
            idx = np.flatnonzero(tracked)
            lo = lo_sum[idx]
            if counters is None:
                hi = lo  # exact inputs: the sums are the counts
            else:
                est = _row_min(flat[self._cells[:, idx]])
                hi = np.minimum(excess_sum[idx] + dropped, est)
                # Valid inputs give est >= true >= lo; this only keeps
                # lo <= hi for inputs that are merely well-formed.
                hi = np.maximum(hi, lo)
            keep, worst = _choose(hi, self._length[idx], capacity, room)
            out = counters
            if counters is None and worst and self._need_counters:
                out = np.zeros((first._depth, first._width), np.int64)
                _add_counts(out.reshape(-1), self._cells[:, idx], lo,
                            total)
            yield (out, total, max(dropped, worst), idx[keep], lo[keep],
                   hi[keep])


def _pairs(ranges: np.ndarray) -> list[tuple[int, int]]:
    """An ``(n, 2)`` array of ranges as the walk takes them."""
    return list(map(tuple, ranges.tolist()))


def _check_ranges(sketches: list, ranges: list) -> None:
    """What a merge of ``sketches[a:b]`` for every ``(a, b)`` of ``ranges``
    needs: compatible sketches, a total within int64, ranges within."""
    if not sketches:
        raise ValueError("nothing to merge")
    first = sketches[0]
    for s in sketches[1:]:
        if not first.compatible(s):
            raise ValueError(
                "can only merge Count-Min sketches with the same width, "
                f"depth and update rule (this: {_describe(first)}, "
                f"other: {_describe(s)})")
    if sum(s._total for s in sketches) > _INT64_MAX:
        raise OverflowError("total count would exceed 2**63 - 1")
    ranges = np.asarray(ranges, np.int64).reshape(-1, 2)
    bad = np.flatnonzero((ranges[:, 0] < 0) | (ranges[:, 0] >= ranges[:, 1])
                         | (ranges[:, 1] > len(sketches)))
    if len(bad):
        a, b = ranges[bad[0]].tolist()
        raise ValueError(f"bad range ({a}, {b}) of {len(sketches)} "
                         "sketches")


#: Rows per candidate above which ``exact_runs`` does not try a run.
_EXACT_RUN_ROWS = 4

#: (range, item) pairs ``_rank_exact_ranges`` expands at a time.
_PAIRS_PER_STEP = 1 << 21


#: Range lengths ``_distinct_at_least`` counts; ranges of other lengths
#: are not counted (their exact ranking is tried).
_DISTINCT_LENGTHS = 16


def _distinct_at_least(codes: np.ndarray, starts: np.ndarray, a: np.ndarray,
                       b: np.ndarray, least: int, size: np.ndarray
                       ) -> np.ndarray:
    """Which ranges of sketches ``a[r]:b[r]`` hold at least ``least``
    distinct items (sketch ``i``'s are ``codes[starts[i]:starts[i + 1]]``;
    ``size`` their candidates in each range, repeats counted). False where
    not counted: ranges of fewer than ``least`` candidates, and lengths
    beyond the ``_DISTINCT_LENGTHS`` most common.

    An item counts in a range at its first appearance there: the one
    whose previous appearance is before the range. For ranges of one
    length sorted by start, the ranges where an appearance is first are a
    run, so each range's count is a cumulative sum of +1/-1 marks."""
    out = np.zeros(len(a), bool)
    big = np.flatnonzero(size >= least)
    if not len(big):
        return out
    n_sketches = len(starts) - 1
    sketch = np.repeat(np.arange(n_sketches), np.diff(starts))
    # One int64 key sorts about twice as fast as ``lexsort`` of two.
    by_item = np.argsort(codes * n_sketches + sketch)
    item, at = codes[by_item], sketch[by_item]
    prev = np.r_[-1, at[:-1]]
    prev[np.r_[True, item[1:] != item[:-1]]] = -1
    lengths, seen = np.unique(b[big] - a[big], return_counts=True)
    for length in lengths[np.argsort(-seen, kind="stable")][
            :_DISTINCT_LENGTHS]:
        mine = big[b[big] - a[big] == length]
        mine = mine[np.argsort(a[mine], kind="stable")]
        start = a[mine]
        # First in range r when prev < start[r] <= at < start[r] + length.
        lo = np.maximum(np.searchsorted(start, prev, side="right"),
                        np.searchsorted(start, at - length, side="right"))
        hi = np.searchsorted(start, at, side="right")
        run = lo < hi
        marks = (np.bincount(lo[run], minlength=len(mine) + 1)
                 - np.bincount(hi[run], minlength=len(mine) + 1))
        out[mine] = np.cumsum(marks)[:-1] >= least
    return out


def _summed_by_key(key: np.ndarray, value: np.ndarray, span: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``key``s (each in ``0..span-1``), ascending, and the
    sum of ``value`` at each."""
    if not len(key):
        return key, np.zeros(0, np.int64)
    if span <= 4 * len(key) + (1 << 16) and value.sum() < MAX_EXACT_FLOAT:
        # Counting into a dense array is linear: the sort it replaces was
        # about a fifth of a one-day cms catch-up (sliding windows of
        # 60 minutes ranked from thousands of items each).
        keys = np.flatnonzero(np.bincount(key, minlength=span))
        return keys, np.bincount(key, weights=value, minlength=span)[
            keys].astype(np.int64)
    by_key = np.argsort(key)
    key = key[by_key]
    heads = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    return key[heads], np.add.reduceat(value[by_key], heads)


#: (item, sketch) and (item, range) cells ``_rank_overfull_ranges`` holds
#: at a time.
_OVERFULL_CELLS = 1 << 22

#: Ranges ``_rank_overfull_ranges`` takes together (sorted by start).
_OVERFULL_CHUNK = 16


def _ids_in_order(union: pa.Array, codes: np.ndarray, pairs: int
                  ) -> tuple[pa.Array, np.ndarray, bool]:
    """``(union, codes, in_order)``: the union of ids sorted, and the codes
    renumbered to match, so codes compare as their ids (``in_order``),
    unless it holds more ids than the ``pairs`` (range, candidate) to be
    ranked: then as it is, and ``_top_k_by_id`` sorts only the ids that can
    matter. (Most of a catch-up firing's calls rank few pairs or none,
    their ranges going to the walk, and sorting their unions took a seventh
    of its time, a fifth with a million items; ranking a long tail of ties
    twice cost more than sorting a union no larger than it.)"""
    if not _sorts_whole(len(union), pairs):
        return union, codes, False
    order = pc.sort_indices(union)
    place = np.empty(len(union), np.int64)
    place[order.to_numpy()] = np.arange(len(union))
    return union.take(order), place[codes], True


def _sorts_whole(ids: int, pairs: int) -> bool:
    """Whether ``_ids_in_order`` sorts a union of ``ids`` whole."""
    return ids <= pairs


def _top_k_by_id(rng: np.ndarray, count: np.ndarray, code: np.ndarray,
                 k: int, union: pa.Array, in_order: bool
                 ) -> tuple[np.ndarray, ...]:
    """The top ``k`` rows of each range (``rng``, non-negative) by count
    descending, then item id (``union[code]``, as strings; ``in_order``:
    codes compare as their ids): ``(rng, code, count, next_count)`` in that
    order, ``next_count`` being the (k+1)-th count of the row's range (0
    when it has no more than ``k`` rows)."""
    ranked, position = ranking.rank_in_groups(rng, count, code)
    rng, count, code = rng[ranked], count[ranked], code[ranked]
    next_count = _nth_in_group(count, position, k)
    if not in_order:
        # Below a range's k-th count the order of ids changes nothing:
        # order by id only the rows that reach it.
        contend = count >= _nth_in_group(count, position, k - 1)
        rng, count, code, next_count = (
            rng[contend], count[contend], code[contend], next_count[contend])
        ids, inverse = np.unique(code, return_inverse=True)
        place = np.empty(len(ids), np.int64)
        place[pc.sort_indices(union.take(pa.array(ids))).to_numpy()] = \
            np.arange(len(ids))
        ranked, position = ranking.rank_in_groups(rng, count, place[inverse])
        rng, count, code, next_count = (
            rng[ranked], count[ranked], code[ranked], next_count[ranked])
    keep = position < k
    return rng[keep], code[keep], count[keep], next_count[keep]


def _nth_in_group(count: np.ndarray, position: np.ndarray, n: int
                  ) -> np.ndarray:
    """For rows in rank order (``position``: each one's place in its
    group), the count at place ``n`` of the row's group, 0 where the group
    has no more than ``n`` rows."""
    first = np.flatnonzero(position == 0)
    size = np.diff(np.r_[first, len(count)])
    nth = count[np.minimum(first + n, len(count) - 1)] if len(count) else \
        np.zeros(0, np.int64)
    return np.repeat(np.where(size > n, nth, 0), size)


def _rank_overfull_ranges(codes: np.ndarray, union: pa.Array,
                          in_order: bool, starts: np.ndarray,
                          count_in: np.ndarray, a: np.ndarray,
                          b: np.ndarray, which: np.ndarray,
                          k: int, n_items: int, capacity: int, trims: bool
                          ) -> tuple[list, list]:
    """The top ``k`` of exact ranges of many candidates (``which``, sliding
    windows of dense minutes), without the walk, where that gives the
    walk's rows.

    The walk keeps a range's ``capacity`` largest counts, then ranks them
    and flags against the (k+1)-th count and the largest count left out.
    When no more than ``capacity`` items reach the (k+1)-th count (and the
    kept ids never overflow the budget: ``trims`` False), what it leaves
    out is below that count, so the rows are the top ``k`` of all the
    range's items, flagged against the (k+1)-th count as
    ``_rank_exact_ranges`` does for a range that fits. Those items are
    found without a range's every item: the (k+1)-th count among the
    heaviest items over the span of a few ranges is at most the true one,
    and an item whose count over the whole span is below that reaches it
    in none of them; the others are summed densely, (item, sketch) cells,
    and a range's counts are the difference of two cumulative columns.

    ``union`` and ``in_order`` as ``_ids_in_order`` gives them. Returns
    ``(parts, left)``: ``(range, item code, count, guaranteed)``
    arrays per chunk, and the ranges of ``which`` not ranked here."""
    if trims or k >= capacity or not len(which):
        return [], [which]
    which = which[np.argsort(a[which], kind="stable")]
    parts, left = [], []
    for at in range(0, len(which), _OVERFULL_CHUNK):
        chunk = which[at:at + _OVERFULL_CHUNK]
        lo, hi = int(a[chunk].min()), int(b[chunk].max())
        e0, e1 = starts[lo], starts[hi]
        code, weight = codes[e0:e1], count_in[e0:e1]
        column = np.repeat(np.arange(hi - lo), np.diff(starts[lo:hi + 1]))
        ra, rb = a[chunk] - lo, b[chunk] - lo

        def range_counts(items):
            """``(len(items), len(chunk))`` counts of ``items`` per range."""
            place = np.full(n_items, -1, np.int64)
            place[items] = np.arange(len(items))
            at = place[code]
            mine = at >= 0
            width = hi - lo + 1
            cells = np.bincount(at[mine] * width + column[mine] + 1,
                                weights=weight[mine],
                                minlength=len(items) * width)
            cum = np.cumsum(cells.reshape(len(items), width), axis=1)
            return (cum[:, rb] - cum[:, ra]).astype(np.int64)

        total = np.bincount(code, weights=weight, minlength=n_items)
        heavy = np.argpartition(-total, min(2 * (k + 1), n_items) - 1)[
            :2 * (k + 1)]
        floor = 0
        if k < len(heavy) and len(heavy) * (hi - lo + 1) <= _OVERFULL_CELLS:
            floor = int(np.partition(range_counts(heavy), len(heavy) - k - 1,
                                     axis=0)[len(heavy) - k - 1].min())
        items = np.flatnonzero(total >= max(floor, 1))
        if len(items) * max(hi - lo + 1, len(chunk)) > _OVERFULL_CELLS:
            # Too many items reach the floor (counts alike, as in a long
            # tail seen once each): the walk ranks these.
            left.append(chunk)
            continue
        counts = range_counts(items)
        n = len(items)
        next_count = kth = np.zeros(len(chunk), np.int64)
        if n > k:
            top = np.partition(counts, [n - k - 1, n - k], axis=0)
            next_count, kth = top[n - k - 1], top[n - k]
        # An item counts in a range when it is in it: zeros never rank.
        ok = (counts >= np.maximum(next_count, 1)).sum(axis=0) <= capacity
        left.append(chunk[~ok])
        at_item, at_range = np.nonzero(counts[:, ok]
                                       >= np.maximum(kth[ok], 1))
        col = np.flatnonzero(ok)[at_range]  # the row's range in chunk
        item, count = items[at_item], counts[:, ok][at_item, at_range]
        col, item, count, _ = _top_k_by_id(col, count, item, k, union,
                                           in_order)
        parts.append((chunk[col], item, count, count > next_count[col]))
    return parts, left


def _rank_exact_ranges(sketches: list, ranges: np.ndarray, k: int
                       ) -> tuple[pa.Table, np.ndarray, np.ndarray, tuple]:
    """``rank_ranges`` of exact sketches, for the ranges whose union fits
    the first sketch's capacity and budget (their merge is exact, so a
    candidate's bounds are its count, and it is guaranteed when it beats
    the (k+1)-th count, as ``guaranteed_flags`` has it with nothing
    dropped), and for those of more candidates whose top ``k`` the walk
    would keep whole (``_rank_overfull_ranges``). Returns ``(rows, totals,
    trimmed, encoded)``: the rows of those ranges, every range's total, the
    indices of the ranges left to the walk, and the candidates' encoding
    (``_encode_candidates``) for it.

    A range's candidates are a contiguous run of the sketches' candidates
    concatenated, so every range is ranked by one sort of (range, item)
    pairs, a piece of at most ``_PAIRS_PER_STEP`` pairs at a time."""
    first = sketches[0]
    union, codes, starts = _encode_candidates(sketches)
    summed = np.r_[0, np.cumsum([s._total for s in sketches])]
    a, b = ranges[:, 0], ranges[:, 1]
    totals = (summed[b] - summed[a]).astype(np.int64)
    size = starts[b] - starts[a]
    # Ties rank by item id, as the walk's sort does.
    union, codes, in_order = _ids_in_order(
        union, codes, int(size[size <= first._capacity].sum()))
    n_items = max(len(union), 1)
    length = np.zeros(n_items, np.int64)
    if len(codes):
        length[codes] = np.concatenate([s._cand_len for s in sketches])
    count_in = np.concatenate([s._cand_lo for s in sketches]
                              + [np.zeros(0, np.int64)])
    # Ranges of more candidates than a sketch holds (sliding windows of
    # dense minutes) are ranked from their heavy items; expanding their
    # pairs was most of this function on dense minutes. Kept ids of at
    # most the longest id each never overflow the budget.
    many = np.flatnonzero(size > first._capacity)
    trims = (first._capacity * (_budget.CMS_CANDIDATE_OVERHEAD
                                + int(length.max())) > first._candidate_room()
             or count_in.sum() >= MAX_EXACT_FLOAT)
    parts, left = _rank_overfull_ranges(
        codes, union, in_order, starts, count_in, a, b, many, k, n_items,
        first._capacity, trims)
    left = np.concatenate(left + [np.zeros(0, np.int64)])
    # Of those left, ranges of more distinct items than a sketch holds go
    # to the walk untried.
    too_many = left[_distinct_at_least(codes, starts, a[left], b[left],
                                       first._capacity + 1, size[left])]
    size[np.setdiff1d(many, left)] = 0
    size[too_many] = 0
    cum = np.cumsum(size)
    cuts = np.unique(np.r_[0, np.searchsorted(
        cum, np.arange(_PAIRS_PER_STEP, cum[-1] if len(cum) else 0,
                       _PAIRS_PER_STEP), side="right"), len(ranges)])
    trimmed = [too_many]
    for r0, r1 in zip(cuts[:-1], cuts[1:]):
        n = size[r0:r1]
        rng = np.repeat(np.arange(r0, r1), n)
        entry = np.repeat(starts[a[r0:r1]], n) + ranking.run_offsets(n)
        key, count = _summed_by_key((rng - r0) * n_items + codes[entry],
                                    count_in[entry], (r1 - r0) * n_items)
        rng, item = key // n_items + r0, key % n_items
        fits = ((np.bincount(rng - r0, minlength=r1 - r0) <= first._capacity)
                & (np.bincount(rng - r0, weights=(
                    _budget.CMS_CANDIDATE_OVERHEAD + length[item]),
                    minlength=r1 - r0) <= first._candidate_room()))
        trimmed.append(np.flatnonzero(~fits) + r0)
        mine = fits[rng - r0]
        rng, item, count = rng[mine], item[mine], count[mine]
        rng, item, count, next_count = _top_k_by_id(rng - r0, count, item,
                                                    k, union, in_order)
        parts.append((rng + r0, item, count, count > next_count))
    trimmed = np.unique(np.concatenate(trimmed + [np.zeros(0, np.int64)]))
    encoded = (union, codes, starts)
    if not parts:
        return _RANGE_TOPK_SCHEMA.empty_table(), totals, trimmed, encoded
    rng, item, count, guaranteed = (np.concatenate(c) for c in zip(*parts))
    by_range = np.argsort(rng, kind="stable")  # rank order within a range
    rng, item, count, guaranteed = (rng[by_range], item[by_range],
                                    count[by_range], guaranteed[by_range])
    count = pa.array(count)
    return pa.table({
        "range": pa.array(rng), "item_id": union.take(pa.array(item)),
        "count": count, "lower_bound": count, "upper_bound": count,
        "guaranteed": pa.array(guaranteed)},
        schema=_RANGE_TOPK_SCHEMA), totals, trimmed, encoded


#: ``rank_ranges`` rows: ``TOPK_SCHEMA`` after the range's index.
_RANGE_TOPK_SCHEMA = pa.schema([pa.field("range", pa.int64(), False)]
                               + list(TOPK_SCHEMA))


def _choose(hi: np.ndarray, length: np.ndarray, capacity: int,
            room: int) -> tuple[np.ndarray, int]:
    """Which of some items, given in hash order, to keep as candidates:
    the ``capacity`` largest upper bounds ``hi``, then, if their ids
    (``length`` bytes each) overflow ``room`` bytes, without the weakest
    until they fit. Ties go to the smaller hash, so the choice does not
    depend on input order. Returns the kept indices, ascending (hash order,
    the canonical order: equal states serialize identically), and the
    largest upper bound left out (0 if none), which the bound on untracked
    items must cover."""
    n = len(hi)
    if n > capacity:
        threshold = _nth_smallest(hi, n - capacity)
        mask = hi > threshold
        tied = np.flatnonzero(hi == threshold)
        mask[tied[:capacity - int(mask.sum())]] = True
        keep = np.flatnonzero(mask)
    else:
        keep = np.arange(n)
    size = int((_budget.CMS_CANDIDATE_OVERHEAD + length[keep]).sum())
    if size > room:
        # Weakest first: smallest bound, then the larger hash.
        order = np.lexsort((-keep, hi[keep]))
        freed = np.cumsum(_budget.CMS_CANDIDATE_OVERHEAD + length[keep][order])
        cut = int(np.searchsorted(freed, size - room)) + 1
        keep = np.sort(keep[order[cut:]])
    worst = 0
    if len(keep) < n:
        left_out = np.ones(n, dtype=bool)
        left_out[keep] = False
        worst = int(hi[left_out].max())
    return keep, worst


def _nth_smallest(values: np.ndarray, n: int) -> int:
    """``np.sort(values)[n]`` of integers."""
    if values.min() >= 0 and values.max() <= 4 * len(values) + 1024:
        # Bounds are small integers: counting them is linear.
        return int(np.searchsorted(np.cumsum(np.bincount(values)), n,
                                   side="right"))
    # A stable (radix/tim) sort, not np.partition: bounds repeat a lot
    # (every newcomer seen once gets the same one), which makes introselect
    # up to 20x slower than this.
    return int(np.sort(values, kind="stable")[n])


def _encode_candidates(sketches) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Every sketch's candidate ids as codes into one dictionary: ``(union
    of ids, code of every candidate, sketch i's candidates at
    codes[starts[i]:starts[i + 1]])``."""
    starts = np.zeros(len(sketches) + 1, np.int64)
    np.cumsum([len(s._cand_items) for s in sketches], out=starts[1:])
    if starts[-1] == 0:
        return pa.array([], pa.string()), np.empty(0, np.int64), starts
    encoded = pc.dictionary_encode(
        pa.concat_arrays([s._cand_items for s in sketches]))
    return (encoded.dictionary, encoded.indices.to_numpy().astype(np.int64),
            starts)


def _row_min(rows: np.ndarray) -> np.ndarray:
    """Minimum over the rows of a ``(depth, n)`` array (``min(axis=0)`` is
    ~10x slower for a few long rows)."""
    out = rows[0].copy()
    for row in rows[1:]:
        np.minimum(out, row, out=out)
    return out


def _aggregate(items: pa.Array, counts: np.ndarray, total: int):
    """Sum counts of repeated items (exactly, by string)."""
    if len(items) < 2:
        return items, counts
    encoded = pc.dictionary_encode(items)
    if len(encoded.dictionary) == len(items):
        return items, counts
    return encoded.dictionary, _sum_by_index(
        encoded.indices.to_numpy(), counts, len(encoded.dictionary), total)


def _sum_by_index(index: np.ndarray, values: np.ndarray, n: int,
                  total: int) -> np.ndarray:
    """``out[i] = sum of values[index == i]`` for ``i < n``, exactly, given
    that ``total`` bounds every sum."""
    if total < MAX_EXACT_FLOAT:
        # bincount sums in float64, exact below 2**53, and is ~10x faster
        # than np.add.at.
        return np.bincount(index, weights=values, minlength=n).astype(
            np.int64)
    out = np.zeros(n, np.int64)
    np.add.at(out, index, values)
    return out


def _run_sums(values: np.ndarray, bounds: np.ndarray) -> list:
    """``sum(values[bounds[i]:bounds[i + 1]])`` for every ``i``, as exact
    Python ints (no int64 wrap-around over all runs)."""
    if len(values) and int(np.abs(values).max()) <= _INT64_MAX // len(values):
        cum = np.zeros(len(values) + 1, np.int64)
        np.cumsum(values, out=cum[1:])
        return (cum[bounds[1:]] - cum[bounds[:-1]]).tolist()
    return [sum(int(v) for v in values[a:b])
            for a, b in zip(bounds[:-1], bounds[1:])]


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
    # No cell of a row can receive more than the batch total.
    flat += _sum_by_index(cells.ravel(), np.tile(counts, cells.shape[0]),
                          len(flat), batch_total)


def _string_offsets(items: pa.Array) -> np.ndarray:
    """The ``len(items) + 1`` offsets of a string array, from 0, int64."""
    if len(items) == 0:
        return np.zeros(1, np.int64)
    off = np.frombuffer(items.buffers()[1], dtype=np.int32)[
        items.offset:items.offset + len(items) + 1].astype(np.int64)
    return off - off[0]


def _lengths(items: pa.Array) -> np.ndarray:
    if len(items) == 0:
        return np.empty(0, np.int64)
    off_type = np.int64 if pa.types.is_large_string(items.type) else np.int32
    off = np.frombuffer(items.buffers()[1], dtype=off_type)[
        items.offset:items.offset + len(items) + 1]
    return np.diff(off).astype(np.int64)


def _typed_bytes(values: np.ndarray) -> tuple[str, bytes]:
    """An array as ``(dtype, raw bytes)``, which ``_typed_array`` reads."""
    return values.dtype.str, values.tobytes()


def _typed_array(typed: tuple[str, bytes]) -> np.ndarray:
    dtype, raw = typed
    return np.frombuffer(raw, dtype=dtype)


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
