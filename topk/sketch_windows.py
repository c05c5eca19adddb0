"""Approximate slices and windows: sketches per slice, windows as merges.

The approximate path has the same shape as the exact one (DESIGN.md
decisions 2 and 4). The de-duplicated exact partial counts of each minute
feed one sketch per ``(method, event_type, minute)`` (``split_slices``),
``event_type = ALL_TYPES`` included so that an all-types range query merges
those directly; minute sketches are merged into hour and day sketches, and
all three lengths are stored in the ``sketches`` table (``sketches_table``),
which range queries merge. Every window of a spec is a merge of its panes:
the stored slices whose length is the spec's step (1m, 1h, 1d; 30 day slices
for a 30-day step, ``pane_plan``). Every sketch, window sketches included,
stays within its byte budget (the sketches guarantee ``nbytes <= budget``).

Sliding windows of ``n`` panes do not merge ``n`` panes each: panes are cut
into aligned blocks of ``n``, and a window starting in block ``b`` is a
suffix of block ``b`` plus a prefix of block ``b + 1`` (the van Herk /
Gil-Werman scheme). The suffix and prefix merges of a block are computed
once, so a window costs about three merges whatever ``n`` is
(``window_sketches``).

No Beam here (the wiring is ``topk.transforms.sketch_windows``).
"""
import bisect

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from topk import ranking, schema, sketches
from topk.sketches import budget as _budget
from topk.windows import SLICE_LENGTHS, WindowSpec, duration_ms

EXACT = "exact"
#: Everything ``--method`` accepts, exact first.
ALL_METHODS = (EXACT,) + tuple(sketches.METHODS)


