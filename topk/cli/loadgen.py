"""``topk generate`` and ``topk produce``: synthetic events to a file or to
a Kafka topic."""
import time

from topk.cli.common import CliError, add_renamed, make_parent
from topk.core import windows

#: Flags both commands had before the convention (one meaning per flag
#: name: --start is the query range, --rate was ambiguous).
_GENERATE_RENAMED = {"--rate": "--event-rate", "--start": "--event-start"}
_PRODUCE_RENAMED = {"--rate": "--send-rate", "--start": "--event-start"}


def add_generate(sub) -> None:
    from topk.loadgen.generator import GeneratorConfig
    d = GeneratorConfig()
    p = sub.add_parser(
        "generate", help="Write synthetic click/play events (JSON lines or "
        "Parquet).", description="Write seedable synthetic events: Zipf "
        "item popularity, out-of-order event times, duplicates, malformed "
        "records and hot-item bursts. The format follows --out's suffix: "
        ".jsonl/.json/.ndjson (optionally .gz) or .parquet.")
    p.add_argument("--events", type=int, required=True,
                   help="Number of valid, distinct events.")
    p.add_argument("--out", required=True, help="File to write.")
    p.add_argument("--event-rate", type=float, default=d.rate,
                   help="Events per second of event time (default "
                   f"{d.rate:g}); the span is events / event-rate.")
    _add_event_shape_options(p, d)
    add_renamed(p, _GENERATE_RENAMED)
    p.set_defaults(func=cmd_generate)


def _add_event_shape_options(p, d, start_help: str = "") -> None:
    """Options shared by ``generate`` and ``produce``: what the synthetic
    events look like (``d``: the generator's defaults)."""
    p.add_argument("--seed", type=int, default=d.seed,
                   help=f"Random seed (default {d.seed}); same seed, same "
                   "events.")
    p.add_argument("--items", type=int, default=d.items,
                   help=f"Catalogue size (default {d.items}).")
    p.add_argument("--zipf", type=float, default=d.zipf,
                   help=f"Popularity exponent s, P(rank r) ~ 1/r^s "
                   f"(default {d.zipf}).")
    p.add_argument("--event-start", default=d.start,
                   help=f"First event time, RFC 3339{start_help} (default "
                   f"{d.start}).")
    p.add_argument("--jitter", type=float, default=d.jitter_s,
                   help=f"Out-of-order jitter in seconds (default "
                   f"{d.jitter_s:g}).")
    p.add_argument("--duplicates", type=float, default=d.duplicate_share,
                   help="Share of extra re-deliveries of earlier events "
                   f"(default {d.duplicate_share:g}).")
    p.add_argument("--malformed", type=float, default=d.malformed_share,
                   help="Share of extra malformed records (default "
                   f"{d.malformed_share:g}).")
    p.add_argument("--ts-format", choices=("ms", "rfc3339", "mixed"),
                   default=d.ts_format,
                   help=f"How ts is written (default {d.ts_format}).")
    p.add_argument("--burst-item", default=None,
                   help="Item that bursts (hot-item burst); off by default.")
    p.add_argument("--burst-share", type=float, default=0.5,
                   help="Share of events inside the burst that go to the "
                   "burst item (default 0.5).")
    p.add_argument("--burst-start", default=None,
                   help="Burst start, RFC 3339 (default: middle of the span).")
    p.add_argument("--burst-duration", type=float, default=d.burst_duration_s,
                   help=f"Burst length in seconds (default "
                   f"{d.burst_duration_s:g}).")


def _burst(args) -> dict:
    """The generator's burst settings from the options."""
    return {"burst_item": args.burst_item,
            "burst_share": args.burst_share if args.burst_item else 0.0,
            "burst_start": args.burst_start,
            "burst_duration_s": args.burst_duration}


def cmd_generate(args) -> int:
    from topk.loadgen import generator
    if args.events < 1:
        raise CliError("--events must be at least 1")
    config = generator.GeneratorConfig(
        events=args.events, items=args.items, zipf=args.zipf,
        start=args.event_start, rate=args.event_rate, jitter_s=args.jitter,
        duplicate_share=args.duplicates, malformed_share=args.malformed,
        ts_format=args.ts_format, seed=args.seed, **_burst(args))
    make_parent(args.out)
    started = time.perf_counter()
    try:
        if args.out.lower().endswith((".parquet", ".pq")):
            summary = generator.write_parquet(config, args.out)
        else:
            summary = generator.write_json_lines(config, args.out)
    except ValueError as e:
        raise CliError(str(e)) from None
    took = time.perf_counter() - started
    print(f"wrote {summary.path}: {summary.valid_events} events, "
          f"{summary.duplicates} duplicates, {summary.malformed} malformed, "
          f"{windows.format_time(summary.first_ts_ms)} .. "
          f"{windows.format_time(summary.last_ts_ms)}, "
          f"{summary.bytes / 1e6:.1f} MB in {took:.1f} s")
    return 0


