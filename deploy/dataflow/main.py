"""Dataflow Flex Template entry point: ``topk batch`` (files or archive).

The template launcher runs this file with the template's parameters as
``--name=value`` options (see metadata.json) plus the Dataflow options, and
``--setup_file`` (FLEX_TEMPLATE_PYTHON_SETUP_FILE in the Dockerfile), so the
workers install the ``topk`` package from the sdist it builds.
"""
import logging

from topk.pipelines import batch

if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    batch.run()
