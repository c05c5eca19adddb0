"""The live leaderboard page (``topk serve``, ``/``) in headless Chromium.

A real uvicorn serves ``create_app`` over a small output (``conftest.py``);
the page is checked against the rows the test committed, computed here,
never read back from the API: the first pane's top-K, a new pane picked up
without a reload (with its rank changes), a sketch's bounds, the range form
against ``topk.query.topk``, an API error shown in the page, and an item id
full of HTML shown as text. Screenshots go to ``$TOPK_TEST_ARTIFACTS``
(default ``<repo>/test-artifacts/``).
"""
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from topk import query
from topk.core.windows import format_time, parse_time

pytestmark = pytest.mark.integration

K = 5
#: Polling fast, so a new pane shows within a fraction of a second.
REFRESH_MS = 250

ROWS_JS = """() => Array.from(
  document.querySelectorAll('[data-testid=leaderboard-row]')).map(tr => ({
    item: tr.dataset.item, rank: Number(tr.dataset.rank),
    count: Number(tr.dataset.count),
    text: tr.querySelector('[data-testid=item]').textContent,
    shown: tr.querySelector('[data-testid=count]').textContent,
    change: tr.querySelector('[data-testid=rank-change]').dataset.change,
    change_text: tr.querySelector('[data-testid=rank-change]').textContent,
    bounds: tr.querySelector('[data-testid=bounds]').textContent,
    bounds_visible: tr.querySelector('[data-testid=bounds]')
      .getClientRects().length > 0,
    guaranteed: !!tr.querySelector('[data-testid=guaranteed]')}))"""

RANGE_ROWS_JS = """() => Array.from(
  document.querySelectorAll('[data-testid=range-result-row]')).map(tr => [
    Number(tr.dataset.rank), tr.dataset.item, Number(tr.dataset.count),
    tr.querySelector('[data-testid=item]').textContent])"""


def expected(pane: dict, method: str = "exact", event_type: str = "*"):
    """``[(rank, item, count)]`` of a committed pane, top ``K``."""
    rows = sorted(pane["rows"][(method, event_type)], key=lambda r: r["rank"])
    return [(r["rank"], r["item_id"], r["count"]) for r in rows[:K]]


def shown(rows) -> list:
    return [(r["rank"], r["item"], r["count"]) for r in rows]


def wait_for(page, read, want, what: str, shots: str,
             timeout_s: float = 8.0, shot: str = "leaderboard-failure.png"):
    """Poll ``read()`` until it equals ``want``; on timeout save a
    screenshot and fail with the last value read."""
    deadline = time.monotonic() + timeout_s
    got = None
    while time.monotonic() < deadline:
        got = read()
        if got == want:
            return got
        page.wait_for_timeout(100)
    page.screenshot(path=os.path.join(shots, shot), full_page=True)
    pytest.fail(f"{what}: the page shows {got!r}, expected {want!r}")


def local_input(ms: int) -> str:
    """A ``datetime-local`` value (the form reads it as UTC)."""
    return format_time(ms)[:16]


def api_error(base: str, path: str, params: dict) -> tuple[int, str]:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        urllib.request.urlopen(url, timeout=10)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())["error"]
    pytest.fail(f"{url} did not fail")


