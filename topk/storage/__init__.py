"""The output tables on disk: Delta tables committed together through a
manifest (``tables``), their layout (``layout``), retention tiers
(``retention``) and the archive ranges that reprocessing reads
(``reprocess``).
"""
