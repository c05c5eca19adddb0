"""``topk batch`` options that depend on the runner (no services needed)."""
import pytest

from topk.pipelines import batch
from topk.pipelines.options import TopKOptions

IO = ["--input", "in.jsonl", "--output", "out"]


@pytest.mark.parametrize("args,shards", [
    # The in-process runner ranks shards one after the other: one shard.
    ([], batch.LOCAL_ITEM_SHARDS),
    (["--runner", "FnApiRunner"], batch.LOCAL_ITEM_SHARDS),
    # Given shards, and runners with workers to spread them over, keep it.
    (["--item-shards", "5"], 5),
    (["--runner", "FnApiRunner", "--direct_running_mode",
      "multi_processing"], 8),
    (["--runner", "FlinkRunner"], 8),
])
def test_item_shards_default_to_one_only_in_process(args, shards):
    options = batch.parse_args([*IO, *args])
    batch.choose_runner(options)
    assert options.view_as(TopKOptions).item_shards == shards
