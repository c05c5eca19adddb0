"""Every fenced code block of README.md and docs/*.md is tested or says why not.

Markers (an HTML comment on the line right before the opening fence):

- ``<!-- test: shell -->``: run with bash in a shared work directory (the
  venv's bin first on PATH, ``$TOPK_REPO`` = the repository); exit status 0.
  ``<!-- test: shell setup -->`` blocks build the shared data set (they run
  once, in document order, before the others). ``<!-- test: shell kafka -->``
  blocks need a broker: integration, on the ``kafka_broker`` fixture, with
  ``127.0.0.1:9092`` replaced by its address and ``--topic events`` by a
  fresh topic.
- ``<!-- test: sql-duckdb -->``: run with the project's DuckDB in the work
  directory (several statements allowed; the last one's rows are checked).
- ``<!-- test: sql-bigquery -->``: integration, on the ``bigquery_emulator``
  fixture, after loading the shared output with the project's BigQuery
  table definitions; ``PROJECT.DATASET`` is replaced.
- ``<!-- test: python -->``: executed in the work directory; stdout checked.
- ``<!-- not tested: reason -->``: not run (GCP, kubectl, long-running ...).
- ``<!-- output -->`` before a fence: the output of the tested block above it.

After a tested block (and its output block), ``<!-- expect: REGEX -->`` lines
must each match the output (``re.search``, multi-line). An output block is
checked loosely: every line of it, split on whitespace, must equal a line of
the real output (rows of SQL results are printed space-separated; lines
``...`` are skipped).

A failure names the file and line of the block, the command, and whether the
CLI rejected an option (``CLI option?``: the block uses a spelling the code
does not accept yet) or the doc is wrong.
"""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import uuid

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
VENV_BIN = pathlib.Path(sys.executable).parent

MARK = re.compile(r"^<!--\s*(test|not tested|output|expect)\s*:?\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")
CLI_REJECTED = re.compile(
    r"unrecognized arguments|invalid choice|the following arguments are "
    r"required|no such option|unknown option|expected one argument")


class Block:
    def __init__(self, path, line, lang, text, marker, arg):
        self.path, self.line, self.lang, self.text = path, line, lang, text
        self.marker, self.arg = marker, arg  # marker: test/not tested/output
        self.expect, self.output = [], None

    @property
    def where(self):
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def kind(self):
        return self.arg.split()[0] if self.marker == "test" and self.arg else ""

    @property
    def flags(self):
        return set(self.arg.split()[1:])


def parse(path):
    lines = path.read_text().splitlines()
    blocks, i, pending = [], 0, None
    while i < len(lines):
        line = lines[i]
        m = MARK.match(line.strip())
        if m:
            if m.group(1) == "expect":
                if not blocks or blocks[-1].marker == "not tested":
                    raise AssertionError(f"{path}:{i + 1}: expect without a tested block")
                target = blocks[-1]
                if target.marker == "output":
                    target = target.owner
                target.expect.append(m.group(2))
            else:
                pending = (m.group(1), m.group(2), i + 1)
            i += 1
            continue
        f = FENCE.match(line)
        if f:
            fence, lang, start = f.group(1), f.group(2), i + 1
            j = i + 1
            while j < len(lines) and not lines[j].startswith(fence):
                j += 1
            text = "\n".join(lines[i + 1:j]) + "\n"
            marker, arg = (pending[0], pending[1]) if pending and pending[2] == i else (None, "")
            b = Block(path, start, lang, text, marker, arg)
            if marker == "output":
                owner = next((x for x in reversed(blocks) if x.marker == "test"), None)
                assert owner is not None, f"{b.where}: output block without a tested block"
                owner.output, b.owner = b, owner
            blocks.append(b)
            pending, i = None, j + 1
            continue
        if line.strip():
            pending = None if not (pending and pending[2] == i) else pending
        i += 1
    return blocks


ALL = [b for p in DOCS for b in parse(p)]
TESTED = [b for b in ALL if b.marker == "test"]


