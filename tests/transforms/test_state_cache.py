"""The process-wide cache of what stateful DoFns rebuild from their state
(``topk.transforms.state_cache``)."""
import pickle

from topk.transforms.state_cache import StateCache


def test_copies_of_a_stage_share_entries_by_generation():
    stage = StateCache()
    copy = pickle.loads(pickle.dumps(stage))  # as the SDK makes a copy
    stage.setup()
    copy.setup()
    held = object()
    stage.put("shard-0", "g1", held)
    assert copy.get("shard-0", "g1") is held
    # Another generation means the state changed elsewhere: rebuild.
    assert copy.get("shard-0", "g2") is None
    assert copy.get("shard-1", "g1") is None
    # Another stage (another pipeline, another DoFn) never sees it.
    other = StateCache()
    other.setup()
    assert other.get("shard-0", "g1") is None
    other.teardown()


def test_entries_go_with_the_last_copy():
    stage = StateCache()
    copy = pickle.loads(pickle.dumps(stage))
    stage.setup()
    copy.setup()
    stage.put("k", "g", [1])
    stage.teardown()
    assert copy.get("k", "g") == [1]  # one copy still runs
    copy.teardown()
    assert copy.get("k", "g") is None
