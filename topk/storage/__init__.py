"""The output tables on disk: their layout (``layout``), retention tiers
(``retention``) and the archive ranges that reprocessing reads
(``reprocess``).
"""
