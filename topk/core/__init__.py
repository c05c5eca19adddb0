"""The exact algebra, Beam-free: the event schema and its validation
(``events``), window arithmetic and range decomposition (``windows``), stable
sharding, de-duplication and one-minute slices (``counting``), per-shard and
merged top-K (``ranking``).
"""
