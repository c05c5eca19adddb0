"""``topk serve``: the HTTP API answers what ``topk query`` answers, refuses
bad input with a one-line ``{"error"}`` and stays up, and reads committed
snapshots while a writer commits.

In process through FastAPI's ``TestClient``, and over HTTP against a real
``python -m topk.cli serve`` (uvicorn) subprocess. Data: the query tests'
scenario (``tests/query/query_scenario.py``: batch, stale stream, stream
panes, rerun) and the ranked-windows scenario of
``tests/query/test_latest_series_coverage.py``; exact answers are also
checked against the brute-force oracle.
"""
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_QUERY_TESTS = os.path.join(_TESTS, "query")
sys.path.insert(0, _QUERY_TESTS)

import oracle  # noqa: E402
import test_latest_series_coverage as lsc  # noqa: E402
from query_scenario import (D, H, M, SCENARIO, T0, runs, slice_rows,  # noqa: E402
                            write_parquet)
from topk import query  # noqa: E402
from topk.core.windows import format_time  # noqa: E402
from topk.query import latest, series  # noqa: E402
from topk.serve.app import create_app  # noqa: E402
from topk.storage import layout, tables  # noqa: E402

ROOT = os.path.dirname(_TESTS)


def _load_query_fixtures():
    """The query tests' ``loaded_bigquery`` fixture (BigQuery emulator
    holding the same scenario), without a conftest of our own."""
    spec = importlib.util.spec_from_file_location(
        "query_fixtures", os.path.join(_QUERY_TESTS, "conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


loaded_bigquery = _load_query_fixtures().loaded_bigquery


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("serve-scenario"))
    for table, name, rows in runs():
        write_parquet(output, table, name, rows)
    return output


@pytest.fixture(scope="module")
def ranked(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("serve-ranked"))
    for source, rows in lsc.RANKED["writes"]:
        tables.append(output, layout.RANKED_WINDOWS, lsc._table(rows),
                      source=source)
    return output


def client(output, **kwargs):
    kwargs.setdefault("refresh_s", 0)
    kwargs.setdefault("max_stale_s", 0)
    return TestClient(create_app(output, **kwargs))


@pytest.fixture(scope="module")
def api(scenario):
    with client(scenario) as c:
        yield c


def _t(ms):
    return format_time(ms)


def as_json(rows, approximate):
    out = []
    for r in rows:
        row = {"rank": r.rank, "item_id": r.item_id, "count": r.count}
        if approximate:
            row.update(lower_bound=r.lower_bound, upper_bound=r.upper_bound,
                       guaranteed=r.guaranteed)
        out.append(row)
    return out


CASES = [  # (k, start, end, event_type)
    (5, T0, T0 + 3 * D, None),
    (10, T0, T0 + D, "click"),
    (3, T0 + 5 * H + 7 * M, T0 + 5 * H + 8 * M, None),   # the tie minute
    (4, T0 + 2 * D, T0 + 3 * D, "play"),                 # stream panes
    (7, T0 + 23 * H + 13 * M, T0 + 2 * D + 11 * H + 2 * M, None),
    (2, T0 + 3 * D, T0 + 4 * D, None),                   # no events
]


@pytest.mark.parametrize("method", ["exact", "cms", "frequent_items"])
@pytest.mark.parametrize("k, start, end, event_type", CASES)
def test_topk_answers_as_topk_query(api, scenario, method, k, start, end,
                                    event_type):
    params = {"k": k, "start": _t(start), "end": _t(end)}
    if event_type:
        params["event_type"] = event_type
    if method != "exact":
        params["method"] = method
    r = api.get("/v1/topk", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    if method == "exact":
        expected = query.topk(scenario, k, start, end, event_type)
        assert [(x["rank"], x["item_id"], x["count"]) for x in
                body["rows"]] == oracle.topk(SCENARIO["events"], k, start,
                                             end, event_type)
    else:
        expected = query.topk_approx(scenario, k, start, end, method,
                                     event_type)
    assert body["rows"] == as_json(expected, method != "exact")
    assert (body["k"], body["start"], body["end"], body["event_type"],
            body["method"]) == (k, _t(start), _t(end), event_type or "*",
                                method)
    fresh = body["freshness"]
    assert fresh["snapshot_seq"] == tables.snapshot(scenario).seq
    assert fresh["committed_at"].endswith("Z") and fresh["age_s"] >= 0
    # Asked again: the cached answer, the same.
    assert api.get("/v1/topk", params=params).json()["rows"] == body["rows"]


LONG = "x" * 10_000
GOOD = f"start={_t(T0)}&end={_t(T0 + D)}"


@pytest.mark.parametrize("path, status, words", [
    (f"/v1/topk?k=0&{GOOD}", 400, "positive integer"),
    (f"/v1/topk?k=-3&{GOOD}", 400, "positive integer"),
    (f"/v1/topk?k=100001&{GOOD}", 400, "at most 100000"),
    (f"/v1/topk?k={'9' * 200}&{GOOD}", 400, "at most 100000"),
    (f"/v1/topk?k=1.5&{GOOD}", 400, "whole number"),
    (f"/v1/topk?k=ten&{GOOD}", 400, "whole number"),
    (f"/v1/topk?k=&{GOOD}", 400, "whole number"),
    (f"/v1/topk?{GOOD}", 400, "k is required"),
    ("/v1/topk?k=3", 400, "start is required"),
    (f"/v1/topk?k=3&start={_t(T0 + D)}&end={_t(T0)}", 400, "after start"),
    (f"/v1/topk?k=3&start=2024-05-01T00:00:30Z&end={_t(T0 + D)}", 400,
     "whole minutes"),
    (f"/v1/topk?k=3&start={_t(T0)}&end={_t(T0 + 31 * D)}", 400,
     "30 days"),
    (f"/v1/topk?k=3&start=yesterday&end={_t(T0 + D)}", 400, "bad time"),
    (f"/v1/topk?k=3&{GOOD}&method=magic", 400, "unknown method"),
    (f"/v1/topk?k=3&{GOOD}&event_type=nosuch", 400, "unknown event type"),
    (f"/v1/topk?k=3&{GOOD}&event_type=x%27%20OR%201%3D1%20--", 400,
     "unknown event type"),
    (f"/v1/topk?k=3&{GOOD}&event_type=click%27%3B%20DROP%20TABLE%20slices"
     "%3B--", 400, "unknown event type"),
    (f"/v1/topk?k=3&{GOOD}&event_type={LONG}", 400, "too long"),
    (f"/v1/topk?k=3&start={LONG}&end={_t(T0 + D)}", 400, "too long"),
    (f"/v1/topk?k=3&{GOOD}&{LONG}=1", 400, "too long"),
    ("/v1/windows/latest?spec=1h", 404, "no exact pane"),
    ("/v1/windows/latest?spec=2h", 400, "unknown window spec"),
    ("/v1/windows/latest?spec=1h%27%20OR%201%3D1%20--", 400,
     "unknown window spec"),
    (f"/v1/windows/latest?spec={LONG}", 400, "too long"),
    ("/v1/windows/latest", 400, "spec is required"),
    ("/v1/windows/latest?spec=1h&k=0", 400, "positive integer"),
    ("/v1/windows/latest?spec=1h&method=x", 400, "unknown method"),
    (f"/v1/items/a/series?start={_t(T0)}&end={_t(T0 + 8 * D)}&step=1m",
     400, "at most 10080"),
    (f"/v1/items/a/series?start={_t(T0 + M)}&end={_t(T0 + D)}&step=1h",
     400, "not aligned"),
    (f"/v1/items/a/series?{GOOD}&step=5m", 400, "unknown step"),
    (f"/v1/items/{LONG}/series?{GOOD}", 400, "too long"),
    (f"/v1/items/a/series?{GOOD}&event_type=nosuch", 400,
     "unknown event type"),
    ("/v1/nothing", 404, "Not Found"),
])
def test_bad_input_is_a_one_line_error(api, path, status, words):
    r = api.get(path)
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"]
    assert words in body["error"]
    assert "\n" not in body["error"] and len(body["error"]) <= 300
    assert api.get("/healthz").json() == {"status": "ok"}


def test_wrong_http_method_and_validation_errors(api):
    r = api.post("/v1/topk")
    assert r.status_code == 405 and list(r.json()) == ["error"]
    # FastAPI's own validation (a query parameter given as a list is
    # fine: the last wins) still answers {"error"}.
    assert api.get("/healthz").status_code == 200


def test_latest_answers_as_the_library(ranked):
    with client(ranked) as c:
        for params in ({"spec": "1h/1m"}, {"spec": "1h", "k": 2},
                       {"spec": "1h", "event_type": "click"},
                       {"spec": "1h", "window_start": _t(lsc.L0 + H)}):
            r = c.get("/v1/windows/latest", params=params)
            assert r.status_code == 200, r.text
            body = r.json()
            pane = latest.latest(ranked, params["spec"], params.get("k", 10),
                                 params.get("event_type"),
                                 window_start=params.get("window_start"))
            assert body["rows"] == as_json(pane.rows, True)
            assert (body["spec"], body["window_start"], body["window_end"],
                    body["pane_timing"], body["pane_index"], body["source"],
                    body["emitted_at"], body["window_total"]) == (
                pane.spec, _t(pane.window_start), _t(pane.window_end),
                pane.pane_timing, pane.pane_index, pane.source,
                _t(pane.emitted_at), pane.window_total)
            assert body["input_watermark"] == (
                None if pane.input_watermark is None
                else _t(pane.input_watermark))
            assert body["age_s"] > 0 and "freshness" in body
        # The latest 1h window: the late pane, the oracle's true top.
        body = c.get("/v1/windows/latest?spec=1h&k=4").json()
        assert body["pane_timing"] == "late"
        assert [(x["rank"], x["item_id"], x["count"]) for x in
                body["rows"]] == oracle.topk(
            lsc.RANKED["hour2"] + lsc.RANKED["late"], 4, lsc.L0 + 2 * H,
            lsc.L0 + 3 * H)
        r = c.get("/v1/windows/latest?spec=1d")
        assert r.status_code == 404 and list(r.json()) == ["error"]
        cov = c.get("/v1/coverage").json()
        assert sorted(s["spec"] for s in cov["specs"]) == ["1h", "1h/1m"]
        assert cov["slices"] is None and cov["stream_lag_s"] > 0


def test_series_and_coverage(api, scenario):
    r = api.get("/v1/items/a/series", params={
        "start": _t(T0), "end": _t(T0 + 3 * D), "step": "1h"})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = series.series(scenario, "a", T0, T0 + 3 * D, "1h")
    assert body["points"] == [{"t": _t(t), "count": c}
                              for t, c in expected.points]
    assert len(body["points"]) == 72
    assert body["points"] == [{"t": _t(t), "count": c} for t, c in
                              lsc.true_series("a", T0, T0 + 3 * D, H)]
    assert (body["item_id"], body["step"], body["event_type"]) == (
        "a", "1h", "*")
    cov = api.get("/v1/coverage").json()
    assert cov["methods"] == ["cms", "exact", "frequent_items"]
    assert cov["slices"]["first"] == _t(T0)
    assert cov["snapshot_seq"] == tables.snapshot(scenario).seq
    assert cov["specs"] == [] and cov["stream_lag_s"] > 0
    assert set(cov) >= {"committed_at", "event_types", "newest_event_time",
                        "freshness"}


def test_probes_metrics_and_page(api, tmp_path):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    text = api.get("/metrics").text
    for name in ("topk_serve_request_duration_seconds_bucket",
                 "topk_serve_requests_total", "topk_serve_errors_total",
                 "topk_serve_rows_returned_total", "topk_serve_snapshot_seq"):
        assert name in text
    assert 'route="/v1/topk"' in text
    assert api.get("/").headers["content-type"].startswith("text/html")
    assert api.get("/docs").status_code == 200
    assert "/v1/topk" in api.get("/openapi.json").json()["paths"]
    with client(str(tmp_path)) as empty:
        r = empty.get("/readyz")
        assert r.status_code == 503 and list(r.json()) == ["error"]
        assert empty.get("/v1/topk?k=1&" + GOOD).status_code == 503
        assert empty.get("/healthz").status_code == 200
    with client(str(tmp_path / "missing")) as missing:
        r = missing.get("/readyz")
        assert r.status_code == 503 and "does not exist" in r.json()["error"]


def test_unexpected_failure_is_a_500_and_the_server_stays_up(scenario,
                                                             tmp_path):
    broken = str(tmp_path / "broken")
    shutil.copytree(scenario, broken)
    for d, _, files in os.walk(os.path.join(broken, layout.SLICES)):
        for f in files:
            if f.endswith(".parquet"):
                os.remove(os.path.join(d, f))
    with client(broken) as c:
        r = c.get(f"/v1/topk?k=3&{GOOD}")
        assert r.status_code == 500, r.text
        assert r.json()["error"].startswith("internal error: ")
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").status_code == 200


def _stream_pane(n: int, at: int):
    """The stream's accumulated slices of its first ``n`` events (day 3)."""
    return slice_rows(SCENARIO["stream"][:n], "stream", at)


def test_new_commits_are_seen_and_stale_answers_say_so(tmp_path):
    output = str(tmp_path / "out")
    day = f"k=5&start={_t(T0 + 2 * D)}&end={_t(T0 + 3 * D)}"
    first = tables.append(output, layout.SLICES, _stream_pane(40, T0 + 5 * D))
    with client(output) as fresh, client(output, max_stale_s=60) as lazy:
        assert fresh.get(f"/v1/topk?{day}").json()["freshness"][
            "snapshot_seq"] == first.seq
        old = lazy.get(f"/v1/topk?{day}").json()
        second = tables.append(output, layout.SLICES,
                               _stream_pane(120, T0 + 5 * D + M))
        now = fresh.get(f"/v1/topk?{day}").json()
        assert now["freshness"]["snapshot_seq"] == second.seq
        assert [(x["rank"], x["item_id"], x["count"]) for x in now["rows"]] \
            == oracle.topk(SCENARIO["stream"], 5, T0 + 2 * D, T0 + 3 * D)
        # The lazy app answers from the previous snapshot while it
        # recomputes, and says so; then it catches up.
        stale = lazy.get(f"/v1/topk?{day}").json()
        assert stale["freshness"]["snapshot_seq"] in (first.seq, second.seq)
        if stale["freshness"]["snapshot_seq"] == first.seq:
            assert stale["rows"] == old["rows"]
        deadline = time.time() + 20
        while lazy.get(f"/v1/topk?{day}").json()["freshness"][
                "snapshot_seq"] != second.seq:
            assert time.time() < deadline
            time.sleep(0.05)
        assert lazy.get(f"/v1/topk?{day}").json()["rows"] == now["rows"]


# --- A real server -----------------------------------------------------------------

def start_server(*args):
    proc = subprocess.Popen(
        [sys.executable, "-m", "topk.cli", "serve", "--port", "0", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("serving http://"):
        proc.kill()
        raise AssertionError(line + proc.stderr.read())
    assert "(API docs at /docs)" in line
    return proc, line.split()[1].rstrip("/")


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("flags", [
    ["--refresh-s", "0", "--max-stale-s", "0"],  # always the newest
    [],  # the defaults: manifest polled, stale answers, the fast path
], ids=["newest", "defaults"])
def test_real_server_answers_while_the_stream_commits(tmp_path, flags):
    """uvicorn in a subprocess; a writer commits stream panes (each the
    full count so far) while four clients ask; every answer is the oracle's
    top-K of exactly the pane its freshness names."""
    output = str(tmp_path / "out")
    start, end = T0 + 2 * D, T0 + 3 * D
    sizes = {}  # snapshot seq -> events in that committed state
    snap = tables.append(output, layout.SLICES, _stream_pane(10, T0 + 5 * D))
    sizes[snap.seq] = 10
    proc, base = start_server("--output", output, *flags)
    answers, failures = [], []
    done = threading.Event()

    def ask():
        with httpx.Client(base_url=base, timeout=30) as http:
            while not done.is_set():
                try:
                    r = http.get("/v1/topk", params={
                        "k": 6, "start": _t(start), "end": _t(end)})
                    answers.append((r.status_code, r.json()))
                except Exception as e:  # noqa: BLE001
                    failures.append(repr(e))

    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            assert http.get("/readyz").json()["snapshot_seq"] == snap.seq
            http.get("/v1/topk", params={
                "k": 6, "start": _t(start), "end": _t(end)})
        readers = [threading.Thread(target=ask) for _ in range(4)]
        for t in readers:
            t.start()
        for i, n in enumerate((25, 40, 60, 80, 100, 120)):
            time.sleep(0.3)
            snap = tables.append(output, layout.SLICES,
                                 _stream_pane(n, T0 + 5 * D + (i + 1) * M))
            sizes[snap.seq] = n
        time.sleep(0.5)
        done.set()
        for t in readers:
            t.join()
        with httpx.Client(base_url=base, timeout=30) as http:
            assert http.get("/healthz").json() == {"status": "ok"}
            deadline = time.time() + 20
            while True:  # the defaults may answer stale for a while
                last = http.get("/v1/topk", params={
                    "k": 6, "start": _t(start), "end": _t(end)}).json()
                if last["freshness"]["snapshot_seq"] == snap.seq:
                    break
                assert time.time() < deadline, last["freshness"]
                time.sleep(0.1)
            answers.append((200, last))
            bad = http.get("/v1/topk?k=0&" + GOOD)
            assert bad.status_code == 400 and list(bad.json()) == ["error"]
            assert "topk_serve_requests_total" in http.get("/metrics").text
    finally:
        stop_server(proc)
    assert not failures, failures[:3]
    assert last["freshness"]["snapshot_seq"] == snap.seq
    seen = set()
    for status, body in answers:
        assert status == 200, body
        seq = body["freshness"]["snapshot_seq"]
        seen.add(seq)
        events = SCENARIO["stream"][:sizes[seq]]
        assert [(x["rank"], x["item_id"], x["count"]) for x in
                body["rows"]] == oracle.topk(events, 6, start, end), seq
    assert len(answers) > 10 and len(seen) >= 3, seen


def test_cli_errors_are_one_line(tmp_path):
    missing = subprocess.run(
        [sys.executable, "-m", "topk.cli", "serve", "--output",
         str(tmp_path / "nope"), "--port", "0"], cwd=ROOT,
        capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0
    assert "does not exist" in missing.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        taken = subprocess.run(
            [sys.executable, "-m", "topk.cli", "serve", "--output",
             str(tmp_path), "--port", str(port)], cwd=ROOT,
            capture_output=True, text=True, timeout=60)
    assert taken.returncode == 2 and "in use" in taken.stderr
    assert taken.stderr.strip().count("\n") == 0


@pytest.mark.integration
def test_bigquery_backend_answers_as_duckdb(loaded_bigquery, scenario):
    with TestClient(create_app("", "bigquery", loaded_bigquery)) as c:
        for k, start, end, event_type in CASES[:4]:
            for method in ("exact", "cms"):
                params = {"k": k, "start": _t(start), "end": _t(end),
                          "method": method}
                if event_type:
                    params["event_type"] = event_type
                r = c.get("/v1/topk", params=params)
                assert r.status_code == 200, r.text
                expected = (query.topk(scenario, k, start, end, event_type)
                            if method == "exact" else query.topk_approx(
                                scenario, k, start, end, method, event_type))
                assert r.json()["rows"] == as_json(expected,
                                                   method != "exact")
        bad = c.get(f"/v1/topk?k=3&{GOOD}&event_type=nosuch")
        assert bad.status_code == 400 and list(bad.json()) == ["error"]
        # (The other endpoints on BigQuery: test_api_bigquery.py.)
        assert c.get("/readyz").status_code == 200
