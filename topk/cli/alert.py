"""``topk alert``: spike alerts on an output's ranked windows."""
import copy
import signal
import sys
import threading
import time

from topk.cli.common import CliError


def add_alert(sub) -> None:
    p = sub.add_parser(
        "alert", help="Watch an output's ranked windows and send spike "
        "alerts by a rule file.",
        description="Poll the committed ranked_windows panes of --output, "
        "evaluate the rules of --rules (count over a threshold, share of a "
        "window, entering the top k, rank jumps) on every new pane and "
        "deliver each alert once per episode to a log line, a Kafka topic "
        "and/or a webhook. State is kept in --state, so a restart does not "
        "re-send old alerts. See docs/alerts.md.")
    p.add_argument("--rules", required=True,
                   help="YAML rule file (rules, cooldown, deliver).")
    p.add_argument("--output", required=True,
                   help="Output directory whose ranked_windows table is "
                   "watched.")
    p.add_argument("--state", default=None,
                   help="JSON state file: what was processed and the open "
                   "episodes (default OUTPUT/_alerts/state.json).")
    p.add_argument("--poll-s", type=float, default=1.0,
                   help="Seconds between polls of the output (default 1).")
    p.add_argument("--history", action="store_true",
                   help="On a first start (no state file yet), evaluate "
                   "the panes the output already holds, past episodes "
                   "included. Default: from the start on (panes emitted in "
                   "the minute before included). A state file always "
                   "resumes where the last run stopped.")
    p.add_argument("--once", action="store_true",
                   help="Evaluate what is new, deliver, and exit (for cron "
                   "and tests). Default: poll until stopped.")
    p.set_defaults(func=cmd_alert)


def cmd_alert(args) -> int:
    from topk.alerts import rules, watch
    from topk.storage.tables import StorageError
    if not 0 < args.poll_s < float("inf"):
        raise CliError("--poll-s must be a number of seconds > 0")
    try:
        ruleset = rules.load(args.rules)
    except rules.RulesError as e:
        raise CliError(str(e)) from None
    try:
        watcher = watch.Watcher(
            args.output, ruleset, args.state,
            start_ms=None if args.history else int(time.time() * 1000))
    except watch.StateError as e:
        raise CliError(str(e)) from None
    before = copy.deepcopy(watcher.stats)
    stop = threading.Event()
    if not args.once:
        def on_signal(signum, frame):
            stop.set()
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        watcher.run(poll_s=args.poll_s, stop=stop, once=args.once)
    except StorageError as e:
        raise CliError(str(e)) from None
    finally:
        watcher.close()
    s = watcher.stats
    print(f"topk alert: {s['panes'] - before['panes']} new panes, "
          f"{s['alerts'] - before['alerts']} alerts; delivered "
          f"{_counts(s['delivered'], before['delivered'])}; failed "
          f"{_counts(s['failed'], before['failed'])}", file=sys.stderr)
    return 0


def _counts(counter: dict, before: dict) -> str:
    return ", ".join(f"{k} {v - before.get(k, 0)}"
                     for k, v in sorted(counter.items())) or "0"
