"""The alert rule file: a good file parses into rules and delivery
targets; every kind of mistake is one line naming the file, the rule and
the field (also as ``topk alert``'s exit 2)."""
import ast
import pathlib
import subprocess
import sys

import pytest

from topk import cli
from topk.alerts import rules
from topk.core.windows import WindowSpec

GOOD = """\
cooldown: 5m          # default per rule
min_total: 10
rules:
  - name: hot-item
    when: count_over
    window: 1h/1m
    threshold: 500
    event_type: play
    method: exact
    cooldown: 30s
  - name: entered-top
    when: enters_top_k
    window: 1h/1m
    k: 10
  - name: climber
    when: rank_jump
    window: 1h
    places: 5
    k: 20
    min_total: 0
  - name: dominant
    when: share_over
    window: 1d/1h
    percent: 20
deliver:
  log: false
  kafka: {bootstrap: "127.0.0.1:9092", topic: topk-alerts}
  webhook:
    url: "http://127.0.0.1:8080/hook"
    attempts: 3
    backoff_s: 0.25
    timeout_s: 2
    headers: {Authorization: "Bearer x"}
"""


def write(tmp_path, text, name="rules.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_good_file(tmp_path):
    rs = rules.load(write(tmp_path, GOOD))
    hot, top, climb, dom = rs.rules
    assert hot == rules.Rule(
        name="hot-item", when="count_over", window=WindowSpec.parse("1h/1m"),
        event_type="play", method="exact", cooldown_ms=30_000, min_total=10,
        threshold=500)
    assert (top.k, top.cooldown_ms, top.event_type, top.method) == (
        10, 300_000, "*", "exact")
    assert (climb.places, climb.k, climb.min_total) == (5, 20, 0)
    assert dom.percent == 20.0 and dom.window.key == "1d_1h"
    assert rs.streams == {("1h_1m", "exact", "play"), ("1h_1m", "exact", "*"),
                          ("1h", "exact", "*"), ("1d_1h", "exact", "*")}
    assert rs.deliver == rules.Delivery(
        log=False, kafka=rules.KafkaTarget("127.0.0.1:9092", "topk-alerts"),
        webhook=rules.WebhookTarget(
            "http://127.0.0.1:8080/hook", attempts=3, backoff_s=0.25,
            timeout_s=2.0, headers=(("Authorization", "Bearer x"),)))


def test_defaults(tmp_path):
    rs = rules.load(write(tmp_path, "rules:\n  - {name: a, when: count_over,"
                          " window: 1m, threshold: 1}\n"))
    assert rs.rules[0].cooldown_ms == rules.DEFAULT_COOLDOWN_MS
    assert rs.deliver == rules.Delivery(log=True)


def rule_line(**fields):
    base = {"name": "r1", "when": "count_over", "window": "1h",
            "threshold": 5}
    base.update(fields)
    items = ", ".join(f"{k}: {v}" for k, v in base.items() if v is not None)
    return "rules:\n  - {" + items + "}\n"


@pytest.mark.parametrize("text, message", [
    ("rules: [\n", r"rules.yaml: not valid YAML \(line \d+\)"),
    ("- a\n", "rules.yaml: expected a mapping with 'rules'"),
    ("rules: []\n", "rules.yaml: field 'rules': expected a non-empty list"),
    ("rulez: []\n", "rules.yaml: field 'rulez': unknown field"),
    ("cooldown: soon\n" + rule_line(),
     "rules.yaml: field 'cooldown': expected a duration with a unit"),
    (rule_line(name=None), "rules.yaml: rule #1: field 'name': missing"),
    (rule_line(name='"a b"'), "rule 'a b': field 'name': expected"),
    (rule_line(when="spikes"),
     "rule 'r1': field 'when': unknown condition 'spikes'; choose from "
     "count_over, share_over, enters_top_k, rank_jump"),
    (rule_line(window="5m/1m"),
     "rule 'r1': field 'window': unsupported window '5m/1m'"),
    (rule_line(window="5x"), "rule 'r1': field 'window': bad duration"),
    (rule_line(threshold=None),
     "rule 'r1': field 'threshold': missing \\(a count_over rule needs it\\)"),
    (rule_line(threshold=0),
     "rule 'r1': field 'threshold': expected a whole number >= 1, got 0"),
    (rule_line(threshold="lots"),
     "rule 'r1': field 'threshold': expected a whole number >= 1"),
    (rule_line(k=3), "rule 'r1': field 'k': not a field of a count_over rule"),
    (rule_line(when="share_over", threshold=None, percent=150),
     "rule 'r1': field 'percent': expected a number in \\(0, 100\\]"),
    (rule_line(when="rank_jump", threshold=None),
     "rule 'r1': field 'places': missing"),
    (rule_line(method="hll"), "rule 'r1': field 'method': unknown method"),
    (rule_line(cooldown="10"), "rule 'r1': field 'cooldown': expected a "
     "duration"),
    (rule_line(min_total=-1), "rule 'r1': field 'min_total': expected a "
     "whole number >= 0"),
    (rule_line() + "  - {name: r1, when: count_over, window: 1m, "
     "threshold: 1}\n", "rule 'r1': field 'name': duplicate rule name"),
    (rule_line() + "deliver: {webhook: {url: ftp://x}}\n",
     "field 'deliver.webhook.url': expected an http\\(s\\) URL"),
    (rule_line() + "deliver: {webhook: {url: 'http://x', attempts: 0}}\n",
     "field 'deliver.webhook.attempts': expected a whole number >= 1"),
    (rule_line() + "deliver: {kafka: {topic: t}}\n",
     "field 'deliver.kafka.bootstrap': missing"),
    (rule_line() + "deliver: {log: false}\n",
     "field 'deliver': nothing to deliver to"),
    (rule_line() + "deliver: {email: x}\n",
     "field 'deliver.email': unknown delivery"),
])
def test_each_kind_of_error_is_one_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(rules.RulesError, match=message) as e:
        rules.load(path)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(path + ": ")


def test_a_missing_file(tmp_path):
    with pytest.raises(rules.RulesError, match="cannot read the rule file"):
        rules.load(str(tmp_path / "nope.yaml"))


def test_the_cli_exits_2_with_one_line(tmp_path, capsys):
    path = write(tmp_path, rule_line(threshold=-3))
    assert cli.main(["alert", "--rules", path, "--output",
                     str(tmp_path / "out"), "--once"]) == 2
    err = capsys.readouterr().err
    assert err == (f"topk: error: {path}: rule 'r1': field 'threshold': "
                   "expected a whole number >= 1, got -3\n")


def test_alerts_never_import_beam():
    package = pathlib.Path(rules.__file__).parent
    for module in package.glob("*.py"):
        tree = ast.parse(module.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                 for a in n.names] + [
            n.module for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module]
        assert not [n for n in names if n.split(".")[0] == "apache_beam"
                    or n.startswith(("topk.pipelines", "topk.transforms",
                                     "topk.sinks", "topk.sources",
                                     "topk.cli"))], module
    out = subprocess.run(
        [sys.executable, "-c", "import sys, topk.alerts.watch, "
         "topk.alerts.deliver; print('apache_beam' in sys.modules)"],
        capture_output=True, text=True, check=True,
        cwd=str(package.parents[1])).stdout
    assert out.strip() == "False"
