"""``topk serve --backend bigquery``: ``/v1/windows/latest``,
``/v1/items/{item_id}/series`` and ``/v1/coverage`` answer from BigQuery
what the DuckDB backend answers over the same rows.

The rows: the query tests' scenario (``tests/query/query_scenario.py``:
batch, stale stream, stream panes, rerun; ``slices`` and ``sketches``) and
the ranked-windows scenario of ``tests/query/test_latest_series_coverage.py``
(batch, stale stream, accumulating panes, an ``insertAll`` retry), written
to one local output (Delta, through ``topk.storage.tables``) and appended to
one dataset of the BigQuery emulator (streaming inserts, as the sink does).
"""
import dataclasses
import os
import sys
import uuid

import pytest
from fastapi.testclient import TestClient

_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_TESTS, "query"))

import test_latest_series_coverage as lsc  # noqa: E402
from query_scenario import (D, H, M, T0, load_bigquery, runs,  # noqa: E402
                            write_parquet)
from topk.connectors.bigquery import client as bigquery_client  # noqa: E402
from topk.connectors.bigquery import tables as bigquery_tables  # noqa: E402
from topk.core.windows import format_time  # noqa: E402
from topk.query import bigquery_views, coverage, latest, series  # noqa: E402
from topk.serve.app import create_app  # noqa: E402
from topk.storage import layout, tables  # noqa: E402

pytestmark = pytest.mark.integration

L0 = lsc.L0


def _t(ms):
    return format_time(ms)


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    """The local output holding both scenarios."""
    out = str(tmp_path_factory.mktemp("serve-bq-views"))
    for table, name, rows in runs():
        write_parquet(out, table, name, rows)
    for source, rows in lsc.RANKED["writes"]:
        tables.append(out, layout.RANKED_WINDOWS, lsc._table(rows),
                      source=source)
    return out


@pytest.fixture(scope="module")
def bq(bigquery_emulator):
    """``(client, target)`` of an emulator dataset of its own holding both
    scenarios (every write appended, as the sink appends)."""
    with bigquery_emulator.configured() as emulator:
        client, target = bigquery_client.connect(
            emulator.project, f"serve_views_{uuid.uuid4().hex[:8]}",
            endpoint=emulator.endpoint, check_dataset=False)
        client.create_dataset(target.dataset_id)
        bigquery_tables.ensure_tables(client, target, [
            layout.RANKED_WINDOWS, layout.SLICES, layout.SKETCHES])
        for table, _, rows in runs():
            load_bigquery(client, target, table, rows)
        for _, rows in lsc.RANKED["writes"]:
            load_bigquery(client, target, layout.RANKED_WINDOWS,
                          lsc._table(rows))
        yield client, target


@pytest.fixture(scope="module")
def apis(output, bq):
    """``(duckdb API, bigquery API)`` over the same rows."""
    with TestClient(create_app(output, refresh_s=0, max_stale_s=0)) as d, \
            TestClient(create_app("", "bigquery", bq)) as b:
        yield d, b


def _same(apis, path, params, clock=("freshness",)):
    """Both backends' answers: the same status and body but for the
    ``clock`` fields (and the snapshot fields BigQuery has not)."""
    d, b = (api.get(path, params=params) for api in apis)
    assert b.status_code == d.status_code, (b.text, d.text)
    want, got = d.json(), b.json()
    if d.status_code != 200:
        assert list(got) == ["error"]
        # Not-found messages name where they looked (a directory, a table).
        assert got["error"].split(" in ")[0] == want["error"].split(" in ")[0]
        return want, got
    for key in clock:
        want.pop(key), got.pop(key)
    assert got == want
    return d.json(), b.json()


LATEST = [
    {"spec": "1h"},                                  # the late stream pane
    {"spec": "1h", "k": 2, "event_type": "click"},
    {"spec": "1h", "event_type": "play", "k": 3},
    {"spec": "1h", "window_start": _t(L0 + H)},      # batch beats stream
    {"spec": "1h", "window_start": _t(L0), "event_type": "click"},
    {"spec": "1h/1m"},                               # only the batch wrote it
    {"spec": "1h_1m", "k": 3, "event_type": "play"},
    {"spec": "1d"},                                  # 404
    {"spec": "1h", "method": "cms"},                 # 404
    {"spec": "1h", "event_type": "view"},            # 404
    {"spec": "1h", "window_start": _t(L0 + 7 * H)},  # 404
    {"spec": "2h"},                                  # 400
    {"spec": "1h' OR 1=1 --"},                       # 400
    {"spec": "1h", "k": 0},                          # 400
    {"spec": "1h", "method": "bogus"},               # 400
]


