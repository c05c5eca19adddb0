"""One in-memory DuckDB connection per thread, for vectorised work on Arrow.

DuckDB connections are neither picklable nor meant to be shared between
threads, and Beam workers call DoFns from several threads, so each thread
opens its own lazily. Session time zone is UTC: a timestamp string without an
offset means UTC everywhere in this project.
"""
import threading

import duckdb

_local = threading.local()


def connection() -> duckdb.DuckDBPyConnection:
    con = getattr(_local, "con", None)
    if con is None:
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        _local.con = con
    return con
