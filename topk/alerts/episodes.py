"""Which alerts a new pane fires: rule conditions, episodes and cool-down
(pure: no I/O, no clock; the state is a JSON-able dict).

Panes arrive in ``emitted_at`` order (``Evaluator.process``). Per *stream*
(window spec, method, event type) the evaluator keeps the latest pane of
each recent window and decides which panes to evaluate:

- a **final** pane (``on_time``, ``late``, ``batch``) is evaluated on its own
  window, whatever newer windows exist (a late pane is never compared with
  a newer window);
- an **early** pane is evaluated when its window is the stream's *current*
  window: the earliest-ending window not closed yet (closed: a final pane
  was seen of it or of a later-ending window). For a tumbling spec that is
  the window in progress; for a sliding spec (``1h/1m``) the window of the
  last hour, not the younger, still thin windows that share its latest
  minutes. When a final pane closes the current window, the next one's
  latest pane is evaluated at once.

Conditions (``rules``): ``count_over`` (count >= threshold),
``share_over`` (count / window_total >= percent / 100), ``enters_top_k``
(rank <= k now, not in the top k of the baseline) and ``rank_jump`` (rank
improved by >= places over the baseline; an item the baseline does not
rank counts as ranked just below its last row). The baseline of a window is the
latest pane of the window before it (start - step), else the window's own
previous pane; without either, or when the baseline's ``window_total`` is
below the rule's ``min_total``, the comparing rules do not fire. Windows
with a ``window_total`` below the rule's ``min_total`` are not evaluated.

**Episodes**, per (rule, event type, item): a rule fires when its
condition holds for an item outside an episode. The episode goes on while
the condition holds on the windows evaluated, and is cleared by the first
evaluated pane of its latest window or a later one where the condition does
not hold (at that window's end: the clock is window time, so replays and
batch outputs behave as live streams). Holding again within the rule's
cool-down of the clear continues the episode without an alert. So an item
alerts once per episode, and again only after the condition has been false
for the cool-down. The alert id is a hash of the rule, event type,
item and the window the episode started in: the same in any re-run.
"""
import dataclasses
import hashlib

from topk.alerts import rules as alert_rules
from topk.core.windows import WindowSpec, format_time

FINAL = ("on_time", "late", "batch")
STATE_VERSION = 1


@dataclasses.dataclass
class Pane:
    """One pane of ``ranked_windows``: one window of one stream, as emitted
    at ``emitted_at_ms``; ``rows`` are ``(rank, item_id, count)`` by rank."""
    window_spec: str  # partition spelling, e.g. "1h_1m"
    method: str
    event_type: str
    window_start_ms: int
    window_end_ms: int
    pane_timing: str
    pane_index: int
    emitted_at_ms: int
    window_total: int
    rows: list

    @property
    def stream(self) -> tuple[str, str, str]:
        return (self.window_spec, self.method, self.event_type)

    @property
    def final(self) -> bool:
        return self.pane_timing in FINAL


def stream_key(stream) -> str:
    return "|".join(stream)


def alert_id(rule: str, event_type: str, item_id: str, window_spec: str,
             episode_start_ms: int) -> str:
    """Deterministic id of an episode's alert (receivers de-duplicate)."""
    text = "\x1f".join([rule, event_type, item_id, window_spec,
                        str(episode_start_ms)])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def new_state() -> dict:
    return {"version": STATE_VERSION, "streams": {}, "episodes": {}}


