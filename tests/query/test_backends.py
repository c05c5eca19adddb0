"""One query contract, two backends: the same questions to DuckDB over the
Parquet output and to BigQuery (the emulator) over the same rows
(``conftest.SCENARIO``: batch runs, a rerun, a stale stream superseded by
batch rows, stream-only slices with two accumulating panes and an insertAll
retry). Each answer is checked against the brute-force oracle over the true
events, and the two backends' answers and error messages against each
other."""
import random

import pytest

import oracle
from query_scenario import SCENARIO, T0, D, H, M
from topk.approx import sketches
from topk.query import QueryError
from topk.query.contract import MAX_K

BACKENDS = ["duckdb",
            pytest.param("bigquery", marks=pytest.mark.integration)]
EVENTS = SCENARIO["events"]


def _random_ranges(n, seed=7):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start = T0 - 2 * H + rng.randrange(4 * D // M) * M
        out.append((start, start + (1 + rng.randrange(2 * D // M)) * M))
    return out


#: (k, start, end): odd ranges (minutes + hours + days), across the
#: batch/stream boundary, stream only, the tie minute, exactly 30 days,
#: ranges without events, and random ones.
RANGES = [
    (10, T0 + 17 * M, T0 + D + 3 * H + 42 * M),
    (5, T0 + 59 * M, T0 + 61 * M),
    (3, T0, T0 + 2 * D),
    (1000, T0 - D, T0 + 29 * D),
    (4, T0 + 23 * H + 58 * M, T0 + 2 * D + 5 * H + 1 * M),
    (7, T0 + 2 * D + 2 * H + 13 * M, T0 + 2 * D + 22 * H + 2 * M),
    (2, T0 + 5 * H + 7 * M, T0 + 5 * H + 8 * M),
    (3, T0 + 5 * H, T0 + 6 * H),
    (3, T0 + 10 * D, T0 + 10 * D + H),
    *((k, s, e) for k, (s, e) in zip((1, 4, 8, 12, 20), _random_ranges(5))),
]
TYPES = [None, "*", "click", "play"]
EXACT_CASES = [(k, s, e, t) for k, s, e in RANGES for t in TYPES]
APPROX_CASES = [(k, s, e, t, m) for k, s, e in RANGES for t in (None, "play")
                for m in sketches.METHODS]


def _ids(case):
    return "-".join(str(x) for x in case)


def _oracle(k, start, end, event_type):
    return oracle.topk(EVENTS, k, start, end, event_type)


def _true_counts(start, end, event_type):
    return {item: count for _, item, count in
            _oracle(None, start, end, event_type)}


def test_the_scenario_has_what_the_cases_need():
    truth = _oracle(None, T0 + 5 * H + 7 * M, T0 + 5 * H + 8 * M, "click")
    assert [(i, c) for _, i, c in truth[:3]] == [("t1", 4), ("t2", 4),
                                                 ("t3", 4)]
    # The fixed ranges hold events (the longer ones of both types), but for
    # the one after the data.
    assert all(_oracle(3, s, e, None) for _, s, e in RANGES[:8])
    assert all(_oracle(3, s, e, t) for _, s, e in RANGES[:8]
               for t in ("click", "play") if e - s >= H)
    assert not _oracle(3, T0 + 10 * D, T0 + 10 * D + H, None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", EXACT_CASES, ids=_ids)
def test_exact_answers_are_the_oracles(backends, backend, case):
    k, start, end, event_type = case
    got = backends.ask(backend, "topk", k, start, end, event_type)
    assert [(r.rank, r.item_id, r.count) for r in got] == _oracle(
        k, start, end, event_type)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", APPROX_CASES, ids=_ids)
def test_approximate_bounds_contain_the_true_counts(backends, backend, case):
    k, start, end, event_type, method = case
    got = backends.ask(backend, "topk_approx", k, start, end, method,
                       event_type)
    truth = _true_counts(start, end, event_type)
    assert len(got) == min(k, len(truth))
    assert [r.rank for r in got] == list(range(1, len(got) + 1))
    for r in got:
        assert r.lower_bound <= truth.get(r.item_id, 0) <= r.upper_bound, r
        assert r.lower_bound <= r.count <= r.upper_bound
    # A guaranteed item is truly in the top k (ties at the k-th count
    # included).
    kth = sorted(truth.values(), reverse=True)[:k][-1] if truth else 0
    assert all(truth[r.item_id] >= kth for r in got if r.guaranteed)
    # Estimates rank by count, then item_id.
    assert [(-r.count, r.item_id) for r in got] == sorted(
        (-r.count, r.item_id) for r in got)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", sketches.METHODS)
def test_stream_panes_of_one_slice_count_once(backends, backend, method):
    # Day 3 is stream only: two panes of every slice. Few items, so the
    # sketches are exact: merging both panes would overcount.
    start, end = T0 + 2 * D, T0 + 3 * D
    for event_type in (None, "click"):
        truth = _oracle(100, start, end, event_type)
        exact = backends.ask(backend, "topk", 100, start, end, event_type)
        approx = backends.ask(backend, "topk_approx", 100, start, end,
                              method, event_type)
        assert [(r.rank, r.item_id, r.count) for r in exact] == truth
        assert [(r.rank, r.item_id, r.count, r.lower_bound, r.upper_bound)
                for r in approx] == [(rank, i, c, c, c)
                                     for rank, i, c in truth]


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_rows_supersede_the_stale_stream(backends, backend):
    # Day 1's stale stream renamed items "ghost-...": never visible.
    for function, extra in (("topk", ()),
                            *(("topk_approx", (m,)) for m in
                              sketches.METHODS)):
        got = backends.ask(backend, function, 1000, T0, T0 + D, *extra)
        assert got and not [r for r in got if r.item_id.startswith("ghost")]
        # Coverage is per slice, whatever the type: the batch saw no
        # "view" events in day 1's slices, so the stream's are stale too.
        assert backends.ask(backend, function, 1000, T0, T0 + D, *extra,
                            "view") == []


@pytest.mark.integration
@pytest.mark.parametrize("function, cases", [
    ("topk", EXACT_CASES),
    ("topk_approx", [(k, s, e, m, t) for k, s, e, t, m in APPROX_CASES])])
def test_backends_answer_alike(backends, function, cases):
    for case in cases:
        assert (backends.ask("bigquery", function, *case)
                == backends.ask("duckdb", function, *case)), case


#: (function, args, the whole message): the checks of ``topk.query.contract``,
#: the same on both backends.
ERRORS = [
    ("topk", (0, T0, T0 + H), "k must be a positive integer, got 0"),
    ("topk", (-3, T0, T0 + H), "k must be a positive integer, got -3"),
    ("topk", (True, T0, T0 + H), "k must be a positive integer, got True"),
    ("topk", (2.0, T0, T0 + H), "k must be a positive integer, got 2.0"),
    ("topk", (MAX_K + 1, T0, T0 + H),
     f"k must be at most {MAX_K}, got {MAX_K + 1}"),
    ("topk", (5, T0 + H, T0),
     "end must be after start (2024-05-01T01:00:00Z .. "
     "2024-05-01T00:00:00Z)"),
    ("topk", (5, T0, T0),
     "end must be after start (2024-05-01T00:00:00Z .. "
     "2024-05-01T00:00:00Z)"),
    ("topk", (5, "2024-05-01T00:00:30Z", "2024-05-01T01:00:00Z"),
     "start and end must be aligned to whole minutes "
     "(2024-05-01T00:00:30Z .. 2024-05-01T01:00:00Z)"),
    ("topk", (5, T0, T0 + 30 * D + M),
     "range is longer than 30 days (2024-05-01T00:00:00Z .. "
     "2024-05-31T00:01:00Z)"),
    ("topk", (5, "noon", T0 + H),
     "bad time 'noon': expected RFC 3339, e.g. 2024-05-01T10:00:00Z"),
    ("topk", (5, 10 ** 15, 10 ** 15 + H),
     "start 1000000000000000 ms is out of range: times lie in "
     "1970-01-01 .. 9999-12-31"),
    ("topk", (5, T0, T0 + H, "zzz"),
     "unknown event type 'zzz'; known: click, play, view"),
    ("topk", (5, T0, T0 + H, ""),
     "event type must be a non-empty string of at most 64 characters, or "
     "'*' for all types; got ''"),
    ("topk", (5, T0, T0 + H, 7),
     "event type must be a non-empty string of at most 64 characters, or "
     "'*' for all types; got 7"),
    ("topk_approx", (3, T0, T0 + H, "median"),
     "unknown approximate method 'median'; choose from cms, frequent_items"),
    ("topk_approx", (3, T0, T0 + H, "exact"),
     "unknown approximate method 'exact'; choose from cms, frequent_items"),
    ("topk_approx", (0, T0, T0 + H, "cms"),
     "k must be a positive integer, got 0"),
    ("topk_approx", (MAX_K + 1, T0, T0 + H, "cms"),
     f"k must be at most {MAX_K}, got {MAX_K + 1}"),
    ("topk_approx", (3, T0 + 1, T0 + H, "cms"),
     "start and end must be aligned to whole minutes "
     "(2024-05-01T00:00:00.001Z .. 2024-05-01T01:00:00Z)"),
    ("topk_approx", (3, T0, T0 + H, "frequent_items", "zzz"),
     "unknown event type 'zzz'; known: click, play, view"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("function, args, message", ERRORS,
                         ids=[e[2][:40] for e in ERRORS])
def test_errors(backends, backend, function, args, message):
    got = backends.ask(backend, function, *args)
    assert isinstance(got, QueryError), got
    assert str(got) == message


def test_k_at_the_limit_is_an_answer(backends):
    got = backends.ask("duckdb", "topk", MAX_K, T0, T0 + D)
    assert [(r.rank, r.item_id, r.count) for r in got] == _oracle(
        MAX_K, T0, T0 + D, None)
