"""A brute-force oracle for the exact top-K path, written from the spec only.

Standard library only, and nothing from ``topk``: every rule below is
re-derived from the product spec, so that the property tests compare the
implementation against an independent reading of it, not against itself.

Spec in short:

- Input: newline-delimited JSON, one object per line. A single trailing
  newline ends the last record; every other line, blank ones included, is a
  record. A record that breaks any rule is a dead letter (raw + reason).
- ``event_id``, ``item_id``: non-empty strings of at most 256 characters;
  ``event_type``: a non-empty string of at most 64 characters, not ``"*"``
  (reserved for "all types"); ``ts``: integer epoch ms or an RFC 3339
  date-time string, inside [2000-01-01, 2100-01-01) UTC; ``user_id``: absent,
  null or a string of at most 256 characters; ``weight``: absent or null
  (= 1), else an integer in 1..1_000_000.
- One event per ``event_id`` over the whole input; if copies differ, the
  smallest ``(ts, event_type, item_id, weight)`` wins.
- A count is a sum of weights. Slices: 1-minute slices aligned to the epoch,
  rolled up to 1 hour and 1 day.
- Windows: tumbling 1m, 1h, 1d, 30d and sliding 1h/1m, 1d/1h, 30d/1d (length
  L, slide S: starts at multiples of S, length L), all aligned to the epoch.
  Every window holding at least one valid event is reported, per event type
  and over all types (event type ``"*"``).
- Ranking: count descending, then item_id ascending; top K per (window,
  event type); window_total = the total count of that type (or all) there.
- ``topk(k, start, end, event_type=None)``: exact top-k of the events with
  ``start <= ts < end``, same order.

Choices the spec leaves open are made explicit: the oracle raises
``Unspecified`` for them (duplicate JSON keys, lone surrogates, leap
seconds), so a test can never rely on them silently. RFC 3339 fractions of a
second finer than a millisecond are truncated (the instant lies in the
millisecond, hence in the minute, that it starts with).
"""
import collections
import datetime as dt
import json
import re

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

ALL_TYPES = "*"
MAX_ID_LENGTH = 256
MAX_EVENT_TYPE_LENGTH = 64
MAX_WEIGHT = 1_000_000

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _utc_ms(d: dt.datetime) -> int:
    td = d - _EPOCH
    return (td.days * 86_400 + td.seconds) * 1000 + td.microseconds // 1000


MIN_TS_MS = _utc_ms(dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc))
MAX_TS_MS = _utc_ms(dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc))

#: name -> (length_ms, slide_ms or None)
WINDOW_SPECS = {
    "1m": (MINUTE_MS, None),
    "1h": (HOUR_MS, None),
    "1d": (DAY_MS, None),
    "30d": (30 * DAY_MS, None),
    "1h/1m": (HOUR_MS, MINUTE_MS),
    "1d/1h": (DAY_MS, HOUR_MS),
    "30d/1d": (30 * DAY_MS, DAY_MS),
}
SLICE_LENGTHS = {"1m": MINUTE_MS, "1h": HOUR_MS, "1d": DAY_MS}


class Unspecified(Exception):
    """The spec does not decide this input; tests must not generate it."""


Event = collections.namedtuple(
    "Event", "event_id item_id event_type ts user_id weight")


# ---------------------------------------------------------------------------
# Parsing and validation


# RFC 3339 section 5.6 date-time; "T" and "Z" may be lower case (5.6, NOTE).
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))", re.ASCII)


