"""BigQuery without Beam: connecting (``client``, emulator-aware) and the
output tables' DDL, partitioning and retention (``tables``).
"""
