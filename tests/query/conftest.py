"""Fixtures of the query tests: ``scenario_output`` and ``loaded_bigquery``
hold every run of ``query_scenario.SCENARIO`` (Parquet, the BigQuery
emulator); ``backends`` asks either backend a question."""
import os
import sys
import uuid

import pytest

# The query tests import the shared scenario as ``import query_scenario``.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from query_scenario import load_bigquery, runs, write_parquet  # noqa: E402
from topk import query as duckdb_backend  # noqa: E402
from topk.connectors.bigquery import client as bigquery_client  # noqa: E402
from topk.connectors.bigquery import tables as bigquery_tables  # noqa: E402
from topk.query import bigquery as bigquery_backend  # noqa: E402
from topk.storage import layout as output_layout  # noqa: E402


class Backends:
    """Ask a backend (``"duckdb"`` or ``"bigquery"``) a question; answers
    and errors are memoised per question, so a cross-backend comparison
    costs no second query."""

    def __init__(self, request, output):
        self._request = request
        self.output = output
        self._bigquery = None
        self._memo = {}

    @property
    def bigquery(self):
        """``(client, target)`` of the emulator's dataset, loaded once."""
        if self._bigquery is None:
            self._bigquery = self._request.getfixturevalue(
                "loaded_bigquery")
        return self._bigquery

    def ask(self, backend: str, function: str, *args):
        """The answer, or the ``QueryError`` raised, of one question."""
        key = (backend, function, args)
        if key not in self._memo:
            if backend == "duckdb":
                module, where = duckdb_backend, (self.output,)
            else:
                module, where = bigquery_backend, self.bigquery
            try:
                self._memo[key] = getattr(module, function)(*where, *args)
            except duckdb_backend.QueryError as e:
                self._memo[key] = e
        return self._memo[key]


@pytest.fixture(scope="session")
def scenario_output(tmp_path_factory):
    """The Parquet output directory holding every run of ``SCENARIO``."""
    output = str(tmp_path_factory.mktemp("scenario"))
    for table, name, rows in runs():
        write_parquet(output, table, name, rows)
    return output


@pytest.fixture(scope="module")
def loaded_bigquery(bigquery_emulator):
    """A ``scenario_*`` dataset of the emulator with every run of
    ``SCENARIO``: ``(client, target)``. A name of its own per module: the
    emulator is shared by the whole session, and other modules (the serve
    tests) load the scenario too."""
    with bigquery_emulator.configured() as emulator:
        client, target = bigquery_client.connect(
            emulator.project, f"scenario_{uuid.uuid4().hex[:8]}",
            endpoint=emulator.endpoint,
            check_dataset=False)
        client.create_dataset(target.dataset_id)
        bigquery_tables.ensure_tables(client, target, [
            output_layout.SLICES, output_layout.SKETCHES])
        for table, _, rows in runs():
            load_bigquery(client, target, table, rows)
        yield client, target


@pytest.fixture(scope="module")
def backends(request, scenario_output):
    return Backends(request, scenario_output)
