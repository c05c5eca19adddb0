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
