"""Seedable synthetic click/play event generator (the load generator).

Produces the events the product ingests: newline-delimited JSON exactly as
the API gateway would send it, or the same events as Parquet, with the
ugly parts of real traffic switched on by configuration: Zipf-skewed item
popularity, out-of-order event times, exact re-deliveries (duplicates),
malformed records and a hot-item burst.

Everything is vectorised (docs/architecture.md, decision 1): the numeric columns are drawn
with NumPy for all events at once, and the JSON lines are assembled per chunk
of records (``CHUNK_SIZE``) by joining string columns with Arrow compute and
writing the joined buffer as is. Fixed-width pieces (event ids, RFC 3339
times) are laid out directly as byte matrices, which is ~10x faster than
``pyarrow.compute.strftime``. Measured on 2 cores: ~3M records/s built,
~1.2M/s including writing 2.6 GB for 20M events.

Determinism: every random quantity comes from its own NumPy stream derived
from ``(seed, purpose)``, so the same config gives byte-identical output, the
chunk size never changes the output, and switching on duplicates or
malformed records leaves the valid events (the oracle's ground truth)
unchanged.

Wire format of one valid event (keys in this order, optional ones absent
rather than null)::

    {"event_id":"9c1e0f3a5b7d2e41","item_id":"item-000123",
     "event_type":"play","ts":1714557600123,"user_id":"user-004711","weight":3}

``ts`` is either integer epoch milliseconds or an RFC 3339 UTC string with
millisecond precision (``"2024-05-01T10:00:00.123Z"``). ``item-000000`` is the
most popular item, ``item-000001`` the second, and so on.

No Beam here: tests, benchmarks and the Kafka producer all reuse it.
"""
import dataclasses
import functools
import gzip
import json
import os
import queue
import threading
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from topk.core.schema import (
    DAY_MS,
    EVENT_SCHEMA,
    MAX_EVENT_TYPE_LENGTH,
    MAX_ID_LENGTH,
    MAX_TS_MS,
    MIN_TS_MS,
)
from topk.core.windows import parse_time

TS_FORMATS = ("ms", "rfc3339", "mixed")

#: Kinds of malformed JSON records, drawn uniformly. Each one violates exactly
#: the rule its name says (the rest of the record is a plausible event).
MALFORMED_KINDS = (
    "invalid_json",         # truncated, single quotes, bare key, no colon
    "not_object",           # an array, a string, a number or null
    "missing_item_id",      # key absent, or null
    "event_id_not_string",  # an integer or null
    "ts_garbage",           # a string that is no time at all
    "ts_out_of_range",      # year 1900 or 2200, as ms or RFC 3339
    "bad_weight",           # 0 or negative
    "oversized_item_id",    # longer than MAX_ID_LENGTH characters
    "empty_line",           # ""
)

#: The malformed kinds that can exist in Parquet (typed columns rule out
#: syntax errors, wrong JSON types and garbage strings).
PARQUET_MALFORMED_KINDS = (
    "missing_item_id",      # null item_id
    "ts_out_of_range",
    "bad_weight",
    "oversized_item_id",
)

#: Garbage ``ts`` strings of the ``ts_garbage`` kind.
TS_GARBAGE = ("yesterday", "2024-13-45T25:61:00Z", "", "1714557600000x")
#: Non-positive weights of the ``bad_weight`` kind.
BAD_WEIGHTS = (0, -1, -3, -1000)
#: Lengths of item ids of the ``oversized_item_id`` kind (the first one is
#: the boundary case, one past the limit).
OVERSIZED_LENGTHS = (MAX_ID_LENGTH + 1, 1000)
#: Years of the ``ts_out_of_range`` kind: both sides of the valid range.
OUT_OF_RANGE_YEARS = (1900, 2200)

#: Records per chunk (``generate_records``' default, and the unit all
#: writers build and write). Chunks of ~30 MB of JSON are recycled by the
#: allocators; 1M-record chunks (~130 MB) were 3x slower here because fresh
#: memory costs ~2 ms/MB in page faults on these VMs.
CHUNK_SIZE = 1 << 18
#: The largest chunk ``generate_records`` accepts.
MAX_CHUNK_SIZE = 1_000_000

#: Parquet output: ``EVENT_SCHEMA`` with every column nullable, because the
#: malformed rows must be representable (null ``item_id``).
PARQUET_SCHEMA = pa.schema([
    pa.field("event_id", pa.string()),
    pa.field("item_id", pa.string()),
    pa.field("event_type", pa.string()),
    pa.field("ts", pa.int64()),  # event time, epoch ms UTC
    pa.field("user_id", pa.string()),
    pa.field("weight", pa.int64()),
])

# One independent random stream per purpose, so that changing one knob does
# not reshuffle the draws of another (e.g. adding duplicates keeps the valid
# events identical).
_STREAM_ITEMS = 1
_STREAM_TIME = 2
_STREAM_TYPES = 3
_STREAM_USERS = 4
_STREAM_WEIGHTS = 5
_STREAM_FORMAT = 6
_STREAM_BURST = 7
_STREAM_EXTRAS = 8
_STREAM_MALFORMED = 9