class Evaluator:
    """Evaluates panes against ``rules`` (``Rule`` objects), updating
    ``state`` (a dict from ``new_state`` or a saved one) in place."""

    def __init__(self, rules, state: dict | None = None):
        self.rules = list(rules)
        self.state = new_state() if state is None else state
        self.state.setdefault("streams", {})
        self.state.setdefault("episodes", {})
        self._by_stream: dict[tuple, list] = {}
        for rule in self.rules:
            self._by_stream.setdefault(rule.stream, []).append(rule)
        self._specs = {r.window.key: r.window for r in self.rules}
        #: Panes processed (not skipped as seen or superseded).
        self.processed = 0

    @property
    def streams(self) -> set:
        return set(self._by_stream)

    # --- panes -------------------------------------------------------------

    def process(self, pane: Pane) -> list[dict]:
        """The alerts ``pane`` fires (none for a pane already processed or
        superseded by a newer pane of its window, or of a stream no rule
        reads)."""
        if pane.stream not in self._by_stream:
            return []
        s = self.state["streams"].setdefault(stream_key(pane.stream), {
            "closed_through": None, "clock": None, "windows": {}})
        key = str(pane.window_start_ms)
        previous = s["windows"].get(key)
        if previous is not None and previous["emitted_at"] >= \
                pane.emitted_at_ms:
            return []
        self.processed += 1
        s["windows"][key] = {
            "end": pane.window_end_ms, "emitted_at": pane.emitted_at_ms,
            "timing": pane.pane_timing, "index": pane.pane_index,
            "total": pane.window_total, "evaluated": False,
            "rows": [[item, int(rank), int(count)]
                     for rank, item, count in pane.rows]}
        s["clock"] = max(s["clock"] or pane.window_end_ms,
                         pane.window_end_ms)
        alerts = []
        if pane.final:
            alerts += self._evaluate(pane.stream, s, key, previous)
            s["closed_through"] = max(s["closed_through"] or
                                      pane.window_end_ms, pane.window_end_ms)
            current = self._current(s)
            if current is not None and not s["windows"][current][
                    "evaluated"]:
                alerts += self._evaluate(pane.stream, s, current, None)
        elif self._current(s) == key:
            alerts += self._evaluate(pane.stream, s, key, previous)
        self._prune(pane.stream, s)
        return alerts

    def _current(self, s) -> str | None:
        closed = s["closed_through"]
        open_ = [(w["end"], int(k)) for k, w in s["windows"].items()
                 if w["timing"] not in FINAL
                 and (closed is None or w["end"] > closed)]
        return str(min(open_)[1]) if open_ else None

    def _prune(self, stream, s) -> None:
        """Forget windows too old to be a baseline (episodes past their
        cool-down are forgotten in ``_episodes``)."""
        spec = self._specs[stream[0]]
        edge = s["closed_through"] if s["closed_through"] is not None else (
            s["clock"] - spec.length_ms)
        horizon = edge - max(spec.length_ms, 3_600_000) - spec.step_ms
        for k in [k for k, w in s["windows"].items() if w["end"] < horizon]:
            del s["windows"][k]

    # --- evaluation ----------------------------------------------------------

    def _evaluate(self, stream, s, key, previous) -> list[dict]:
        window = s["windows"][key]
        window["evaluated"] = True
        spec = self._specs[stream[0]]
        start = int(key)
        before = s["windows"].get(str(start - spec.step_ms))
        if before is None:
            before = previous
        alerts = []
        for rule in self._by_stream[stream]:
            hits = ({} if window["total"] < rule.min_total
                    else condition_hits(rule, window, before))
            alerts += self._episodes(rule, stream, start, window, hits,
                                     s["clock"])
        return alerts

    def _episodes(self, rule, stream, start, window, hits, clock
                  ) -> list[dict]:
        """Update the rule's episodes with ``hits`` on the window starting
        at ``start``; returns the alerts of the episodes that begin.

        An episode (``cleared_at`` None) goes on while the condition holds
        on its latest window (``window``) or a later one; the first pane of
        such a window where it does not hold clears it at that window's
        end. Holding again within the cool-down of the clear continues it;
        later, a new episode begins. Panes of windows older than the
        episode's latest one neither clear nor continue it."""
        episodes = self.state["episodes"].setdefault(rule.name, {})
        now = window["end"]  # the episode clock: window time
        alerts = []
        for item, values in hits.items():
            ep = episodes.get(item)
            if ep is not None:
                if ep["cleared_at"] is None:
                    ep["window"] = max(ep["window"], start)
                    continue
                if now - ep["cleared_at"] < rule.cooldown_ms:
                    if start >= ep["window"]:  # back within the cool-down
                        ep["cleared_at"], ep["window"] = None, start
                    continue
            ep = episodes[item] = {
                "window": start, "started": start, "cleared_at": None,
                "alert_id": alert_id(rule.name, rule.event_type, item,
                                     stream[0], start)}
            alerts.append(make_alert(rule, stream, start, window, item,
                                     values, ep["alert_id"]))
        for item, ep in list(episodes.items()):
            if item in hits:
                continue
            if ep["cleared_at"] is None:
                if start >= ep["window"]:
                    ep["cleared_at"] = now
            elif clock - ep["cleared_at"] >= rule.cooldown_ms:
                del episodes[item]  # re-armed: same as never fired
        return alerts


