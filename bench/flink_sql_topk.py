"""Flink SQL Window Top-N on a Kafka topic: the peer a user would pick
instead of this project, measured the way ``bench/kafka_throughput.py``
measures ours, so the two can be read side by side.

    .venv/bin/python bench/flink_sql_topk.py --events 200000
    .venv/bin/python bench/flink_sql_topk.py --bootstrap 127.0.0.1:9092 \\
        --topic bench-2000000-m1-p4-s1-r23_1481 --compare-output /tmp/out

It installs the SQL client's jars once (``deploy/flink/flink.sh
install-sql``, cached under ~/.cache/topk/flink), starts a local Flink
cluster with ``flink.sh start`` in its own run dir (or uses the one at
``--rest-port``), writes one SQL script (a bounded Kafka source with event
time from ``ts`` and a watermark, an optional de-duplication by
``event_id``, Window Top-N over ``TUMBLE 1m``, ``TUMBLE 1h`` and ``HOP 1h
every 1m`` into a CSV filesystem sink, one statement set) and runs it with
``sql-client.sh -f``. It reports wall seconds from submission to the job's
end, the job's own duration (REST ``/jobs/<id>``) and events/s, and with
``--compare-output`` compares the top-K item sets per window with the
latest exact ``ranked_windows`` panes of a ``topk stream --bounded`` /
``topk batch`` output (ties: the counts are compared, not the order).

Flink's ``json`` format reads one event per message: the topic must hold
one event per message (``--events-per-message 1``, the default here).
"""
import argparse
import csv
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from datetime import datetime, timezone

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
sys.path.insert(0, REPO)

FLINK_SH = os.path.join(REPO, "deploy", "flink", "flink.sh")
CACHE = os.environ.get("TOPK_FLINK_CACHE",
                       os.path.expanduser("~/.cache/topk/flink"))
# The same range topk.core.schema accepts; anything else is filtered (it
# would move Flink's watermark).
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000
SPECS = (("1m", "TUMBLE(TABLE events, DESCRIPTOR(rt), INTERVAL '1' MINUTE)"),
         ("1h", "TUMBLE(TABLE events, DESCRIPTOR(rt), INTERVAL '1' HOUR)"),
         ("1h_1m", "HOP(TABLE events, DESCRIPTOR(rt), INTERVAL '1' MINUTE, "
                   "INTERVAL '1' HOUR)"))


def log(msg: str) -> None:
    print(f"[flink-sql] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rest(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}",
                                timeout=10) as r:
        return json.loads(r.read())


def install_sql() -> list:
    out = subprocess.run([FLINK_SH, "install-sql"], check=True,
                         capture_output=True, text=True).stdout
    jars = [line.strip() for line in out.splitlines() if line.strip()]
    if len(jars) != 4:
        raise RuntimeError(f"flink.sh install-sql printed {jars!r}")
    return jars


