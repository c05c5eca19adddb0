"""A real local Flink cluster (deploy/flink/flink.sh) for the whole session,
and a Beam worker pool beside it (helpers in cluster.py)."""
import pytest

from tests.flink.cluster import FlinkCluster, WorkerPool


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


@pytest.fixture(scope="session")
def worker_pool(tmp_path_factory):
    pool = WorkerPool(str(tmp_path_factory.mktemp("worker-pool") / "log"))
    try:
        yield pool
    finally:
        pool.stop()
