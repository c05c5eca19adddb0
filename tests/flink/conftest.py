"""A real local Flink cluster (deploy/flink/flink.sh) for the whole session."""
import json
import os
import shlex
import socket
import subprocess
import urllib.request

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "deploy", "flink", "flink.sh")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    def start(self) -> None:
        self.rest_port = _free_port()
        self.sh("start", "--rest-port", str(self.rest_port), "--slots", "4")

    def beam_args(self, parallelism: int = 2) -> list[str]:
        """The Beam options that submit to this cluster (``flink.sh
        options``: FlinkRunner, LOOPBACK)."""
        return shlex.split(self.sh("options", "--parallelism",
                                   str(parallelism)))

    def rest(self, path: str):
        with urllib.request.urlopen(
                f"http://127.0.0.1:{self.rest_port}{path}", timeout=10) as r:
            return json.load(r)


@pytest.fixture(scope="session")
def flink_cluster(tmp_path_factory):
    """Install (idempotent; cached under ~/.cache/topk/flink), start a
    JobManager + TaskManager with 4 slots on a free REST port, and stop it
    at the end of the session."""
    cluster = FlinkCluster(str(tmp_path_factory.mktemp("flink-run")))
    cluster.sh("install", timeout=1200)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.sh("stop")
