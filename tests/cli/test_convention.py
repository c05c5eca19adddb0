"""The flag convention of the ``topk`` command (issue 11): every flag is
hyphenated and has help, one flag name means one thing across commands,
old flags exit 2 naming the new one, help is plain text, and pipeline
options keep parsing in the underscore spelling Beam gives remote
workers."""
import argparse

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

import topk
from topk import cli
from topk.cli import pipelines as cli_pipelines
from topk.loadgen import generator
from topk.pipelines import batch, stream
from topk.pipelines.options import TopKOptions
from topk.sinks.bigquery import BigQuerySinkOptions
from topk.storage import tables

#: Flags that several commands take, with their one meaning (argparse
#: dest). Any other flag in two commands fails ``test_one_meaning_per_flag``.
SHARED_FLAGS = {
    "-h": "help", "--help": "help",
    # Where the tables are, what is ranked.
    "--output": "output", "--k": "k", "--windows": "windows",
    "--method": "method", "--item-shards": "item_shards",
    "--dedup-shards": "dedup_shards",
    "--sketch-budget-bytes": "sketch_budget_bytes",
    "--max-dead-letter-ratio": "max_dead_letter_ratio",
    "--sink": "sink", "--bq-write-method": "bq_write_method",
    "--backend": "backend", "--port": "port",
    "--retention": "retention",
    "--bq-project": "bq_project", "--bq-dataset": "bq_dataset",
    "--bq-table-prefix": "bq_table_prefix", "--bq-endpoint": "bq_endpoint",
    "--bq-location": "bq_location",
    # Kafka.
    "--bootstrap": "bootstrap", "--topic": "topic",
    "--broker-timeout-s": "broker_timeout_s", "--kafka-client": "kafka_client",
    # Progress lines and the metrics endpoint.
    "--progress-every": "progress_every",
    "--metrics-port": "metrics_port",
    # Synthetic events.
    "--events": "events", "--seed": "seed", "--items": "items",
    "--zipf": "zipf", "--event-start": "event_start",
    "--event-rate": "event_rate", "--jitter": "jitter",
    "--duplicates": "duplicates", "--malformed": "malformed",
    "--ts-format": "ts_format", "--burst-item": "burst_item",
    "--burst-share": "burst_share", "--burst-start": "burst_start",
    "--burst-duration": "burst_duration",
    "--event-type": "event_type",
}

