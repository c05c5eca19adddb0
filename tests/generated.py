"""The oracle's view of what ``topk.loadgen.generator`` produces (for tests that
send generated events through Kafka and compare with the oracle)."""
import oracle
from topk.loadgen import generator


def parsed_records(config: generator.GeneratorConfig):
    """``(valid events, dead letters)`` of the records ``config`` generates,
    parsed by the brute-force oracle."""
    records = b"".join(line.as_py().encode() + b"\n"
                       for chunk in generator.generate_records(config)
                       for line in chunk)
    return oracle.parse_block(records)
