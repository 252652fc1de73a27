from datetime import date

import pytest

from cubeless.timebins import TimeBin, bin_start, time_bins


def test_monthly_bins_cover_partial_months():
    bins = time_bins(date(2020, 1, 15), date(2020, 3, 2), "month")
    assert [(b.start, b.end) for b in bins] == [
        (date(2020, 1, 1), date(2020, 2, 1)),
        (date(2020, 2, 1), date(2020, 3, 1)),
        (date(2020, 3, 1), date(2020, 4, 1)),
    ]


def test_december_rolls_into_next_year():
    (b,) = time_bins(date(2021, 12, 31), date(2021, 12, 31), "month")
    assert b.end == date(2022, 1, 1)
    assert b.label == "2021-12-01"


@pytest.mark.parametrize(
    "interval,expected",
    [("week", 1 + 52), ("quarter", 4), ("year", 1)],
)
def test_other_intervals(interval, expected):
    bins = time_bins(date(2021, 1, 1), date(2021, 12, 31), interval)
    assert len(bins) == expected
    assert all(a.end == b.start for a, b in zip(bins, bins[1:]))


def test_week_starts_monday():
    assert bin_start(date(2024, 5, 16), "week") == date(2024, 5, 13)


def test_datetime_range_ends_before_next_bin():
    b = TimeBin(start=date(2020, 2, 1), end=date(2020, 3, 1))
    assert b.datetime_range() == "2020-02-01T00:00:00Z/2020-02-29T23:59:59.999Z"


def test_a_bin_is_complete_only_after_its_end_plus_the_settling_delay():
    from cubeless.timebins import complete_bins, last_complete_day

    bins = time_bins(date(2024, 4, 1), date(2024, 6, 30), "month")
    # May ends (exclusive) on 2024-06-01: with 3 days to settle it is complete from 2024-06-04.
    assert [b.start.month for b in complete_bins(bins, "month", date(2024, 6, 3), 3)] == [4]
    assert [b.start.month for b in complete_bins(bins, "month", date(2024, 6, 4), 3)] == [4, 5]
    assert [b.start.month for b in complete_bins(bins, "month", date(2024, 6, 1), 0)] == [4, 5]
    assert last_complete_day("month", date(2024, 6, 4), 3) == date(2024, 5, 31)
    assert last_complete_day("week", date(2024, 6, 5), 0) == date(2024, 6, 2)  # Monday 2024-06-03
