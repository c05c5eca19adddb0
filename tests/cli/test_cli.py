"""The ``topk`` command: help, one-line errors, and a generate -> batch ->
query round trip."""
import json

import pytest

from topk import cli


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"],
                                  ["query", "--help"], ["demo", "--help"]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0
    assert "usage: topk" in capsys.readouterr().out


def test_batch_help_lists_pipeline_options(capsys):
    assert cli.main(["batch", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--input", "--output", "--windows", "--k", "--item-shards"):
        assert option in out


@pytest.mark.parametrize("argv, message", [
    (["batch", "--output", "x"], "missing required option(s): --input (or --from-archive)"),
    (["batch", "--input", "/no/such/*.jsonl", "--output", "x"], "no input files match"),
    (["batch", "--input", "x", "--output", "y", "--k", "-1"], "must be a positive integer"),
    (["query", "--output", "/no/such/dir", "--k", "3", "--start",
      "2024-05-01T00:00:00Z", "--end", "2024-05-01T01:00:00Z"], "does not exist"),
    (["generate", "--events", "0", "--out", "x.jsonl"], "--events must be at least 1"),
    (["query", "--output", "x", "--k", "3", "--start", "a", "--end", "b", "--bogus"],
     "unrecognized arguments: --bogus"),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("topk: error: ")
    assert message in err


def test_generate_batch_query_round_trip(tmp_path, capsys):
    events = str(tmp_path / "ev.jsonl")
    out = str(tmp_path / "out")
    assert cli.main(["generate", "--events", "3000", "--out", events,
                     "--seed", "7", "--items", "50", "--event-rate", "1",
                     "--duplicates", "0.05", "--malformed", "0.01"]) == 0
    assert cli.main(["batch", "--input", events, "--output", out,
                     "--windows", "1h", "--k", "5"]) == 0
    summary = capsys.readouterr().out
    assert "3000 unique events" in summary and "30 dead letters" in summary
    assert cli.main(["query", "--output", out, "--k", "4", "--start",
                     "2024-05-01T00:00:00Z", "--end", "2024-05-01T01:00:00Z",
                     "--format", "json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in answer] == [1, 2, 3, 4]
    assert all(set(r) == {"rank", "item_id", "count"} for r in answer)
    counts = [r["count"] for r in answer]
    assert counts == sorted(counts, reverse=True) and counts[0] > 0
