"""The streaming state machines, Beam-free: de-duplication by event id
(``dedup``) and the per-shard pane logic of open windows (``panes``).
``topk.transforms.stream_topk`` keeps their state in Beam's state API.
"""