def rfc3339_to_ms(text: str) -> int | None:
    """Epoch ms of an RFC 3339 date-time, or None when it is not one."""
    m = _RFC3339.fullmatch(text)
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac, zulu, sign, off_h, off_m = m.groups()[6:]
    if second == 60:
        raise Unspecified(f"leap second in {text!r}")
    if hour > 23 or minute > 59 or second > 59:
        return None
    try:
        local = dt.datetime(year, month, day, hour, minute, second,
                            tzinfo=dt.timezone.utc)
    except ValueError:  # month 13, 30 February, year 0, ...
        return None
    ms = _utc_ms(local) + (int((frac + "00")[:3]) if frac else 0)
    if not zulu:
        oh, om = int(off_h), int(off_m)
        if oh > 23 or om > 59:
            return None
        offset = (oh * 60 + om) * MINUTE_MS
        ms = ms - offset if sign == "+" else ms + offset
    return ms


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def _pairs(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise Unspecified("duplicate key in a JSON object")
    return dict(pairs)


def _has_surrogate(value) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v)
                   for k, v in value.items())
    return False


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_record(raw: bytes | str) -> tuple[Event | None, str | None]:
    """One record -> (event, None) or (None, reason)."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None, "invalid UTF-8"
    if raw.strip() == "":
        return None, "blank line"
    if raw.startswith("\ufeff"):
        # RFC 8259 section 8.1: a parser MAY ignore a byte order mark.
        raise Unspecified("byte order mark")
    try:
        obj = json.loads(raw, parse_constant=_reject_constant,
                         object_pairs_hook=_pairs)
    except ValueError:  # json.JSONDecodeError is a ValueError
        return None, "invalid JSON"
    if _has_surrogate(obj):
        raise Unspecified("lone surrogate in a JSON string")
    if not isinstance(obj, dict):
        return None, "not an object"
    for name, limit in (("event_id", MAX_ID_LENGTH),
                        ("item_id", MAX_ID_LENGTH),
                        ("event_type", MAX_EVENT_TYPE_LENGTH)):
        v = obj.get(name)
        if not isinstance(v, str):
            return None, f"{name} is missing or not a string"
        if not 0 < len(v) <= limit:
            return None, f"{name} is empty or too long"
    if obj["event_type"] == ALL_TYPES:
        return None, "event_type '*' is reserved"
    ts = obj.get("ts")
    if _is_int(ts):
        ts_ms = ts
    elif isinstance(ts, str):
        ts_ms = rfc3339_to_ms(ts)
        if ts_ms is None:
            return None, "ts is not RFC 3339"
    else:
        return None, "ts is missing or of the wrong type"
    if not MIN_TS_MS <= ts_ms < MAX_TS_MS:
        return None, "ts out of range"
    user = obj.get("user_id")
    if user is not None and not (isinstance(user, str)
                                 and len(user) <= MAX_ID_LENGTH):
        return None, "bad user_id"
    weight = obj.get("weight")
    if weight is None:
        weight = 1
    elif not (_is_int(weight) and 1 <= weight <= MAX_WEIGHT):
        return None, "bad weight"
    return Event(obj["event_id"], obj["item_id"], obj["event_type"], ts_ms,
                 user, weight), None


def split_records(block: bytes | str) -> list:
    """A newline-delimited block -> its records (bytes or str, as given)."""
    nl = b"\n" if isinstance(block, bytes) else "\n"
    if not block:
        return []
    if block.endswith(nl):
        block = block[:-1]
    return block.split(nl)


def parse_block(block: bytes | str):
    """-> (valid events in input order, dead letters [(raw, reason)])."""
    events, dead = [], []
    for raw in split_records(block):
        event, reason = parse_record(raw)
        if event is None:
            text = raw.decode("utf-8", "replace") if isinstance(
                raw, bytes) else raw
            dead.append((text, reason))
        else:
            events.append(event)
    return events, dead


# ---------------------------------------------------------------------------
# De-duplication and counting


def dedup(events) -> list[Event]:
    """One event per event_id: the smallest (ts, event_type, item_id,
    weight) of its copies. Sorted by event_id."""
    best = {}
    for e in events:
        key = (e.ts, e.event_type, e.item_id, e.weight)
        old = best.get(e.event_id)
        if old is None or key < (old.ts, old.event_type, old.item_id,
                                 old.weight):
            best[e.event_id] = e
    return [best[k] for k in sorted(best)]


def slice_counts(events, size_ms: int) -> dict:
    """{(event_type, slice_start, item_id): count} of aligned slices."""
    out = collections.Counter()
    for e in events:
        out[(e.event_type, e.ts // size_ms * size_ms, e.item_id)] += e.weight
    return dict(out)


def ranked(counter: dict, k: int | None = None) -> list[tuple[str, int]]:
    """(item, count) by count descending, then item ascending."""
    rows = sorted(((i, c) for i, c in counter.items() if c > 0),
                  key=lambda r: (-r[1], r[0]))
    return rows if k is None else rows[:k]


def window_starts(ts: int, length_ms: int, slide_ms: int | None):
    """Starts of every window of the spec that contains instant ``ts``."""
    step = slide_ms or length_ms
    last = ts // step * step
    return range(last - length_ms + step, last + 1, step)


def ranked_windows(events, length_ms: int, slide_ms: int | None, k: int
                   ) -> list[tuple]:
    """Rows (event_type, window_start, rank, item_id, count, window_total)
    sorted by event_type, window_start, rank."""
    windows = collections.defaultdict(collections.Counter)
    for e in events:
        for w in window_starts(e.ts, length_ms, slide_ms):
            for et in (e.event_type, ALL_TYPES):
                windows[(et, w)][e.item_id] += e.weight
    rows = []
    for (et, w) in sorted(windows):
        counter = windows[(et, w)]
        total = sum(counter.values())
        for rank, (item, count) in enumerate(ranked(counter, k), start=1):
            rows.append((et, w, rank, item, count, total))
    return rows


def topk(events, k: int, start_ms: int, end_ms: int,
         event_type: str | None = None) -> list[tuple[int, str, int]]:
    """(rank, item_id, count) of the exact top-k in [start, end)."""
    counter = collections.Counter()
    for e in events:
        if start_ms <= e.ts < end_ms and (event_type in (None, ALL_TYPES)
                                          or e.event_type == event_type):
            counter[e.item_id] += e.weight
    return [(r, i, c) for r, (i, c) in enumerate(ranked(counter, k), start=1)]


# ---------------------------------------------------------------------------
# Range decomposition


def min_cover_slices(start_ms: int, end_ms: int) -> int:
    """Fewest aligned 1m/1h/1d slices that tile [start, end) exactly
    (dynamic programming over minutes)."""
    assert start_ms % MINUTE_MS == 0 and end_ms % MINUTE_MS == 0
    s0 = start_ms // MINUTE_MS
    n = end_ms // MINUTE_MS - s0
    inf = float("inf")
    best = [0] + [inf] * n
    for i in range(1, n + 1):
        here = s0 + i  # exclusive end of the prefix, in minutes
        for size in (1, 60, 1440):
            if i >= size and here % size == 0:
                best[i] = min(best[i], best[i - size] + 1)
    return best[n]
