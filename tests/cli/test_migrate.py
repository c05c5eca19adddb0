"""``topk migrate``: an output of the previous version (plain
Hive-partitioned Parquet) is refused with a one-line hint, converted by one
command, and then answers the same queries as a fresh run."""
import json
import os

import pyarrow.compute as pc
import pyarrow.parquet as pq

from topk import cli
from topk.storage import tables

T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z
QUERY = ["query", "--k", "3", "--start", "2024-05-01T00:00:00Z", "--end",
         "2024-05-02T00:00:00Z", "--format", "json"]


def _as_previous_version(out: str, legacy: str) -> None:
    """The slices of a fresh output rewritten the way the previous version
    laid them out: Hive directories of plain Parquet files, no Delta log."""
    rows = tables.dataset(out, "slices").to_table()
    for r in rows.select(["slice_length", "date"]).group_by(
            ["slice_length", "date"]).aggregate([]).to_pylist():
        part = rows.filter(
            (pc.field("slice_length") == r["slice_length"])
            & (pc.field("date") == r["date"]))
        path = os.path.join(legacy, "slices", f"slice_length={r['slice_length']}",
                            f"date={r['date']}", "part-batch.parquet")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(part.drop_columns(["slice_length", "date"]), path)


def test_migrate_converts_an_old_output(tmp_path, capsys):
    events, out, legacy = (str(tmp_path / n) for n in ("ev.jsonl", "out",
                                                       "legacy"))
    with open(events, "w") as f:
        for i in range(500):
            f.write(json.dumps({"event_id": f"e{i}", "item_id": f"i{i % 7}",
                                "event_type": "click", "ts": T0 + i * 60_000})
                    + "\n")
    assert cli.main(["batch", "--input", events, "--output", out,
                     "--windows", "1h", "--k", "3"]) == 0
    capsys.readouterr()
    assert cli.main([*QUERY, "--output", out]) == 0
    fresh = capsys.readouterr().out
    _as_previous_version(out, legacy)

    assert cli.main([*QUERY, "--output", legacy]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"topk migrate --output {legacy}" in err
    assert cli.main(["migrate", "--output", legacy]) == 0
    assert "converted slices" in capsys.readouterr().out
    assert cli.main([*QUERY, "--output", legacy]) == 0
    assert capsys.readouterr().out == fresh
    assert os.path.isdir(os.path.join(legacy, ".slices.parquet-backup"))