# Lookup tables that lay out digits as bytes (1-D gathers of fixed-size
# elements are far faster than fancy indexing of 2-D byte matrices):
# byte -> two hex digits (as uint16), millisecond -> "mmmZ".
_HEX_PAIRS = np.frombuffer(
    b"".join(b"%02x" % i for i in range(256)), dtype=np.uint16)
_MILLIS = np.array([b"%03dZ" % i for i in range(1000)], dtype="S4")
_EVENT_ID_LENGTH = 16
# Malformed records draw their ids from the upper half of the key space so
# that they never collide with a valid event's id.
_MALFORMED_KEY_BASE = np.uint64(1 << 63)
# SplitMix64's increment: offsets the seed so seed 0 has no all-zero id.
_GAMMA = 0x9E3779B97F4A7C15


@dataclasses.dataclass
class GeneratorConfig:
    """What to generate. Shares are fractions of ``events``.

    ``events`` counts the valid, unique events; duplicates
    (``round(events * duplicate_share)``) and malformed records
    (``round(events * malformed_share)``) come on top.
    """
    events: int = 100_000
    items: int = 10_000
    #: Popularity exponent s: P(rank r) is proportional to 1/r^s over
    #: ``items`` (a bounded Zipf, so s may be below 1; 0 is uniform).
    zipf: float = 1.1
    start: str = "2024-05-01T00:00:00Z"
    #: Events per second of event time: the nominal span is events / rate.
    rate: float = 1000.0
    #: Each ts is shifted uniformly by up to +- this many seconds (never
    #: before ``start``) while the emission order stays the nominal one, so
    #: events arrive out of order.
    jitter_s: float = 5.0
    duplicate_share: float = 0.0
    malformed_share: float = 0.0
    ts_format: str = "mixed"
    event_types: tuple = ("play", "click")
    event_type_weights: tuple = (0.7, 0.3)
    #: Number of distinct users, drawn uniformly; 0 leaves ``user_id`` out.
    users: int = 100_000
    #: Hot-item burst: inside [burst_start, burst_start + burst_duration_s)
    #: of event time, ``burst_item`` is ``burst_share`` of all events (in
    #: expectation). ``burst_start`` defaults to the middle of the span.
    burst_item: str | None = None
    burst_share: float = 0.0
    burst_start: str | None = None
    burst_duration_s: float = 600.0
    #: Share of events carrying an explicit weight 1..5 (others omit it and
    #: count as 1).
    weight_share: float = 0.0
    seed: int = 0
    #: A duplicate is re-delivered after its original, at most this many
    #: seconds of nominal event time later (e.g. a producer retry or a Kafka
    #: replay).
    duplicate_delay_s: float = 60.0


@dataclasses.dataclass
class GenerateSummary:
    """What a ``write_*`` call wrote. ``first_ts_ms``/``last_ts_ms`` are the
    earliest and latest event time of the valid events; ``bytes`` is the
    size of the file on disk (compressed size for ``.gz``)."""
    path: str
    valid_events: int
    duplicates: int
    malformed: int
    first_ts_ms: int
    last_ts_ms: int
    bytes: int


def zipf_probabilities(items: int, s: float) -> np.ndarray:
    """P(rank r) = r^-s / H(items, s) for r = 1..items (index r - 1)."""
    weights = np.arange(1, items + 1, dtype=np.float64) ** -float(s)
    return weights / weights.sum()


def item_catalogue(items: int) -> pa.Array:
    """The item ids, most popular first: ``item-000000``, ``item-000001``..."""
    width = max(6, len(str(max(items - 1, 0))))
    return _numbered("item-", np.arange(items, dtype=np.int64), width)


def generate_events(config: GeneratorConfig) -> pa.Table:
    """The valid events (``EVENT_SCHEMA``), in emission order, before
    duplication: the ground truth an oracle counts. Rows without an explicit
    weight have weight 1."""
    plan = _Plan(config)
    batches = []
    for lo in range(0, plan.n, CHUNK_SIZE):
        rows = np.arange(lo, min(lo + CHUNK_SIZE, plan.n), dtype=np.int64)
        batches.append(plan.event_batch(rows))
    return pa.Table.from_batches(batches, schema=EVENT_SCHEMA)


def generate_records(config: GeneratorConfig,
                     chunk_size: int = CHUNK_SIZE) -> Iterator[pa.Array]:
    """The JSON-lines records in emission order (``pa.large_string``, no
    trailing newline), duplicates and malformed records shuffled in, in
    chunks of ``chunk_size`` records (the last one may be shorter; at most
    ``MAX_CHUNK_SIZE``). The output does not depend on the chunk size."""
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_SIZE}")
    plan = _Plan(config)
    for chunk in plan.chunks(chunk_size):
        yield plan.json_chunk(chunk).cast(pa.large_string())


