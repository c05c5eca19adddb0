"""The alert watcher: new committed panes -> rules -> delivery, restart-safe.

``Watcher.poll_once()`` reads the output's committed snapshot
(``topk.storage.tables``): the ``ranked_windows`` rows of the window specs
the rules read with ``emitted_at`` after the newest pane it processed (less
a grace period: commits of parallel writers land slightly out of
``emitted_at`` order; a pane already processed is recognised by its window
and ``emitted_at`` and skipped). It evaluates the new panes in
``emitted_at`` order (``episodes.Evaluator``), delivers the alerts
(``deliver.Deliverer``) and persists its state in a JSON file, replaced
atomically:

1. the alerts found are saved as ``pending`` together with the new
   evaluation state, then delivered, then removed from ``pending`` and the
   state saved again. A watcher killed in between delivers the pending
   alerts on restart (so a receiver may see an alert twice, never zero
   times; the alert id tells copies apart), and never re-evaluates the
   panes it had processed: a restart does not re-send old alerts.

``run()`` polls every ``poll_s`` seconds until stopped; a server thread can
call ``poll_once()`` itself.
"""
import dataclasses
import json
import logging
import os
import threading

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from topk.alerts import episodes
from topk.alerts.deliver import Deliverer
from topk.alerts.rules import RuleSet
from topk.storage import layout
from topk.storage import tables as output_tables

_LOG = logging.getLogger(__name__)

#: Panes re-read behind the newest processed ``emitted_at`` (ms).
GRACE_MS = 60_000
STATE_DIR = "_alerts"
COLUMNS = ["window_start", "window_end", "window_length", "slide",
           "method", "event_type", "rank", "item_id", "count",
           "window_total", "pane_timing", "pane_index", "emitted_at"]


class StateError(ValueError):
    """A one-line reason the state file cannot be used."""


def default_state_path(output: str) -> str:
    return os.path.join(output, STATE_DIR, "state.json")


def load_state(path: str) -> dict | None:
    """The saved state at ``path`` (``None`` if there is none yet)."""
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise StateError(f"state file {path}: cannot be read ({e}); move it "
                         "away to start over (old alerts may then be sent "
                         "again)") from None
    if not isinstance(state, dict) or state.get("version") != \
            episodes.STATE_VERSION:
        raise StateError(f"state file {path}: not a topk alert state of "
                         f"version {episodes.STATE_VERSION}")
    return state


