"""Approximate slices and windows: sketches per slice, windows as merges.

The approximate path has the same shape as the exact one (docs/architecture.md,
decisions 2 and 4). The de-duplicated exact partial counts of each minute
feed one sketch per ``(method, event_type, minute)``, ``event_type =
ALL_TYPES`` included so that an all-types range query merges those
directly. The minutes of an hour are made and moved together
(``split_runs``, ``SliceRun``): on sparse data a minute holds an event or
two, and Count-Min makes such exact sketches as a batch
(``sketches.new_sketches``). Minute sketches are merged into hour and day
sketches, and all three lengths are stored in the ``sketches`` table
(``sketches_table``), which range queries merge. Every window of a spec is a merge of its panes:
the stored slices whose length is the spec's step (1m, 1h, 1d; 30 day slices
for a 30-day step, ``pane_plan``). Every sketch, window sketches included,
stays within its byte budget (the sketches guarantee ``nbytes <= budget``).

Windows are ranked a block of panes at a time (``blocks_of``,
``ranked_block``): one table per block, not per window. Sliding windows
of ``n`` panes do not merge ``n`` panes each: panes are cut into aligned
blocks of ``n``, and a window starting in block ``b`` is a suffix of block
``b`` plus a prefix of block ``b + 1`` (``window_spans``). Count-Min ranks
a block's windows all at once over running sums, without making their
merged sketches (``CountMinTopK.rank_ranges``); frequent items merges the
suffixes and prefixes of a block once each (the van Herk / Gil-Werman
scheme), so a window costs about three merges whatever ``n`` is
(``window_sketches``). A window of one pane is that pane's sketch.

No Beam here (the wiring is ``topk.transforms.approximate_windows``).
"""
import bisect

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from topk.core import ranking, schema
from topk.approx import sketches
from topk.approx.sketches import budget as _budget
from topk.approx.sketches.hashing import hash64
from topk.core.windows import SLICE_LENGTHS, WindowSpec, duration_ms

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

def split_runs(counts: pa.Table, run_ms: int | None
               ) -> list[tuple[tuple[str, int], pa.Table]]:
    """Exact partials (``SLICE_COUNTS_SCHEMA``) -> one ``((event_type,
    run_start), rows)`` per type and run of ``run_ms`` (e.g. the minutes of
    an hour; ``None``: all of a type's rows, ``run_start`` 0),
    ``ALL_TYPES`` included; ``rows`` has columns ``slice_start``,
    ``item_id``, ``count`` and ``item_hash`` (``hashing.hash64``, made
    once here for every run: Count-Min sketches would otherwise hash each
    run's ids again).

    Rows are sorted by run, then type, so that every table is a
    zero-copy slice: a type's rows of one run, or for ``ALL_TYPES`` all
    rows of the run, where an item may repeat once per type (sketches
    sum repeated items themselves, so no group-by is needed here)."""
    if counts.num_rows == 0:
        return []
    types = pc.unique(counts["event_type"])
    code = pc.index_in(counts["event_type"], value_set=types).to_numpy()
    start = counts["slice_start"].to_numpy()
    run = start - start % run_ms if run_ms else np.zeros_like(start)
    # Types ordered within a run, slices within a type: a type's rows of
    # one run are contiguous, and so are all rows of a run.
    order = np.lexsort((start, code, run))
    code, run = code[order], run[order]
    rows = counts.select(["slice_start", "item_id", "count"]).take(
        pa.array(order))
    rows = rows.append_column("item_hash", pa.array(
        hash64(rows["item_id"]), pa.uint64()))
    new_run = np.r_[True, run[1:] != run[:-1]]
    new_type = new_run | np.r_[True, code[1:] != code[:-1]]

    def runs(first_rows, event_type_of):
        bounds = np.r_[np.flatnonzero(first_rows), len(run)]
        return [((event_type_of(a), int(run[a])),
                 rows.slice(int(a), int(b - a)))
                for a, b in zip(bounds[:-1], bounds[1:])]

    return (runs(new_type, lambda a: types[int(code[a])].as_py())
            + runs(new_run, lambda a: schema.ALL_TYPES))


class SketchesBySlice(dict):
    """``{slice_start: sketch}`` that pickles its sketches packed
    (``sketches.pack``): a runner re-encodes elements between fused
    stages, and an hour of exact minute sketches is then a few arrays,
    not one pickle and validation per sketch."""

    __slots__ = ()

    def __reduce__(self):
        return (_sketches_by_slice, (list(self),
                                     sketches.pack(list(self.values()))))


