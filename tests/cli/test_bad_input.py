"""Bad input to the pipeline commands: one line naming the problem, exit
status 2, found before the work where it can be (issue: "bad input never
crashes"). Each case runs the real command on real files."""
import gzip
import json
import os

from topk import cli, query
from topk.storage import tables

T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z


def _events(n, start=0):
    return "".join(json.dumps({"event_id": f"e{i}", "item_id": f"i{i % 5}",
                               "event_type": "click", "ts": T0 + i * 1000})
                   + "\n" for i in range(start, start + n))


def _fails(argv, capsys, *needles):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("topk: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_a_gz_file_that_is_not_gzip(tmp_path, capsys):
    (tmp_path / "a.jsonl.gz").write_text(_events(3))
    _fails(["batch", "--input", str(tmp_path / "*.gz"), "--output",
            str(tmp_path / "out")], capsys, "a.jsonl.gz", "not a gzip file")
    assert not os.path.exists(tmp_path / "out")  # checked before any work


def test_a_truncated_gzip_is_a_dead_letter_not_a_crash(tmp_path, capsys):
    data = gzip.compress(_events(40_000).encode())
    (tmp_path / "a.jsonl.gz").write_bytes(data[:len(data) // 2])
    out = str(tmp_path / "out")
    assert cli.main(["batch", "--input", str(tmp_path / "a.jsonl.gz"),
                     "--output", out, "--windows", "1h", "--k", "3"]) == 0
    assert "1 dead letters" in capsys.readouterr().out


def test_a_directory_named_like_input_is_skipped(tmp_path, capsys):
    (tmp_path / "d.jsonl").mkdir()
    _fails(["batch", "--input", str(tmp_path / "*.jsonl"), "--output",
            str(tmp_path / "out")], capsys, "no input files match")


def test_markers_are_skipped_by_the_check_and_by_the_pipeline(tmp_path,
                                                              capsys):
    (tmp_path / "part-0.jsonl").write_text(_events(10))
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".part-0.jsonl.crc").write_bytes(b"\x00\xff")
    assert cli.main(["batch", "--input", str(tmp_path / "*"), "--output",
                     str(tmp_path / "out"), "--windows", "1h",
                     "--k", "3"]) == 0
    assert "10 valid events" in capsys.readouterr().out


def test_an_unwritable_output_is_found_before_the_work(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text(_events(3))
    blocker = tmp_path / "file"
    blocker.write_text("")
    _fails(["batch", "--input", str(tmp_path / "a.jsonl"), "--output",
            str(blocker / "out")], capsys, "--output", "not writable")


def test_a_misspelt_option_is_an_error_not_a_warning(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text(_events(3))
    _fails(["batch", "--input", str(tmp_path / "a.jsonl"), "--output",
            str(tmp_path / "out"), "--windwos", "1h"], capsys,
           "unknown option --windwos", "did you mean --windows?")


def test_input_that_is_mostly_rejected_fails(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text("not json\n" * 5 + _events(2))
    argv = ["batch", "--input", str(tmp_path / "a.jsonl"), "--output",
            str(tmp_path / "out"), "--windows", "1h", "--k", "3"]
    _fails(argv, capsys, "5 of 7 records", "--max-dead-letter-ratio")
    # The limit is the user's to move; the tables are written either way.
    assert cli.main(argv + ["--max-dead-letter-ratio", "0.9"]) == 0
    assert os.path.isdir(tmp_path / "out" / "dead_letters")


def test_demo_without_events(tmp_path, capsys):
    _fails(["demo", "--dir", str(tmp_path), "--events", "0"], capsys,
           "--events must be at least 1")


def test_a_relative_glob_in_the_working_directory(tmp_path, capsys,
                                                  monkeypatch):
    (tmp_path / "events.jsonl").write_text(_events(4))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["batch", "--input", "events*.jsonl", "--output", "out",
                     "--windows", "1h", "--k", "3"]) == 0
    assert "4 valid events" in capsys.readouterr().out


def test_a_run_lacking_events_of_committed_minutes_is_refused(tmp_path,
                                                             capsys):
    """Hourly files cut by arrival: the second holds one late event of the
    first file's hour. Committing it would replace that hour's committed
    minutes from the late event on with its own counts and lose the first
    file's events: refused, nothing committed; with --replace-span it
    commits (a corrected input)."""
    first, second = tmp_path / "h0.jsonl", tmp_path / "h1.jsonl"
    first.write_text(_events(3600))  # one an hour, a second apart
    late = json.dumps({"event_id": "late", "item_id": "i1",
                       "event_type": "click", "ts": T0 + 1800_000})
    second.write_text(late + "\n" + _events(3600, start=3600))
    out = str(tmp_path / "out")
    run = ["batch", "--output", out, "--windows", "1h", "--k", "3"]
    assert cli.main([*run, "--input", str(first)]) == 0
    capsys.readouterr()
    _fails([*run, "--input", str(second)], capsys,
           "30 committed minute(s)", "2024-05-01T00:30:00", "--replace-span")
    assert tables.history(out).num_rows == 1
    # Both files together hold every committed count: no refusal.
    assert cli.main([*run, "--input", str(tmp_path / "h*.jsonl")]) == 0
    assert query.topk(out, 1, T0, T0 + 3600_000)[0].count == 721
    # Replaced: minutes 00:30 on hold the second file's events only.
    assert cli.main([*run, "--input", str(second), "--replace-span"]) == 0
    assert query.topk(out, 1, T0, T0 + 3600_000)[0].count == 361