@pytest.mark.parametrize("params", LATEST)
def test_latest_answers_as_duckdb(apis, params):
    want, got = _same(apis, "/v1/windows/latest", params,
                      ("freshness", "age_s"))
    if "rows" in got:
        assert got["age_s"] > 0
        assert got["freshness"] == {"snapshot_seq": None,
                                    "committed_at": None, "age_s": None}


def test_latest_is_the_contract_pick(bq):
    """The library function itself, against the brute-force pick."""
    got = bigquery_views.latest(*bq, "1h", lsc.K)
    w, pane, rows = lsc.expected_latest("1h", lsc.K)
    assert (got.window_start, got.pane_timing, got.pane_index,
            got.source, got.emitted_at) == (
        w, pane["pane_timing"], pane["pane_index"], pane["source"],
        pane["emitted_at"])
    assert [(r.rank, r.item_id, r.count) for r in got.rows] == rows
    with pytest.raises(latest.NotFound, match="no exact pane"):
        bigquery_views.latest(*bq, "30d")


SERIES = [  # (item, params)
    ("a", {"start": _t(T0), "end": _t(T0 + 3 * D), "step": "1h"}),
    ("b", {"start": _t(T0), "end": _t(T0 + 3 * D), "step": "1d"}),
    ("c", {"start": _t(T0 + 2 * D), "end": _t(T0 + 3 * D),
           "event_type": "click"}),                       # stream panes
    ("d", {"start": _t(T0 + 5 * H), "end": _t(T0 + 6 * H),
           "step": "1m"}),                                # batch minutes
    ("e", {"start": _t(T0 + 2 * D + 5 * H), "end": _t(T0 + 2 * D + 7 * H),
           "step": "1m", "event_type": "play"}),
    ("ghost-a", {"start": _t(T0), "end": _t(T0 + 2 * D)}),  # stale stream
    ("never", {"start": _t(T0), "end": _t(T0 + D), "step": "1d"}),
    ("a", {"start": _t(T0), "end": _t(T0 + D), "event_type": "nosuch"}),
    ("a", {"start": _t(T0 + M), "end": _t(T0 + D)}),       # not aligned
    ("a", {"start": _t(T0), "end": _t(T0 + D), "step": "5m"}),
]


@pytest.mark.parametrize("item, params", SERIES)
def test_series_answers_as_duckdb(apis, item, params):
    want, got = _same(apis, f"/v1/items/{item}/series", params)
    if "points" in got:
        assert [(p["t"], p["count"]) for p in got["points"]] == [
            (_t(t), c) for t, c in lsc.true_series(
                item, contract_ms(params["start"]),
                contract_ms(params["end"]),
                series.STEPS[params.get("step", "1h")],
                params.get("event_type"))]
    else:
        assert got["error"] == want["error"]


def contract_ms(text):
    from topk.query.contract import to_ms
    return to_ms(text)


def test_coverage_answers_as_duckdb(apis, output, bq):
    want, got = _same(apis, "/v1/coverage", {},
                      ("freshness", "snapshot_seq", "committed_at",
                       "stream_lag_s"))
    assert got["snapshot_seq"] is None and got["committed_at"] is None
    assert want["snapshot_seq"] == tables.snapshot(output).seq
    assert abs(got["stream_lag_s"] - want["stream_lag_s"]) < 60
    assert sorted(s["spec"] for s in got["specs"]) == ["1h", "1h/1m"]
    assert got["slices"] is not None
    assert got["methods"] == ["cms", "exact", "frequent_items"]
    # The library answers too, but for the snapshot seq.
    assert bigquery_views.coverage(*bq) == dataclasses.replace(
        coverage.coverage(output), seq=None)


def test_coverage_of_an_empty_dataset(bigquery_emulator):
    """Tables not created yet count as empty, as a missing local table."""
    with bigquery_emulator.configured() as emulator:
        client, target = bigquery_client.connect(
            emulator.project, f"serve_empty_{uuid.uuid4().hex[:8]}",
            endpoint=emulator.endpoint, check_dataset=False)
        client.create_dataset(target.dataset_id)
        cov = bigquery_views.coverage(client, target)
        assert cov == coverage.Coverage(None, [], None, [], [], None, None)
        with pytest.raises(latest.NotFound):
            bigquery_views.latest(client, target, "1h")
        with pytest.raises(series.QueryError, match="does not exist"):
            bigquery_views.series(client, target, "a", T0, T0 + H)
