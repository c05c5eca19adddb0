"""The BigQuery sink and query backend end to end, against the emulator.

One batch run writes the same tables to Parquet and to BigQuery
(``--sink parquet,bigquery``, file loads): the BigQuery tables are created
as specified and hold exactly the Parquet rows; ``topk query --backend
bigquery`` answers like ``--backend duckdb`` and like the brute-force
oracle. Then, on a copy: a rerun of the batch and two stream replays
(streaming inserts; the second replay's panes hold more than the first's)
append rows, yet every answer stays exact, and so do the docs' BigQuery
SQL snippets, run as pasted. Retention deletes the same rows from both
backends. Bad configuration fails in one line.
"""
import collections
import datetime as dt
import json
import os
import random
import re
import shutil

import apache_beam as beam
import pytest
from google.cloud import bigquery
from apache_beam.options.pipeline_options import PipelineOptions

from topk.connectors.bigquery import client as bigquery_client
from topk.connectors.bigquery import tables as bigquery_tables
from topk import cli
from topk.loadgen import generator
from topk.storage import tables
from topk.storage.layout import RANKED_WINDOWS, SKETCHES, SLICES
from topk.pipelines import batch
from topk.sinks import bigquery as sink
from topk.sources.files import ReadEventFiles
from topk.transforms.parse import ParseEvents

import oracle  # tests/ is on sys.path (conftest.py)

MINUTE, HOUR, DAY = oracle.MINUTE_MS, oracle.HOUR_MS, oracle.DAY_MS
DAY1 = 19844 * DAY  # 2024-05-01T00:00:00Z
TABLES = (RANKED_WINDOWS, SLICES, SKETCHES)
BIGQUERY_DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "docs", "bigquery.md")


