"""Fixtures of the leaderboard page test (``test_page.py``).

``page_data`` builds a small output the way the stream writes it (through
``topk.storage.tables``): a 1h/1m sliding window over the last hour, with
per-minute ``slices`` and exact and ``cms`` ``ranked_windows`` panes, and
can commit the next pane while the page is open. ``page_server`` serves
``create_app(output)`` with a real uvicorn on a free port (in a thread);
``page_browser`` is headless Debian Chromium via Playwright.

The fixture names carry a ``page_`` prefix: ``test_api.py`` has its own.
"""
import collections
import math
import os
import shutil
import socket
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from topk.core import counting, ranking, schema
from topk.core.windows import WindowSpec
from topk.storage import layout
from topk.storage import tables as output_tables
from topk.streaming.panes import ranked_pane_rows

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--no-first-run"]

M = schema.MINUTE_MS
SPEC = WindowSpec.parse("1h/1m")
#: How many rows per window the "pipeline" keeps (the page asks for fewer).
PIPELINE_K = 10
#: An item id a browser would run if it were put into the page as HTML.
XSS_ID = '<img src=x onerror="window.__xss=1">&amp;'

#: Counts over all event types: ``base`` in each of the 59 minutes both
#: windows share (spread over them), ``first`` in the minute only the first
#: window holds, ``last`` in the minute only the second one holds.
#:   window 1: alpha 540, bravo 405, delta 378, charlie 360, XSS 270
#:   window 2: bravo 675, alpha 450, charlie 360, echo 315, XSS 270,
#:             delta 180
PLAN = {
    "alpha": dict(base=450, first=90, last=0),
    "bravo": dict(base=405, first=0, last=270),
    "charlie": dict(base=360, first=0, last=0),
    XSS_ID: dict(base=270, first=0, last=0),
    "delta": dict(base=180, first=198, last=0),
    "echo": dict(base=0, first=0, last=315),
}


def artifacts_dir() -> str:
    """``$TOPK_TEST_ARTIFACTS`` or ``<repo>/test-artifacts/``, created."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    path = os.environ.get("TOPK_TEST_ARTIFACTS") or os.path.join(
        root, "test-artifacts")
    os.makedirs(path, exist_ok=True)
    return path


def _minute_counts(end_ms: int) -> dict:
    """``{(event_type, minute_start, item): count}`` over the 61 minutes
    before ``end_ms``; minute parity picks the type."""
    first_minute = end_ms - 61 * M
    out = collections.Counter()

    def put(item, index, count):
        if count:
            etype = "click" if index % 2 == 0 else "play"
            out[(etype, first_minute + index * M, item)] += count

    for n, (item, plan) in enumerate(PLAN.items()):
        put(item, 0, plan["first"])
        for j, count in enumerate(_spread(plan["base"], 59, n)):
            put(item, 1 + j, count)  # minutes 1..59
        put(item, 60, plan["last"])
    return out


def _spread(total: int, n: int, phase: int) -> list[int]:
    """``total`` over ``n`` minutes in a wave (nicer sparklines), summing
    exactly to ``total`` (largest remainders)."""
    weights = [1.2 + math.sin(phase * 1.7 + j / 7) for j in range(n)]
    exact = [total * w / sum(weights) for w in weights]
    out = [math.floor(x) for x in exact]
    by_remainder = sorted(range(n), key=lambda j: out[j] - exact[j])
    for j in by_remainder[:total - sum(out)]:
        out[j] += 1
    return out


def _slices(minutes: dict, emitted_at: int) -> pa.Table:
    """Per-minute counts -> ``slices`` rows (1m, 1h and 1d, full counts,
    ``source = stream``)."""
    keys = sorted(minutes)
    counts = pa.table({
        "event_type": [k[0] for k in keys],
        "slice_start": pa.array([k[1] for k in keys], pa.int64()),
        "item_id": [k[2] for k in keys],
        "count": pa.array([minutes[k] for k in keys], pa.int64())},
        schema=schema.SLICE_COUNTS_SCHEMA)
    return pa.concat_tables([
        counting.to_slices_table(counting.rollup(counts, ms), name,
                                 "stream", emitted_at)
        for name, ms in (("1m", M), ("1h", 60 * M), ("1d", 1440 * M))])


def window_counts(minutes: dict, start: int, end: int, event_type: str
                  ) -> collections.Counter:
    """Exact counts of ``[start, end)`` of one type (``*``: all)."""
    out = collections.Counter()
    for (etype, minute, item), count in minutes.items():
        if start <= minute < end and event_type in ("*", etype):
            out[item] += count
    return out


def ranked(counts: collections.Counter, k: int) -> list[tuple[str, int]]:
    """``[(item, count)]`` in rank order: count desc, item_id asc."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


