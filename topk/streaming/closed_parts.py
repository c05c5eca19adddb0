"""The closed part of open sliding windows' sketches, kept between early
firings (no Beam).

An early firing re-ranks every open window its batch changed; for a sliding
window (``1h/1m``) that is every window holding the open minute, all 60 of
them. Merging each from all its panes' sketches again cost what the stage
holds, every second (``bench/early_firing_cost.py``: Count-Min, one event
type, 11 ms with a minute held and 287 ms with 45). But the panes before the
open one change only with stragglers and late events. So the sketch stage
keeps, per spec, method and type, the merge of each window's panes before
``cut`` (the newest pane when the cache is made): ``ClosedMerges``. A
firing merges that with the window's panes from ``cut`` on (the tail: one or
two panes), whatever the window's length. The stage drops its cache when a
pane before ``cut`` changes. (The exact stage keeps each open window's top
K instead: ``topk.streaming.open_tops``.)

Bounds stay deterministic (merges of valid sketches are valid); they may be
a little wider than one merge of every pane, which the on-time pane still
is.
"""
import dataclasses

from topk.streaming.dedup import NO_WATERMARK

#: Panes a firing adds to the cached closed part before the cache is made
#: again: the open pane, and the next one while the watermark catches up.
TAIL_PANES = 2


def cut_at(newest: int, watermark_ms: int, step_ms: int, now_ms: int
           ) -> int | None:
    """Where a new cache cuts its windows (a pane index): at the first pane
    the stage's watermark has not closed, so that the closed part changes
    only with late events, or at the ``newest`` held pane before the first
    watermark; ``None`` during a catch-up, where the early panes go the long
    way: when more than ``TAIL_PANES`` panes would be left after the cut, or
    the newest pane is that far behind the wall clock ``now_ms`` (a cache
    made after each catch-up firing would cost a full ranking each time)."""
    cut = newest if watermark_ms <= NO_WATERMARK else min(
        newest, watermark_ms // step_ms)
    live = now_ms // step_ms - newest < TAIL_PANES
    return cut if live and newest - cut < TAIL_PANES else None


def stale(cut: int, newest: int) -> bool:
    """Whether a cache cut at ``cut`` is too far behind the ``newest``
    pane to serve."""
    return newest - cut >= TAIL_PANES


def merge_each(parts: list[list]) -> list:
    """The merge of each list of sketches in ``parts`` (one method), in one
    ``merge_ranges`` call where the sketch has it; a list of one is that
    sketch itself. Inputs are never modified."""
    out = [p[0] if len(p) == 1 else None for p in parts]
    todo = [i for i, p in enumerate(parts) if len(p) > 1]
    if not todo:
        return out
    merge_ranges = getattr(type(parts[todo[0]][0]), "merge_ranges", None)
    if merge_ranges:
        flat, ranges = [], []
        for i in todo:
            ranges.append((len(flat), len(flat) + len(parts[i])))
            flat.extend(parts[i])
        merged = merge_ranges(flat, ranges)
    else:
        merged = [type(parts[i][0]).merge_many(parts[i]) for i in todo]
    for i, sketch in zip(todo, merged):
        out[i] = sketch
    return out


@dataclasses.dataclass
class ClosedMerges:
    """Closed parts of the windows holding pane ``cut`` of one spec,
    method and event type: the merge of each window's panes before
    ``cut``, by the window's first pane."""
    cut: int
    merges: dict

    @classmethod
    def build(cls, held: list[tuple[int, object]], cut: int, n: int,
              step: int) -> "ClosedMerges":
        """From ``held`` ``(pane, sketch)`` sorted by pane, for windows of
        ``n`` panes every ``step`` panes."""
        firsts = [w for w in range(cut - n + 1, cut) if w % step == 0]
        parts = {w: [s for p, s in held if w <= p < cut] for w in firsts}
        parts = {w: p for w, p in parts.items() if p}
        return cls(cut, dict(zip(parts, merge_each(list(parts.values())))))

    def advance(self, held: list[tuple[int, object]], cut: int, n: int,
                step: int) -> "ClosedMerges":
        """The closed parts cut at a later ``cut``: each window's cached
        part merged with its held panes from this cut to the new one (a
        merge or two a window, where ``build`` merges every closed pane
        again: at a minute's end, five event types of an hour's panes
        stalled the stage for seconds)."""
        firsts = [w for w in range(cut - n + 1, cut) if w % step == 0]
        parts = {w: ([self.merges[w]] if w in self.merges else [])
                 + [s for p, s in held if max(w, self.cut) <= p < cut]
                 for w in firsts}
        parts = {w: p for w, p in parts.items() if p}
        return ClosedMerges(cut, dict(zip(parts, merge_each(
            list(parts.values())))))

    def spans(self, held: list[tuple[int, object]], wanted: list[int],
              n: int) -> tuple[list, list[tuple[int, tuple[int, int]]]]:
        """The windows ``wanted`` (first panes) as spans of a list of
        sketches (``sketch_windows.window_spans``' form, ``(panes,
        [(first pane, (a, b))])``): each one's closed part followed by its
        held panes from ``cut`` on."""
        panes, windows = [], []
        for w in wanted:
            part = ([self.merges[w]] if w in self.merges else []) + [
                s for p, s in held if max(w, self.cut) <= p < w + n]
            if part:
                windows.append((w, (len(panes), len(panes) + len(part))))
                panes.extend(part)
        return panes, windows
