"""``topk demo`` (what ``make demo`` runs, the README's first command): it
generates a day, runs the batch pipeline, and prints three answers that
equal the brute-force oracle over the events it generated."""
import os
import re

import oracle  # tests/ is on sys.path (conftest.py)
from topk import cli
from topk.core.windows import parse_time

QUERIES = [("top 10 of the whole day", None),
           ("top 10 plays 18:00-18:30 (the burst)", "play"),
           ("top 10 clicks 09:17-13:42", "click")]


def test_demo_prints_the_oracles_answers(tmp_path, capsys):
    assert cli.main(["demo", "--dir", str(tmp_path), "--events", "6000"]) == 0
    out = capsys.readouterr().out
    with open(os.path.join(tmp_path, "events", "events.jsonl"), "rb") as f:
        events = oracle.dedup(oracle.parse_block(f.read())[0])
    for title, event_type in QUERIES:
        section = out.split(f"\n{title} [", 1)[1]
        start, end = re.match(r"(\S+) \.\. (\S+)\)", section).groups()
        printed = [tuple(line.split()) for line in
                   section.split("\n\n", 1)[0].splitlines()[2:]]
        want = oracle.topk(events, 10, parse_time(start), parse_time(end),
                           event_type)
        assert want and printed == [(str(r), i, str(c)) for r, i, c in want]


def test_demo_serve_prints_its_url_and_serves_the_demo_output(tmp_path):
    # `make demo-serve`: the demo, then `topk serve` on its output until
    # SIGTERM; the page and /v1/topk answer the oracle's top 10.
    import json
    import signal
    import subprocess
    import sys
    import time
    import urllib.request
    proc = subprocess.Popen(
        [sys.executable, "-m", "topk.cli", "demo", "--dir", str(tmp_path),
         "--events", "3000", "--serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))))
    try:
        url, deadline = None, time.time() + 240
        while url is None and time.time() < deadline:
            line = proc.stdout.readline()
            assert line, "topk demo --serve exited"
            found = re.match(r"serving (http://\S+/)", line)
            url = found and found.group(1)
        assert url
        with urllib.request.urlopen(url, timeout=10) as page:
            assert "leaderboard" in page.read().decode().lower()
        start, end = "2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z"
        with urllib.request.urlopen(f"{url}v1/topk?k=10&start={start}"
                                    f"&end={end}", timeout=30) as answer:
            rows = json.loads(answer.read())["rows"]
        with open(os.path.join(tmp_path, "events", "events.jsonl"),
                  "rb") as f:
            events = oracle.dedup(oracle.parse_block(f.read())[0])
        assert [(r["rank"], r["item_id"], r["count"]) for r in rows] == \
            oracle.topk(events, 10, parse_time(start), parse_time(end))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