class PageData:
    """The output of the page test and the panes written to it so far.

    ``panes[i]`` is ``{"start", "end", "emitted_at", "rows": {(method,
    event_type): [row dict, ...]}}`` exactly as committed."""

    EVENT_TYPES = ("*", "click", "play")
    XSS_ID = XSS_ID

    def __init__(self, output: str):
        self.output = output
        now = int(time.time() * 1000)
        self.end = now - now % M  # the second window ends here
        self.minutes = _minute_counts(self.end)
        self.panes = []

    def window(self, index: int) -> tuple[int, int]:
        end = self.end - (1 - index) * M
        return end - SPEC.length_ms, end

    def commit_pane(self, index: int) -> dict:
        """Commit pane ``index`` (0: the window ending a minute ago, 1: the
        one ending now): its ranked rows (exact for every type, ``cms``
        for all types) and the slices of the minutes up to its end, in one
        commit, as a stream bundle."""
        start, end = self.window(index)
        emitted_at = int(time.time() * 1000)
        minutes = {k: v for k, v in self.minutes.items() if k[1] < end}
        rows, tables = {}, []
        for etype in self.EVENT_TYPES:
            top = ranked(window_counts(minutes, start, end, etype),
                         PIPELINE_K)
            total = sum(window_counts(minutes, start, end, etype).values())
            merged = pa.table({
                "event_type": [etype] * len(top),
                "window_start": pa.array([start] * len(top), pa.int64()),
                "rank": pa.array(range(1, len(top) + 1), pa.int32()),
                "item_id": [item for item, _ in top],
                "count": pa.array([c for _, c in top], pa.int64()),
                "window_total": pa.array([total] * len(top), pa.int64())})
            exact = ranked_pane_rows(SPEC, "on_time", merged, {start: 0},
                                     emitted_at, end)
            tables.append(exact)
            rows[("exact", etype)] = exact.to_pylist()
            if etype == "*":
                cms = self._cms_rows(merged, emitted_at)
                tables.append(cms)
                rows[("cms", etype)] = cms.to_pylist()
        ranked_rows = pa.concat_tables(tables)
        output_tables.commit(self.output, [
            output_tables.Change(layout.RANKED_WINDOWS, output_tables.prepare(
                layout.RANKED_WINDOWS, ranked_rows)),
            output_tables.Change(layout.SLICES, output_tables.prepare(
                layout.SLICES, _slices(minutes, emitted_at)))], "stream")
        pane = {"start": start, "end": end, "emitted_at": emitted_at,
                "rows": rows}
        self.panes.append(pane)
        return pane

    @staticmethod
    def _cms_rows(merged: pa.Table, emitted_at: int) -> pa.Table:
        """A sketch's view of the exact top: counts overestimated by up to
        21, bounds ``[exact - 0 or 40, estimate + 5]``; guaranteed when the
        lower bound beats the upper bound of every row below it."""
        exact = np.asarray(merged["count"].to_pylist(), np.int64)
        index = np.arange(len(exact), dtype=np.int64)
        estimate = exact + index % 4 * 7
        lower = exact - index % 2 * 40
        upper = estimate + 5
        guaranteed = [bool(i + 1 < len(exact)
                           and lower[i] > upper[i + 1:].max())
                      for i in range(len(exact))]
        merged = merged.set_column(merged.schema.get_field_index("count"),
                                   "count", pa.array(estimate, pa.int64()))
        return ranking.to_ranked_windows(
            merged, SPEC, method="cms", pane_timing="on_time", source="stream",
            emitted_at_ms=emitted_at, lower=pa.array(lower, pa.int64()),
            upper=pa.array(upper, pa.int64()),
            guaranteed=pa.array(guaranteed, pa.bool_()))


@pytest.fixture
def page_artifacts() -> str:
    """Where the page test saves its screenshots (``artifacts_dir``)."""
    return artifacts_dir()


@pytest.fixture
def page_data(tmp_path):
    """A fresh output with the first pane committed."""
    data = PageData(str(tmp_path / "output"))
    data.commit_pane(0)
    return data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def page_server(page_data):
    """``http://127.0.0.1:PORT`` of uvicorn serving ``create_app`` over
    ``page_data``'s output, in a thread; stopped after the test."""
    import uvicorn

    from topk.serve.app import create_app

    app = create_app(page_data.output)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning",
        lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def page_browser():
    """Headless Debian Chromium (never a downloaded browser)."""
    if not os.path.exists(CHROMIUM) or not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium "
                    "package to run the page test")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