def add_produce(sub) -> None:
    from topk.loadgen.generator import GeneratorConfig
    d = GeneratorConfig()
    p = sub.add_parser(
        "produce", help="Send synthetic events to a Kafka topic.",
        description="Generate seedable synthetic events (as `topk generate` "
        "does) and send them to a Kafka topic with confluent-kafka (or "
        "kafka-python, --kafka-client), at "
        "--send-rate or as fast as possible, printing progress. Creates the "
        "topic if it does not exist. Each message carries "
        "--events-per-message newline-delimited events and, by default, its "
        "newest event time as its Kafka timestamp.")
    p.add_argument("--bootstrap", required=True,
                   help="Kafka bootstrap servers, host:port[,host:port].")
    p.add_argument("--topic", required=True,
                   help="Kafka topic of the JSON events.")
    p.add_argument("--events", type=int, required=True,
                   help="Number of valid, distinct events (duplicates and "
                   "malformed records come on top).")
    p.add_argument("--events-per-message", type=int, default=1,
                   help="Events packed into one message, newline-delimited "
                   "(default 1).")
    p.add_argument("--send-rate", type=float, default=None,
                   help="Target events per second sent (default: as fast as "
                   "possible).")
    p.add_argument("--event-rate", type=float, default=None,
                   help="Events per second of event time (default: "
                   f"--send-rate if given, else {d.rate:g}); the span is "
                   "events / event-rate.")
    p.add_argument("--partitions", type=int, default=4,
                   help="Partitions of the topic if it is created (default "
                   "4).")
    p.add_argument("--acks", choices=("0", "1", "all"), default="1",
                   help="Producer acks (default 1: the leader wrote it).")
    p.add_argument("--linger-ms", type=int, default=None,
                   help="Producer linger.ms (default tuned: 20).")
    p.add_argument("--batch-size", type=int, default=None,
                   help="Producer batch.size in bytes (default tuned: 1 MB).")
    p.add_argument("--kafka-client", choices=("confluent", "kafka-python"),
                   default=None,
                   help="Kafka client that sends: confluent (confluent-kafka, "
                   "librdkafka; default when installed, about 3x faster than "
                   "kafka-python at a third of the CPU) or kafka-python.")
    p.add_argument("--timestamps", choices=("event", "now"), default="event",
                   help="Kafka timestamp of a message: its newest event time "
                   "(default) or the producer's clock.")
    p.add_argument("--retention-ms", type=int, default=-1,
                   help="retention.ms of a topic this command creates "
                   "(default -1, forever: time retention looks at message "
                   "timestamps, which may be old event times).")
    p.add_argument("--broker-timeout-s", type=float, default=10.0,
                   help="Wait this long for --bootstrap to answer before "
                   "generating anything; an unreachable broker is then a "
                   "one-line error (default 10; 0 skips the check).")
    p.add_argument("--progress-every", type=float, default=5.0,
                   help="Seconds between progress lines (default 5).")
    _add_event_shape_options(p, d, start_help=" or 'now'")
    add_renamed(p, _PRODUCE_RENAMED)
    p.set_defaults(func=cmd_produce)


def cmd_produce(args) -> int:
    from topk.loadgen import generator, producer
    if args.events < 1:
        raise CliError("--events must be at least 1")
    if args.events_per_message < 1:
        raise CliError("--events-per-message must be at least 1")
    for flag, value in (("--send-rate", args.send_rate),
                        ("--event-rate", args.event_rate)):
        if value is not None and value <= 0:
            raise CliError(f"{flag} must be positive")
    if not 0 <= args.broker_timeout_s < float("inf"):
        raise CliError("--broker-timeout-s must be a number of seconds >= 0")
    try:
        config = generator.GeneratorConfig(
            events=args.events, items=args.items, zipf=args.zipf,
            start=producer.resolve_start(args.event_start),
            # Pacing both alike by default keeps event time near the wall
            # clock (with --event-start now): a live-looking stream.
            rate=args.event_rate or args.send_rate or
            generator.GeneratorConfig.rate, jitter_s=args.jitter,
            duplicate_share=args.duplicates, malformed_share=args.malformed,
            ts_format=args.ts_format, seed=args.seed, **_burst(args))
        tuned = {}
        if args.linger_ms is not None:
            tuned["linger_ms"] = args.linger_ms
        if args.batch_size is not None:
            tuned["batch_size"] = args.batch_size
        summary = producer.produce(
            args.bootstrap, args.topic, config,
            events_per_message=args.events_per_message,
            send_rate=args.send_rate, partitions=args.partitions,
            acks="all" if args.acks == "all" else int(args.acks),
            timestamps=args.timestamps, retention_ms=args.retention_ms,
            progress=lambda line: print(line, flush=True),
            progress_every_s=args.progress_every,
            broker_timeout_s=args.broker_timeout_s,
            client=args.kafka_client, **tuned)
    except ValueError as e:
        raise CliError(str(e)) from None
    return 1 if summary.failed_messages else 0