def test_every_block_is_marked():
    unmarked = [f"{b.where} ({b.lang or 'no language'})" for b in ALL
                if b.marker is None]
    assert not unmarked, (
        "fenced blocks without <!-- test: ... -->, <!-- not tested: reason "
        "-->, or <!-- output -->: " + ", ".join(unmarked))
    assert all(b.arg for b in ALL if b.marker == "not tested"), \
        "<!-- not tested --> needs a reason"
    kinds = {"shell", "sql-duckdb", "sql-bigquery", "python"}
    bad = [b.where for b in TESTED if b.kind not in kinds]
    assert not bad, f"unknown test kind at {bad}; use one of {sorted(kinds)}"


# --- running ---------------------------------------------------------------

def _env(**extra):
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["TOPK_REPO"] = str(REPO)
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def run_shell(block, cwd, text=None, timeout=600):
    proc = subprocess.run(["bash", "-eo", "pipefail", "-c", text or block.text],
                          cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


def fail_shell(block, code, out, err, text=None):
    why = ("CLI option? the command rejected an option (a spelling the code "
           "does not accept yet, or a doc error)"
           if CLI_REJECTED.search(err) else "doc or code error")
    pytest.fail(f"{block.where}: shell block exited {code} [{why}]\n"
                f"--- block\n{text or block.text}--- stdout (tail)\n"
                f"{out[-1500:]}\n--- stderr (tail)\n{err[-2500:]}",
                pytrace=False)


def check_output(block, actual):
    problems = []
    for pattern in block.expect:
        if not re.search(pattern, actual, re.M):
            problems.append(f"expect /{pattern}/ not found")
    if block.output is not None:
        got = {tuple(line.split()) for line in actual.splitlines()}
        for line in block.output.text.splitlines():
            words = tuple(line.split())
            if words and words != ("...",) and words not in got:
                problems.append(f"output line not produced: {line.strip()!r}")
    if problems:
        pytest.fail(f"{block.where}: {block.kind} block output differs from "
                    f"the doc\n" + "\n".join(problems) + f"\n--- block\n"
                    f"{block.text}--- actual output (head)\n{actual[:3000]}",
                    pytrace=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The shared data set: the README's setup blocks run in document order.
    If one fails (e.g. a CLI spelling not accepted yet), the same data is
    built through the Python API so that the other blocks still run, and
    the setup block's own test reports the failure."""
    cwd = tmp_path_factory.mktemp("docs")
    results = {}
    for block in (b for b in TESTED if b.kind == "shell" and "setup" in b.flags):
        results[block.where] = run_shell(block, cwd)
    if any(code for code, _, _ in results.values()):
        _build_with_api(cwd)
    _write_archive(cwd)
    return cwd, results


def _build_with_api(cwd):
    from topk.loadgen import generator
    from topk.pipelines import batch
    shutil.rmtree(cwd / "out", ignore_errors=True)
    (cwd / "events").mkdir(exist_ok=True)
    generator.write_json_lines(generator.GeneratorConfig(
        events=43200, rate=0.5, start="2024-05-01T00:00:00Z",
        duplicate_share=0.01, malformed_share=0.001), str(cwd / "events/day.jsonl"))
    batch.run([f"--input={cwd}/events/*.jsonl", f"--output={cwd}/out",
               "--windows=1h,1d,1h/1m", "--k=100"])


def _write_archive(cwd):
    """An archive as the unbounded stream writes it (out/archive), from the
    generated events, for the reprocessing snippets."""
    sys.path.insert(0, str(REPO / "tests"))
    import archive_files
    from topk.core import events
    parsed = events.parse_json_lines((cwd / "events/day.jsonl").read_bytes())
    archive_files.write_archive(str(cwd / "out"), parsed.events, "docs")


def _ids(blocks):
    return [b.where for b in blocks]


LOCAL = [b for b in TESTED if b.kind in ("shell", "python", "sql-duckdb")
         and "kafka" not in b.flags]
# Document order (README first, then docs/ by name); a block only adds to
# or rewrites the shared data with the same results.


@pytest.mark.parametrize("block", LOCAL, ids=_ids(LOCAL))
def test_local_block(block, workdir, monkeypatch, capsys):
    cwd, setup_results = workdir
    if block.kind == "shell":
        if block.where in setup_results:
            code, out, err = setup_results[block.where]
        else:
            code, out, err = run_shell(block, cwd)
        if code:
            fail_shell(block, code, out, err)
        check_output(block, out + err)
    elif block.kind == "python":
        monkeypatch.chdir(cwd)
        exec(compile(block.text, block.where, "exec"), {"__name__": "__doc__"})
        check_output(block, capsys.readouterr().out)
    else:
        import duckdb
        monkeypatch.chdir(cwd)
        con = duckdb.connect()
        try:
            rel = con.execute(block.text)
            header = " ".join(d[0] for d in rel.description)
            rows = [" ".join(str(v) for v in r) for r in rel.fetchall()]
        except duckdb.Error as e:
            pytest.fail(f"{block.where}: DuckDB rejected the SQL: {e}",
                        pytrace=False)
        assert rows, f"{block.where}: the SQL returned no rows"
        check_output(block, "\n".join([header, *rows]))


KAFKA = [b for b in TESTED if "kafka" in b.flags]


@pytest.mark.integration
@pytest.mark.parametrize("block", KAFKA, ids=_ids(KAFKA))
def test_kafka_block(block, kafka_broker, workdir):
    cwd, _ = workdir
    topic = f"docs-{uuid.uuid4().hex[:8]}"
    text = (block.text.replace("127.0.0.1:9092", kafka_broker.bootstrap)
            .replace("--topic events ", f"--topic {topic} "))
    code, out, err = run_shell(block, cwd, text)
    if code:
        fail_shell(block, code, out, err, text)
    check_output(block, out + err)


BIGQUERY = [b for b in TESTED if b.kind == "sql-bigquery"]


@pytest.fixture(scope="module")
def bigquery_docs(bigquery_emulator, workdir):
    """The shared output's slices and ranked windows of 2024-05-01 09:00 to
    14:00 (the range the BigQuery snippets query; the emulator is slow with
    more rows) in a fresh dataset of the emulator."""
    from topk.connectors.bigquery import client as bigquery_client
    from topk.connectors.bigquery import tables as bigquery_tables
    from topk.storage import layout, tables
    cwd, _ = workdir
    lo, hi = "TIMESTAMPTZ '2024-05-01 09:00:00+00'", "TIMESTAMPTZ '2024-05-01 14:00:00+00'"
    with bigquery_emulator.configured() as emulator:
        client, target = bigquery_client.connect(
            emulator.project, "docs", endpoint=emulator.endpoint,
            check_dataset=False)
        client.create_dataset(target.dataset_id, exists_ok=True)
        bigquery_tables.ensure_tables(client, target, [layout.SLICES, layout.RANKED_WINDOWS])
        for table, where in [
                (layout.SLICES, f"slice_start >= {lo} AND slice_start < {hi} "
                 "AND slice_length IN ('1m', '1h')"),
                (layout.RANKED_WINDOWS, f"window_spec = '1h' AND method = 'exact' "
                 f"AND window_start >= {lo} AND window_start < {hi} AND rank <= 20")]:
            columns = bigquery_tables.TABLES[table].arrow_schema.names
            arrow = tables.connect(os.path.join(cwd, "out"), [table]).sql(
                f"SELECT {', '.join(columns)} FROM {table} WHERE {where}"
            ).fetch_arrow_table()
            rows = bigquery_tables.json_rows(arrow)
            bq_table = client.get_table(target.table_id(table))
            for i in range(0, len(rows), 5000):
                errors = client.insert_rows(bq_table, rows[i:i + 5000])
                assert not errors, errors[:3]
        yield client, target


@pytest.mark.integration
@pytest.mark.parametrize("block", BIGQUERY, ids=_ids(BIGQUERY))
def test_bigquery_block(block, bigquery_docs):
    client, target = bigquery_docs
    sql = block.text.replace("PROJECT.DATASET", target.dataset_id)
    try:
        rows = list(client.query(sql).result())
    except Exception as e:  # noqa: BLE001 - report any client error as the doc's
        pytest.fail(f"{block.where}: BigQuery (emulator) rejected the SQL: "
                    f"{str(e)[:1500]}", pytrace=False)
    assert rows, f"{block.where}: the SQL returned no rows"
    header = " ".join(rows[0].keys())
    check_output(block, "\n".join(
        [header, *(" ".join(str(v) for v in r.values()) for r in rows)]))
