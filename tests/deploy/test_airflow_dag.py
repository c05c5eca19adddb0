"""deploy/airflow/topk_reprocess_dag.py, without installing Airflow.

Airflow (apache-airflow 3.x: the core, the task SDK, the standard provider
and their many dependencies) is not installed for this. Instead the DAG file
is executed against stand-ins of the few Airflow classes it uses, whose
constructors take the keyword arguments of the real ones (a misspelt
argument fails), its bash command is rendered with Jinja the way Airflow
renders templates (an unknown template variable fails), and the rendered
command is run for real: it must rebuild the day before the logical date
from an archive, so that the query layer answers it exactly.
"""
import datetime as dt
import os
import runpy
import shlex
import subprocess
import sys
import types

import jinja2
import pytest

import oracle
from archive_files import write_archive
from deploy_checks import REPO, check_topk_command
from topk.loadgen import generator
from topk import query

DAG_FILE = os.path.join(REPO, "deploy", "airflow", "topk_reprocess_dag.py")


class _DAG:
    """``airflow.DAG``'s constructor arguments that the file may use."""
    current = None

    def __init__(self, dag_id, *, description=None, schedule=None,
                 start_date=None, end_date=None, catchup=None,
                 max_active_runs=None, params=None, default_args=None,
                 tags=None, doc_md=None, dagrun_timeout=None):
        self.dag_id, self.schedule, self.params = dag_id, schedule, params
        self.start_date, self.default_args = start_date, default_args
        self.tasks = []

    def __enter__(self):
        _DAG.current = self
        return self

    def __exit__(self, *exc):
        _DAG.current = None


class _BashOperator:

    def __init__(self, *, task_id, bash_command, env=None, cwd=None,
                 execution_timeout=None, retries=None, retry_delay=None):
        self.task_id, self.bash_command = task_id, bash_command
        _DAG.current.tasks.append(self)


class _CronTriggerTimetable:

    def __init__(self, cron, *, timezone, interval=dt.timedelta(),
                 run_immediately=False):
        self.cron, self.timezone = cron, timezone


def _stub_airflow(monkeypatch):
    modules = {
        "airflow": {"DAG": _DAG},
        "airflow.timetables": {},
        "airflow.timetables.trigger": {
            "CronTriggerTimetable": _CronTriggerTimetable},
        "airflow.providers": {},
        "airflow.providers.standard": {},
        "airflow.providers.standard.operators": {},
        "airflow.providers.standard.operators.bash": {
            "BashOperator": _BashOperator},
    }
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)


@pytest.fixture
def dag(monkeypatch):
    _stub_airflow(monkeypatch)
    monkeypatch.delenv("TOPK_COMMAND", raising=False)
    return runpy.run_path(DAG_FILE)["dag"]


def _render(template: str, logical_date: dt.date, params: dict) -> str:
    """Render like Airflow: ``ds`` and ``macros.ds_add`` of the logical
    date, the DAG's params; anything else undefined is an error."""
    def ds_add(ds, days):
        return (dt.date.fromisoformat(ds) + dt.timedelta(days)).isoformat()
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return env.from_string(template).render(
        ds=logical_date.isoformat(), params=params,
        macros=types.SimpleNamespace(ds_add=ds_add))


def test_dag_runs_daily_in_utc(dag):
    assert dag.dag_id == "topk_reprocess_daily"
    assert dag.schedule.cron == "0 2 * * *" and dag.schedule.timezone == "UTC"
    assert dag.start_date.tzinfo is not None
    [task] = dag.tasks
    assert task.task_id == "reprocess_yesterday"


def test_rendered_command_parses_with_the_cli(dag):
    [task] = dag.tasks
    argv = shlex.split(_render(task.bash_command, dt.date(2024, 5, 2),
                               dag.params))
    assert argv[0] == "topk"
    args, options = check_topk_command(argv[1:])
    values = options.get_all_options()
    assert args.command == "batch"
    assert (values["archive_start"], values["archive_end"]) == (
        "2024-05-01", "2024-05-02")
    assert values["from_archive"] == values["output"] == \
        dag.params["output"]


def test_rendered_command_rebuilds_yesterday(dag, tmp_path):
    out = str(tmp_path / "out")
    config = generator.GeneratorConfig(events=600, items=25, rate=0.01,
                                       seed=9)
    events = generator.generate_events(config)
    # Archive with a replayed copy of every tenth event.
    write_archive(out, events, "a")
    write_archive(out, events.take(list(range(0, 600, 10))), "b")
    [task] = dag.tasks
    params = dict(dag.params, output=out, windows="1h,1d", k=5)
    command = _render(task.bash_command, dt.date(2024, 5, 2), params)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + ":"
               + os.environ["PATH"])
    subprocess.run(["bash", "-c", command], env=env, check=True,
                   timeout=300, stdin=subprocess.DEVNULL)

    truth = oracle.dedup(oracle.Event(**r) for r in events.to_pylist())
    day = oracle._utc_ms(dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc))
    got = query.topk(out, 5, day, day + oracle.DAY_MS)
    assert [(r.rank, r.item_id, r.count) for r in got] == oracle.topk(
        truth, 5, day, day + oracle.DAY_MS)
