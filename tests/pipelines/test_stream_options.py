"""``topk stream`` options and runner choice (no services needed)."""
import pytest
from apache_beam.options.pipeline_options import (DebugOptions,
                                                  PipelineOptions,
                                                  PortableOptions,
                                                  PrismRunnerOptions,
                                                  StandardOptions)

from topk import cli
from topk.pipelines import stream
from topk.pipelines.options import TopKOptions


@pytest.mark.parametrize("args,message", [
    (["--allowed_lateness", "soon"], "allowed_lateness"),
    (["--early_firing_s", "0"], "must be positive"),
    (["--windows", "2h"], "unsupported window"),
])
def test_bad_options_are_one_line_errors(args, message, capsys):
    assert cli.main(["stream", "--bootstrap", "127.0.0.1:1", "--topic", "t",
                     "--output", "o", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_unbounded_runs_on_prism_and_bounded_on_the_fnapi_runner(
        monkeypatch, tmp_path):
    fake = tmp_path / "prism"
    fake.write_text("")
    monkeypatch.setenv("TOPK_PRISM", str(fake))
    unbounded = PipelineOptions(["--output", "o"])
    assert stream._choose_runner(unbounded) == "PrismRunner"
    assert unbounded.view_as(StandardOptions).streaming
    assert unbounded.view_as(PrismRunnerOptions).prism_location == str(fake)
    # Prism's splits of stateful bundles lose state (apache/beam#35771).
    assert stream.PRISM_NO_SPLITS in unbounded.view_as(
        DebugOptions).experiments
    # Fewer shards on one machine, unless given.
    assert unbounded.view_as(TopKOptions).item_shards == 2
    assert unbounded.view_as(TopKOptions).dedup_shards == 2
    given = PipelineOptions(["--item_shards", "5"])
    stream._choose_runner(given)
    assert given.view_as(TopKOptions).item_shards == 5
    assert given.view_as(TopKOptions).dedup_shards == 2
    # Beam's 300 s default would end an unbounded job after 5 minutes.
    assert unbounded.view_as(PortableOptions).job_server_timeout > 86_400
    bounded = PipelineOptions(["--bounded"])
    assert stream._choose_runner(bounded) == "FnApiRunner"
    # The in-process runner ranks shards one after the other: one shard.
    assert bounded.view_as(TopKOptions).item_shards == 1
    given = PipelineOptions(["--bounded", "--item-shards", "3"])
    stream._choose_runner(given)
    assert given.view_as(TopKOptions).item_shards == 3
    chosen = PipelineOptions(["--runner", "FlinkRunner"])
    assert stream._choose_runner(chosen) == "FlinkRunner"


def test_a_missing_prism_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("TOPK_PRISM", raising=False)
    monkeypatch.setenv("TOPK_PRISM_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="prism.sh install"):
        stream._choose_runner(PipelineOptions([]))


def test_allowed_lateness_takes_durations():
    options = PipelineOptions(["--allowed_lateness", "1h"])
    assert options.view_as(stream.StreamOptions).allowed_lateness == 3_600_000
    options = PipelineOptions(["--allowed_lateness", "0"])
    assert options.view_as(stream.StreamOptions).allowed_lateness == 0
