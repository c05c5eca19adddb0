"""Shared fixtures."""
import os
import sys

# Tests import the package from the working tree even without an install,
# and the shared brute-force oracle (tests/oracle.py) as ``import oracle``
# (importlib mode puts no test folder on sys.path by itself).
_TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_TESTS))
sys.path.insert(0, _TESTS)

import pytest  # noqa: E402
from apache_beam.testing.test_pipeline import TestPipeline  # noqa: E402

#: Batch tests run on the FnApiRunner directly: the DirectRunner would first
#: try to download Prism, which cannot work offline.
LOCAL_RUNNER = "FnApiRunner"


@pytest.fixture
def pipeline():
    """A ``TestPipeline`` on the local batch runner; use as ``with pipeline
    as p:`` (running and waiting happen on exit)."""
    return TestPipeline(runner=LOCAL_RUNNER)


# --- A real Kafka broker for the Kafka source and producer tests -----------

class KafkaBroker:
    """A broker started by deploy/kafka/kafka.sh in a temporary dir.

    ``bootstrap`` is its address; ``stop()`` and ``start()`` restart it on
    the same dir and port (topics and offsets survive).
    """

    SCRIPT = os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "deploy", "kafka", "kafka.sh")

    def __init__(self, directory):
        self.dir = str(directory)
        self.bootstrap = None

    def _run(self, *args):
        import subprocess
        env = dict(os.environ, KAFKA_PROBE_PYTHON=sys.executable)
        proc = subprocess.run(
            ["bash", self.SCRIPT, *args, "--dir", self.dir], env=env,
            capture_output=True, text=True, timeout=300,
            stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"kafka.sh {' '.join(args)} failed:\n"
                               f"{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def start(self, port="") -> str:
        out = self._run("start", *(["--port", str(port)] if port != ""
                                   else []))
        for line in out.splitlines():
            if line.startswith("KAFKA_BOOTSTRAP="):
                self.bootstrap = line.split("=", 1)[1].strip()
        assert self.bootstrap, out
        return self.bootstrap

    def stop(self) -> None:
        self._run("stop")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """One real single-node Kafka broker for the whole test session, on a
    free port in a temporary dir; stopped at the end."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    broker.start(port=0)
    try:
        yield broker
    finally:
        broker.stop()


# --- A BigQuery emulator for the BigQuery sink and query backend tests ------

class BigQueryEmulator:
    """bqemulator started by deploy/bigquery/emulator.sh on free 127.0.0.1
    ports, in-memory, in a temporary dir.

    ``env`` is what ``emulator.sh start`` prints: ``BIGQUERY_EMULATOR_HOST``,
    ``GOOGLE_CLOUD_PROJECT`` and ``GOOGLE_APPLICATION_CREDENTIALS`` (an
    offline placeholder ADC file); ``endpoint`` and ``project`` are the first
    two. ``configured()`` sets them (and undoes every change the BigQuery
    code makes to the environment and to Beam's API base URL)."""

    SCRIPT = os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "deploy", "bigquery", "emulator.sh")
    PROJECT = "topk-test"

    def __init__(self, directory):
        self.dir = str(directory)
        self.env = {}

    def _run(self, *args):
        import subprocess
        proc = subprocess.run(
            ["bash", self.SCRIPT, *args, "--dir", self.dir], capture_output=True,
            text=True, timeout=600, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"emulator.sh {' '.join(args)} failed:\n"
                               f"{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def start(self) -> None:
        import socket
        ports = []
        for _ in range(2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        self._ports = ["--rest-port", str(ports[0])]
        out = self._run("start", *self._ports, "--grpc-port", str(ports[1]),
                        "--project", self.PROJECT)
        self.env = dict(line.split("=", 1) for line in out.splitlines()
                        if "=" in line)
        self.endpoint = self.env["BIGQUERY_EMULATOR_HOST"]
        self.project = self.env["GOOGLE_CLOUD_PROJECT"]

    def stop(self) -> None:
        self._run("stop", *self._ports)

    def configured(self):
        """A context manager: the emulator's environment, undone on exit."""
        import contextlib
        from apache_beam.io.gcp.internal.clients.bigquery import BigqueryV2

        @contextlib.contextmanager
        def configured():
            with pytest.MonkeyPatch.context() as mp:
                for name, value in self.env.items():
                    mp.setenv(name, value)
                mp.setattr(BigqueryV2, "BASE_URL", BigqueryV2.BASE_URL)
                yield self
        return configured()


@pytest.fixture(scope="session")
def bigquery_emulator(tmp_path_factory):
    """One BigQuery emulator for the whole test session (empty at start)."""
    emulator = BigQueryEmulator(tmp_path_factory.mktemp("bqemulator"))
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()
