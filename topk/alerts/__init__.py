"""Spike alerts over the ranked windows of an output (no Beam).

``topk alert --rules FILE --output DIR`` watches the committed
``ranked_windows`` panes of an output and sends an alert when a rule's
condition starts to hold for an item (docs/alerts.md):

- ``rules``: the YAML rule file as validated dataclasses;
- ``episodes``: pure evaluation of panes against rules (episodes, cool-down);
- ``deliver``: log, Kafka topic and webhook delivery, with bounded retries;
- ``watch``: the poller that reads new panes, evaluates, delivers and
  persists its state so that a restart does not re-send old alerts.
"""
