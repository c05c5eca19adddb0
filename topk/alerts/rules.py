"""The alert rule file (YAML) as validated dataclasses.

A file holds defaults, a list of rules and where alerts go::

    cooldown: 10m
    min_total: 0
    rules:
      - name: hot-item
        when: count_over
        window: 1h/1m
        threshold: 500
    deliver:
      log: true
      kafka: {bootstrap: "127.0.0.1:9092", topic: topk-alerts}
      webhook: {url: "http://127.0.0.1:8080/alerts", attempts: 5}

Every problem is one ``RulesError`` line naming the file, the rule (by name,
or by position when it has none) and the field (docs/alerts.md).
"""
import dataclasses
import math
import re

from topk.core import schema
from topk.core.windows import SUPPORTED_WINDOWS, WindowSpec

COUNT_OVER = "count_over"
SHARE_OVER = "share_over"
ENTERS_TOP_K = "enters_top_k"
RANK_JUMP = "rank_jump"

#: Condition -> (required fields, optional fields) besides the common ones.
KINDS = {
    COUNT_OVER: (("threshold",), ()),
    SHARE_OVER: (("percent",), ()),
    ENTERS_TOP_K: (("k",), ()),
    RANK_JUMP: (("places",), ("k",)),
}
COMMON = ("name", "when", "window", "event_type", "method", "cooldown",
          "min_total")
METHODS = ("exact", "cms", "frequent_items")
DEFAULT_COOLDOWN_MS = 10 * 60_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000,
            "d": 86_400_000}