def _sketches_by_slice(starts, packed) -> SketchesBySlice:
    return SketchesBySlice(zip(starts, sketches.unpack(packed)))


class SliceRun:
    """The sketches of the slices of one run (e.g. the minutes of an hour)
    of one method and event type, fed rows in bulk.

    A year of sparse data is hundreds of thousands of minutes holding an
    event or two: one element per minute sketch would pay a runner's fixed
    cost per element at every step (combine, roll-up, tables, ranking),
    so the batch path moves the minutes of an hour as one element.

    Rows (``split_runs``' columns) arrive as small tables,
    one per de-duplication shard, and a sketch update has a fixed cost
    that dwarfs a few hundred rows, so they are added when ``flush_rows``
    are pending (by default about 100k per minute of an hour: a sketch
    fed smaller batches re-selects its candidates more often) and before
    the run is merged, read or pickled (only sketches, each within its
    budget, ever leave the worker).
    ``new_sketch`` makes an empty sketch (a picklable callable)."""

    __slots__ = ("_sketches", "_new", "_tables", "_rows", "_flush_rows")

    def __init__(self, new_sketch, sketches_by_start=None,
                 flush_rows: int = 6_000_000):
        self._new = new_sketch
        self._sketches = SketchesBySlice(sketches_by_start or {})
        self._tables = []
        self._rows = 0
        self._flush_rows = flush_rows

    def add(self, table: pa.Table) -> "SliceRun":
        """Queue ``table`` (columns ``slice_start``, ``item_id``,
        ``count``, optionally ``item_hash``)."""
        self._tables.append(table)
        self._rows += table.num_rows
        if self._rows >= self._flush_rows:
            self.flush()
        return self

    def merge(self, runs) -> "SliceRun":
        """This run with ``runs``' sketches merged in, slice by slice;
        returns ``self``. The other runs are not modified, nor shared: a
        later ``add`` updates this run's sketches in place."""
        mine = self.flush()
        by_start = {}
        for run in runs:
            if run is not self:
                for start, sketch in run.flush().items():
                    by_start.setdefault(start, []).append(sketch)
        for start, group in by_start.items():
            held = mine.get(start)
            mine[start] = (group[0].copy() if held is None and len(group) == 1
                           else sketches.merge_many(
                               ([] if held is None else [held]) + group))
        return self

    def flush(self) -> SketchesBySlice:
        """Add the pending rows; returns ``{slice_start: sketch}``."""
        if self._tables:
            rows = pa.concat_tables(self._tables)
            self._tables, self._rows = [], 0
            add_slice_rows(self._sketches, self._new, rows)
        return self._sketches

    def __reduce__(self):
        return (SliceRun, (self._new, self.flush(), self._flush_rows))


def add_slice_rows(by_start: dict, new_sketch, rows: pa.Table) -> list:
    """Add ``rows`` (``slice_start``, ``item_id``, ``count``, optionally
    ``item_hash``; an item may repeat) to the sketches of ``by_start``
    (``{slice_start: sketch}``, one method and event type), making the
    missing ones with ``new_sketch`` all at once (``sketches.new_sketches``:
    Count-Min makes its exact ones as a batch, not at a fixed cost each).
    Returns the slice starts touched, in order."""
    if rows.num_rows == 0:
        return []
    at = rows["slice_start"].to_numpy()
    if (at[1:] < at[:-1]).any():
        order = np.argsort(at, kind="stable")
        rows, at = rows.take(pa.array(order)), at[order]
    items = rows["item_id"].combine_chunks()
    counts = rows["count"].to_numpy()
    hashes = (rows["item_hash"].to_numpy()
              if "item_hash" in rows.column_names else None)
    heads = np.flatnonzero(at[1:] != at[:-1]) + 1
    starts = [int(at[0])] + at[heads].tolist()
    bounds = [0] + heads.tolist() + [len(at)]
    fresh = []
    for start, a, b in zip(starts, bounds[:-1], bounds[1:]):
        sketch = by_start.get(start)
        if sketch is None:
            fresh.append((a, b, start))
        else:
            # Sketches sum repeated items themselves.
            sketch.update(items[a:b], counts[a:b])
    if fresh:
        if len(fresh) < len(bounds) - 1:
            take = np.concatenate([np.arange(a, b) for a, b, _ in fresh])
            items, counts = items.take(pa.array(take)), counts[take]
            hashes = None if hashes is None else hashes[take]
        offsets = [0]
        for a, b, _ in fresh:
            offsets.append(offsets[-1] + b - a)
        for (_, _, start), sketch in zip(fresh, sketches.new_sketches(
                new_sketch, items, counts, offsets, hashes=hashes)):
            by_start[start] = sketch
    return starts


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


