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
