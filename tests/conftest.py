"""Shared fixtures."""
import os
import sys

# Tests import the package from the working tree even without an install.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
