"""Window specs, alignment and range decomposition (no Beam)."""
import numpy as np
import pytest

from topk.core import windows
from topk.core.schema import DAY_MS, HOUR_MS, MINUTE_MS
from topk.core.windows import WindowSpec, decompose_range, parse_time


def test_spec_names_round_trip():
    for name in windows.SUPPORTED_WINDOWS:
        assert WindowSpec.parse(name).name == name
    spec = WindowSpec.parse("1h/1m")
    assert (spec.length_ms, spec.slide_ms, spec.key) == (HOUR_MS, MINUTE_MS,
                                                          "1h_1m")
    assert spec.panes_per_window == 60
    assert WindowSpec.parse("30d").step_ms == 30 * DAY_MS


@pytest.mark.parametrize("text, message", [
    ("2h", "unsupported window"),
    ("1h/7m", "multiple of its slide"),
    ("1h/2m", "unsupported window"),
    ("1x", "bad duration"),
    ("0m", "bad duration"),
    ("1h/2h", "longer than it"),
    ("", "no windows given"),
])
def test_parse_windows_rejects_bad_specs(text, message):
    with pytest.raises(ValueError, match=message):
        windows.parse_windows(text)


def test_parse_windows_all_and_dedup():
    assert [s.name for s in windows.parse_windows("all")] == list(
        windows.SUPPORTED_WINDOWS)
    assert [s.name for s in windows.parse_windows("1h, 1h,1m")] == ["1h", "1m"]


def test_window_starts_for_sliding_and_tumbling():
    t = parse_time("2024-05-01T10:30:15Z")
    [tumbling] = WindowSpec.parse("1h").window_starts_for(np.array([t]))
    assert tumbling == parse_time("2024-05-01T10:00:00Z")
    sliding = WindowSpec.parse("1h/1m").window_starts_for(np.array([t]))
    assert len(sliding) == 60
    assert sliding[0] == parse_time("2024-05-01T09:31:00Z")
    assert sliding[-1] == parse_time("2024-05-01T10:30:00Z")
    # 30-day windows are aligned to the epoch, like Beam's FixedWindows.
    [month] = WindowSpec.parse("30d").window_starts_for(np.array([t]))
    assert month % (30 * DAY_MS) == 0 and month <= t < month + 30 * DAY_MS


def test_decompose_range_uses_fewest_aligned_slices():
    runs = decompose_range(parse_time("2024-05-01T10:37:00Z"),
                           parse_time("2024-05-05T03:02:00Z"))
    assert runs == [
        ("1m", parse_time("2024-05-01T10:37:00Z"), parse_time("2024-05-01T11:00:00Z")),
        ("1h", parse_time("2024-05-01T11:00:00Z"), parse_time("2024-05-02T00:00:00Z")),
        ("1d", parse_time("2024-05-02T00:00:00Z"), parse_time("2024-05-05T00:00:00Z")),
        ("1h", parse_time("2024-05-05T00:00:00Z"), parse_time("2024-05-05T03:00:00Z")),
        ("1m", parse_time("2024-05-05T03:00:00Z"), parse_time("2024-05-05T03:02:00Z")),
    ]
    # Inside one hour: minutes only; exactly one day: one slice.
    assert decompose_range(parse_time("2024-05-01T10:37:00Z"),
                           parse_time("2024-05-01T10:39:00Z")) == [
        ("1m", parse_time("2024-05-01T10:37:00Z"), parse_time("2024-05-01T10:39:00Z"))]
    day = parse_time("2024-05-01T00:00:00Z")
    assert decompose_range(day, day + DAY_MS) == [("1d", day, day + DAY_MS)]


@pytest.mark.parametrize("start, end, message", [
    ("2024-05-01T10:00:30Z", "2024-05-01T11:00:00Z", "aligned to whole minutes"),
    ("2024-05-01T11:00:00Z", "2024-05-01T11:00:00Z", "end must be after start"),
    ("2024-05-01T00:00:00Z", "2024-05-31T00:01:00Z", "longer than 30 days"),
])
def test_decompose_range_rejects_bad_ranges(start, end, message):
    with pytest.raises(ValueError, match=message):
        decompose_range(parse_time(start), parse_time(end))


def test_time_parsing_and_formatting():
    assert parse_time("2024-05-01T10:00:00Z") == 1714557600000
    assert parse_time("2024-05-01T12:00:00+02:00") == 1714557600000
    assert parse_time("2024-05-01T10:00:00") == 1714557600000  # naive = UTC
    assert windows.format_time(1714557600250) == "2024-05-01T10:00:00.250Z"
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time("tomorrow")
