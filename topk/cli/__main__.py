"""``python -m topk.cli``: the ``topk`` command."""
import sys

from topk.cli import main

sys.exit(main())