#: Panes per block when every window is one pane (1m, 1h, 1d): ranked
#: together, one table per block, and never more than 60 budgets held.
SINGLE_PANE_BLOCK = 60


def block_panes(n: int) -> int:
    """Panes per block of the windows of ``n`` panes: ``n`` (a window is a
    suffix of its block and a prefix of the next), or ``SINGLE_PANE_BLOCK``
    for windows of one pane."""
    return n if n > 1 else SINGLE_PANE_BLOCK


def blocks_of(pane: int, n: int, step: int) -> list[tuple[int, bool]]:
    """The blocks (``block_panes(n)`` panes each) whose windows contain
    pane index ``pane``, as ``(block, is_next)``: its own block (``is_next``
    False) and, for sliding windows, the block before, whose late windows
    reach into this one (``is_next`` True). Tumbling windows never leave
    their block."""
    block = pane // block_panes(n)
    return [(block, False)] + ([(block - 1, True)] if step < n else [])


def window_spans(block: int, n: int, step: int, here, following
                 ) -> tuple[list, list[tuple[int, tuple[int, int]]]]:
    """The windows of ``n`` panes starting every ``step`` panes in block
    ``block`` (pane indices ``[block * size, (block + 1) * size)``, ``size =
    block_panes(n)``), as spans: ``(panes, windows)``, where ``panes`` are
    the sketches of ``here`` (``(pane, sketch)`` of this block's panes) then
    of ``following`` (the next block's), in pane order, and ``windows`` is
    ``(first pane, (a, b))`` for every window holding at least one pane, in
    order: the window is the merge of ``panes[a:b]``, a suffix of ``here``
    followed by a prefix of ``following``."""
    held = sorted(here, key=lambda p: p[0]) + sorted(following,
                                                     key=lambda p: p[0])
    starts = [p for p, _ in held]  # ascending
    size = block_panes(n)
    windows = []
    for first in range(block * size, (block + 1) * size, step):
        a = bisect.bisect_left(starts, first)
        b = bisect.bisect_left(starts, first + n)
        if a < b:
            windows.append((first, (a, b)))
    return [s for _, s in held], windows


def window_sketches(block: int, n: int, step: int, here, following
                    ) -> list[tuple[int, object]]:
    """``(first pane, sketch)`` of the windows ``window_spans`` gives,
    merged; windows covering the same panes share one sketch object, a
    window of one pane is that pane's sketch. Sketches that merge many
    ranges at once (``CountMinTopK.merge_ranges``) get them all in one
    call; others (DataSketches merges one pair at a time) merge cumulative
    suffixes and prefixes, each once per block, so a window costs about
    three merges whatever ``n`` is. Inputs are never modified."""
    panes, windows = window_spans(block, n, step, here, following)
    by_span = {span: panes[span[0]] for _, span in windows
               if span[1] - span[0] == 1}
    todo = [span for span in dict.fromkeys(span for _, span in windows)
            if span not in by_span]
    if todo:
        merge_ranges = getattr(type(panes[0]), "merge_ranges", None)
        split = len(here)
        by_span.update(zip(todo, merge_ranges(panes, todo) if merge_ranges
                           else _suffix_prefix_merges(panes, split, todo)))
    return [(first, by_span[span]) for first, span in windows]


def ranked_block(spec: WindowSpec, k: int, event_type: str, block: int,
                 here, following, wanted=None, *, emitted_at_ms: int,
                 source: str = "batch", pane_timing: str = "batch"
                 ) -> pa.Table:
    """The ranked windows (``ranked_windows`` rows) of ``spec`` starting in
    ``block`` (those whose first pane is in the set ``wanted``, or all),
    from ``here`` and ``following`` (``window_spans``' of one method and
    event type), as ``ranked_windows_starting`` ranks them."""
    _, n, step = pane_plan(spec)
    size = block_panes(n)
    starts = [first for first in range(block * size, (block + 1) * size, step)
              if wanted is None or first in wanted]
    return ranked_windows_starting(
        spec, k, event_type, list(here) + list(following), starts,
        emitted_at_ms=emitted_at_ms, source=source, pane_timing=pane_timing)


