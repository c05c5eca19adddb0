"""What a batch run over part of time recomputes at the edges of its span
(no Beam).

A batch run over event times ``span = [s, e)`` (whole minutes) owns the
batch slices and ranked windows that overlap its span
(``tables.batch_predicates``), but it counted only its own input. Inside the
span that is the whole truth; a 1h/1d slice or a window that *straddles* an
edge of the span (overlaps it without lying inside it) also holds events of
other runs. So at commit time those, and only those, are recomputed from

- the run's own exact counts inside the span (its staged slices), and
- the committed batch exact slices outside it (the snapshot the run
  commits on top of),

which makes runs per day, per file, in any order, with overlaps and
reruns, compose to the tables one run over everything would write (as long
as every run holds all the events of the minutes in its span). A run that
does not (inputs cut inside minutes, a late event in the next hour's file)
would replace committed counts it lacks events of: ``shortfall`` finds
them, and the commit refuses unless told to replace them. Where no
committed batch slice lies beyond an edge (a first run, say), the run's own
rows already are those and stay as staged.

Reads stay bounded by the longest window, whatever the span: a spec has at
most ``length / step`` straddling windows at each edge, and each edge is
ranked on its own from the slices of ``[edge window starts, + length)``.
A read takes the coarsest stored slice length (1m/1h/1d) that divides the
spec's step and lies wholly on one side of an edge (``aligned_runs``), so a
30-day window reads about 30 day slices per side, not 43,200 minutes.
That trusts committed 1h/1d batch slices to be the sums of their minutes,
which every commit through here keeps true (an output written before could
hold partial hour/day slices at old runs' edges: rerun those runs once).

Ranking is ``topk.core.ranking`` (the same code the pipelines rank with),
restricted to the straddling windows (``window_starts``); the rows are the
``RANKED_WINDOWS_SCHEMA`` rows a run over everything would write.

The approximate methods' straddling windows and 1h/1d sketches are
recomputed the same way from the ``sketches`` table (``SketchReader``):
a window is the merge of its panes' sketches, a pane the merge of the
stored sketches that tile it (the run's inside the span, the committed
batch ones outside), so a sketch is never asked for a part of its slice.
"""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from topk.approx import sketch_windows, sketches
from topk.core import ranking, schema
from topk.core.schema import DAY_MS, HOUR_MS, MINUTE_MS
from topk.core.windows import WindowSpec
from topk.storage import layout

#: Stored slice lengths, coarsest first: (name, ms).
_LENGTHS = (("1d", DAY_MS), ("1h", HOUR_MS), ("1m", MINUTE_MS))
#: Coarse slice lengths a run may straddle (minutes never do: spans are
#: whole minutes).
COARSE_SLICES = (("1h", HOUR_MS), ("1d", DAY_MS))

_STORED_TS = pa.timestamp("us", tz="UTC")
_KEY = ["slice_length", "slice_start", "event_type", "item_id"]


# --- Which windows and slices straddle a span --------------------------------