def flink_home() -> str:
    out = subprocess.run([FLINK_SH, "env"], check=True, capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        if line.startswith("export FLINK_HOME="):
            home = line.split("=", 1)[1].strip()
            if home:
                return home
    raise RuntimeError("Flink not installed: run deploy/flink/flink.sh install")


def client_lib(workdir: str, home: str, jars: list) -> str:
    """A lib dir for sql-client.sh: the distribution's lib plus the SQL
    gateway / client / python jars (symlinks; the venv stays untouched)."""
    lib = os.path.join(workdir, "client-lib")
    shutil.rmtree(lib, ignore_errors=True)
    os.makedirs(lib)
    for jar in glob.glob(os.path.join(home, "lib", "*.jar")) + [
            j for j in jars if "connector-kafka" not in j]:
        os.symlink(jar, os.path.join(lib, os.path.basename(jar)))
    return lib


def topic_events(bootstrap: str, topic: str) -> int:
    import kafka_throughput as kt
    ends = kt.end_offsets(bootstrap, topic)
    if not ends:
        raise SystemExit(f"topic {topic} does not exist at {bootstrap}")
    return sum(ends.values())


def sql_script(args, bootstrap: str, topic: str, sink: str) -> str:
    ts_ms = ("CASE WHEN REGEXP(ts, '^[0-9]+$') THEN TRY_CAST(ts AS BIGINT) "
             "ELSE UNIX_TIMESTAMP(REGEXP_REPLACE(SUBSTRING(ts, 1, 19), 'T', ' '), "
             "'yyyy-MM-dd HH:mm:ss') * 1000 END")
    ok = f"ts_ms BETWEEN {MIN_TS_MS} AND {MAX_TS_MS}"
    dedup = ("SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY "
             "event_id ORDER BY pt) AS dn FROM valid) WHERE dn = 1"
             if args.dedup else "SELECT * FROM valid")
    inserts = []
    for spec, tvf in SPECS:
        inserts.append(f"""INSERT INTO topk_out
SELECT '{spec}', CAST(window_start AS STRING), item_id, cnt, rn FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end
                               ORDER BY cnt DESC) AS rn FROM (
    SELECT window_start, window_end, item_id, SUM(w) AS cnt
    FROM TABLE({tvf})
    GROUP BY window_start, window_end, item_id))
WHERE rn <= {args.k};""")
    inserts_sql = "\n".join(inserts)
    # Checkpoints go to files: the JobManager's default checkpoint storage
    # caps state at a few MB, and the de-duplication state of 2M ids
    # exceeds it (the job then restarts forever).
    return f"""SET 'execution.runtime-mode' = 'streaming';
SET 'table.dml-sync' = 'true';
SET 'table.local-time-zone' = 'UTC';
SET 'parallelism.default' = '{args.parallelism}';
SET 'execution.checkpointing.interval' = '{args.checkpoint_s}s';
SET 'state.backend.type' = '{args.state_backend}';
SET 'state.checkpoint-storage' = 'filesystem';
SET 'state.checkpoints.dir' = 'file://{os.path.dirname(os.path.abspath(sink))}/checkpoints';
SET 'rest.address' = '127.0.0.1';
SET 'rest.port' = '{args.rest_port}';
SET 'execution.target' = 'remote';
SET 'pipeline.name' = 'topk-flink-sql-{args.run_id}';

CREATE TABLE raw_events (
  event_id STRING,
  item_id STRING,
  event_type STRING,
  ts STRING,
  user_id STRING,
  weight STRING,
  ts_ms AS {ts_ms},
  rt AS TO_TIMESTAMP_LTZ(CASE WHEN {ts_ms} BETWEEN {MIN_TS_MS} AND {MAX_TS_MS}
                              THEN {ts_ms} ELSE {MIN_TS_MS} END, 3),
  pt AS PROCTIME(),
  WATERMARK FOR rt AS rt - INTERVAL '{args.watermark_s}' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = '{topic}',
  'properties.bootstrap.servers' = '{bootstrap}',
  'properties.group.id' = 'topk-flink-sql-{args.run_id}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset',
  'format' = 'json',
  'json.ignore-parse-errors' = 'true',
  'json.fail-on-missing-field' = 'false'
);

CREATE TEMPORARY VIEW valid AS
SELECT event_id, item_id, rt, pt,
       COALESCE(TRY_CAST(weight AS BIGINT), 1) AS w
FROM raw_events
WHERE {ok} AND item_id IS NOT NULL AND event_id IS NOT NULL
  AND COALESCE(TRY_CAST(weight AS BIGINT), 1) > 0;

CREATE TEMPORARY VIEW events AS {dedup};

CREATE TABLE topk_out (
  spec STRING, window_start STRING, item_id STRING, cnt BIGINT, rn BIGINT
) WITH (
  'connector' = 'filesystem',
  'path' = 'file://{sink}',
  'format' = 'csv'
);

EXECUTE STATEMENT SET BEGIN
{inserts_sql}
END;
"""


def read_flink_rows(sink: str) -> dict:
    """{(spec, window_start ISO): [(item, count), ...]} from the CSV files
    (committed and, should any be left, in-progress ones)."""
    out = defaultdict(list)
    n = 0
    for root, _, files in os.walk(sink):
        for name in files:
            if name.endswith(".crc"):
                continue
            with open(os.path.join(root, name), newline="") as f:
                for row in csv.reader(f):
                    if len(row) != 5:
                        continue
                    spec, ws, item, cnt, _rn = row
                    ws = ws.replace(" ", "T")[:19]
                    out[(spec, ws)].append((item, int(cnt)))
                    n += 1
    log(f"read {n:,} top-K rows of {len(out):,} windows from {sink}")
    return dict(out)


def read_topk_rows(directory: str, k: int) -> dict:
    from topk.storage import tables
    con = tables.connect(directory, ["ranked_windows"])
    # The readers' rule (docs/querying.md): per window, the batch rows if
    # a batch run wrote it, else the stream's latest pane by emitted_at.
    rows = con.execute(f"""
        SELECT window_spec, strftime(window_start, '%Y-%m-%dT%H:%M:%S'),
               item_id, count
        FROM ranked_windows
        WHERE method = 'exact' AND event_type = '*'
        QUALIFY emitted_at = max(emitted_at) OVER (
                  PARTITION BY window_spec, window_start, source)
            AND (source = 'batch' OR NOT bool_or(source = 'batch') OVER (
                  PARTITION BY window_spec, window_start))
            AND rank <= {k}
        """).fetchall()
    out = defaultdict(list)
    for spec, ws, item, cnt in rows:
        out[(spec, ws)].append((item, int(cnt)))
    return dict(out)


def agree(a: list, b: list) -> bool:
    """Same top-K up to ties: the same multiset of counts, and the same
    items above the lowest count (the items tied at it may differ)."""
    ca, cb = sorted(c for _, c in a), sorted(c for _, c in b)
    if ca != cb:
        return False
    if not ca:
        return True
    low = ca[0]
    return ({i for i, c in a if c > low} == {i for i, c in b if c > low})


def compare(flink: dict, ours: dict) -> dict:
    per_spec = {}
    for spec, _ in SPECS:
        fk = {w for (s, w) in flink if s == spec}
        ok = {w for (s, w) in ours if s == spec}
        both = fk & ok
        good = sum(agree(flink[(spec, w)], ours[(spec, w)]) for w in both)
        per_spec[spec] = {"flink": len(fk), "topk": len(ok),
                          "compared": len(both), "agree": good}
    return per_spec


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", help="Kafka bootstrap servers; default: "
                   "start a broker with deploy/kafka/kafka.sh in --dir")
    p.add_argument("--topic", help="an existing topic (one event per "
                   "message); default: preload one with --events")
    p.add_argument("--events", type=int, default=200_000,
                   help="events to preload when no --topic (default 200000)")
    p.add_argument("--events-per-message", type=int, default=1,
                   help="events per Kafka message of the preload; Flink's "
                   "json format needs 1 (default 1)")
    p.add_argument("--partitions", type=int, default=4,
                   help="partitions of the preloaded topic (default 4)")
    p.add_argument("--k", type=int, default=100, help="top K (default 100)")
    p.add_argument("--dedup", action=argparse.BooleanOptionalAction,
                   default=True, help="de-duplicate by event_id "
                   "(ROW_NUMBER over proctime = 1; default on)")
    p.add_argument("--parallelism", type=int, default=2,
                   help="Flink parallelism (default 2)")
    p.add_argument("--slots", type=int, default=4,
                   help="task slots of a cluster started here (default 4)")
    p.add_argument("--rest-port", type=int, default=None,
                   help="use the Flink cluster already running with this "
                   "REST port on 127.0.0.1 instead of starting one")
    p.add_argument("--watermark-s", type=int, default=10,
                   help="watermark delay behind the largest ts (default 10)")
    p.add_argument("--checkpoint-s", type=int, default=5,
                   help="checkpoint interval; the CSV sink commits its "
                   "files on checkpoints (default 5)")
    p.add_argument("--state-backend", choices=("hashmap", "rocksdb"),
                   default="hashmap", help="the job's state backend "
                   "(default hashmap: the state of a few million ids fits "
                   "the TaskManager's heap, and RocksDB ran this job about "
                   "10x slower here)")
    p.add_argument("--tm-memory", default="4096m",
                   help="process memory of a TaskManager started here "
                   "(default 4096m)")
    p.add_argument("--timeout", type=float, default=1800,
                   help="seconds to wait for the SQL job (default 1800)")
    p.add_argument("--compare-output", metavar="DIR",
                   help="a topk stream --bounded / topk batch output of the "
                   "same events: compare the top-K per window")
    p.add_argument("--dir", default="/tmp/topk-bench-flink-sql",
                   help="work dir: broker, Flink run dir, SQL, sink")
    p.add_argument("--keep-cluster", action="store_true",
                   help="leave the Flink cluster started here running")
    p.add_argument("--keep-broker", action="store_true",
                   help="leave the Kafka broker started here running")
    args = p.parse_args()
    workdir = os.path.abspath(args.dir)
    os.makedirs(workdir, exist_ok=True)

    import kafka_throughput as kt
    own_broker = args.bootstrap is None
    bootstrap = args.bootstrap or kt.start_broker(os.path.join(workdir, "kafka"))
    try:
        if args.topic:
            topic = args.topic
        else:
            if args.events_per_message != 1:
                raise SystemExit("Flink's json format reads one event per "
                                 "message: use --events-per-message 1")
            info = kt.preload(bootstrap, workdir, "flink-sql", args.events,
                              1, args.partitions)
            topic = info["topic"]
        job = run_sql_job(bootstrap, topic, workdir, k=args.k,
                          dedup=args.dedup, parallelism=args.parallelism,
                          slots=args.slots, rest_port=args.rest_port,
                          watermark_s=args.watermark_s,
                          checkpoint_s=args.checkpoint_s,
                          state_backend=args.state_backend,
                          tm_memory=args.tm_memory, timeout=args.timeout,
                          keep_cluster=args.keep_cluster)
        events, wall, job_s = job["events"], job["wall_s"], job["job_s"]
        cmp = None
        if args.compare_output:
            cmp = compare(job["rows"], read_topk_rows(args.compare_output,
                                                      args.k))

        out = []
        out.append(f"\nFlink SQL Window Top-N, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
        out.append(f"topic {topic} at {bootstrap}: {events:,} events, "
                   f"windows 1m,1h,1h/1m, K={args.k}, parallelism "
                   f"{args.parallelism}, dedup {'on' if args.dedup else 'off'}")
        out.append("")
        out.append("| contender | events | wall s | events/s (wall) | job s | events/s (job) |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        out.append(f"| flink_sql | {events:,} | {wall:.1f} | {events / wall:,.0f} "
                   f"| {job_s:.1f} | {events / job_s:,.0f} |")
        if cmp is not None:
            out.append("")
            out.append("| window | flink windows | topk windows | compared | agree |")
            out.append("| --- | ---: | ---: | ---: | ---: |")
            for spec, c in cmp.items():
                out.append(f"| {spec} | {c['flink']:,} | {c['topk']:,} | "
                           f"{c['compared']:,} | {c['agree']:,} |")
            tot = sum(c["compared"] for c in cmp.values())
            ok = sum(c["agree"] for c in cmp.values())
            out.append(f"\n{ok:,} of {tot:,} windows agree")
        else:
            counts = defaultdict(int)
            for (spec, _w) in job["rows"]:
                counts[spec] += 1
            out.append("\nwindows written: " + ", ".join(
                f"{s} {counts.get(s, 0):,}" for s, _ in SPECS))
        print("\n".join(out), flush=True)
    finally:
        if own_broker and not args.keep_broker:
            kt.stop_broker(os.path.join(workdir, "kafka"))


def run_sql_job(bootstrap: str, topic: str, workdir: str, *, k: int = 100,
                dedup: bool = True, parallelism: int = 2, slots: int = 4,
                rest_port: int | None = None, watermark_s: int = 10,
                checkpoint_s: int = 5, state_backend: str = "hashmap",
                tm_memory: str = "4096m", timeout: float = 1800,
                keep_cluster: bool = False) -> dict:
    """The Window Top-N statement set over ``topic`` (one event per
    message), on the cluster at ``rest_port`` or on one started (and
    stopped, unless ``keep_cluster``) in ``workdir``: ``{"events",
    "wall_s"`` (submission to the job's end, the SQL client's start
    included), ``"job_s"`` (the job's own duration), ``"rows"``
    (``read_flink_rows``)``}``."""
    settings = argparse.Namespace(
        k=k, dedup=dedup, parallelism=parallelism, rest_port=rest_port,
        watermark_s=watermark_s, checkpoint_s=checkpoint_s,
        state_backend=state_backend, run_id=f"{int(time.time())}")
    env = dict(os.environ, TOPK_FLINK_RUN_DIR=os.path.join(workdir, "flink-run"))
    events = topic_events(bootstrap, topic)
    log(f"topic {topic}: {events:,} messages (events)")
    jars = install_sql()
    home = flink_home()
    kafka_jar = next(j for j in jars if "connector-kafka" in j)
    started_cluster = False
    try:
        if settings.rest_port is None:
            settings.rest_port = free_port()
            subprocess.run([FLINK_SH, "start", "--rest-port",
                            str(settings.rest_port), "--slots", str(slots),
                            "--tm-memory", tm_memory],
                           env=env, check=True, stdout=subprocess.DEVNULL)
            started_cluster = True
            conf_dir = os.path.join(workdir, "flink-run", "conf")
        else:
            conf_dir = os.path.join(home, "conf")
        port = settings.rest_port
        rest(port, "/overview")

        sink = os.path.join(workdir, "sink")
        shutil.rmtree(sink, ignore_errors=True)
        sql_path = os.path.join(workdir, "topk.sql")
        with open(sql_path, "w") as f:
            f.write(sql_script(settings, bootstrap, topic, sink))
        lib = client_lib(workdir, home, jars)
        client_log = os.path.join(workdir, "client-log")
        os.makedirs(client_log, exist_ok=True)
        cenv = dict(env, FLINK_HOME=home, FLINK_CONF_DIR=conf_dir,
                    FLINK_LIB_DIR=lib, FLINK_LOG_DIR=client_log)
        before = {j["jid"] for j in rest(port, "/jobs/overview")["jobs"]}
        log(f"running {sql_path} on 127.0.0.1:{port}")
        t0 = time.perf_counter()
        proc = subprocess.run(
            [os.path.join(home, "bin", "sql-client.sh"), "-j", kafka_jar,
             "-f", sql_path], env=cenv, capture_output=True, text=True,
            timeout=timeout)
        wall = time.perf_counter() - t0
        with open(os.path.join(workdir, "sql-client.out"), "w") as f:
            f.write(proc.stdout + proc.stderr)
        jobs = [j for j in rest(port, "/jobs/overview")["jobs"]
                if j["jid"] not in before]
        if proc.returncode != 0 or "[ERROR]" in proc.stdout or not jobs:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise RuntimeError(f"sql-client failed (rc {proc.returncode}, "
                               f"jobs {jobs}):\n{tail}")
        job = rest(port, f"/jobs/{jobs[0]['jid']}")
        if job["state"] != "FINISHED":
            raise RuntimeError(f"job {job['jid']} ended {job['state']}")
        return {"events": events, "wall_s": wall,
                "job_s": job["duration"] / 1000.0,
                "rows": read_flink_rows(sink)}
    finally:
        if started_cluster and not keep_cluster:
            subprocess.run([FLINK_SH, "stop"], env=env, check=False,
                           capture_output=True)

if __name__ == "__main__":
    main()