def write_json_lines(config: GeneratorConfig, path: str,
                     compresslevel: int = 1) -> GenerateSummary:
    """Write newline-delimited JSON to ``path`` (gzip if it ends in ``.gz``;
    level 1 by default because compression, not generation, is then the
    bottleneck). Output is byte-identical for the same config."""
    plan = _Plan(config)
    path = os.fspath(path)
    with open(path, "wb") as raw:
        if path.endswith(".gz"):
            # mtime=0 and no file name in the header keep the bytes
            # reproducible.
            out = gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                compresslevel=compresslevel, mtime=0)
        else:
            out = raw
        with _BackgroundWriter(out) as writer:
            for chunk in plan.chunks(CHUNK_SIZE):
                # With the newline inside each string, the array's data
                # buffer is exactly the bytes of the file.
                lines = plan.json_chunk(chunk, end="\n")
                writer.put(_string_data(lines))
        if out is not raw:
            out.close()
    return plan.summary(path)


def write_parquet(config: GeneratorConfig, path: str) -> GenerateSummary:
    """Write the events with duplicates and malformed rows, in emission order,
    as Parquet (``PARQUET_SCHEMA``, one row group per chunk). Malformed rows
    violate validation (``PARQUET_MALFORMED_KINDS``): null ``item_id``, ``ts``
    out of range, ``weight`` <= 0 or an oversized ``item_id``."""
    plan = _Plan(config)
    path = os.fspath(path)
    with pq.ParquetWriter(path, PARQUET_SCHEMA, compression="zstd") as writer:
        for chunk in plan.chunks(CHUNK_SIZE):
            writer.write_table(plan.parquet_chunk(chunk),
                               row_group_size=CHUNK_SIZE)
    return plan.summary(path)


# --------------------------------------------------------------------------
# Planning: every random draw, as NumPy columns.


@dataclasses.dataclass
class _Chunk:
    """Records [start, start + size) of the emission order: a contiguous run
    of valid events interleaved with duplicates and malformed records."""
    size: int
    valid: np.ndarray        # valid event indices, contiguous
    duplicates: np.ndarray   # valid event index each duplicate re-delivers
    malformed: np.ndarray    # malformed record indices
    order: np.ndarray | None  # take() into concat(valid, dups, malformed)


@dataclasses.dataclass
class _Rows:
    """Field values of a set of records, as NumPy columns."""
    key: np.ndarray          # uint64, mixed into the event id
    item: np.ndarray         # index into the item catalogue
    etype: np.ndarray        # index into config.event_types
    user: np.ndarray | None  # index into the user catalogue
    weight: np.ndarray       # 0 = absent (counts 1), else the weight
    ts: np.ndarray           # epoch ms
    ts_is_ms: np.ndarray     # True: integer ms, False: RFC 3339 string