PIPELINES = {"batch": (batch, [batch.BatchOptions], ("output",)),
             "stream": (stream, [stream.StreamOptions],
                        ("bootstrap", "topic", "output"))}


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every ``topk`` command -> the parser whose help it prints (for
    batch and stream: their pipeline options)."""
    sub = next(a for a in cli.build_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    parsers = dict(sub.choices)
    for name, (module, classes, required) in PIPELINES.items():
        parsers[name] = cli_pipelines.options_parser(
            f"topk {name}", module,
            [*classes, TopKOptions, BigQuerySinkOptions], required)
    return parsers


def visible_actions(parser):
    return [a for a in parser._actions
            if a.option_strings and a.help is not argparse.SUPPRESS]


def help_text(argv, capsys) -> str:
    try:
        assert cli.main(argv) == 0
    except SystemExit as e:
        assert e.code == 0
    return capsys.readouterr().out


def test_every_command_and_option_has_help():
    sub = next(a for a in cli.build_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    assert {a.dest: bool(a.help and a.help.strip())
            for a in sub._choices_actions} == dict.fromkeys(sub.choices, True)
    for name, parser in command_parsers().items():
        for action in visible_actions(parser):
            assert action.help and action.help.strip(), (name, action)


def test_every_flag_is_hyphenated():
    """The spelling help shows (the first) has no underscore; an underscore
    spelling is only ever an alias of the same option."""
    for name, parser in command_parsers().items():
        for action in visible_actions(parser):
            first = action.option_strings[0]
            assert "_" not in first, (name, first)
            for alias in action.option_strings[1:]:
                assert alias.replace("_", "-") in action.option_strings, (
                    name, alias)


def test_one_meaning_per_flag():
    seen: dict[str, dict[str, str]] = {}  # flag -> command -> dest
    for name, parser in command_parsers().items():
        for action in visible_actions(parser):
            for flag in action.option_strings:
                seen.setdefault(flag.replace("_", "-"), {})[name] = \
                    action.dest
    for flag, dests in seen.items():
        if len(dests) > 1:
            assert flag in SHARED_FLAGS, (
                f"{flag} is used by {sorted(dests)}: give it one meaning in "
                "SHARED_FLAGS or another name")
            assert set(dests.values()) == {SHARED_FLAGS[flag]}, (flag, dests)
    # The range flags mean the query range, and only that.
    assert seen["--start"] == {"query": "start"}
    assert seen["--end"] == {"query": "end"}


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"topk {topk.__version__}\n"


@pytest.mark.parametrize("argv, hint", [
    (["generate", "--events", "5", "--out", "x.jsonl", "--rate", "2"],
     "--rate is no longer an option: use --event-rate"),
    (["generate", "--events", "5", "--out", "x.jsonl",
      "--start=2024-05-01T00:00:00Z"],
     "--start is no longer an option: use --event-start"),
    (["produce", "--bootstrap", "x:1", "--topic", "t", "--events", "5",
      "--rate", "100"], "--rate is no longer an option: use --send-rate"),
    (["produce", "--bootstrap", "x:1", "--topic", "t", "--events", "5",
      "--start", "now"], "--start is no longer an option: use --event-start"),
    (["stream", "--bootstrap", "x:1", "--topic", "t", "--output", "o",
      "--start", "earliest"], "--start is no longer an option: use "
     "--read-from"),
    (["batch", "--from-archive", "o", "--start", "2024-05-01", "--end",
      "2024-05-02", "--output", "o"],
     "--start is no longer an option: use --archive-start"),
    (["batch", "--from-archive", "o", "--archive-start", "2024-05-01",
      "--end=2024-05-02", "--output", "o"],
     "--end is no longer an option: use --archive-end"),
])
def test_old_flags_exit_2_naming_the_new_one(argv, hint, capsys):
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err == f"topk: error: {hint}\n"


@pytest.mark.parametrize("module, argv, hint", [
    (batch, ["--input", "x", "--output", "o", "--start", "2024-05-01"],
     "use --archive-start"),
    (stream, ["--bootstrap", "x:1", "--topic", "t", "--output", "o",
              "--start=latest"], "use --read-from"),
])
def test_old_flags_fail_outside_the_cli_too(module, argv, hint):
    """Beam would only warn about an unknown flag and run without it."""
    with pytest.raises(ValueError, match=hint):
        module.run(argv)


@pytest.mark.parametrize("argv", [
    ["--help"], *[[name, "--help"] for name in (
        "demo", "generate", "batch", "stream", "query", "produce",
        "retention")]])
def test_help_is_plain_text(argv, capsys):
    out = help_text(argv, capsys)
    assert out.startswith("usage: topk")
    for markup in ("``", ":class:", ":func:", "::"):
        assert markup not in out, (argv, markup)


@pytest.mark.parametrize("command", ["batch", "stream"])
def test_pipeline_help_hides_underscore_aliases(command, capsys):
    out = help_text([command, "--help"], capsys)
    assert "--item-shards ITEM_SHARDS" in out
    assert "--item_shards ITEM_SHARDS" not in out
    assert "--bq-dataset BQ_DATASET" in out and "--bq_dataset" not in out
    # Said once, in the epilog.
    assert out.count("also parses with underscores") == 1


def test_pipeline_options_keep_the_worker_spelling():
    """Beam ships options to workers as ``--<dest>=value``: every project
    option must parse that way, and a hyphenated command line must survive
    ``get_all_options`` -> ``from_dictionary``."""
    for name, parser in command_parsers().items():
        if name not in PIPELINES:
            continue
        for action in visible_actions(parser):
            if action.dest != "help":
                assert f"--{action.dest}" in action.option_strings, (
                    name, action.option_strings)
    given = PipelineOptions([
        "--item-shards", "5", "--dedup-shards=3", "--sketch-budget-bytes",
        "4096", "--read-from", "latest", "--early-firing-s", "3",
        "--allowed-lateness", "1h", "--commit-offsets", "--bq-dataset", "d",
        "--bq-write-method", "STREAMING_INSERTS", "--from-archive", "a",
        "--archive-start", "2024-05-01", "--idle-timeout-ms", "0"])
    shipped = given.get_all_options(drop_default=True)
    worker = PipelineOptions.from_dictionary(shipped)
    got = worker.get_all_options(drop_default=True)
    expected = {"item_shards": 5, "dedup_shards": 3,
                "sketch_budget_bytes": 4096, "read_from": "latest",
                "early_firing_s": 3.0, "allowed_lateness": 3_600_000,
                "commit_offsets": True, "bq_dataset": "d",
                "bq_write_method": "STREAMING_INSERTS",
                "from_archive": "a", "archive_start": "2024-05-01",
                "idle_timeout_ms": 0}
    assert {k: shipped[k] for k in expected} == expected
    assert {k: got[k] for k in expected} == expected


def test_a_hyphenated_option_reaches_the_pipeline(tmp_path, capsys):
    """A real FnApiRunner run: --sketch-budget-bytes bounds every sketch
    written, --item-shards/--dedup-shards are accepted on the way."""
    events = str(tmp_path / "ev.jsonl")
    out = str(tmp_path / "out")
    generator.write_json_lines(generator.GeneratorConfig(
        events=2000, items=3000, zipf=0.5, rate=1, seed=3), events)
    budget = 2048
    assert cli.main(["batch", "--input", events, "--output", out,
                     "--windows", "1h", "--k", "3", "--method", "cms",
                     "--item-shards", "2", "--dedup-shards", "2",
                     "--sketch-budget-bytes", str(budget)]) == 0
    assert "2000 unique events counted" in capsys.readouterr().out
    sizes = [len(blob) for blob in tables.dataset(out, "sketches").to_table(
        columns=["sketch"]).column("sketch").to_pylist()]
    assert sizes and max(sizes) <= budget