def condition_hits(rule, window: dict, before: dict | None) -> dict:
    """{item: values} of the items for which ``rule``'s condition holds on
    ``window`` (a stored pane: rows ``[item, rank, count]``, total) against
    the baseline pane ``before`` (or ``None``)."""
    rows = window["rows"]
    total = window["total"]
    hits = {}
    if rule.when == alert_rules.COUNT_OVER:
        for item, rank, count in rows:
            if count >= rule.threshold:
                hits[item] = {"count": count, "threshold": rule.threshold,
                              "rank": rank, "window_total": total}
    elif rule.when == alert_rules.SHARE_OVER:
        for item, rank, count in rows:
            if total > 0 and count * 100.0 >= rule.percent * total:
                hits[item] = {"count": count, "window_total": total,
                              "share_percent": round(100.0 * count / total,
                                                     3),
                              "percent": rule.percent, "rank": rank}
    elif before is not None and before["total"] >= rule.min_total:
        ranks = {item: rank for item, rank, _ in before["rows"]}
        floor = len(before["rows"]) + 1  # an unranked item ranks below
        for item, rank, count in rows:
            was = ranks.get(item)
            if rule.when == alert_rules.ENTERS_TOP_K:
                if rank <= rule.k and (was is None or was > rule.k):
                    hits[item] = {"rank": rank, "rank_before": was,
                                  "k": rule.k, "count": count}
            elif rule.when == alert_rules.RANK_JUMP:
                if rule.k is not None and rank > rule.k:
                    continue
                jump = (was if was is not None else floor) - rank
                if jump >= rule.places:
                    hits[item] = {"rank_before": was,
                                  "rank_before_at_least": was or floor,
                                  "rank_after": rank, "jump": jump,
                                  "places": rule.places, "count": count}
    return hits


def _was(v) -> str:
    if v["rank_before"] is not None:
        return str(v["rank_before"])
    return f">{v['rank_before_at_least'] - 1}"


_WHY = {
    alert_rules.COUNT_OVER: lambda v: (
        f"count {v['count']} >= threshold {v['threshold']}"),
    alert_rules.SHARE_OVER: lambda v: (
        f"share {v['share_percent']:g}% >= {v['percent']:g}% "
        f"({v['count']} of {v['window_total']})"),
    alert_rules.ENTERS_TOP_K: lambda v: (
        f"entered the top {v['k']} at rank {v['rank']} (was "
        f"{v['rank_before'] or 'unranked'})"),
    alert_rules.RANK_JUMP: lambda v: (
        f"rank {_was(v)} -> {v['rank_after']} (up {v['jump']} >= "
        f"{v['places']} places)"),
}


def make_alert(rule, stream, start, window, item, values, aid) -> dict:
    """The alert JSON object: what fired, on which pane, and why."""
    spec: WindowSpec = rule.window
    return {
        "alert_id": aid, "rule": rule.name, "condition": rule.when,
        "item_id": item, "event_type": rule.event_type,
        "method": rule.method, "window": spec.name, "window_spec": stream[0],
        "window_start": format_time(start),
        "window_end": format_time(window["end"]),
        "pane_timing": window["timing"], "pane_index": window["index"],
        "emitted_at": format_time(window["emitted_at"]),
        "emitted_at_ms": window["emitted_at"],
        "episode_start": format_time(start), "values": values,
        "message": f"{rule.name}: {item!r} ({rule.event_type}, {spec.name} "
                   f"window {format_time(start)}): {_WHY[rule.when](values)}",
    }
