"""Approximate top-K combiners: thin Beam wiring around ``topk.approx.sketches``.

``ApproximateTopKFn`` turns the exact partial counts of one window or slice
(tables in ``SLICE_COUNTS_SCHEMA``: event_type, slice_start, item_id, count;
already pre-aggregated, so a hot item is one row) into a fixed-size sketch;
``MergeSketchesFn`` rolls sketches of slices up into longer windows. All
logic, and every guarantee, lives in the Beam-free sketch modules.
Accumulators are sketch objects (or lists of them), which pickle as their
compact bytes.
"""
import apache_beam as beam
import pyarrow as pa

from topk.approx import sketches


class ApproximateTopKFn(beam.CombineFn):
    """Exact slice-count tables -> one sketch (``sketches.ApproxTopK``).

    Every row of every input table is counted, so key the input by what one
    sketch should cover (e.g. ``(event_type, slice_start)``). ``method`` is
    ``cms`` or ``frequent_items``; ``budget_bytes`` caps the sketch's
    serialized size; ``options`` go to the sketch class.
    """

    def __init__(self, method: str,
                 budget_bytes: int = sketches.DEFAULT_BUDGET_BYTES,
                 **options):
        # Fail at construction (pipeline build time), not on a worker.
        sketches.new_sketch(method, budget_bytes, **options)
        self._method = method
        self._budget_bytes = budget_bytes
        self._options = options

    def create_accumulator(self):
        return sketches.new_sketch(self._method, self._budget_bytes,
                                   **self._options)

    def add_input(self, acc, table: pa.Table):
        return acc.update(table["item_id"], table["count"])

    def merge_accumulators(self, accs):
        accs = list(accs)
        return accs[0] if len(accs) == 1 else sketches.merge_many(accs)

    def extract_output(self, acc):
        return acc


class MergeSketchesFn(beam.CombineFn):
    """Sketches (objects or their bytes) of one method and parameters ->
    their merge (e.g. 1m slices -> 1h). Empty input -> ``None``.

    The accumulator is a list of sketches merged all at once
    (``sketches.merge_many``: one Count-Min merge of 60 minute sketches
    costs about what 10 pairwise merges do), collapsed to one sketch
    whenever it holds ``max_pending`` of them, so it never holds more than
    ``max_pending`` budgets, and before it crosses a shuffle (``compact``).
    """

    def __init__(self, max_pending: int = 64):
        self._max_pending = max_pending

    def create_accumulator(self):
        return []

    def add_input(self, acc, sketch):
        if isinstance(sketch, (bytes, bytearray, memoryview)):
            sketch = sketches.sketch_from_bytes(sketch)
        acc.append(sketch)
        return self._collapse(acc) if len(acc) >= self._max_pending else acc

    def merge_accumulators(self, accs):
        merged = [s for acc in accs for s in acc]
        return (self._collapse(merged) if len(merged) >= self._max_pending
                else merged)

    def compact(self, acc):
        return self._collapse(acc)

    def extract_output(self, acc):
        return sketches.merge_many(acc)

    @staticmethod
    def _collapse(acc):
        # A new sketch: inputs, which Beam may reuse, are never modified.
        return [sketches.merge_many(acc)] if len(acc) > 1 else acc
