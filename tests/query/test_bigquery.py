"""What only the BigQuery backend does: its SQL carries user input as
parameters only, and a missing table or method is a one-line error. (Its
answers and argument checks are in ``test_backends.py``, shared with the
DuckDB backend.)"""
import pytest

import oracle
from query_scenario import T0, M, H, D, load_bigquery, sketch_rows
from topk import query
from topk.connectors.bigquery import client as bigquery_client
from topk.connectors.bigquery import tables as bigquery_tables
from topk.query import bigquery as query_bigquery
from topk.query import contract
from topk.storage import layout as output_layout
from topk.core.windows import decompose_range


def test_statements_carry_user_input_only_as_parameters():
    start, end = T0 + 17 * M, T0 + D + 3 * H + 42 * M
    evil = "click' OR '1'='1"
    q = contract.exact_query(7, start, end, evil)
    sql, params = query_bigquery.topk_sql("p.d.slices", q)
    assert evil not in sql and ("event_type", "STRING", evil) in params
    assert "`p.d.slices`" in sql and "LIMIT @k" in sql
    values = dict((name, value) for name, _, value in params)
    runs = decompose_range(start, end)
    assert [(values[f"length_{i}"], values[f"from_{i}"], values[f"to_{i}"])
            for i in range(len(runs))] == runs
    assert (values["range_start"], values["range_end"], values["k"]) == (
        start, end, 7)
    assert "slice_start >= @range_start AND slice_start < @range_end" in sql
    q = contract.approx_query(7, start, end, "cms", evil)
    sql, params = query_bigquery.sketches_sql("p.d.sketches", q)
    assert evil not in sql and ("method", "STRING", "cms") in params
    assert ("event_type", "STRING", evil) in params
    assert sql.rstrip().endswith("ORDER BY slice_start, slice_length, source")


@pytest.mark.integration
def test_missing_tables_and_methods_are_one_line(bigquery_emulator):
    with bigquery_emulator.configured() as emulator:
        client, target = bigquery_client.connect(
            emulator.project, "missing", endpoint=emulator.endpoint,
            check_dataset=False)
        client.create_dataset(target.dataset_id)
        with pytest.raises(bigquery_client.BigQueryError, match=(
                f"^BigQuery table {emulator.project}.missing.slices has no "
                "exact slices: run `topk batch --sink bigquery` with this "
                "--bq-dataset first$")):
            query_bigquery.topk(client, target, 3, T0, T0 + H)
        bigquery_tables.ensure_tables(client, target, [
            output_layout.SLICES, output_layout.SKETCHES])
        load_bigquery(client, target, output_layout.SKETCHES, sketch_rows(
            [oracle.Event("e", "a", "play", T0, None, 1)], "cms", "batch",
            0))
        with pytest.raises(query.QueryError, match=(
                f"^BigQuery table {emulator.project}.missing.sketches has no "
                "frequent_items sketches: run `topk batch --method "
                "frequent_items --sink bigquery`")):
            query_bigquery.topk_approx(client, target, 3, T0, T0 + H,
                                       "frequent_items")
        assert query_bigquery.topk_approx(client, target, 3, T0, T0 + H,
                                          "cms")[0].item_id == "a"