class _Plan:
    """All random draws of one config, and the builders that turn them into
    JSON lines, Parquet rows or the ground-truth table."""

    def __init__(self, config: GeneratorConfig):
        _validate(config)
        c = self.config = config
        n = self.n = int(c.events)
        self.start_ms = parse_time(c.start)
        self.span_ms = n * 1000.0 / c.rate
        jitter_ms = c.jitter_s * 1000.0
        seed = int(c.seed)

        # Catalogues: the plain strings (Parquet, ground truth) and the
        # ready-made JSON pieces (',"item_id":"item-000123"'), so a record's
        # piece is one take() rather than a string concatenation.
        self.items_plain = item_catalogue(c.items)
        self.item_pieces = _join(',"item_id":"', self.items_plain, '"')
        probs = zipf_probabilities(c.items, c.zipf)
        self.cdf = np.cumsum(probs)
        self.cdf /= self.cdf[-1]
        burst_idx, burst_p = None, 0.0
        if c.burst_item is not None:
            found = pc.index(self.items_plain, c.burst_item).as_py()
            if found >= 0:
                burst_idx, burst_p = found, float(probs[found])
            else:
                # A burst item outside the catalogue (a brand-new hit) is
                # appended, escaped once here.
                burst_idx = c.items
                self.items_plain = pa.concat_arrays([
                    self.items_plain, pa.array([c.burst_item], pa.string())])
                self.item_pieces = pa.concat_arrays([
                    self.item_pieces, pa.array(
                        [',"item_id":' + json.dumps(c.burst_item)])])
        self.types_plain = pa.array(list(c.event_types), pa.string())
        self.type_pieces = pa.array(
            [',"event_type":' + json.dumps(t) for t in c.event_types])
        self.type_cdf = np.cumsum(np.asarray(c.event_type_weights, float))
        self.type_cdf /= self.type_cdf[-1]
        if c.users:
            width = max(6, len(str(c.users - 1)))
            self.users_plain = _numbered(
                "user-", np.arange(c.users, dtype=np.int64), width)
            self.user_pieces = _join(',"user_id":"', self.users_plain, '"')
        else:
            self.users_plain = self.user_pieces = None
        self.weight_pieces = pa.array(
            [""] + [f',"weight":{w}' for w in range(1, 6)])
        self.key_base = _mix(np.array(
            [(seed + _GAMMA) % (1 << 64)], dtype=np.uint64))[0]

        # Valid events. Event time: the nominal time of emission slot i is
        # start + (i + u) / rate, and the event carries that plus a uniform
        # jitter, so emission order and event-time order differ by up to
        # 2 * jitter. Offsets before start are mirrored rather than clamped,
        # which would pile thousands of events onto the very first ms.
        idx = np.arange(n, dtype=np.float64)
        rng = _rng(seed, _STREAM_TIME)
        offset = (idx + rng.random(n)) * (1000.0 / c.rate)
        if jitter_ms > 0:
            offset += (rng.random(n) * 2.0 - 1.0) * jitter_ms
        del idx
        self.ts = np.floor(np.abs(offset)).astype(np.int64)
        del offset
        self.ts += self.start_ms
        self.item = self._sample_items(_rng(seed, _STREAM_ITEMS), n)
        self.etype = self._sample_types(_rng(seed, _STREAM_TYPES), n)
        self.user = (_rng(seed, _STREAM_USERS).integers(
            0, c.users, n, dtype=np.int32) if c.users else None)
        if c.weight_share > 0:
            rng = _rng(seed, _STREAM_WEIGHTS)
            has = rng.random(n) < c.weight_share
            self.weight = np.where(
                has, rng.integers(1, 6, n, dtype=np.int8), 0).astype(np.int8)
        else:
            self.weight = np.zeros(n, dtype=np.int8)
        self.ts_is_ms = self._sample_formats(_rng(seed, _STREAM_FORMAT), n)
        if burst_idx is not None and c.burst_share > 0:
            self._apply_burst(burst_idx, burst_p, _rng(seed, _STREAM_BURST))

        self._plan_extras(_rng(seed, _STREAM_EXTRAS))
        self._plan_malformed(_rng(seed, _STREAM_MALFORMED))

    # -- draws ------------------------------------------------------------

    def _sample_items(self, rng, size: int) -> np.ndarray:
        # Inverse-CDF sampling of the bounded Zipf; clip guards the last
        # bucket against rounding of the normalised CDF.
        ranks = np.searchsorted(self.cdf, rng.random(size), side="right")
        return np.minimum(ranks, self.config.items - 1).astype(np.int32)

    def _sample_types(self, rng, size: int) -> np.ndarray:
        types = np.searchsorted(self.type_cdf, rng.random(size), side="right")
        return np.minimum(types, len(self.type_cdf) - 1).astype(np.int16)

    def _sample_formats(self, rng, size: int) -> np.ndarray:
        fmt = self.config.ts_format
        if fmt == "ms":
            return np.ones(size, dtype=bool)
        if fmt == "rfc3339":
            return np.zeros(size, dtype=bool)
        return rng.random(size) < 0.5

    def _apply_burst(self, burst_idx: int, burst_p: float, rng) -> None:
        c = self.config
        if c.burst_start is None:
            # Centre the burst in the span.
            duration = c.burst_duration_s * 1000.0
            b0 = self.start_ms + max(0, int((self.span_ms - duration) / 2))
        else:
            b0 = parse_time(c.burst_start)
        b1 = b0 + int(round(c.burst_duration_s * 1000.0))
        # Replace with probability q so that the item's total share inside
        # the window is burst_share: q + (1 - q) * p = share.
        q = 0.0 if burst_p >= c.burst_share else (
            (c.burst_share - burst_p) / (1.0 - burst_p))
        hit = (self.ts >= b0) & (self.ts < b1) & (rng.random(self.n) < q)
        self.item[hit] = burst_idx
        self.burst_window = (b0, b1)

    def _plan_extras(self, rng) -> None:
        """Place duplicates and malformed records into the emission order.

        Each extra gets a slot s in [0, n]: it is emitted after valid events
        0..s-1 and before valid event s. A duplicate's slot is after its
        original, within ``duplicate_delay_s`` of nominal time; a malformed
        record's slot is uniform. Sorting the few extras (not all records)
        by slot fixes every record's final position.
        """
        c, n = self.config, self.n
        d = int(round(n * c.duplicate_share)) if n else 0
        m = int(round(n * c.malformed_share)) if n else 0
        self.duplicates, self.malformed = d, m
        src = rng.integers(0, max(n, 1), d)
        delay = max(0, int(c.rate * c.duplicate_delay_s))
        dup_slot = np.minimum(src + 1 + rng.integers(0, delay + 1, d), n)
        bad_slot = rng.integers(0, n + 1, m)
        slot = np.concatenate([dup_slot, bad_slot]).astype(np.int64)
        order = np.lexsort((rng.random(d + m), slot))
        self.extra_is_dup = order < d
        # Malformed records are numbered in emission order.
        bad_rank = np.cumsum(~self.extra_is_dup) - 1
        src_all = np.concatenate([src, np.zeros(m, dtype=np.int64)])
        self.extra_ref = np.where(
            self.extra_is_dup, src_all[order], bad_rank).astype(np.int64)
        # Final position = slot + number of extras emitted before it.
        self.extra_pos = slot[order] + np.arange(d + m, dtype=np.int64)
        self.bad_slot = slot[order][~self.extra_is_dup]  # emission order
        self.total = n + d + m

    def _plan_malformed(self, rng) -> None:
        """The plausible event each malformed record corrupts, and how."""
        c, m = self.config, self.malformed
        self.bad_kind = rng.integers(0, len(MALFORMED_KINDS), m, dtype=np.int8)
        self.bad_pq_kind = rng.integers(
            0, len(PARQUET_MALFORMED_KINDS), m, dtype=np.int8)
        self.bad_style = rng.integers(0, 4, m, dtype=np.int8)
        self.bad_item = self._sample_items(rng, m)
        self.bad_etype = self._sample_types(rng, m)
        self.bad_user = (rng.integers(0, c.users, m, dtype=np.int32)
                         if c.users else None)
        # A malformed record carries a time near where it is emitted, as a
        # real one would: a time far from its neighbours would move the
        # Kafka record timestamp (hence a stream's watermark) and make the
        # valid events around it late.
        self.bad_ts = self.start_ms + (
            (self.bad_slot + rng.random(m)) * (1000.0 / c.rate)).astype(
                np.int64)
        self.bad_ts_is_ms = self._sample_formats(rng, m)

    # -- rows -------------------------------------------------------------

    def valid_rows(self, idx: np.ndarray) -> _Rows:
        return _Rows(
            key=idx.astype(np.uint64) + self.key_base,
            item=self.item[idx], etype=self.etype[idx],
            user=None if self.user is None else self.user[idx],
            weight=self.weight[idx], ts=self.ts[idx],
            ts_is_ms=self.ts_is_ms[idx])

    def malformed_rows(self, k: np.ndarray) -> _Rows:
        return _Rows(
            key=(k.astype(np.uint64) + self.key_base) + _MALFORMED_KEY_BASE,
            item=self.bad_item[k], etype=self.bad_etype[k],
            user=None if self.bad_user is None else self.bad_user[k],
            weight=np.zeros(len(k), dtype=np.int8), ts=self.bad_ts[k],
            ts_is_ms=self.bad_ts_is_ms[k])

    def chunks(self, chunk_size: int) -> Iterator[_Chunk]:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        pos = self.extra_pos
        for a in range(0, self.total, chunk_size):
            b = min(a + chunk_size, self.total)
            e0, e1 = np.searchsorted(pos, [a, b])
            # Positions not taken by extras hold valid events in order, so a
            # chunk's valid events are one contiguous run.
            v0, nv = a - e0, (b - a) - (e1 - e0)
            valid = np.arange(v0, v0 + nv, dtype=np.int64)
            is_dup = self.extra_is_dup[e0:e1]
            ref = self.extra_ref[e0:e1]
            dups, bad = ref[is_dup], ref[~is_dup]
            order = None
            if e1 > e0:
                local = pos[e0:e1] - a
                order = np.empty(b - a, dtype=np.int64)
                taken = np.zeros(b - a, dtype=bool)
                taken[local] = True
                order[~taken] = np.arange(nv)
                order[local[is_dup]] = nv + np.arange(len(dups))
                order[local[~is_dup]] = nv + len(dups) + np.arange(len(bad))
            yield _Chunk(b - a, valid, dups, bad, order)

    # -- ground truth -----------------------------------------------------

    def event_batch(self, idx: np.ndarray) -> pa.RecordBatch:
        rows = self.valid_rows(idx)
        return pa.RecordBatch.from_arrays([
            _fixed(b"", _hex_ids(rows.key), b""),
            self.items_plain.take(rows.item),
            self.types_plain.take(rows.etype),
            pa.array(rows.ts, pa.int64()),
            (pa.nulls(len(idx), pa.string()) if rows.user is None
             else self.users_plain.take(rows.user)),
            pa.array(np.maximum(rows.weight, 1).astype(np.int64)),
        ], schema=EVENT_SCHEMA)

    def summary(self, path: str) -> GenerateSummary:
        first = int(self.ts.min()) if self.n else self.start_ms
        last = int(self.ts.max()) if self.n else self.start_ms
        return GenerateSummary(
            path=path, valid_events=self.n, duplicates=self.duplicates,
            malformed=self.malformed, first_ts_ms=first, last_ts_ms=last,
            bytes=os.path.getsize(path))

    # -- JSON -------------------------------------------------------------

    def json_chunk(self, chunk: _Chunk, end: str = "") -> pa.Array:
        """The chunk's records, each followed by ``end``."""
        # Duplicates are rebuilt from the same columns, so they are
        # byte-identical to their originals.
        rows = self.valid_rows(np.concatenate([chunk.valid, chunk.duplicates]))
        parts = [_join(*self.pieces(rows).values(), "}" + end)]
        if len(chunk.malformed):
            bad = self.malformed_json(chunk.malformed)
            parts.append(_join(bad, end) if end else bad)
        lines = parts[0] if len(parts) == 1 else pa.concat_arrays(parts)
        return lines if chunk.order is None else lines.take(chunk.order)

    def pieces(self, rows: _Rows) -> dict:
        """The JSON pieces of each record, in key order; joined with a
        closing brace they are the line."""
        p = {
            "event_id": _fixed(b'{"event_id":"', _hex_ids(rows.key), b'"'),
            "item_id": self.item_pieces.take(rows.item),
            "event_type": self.type_pieces.take(rows.etype),
            "ts": _ts_pieces(rows.ts, rows.ts_is_ms),
        }
        if rows.user is not None:
            p["user_id"] = self.user_pieces.take(rows.user)
        if rows.weight.any():
            p["weight"] = self.weight_pieces.take(rows.weight)
        return p

    def malformed_json(self, k: np.ndarray) -> pa.Array:
        # Build each kind's records together, then restore emission order.
        kinds = self.bad_kind[k]
        by_kind = np.argsort(kinds, kind="stable")
        parts = [self._malformed_lines(MALFORMED_KINDS[kind], k[kinds == kind])
                 for kind in np.unique(kinds)]
        inverse = np.empty_like(by_kind)
        inverse[by_kind] = np.arange(len(by_kind))
        return pa.concat_arrays(parts).take(inverse)

    def _malformed_lines(self, kind: str, k: np.ndarray) -> pa.Array:
        rows = self.malformed_rows(k)
        style = self.bad_style[k]
        if kind == "empty_line":
            return pa.array(np.full(len(k), "", dtype=object), pa.string())
        if kind == "ts_out_of_range":
            rows.ts = _out_of_range_ts(rows.ts, self.start_ms, style)
        p = self.pieces(rows)
        if kind == "missing_item_id":
            p["item_id"] = _choose(style % 2, ["", ',"item_id":null'])
        elif kind == "event_id_not_string":
            number = _join('{"event_id":',
                           pa.array(rows.key).cast(pa.string()))
            p["event_id"] = _choose(style % 2, [number, '{"event_id":null'])
        elif kind == "ts_garbage":
            garbage = pa.array([',"ts":' + json.dumps(g) for g in TS_GARBAGE])
            p["ts"] = garbage.take(style)
        elif kind == "bad_weight":
            weights = pa.array([f',"weight":{w}' for w in BAD_WEIGHTS])
            p["weight"] = weights.take(style)
        elif kind == "oversized_item_id":
            plain = self.items_plain.take(rows.item)
            p["item_id"] = _choose(style % 2, [
                _join(',"item_id":"', pc.utf8_rpad(plain, n, padding="x"), '"')
                for n in OVERSIZED_LENGTHS])
        line = _join(*p.values(), "}")
        if kind == "invalid_json":
            # Every variant breaks the syntax: a proper prefix of an object
            # lacks its closing brace; JSON has no single quotes or bare keys,
            # and a key needs its colon. (No trailing comma: when these
            # variants were chosen the parser still accepted "{...,}"; it
            # rejects it now, but a new variant would change every seeded
            # stream.)
            return _choose(style, [
                pc.utf8_slice_codeunits(line, 0, -2),
                pc.replace_substring(line, '"', "'"),
                pc.replace_substring(line, '"item_id":', "item_id:",
                                     max_replacements=1),
                pc.replace_substring(line, '"item_id":', '"item_id" ',
                                     max_replacements=1),
            ])
        if kind == "not_object":
            return _choose(style, [
                _join("[", line, "]"),
                _fixed(b'"', _hex_ids(rows.key), b'"'),
                pa.array(rows.ts).cast(pa.string()),
                "null",
            ])
        return line

    # -- Parquet ----------------------------------------------------------

    def parquet_chunk(self, chunk: _Chunk) -> pa.Table:
        rows = self.valid_rows(np.concatenate([chunk.valid, chunk.duplicates]))
        parts = [self._parquet_rows(rows)]
        if len(chunk.malformed):
            parts.append(self._parquet_malformed(chunk.malformed))
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        return table if chunk.order is None else table.take(chunk.order)

    def _parquet_rows(self, rows: _Rows, item=None, weight=None) -> pa.Table:
        return pa.Table.from_arrays([
            _fixed(b"", _hex_ids(rows.key), b""),
            self.items_plain.take(rows.item) if item is None else item,
            self.types_plain.take(rows.etype),
            pa.array(rows.ts, pa.int64()),
            (pa.nulls(len(rows.ts), pa.string()) if rows.user is None
             else self.users_plain.take(rows.user)),
            pa.array(np.maximum(rows.weight, 1).astype(np.int64)
                     if weight is None else weight, pa.int64()),
        ], schema=PARQUET_SCHEMA)

    def _parquet_malformed(self, k: np.ndarray) -> pa.Table:
        rows = self.malformed_rows(k)
        kind = self.bad_pq_kind[k]
        style = self.bad_style[k]
        names = np.asarray(PARQUET_MALFORMED_KINDS)[kind]
        oor = names == "ts_out_of_range"
        rows.ts = np.where(
            oor, _out_of_range_ts(rows.ts, self.start_ms, style), rows.ts)
        weight = np.where(names == "bad_weight",
                          np.asarray(BAD_WEIGHTS, np.int64)[style], 1)
        plain = self.items_plain.take(rows.item)
        long = _choose(style % 2, [pc.utf8_rpad(plain, n, padding="x")
                                   for n in OVERSIZED_LENGTHS])
        item = pc.if_else(pa.array(names == "oversized_item_id"), long, plain)
        item = pc.if_else(pa.array(names == "missing_item_id"),
                          pa.nulls(len(k), pa.string()), item)
        return self._parquet_rows(rows, item=item, weight=weight)


