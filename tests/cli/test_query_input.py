"""``topk query`` on hostile input: item ids that hold terminal control
characters are escaped in the table, and a k that is too large (even past
any machine integer) is one line, exit 2, for both backends."""
import json
import subprocess
import sys

import pytest

from topk import cli
from topk.query import contract

T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z
RANGE = ["--start", "2024-05-01T00:00:00Z", "--end", "2024-05-01T01:00:00Z"]
#: An ANSI "red" escape, a newline and a right-to-left override.
HOSTILE = "evil\x1b[31mred\nsecond line\u202e"


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    """A real batch output whose top item id is ``HOSTILE``."""
    d = tmp_path_factory.mktemp("hostile")
    lines = [json.dumps({"event_id": f"e{i}", "item_id": item,
                         "event_type": "click", "ts": T0 + i * 1000})
             for i, item in enumerate([HOSTILE] * 3 + ["plain"])]
    (d / "events.jsonl").write_text("\n".join(lines) + "\n")
    out = str(d / "out")
    assert cli.main(["batch", "--input", str(d / "events.jsonl"), "--output",
                     out, "--windows", "1h", "--k", "3"]) == 0
    return out


def test_the_table_escapes_control_characters(output):
    # As a process: what reaches the terminal, byte for byte.
    proc = subprocess.run(
        [sys.executable, "-m", "topk.cli", "query", "--output", output,
         "--k", "3", *RANGE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, proc.stdout  # header + 2 rows: no raw newline
    assert "\x1b" not in proc.stdout and "\u202e" not in proc.stdout
    assert lines[1].split() == ["1", "evil\\x1b[31mred\\x0asecond",
                                "line\\u202e", "3"]
    assert lines[2].split() == ["2", "plain", "1"]


def test_json_keeps_the_id_exact(output, capsys):
    assert cli.main(["query", "--output", output, "--k", "1", *RANGE,
                     "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["item_id"] == HOSTILE


@pytest.mark.parametrize("k, message", [
    ("100000000000000000000", f"must be at most {contract.MAX_K}"),
    (str(contract.MAX_K + 1), f"k must be at most {contract.MAX_K}"),
    ("0", "k must be a positive integer"),
    ("-5", "k must be a positive integer"),
    ("1e3", "must be a whole number"),
    ("9" * 5000, "got a 5000-digit number"),  # past int parsing limits
])
@pytest.mark.parametrize("backend", [
    [], ["--backend", "bigquery", "--bq-project", "my-project",
         "--bq-dataset", "top_k", "--bq-endpoint", "127.0.0.1:1"]])
def test_a_bad_k_is_one_line(output, k, message, backend, capsys):
    # The BigQuery endpoint is a closed port: k is refused before any
    # connection is tried.
    assert cli.main(["query", "--output", output, "--k", k, *RANGE,
                     *backend]) == 2
    err = capsys.readouterr().err
    assert err.startswith("topk: error: ") and err.count("\n") == 1, err
    assert message in err and len(err) < 300, err


def test_the_largest_k_is_answered(output, capsys):
    assert cli.main(["query", "--output", output, "--k",
                     str(contract.MAX_K), *RANGE]) == 0
    assert "plain" in capsys.readouterr().out


def test_the_help_states_the_largest_k(capsys):
    with pytest.raises(SystemExit):
        cli.main(["query", "--help"])
    assert f"(1 to {contract.MAX_K})" in capsys.readouterr().out


def test_freshness_names_the_snapshot_and_the_newest_event(output, capsys):
    from topk.core.windows import format_time
    from topk.storage import tables
    assert cli.main(["query", "--output", output, "--k", "3", *RANGE,
                     "--freshness"]) == 0
    err = capsys.readouterr().err
    # Four events from T0 on, a second apart: the newest minute is T0's.
    assert err.startswith(f"freshness: snapshot {tables.snapshot(output).seq}"
                          " committed "), err
    assert f"newest event minute {format_time(T0 - T0 % 60_000)}" in err
    assert "stream pane" not in err  # a batch output has none
