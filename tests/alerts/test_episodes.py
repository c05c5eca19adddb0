"""Pane evaluation: conditions, episodes, cool-down, baselines, late panes
(``topk.alerts.episodes``, pure: panes built by hand)."""
import json

import pytest

from topk.alerts import episodes, rules
from topk.alerts.episodes import Evaluator, Pane

MIN = 60_000
T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z
SPECS = {"1m": (MIN, MIN), "1h": (60 * MIN, 60 * MIN),
         "1h_1m": (60 * MIN, MIN)}


def pane(start_min, emitted_s, counts, timing="early", spec="1m",
         total=None, event_type="*", index=0):
    """A pane of window ``start_min`` minutes after T0; ``counts`` {item:
    count}, ranked by count desc, item asc."""
    length, _ = SPECS[spec]
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    start = T0 + start_min * MIN
    return Pane(spec, "exact", event_type, start, start + length, timing,
                index, T0 + int(emitted_s * 1000),
                sum(counts.values()) if total is None else total,
                [(r, item, c) for r, (item, c) in enumerate(ranked, 1)])


def rule_set(*raw, cooldown="10m"):
    return rules.parse({"cooldown": cooldown, "rules": list(raw)}).rules


def run(evaluator, panes):
    out = []
    for p in panes:
        out += evaluator.process(p)
    return out


def test_count_over_fires_once_per_episode_and_says_why():
    ev = Evaluator(rule_set({"name": "hot", "when": "count_over",
                             "window": "1m", "threshold": 100}))
    alerts = run(ev, [
        pane(0, 1, {"a": 50, "b": 10}),
        pane(0, 2, {"a": 120, "b": 11}),   # crosses: fires
        pane(0, 3, {"a": 180, "b": 12}),   # same episode
        pane(0, 61, {"a": 200, "b": 12}, "on_time", index=1),
        pane(1, 62, {"a": 150, "b": 3}),   # next window, within cool-down
    ])
    assert len(alerts) == 1
    a = alerts[0]
    assert (a["rule"], a["condition"], a["item_id"], a["event_type"]) == (
        "hot", "count_over", "a", "*")
    assert a["values"]["count"] == 120 and a["values"]["threshold"] == 100
    assert a["window"] == "1m" and a["window_start"] == "2024-05-01T00:00:00Z"
    assert a["window_end"] == "2024-05-01T00:01:00Z"
    assert a["pane_timing"] == "early"
    assert a["emitted_at_ms"] == T0 + 2000
    assert a["alert_id"] == episodes.alert_id("hot", "*", "a", "1m", T0)


def test_cooldown_then_rearm_after_the_condition_cleared():
    ev = Evaluator(rule_set({"name": "hot", "when": "count_over",
                             "window": "1m", "threshold": 100},
                            cooldown="5m"))
    got = []
    for minute in range(0, 20):
        count = 150 if minute in (0, 1, 3, 10) else 5  # 2: false; 3: back
        got += ev.process(pane(minute, minute * 60 + 30, {"a": count}))
        got += ev.process(pane(minute, minute * 60 + 61, {"a": count},
                               "on_time", index=1))
    # Cleared by minute 2 (at its end, 00:03); minute 3 (ending 00:04) is
    # within 5 minutes of that: same episode. Cleared again by minute 4
    # (00:05); minute 10 (ending 00:11) is not within 5 minutes.
    assert [a["window_start"] for a in got] == [
        "2024-05-01T00:00:00Z", "2024-05-01T00:10:00Z"]
    assert got[0]["alert_id"] != got[1]["alert_id"]


def test_a_tumbling_gap_shorter_than_the_cooldown_is_one_episode():
    ev = Evaluator(rule_set({"name": "hot", "when": "count_over",
                             "window": "1h", "threshold": 100},
                            cooldown="2h"))
    hours = [150, 5, 150, 5, 5, 150]  # false 1 h, then false 2 h
    got = run(ev, [pane(60 * h, 10, {"a": c}, "batch", spec="1h")
                   for h, c in enumerate(hours)])
    assert [a["window_start"][11:16] for a in got] == ["00:00", "05:00"]


def test_no_flapping_while_the_condition_holds_on_and_off_quickly():
    ev = Evaluator(rule_set({"name": "hot", "when": "count_over",
                             "window": "1m", "threshold": 100}))
    got = []
    for i in range(30):  # one window, its early panes flap around 100
        got += ev.process(pane(0, i + 1, {"a": 99 + (i % 2) * 2}))
    assert len(got) == 1


def test_rank_jump_against_the_previous_windows_pane():
    ev = Evaluator(rule_set({"name": "climb", "when": "rank_jump",
                             "window": "1h", "places": 3}))
    base = {"a": 50, "b": 40, "c": 30, "d": 20, "e": 10}
    got = run(ev, [
        pane(0, 1, base, spec="1h"),                    # no baseline yet
        pane(0, 3600, base, "on_time", spec="1h", index=1),
        pane(60, 3601, {"a": 5, "e": 9, "b": 4}, spec="1h"),  # e: 5 -> 1
        pane(60, 3602, {"a": 5, "e": 12, "b": 4}, spec="1h", index=1),
    ])
    assert [(a["item_id"], a["values"]["rank_before"],
             a["values"]["rank_after"]) for a in got] == [("e", 5, 1)]
    # An item the baseline did not rank counts as ranked below its rows.
    ev = Evaluator(rule_set({"name": "climb", "when": "rank_jump",
                             "window": "1h", "places": 3}))
    got = run(ev, [pane(0, 3600, base, "on_time", spec="1h"),
                   pane(60, 3601, {"new": 99, "a": 1}, spec="1h")])
    assert [(a["item_id"], a["values"]["rank_before"],
             a["values"]["rank_before_at_least"]) for a in got] == [
        ("new", None, 6)]