def straddling_window_starts(spec: WindowSpec, span: tuple[int, int]
                             ) -> tuple[np.ndarray, np.ndarray]:
    """``(left, right)``: sorted int64 window starts (epoch ms) of ``spec``'s
    windows that overlap ``span = [s, e)`` but do not lie inside it: those
    starting before ``s`` (left edge) and the others ending after ``e``
    (right edge). Each holds at most ``spec.panes_per_window`` starts."""
    s, e = span
    step, length = spec.step_ms, spec.length_ms
    first = (s - length) // step * step + step  # first start with end > s
    last = (e - 1) // step * step  # last start < e
    left = np.arange(first, min(s, last + 1), step, dtype=np.int64)
    right_first = max(-(-s // step) * step, (e - length) // step * step + step)
    right = np.arange(right_first, last + 1, step, dtype=np.int64)
    return left, right


def straddling_slice_starts(span: tuple[int, int], length_ms: int
                            ) -> list[int]:
    """Starts of the slices of ``length_ms`` that overlap ``span`` without
    lying inside it (at most two: one per edge)."""
    s, e = span
    starts = {s - s % length_ms, (e - 1) - (e - 1) % length_ms}
    return sorted(c for c in starts if c < s or c + length_ms > e)


def aligned_runs(start: int, end: int, max_length_ms: int
                 ) -> list[tuple[str, int, int]]:
    """Cover ``[start, end)`` (whole minutes) with aligned stored slices no
    longer than ``max_length_ms``, coarsest where aligned: ``(slice_length,
    first_start, stop)`` runs, as ``topk.core.windows.decompose_range`` but
    for any length of range."""
    lengths = [(n, ms) for n, ms in _LENGTHS if ms <= max_length_ms]
    return _cover(start, end, lengths)


def _cover(start, end, lengths):
    if start >= end or not lengths:
        return []
    (name, ms), finer = lengths[0], lengths[1:]
    lo, hi = -(-start // ms) * ms, end // ms * ms
    if lo >= hi:
        return _cover(start, end, finer)
    return [*_cover(start, lo, finer), (name, lo, hi),
            *_cover(hi, end, finer)]


def pane_slice_ms(spec: WindowSpec) -> int:
    """The longest stored slice length that divides the spec's step (a
    slice then lies in one pane, as ``ranking`` needs)."""
    return next(ms for _, ms in _LENGTHS if spec.step_ms % ms == 0)


# --- Reading counts and sketches -------------------------------------------

def _ts(ms: int) -> pa.Scalar:
    return pa.scalar(ms * 1000, _STORED_TS)


def _latest_rows(ds: pads.Dataset, runs, batch_only: bool, key: list,
                 values: list) -> pa.Table | None:
    """The ``key`` and ``values`` columns of ``ds``'s rows in ``runs``
    (from ``aligned_runs``), one row per ``key``: where a slice has several
    (a retried write), the latest ``emitted_at`` counts, as in the query
    layer (``topk.query.duckdb``); ``slice_start`` as epoch ms. ``None``
    when nothing matches."""
    wanted = None
    for name, first, stop in runs:
        # ``date`` is a partition column: it lets the reader skip files.
        one = ((pc.field("slice_length") == name)
               & (pc.field("date") >= layout.day_name(first // DAY_MS))
               & (pc.field("date") <= layout.day_name((stop - 1) // DAY_MS))
               & (pc.field("slice_start") >= _ts(first))
               & (pc.field("slice_start") < _ts(stop)))
        wanted = one if wanted is None else wanted | one
    if batch_only:
        wanted = wanted & (pc.field("source") == "batch")
    rows = ds.to_table(columns=[*key, *values, "emitted_at"], filter=wanted)
    if rows.num_rows == 0:
        return None
    rows = rows.sort_by([("emitted_at", "descending")])
    rows = rows.group_by(key, use_threads=False).aggregate(
        [(v, "first") for v in values])
    start = pc.cast(pc.cast(rows["slice_start"],
                            pa.timestamp("ms", tz="UTC")), pa.int64())
    return rows.set_column(rows.schema.get_field_index("slice_start"),
                           "slice_start", start)


def read_counts(ds: pads.Dataset | None, runs, batch_only: bool = False
                ) -> pa.Table:
    """The ``SLICE_COUNTS_SCHEMA`` rows of ``ds`` in ``runs`` (from
    ``aligned_runs``), the latest where a slice was written twice."""
    rows = (None if ds is None or not runs else
            _latest_rows(ds, runs, batch_only, _KEY, ["count"]))
    if rows is None:
        return schema.SLICE_COUNTS_SCHEMA.empty_table()
    return pa.table({"event_type": rows["event_type"],
                     "slice_start": rows["slice_start"],
                     "item_id": rows["item_id"],
                     "count": rows["count_first"]},
                    schema=schema.SLICE_COUNTS_SCHEMA)


def read_totals(ds: pads.Dataset | None, runs, batch_only: bool = False
                ) -> pa.Table:
    """``(slice_start, method, event_type, total)`` of the sketches of
    ``ds`` in ``runs``, as ``read_sketches`` picks them."""
    key = ["slice_length", "slice_start", "method", "event_type"]
    rows = (None if ds is None or not runs else
            _latest_rows(ds, runs, batch_only, key, ["total"]))
    if rows is None:
        return pa.table({"slice_start": pa.array([], pa.int64()),
                         "method": pa.array([], pa.string()),
                         "event_type": pa.array([], pa.string()),
                         "total": pa.array([], pa.int64())})
    return pa.table({"slice_start": rows["slice_start"],
                     "method": rows["method"],
                     "event_type": rows["event_type"],
                     "total": rows["total_first"]})


#: What ``read_sketches`` returns.
SKETCH_PIECES_SCHEMA = pa.schema([
    ("method", pa.string()), ("event_type", pa.string()),
    ("slice_start", pa.int64()), ("slice_length", pa.string()),
    ("sketch", pa.binary())])


def read_sketches(ds: pads.Dataset | None, runs, batch_only: bool = False
                  ) -> pa.Table:
    """The sketches of ``ds`` in ``runs`` (from ``aligned_runs``), one per
    (slice, method, event type), the latest where one was written twice:
    ``SKETCH_PIECES_SCHEMA`` rows."""
    key = ["slice_length", "slice_start", "method", "event_type"]
    rows = (None if ds is None or not runs else
            _latest_rows(ds, runs, batch_only, key, ["sketch"]))
    if rows is None:
        return SKETCH_PIECES_SCHEMA.empty_table()
    return pa.table({"method": rows["method"],
                     "event_type": rows["event_type"],
                     "slice_start": rows["slice_start"],
                     "slice_length": rows["slice_length"],
                     "sketch": rows["sketch_first"]},
                    schema=SKETCH_PIECES_SCHEMA)


def shortfall(own: pads.Dataset | None, committed: pads.Dataset | None,
              span: tuple[int, int], methods) -> str | None:
    """What committing a run would lose: the first committed batch minute
    inside ``span`` (exact counts per item; for a run without exact counts,
    each of its approximate ``methods``' sketch totals per event type) that
    the run's own staged rows hold less of, described in one line; ``None``
    when the run holds at least every committed count of its span (a rerun,
    or an input that contains the earlier one's events).

    ``own`` and ``committed`` are ``slices`` datasets when ``methods``
    holds ``exact``, else ``sketches`` datasets."""
    runs = [("1m", *span)]
    if layout.EXACT in methods:
        key, value, read = ["event_type", "item_id"], "count", read_counts
    else:
        key, value, read = ["method", "event_type"], "total", read_totals
    theirs = read(committed, runs, batch_only=True)
    if value == "total":
        theirs = theirs.filter(pc.is_in(theirs["method"], pa.array(
            list(methods), pa.string())))
    if theirs.num_rows == 0:
        return None
    ours = read(own, runs)
    key = ["slice_start", *key]
    joined = theirs.join(ours.select([*key, value]), keys=key,
                         join_type="left outer", right_suffix="_own")
    held = pc.fill_null(joined[f"{value}_own"], 0)
    short = joined.filter(pc.less(held, joined[value]))
    if short.num_rows == 0:
        return None
    first = short.sort_by([("slice_start", "ascending")]).slice(0, 1)
    row = first.to_pylist()[0]
    minute = np.datetime64(row["slice_start"], "ms").astype(str)
    what = ", ".join(str(row[k]) for k in key[1:])
    minutes = pc.count_distinct(short["slice_start"]).as_py()
    return (f"{minutes} committed minute(s) in this run's span hold events "
            f"its input lacks (first: {what} at {minute}Z, {value} "
            f"{row[value]} committed, {row.get(value + '_own') or 0} in "
            f"this input)")


class SliceReader:
    """Exact counts of ``[start, end)`` from two stored ``slices`` datasets
    (Arrow datasets of rows in their stored form, ``tables.prepare``):
    ``own`` (the run's staged rows) inside ``span``, ``committed`` (the
    snapshot committed before it; only ``source = 'batch'`` rows count)
    outside. Either may be ``None`` (nothing there)."""

    #: Reads one dataset's rows of some ``aligned_runs``.
    read = staticmethod(read_counts)

    def __init__(self, own: pads.Dataset | None,
                 committed: pads.Dataset | None, span: tuple[int, int]):
        self.own, self.committed, self.span = own, committed, span

    def rows(self, start: int, end: int, max_length_ms: int
             ) -> tuple[pa.Table, pa.Table]:
        """``(own, committed)`` rows (``read``'s, ``slice_start`` epoch ms)
        whose slices together tile ``[start, end)``: the run's inside the
        span, the committed ones outside it; slices no longer than
        ``max_length_ms``, never crossing an edge of the span. With no
        committed rows there, nothing is recomputed, so ``own`` is not
        read (returned empty): a first run's edges would read its own
        staged rows once per spec and edge for nothing."""
        s, e = self.span
        committed = pa.concat_tables([
            self.read(self.committed, aligned_runs(lo, hi, max_length_ms),
                      batch_only=True)
            for lo, hi in ((start, min(end, s)), (max(start, e), end))])
        own = self.read(
            self.own if committed.num_rows else None,
            aligned_runs(max(start, s), min(end, e), max_length_ms))
        return own, committed


class SketchReader(SliceReader):
    """``SliceReader`` over two stored ``sketches`` datasets: rows of
    ``read_sketches``."""

    read = staticmethod(read_sketches)


# --- Recomputing -------------------------------------------------------------
#
# Each function returns ``(rows, replaces)``: the recomputed rows, and a
# filter matching the run's staged rows they replace (``None``: none). An
# edge with no committed batch counts outside the span is not recomputed:
# there the run's own rows are already the ones a recomputation would
# give (only their ``emitted_at`` would change), and they stay as staged.

def ranked_straddling_windows(specs: list[WindowSpec], k: int,
                              reader: SliceReader, emitted_at_ms: int
                              ) -> tuple[pa.Table, pc.Expression | None]:
    """``RANKED_WINDOWS_SCHEMA`` rows (method exact, source and pane timing
    batch) of the straddling windows of ``specs`` (``reader.span``) that
    hold an event, ranked from ``reader``'s counts, per spec and edge."""
    out, replaces = [], []
    for spec in specs:
        parts = []
        for starts, own, committed in _edges(spec, reader):
            if committed.num_rows == 0:
                continue
            counts = pa.concat_tables([own, committed])
            parts.extend(top for _, _, top in ranking.iter_shard_top_k(
                counts, [spec], k, window_starts=starts))
            replaces.append(_windows_of(spec, starts))
        if parts:
            out.append(ranking.to_ranked_windows(
                ranking.merge_window_top_k(parts, k), spec,
                emitted_at_ms=emitted_at_ms))
    rows = (pa.concat_tables(out) if out
            else schema.RANKED_WINDOWS_SCHEMA.empty_table())
    return rows, any_of(replaces)


def _edges(spec: WindowSpec, reader: SliceReader):
    """``(starts, own, committed)`` per edge of ``reader.span`` that
    ``spec``'s windows straddle: their starts and ``reader.rows`` of
    ``[first start, last start + length)`` in slices no longer than a
    pane."""
    for starts in straddling_window_starts(spec, reader.span):
        if len(starts):
            yield (starts, *reader.rows(int(starts[0]),
                                        int(starts[-1]) + spec.length_ms,
                                        pane_slice_ms(spec)))


def _windows_of(spec: WindowSpec, starts: np.ndarray,
                methods=(layout.EXACT,)) -> pc.Expression:
    """Matches the rows of ``methods`` of ``spec``'s windows starting
    between ``starts[0]`` and ``starts[-1]``."""
    first, last = int(starts[0]), int(starts[-1])
    # Null-safe: a null ``slide`` compared with a name gives null, which
    # the negated filter would drop as well.
    slide = (pc.field("slide").is_null() if spec.slide_ms is None
             else pc.field("slide").is_valid()
             & (pc.field("slide") == spec.slide_name))
    return ((pc.field("method").isin(list(methods)))
            & (pc.field("window_length") == spec.length_name) & slide
            & (pc.field("window_start") >= _ts(first))
            & (pc.field("window_start") <= _ts(last)))


def straddling_slices(reader: SliceReader, emitted_at_ms: int
                      ) -> tuple[pa.Table, pc.Expression | None]:
    """``SLICES_SCHEMA`` rows (source batch) of the 1h and 1d slices that
    straddle ``reader.span``, summed from ``reader``'s finer counts."""
    out, replaces = [], []
    for name, ms in COARSE_SLICES:
        for c in straddling_slice_starts(reader.span, ms):
            # No slice of length ``ms`` fits on one side of an edge, so
            # the finer ones of each side are read.
            own, committed = reader.rows(c, c + ms, ms)
            if committed.num_rows == 0:
                continue
            replaces.append((pc.field("slice_length") == name)
                            & (pc.field("slice_start") == _ts(c)))
            summed = pa.concat_tables([own, committed]).group_by(
                ["event_type", "item_id"]).aggregate([("count", "sum")])
            n = summed.num_rows
            out.append(pa.table({
                "slice_start": pa.array(np.full(n, c, np.int64)).cast(
                    schema.TIMESTAMP),
                "slice_length": pa.array([name] * n, pa.string()),
                "event_type": summed["event_type"],
                "item_id": summed["item_id"],
                "count": summed["count_sum"],
                "source": pa.array(["batch"] * n, pa.string()),
                "emitted_at": pa.array(np.full(n, emitted_at_ms, np.int64)
                                       ).cast(schema.TIMESTAMP),
            }, schema=schema.SLICES_SCHEMA))
    rows = (pa.concat_tables(out) if out
            else schema.SLICES_SCHEMA.empty_table())
    return rows, any_of(replaces)


def ranked_straddling_sketch_windows(
        specs: list[WindowSpec], k: int, reader: SketchReader, methods,
        emitted_at_ms: int) -> tuple[pa.Table, pc.Expression | None]:
    """``RANKED_WINDOWS_SCHEMA`` rows (approximate ``methods``, source and
    pane timing batch) of the straddling windows of ``specs``
    (``reader.span``): each window the merge of its panes' sketches, the
    run's inside the span and the committed ones outside, ranked as the
    pipelines rank a window (``sketch_windows.ranked_windows``)."""
    out, replaces = [], []
    for spec in specs:
        pane_ms = pane_slice_ms(spec)
        for starts, own, committed in _edges(spec, reader):
            committed = _of_methods(committed, methods)
            if committed.num_rows == 0:
                continue
            for (_, event_type), panes in _merged(
                    pa.concat_tables([_of_methods(own, methods), committed]),
                    pane_ms):
                out.append(sketch_windows.ranked_windows_starting(
                    spec, k, event_type, panes.items(),
                    (starts // pane_ms).tolist(),
                    emitted_at_ms=emitted_at_ms))
            replaces.append(_windows_of(spec, starts, methods))
    rows = (pa.concat_tables(out) if out
            else schema.RANKED_WINDOWS_SCHEMA.empty_table())
    return rows, any_of(replaces)


def straddling_sketches(reader: SketchReader, methods, emitted_at_ms: int
                        ) -> tuple[pa.Table, pc.Expression | None]:
    """``SKETCHES_SCHEMA`` rows (approximate ``methods``, source batch) of
    the 1h and 1d sketches that straddle ``reader.span``: merges of
    ``reader``'s finer sketches, per method and event type."""
    out, replaces = [], []
    for name, ms in COARSE_SLICES:
        for c in straddling_slice_starts(reader.span, ms):
            own, committed = reader.rows(c, c + ms, ms)
            committed = _of_methods(committed, methods)
            if committed.num_rows == 0:
                continue
            replaces.append((pc.field("slice_length") == name)
                            & (pc.field("slice_start") == _ts(c)))
            merged = _merged(pa.concat_tables(
                [_of_methods(own, methods), committed]), ms)
            out.append(sketch_windows.sketches_table(
                [sketch_windows.sketch_row(method, event_type, c,
                                           panes[c // ms])
                 for (method, event_type), panes in merged],
                name, "batch", emitted_at_ms))
    rows = (pa.concat_tables(out) if out
            else schema.SKETCHES_SCHEMA.empty_table())
    return rows, any_of(replaces)


def _of_methods(pieces: pa.Table, methods) -> pa.Table:
    return pieces.filter(pc.is_in(pieces["method"],
                                  pa.array(list(methods), pa.string())))


def _merged(pieces: pa.Table, pane_ms: int) -> list:
    """``SKETCH_PIECES_SCHEMA`` rows -> ``[((method, event_type), {pane:
    sketch})]``: per method and event type, the merge of the pieces in
    each pane of ``pane_ms`` (pane = ``slice_start // pane_ms``; no piece
    is longer than a pane)."""
    groups = {}
    for method, event_type, start, blob in zip(
            pieces["method"].to_pylist(), pieces["event_type"].to_pylist(),
            pieces["slice_start"].to_pylist(), pieces["sketch"].to_pylist()):
        groups.setdefault((method, event_type), {}).setdefault(
            start // pane_ms, []).append(sketches.sketch_from_bytes(blob))
    try:
        return [(key, {pane: sketches.merge_many(parts)
                       for pane, parts in panes.items()})
                for key, panes in sorted(groups.items())]
    except ValueError as e:
        # Sketches of other sizes do not merge.
        raise ValueError(
            f"the run's sketches do not merge with those committed next to "
            f"its span ({e}): run with the output's --sketch-budget-bytes "
            f"(the budget_bytes column of its sketches table)") from None


def any_of(expressions) -> pc.Expression | None:
    out = None
    for e in expressions:
        out = e if out is None else out | e
    return out