def parse_methods(text: str) -> list[str]:
    """``"exact,cms"`` -> ``["exact", "cms"]`` (unique, in the given
    order); ``ValueError`` naming the choices on anything else."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"no method given; choose from "
                         f"{', '.join(ALL_METHODS)}")
    for n in names:
        if n not in ALL_METHODS:
            raise ValueError(f"unknown method {n!r}; choose from "
                             f"{', '.join(ALL_METHODS)} (comma-separated)")
    return list(dict.fromkeys(names))


def check_budget(budget_bytes: int) -> int:
    """``ValueError`` unless both sketches can be sized for the budget
    (checked with the budget arithmetic, without allocating a sketch)."""
    _budget.check_budget(budget_bytes)
    if budget_bytes >= 1 << 31:
        raise ValueError("the sketch budget must be below 2 GiB")
    width, depth = _budget.cms_dimensions_for_budget(budget_bytes)
    _budget.cms_capacity(budget_bytes, width, depth)
    _budget.fi_lg_for_budget(budget_bytes)
    return budget_bytes


def approximate_methods(methods: list[str]) -> list[str]:
    """The sketch methods among ``methods`` (everything but exact)."""
    return [m for m in methods if m != EXACT]


# -- slices ------------------------------------------------------------------

def split_slices(counts: pa.Table) -> list[tuple[tuple[str, int], pa.Table]]:
    """Exact partials (``SLICE_COUNTS_SCHEMA``) -> one ``((event_type,
    slice_start), rows)`` per type and slice, ``ALL_TYPES`` included;
    ``rows`` has columns ``item_id`` and ``count``, one row per item (what a
    sketch is fed)."""
    counts = ranking.with_all_types(counts)
    if counts.num_rows == 0:
        return []
    counts = counts.take(pc.sort_indices(counts, sort_keys=[
        ("event_type", "ascending"), ("slice_start", "ascending")]))
    types = pc.unique(counts["event_type"])
    code = pc.index_in(counts["event_type"], value_set=types).to_numpy()
    start = counts["slice_start"].to_numpy()
    cuts = np.flatnonzero((code[1:] != code[:-1]) | (start[1:] != start[:-1]))
    bounds = np.r_[0, cuts + 1, counts.num_rows]
    items = counts.select(["item_id", "count"])
    return [((types[int(code[a])].as_py(), int(start[a])),
             items.slice(int(a), int(b - a)))
            for a, b in zip(bounds[:-1], bounds[1:])]


class PendingSketch:
    """A sketch plus rows not yet added to it: a slice's rows arrive as one
    small table per de-duplication shard, and a sketch update has a fixed
    cost (hashing set-up, candidate selection) that dwarfs a few hundred
    rows, so rows are added in bulk: when ``flush_rows`` are pending, and
    before the state is merged, read or pickled (only the sketch, within
    its budget, ever leaves the worker)."""

    __slots__ = ("sketch", "_tables", "_rows", "_flush_rows")

    def __init__(self, sketch, flush_rows: int = 100_000):
        self.sketch = sketch
        self._tables = []
        self._rows = 0
        self._flush_rows = flush_rows

    def add(self, table: pa.Table) -> "PendingSketch":
        """Queue ``table`` (columns ``item_id``, ``count``)."""
        self._tables.append(table)
        self._rows += table.num_rows
        if self._rows >= self._flush_rows:
            self.flush()
        return self

    def flush(self):
        """Add the pending rows to the sketch; returns the sketch."""
        if self._tables:
            rows = pa.concat_tables(self._tables)
            self._tables, self._rows = [], 0
            # Items repeat across shards: the sketches sum repeats
            # themselves.
            self.sketch.update(rows["item_id"], rows["count"])
        return self.sketch

    def __reduce__(self):
        return (PendingSketch, (self.flush(), self._flush_rows))


def sketch_row(method: str, event_type: str, slice_start_ms: int,
               sketch) -> tuple:
    """What the ``sketches`` table keeps of one slice sketch: ``(method,
    event_type, slice_start_ms, bytes, total, budget_bytes)`` (plain values,
    cheap to shuffle)."""
    return (method, event_type, slice_start_ms, sketch.to_bytes(),
            sketch.total, sketch.budget_bytes)


def sketches_table(rows, slice_length: str, source: str,
                   emitted_at_ms: int) -> pa.Table:
    """``sketch_row`` tuples of one slice length -> rows of the ``sketches``
    output table (``SKETCHES_SCHEMA``)."""
    n = len(rows)
    method, event_type, start, blob, total, budget = (
        list(c) for c in zip(*rows)) if rows else ([],) * 6
    return pa.table({
        "slice_start": pa.array(start, pa.int64()).cast(schema.TIMESTAMP),
        "slice_length": pa.array([slice_length] * n, pa.string()),
        "method": pa.array(method, pa.string()),
        "event_type": pa.array(event_type, pa.string()),
        "sketch": pa.array(blob, pa.binary()),
        "total": pa.array(total, pa.int64()),
        "nbytes": pa.array([len(b) for b in blob], pa.int32()),
        "budget_bytes": pa.array(budget, pa.int32()),
        "source": pa.array([source] * n, pa.string()),
        "emitted_at": pa.array(np.full(n, emitted_at_ms, np.int64)).cast(
            schema.TIMESTAMP),
    }, schema=schema.SKETCHES_SCHEMA)


# -- windows -----------------------------------------------------------------

def pane_plan(spec: WindowSpec) -> tuple[str, int, int]:
    """``(pane slice length, panes per window, panes per step)``: the
    coarsest stored slice length dividing the spec's step. ``1h/1m`` ->
    ``("1m", 60, 1)``; ``1h`` -> ``("1h", 1, 1)``; ``30d`` -> ``("1d", 30,
    30)``."""
    for name in reversed(SLICE_LENGTHS):
        pane_ms = duration_ms(name)
        if spec.step_ms % pane_ms == 0:
            return (name, spec.length_ms // pane_ms, spec.step_ms // pane_ms)
    raise ValueError(f"window {spec.name} is not made of whole slices")


def blocks_of(pane: int, n: int, step: int) -> list[tuple[int, bool]]:
    """The blocks whose windows contain pane index ``pane``, as ``(block,
    is_next)``: its own block ``pane // n`` (``is_next`` False) and, for
    sliding windows, the block before, whose late windows reach into this
    one (``is_next`` True). Tumbling windows are whole blocks."""
    block = pane // n
    return [(block, False)] + ([(block - 1, True)] if step < n else [])


def window_sketches(block: int, n: int, step: int, here, following
                    ) -> list[tuple[int, object]]:
    """Sketches of the windows of ``n`` panes starting every ``step`` panes
    in block ``block`` (pane indices ``[block * n, block * n + n)``).

    ``here``: ``(pane, sketch)`` of this block's panes; ``following``: those
    of the next block. Returns ``(first pane, sketch)`` for every window
    holding at least one pane, in order. A window is a suffix of ``here``
    merged with a prefix of ``following``; both are cumulative merges done
    once per block, and windows covering the same panes share one sketch
    object. Inputs are never modified (merges work on copies).
    """
    here = sorted(here, key=lambda p: p[0])
    following = sorted(following, key=lambda p: p[0])
    here_panes = [p for p, _ in here]
    next_panes = [p for p, _ in following]
    suffix = _cumulative([s for _, s in reversed(here)])[::-1]
    prefix = _cumulative([s for _, s in following])
    out, merged = [], {}
    for first in range(block * n, block * n + n, step):
        i = bisect.bisect_left(here_panes, first)  # suffix here[i:]
        j = bisect.bisect_right(next_panes, first + n - 1)  # prefix [:j]
        if i == len(here) and j == 0:
            continue
        if (i, j) not in merged:
            parts = ([suffix[i]] if i < len(here) else []) + (
                [prefix[j - 1]] if j else [])
            merged[(i, j)] = (parts[0] if len(parts) == 1
                              else copy_sketch(parts[0]).merge(parts[1]))
        out.append((first, merged[(i, j)]))
    return out


def ranked_windows(windows, spec: WindowSpec, pane_ms: int, k: int,
                   event_type: str, *, emitted_at_ms: int,
                   source: str = "batch", pane_timing: str = "batch",
                   pane_index: int = 0) -> pa.Table:
    """``[(first pane, sketch)]`` of one method and event type -> the top
    ``k`` of each window as ``ranked_windows`` rows (``method`` = the
    sketch's, bounds from the sketch, ``window_total`` = its exact total).
    """
    parts, tops = [], {}
    for first, sketch in windows:
        start_ms = first * pane_ms
        if id(sketch) not in tops:
            tops[id(sketch)] = sketches.ranked_rows(sketch, k, event_type,
                                                    start_ms)
        rows = tops[id(sketch)]
        parts.append(rows.set_column(
            rows.schema.get_field_index("window_start"), "window_start",
            pa.array(np.full(rows.num_rows, start_ms, np.int64))))
    if not parts:
        return schema.RANKED_WINDOWS_SCHEMA.empty_table()
    method = windows[0][1].method
    rows = pa.concat_tables(parts).combine_chunks()
    return ranking.to_ranked_windows(
        rows, spec, method=method, pane_timing=pane_timing,
        pane_index=pane_index, source=source, emitted_at_ms=emitted_at_ms,
        lower=rows["lower_bound"], upper=rows["upper_bound"])


def copy_sketch(sketch):
    """An independent copy (merges modify the sketch they are called on)."""
    return sketches.sketch_from_bytes(sketch.to_bytes())


def _cumulative(items: list) -> list:
    """``[a, a+b, a+b+c, ...]`` as new sketches; the first is ``a`` itself
    (never modified)."""
    out = []
    for s in items:
        out.append(s if not out else copy_sketch(out[-1]).merge(s))
    return out