def ranked_windows_starting(spec: WindowSpec, k: int, event_type: str,
                            held, wanted, **row_args) -> pa.Table:
    """The ranked windows of ``spec`` whose first pane is in ``wanted``,
    from ``held``: ``(pane, sketch)`` of every pane those windows may hold
    (one method and event type). Count-Min ranks consecutive windows in
    one call while their panes stay within ``GROUP_BYTES``, from the panes
    (``_span_groups``, ``sketches.span_array_ranked_rows``); other sketches
    rank each block of ``block_panes(n)`` panes with a wanted window once,
    however many of its windows are wanted, consecutive blocks in one call
    within ``GROUP_BYTES``, from the merges of ``window_sketches``. (Sparse
    data: a block holding an event or two would cost a call's fixed costs.)
    """
    length, n, step = pane_plan(spec)
    held = sorted(held, key=lambda p: p[0])
    if held and hasattr(type(held[0][1]), "rank_ranges"):
        parts = [_to_ranked_windows(
                    sketches.span_array_ranked_rows(
                        group, firsts * duration_ms(length), spans, k,
                        event_type),
                    spec, group[0].method, **row_args)
                 for group, firsts, spans in _span_groups(held, wanted, n)]
    else:
        size = block_panes(n)
        panes = [p for p, _ in held]

        def block(b):
            return held[bisect.bisect_left(panes, b * size):
                        bisect.bisect_left(panes, (b + 1) * size)]

        wanted = set(wanted)
        blocks = sorted({p // size for p in wanted})
        parts = [ranked_windows(windows, spec, duration_ms(length), k,
                                event_type, **row_args)
                 for windows in _grouped_windows(
                     ((block(b), window_sketches(b, n, step, block(b),
                                                 block(b + 1) if n > 1
                                                 else []))
                      for b in blocks), wanted)]
    return (pa.concat_tables(parts) if parts
            else schema.RANKED_WINDOWS_SCHEMA.empty_table())


def _grouped_windows(blocks, wanted):
    """``(panes, window_sketches)`` of consecutive blocks -> lists of
    wanted ``(first pane, sketch)`` of several blocks whose panes stay
    within ``GROUP_BYTES``, ranked in one call (``top_k_many``: one sort,
    not a table per block)."""
    windows, held_bytes = [], 0
    for here, made in blocks:
        mine = [w for w in made if w[0] in wanted]
        if not mine:
            continue
        size = sum(s.nbytes for _, s in here)
        if windows and held_bytes + size > GROUP_BYTES:
            yield windows
            windows, held_bytes = [], 0
        windows.extend(mine)
        held_bytes += size
    if windows:
        yield windows


#: Sketch bytes a group of blocks ranked in one call holds at most
#: (``ranked_windows_starting``); a block above it is a group of its own.
GROUP_BYTES = 1 << 20


def _span_groups(held, wanted, n: int):
    """The windows of ``n`` panes whose first pane is in ``wanted`` and
    that hold a pane of ``held`` (``(pane, sketch)``, ascending), as
    ``(panes, firsts, spans)`` groups of consecutive windows: ``panes`` the
    group's sketches, ``firsts`` its windows' first panes (ascending) and
    ``spans`` an ``(m, 2)`` array, window ``i`` being the merge of
    ``panes[a:b]``, ``(a, b) = spans[i]``. A group's panes stay within
    ``GROUP_BYTES`` (a window above it is a group of its own). Found with
    NumPy, not a bisect per window: a sparse year is hundreds of thousands
    of windows."""
    at = np.fromiter((p for p, _ in held), np.int64, len(held))
    firsts = np.unique(np.fromiter(wanted, np.int64))
    a = np.searchsorted(at, firsts)
    b = np.searchsorted(at, firsts + n)
    keep = a < b
    firsts, a, b = firsts[keep], a[keep], b[keep]
    held_bytes = np.zeros(len(held) + 1, np.int64)
    np.cumsum(np.fromiter((s.nbytes for _, s in held), np.int64, len(held)),
              out=held_bytes[1:])
    reach = held_bytes[b]  # ascending, as b is
    i = 0
    while i < len(firsts):
        j = max(i + 1, int(np.searchsorted(
            reach, held_bytes[a[i]] + GROUP_BYTES, side="right")))
        lo, hi = int(a[i]), int(b[j - 1])
        yield ([sketch for _, sketch in held[lo:hi]], firsts[i:j],
               np.stack([a[i:j] - lo, b[i:j] - lo], axis=1))
        i = j


#: Consecutive blocks the batch path gathers in one element (``group_of``)
#: and ranks in one call (``rank_blocks``): a year of sparse minutes is
#: thousands of blocks of an event or two, and a ranking call costs about
#: the same for one event as for a full block.
BLOCKS_PER_GROUP = 16


def group_of(block: int) -> int:
    """The group of blocks ``block`` is gathered in."""
    return block // BLOCKS_PER_GROUP


def rank_blocks(spec: WindowSpec, k: int, event_type: str, blocks,
                panes, **row_args) -> pa.Table:
    """The ranked windows of ``spec`` starting in ``blocks`` (block
    indexes), from ``panes``: ``(pane, sketch)`` of one method and event
    type, every pane of those blocks and of the block after each (what
    ``blocks_of`` keys to them), each pane once. Ranked as
    ``ranked_windows_starting`` ranks them: consecutive sparse blocks in
    one call."""
    _, n, step = pane_plan(spec)
    size = block_panes(n)
    wanted = [first for b in blocks
              for first in range(b * size, (b + 1) * size, step)]
    return ranked_windows_starting(spec, k, event_type, panes, wanted,
                                   **row_args)


def _suffix_prefix_merges(panes: list, split: int, spans) -> list:
    """The merge of ``panes[a:b]`` for every ``(a, b)`` of ``spans``, where
    ``a <= split <= b`` (a window of several panes reaches the end of its
    block, ``split``): cumulative merges of the block's suffixes and of the
    next block's prefixes, each made once, and one more merge per window."""
    suffix = _cumulative(panes[split - 1::-1] if split else [])[::-1]
    prefix = _cumulative(panes[split:])
    return [suffix[a] if b == split else prefix[b - split - 1] if a == split
            else suffix[a].copy().merge(prefix[b - split - 1])
            for a, b in spans]


def ranked_windows(windows, spec: WindowSpec, pane_ms: int, k: int,
                   event_type: str, *, emitted_at_ms: int,
                   source: str = "batch", pane_timing: str = "batch",
                   pane_index: int = 0) -> pa.Table:
    """``[(first pane, sketch)]`` of one method and event type -> the top
    ``k`` of each window as ``ranked_windows`` rows (``method`` = the
    sketch's, bounds and the guaranteed flag from the sketch,
    ``window_total`` = its exact total)."""
    if not windows:
        return schema.RANKED_WINDOWS_SCHEMA.empty_table()
    rows = sketches.windows_ranked_rows(
        [(first * pane_ms, sketch) for first, sketch in windows], k,
        event_type)
    return _to_ranked_windows(rows, spec, windows[0][1].method,
                              pane_timing=pane_timing, pane_index=pane_index,
                              source=source, emitted_at_ms=emitted_at_ms)


def ranked_spans(panes: list, windows, spec: WindowSpec, pane_ms: int,
                 k: int, event_type: str, *, emitted_at_ms: int,
                 source: str = "batch", pane_timing: str = "batch",
                 pane_index: int = 0) -> pa.Table:
    """``ranked_windows`` of windows given as spans of ``panes`` (sketches
    of one method and event type): ``[(first pane, (a, b))]``, the window
    being the merge of ``panes[a:b]`` (``sketches.spans_ranked_rows``)."""
    if not windows:
        return schema.RANKED_WINDOWS_SCHEMA.empty_table()
    rows = sketches.spans_ranked_rows(
        panes, [(first * pane_ms, span) for first, span in windows], k,
        event_type)
    return _to_ranked_windows(rows, spec, panes[0].method,
                              pane_timing=pane_timing, pane_index=pane_index,
                              source=source, emitted_at_ms=emitted_at_ms)


def _to_ranked_windows(rows, spec, method, *, emitted_at_ms: int,
                       source: str = "batch", pane_timing: str = "batch",
                       pane_index: int = 0) -> pa.Table:
    return ranking.to_ranked_windows(
        rows, spec, method=method, pane_timing=pane_timing,
        pane_index=pane_index, source=source, emitted_at_ms=emitted_at_ms,
        lower=rows["lower_bound"], upper=rows["upper_bound"],
        guaranteed=rows["guaranteed"])


def _cumulative(items: list) -> list:
    """``[a, a+b, a+b+c, ...]`` as new sketches; the first is ``a`` itself
    (never modified)."""
    out = []
    for s in items:
        out.append(s if not out else out[-1].copy().merge(s))
    return out