def save_state(path: str, state: dict) -> None:
    """Replace the file at ``path`` with ``state`` atomically (a reader or a
    crash sees the old file or the new one, never a part)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


@dataclasses.dataclass
class PollResult:
    panes: int = 0
    alerts: list = dataclasses.field(default_factory=list)
    delivered: int = 0  # alert x sink deliveries that succeeded
    failed: int = 0


class Watcher:
    """Watches ``output`` for new panes and alerts by ``ruleset``."""

    def __init__(self, output: str, ruleset: RuleSet,
                 state_path: str | None = None,
                 deliverer: Deliverer | None = None,
                 grace_ms: int = GRACE_MS, start_ms: int | None = None):
        self.output = output
        self.ruleset = ruleset
        self.state_path = state_path or default_state_path(output)
        self.deliverer = deliverer or Deliverer(ruleset.deliver)
        self.grace_ms = grace_ms
        self._lock = threading.Lock()
        #: Data files of ranked_windows read by this process (None: none
        #: yet): each poll reads only the files added since.
        self._files: set | None = None
        state = load_state(self.state_path)
        if state is None:
            state = episodes.new_state()
            # A first start evaluates panes from ``start_ms`` on (less
            # the grace period); ``None``: the output's whole history.
            state["emitted_through_ms"] = start_ms
        state.setdefault("seq", 0)
        state.setdefault("emitted_through_ms", None)
        state.setdefault("pending", [])
        state.setdefault("stats", {"panes": 0, "alerts": 0,
                                   "delivered": {}, "failed": {}})
        # Rules removed from the file leave nothing behind.
        names = {r.name for r in ruleset.rules}
        state["episodes"] = {n: e for n, e in state["episodes"].items()
                             if n in names}
        keys = {episodes.stream_key(s) for s in ruleset.streams}
        state["streams"] = {k: v for k, v in state["streams"].items()
                            if k in keys}
        self.state = state
        self.evaluator = episodes.Evaluator(ruleset.rules, state)

    @property
    def stats(self) -> dict:
        return self.state["stats"]

    def poll_once(self) -> PollResult:
        """Evaluate what is new in the committed snapshot and deliver its
        alerts (and any left pending by a killed run)."""
        with self._lock:
            result = PollResult()
            if self.state["pending"]:
                self._deliver(result)  # left by a run killed mid-delivery
            snap = output_tables.snapshot(self.output)
            if snap.seq == self.state["seq"]:
                return result
            found = []
            panes, files = self._new_panes(snap)
            processed = self.evaluator.processed
            for pane in panes:
                found += self.evaluator.process(pane)
                self.state["emitted_through_ms"] = max(
                    self.state["emitted_through_ms"] or 0,
                    pane.emitted_at_ms)
            result.panes = self.evaluator.processed - processed
            self.state["seq"] = snap.seq
            self.stats["panes"] += result.panes
            self.stats["alerts"] += len(found)
            result.alerts = found
            self.state["pending"] = self.state["pending"] + found
            save_state(self.state_path, self.state)
            self._files = files
            if found:
                self._deliver(result)
            return result

    def _deliver(self, result: PollResult) -> None:
        while self.state["pending"]:
            alert = self.state["pending"][0]
            for sink, ok in self.deliverer.deliver(alert).items():
                counter = self.stats["delivered" if ok else "failed"]
                counter[sink] = counter.get(sink, 0) + 1
                if ok:
                    result.delivered += 1
                else:
                    result.failed += 1
            self.state["pending"] = self.state["pending"][1:]
        save_state(self.state_path, self.state)

    def _new_panes(self, snap):
        """The panes of data files this process has not read yet (the
        first poll: files holding rows emitted after the newest pane the
        state says was processed, less the grace period), and the files
        of the snapshot."""
        ds = output_tables.dataset(self.output, layout.RANKED_WINDOWS, snap)
        if ds is None:
            return [], set()
        streams = self.evaluator.streams
        specs = sorted({s[0] for s in streams})
        where = pc.field("window_spec").isin(specs)
        fragments = list(ds.get_fragments())
        files = {f.path for f in fragments}
        since = self.state["emitted_through_ms"]
        if self._files is not None:
            fragments = [f for f in fragments if f.path not in self._files]
        elif since is not None:
            where = where & (pc.field("emitted_at") > pa.scalar(
                (since - self.grace_ms) * 1000, output_tables.TIMESTAMP))
        if not fragments:
            return [], files
        rows = pads.FileSystemDataset(
            fragments, ds.schema, ds.format, ds.filesystem).to_table(
                columns=COLUMNS + ["window_spec"], filter=where)
        return panes_of(rows, streams), files

    def run(self, poll_s: float = 1.0, stop: threading.Event | None = None,
            once: bool = False) -> None:
        """Poll until ``stop`` is set (or once). A failed poll (a file
        vacuumed while read, a full disk) is logged and retried; a legacy
        output (``StorageError``) ends the run."""
        stop = stop or threading.Event()
        while True:
            if once:
                self.poll_once()
                return
            try:
                self.poll_once()
            except (output_tables.StorageError, StateError):
                raise  # the output or the state cannot be used at all
            except Exception as e:  # noqa: BLE001 - the next poll retries
                _LOG.warning("alert poll of %s failed: %s", self.output, e)
            if stop.wait(poll_s):
                return

    def close(self) -> None:
        self.deliverer.close()


def panes_of(rows: pa.Table, streams=None) -> list[episodes.Pane]:
    """``ranked_windows`` rows (with ``window_spec``) -> panes in
    ``emitted_at`` order, only of ``streams`` when given."""
    if rows.num_rows == 0:
        return []
    if "window_spec" not in rows.column_names:
        spec = pc.if_else(
            pc.is_null(rows["slide"]), rows["window_length"],
            pc.binary_join_element_wise(rows["window_length"],
                                        pc.fill_null(rows["slide"], ""), "_"))
        rows = rows.append_column("window_spec", spec)

    def ms(name):
        col = rows[name]
        if pa.types.is_timestamp(col.type):
            col = pc.cast(pc.cast(col, pa.timestamp("ms", tz="UTC")),
                          pa.int64())
        return col

    table = pa.table({
        "emitted_at": ms("emitted_at"), "window_spec": rows["window_spec"],
        "method": rows["method"], "event_type": rows["event_type"],
        "window_start": ms("window_start"), "window_end": ms("window_end"),
        "rank": rows["rank"], "item_id": rows["item_id"],
        "count": rows["count"], "window_total": rows["window_total"],
        "pane_timing": rows["pane_timing"],
        "pane_index": rows["pane_index"]})
    if streams is not None:
        keep = pc.is_in(pc.binary_join_element_wise(
            table["window_spec"], table["method"], table["event_type"], "|"),
            pa.array(sorted(episodes.stream_key(s) for s in streams)))
        table = table.filter(keep)
    order = ["emitted_at", "window_spec", "method", "event_type",
             "window_start", "rank"]
    table = table.sort_by([(c, "ascending") for c in order])
    panes, current, key = [], None, None
    for row in table.to_pylist():
        k = (row["emitted_at"], row["window_spec"], row["method"],
             row["event_type"], row["window_start"])
        if k != key:
            key = k
            current = episodes.Pane(
                row["window_spec"], row["method"], row["event_type"],
                row["window_start"], row["window_end"], row["pane_timing"],
                row["pane_index"], row["emitted_at"], row["window_total"], [])
            panes.append(current)
        current.rows.append((row["rank"], row["item_id"], row["count"]))
    return panes