def iso(ms: int) -> str:
    return (oracle._EPOCH + dt.timedelta(milliseconds=ms)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def generate(path, events, start, hours, seed) -> bytes:
    generator.write_json_lines(generator.GeneratorConfig(
        events=events, items=25, zipf=0.8, start=start,
        rate=events / (hours * 3600), duplicate_share=0.02,
        malformed_share=0.01, seed=seed), str(path))
    with open(path, "rb") as f:
        return f.read()


def write_lines(path, data: bytes, fraction: float = 1.0) -> None:
    lines = data.splitlines(keepends=True)
    with open(path, "wb") as f:
        f.write(b"".join(lines[:int(len(lines) * fraction)]))


def unique_events(*blocks: bytes):
    return oracle.dedup(oracle.parse_block(b"".join(blocks))[0])


def bq_flags(emulator, dataset, method="FILE_LOADS"):
    return [f"--bq_dataset={dataset}", f"--bq_project={emulator.project}",
            f"--bq_endpoint={emulator.endpoint}",
            f"--bq_write_method={method}"]


def pipeline_flags(output, tmp):
    return [f"--output={output}", "--windows=1h,1d/1h", "--k=5",
            "--item_shards=2", "--dedup_shards=2", f"--temp_location={tmp}"]


def run_as_stream(input_glob, flags) -> None:
    """What a bounded ``topk stream`` run writes (``source = stream`` rows,
    through ``batch.add_top_k_tables``), with files instead of Kafka."""
    options = PipelineOptions([*flags, "--runner=FnApiRunner"])
    pipeline = beam.Pipeline(options=options)
    parsed = (pipeline | "ReadFiles" >> ReadEventFiles(input_glob)
              | "ParseEvents" >> ParseEvents())
    batch.add_top_k_tables(parsed, options, "stream", "replay")
    pipeline.run().wait_until_finish()


def create_dataset(emulator, dataset):
    client, target = bigquery_client.connect(
        emulator.project, dataset, endpoint=emulator.endpoint,
        check_dataset=False)
    client.create_dataset(target.dataset_id)
    return client, target


def copy_dataset(emulator, source, dataset):
    """A new dataset with the output tables of ``source`` and their rows."""
    client, target = create_dataset(emulator, dataset)
    bigquery_tables.ensure_tables(client, target, TABLES)
    for table in TABLES:
        client.query(f"INSERT INTO `{target.table_id(table)}` SELECT * FROM "
                     f"`{source.table_id(table)}`").result()
    return client, target


def normalized(rows, names):
    """Rows as a multiset of tuples, instants as epoch microseconds."""
    def value(v):
        if isinstance(v, dt.datetime):
            return round(v.timestamp() * 1_000_000)
        return v
    return collections.Counter(tuple(value(r[n]) for n in names)
                               for r in rows)


def bigquery_rows(client, target, table):
    names = bigquery_tables.TABLES[table].arrow_schema.names
    rows = client.query(f"SELECT * FROM `{target.table_id(table)}`").to_arrow(
        create_bqstorage_client=False).to_pylist()
    return normalized(rows, names)


def parquet_rows(output, table):
    names = bigquery_tables.TABLES[table].arrow_schema.names
    rows = tables.dataset(output, table).to_table(columns=names).to_pylist()
    return normalized(rows, names)


def query(capsys, *args):
    assert cli.main(["query", "--format", "json", *args]) == 0
    return [tuple(r.values()) for r in json.loads(capsys.readouterr().out)]


def bigquery_args(emulator, dataset):
    return ["--backend", "bigquery", "--bq-dataset", dataset, "--bq-project",
            emulator.project, "--bq-endpoint", emulator.endpoint]


def ranges(first_day: int, days: int, count: int, seed: int):
    """Fixed shapes (whole days, the docs' hours, across midnight) and
    random minute-aligned ranges within the data's days."""
    out = [(first_day, first_day + days * DAY),
           (first_day + 9 * HOUR + 17 * MINUTE,
            first_day + 13 * HOUR + 42 * MINUTE),
           (first_day + DAY - 30 * MINUTE, first_day + DAY + 75 * MINUTE),
           (first_day - HOUR, first_day + days * DAY + HOUR)]
    rng = random.Random(seed)
    for _ in range(count):
        start = first_day + rng.randrange(days * 24 * 60) * MINUTE
        out.append((start, start + rng.randrange(1, 36 * 60) * MINUTE))
    return out


def test_parse_sinks():
    assert sink.parse_sinks("parquet") == ["parquet"]
    assert sink.parse_sinks(" bigquery, parquet,bigquery") == [
        "bigquery", "parquet"]
    for bad in ("", "bq", "parquet,,csv"):
        with pytest.raises(ValueError, match="choose one or more of parquet, "
                           "bigquery"):
            sink.parse_sinks(bad)
    with pytest.raises(ValueError, match="FILE_LOADS or STREAMING_INSERTS"):
        sink.WriteBigQueryTables(bigquery_client.Target("p-roject", "d"),
                                 "STORAGE_WRITE_API")


def check_exact_answers(capsys, bigquery, output, unique, k, ranges, types):
    """``topk query`` with both backends answers every range (event types
    in turn) exactly like the oracle; returns the query arguments used."""
    cases = []
    for i, (start, end) in enumerate(ranges):
        etype = types[i % len(types)]
        args = ["--k", str(k), "--start", iso(start), "--end", iso(end)] + (
            ["--event-type", etype] if etype else [])
        want = [tuple(r) for r in oracle.topk(unique, k, start, end, etype)]
        assert query(capsys, *bigquery, *args) == want, args
        assert query(capsys, "--output", output, *args) == want, args
        cases.append(args)
    return cases


@pytest.fixture(scope="module")
def run(bigquery_emulator, tmp_path_factory):
    """One batch run of day 1 (exact and cms) into Parquet and BigQuery."""
    tmp = tmp_path_factory.mktemp("bq-sink")
    day1 = generate(tmp / "day1.jsonl", 1500, "2024-05-01T00:00:00Z", 24, 11)
    with bigquery_emulator.configured() as emulator:
        client, target = create_dataset(emulator, "batch_run")
        batch.run([f"--input={tmp / 'day1.jsonl'}",
                   *pipeline_flags(tmp / "out", tmp / "temp"),
                   "--method=exact,cms", "--sink=parquet,bigquery",
                   *bq_flags(emulator, "batch_run")])
        yield collections.namedtuple(
            "Run", "emulator client target output tmp day1")(
            emulator, client, target, str(tmp / "out"), tmp, day1)


@pytest.mark.integration
def test_tables_are_created_partitioned_and_clustered(run):
    expected = {
        RANKED_WINDOWS: ("window_start",
                         ["window_length", "method", "event_type", "item_id"]),
        SLICES: ("slice_start", ["slice_length", "event_type", "item_id"]),
        SKETCHES: ("slice_start", ["slice_length", "method", "event_type"]),
    }
    for table, (partition_field, clustering) in expected.items():
        got = run.client.get_table(run.target.table_id(table))
        arrow = bigquery_tables.TABLES[table].arrow_schema
        assert [f.name for f in got.schema] == arrow.names
        assert [f.mode for f in got.schema] == [
            "NULLABLE" if f.nullable else "REQUIRED" for f in arrow]
        assert (got.time_partitioning.type_, got.time_partitioning.field,
                got.time_partitioning.expiration_ms) == (
            "DAY", partition_field, None)
        assert got.clustering_fields == clustering
    types = {f.name: f.field_type for t in TABLES
             for f in run.client.get_table(run.target.table_id(t)).schema}
    assert {n: types[n] for n in ("window_start", "slide", "rank", "count",
                                  "sketch", "emitted_at")} == {
        "window_start": "TIMESTAMP", "slide": "STRING", "rank": "INT64",
        "count": "INT64", "sketch": "BYTES", "emitted_at": "TIMESTAMP"}


@pytest.mark.integration
def test_bigquery_rows_equal_the_parquet_rows_of_the_same_run(run):
    for table in TABLES:
        want = parquet_rows(run.output, table)
        assert sum(want.values()) > 100, table
        assert bigquery_rows(run.client, run.target, table) == want, table


@pytest.mark.integration
def test_bigquery_answers_equal_duckdb_and_the_oracle(run, capsys):
    bq = bigquery_args(run.emulator, "batch_run")
    cases = check_exact_answers(capsys, bq, run.output, unique_events(
        run.day1), 7, ranges(DAY1, 1, 6, seed=3), (None, "click", "play"))
    for args in cases:
        approx = ["--method", "cms", *args]
        assert query(capsys, *bq, *approx) == query(
            capsys, "--output", run.output, *approx)


@pytest.mark.integration
def test_rerun_and_stream_replays_never_double_count(run, capsys):
    """On a copy of the run: the batch again (bigquery only), then two
    stream replays of day 1's first half and day 2 (the first with half of
    day 2, like an early pane; the second with all of it)."""
    tmp, emulator = run.tmp, run.emulator
    day2 = generate(tmp / "day2.jsonl", 800, "2024-05-02T00:00:00Z", 12, 12)
    for name, day2_share in (("replay1", 0.5), ("replay2", 1.0)):
        os.makedirs(tmp / name)
        write_lines(tmp / name / "day1.jsonl", run.day1, 0.5)
        write_lines(tmp / name / "day2.jsonl", day2, day2_share)
    output = str(tmp / "replayed")
    shutil.copytree(run.output, output)
    client, target = copy_dataset(emulator, run.target, "replayed")
    batch.run([f"--input={tmp / 'day1.jsonl'}",
               *pipeline_flags(tmp / "unused", tmp / "temp"),
               "--method=exact,cms", "--sink=bigquery",
               *bq_flags(emulator, "replayed")])
    for name in ("replay1", "replay2"):
        run_as_stream(str(tmp / name / "*.jsonl"), [
            *pipeline_flags(output, tmp / "temp"), "--sink=parquet,bigquery",
            *bq_flags(emulator, "replayed", "STREAMING_INSERTS")])

    # Every write appended: two batch copies, stream rows of both replays.
    [counts] = client.query(
        f"SELECT COUNTIF(source = 'batch') AS batch_rows, "
        f"COUNTIF(source = 'stream') AS stream_rows "
        f"FROM `{target.table_id(SLICES)}`").result()
    batch_rows = sum(parquet_rows(run.output, SLICES).values())
    assert counts["batch_rows"] == 2 * batch_rows
    assert counts["stream_rows"] > batch_rows // 2

    unique = unique_events(run.day1, day2)
    bq = bigquery_args(emulator, "replayed")
    check_exact_answers(capsys, bq, output, unique, 6, ranges(
        DAY1, 2, 5, seed=4), (None, "play", "click"))
    approx = ["--method", "cms", "--k", "5", "--start", iso(DAY1), "--end",
              iso(DAY1 + DAY)]
    assert query(capsys, *bq, *approx) == query(
        capsys, "--output", run.output, *approx)
    check_doc_sql(client, target, unique, run.output)


def doc_sql_blocks() -> list[str]:
    """The ready-to-paste SQL blocks of docs/bigquery.md's SQL section, in
    order: the range top 10, then the trending query."""
    with open(BIGQUERY_DOC, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("\n## SQL\n"):]
    section = section.split("\n## ")[1]  # up to the next section
    return [b for b in re.findall(r"```sql\n(.*?)```", section, re.S)
            if "PROJECT.DATASET" in b]


def check_doc_sql(client, target, unique, batch_output) -> None:
    """The docs' ready-to-paste BigQuery SQL, run on the replayed dataset
    (rerun and stream panes included), answers exactly."""
    top, trending = ([dict(r) for r in client.query(sql.replace(
        "PROJECT.DATASET", target.dataset_id)).result()]
        for sql in doc_sql_blocks())
    start, end = DAY1 + 9 * HOUR + 17 * MINUTE, DAY1 + 13 * HOUR + 42 * MINUTE
    assert len(top) == 10 and [(r["item_id"], r["count"]) for r in top] == [
        (i, c) for _, i, c in oracle.topk(unique, 10, start, end)]
    # Trending: the batch run's 1h top-5 of 13:00 against 12:00.
    rows = [r for r in tables.dataset(batch_output, RANKED_WINDOWS)
            .to_table().to_pylist()
            if r["window_spec"] == "1h" and r["method"] == "exact"
            and r["event_type"] == "*"]
    rank_at = {(r["window_start"].timestamp() * 1000, r["item_id"]): r["rank"]
               for r in rows}
    current = DAY1 + 13 * HOUR
    want = []
    for (start_ms, item), rank in rank_at.items():
        if start_ms == current:
            previous = rank_at.get((current - HOUR, item))
            want.append((item, previous, rank,
                         None if previous is None else previous - rank))
    want.sort(key=lambda r: (r[3] is not None, -(r[3] or 0), r[2]))
    # New entries, climbers and fallers: the whole order is tested.
    assert len(want) == 5 and {None, 2, -1} <= {r[3] for r in want}
    assert [(r["item_id"], r["previous_rank"], r["rank"], r["climbed"])
            for r in trending] == want


@pytest.mark.integration
def test_retention_deletes_the_same_rows_from_both_backends(run):
    """``topk retention`` on a copy of each backend: minute and
    hour data of day 1 expire, day slices stay (partition expiration)."""
    output = str(run.tmp / "retained")
    shutil.copytree(run.output, output)
    client, target = copy_dataset(run.emulator, run.target, "retained")
    args = ["--retention", "1m=1d,1h=1d,1d=3d", "--now",
            "2024-05-03T00:00:00Z"]
    assert cli.main(["retention", *args, "--output", output]) == 0
    assert cli.main(["retention", *args, "--bq-dataset", "retained",
                     "--bq-project", run.emulator.project, "--bq-endpoint",
                     run.emulator.endpoint]) == 0
    for table in TABLES:
        got = client.get_table(target.table_id(table))
        assert got.time_partitioning.expiration_ms == 3 * DAY
        want = parquet_rows(output, table)
        assert bigquery_rows(client, target, table) == want, table
    lengths = collections.Counter(row[1] for row in parquet_rows(
        output, SLICES).elements())
    assert set(lengths) == {"1d"} and not parquet_rows(output, RANKED_WINDOWS)
    assert sum(parquet_rows(run.output, SLICES).values()) > sum(
        lengths.values())


def error_of(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.integration
def test_bad_configuration_fails_in_one_line(run, capsys, tmp_path,
                                             monkeypatch):
    emulator = run.emulator
    day = ["--k", "3", "--start", "2024-05-01T00:00:00Z", "--end",
           "2024-05-02T00:00:00Z"]
    commands = {  # dataset, endpoint -> argv
        "query": lambda dataset, endpoint: [
            "query", *day, "--backend", "bigquery", "--bq-dataset", dataset,
            "--bq-endpoint", endpoint],
        "batch": lambda dataset, endpoint: [
            "batch", f"--input={run.tmp / 'day1.jsonl'}",
            f"--output={tmp_path / 'out'}", f"--temp_location={tmp_path}",
            "--sink=bigquery", f"--bq_dataset={dataset}",
            f"--bq_endpoint={endpoint}"],
    }
    for argv in commands.values():
        assert "BigQuery dataset topk-test:absent not found: create it " \
            "first (bq mk --dataset topk-test:absent)" in error_of(
                capsys, argv("absent", emulator.endpoint))
        # Port 9 (discard): nothing listens; fails at once, no retries.
        assert "cannot reach BigQuery at http://127.0.0.1:9: [Errno 111] " \
            "Connection refused" in error_of(
                capsys, argv("batch_run", "127.0.0.1:9"))
        with monkeypatch.context() as mp:
            mp.setenv("GOOGLE_APPLICATION_CREDENTIALS",
                      str(tmp_path / "missing.json"))
            assert "no usable Google Cloud credentials: File " in error_of(
                capsys, argv("batch_run", emulator.endpoint))
            bad = tmp_path / "bad.json"
            bad.write_text('{"type": "service_account"}')
            mp.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(bad))
            assert "no usable Google Cloud credentials: " in error_of(
                capsys, argv("batch_run", emulator.endpoint))
    assert "--output is required with --backend duckdb" in error_of(
        capsys, ["query", *day])
    assert "no BigQuery dataset given (--bq-dataset)" in error_of(
        capsys, ["query", *day, "--backend", "bigquery"])
    batch_argv = commands["batch"]("batch_run", emulator.endpoint)
    assert "bad --sink 'bq'" in error_of(capsys, [*batch_argv, "--sink=bq"])
    assert "FILE_LOADS needs --temp_location" in error_of(capsys, [
        a for a in batch_argv if not a.startswith("--temp_location")])


@pytest.mark.integration
def test_a_table_of_an_older_topk_gets_the_new_columns(bigquery_emulator):
    spec = bigquery_tables.TABLES[RANKED_WINDOWS]
    with bigquery_emulator.configured() as emulator:
        client, target = create_dataset(emulator, "older")
        resource = bigquery_tables.table_resource(spec, target)
        fields = resource["schema"]["fields"]
        assert fields[-1] == {"name": "input_watermark",
                              "type": "TIMESTAMP", "mode": "NULLABLE"}
        client.create_table(bigquery.Table.from_api_repr(
            dict(resource, schema={"fields": fields[:-1]})))
        lines = bigquery_tables.ensure_tables(client, target,
                                              [RANKED_WINDOWS])
        table_id = target.table_id(RANKED_WINDOWS)
        assert lines == [f"added input_watermark to {table_id}",
                         f"checked {table_id}"]
        got = client.get_table(table_id)
    assert [f.name for f in got.schema] == [f["name"] for f in fields]
