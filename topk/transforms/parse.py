"""``ParseEvents``: raw batches -> validated event tables + dead letters."""
import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from topk.core import events as events_lib
# The dead-letter output's tag is the name of the table it is written to.
from topk.storage.layout import DEAD_LETTERS
from topk.transforms import coders  # noqa: F401 (registers the Arrow coder)


class _ParseBatchFn(beam.DoFn):

    def __init__(self):
        self.valid = Metrics.counter("topk", "events_valid")
        self.rejected = Metrics.counter("topk", "events_dead_letter")

    def process(self, element):
        source, payload = element
        if isinstance(payload, events_lib.ReadFailure):
            self.rejected.inc()
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTERS, events_lib.dead_letter_of(payload, source))
            return
        if isinstance(payload, (pa.Table, pa.RecordBatch)):
            parsed = events_lib.validate_table(payload, source)
        else:
            parsed = events_lib.parse_json_lines(payload, source)
        self.valid.inc(parsed.events.num_rows)
        if parsed.events.num_rows:
            yield parsed.events
        if parsed.dead_letters.num_rows:
            self.rejected.inc(parsed.dead_letters.num_rows)
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, parsed.dead_letters)


class ParseEvents(beam.PTransform):
    """Parse and validate batches of events.

    Takes ``(source, payload)`` where ``payload`` is newline-delimited JSON
    (bytes; one event per line, a Kafka message or a file chunk) or an Arrow
    table with typed event columns, or a ``ReadFailure`` (a file that broke
    off: one dead letter with the reason), and ``source`` says where it came
    from.
    Yields a ``DoOutputsTuple``: the main output holds ``pa.Table`` batches in
    ``EVENT_SCHEMA``; ``dead_letters`` holds ``pa.Table`` batches in
    ``DEAD_LETTER_SCHEMA`` (raw record, reason, source). Counters
    ``events_valid`` and ``events_dead_letter`` count both.
    """

    def expand(self, batches):
        return batches | "Parse" >> beam.ParDo(_ParseBatchFn()).with_outputs(
            DEAD_LETTERS, main="events").with_output_types(pa.Table)