class RulesError(ValueError):
    """A one-line reason a rule file is not valid."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """One alert rule. ``when`` says which of ``threshold`` (count_over),
    ``percent`` (share_over), ``k`` (enters_top_k; optional for
    rank_jump) and ``places`` (rank_jump) apply."""
    name: str
    when: str
    window: WindowSpec
    event_type: str = schema.ALL_TYPES
    method: str = "exact"
    cooldown_ms: int = DEFAULT_COOLDOWN_MS
    #: Panes of windows with fewer events than this are not evaluated
    #: (a window's first seconds are too thin to rank or share).
    min_total: int = 0
    threshold: int | None = None
    percent: float | None = None
    k: int | None = None
    places: int | None = None

    @property
    def stream(self) -> tuple[str, str, str]:
        """The panes this rule reads: (window spec key, method, event
        type)."""
        return (self.window.key, self.method, self.event_type)

    @property
    def needs_baseline(self) -> bool:
        """Whether the rule compares a pane with an earlier one."""
        return self.when in (ENTERS_TOP_K, RANK_JUMP)


@dataclasses.dataclass(frozen=True)
class KafkaTarget:
    bootstrap: str
    topic: str


@dataclasses.dataclass(frozen=True)
class WebhookTarget:
    url: str
    attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    timeout_s: float = 5.0
    headers: tuple = ()  # ((name, value), ...)


@dataclasses.dataclass(frozen=True)
class Delivery:
    log: bool = True
    kafka: KafkaTarget | None = None
    webhook: WebhookTarget | None = None


@dataclasses.dataclass(frozen=True)
class RuleSet:
    rules: tuple
    deliver: Delivery
    source: str = "<rules>"

    @property
    def streams(self) -> set:
        return {r.stream for r in self.rules}


def load(path: str) -> RuleSet:
    """Read and validate the rule file at ``path``."""
    import yaml
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise RulesError(f"{path}: cannot read the rule file: "
                         f"{e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RulesError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse(data, path)


def parse(data, source: str = "<rules>") -> RuleSet:
    """Validate the loaded YAML ``data`` of a rule file named ``source``."""
    def fail(field, why):
        raise RulesError(f"{source}: field {field!r}: {why}")

    if not isinstance(data, dict):
        raise RulesError(f"{source}: expected a mapping with 'rules' (and "
                         "optionally 'cooldown', 'min_total', 'deliver'), "
                         f"got {_kind(data)}")
    unknown = sorted(set(map(str, data)) - {"rules", "cooldown", "min_total",
                                            "deliver"})
    if unknown:
        fail(unknown[0], "unknown field (expected rules, cooldown, "
             "min_total, deliver)")
    cooldown = (DEFAULT_COOLDOWN_MS if data.get("cooldown") is None
                else _duration(data["cooldown"], lambda w: fail("cooldown",
                                                                w)))
    min_total = (0 if data.get("min_total") is None else _integer(
        data["min_total"], 0, lambda w: fail("min_total", w)))
    rules = data.get("rules")
    if not isinstance(rules, list) or not rules:
        fail("rules", "expected a non-empty list of rules, got "
             f"{_kind(rules)}")
    parsed, names = [], set()
    for i, raw in enumerate(rules):
        rule = _rule(raw, i, source, cooldown, min_total)
        if rule.name in names:
            raise RulesError(f"{source}: rule {rule.name!r}: field 'name': "
                             "duplicate rule name")
        names.add(rule.name)
        parsed.append(rule)
    return RuleSet(tuple(parsed), _delivery(data.get("deliver"), fail),
                   source)


def _rule(raw, index, source, cooldown, min_total) -> Rule:
    label = f"rule #{index + 1}"
    if isinstance(raw, dict) and isinstance(raw.get("name"), str) and \
            raw["name"].strip():
        label = f"rule {raw['name']!r}"

    def fail(field, why):
        raise RulesError(f"{source}: {label}: field {field!r}: {why}")

    if not isinstance(raw, dict):
        raise RulesError(f"{source}: {label}: expected a mapping with name, "
                         f"when, window, got {_kind(raw)}")
    for field in ("name", "when", "window"):
        if raw.get(field) is None:
            fail(field, "missing (required)")
    name = raw["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        fail("name", "expected 1-64 letters, digits, '-', '_' or '.', "
             f"got {name!r}")
    when = raw["when"]
    if when not in KINDS:
        fail("when", f"unknown condition {when!r}; choose from "
             f"{', '.join(KINDS)}")
    required, optional = KINDS[when]
    allowed = set(COMMON) | set(required) | set(optional)
    unknown = sorted(set(map(str, raw)) - allowed)
    if unknown:
        fail(unknown[0], f"not a field of a {when} rule (its fields: "
             f"{', '.join(sorted(allowed))})")
    for field in required:
        if raw.get(field) is None:
            fail(field, f"missing (a {when} rule needs it)")
    window = raw["window"]
    try:
        spec = WindowSpec.parse(str(window))
    except ValueError as e:
        fail("window", str(e))
    if spec.name not in SUPPORTED_WINDOWS:
        fail("window", f"unsupported window {window!r}; choose from "
             f"{', '.join(SUPPORTED_WINDOWS)}")
    event_type = raw.get("event_type", schema.ALL_TYPES)
    if not isinstance(event_type, str) or not event_type or len(
            event_type) > schema.MAX_EVENT_TYPE_LENGTH:
        fail("event_type", "expected an event type, or \"*\" for all "
             f"types, got {event_type!r}")
    method = raw.get("method", "exact")
    if method not in METHODS:
        fail("method", f"unknown method {method!r}; choose from "
             f"{', '.join(METHODS)}")
    values = {}
    if "threshold" in raw:
        values["threshold"] = _integer(raw["threshold"], 1,
                                       lambda w: fail("threshold", w))
    if "k" in raw:
        values["k"] = _integer(raw["k"], 1, lambda w: fail("k", w))
    if "places" in raw:
        values["places"] = _integer(raw["places"], 1,
                                    lambda w: fail("places", w))
    if "percent" in raw:
        p = raw["percent"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or \
                not math.isfinite(p) or not 0 < p <= 100:
            fail("percent", f"expected a number in (0, 100], got {p!r}")
        values["percent"] = float(p)
    return Rule(
        name=name, when=when, window=spec, event_type=event_type,
        method=method,
        cooldown_ms=(cooldown if raw.get("cooldown") is None else _duration(
            raw["cooldown"], lambda w: fail("cooldown", w))),
        min_total=(min_total if raw.get("min_total") is None else _integer(
            raw["min_total"], 0, lambda w: fail("min_total", w))),
        **values)


def _delivery(raw, fail) -> Delivery:
    if raw is None:
        return Delivery()
    if not isinstance(raw, dict):
        fail("deliver", f"expected a mapping (log, kafka, webhook), got "
             f"{_kind(raw)}")
    unknown = sorted(set(map(str, raw)) - {"log", "kafka", "webhook"})
    if unknown:
        fail(f"deliver.{unknown[0]}", "unknown delivery (expected log, "
             "kafka, webhook)")
    log = raw.get("log", True)
    if not isinstance(log, bool):
        fail("deliver.log", f"expected true or false, got {log!r}")
    kafka = None
    if raw.get("kafka") is not None:
        k = raw["kafka"]
        if not isinstance(k, dict):
            fail("deliver.kafka", "expected a mapping with bootstrap and "
                 f"topic, got {_kind(k)}")
        unknown = sorted(set(map(str, k)) - {"bootstrap", "topic"})
        if unknown:
            fail(f"deliver.kafka.{unknown[0]}", "unknown field (expected "
                 "bootstrap, topic)")
        for field in ("bootstrap", "topic"):
            if not isinstance(k.get(field), str) or not k[field].strip():
                fail(f"deliver.kafka.{field}", "missing (a non-empty "
                     "string)")
        kafka = KafkaTarget(k["bootstrap"].strip(), k["topic"].strip())
    webhook = None
    if raw.get("webhook") is not None:
        w = raw["webhook"]
        if not isinstance(w, dict):
            fail("deliver.webhook", f"expected a mapping with url, got "
                 f"{_kind(w)}")
        fields = {f.name for f in dataclasses.fields(WebhookTarget)}
        unknown = sorted(set(map(str, w)) - fields)
        if unknown:
            fail(f"deliver.webhook.{unknown[0]}", "unknown field (expected "
                 f"{', '.join(sorted(fields))})")
        url = w.get("url")
        if not isinstance(url, str) or not re.match(r"^https?://\S+$", url):
            fail("deliver.webhook.url", f"expected an http(s) URL, got "
                 f"{url!r}")
        values = {"url": url}
        if "attempts" in w:
            values["attempts"] = _integer(w["attempts"], 1, lambda why: fail(
                "deliver.webhook.attempts", why))
        for field in ("backoff_s", "max_backoff_s", "timeout_s"):
            if field in w:
                v = w[field]
                if isinstance(v, bool) or not isinstance(v, (int, float)) \
                        or not math.isfinite(v) or v < 0 or (
                            field == "timeout_s" and v == 0):
                    bound = "> 0" if field == "timeout_s" else ">= 0"
                    fail(f"deliver.webhook.{field}", "expected a number of "
                         f"seconds {bound}, got {v!r}")
                values[field] = float(v)
        if "headers" in w:
            h = w["headers"]
            if not isinstance(h, dict) or not all(
                    isinstance(a, str) and isinstance(b, str)
                    for a, b in h.items()):
                fail("deliver.webhook.headers", "expected a mapping of "
                     "header names to string values")
            values["headers"] = tuple(sorted(h.items()))
        webhook = WebhookTarget(**values)
    if not log and kafka is None and webhook is None:
        fail("deliver", "nothing to deliver to: set log: true, kafka or "
             "webhook")
    return Delivery(log, kafka, webhook)


def _integer(value, minimum: int, fail) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or \
            value < minimum:
        fail(f"expected a whole number >= {minimum}, got {value!r}")
    return value


def _duration(value, fail) -> int:
    """``10m``, ``30s``, ``1h``, ``500ms`` or ``0`` -> milliseconds."""
    if isinstance(value, bool) or (isinstance(value, (int, float))
                                   and value != 0):
        fail(f"expected a duration with a unit such as 30s, 10m or 1h, "
             f"got {value!r}")
    m = _DURATION.match(str(value))
    if not m or (m.group(2) is None and float(m.group(1)) != 0):
        fail(f"expected a duration with a unit such as 30s, 10m or 1h, "
             f"got {value!r}")
    return int(round(float(m.group(1)) * _UNIT_MS[m.group(2) or "s"]))


def _kind(value) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: f"the text {value!r}"
            }.get(type(value), f"{type(value).__name__} {value!r}")
