"""Time bins: calendar weeks, months, quarters or years covering the spec's [start, end]."""

from __future__ import annotations

from datetime import date, timedelta

from pydantic import BaseModel, ConfigDict


class TimeBin(BaseModel):
    """One time step of the cube: observations with ``start <= date < end``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: date
    end: date  #: exclusive

    @property
    def label(self) -> str:
        """Short stable name, e.g. ``2020-01``, used in task ids."""
        return self.start.isoformat()

    def datetime_range(self) -> str:
        """STAC ``datetime`` search interval covering the bin (end inclusive to the last second)."""
        last = self.end - timedelta(days=1)
        return f"{self.start.isoformat()}T00:00:00Z/{last.isoformat()}T23:59:59.999Z"


def bin_start(d: date, interval: str) -> date:
    """Start of the calendar bin that contains ``d``."""
    if interval == "week":
        return d - timedelta(days=d.weekday())
    if interval == "month":
        return d.replace(day=1)
    if interval == "quarter":
        return date(d.year, 3 * ((d.month - 1) // 3) + 1, 1)
    if interval == "year":
        return date(d.year, 1, 1)
    raise ValueError(f"unknown interval {interval!r}")


def next_start(d: date, interval: str) -> date:
    """Start of the bin after the one starting at ``d``."""
    if interval == "week":
        return d + timedelta(days=7)
    months = {"month": 1, "quarter": 3, "year": 12}[interval]
    m = d.month - 1 + months
    return date(d.year + m // 12, m % 12 + 1, 1)


def time_bins(start: date, end: date, interval: str) -> list[TimeBin]:
    """Every bin from the one holding ``start`` to the one holding ``end``, in order."""
    out: list[TimeBin] = []
    s = bin_start(start, interval)
    while s <= end:
        n = next_start(s, interval)
        out.append(TimeBin(start=s, end=n))
        s = n
    return out


def last_complete_day(interval: str, today: date, settle_days: int = 0) -> date:
    """Last day of the last bin complete on ``today``: its end is ``settle_days`` or more in the past.

    A bin is complete once ``end + settle_days <= today`` (late scenes have had time to arrive).
    """
    return bin_start(today - timedelta(days=settle_days), interval) - timedelta(days=1)


def complete_bins(bins: list[TimeBin], interval: str, today: date, settle_days: int = 0) -> list[TimeBin]:
    """The bins of ``bins`` that are complete on ``today`` (see :func:`last_complete_day`)."""
    last = last_complete_day(interval, today, settle_days)
    return [b for b in bins if b.end <= last + timedelta(days=1)]
