"""Fixtures of the deployment-asset tests; helpers in deploy_checks.py."""
import os
import subprocess
import sys

import pytest

# The tests here import their helpers as ``import deploy_checks``.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from deploy_checks import FLINK_SH  # noqa: E402


@pytest.fixture(scope="session")
def operator_crds():
    """Directory of the Flink Kubernetes Operator's CRD YAML files, taken
    from its API jar on Maven Central by ``flink.sh crds`` (cached)."""
    proc = subprocess.run(["bash", FLINK_SH, "crds"], capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()
