"""``topk retention``: the retention tiers applied from the command line
(the policy itself: tests/storage/test_retention.py)."""
import os

from topk import cli


def _partition(root, table, outer, day):
    path = os.path.join(root, table, outer, f"date={day}")
    os.makedirs(path)
    open(os.path.join(path, "part-0.parquet"), "wb").close()
    return path


def test_retention_deletes_expired_partitions(tmp_path, capsys):
    out = str(tmp_path)
    old_minute = _partition(out, "slices", "slice_length=1m", "2024-05-01")
    new_minute = _partition(out, "slices", "slice_length=1m", "2024-05-09")
    old_hour = _partition(out, "slices", "slice_length=1h", "2024-05-01")
    args = ["retention", "--retention", "1m=2d,1h=30d", "--output", out,
            "--now", "2024-05-10T00:00:00Z"]
    assert cli.main([*args, "--dry-run"]) == 0
    assert capsys.readouterr().out == (
        f"would delete {old_minute}\ndry run as of 2024-05-10T00:00:00Z\n")
    assert os.path.isdir(old_minute)
    assert cli.main(args) == 0
    assert capsys.readouterr().out.startswith(f"deleted {old_minute}\n")
    assert [os.path.isdir(p) for p in (old_minute, new_minute, old_hour)] \
        == [False, True, True]


def test_retention_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["retention", "--retention", "1m=2x", "--output",
                     str(tmp_path)]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == (
        "topk: error: bad duration '2x': expected a positive integer and a "
        "unit m, h or d, e.g. 1m, 1h, 30d\n")
    assert cli.main(["retention", "--retention", "1m=2d"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == (
        "topk: error: nothing to do: give --output and/or --bq-dataset\n")