def test_live_leaderboard(page_data, page_server, page_browser,
                          page_artifacts):
    shots = page_artifacts
    page = page_browser.new_page(viewport={"width": 1120, "height": 960})
    problems, foreign = [], []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"),
                                 d.dismiss()))
    series = []  # (when, item, start, end) of every sparkline fetch

    def on_request(r):
        if not r.url.startswith(page_server):
            foreign.append(r.url)
        url = urllib.parse.urlsplit(r.url)
        if url.path.startswith("/v1/items/"):
            q = urllib.parse.parse_qs(url.query)
            item = urllib.parse.unquote(url.path.split("/")[3])
            series.append((time.monotonic(), item, q["start"][0],
                           q["end"][0]))
    page.on("request", on_request)

    def sparklines():
        return page.evaluate("""() => Array.from(document.querySelectorAll(
            '[data-testid=leaderboard-row] svg[data-testid=sparkline]'))
          .map(s => [s.dataset.item, s.dataset.state,
                     Number(s.dataset.total)])""")

    try:
        page.goto(f"{page_server}/?refresh_ms={REFRESH_MS}&spec=1h/1m"
                  f"&event_type=*&method=exact&k={K}")
        first, second = page_data.panes[0], None

        # -- The first pane, exactly as committed --------------------------
        rows = wait_for(page, lambda: shown(page.evaluate(ROWS_JS)),
                        expected(first), "first pane", shots)
        rows = page.evaluate(ROWS_JS)
        for r in rows:
            assert r["text"] == r["item"]  # the id, as text
            assert r["shown"] == f"{r['count']:,}"
            assert r["change"] == "none"  # nothing to compare with yet
            assert not r["bounds_visible"]  # exact: no bounds column
        age = page.get_by_test_id("age")
        assert age.text_content().endswith(" ago")
        assert 0 <= int(age.get_attribute("data-age-s")) < 120
        assert page.get_by_test_id("pane-timing").text_content() == "on_time"
        assert parse_time(page.get_by_test_id("window-start")
                          .get_attribute("data-value")) == first["start"]
        assert parse_time(page.get_by_test_id("window-end")
                          .get_attribute("data-value")) == first["end"]

        # An item id full of HTML is text: no element, no script run.
        xss = page.locator("[data-testid=leaderboard-row]").filter(
            has_text="onerror")
        assert xss.get_attribute("data-item") == page_data.XSS_ID
        assert xss.get_by_test_id("item").text_content() == page_data.XSS_ID
        assert page.locator("#leaderboard img").count() == 0
        assert page.evaluate("() => window.__xss") is None

        # A sparkline per row, drawn from the item's series over the window
        # (exact, all types): each one sums to the row's count.
        wait_for(page, sparklines, [[item, "ok", count] for _, item, count
                                    in expected(first)], "sparklines", shots)
        page.screenshot(path=os.path.join(shots, "leaderboard-pane1.png"),
                        full_page=True)

        # -- A new pane shows without a reload, with its rank changes -----
        page.evaluate("() => { window.__same_page = 1; }")
        second = page_data.commit_pane(1)
        wait_for(page, lambda: shown(page.evaluate(ROWS_JS)),
                 expected(second), "second pane", shots,
                 shot="leaderboard-pane2.png")
        assert page.evaluate("() => window.__same_page") == 1
        # The sparklines follow the window as it moves.
        wait_for(page, sparklines, [[item, "ok", count] for _, item, count
                                    in expected(second)], "sparklines 2",
                 shots, shot="leaderboard-pane2.png")
        before = {item: rank for rank, item, _ in expected(first)}
        changes = {}
        for rank, item, _ in expected(second):
            if item not in before:
                changes[item] = ("new", "new")
            elif before[item] > rank:
                changes[item] = ("up", f"▲{before[item] - rank}")
            elif before[item] < rank:
                changes[item] = ("down", f"▼{rank - before[item]}")
            else:
                changes[item] = ("same", "=")
        assert {r["item"]: (r["change"], r["change_text"])
                for r in page.evaluate(ROWS_JS)} == changes
        assert ("up", "▲1") in changes.values()  # the data moves someone up
        assert ("new", "new") in changes.values()
        page.screenshot(path=os.path.join(shots, "leaderboard.png"),
                        full_page=True)

        # -- An approximate method: its bounds and guarantees -------------
        page.get_by_test_id("method-select").select_option("cms")
        wait_for(page, lambda: shown(page.evaluate(ROWS_JS)),
                 expected(second, "cms"), "cms pane", shots,
                 shot="leaderboard-cms.png")
        cms = {r["item_id"]: r for r in second["rows"][("cms", "*")]}
        top = [cms[item] for _, item, _ in expected(second, "cms")]
        assert all(r["lower_bound"] < r["upper_bound"] for r in top)
        assert {r["guaranteed"] for r in top} == {True, False}
        for r in page.evaluate(ROWS_JS):
            row = cms[r["item"]]
            assert r["bounds_visible"]
            assert r["bounds"].startswith(
                f"{row['lower_bound']:,}..{row['upper_bound']:,}")
            assert r["guaranteed"] == row["guaranteed"]
        page.screenshot(path=os.path.join(shots, "leaderboard-cms.png"),
                        full_page=True)

        # -- The range form answers as topk.query.topk ---------------------
        start, end = second["start"] + 15 * 60_000, second["end"]
        truth = [(r.rank, r.item_id, r.count) for r in query.topk(
            page_data.output, K, format_time(start), format_time(end))]
        assert truth
        form = page.get_by_test_id("range-form")
        form.get_by_test_id("range-start").fill(local_input(start))
        form.get_by_test_id("range-end").fill(local_input(end))
        form.get_by_test_id("range-k").fill(str(K))
        form.get_by_test_id("range-event-type").select_option("*")
        form.get_by_test_id("range-method").select_option("exact")
        form.get_by_test_id("range-submit").click()
        # Each row: rank, item, count, and the item's text as shown.
        wait_for(page, lambda: page.evaluate(RANGE_ROWS_JS),
                 [[rank, item, count, item] for rank, item, count in truth],
                 "range form", shots, shot="leaderboard-range.png")
        assert page.get_by_test_id("range-error").is_hidden()
        page.screenshot(path=os.path.join(shots, "leaderboard-range.png"),
                        full_page=True)

        # -- An API error (a reversed range) is shown in the page ----------
        status, message = api_error(page_server, "/v1/topk", {
            "k": K, "start": format_time(end), "end": format_time(start),
            "event_type": "*", "method": "exact"})
        assert 400 <= status < 500 and message
        form.get_by_test_id("range-start").fill(local_input(end))
        form.get_by_test_id("range-end").fill(local_input(start))
        form.get_by_test_id("range-submit").click()
        error = page.get_by_test_id("range-error")
        error.wait_for(state="visible", timeout=5000)
        assert error.text_content() == message
        assert page.locator("[data-testid=range-result-row]").count() == 0
        page.screenshot(path=os.path.join(
            shots, "leaderboard-range-error.png"), full_page=True)

        # Sparklines: only of shown items, over a window; one item's same
        # range at most every ~10 s (the page polls every 250 ms).
        shown_items = ({i for _, i, _ in expected(first)}
                       | {i for _, i, _ in expected(second)})
        assert {item for _, item, _, _ in series} <= shown_items
        windows = {(format_time(p["start"]), format_time(p["end"]))
                   for p in (first, second)}
        assert {(s, e) for _, _, s, e in series} <= windows
        last = {}
        for when, *key in series:
            assert when - last.get(tuple(key), -60) > 9, (key, series)
            last[tuple(key)] = when

        assert not problems, problems
        assert not foreign, f"the page fetched from elsewhere: {foreign}"
    except BaseException:
        page.screenshot(path=os.path.join(shots, "leaderboard-failure.png"),
                        full_page=True)
        raise
    finally:
        page.close()
