"""Window arithmetic: window specs, slice alignment and range decomposition.

Every window is a merge of aligned slices (docs/architecture.md, decision 2). A window
spec is tumbling (``1h``) or sliding (``1h/1m``: one hour, refreshed every
minute). Windows are aligned to the Unix epoch, like Beam's ``FixedWindows``
and ``SlidingWindows`` with offset 0, so a 30-day window starts at a multiple
of 30 days since 1970-01-01 and a sliding window at a multiple of its slide.

No Beam here: the query layer reuses this module.
"""
import dataclasses
import datetime as dt
import re
import time

import numpy as np

from topk.core.schema import DAY_MS, HOUR_MS, MINUTE_MS

_UNIT_MS = {"m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS}
_DURATION = re.compile(r"^([1-9][0-9]*)([mhd])$")

#: Slice lengths of the exact slices table, finest first.
SLICE_LENGTHS = ("1m", "1h", "1d")

#: The window specs the product supports, by name.
SUPPORTED_WINDOWS = ("1m", "1h", "1d", "30d", "1h/1m", "1d/1h", "30d/1d")
DEFAULT_WINDOWS = SUPPORTED_WINDOWS

#: Longest range ``topk(k, start, end)`` answers.
MAX_RANGE_MS = 30 * DAY_MS


def duration_ms(text: str) -> int:
    """``"5m"`` -> 300000. Units: m (minutes), h (hours), d (days)."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(
            f"bad duration {text!r}: expected a positive integer and a unit "
            "m, h or d, e.g. 1m, 1h, 30d")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


def duration_name(ms: int) -> str:
    """Inverse of ``duration_ms`` using the largest exact unit."""
    for unit, size in (("d", DAY_MS), ("h", HOUR_MS), ("m", MINUTE_MS)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    raise ValueError(f"{ms} ms is not a whole number of minutes")


@dataclasses.dataclass(frozen=True, order=True)
class WindowSpec:
    """A tumbling (``slide_ms is None``) or sliding window of whole minutes."""
    length_ms: int
    slide_ms: int | None = None

    def __post_init__(self):
        if self.length_ms <= 0 or self.length_ms % MINUTE_MS:
            raise ValueError("window length must be a positive whole number "
                             "of minutes")
        if self.slide_ms is not None:
            if self.slide_ms <= 0 or self.slide_ms % MINUTE_MS:
                raise ValueError("slide must be a positive whole number of "
                                 "minutes")
            if self.length_ms % self.slide_ms or self.slide_ms >= self.length_ms:
                raise ValueError("a sliding window's length must be a "
                                 "multiple of its slide, and longer than it")

    @classmethod
    def parse(cls, name: str) -> "WindowSpec":
        """``"1h"`` (tumbling) or ``"1h/1m"`` (sliding)."""
        length, _, slide = name.strip().partition("/")
        return cls(duration_ms(length), duration_ms(slide) if slide else None)

    @property
    def name(self) -> str:
        """The CLI spelling, e.g. ``1h`` or ``1h/1m``."""
        if self.slide_ms is None:
            return duration_name(self.length_ms)
        return f"{duration_name(self.length_ms)}/{duration_name(self.slide_ms)}"

    @property
    def key(self) -> str:
        """A path- and SQL-safe spelling (``1h_1m``), used as partition value."""
        return self.name.replace("/", "_")

    @property
    def step_ms(self) -> int:
        """Distance between consecutive window starts (the pane length)."""
        return self.slide_ms or self.length_ms

    @property
    def panes_per_window(self) -> int:
        return self.length_ms // self.step_ms

    @property
    def length_name(self) -> str:
        return duration_name(self.length_ms)

    @property
    def slide_name(self) -> str | None:
        return None if self.slide_ms is None else duration_name(self.slide_ms)

    def window_starts_for(self, ts_ms: np.ndarray) -> np.ndarray:
        """All window starts whose window contains any of ``ts_ms`` (sorted,
        unique). Tumbling: one per instant; sliding: ``panes_per_window``."""
        panes = np.unique(np.asarray(ts_ms, dtype=np.int64) // self.step_ms)
        offsets = np.arange(self.panes_per_window, dtype=np.int64)
        return np.unique((panes[:, None] - offsets[None, :]).ravel()) * self.step_ms


def parse_windows(text: str) -> list[WindowSpec]:
    """Comma-separated window names, or ``all``. Only supported specs pass."""
    names = SUPPORTED_WINDOWS if text.strip() == "all" else [
        n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("no windows given")
    specs = []
    for n in names:
        spec = WindowSpec.parse(n)
        if spec.name not in SUPPORTED_WINDOWS:
            raise ValueError(f"unsupported window {n!r}; choose from "
                             f"{', '.join(SUPPORTED_WINDOWS)} or 'all'")
        if spec not in specs:
            specs.append(spec)
    return specs


def floor_to(ts_ms, size_ms: int):
    """Align epoch-ms instants (scalar or NumPy array) down to ``size_ms``."""
    return ts_ms - ts_ms % size_ms


def decompose_range(start_ms: int, end_ms: int) -> list[tuple[str, int, int]]:
    """Cover ``[start_ms, end_ms)`` with the fewest aligned 1d/1h/1m slices.

    Returns contiguous runs ``(slice_length, first_start, stop)``: the slices
    of that length starting in ``[first_start, stop)``. Minutes up to the
    first hour boundary, hours up to the first day boundary, whole days, then
    hours and minutes for the tail. This is optimal because each unit divides
    the next, so any other cover of an unaligned edge needs more slices.
    """
    validate_range(start_ms, end_ms)
    runs: list[tuple[str, int, int]] = []
    t = start_ms

    def take(name: str, stop: int) -> None:
        nonlocal t
        if stop > t:
            runs.append((name, t, stop))
            t = stop

    # Head: minutes up to the first hour boundary, hours up to the first day
    # boundary, never past what the tail can still use whole.
    take("1m", min(_ceil_to(t, HOUR_MS), end_ms))
    take("1h", min(_ceil_to(t, DAY_MS), floor_to(end_ms, HOUR_MS)))
    if t % DAY_MS == 0:
        take("1d", floor_to(end_ms, DAY_MS))
    # Tail: hours, then minutes.
    take("1h", floor_to(end_ms, HOUR_MS))
    take("1m", end_ms)
    return runs


def _ceil_to(ts_ms: int, size_ms: int) -> int:
    return -(-ts_ms // size_ms) * size_ms


def validate_range(start_ms: int, end_ms: int) -> None:
    if start_ms % MINUTE_MS or end_ms % MINUTE_MS:
        raise ValueError("start and end must be aligned to whole minutes")
    if end_ms <= start_ms:
        raise ValueError("end must be after start")
    if end_ms - start_ms > MAX_RANGE_MS:
        raise ValueError("range is longer than 30 days")


def parse_time(text: str) -> int:
    """RFC 3339 (``2024-05-01T10:00:00Z``) -> epoch ms. A time without an
    offset is read as UTC."""
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"bad time {text!r}: expected RFC 3339, e.g. "
                         "2024-05-01T10:00:00Z") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp() * 1000)


def now_ms() -> int:
    """The wall clock as epoch ms (``emitted_at`` of output rows)."""
    return int(time.time() * 1000)


def format_time(ms: int) -> str:
    """Epoch ms -> RFC 3339 in UTC (``2024-05-01T10:00:00Z``)."""
    t = dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if ms % 1000:
        text += f".{ms % 1000:03d}"
    return text + "Z"
