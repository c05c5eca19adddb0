"""A real local Flink cluster (``deploy/flink/flink.sh``) and a Beam worker
pool beside it, as helpers: the Flink tests' fixtures (conftest.py) and
``bench/kafka_throughput.py`` both start them."""
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import urllib.request

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "deploy", "flink", "flink.sh")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_pool_env() -> dict:
    """The environment of a Beam worker pool (``worker_pool_main``): it
    starts each SDK worker as ``python -c ...`` found on ``PATH``, so this
    interpreter's directory (the virtualenv's, with apache_beam and topk)
    goes first. Without it the workers die at import, and the job's tasks
    wait in INITIALIZING for ever."""
    bin_dir = os.path.dirname(sys.executable)
    return dict(os.environ,
                PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "")]))


class FlinkCluster:
    """A cluster started by ``flink.sh start`` with its own run dir."""

    def __init__(self, run_dir: str):
        self.env = dict(os.environ, TOPK_FLINK_RUN_DIR=run_dir)
        self.rest_port = None

    def sh(self, *args, timeout=300) -> str:
        proc = subprocess.run(["bash", SCRIPT, *args], env=self.env,
                              capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"flink.sh {' '.join(args)} failed:\n"
                               f"{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def start(self, tm_memory: str | None = None) -> None:
        self.rest_port = _free_port()
        self.sh("start", "--rest-port", str(self.rest_port), "--slots", "4",
                *(["--tm-memory", tm_memory] if tm_memory else []))

    def beam_args(self, parallelism: int = 2,
                  worker_pool: str | None = None) -> list[str]:
        """The Beam options that submit to this cluster (``flink.sh
        options``: FlinkRunner, LOOPBACK; with ``worker_pool``, a
        ``host:port`` of ``worker_pool_main``, EXTERNAL: an SDK worker
        process per task)."""
        environment = (["--environment_type", "EXTERNAL",
                        "--environment_config", worker_pool]
                       if worker_pool else [])
        return shlex.split(self.sh("options", "--parallelism",
                                   str(parallelism), *environment))

    def streaming_args(self, parallelism: int = 2,
                       checkpoint_ms: int = 2000,
                       worker_pool: str | None = None) -> list[str]:
        """``beam_args`` plus Beam's Flink options of an unbounded job with
        checkpoints every ``checkpoint_ms`` and restarts from the last one
        (the job server's ``FlinkPipelineOptions``, declared for the CLI
        by ``topk.pipelines.options.FlinkCheckpointOptions``).

        ``finish_bundle_before_checkpointing``: otherwise a bundle open at
        a checkpoint buffers its output in operator state until the next
        element reaches that operator, and the single Impulse element's
        partition plan may never leave ``PlanPartitions``: the stream
        then reads nothing."""
        return [*self.beam_args(parallelism, worker_pool),
                f"--checkpointing_interval={checkpoint_ms}",
                "--finish_bundle_before_checkpointing=true",
                "--number_of_execution_retries=20",
                "--execution_retry_delay=2000"]

    def rest(self, path: str, method: str = "GET"):
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.rest_port}{path}", method=method)
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.load(r)

    def jobs(self, *states: str) -> list[dict]:
        """The cluster's jobs (``/jobs/overview``), newest first, those in
        ``states`` if given."""
        jobs = sorted(self.rest("/jobs/overview")["jobs"],
                      key=lambda j: -j["start-time"])
        return [j for j in jobs if not states or j["state"] in states]

    def cancel_unfinished_jobs(self) -> None:
        for job in self.jobs("RUNNING", "RESTARTING", "CREATED",
                             "INITIALIZING"):
            self.rest(f"/jobs/{job['jid']}?mode=cancel", method="PATCH")

    def kill_taskmanager(self) -> str:
        """SIGKILL the TaskManager(s) (``flink.sh kill-taskmanager``);
        returns their pids."""
        return self.sh("kill-taskmanager").strip()

    def start_taskmanager(self) -> str:
        """Start a TaskManager and wait until it registers; returns its
        REST id."""
        return self.sh("start-taskmanager", "--timeout", "90").strip()


class WorkerPool:
    """A Beam worker pool (``worker_pool_main``) on a free port, as the
    TaskManagers of a real cluster run one beside them: an EXTERNAL
    environment's SDK workers are its child processes. ``started()``
    counts the SDK workers it has started (from its log). ``cwd`` is where
    the workers start, first on their ``sys.path`` (a bench run from a
    copy of the tree imports that copy's topk)."""

    def __init__(self, log_path: str, cwd: str | None = None):
        self.port = _free_port()
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m",
             "apache_beam.runners.worker.worker_pool_main",
             f"--service_port={self.port}"],
            env=worker_pool_env(), cwd=cwd, stdout=self._log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def started(self) -> int:
        with open(self.log_path) as f:
            return f.read().count("Starting worker with command")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(30)
        self._log.close()
