"""The bounded-run sink: rows staged by workers, committed once to the
output's Delta tables; reruns replace the rows the run owns."""
import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from topk.core import schema
from topk.core.windows import parse_time
from topk.sinks import parquet
from topk.storage import layout, tables

T0 = parse_time("2024-05-01T00:00:00Z")


def test_atomic_write_leaves_no_temp_files_and_replaces(tmp_path):
    path = str(tmp_path / "t" / "part.parquet")
    parquet.write_parquet_atomically(pa.table({"a": [1]}), path)
    parquet.write_parquet_atomically(pa.table({"a": [2]}), path)
    assert os.listdir(tmp_path / "t") == ["part.parquet"]
    assert pq.read_table(path)["a"].to_pylist() == [2]


def slices(counts, emitted_at) -> pa.Table:
    """1m slice rows: ``counts`` = [(minute index, item, count)]."""
    return pa.Table.from_pylist([
        {"slice_start": T0 + m * 60_000, "slice_length": "1m",
         "event_type": "play", "item_id": item, "count": n,
         "source": "batch", "emitted_at": emitted_at}
        for m, item, n in counts], schema=schema.SLICES_SCHEMA)


def dead(raw) -> pa.Table:
    return pa.table({"raw": raw, "reason": ["bad"] * len(raw),
                     "source": ["f"] * len(raw)},
                    schema=schema.DEAD_LETTER_SCHEMA)


def run(output, batches, dead_letters, input_id):
    from apache_beam.testing.test_pipeline import TestPipeline
    with TestPipeline(runner="FnApiRunner") as p:
        _ = {layout.SLICES: p | "S" >> beam.Create(batches),
             layout.DEAD_LETTERS: p | "D" >> beam.Create(dead_letters)} | (
            parquet.WriteOutputTables(output, input_id=input_id))


def committed(output, table):
    return sorted((r.get("item_id") or r["raw"], r.get("count"))
                  for r in tables.dataset(output, table).to_table()
                  .to_pylist())


def test_one_commit_per_run_and_reruns_replace(tmp_path):
    out = str(tmp_path)
    batches = [slices([(0, "a", 2), (1, "b", 1)], T0),
               slices([(2, "a", 5)], T0)]
    for _ in range(2):
        run(out, batches, [dead(["x", "y"])], "input-1")
    history = tables.history(out).to_pylist()
    assert [h["source"] for h in history] == ["batch", "batch"]
    assert committed(out, layout.SLICES) == [("a", 2), ("a", 5), ("b", 1)]
    assert committed(out, layout.DEAD_LETTERS) == [("x", None), ("y", None)]
    # Another input's run over other minutes keeps the first run's rows.
    run(out, [slices([(60, "c", 4)], T0)], [dead(["z"])], "input-2")
    assert committed(out, layout.SLICES) == [
        ("a", 2), ("a", 5), ("b", 1), ("c", 4)]
    assert committed(out, layout.DEAD_LETTERS) == [
        ("x", None), ("y", None), ("z", None)]
    assert not os.path.exists(os.path.join(out, tables.STAGING))


def test_staging_flushes_by_size_and_commits_the_same_rows(tmp_path,
                                                           monkeypatch):
    """A bundle holding a whole output is staged in pieces, not held: with
    a one-byte flush threshold every batch becomes its own staged file, and
    the committed rows equal those of the default threshold."""
    import json
    from topk import cli
    events = tmp_path / "ev.jsonl"
    t0 = parse_time("2024-05-01T00:00:00Z")
    events.write_text("".join(json.dumps(
        {"event_id": f"e{i}", "item_id": f"i{i % 13}", "event_type": "play",
         "ts": t0 + i * 7_000}) + "\n" for i in range(3000)))

    staged = []
    staging_dir = tables.staging_dir

    def counting_staging_dir(output, run_id, table):
        staged.append(table)  # one call per staged file
        return staging_dir(output, run_id, table)

    monkeypatch.setattr(parquet.output_tables, "staging_dir",
                        counting_staging_dir)

    def run(out, flush_bytes):
        staged.clear()
        monkeypatch.setattr(parquet, "STAGE_FLUSH_BYTES", flush_bytes)
        assert cli.main(["batch", "--input", str(events), "--output",
                         str(out), "--windows", "1m,1h/1m", "--k", "3"]) == 0
        return {t: sorted(map(str, tables.dataset(str(out), t).to_table()
                              .drop_columns(["emitted_at"]).to_pylist()))
                for t in (layout.RANKED_WINDOWS, layout.SLICES)}, len(staged)

    default_rows, default_files = run(tmp_path / "default",
                                      parquet.STAGE_FLUSH_BYTES)
    flushed_rows, flushed_files = run(tmp_path / "small", 1)
    assert flushed_rows == default_rows
    assert flushed_files > default_files
