"""Load tools: seedable synthetic events (``generator``) and a Kafka
producer that sends them at a chosen rate (``producer``).
"""
