"""``topk retention``: the retention tiers applied from the command line
(the policy itself: tests/storage/test_retention.py)."""
from topk import cli
from topk.loadgen import generator
from topk.storage import tables


def _minute_days(out):
    ds = tables.dataset(out, "slices")
    return sorted({r["date"] for r in ds.to_table(
        columns=["slice_length", "date"]).to_pylist()
        if r["slice_length"] == "1m"})


def test_retention_deletes_expired_rows_and_maintains(tmp_path, capsys):
    """A real batch output over three days; minute slices older than two
    days expire, the rest stays, and the tables are compacted after."""
    events, out = str(tmp_path / "ev.jsonl"), str(tmp_path / "out")
    generator.write_json_lines(generator.GeneratorConfig(
        events=3000, items=50, rate=3000 / (3 * 86_400),
        start="2024-05-01T00:00:00Z", seed=5), events)
    assert cli.main(["batch", "--input", events, "--output", out,
                     "--windows", "1h", "--k", "3"]) == 0
    assert _minute_days(out) == ["2024-05-01", "2024-05-02", "2024-05-03"]
    capsys.readouterr()
    args = ["retention", "--retention", "1m=2d", "--output", out,
            "--now", "2024-05-04T12:00:00Z"]
    assert cli.main([*args, "--dry-run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("would delete ") and \
        printed[0].endswith("slice_length=1m/date=2024-05-01")
    assert printed[-1] == "dry run as of 2024-05-04T12:00:00Z"
    assert _minute_days(out) == ["2024-05-01", "2024-05-02", "2024-05-03"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "deleted " in printed and "maintained slices" in printed
    assert _minute_days(out) == ["2024-05-02", "2024-05-03"]


def test_retention_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["retention", "--retention", "1m=2x", "--output",
                     str(tmp_path)]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == (
        "topk: error: bad duration '2x': expected a positive integer and a "
        "unit m, h or d, e.g. 1m, 1h, 30d\n")
    assert cli.main(["retention", "--retention", "1m=2d"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == (
        "topk: error: nothing to do: give --output and/or --bq-dataset\n")