# --------------------------------------------------------------------------
# Vectorised string building.


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream]))


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijection of uint64, so distinct keys give
    distinct, random-looking event ids."""
    z = z.astype(np.uint64, copy=True)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def _hex_ids(keys: np.ndarray) -> np.ndarray:
    """Event ids: 16 lowercase hex digits of the mixed key, as a byte
    matrix (one row per id)."""
    raw = _mix(keys).astype(">u8").view(np.uint8)
    return _HEX_PAIRS[raw].view(np.uint8).reshape(-1, _EVENT_ID_LENGTH)


def _rfc3339(ts: np.ndarray) -> np.ndarray:
    """Epoch ms -> ``YYYY-MM-DDTHH:MM:SS.mmmZ`` as a byte matrix.

    Three table look-ups per instant (date, second of day, millisecond):
    10x faster than ``pc.strftime``.
    """
    n = len(ts)
    out = np.empty((n, 24), dtype=np.uint8)
    if not n:
        return out
    days = ts // DAY_MS  # floor, so instants before 1970 work too
    ms_of_day = ts - days * DAY_MS
    first, last = int(days.min()), int(days.max())
    if last - first < 4096:
        # Valid events span a few days: one cached table for the range.
        dates = _date_table(first, last)[days - first]
    else:
        # Malformed records mix 1900 and 2200: format the distinct days.
        distinct, inverse = np.unique(days, return_inverse=True)
        dates = _date_strings(distinct)[inverse]
    out[:, :11] = dates.view(np.uint8).reshape(n, 11)
    out[:, 11:20] = _TIMES_OF_DAY[ms_of_day // 1000].view(
        np.uint8).reshape(n, 9)
    out[:, 20:] = _MILLIS[ms_of_day % 1000].view(np.uint8).reshape(n, 4)
    return out


@functools.lru_cache(maxsize=16)
def _date_table(first: int, last: int) -> np.ndarray:
    """``YYYY-MM-DDT`` (S11) for days ``first..last`` since the epoch."""
    return _date_strings(np.arange(first, last + 1))


def _date_strings(days: np.ndarray) -> np.ndarray:
    text = np.datetime_as_string(days.astype("datetime64[D]"))
    return np.char.add(np.char.encode(text, "ascii"), b"T")


def _times_of_day() -> np.ndarray:
    """``HH:MM:SS.`` for every second of a day (S9), built with NumPy."""
    sec = np.arange(DAY_MS // 1000)
    pairs = np.frombuffer(b"".join(b"%02d" % i for i in range(100)),
                          dtype=np.uint8).reshape(100, 2)
    out = np.empty((len(sec), 9), dtype=np.uint8)
    out[:, 0:2] = pairs[sec // 3600]
    out[:, 2] = ord(":")
    out[:, 3:5] = pairs[sec // 60 % 60]
    out[:, 5] = ord(":")
    out[:, 6:8] = pairs[sec % 60]
    out[:, 8] = ord(".")
    return out.view("S9").ravel()


def _ts_pieces(ts: np.ndarray, is_ms: np.ndarray) -> pa.Array:
    def as_ms(t):
        return _join(',"ts":', pa.array(t, pa.int64()).cast(pa.string()))

    def as_rfc(t):
        return _fixed(b',"ts":"', _rfc3339(t), b'"')

    if is_ms.all():
        return as_ms(ts)
    if not is_ms.any():
        return as_rfc(ts)
    # Format each subset once and interleave them back.
    sel = np.flatnonzero(is_ms)
    rest = np.flatnonzero(~is_ms)
    inverse = np.empty(len(ts), dtype=np.int64)
    inverse[sel] = np.arange(len(sel))
    inverse[rest] = len(sel) + np.arange(len(rest))
    return pa.concat_arrays([as_ms(ts[sel]), as_rfc(ts[rest])]).take(inverse)


def _fixed(prefix: bytes, body: np.ndarray, suffix: bytes) -> pa.Array:
    """A string array from a byte matrix (one row per string, all the same
    width) with a constant prefix and suffix, without copying per string."""
    n, w = body.shape
    lp, ls = len(prefix), len(suffix)
    width = lp + w + ls
    mat = np.empty((n, width), dtype=np.uint8)
    if lp:
        mat[:, :lp] = np.frombuffer(prefix, dtype=np.uint8)
    mat[:, lp:lp + w] = body
    if ls:
        mat[:, lp + w:] = np.frombuffer(suffix, dtype=np.uint8)
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(mat)])


def _join(*parts) -> pa.Array:
    """Element-wise concatenation of string arrays and str constants."""
    return pc.binary_join_element_wise(*parts, "")


def _choose(which: np.ndarray, options: list) -> pa.Array:
    """Per row, ``options[which[i]]`` (arrays of the row count, or str)."""
    which = np.asarray(which)
    out = options[0]
    if isinstance(out, str):
        out = pa.array(np.full(len(which), out, dtype=object), pa.string())
    for j, option in enumerate(options[1:], start=1):
        mask = which == j
        if mask.any():
            out = pc.if_else(pa.array(mask), option, out)
    return out


def _numbered(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    digits = pa.array(numbers, pa.int64()).cast(pa.string())
    return _join(prefix, pc.utf8_lpad(digits, width, padding="0"))


def _out_of_range_ts(ts: np.ndarray, start_ms: int,
                     style: np.ndarray) -> np.ndarray:
    """Move each instant to the same offset after 1 January 1900 or 2200."""
    bases = np.array([parse_time(f"{y}-01-01T00:00:00Z")
                      for y in OUT_OF_RANGE_YEARS], dtype=np.int64)
    return bases[style % 2] + (ts - start_ms)


def _string_data(arr: pa.Array) -> pa.Buffer:
    """The bytes of all strings of ``arr``, concatenated (its data buffer)."""
    if len(arr) == 0:
        return pa.py_buffer(b"")
    validity, offsets, data = arr.buffers()
    kind = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    off = np.frombuffer(offsets, dtype=kind)[
        arr.offset:arr.offset + len(arr) + 1]
    if data is None:
        return pa.py_buffer(b"")
    return data.slice(int(off[0]), int(off[-1] - off[0]))


class _BackgroundWriter:
    """Writes buffers on a thread, so gzip (which releases the GIL) runs on
    the second core while the next chunk is being built."""

    def __init__(self, out):
        self.out = out
        self.queue = queue.Queue(maxsize=2)
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def put(self, buf) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(buf)

    def _run(self) -> None:
        while True:
            buf = self.queue.get()
            if buf is None:
                return
            if self.error is None:  # keep draining so put() never blocks
                try:
                    self.out.write(buf)
                except BaseException as e:  # re-raised in the caller
                    self.error = e

    def __exit__(self, exc_type, exc, tb):
        self.queue.put(None)
        self.thread.join()
        if self.error is not None and exc is None:
            raise self.error
        return False


def _validate(c: GeneratorConfig) -> None:
    """Reject configs that would produce invalid 'valid' events or nonsense."""
    def check(ok, message):
        if not ok:
            raise ValueError(message)

    check(int(c.events) >= 0, "events must be >= 0")
    check(int(c.items) >= 1, "items must be >= 1")
    check(c.zipf >= 0, "zipf exponent must be >= 0")
    check(c.rate > 0, "rate must be positive")
    check(c.jitter_s >= 0, "jitter_s must be >= 0")
    check(c.duplicate_share >= 0, "duplicate_share must be >= 0")
    check(c.malformed_share >= 0, "malformed_share must be >= 0")
    check(c.duplicate_delay_s >= 0, "duplicate_delay_s must be >= 0")
    check(c.ts_format in TS_FORMATS,
          f"ts_format must be one of {', '.join(TS_FORMATS)}")
    check(len(c.event_types) >= 1
          and len(c.event_types) == len(c.event_type_weights),
          "event_types and event_type_weights must be non-empty and of "
          "equal length")
    check(all(isinstance(t, str) and 0 < len(t) <= MAX_EVENT_TYPE_LENGTH
              for t in c.event_types),
          f"event types must be strings of 1..{MAX_EVENT_TYPE_LENGTH} chars")
    check(all(w >= 0 for w in c.event_type_weights)
          and sum(c.event_type_weights) > 0,
          "event_type_weights must be >= 0 and not all zero")
    check(int(c.users) >= 0, "users must be >= 0")
    check(0 <= c.weight_share <= 1, "weight_share must be in [0, 1]")
    check(0 <= c.burst_share <= 1, "burst_share must be in [0, 1]")
    check(c.burst_duration_s >= 0, "burst_duration_s must be >= 0")
    check(c.burst_share == 0 or c.burst_item is not None,
          "burst_share needs a burst_item")
    check(c.burst_item is None
          or 0 < len(c.burst_item) <= MAX_ID_LENGTH,
          f"burst_item must have 1..{MAX_ID_LENGTH} characters")
    check(int(c.seed) >= 0, "seed must be >= 0")
    start = parse_time(c.start)
    end = start + int(c.events) * 1000.0 / c.rate + c.jitter_s * 1000.0
    check(MIN_TS_MS <= start and end < MAX_TS_MS,
          "start .. start + events / rate must lie in 2000..2100")


_TIMES_OF_DAY = _times_of_day()