def test_enters_top_k_fires_for_a_newcomer_only():
    ev = Evaluator(rule_set({"name": "top", "when": "enters_top_k",
                             "window": "1h", "k": 2}))
    got = run(ev, [
        pane(0, 1, {"a": 3, "b": 2, "c": 1}, spec="1h"),  # no baseline
        pane(0, 2, {"a": 5, "b": 4, "c": 1}, spec="1h"),  # same top 2
        pane(0, 3, {"a": 5, "c": 6, "b": 4}, spec="1h"),  # c enters
        pane(0, 4, {"a": 5, "c": 7, "b": 4}, spec="1h"),  # still in
    ])
    assert [(a["item_id"], a["values"]["rank"], a["values"]["rank_before"])
            for a in got] == [("c", 1, 3)]


def test_share_over_with_min_total():
    ev = Evaluator(rule_set({"name": "dom", "when": "share_over",
                             "window": "1m", "percent": 40,
                             "min_total": 100}))
    got = run(ev, [
        pane(0, 1, {"a": 3, "b": 1}),            # 75 % of a thin window
        pane(0, 2, {"a": 30, "b": 70}),          # b: 70 %
        pane(0, 3, {"a": 30, "b": 80}, total=200),  # a 15 %, b 40 %
    ])
    assert [(a["item_id"], a["values"]["share_percent"]) for a in got] == [
        ("b", 70.0)]


def test_a_late_pane_is_evaluated_on_its_own_window():
    ev = Evaluator(rule_set(
        {"name": "hot", "when": "count_over", "window": "1m",
         "threshold": 100},
        {"name": "top", "when": "enters_top_k", "window": "1m", "k": 1}))
    got = run(ev, [
        pane(0, 60, {"a": 10, "b": 5}, "on_time"),
        pane(1, 120, {"a": 10, "b": 5}, "on_time"),
        pane(2, 150, {"b": 500, "a": 1}),   # b: hot, and first (vs minute 1)
        # Late events for minute 1: a and x over the threshold there; a is
        # still first in minute 1 as in minute 0 (compared with minute 2,
        # where b leads, a would have "entered" the top 1).
        pane(1, 151, {"a": 130, "x": 120, "b": 5}, "late", index=1),
        # A late pane of minute 0 where b is hot and first: b is in open
        # episodes of both rules.
        pane(0, 152, {"b": 150, "a": 10}, "late", index=1),
        pane(2, 153, {"b": 600, "a": 1}, index=1),
    ])
    got = {(a["rule"], a["item_id"]): a for a in got}
    assert set(got) == {("hot", "b"), ("top", "b"), ("hot", "a"),
                        ("hot", "x")}
    for item in "ax":
        assert got[("hot", item)]["pane_timing"] == "late"
        assert got[("hot", item)]["window_start"] == "2024-05-01T00:01:00Z"
    assert got[("top", "b")]["window_start"] == "2024-05-01T00:02:00Z"


def test_a_sliding_spec_evaluates_the_window_of_the_last_hour():
    """Younger windows of a sliding spec share only its latest minutes:
    thin, they are not evaluated until they are the current window."""
    ev = Evaluator(rule_set({"name": "dom", "when": "share_over",
                             "window": "1h/1m", "percent": 50}))
    last_hour = {"a": 600, "b": 400, "c": 10}
    got = run(ev, [
        pane(0, 10, last_hour, spec="1h_1m"),
        pane(1, 10, {"a": 60, "b": 40, "c": 10}, spec="1h_1m"),
        pane(59, 10, {"c": 10}, spec="1h_1m"),   # c: 100 % of a thin one
    ])
    assert [(a["item_id"], a["window_start"]) for a in got] == [
        ("a", "2024-05-01T00:00:00Z")]
    # When the current window closes, the next one is evaluated at once.
    got = run(ev, [pane(0, 61, last_hour, "on_time", spec="1h_1m",
                        index=1),
                   pane(1, 62, {"a": 60, "b": 40, "c": 20},
                        spec="1h_1m", index=1)])
    assert got == []  # a continues its episode, nobody else over 50 %


def test_replayed_and_superseded_panes_fire_nothing():
    rule = rule_set({"name": "hot", "when": "count_over", "window": "1m",
                     "threshold": 100})
    ev = Evaluator(rule)
    assert len(run(ev, [pane(0, 2, {"a": 120})])) == 1
    assert run(ev, [pane(0, 2, {"a": 120}), pane(0, 1, {"a": 120})]) == []


def test_state_survives_json_and_an_unknown_stream_is_ignored():
    rule = rule_set({"name": "hot", "when": "count_over", "window": "1m",
                     "threshold": 100})
    ev = Evaluator(rule)
    assert len(run(ev, [pane(0, 2, {"a": 120})])) == 1
    restored = Evaluator(rule, json.loads(json.dumps(ev.state)))
    assert run(restored, [pane(0, 3, {"a": 130}),
                          pane(0, 4, {"a": 150}, event_type="play")]) == []
    fresh = Evaluator(rule)
    assert len(run(fresh, [pane(0, 3, {"a": 130})])) == 1


@pytest.mark.parametrize("when, extra", [
    ("count_over", {"threshold": 1}), ("share_over", {"percent": 1}),
    ("enters_top_k", {"k": 1}), ("rank_jump", {"places": 1})])
def test_every_condition_has_a_message(when, extra):
    ev = Evaluator(rule_set({"name": "r", "when": when, "window": "1m",
                             **extra}))
    got = run(ev, [pane(0, 60, {"a": 1, "b": 2}, "on_time"),
                   pane(1, 61, {"a": 9, "b": 1})])
    assert got and all(a["message"].startswith("r: ") for a in got)
