"""verify.calendar_bin: the e2e truth check derives bin boundaries from the calendar, not from
cubeless.timebins (the code under test); the two must agree on every bin."""

from __future__ import annotations

from datetime import date

import pytest

from cubeless.demo.verify import calendar_bin
from cubeless.timebins import time_bins


@pytest.mark.parametrize("interval", ["week", "month", "quarter", "year"])
def test_calendar_bins_agree_with_timebins(interval: str) -> None:
    bins = time_bins(date(2015, 12, 20), date(2025, 3, 3), interval)
    assert len(bins) > 5
    for b in bins:
        assert calendar_bin(b.start, interval) == (b.start, b.end)


def test_what_is_not_a_bin_start_is_said() -> None:
    assert calendar_bin(date(2024, 5, 2), "month") == "2024-05-02 is not the first day of a month"
    assert calendar_bin(date(2024, 5, 1), "quarter") == "2024-05-01 is not the first day of a quarter"
    assert "not the Monday" in str(calendar_bin(date(2024, 5, 1), "week"))
    assert calendar_bin(date(2024, 12, 1), "month") == (date(2024, 12, 1), date(2025, 1, 1))
    assert calendar_bin(date(2024, 10, 1), "quarter") == (date(2024, 10, 1), date(2025, 1, 1))
