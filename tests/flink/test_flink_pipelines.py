"""The project's pipelines on a real Flink cluster (FlinkRunner, LOOPBACK or
a worker pool's SDK processes, parallelism 2) write exactly the tables the
local runner writes.

Compared: every row of ``ranked_windows``, ``slices`` and ``dead_letters``,
all columns but ``emitted_at`` (the wall-clock time a row was written).
"""
import os
import uuid

import pytest

from archive_files import write_archive
from topk import cli
from topk.loadgen import generator, producer
from topk.storage import layout as output_layout
from topk.storage import tables

pytestmark = pytest.mark.integration

WINDOWS = ["--windows", "1h,1d,1h/1m,1d/1h", "--k", "5"]
CONFIG = generator.GeneratorConfig(
    events=20_000, items=300, rate=2, duplicate_share=0.05,
    malformed_share=0.01, ts_format="mixed", seed=3)


def _rows(out: str, table: str) -> list[tuple]:
    exclude = "" if table == output_layout.DEAD_LETTERS else \
        " EXCLUDE (emitted_at)"
    return tables.connect(out, [table]).sql(
        f"SELECT *{exclude} FROM {table} ORDER BY ALL").fetchall()


def _assert_same_tables(flink_out: str, local_out: str, dead_letters=True):
    tables = [output_layout.RANKED_WINDOWS, output_layout.SLICES]
    if dead_letters:
        tables.append(output_layout.DEAD_LETTERS)
    for table in tables:
        on_flink, local = _rows(flink_out, table), _rows(local_out, table)
        assert local, table
        assert on_flink == local, table


def _assert_ran_on_flink(cluster, jobs_before: int) -> None:
    """One more job finished on the cluster, with operators at
    parallelism 2."""
    jobs = cluster.rest("/jobs/overview")["jobs"]
    assert len(jobs) == jobs_before + 1
    newest = max(jobs, key=lambda j: j["start-time"])
    assert newest["state"] == "FINISHED"
    vertices = cluster.rest(f"/jobs/{newest['jid']}")["vertices"]
    assert max(v["parallelism"] for v in vertices) == 2


def _run_both(cluster, capsys, tmp_path, argv,
              runner_args=None) -> tuple[str, str]:
    """Run ``topk argv`` locally and on Flink (``runner_args``, default
    LOOPBACK at parallelism 2); returns both outputs."""
    local, on_flink = str(tmp_path / "local"), str(tmp_path / "flink")
    assert cli.main([*argv, "--output", local]) == 0
    assert "on fn_runner" in capsys.readouterr().out
    jobs_before = len(cluster.rest("/jobs/overview")["jobs"])
    if runner_args is None:
        runner_args = cluster.beam_args(parallelism=2)
    assert cli.main([*argv, "--output", on_flink, *runner_args]) == 0
    assert "on portable_runner" in capsys.readouterr().out
    _assert_ran_on_flink(cluster, jobs_before)
    return on_flink, local


def test_cluster_health_and_options(flink_cluster):
    health = flink_cluster.sh("health", "--min-slots", "2")
    assert '"taskmanagers":1' in health and '"slots-total":4' in health
    args = flink_cluster.beam_args(parallelism=3)
    assert "--runner=FlinkRunner" in args and "--parallelism=3" in args
    assert f"--flink_master=127.0.0.1:{flink_cluster.rest_port}" in args
    jar = [a for a in args if a.startswith("--flink_job_server_jar=")]
    assert jar and os.path.isfile(jar[0].split("=", 1)[1])


def test_batch_on_flink_equals_local(flink_cluster, tmp_path, capsys):
    events = str(tmp_path / "events.jsonl")
    generator.write_json_lines(CONFIG, events)
    on_flink, local = _run_both(flink_cluster, capsys, tmp_path,
                                ["batch", "--input", events, *WINDOWS])
    _assert_same_tables(on_flink, local)


def test_bounded_kafka_stream_on_flink_equals_local(
        flink_cluster, kafka_broker, tmp_path, capsys):
    topic = f"flink-{uuid.uuid4().hex[:10]}"
    producer.produce(kafka_broker.bootstrap, topic, CONFIG,
                     events_per_message=7, partitions=3, progress=None)
    on_flink, local = _run_both(
        flink_cluster, capsys, tmp_path,
        ["stream", "--bootstrap", kafka_broker.bootstrap, "--topic", topic,
         "--bounded", *WINDOWS])
    _assert_same_tables(on_flink, local)


def test_bounded_kafka_stream_on_external_workers_equals_local(
        flink_cluster, worker_pool, kafka_broker, tmp_path, capsys):
    """As a real cluster runs it: the Python code in SDK worker processes
    a worker pool beside the TaskManager starts (EXTERNAL environment),
    two of them, not in the launching process."""
    topic = f"flink-ext-{uuid.uuid4().hex[:10]}"
    producer.produce(kafka_broker.bootstrap, topic, CONFIG,
                     events_per_message=7, partitions=3, progress=None)
    started = worker_pool.started()
    on_flink, local = _run_both(
        flink_cluster, capsys, tmp_path,
        ["stream", "--bootstrap", kafka_broker.bootstrap, "--topic", topic,
         "--bounded", *WINDOWS],
        runner_args=[*flink_cluster.beam_args(
            parallelism=2, worker_pool=worker_pool.address),
            "--sdk_worker_parallelism=2"])
    # Processes of the pool ran the job's Python (the runner may start
    # them per task in a bounded job: at least the two asked for).
    assert worker_pool.started() - started >= 2
    _assert_same_tables(on_flink, local)


def test_reprocessing_from_the_archive_on_flink_equals_local(
        flink_cluster, tmp_path, capsys):
    events = generator.generate_events(CONFIG)
    archive = str(tmp_path / "archive-output")
    # Two writers, the second replaying a tenth of the events.
    write_archive(archive, events, "a")
    write_archive(archive, events.slice(0, 2000), "b")
    on_flink, local = _run_both(
        flink_cluster, capsys, tmp_path,
        ["batch", "--from-archive", archive, "--archive-start",
         "2024-05-01", "--archive-end", "2024-05-02", *WINDOWS])
    _assert_same_tables(on_flink, local, dead_letters=False)
