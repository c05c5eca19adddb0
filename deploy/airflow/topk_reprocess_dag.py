"""Airflow DAG: rebuild yesterday's top-K results from the raw event archive.

Every day at 02:00 UTC, ``topk batch --from-archive`` reprocesses the previous
UTC day (the precise path of the lambda architecture): the batch rows it
writes supersede what the stream wrote for that day. Copy this file into the
DAGs folder of an Airflow (2.4+ or 3.x) whose workers have ``topk`` installed
(``pip install topk-heavy-hitters``, or point ``TOPK_COMMAND`` at a wrapper
such as ``docker run ... topk-flink:latest topk``) and can read/write the
output directory. Trigger a backfill of any day with ``airflow dags backfill``
or ``airflow dags trigger --logical-date 2024-05-02T02:00:00+00:00``.

Params (override per run in the trigger form): ``output`` (the output
directory holding ``archive/``), ``windows``, ``k`` and ``extra_args`` (e.g.
the Flink or Dataflow runner options of README "Running on Flink/Dataflow").
"""
import datetime as dt
import os

from airflow import DAG
from airflow.timetables.trigger import CronTriggerTimetable

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator

TOPK = os.environ.get("TOPK_COMMAND", "topk")

# With CronTriggerTimetable the logical date ``ds`` is the trigger day (today,
# UTC): reprocess [yesterday, today).
COMMAND = (
    TOPK + " batch --from-archive '{{ params.output }}'"
    " --archive-start {{ macros.ds_add(ds, -1) }} --archive-end {{ ds }}"
    " --output '{{ params.output }}' --windows '{{ params.windows }}'"
    " --k {{ params.k }} {{ params.extra_args }}")

with DAG(
        dag_id="topk_reprocess_daily",
        description="Rebuild yesterday's exact top-K from the event archive",
        schedule=CronTriggerTimetable("0 2 * * *", timezone="UTC"),
        start_date=dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc),
        catchup=False,
        max_active_runs=1,
        params={"output": "/data/topk/out", "windows": "all", "k": 100,
                "extra_args": ""},
        default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=15)},
        tags=["topk"],
) as dag:
    BashOperator(task_id="reprocess_yesterday", bash_command=COMMAND,
                 execution_timeout=dt.timedelta(hours=6))
