"""Time bins: calendar weeks, months, quarters or years covering the spec's [start, end].

Every rule about bins lives here: which bins a date range covers, when a bin is complete, a bin's
index on a cube's time axis, the STAC ``datetime`` interval of whole bins, the bin of a day.
(:mod:`cubeless.demo.verify` derives bins from the calendar on its own, to check this module.)
"""

from __future__ import annotations

from datetime import date, timedelta

from typing import TYPE_CHECKING, Sequence

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import numpy as np


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


def time_index(origin: date, bin: TimeBin | date, interval: str) -> int:
    """Index of ``bin`` on a time axis whose index 0 is the bin starting at ``origin``."""
    from .errors import PlanError

    start = bin.start if isinstance(bin, TimeBin) else bin
    if bin_start(start, interval) != start:
        raise ValueError(f"{start} is not the start of a {interval} bin")
    if start < origin:
        raise PlanError(
            f"bin {start} is before the cube's first bin {origin}; a cube cannot grow backwards in time, "
            f"start at {origin} or later, or choose another store"
        )
    if interval == "week":
        return (start - origin).days // 7
    months = {"month": 1, "quarter": 3, "year": 12}[interval]
    return ((start.year - origin.year) * 12 + start.month - origin.month) // months


def bins_from(origin: date, n: int, interval: str) -> list[TimeBin]:
    """The first ``n`` bins of a time axis starting at ``origin``."""
    out: list[TimeBin] = []
    s = origin
    for _ in range(n):
        e = next_start(s, interval)
        out.append(TimeBin(start=s, end=e))
        s = e
    return out


def bins_datetime(bins: Sequence[TimeBin]) -> str:
    """STAC ``datetime`` interval covering whole bins (a bin's median uses all of its days)."""
    first, last = bins[0], bins[-1]
    end = last.end - timedelta(days=1)
    return f"{first.start.isoformat()}T00:00:00Z/{end.isoformat()}T23:59:59.999Z"


def bin_of_days(bins: Sequence[TimeBin], days: Sequence[date]) -> "np.ndarray":
    """Index in ``bins`` (sorted, contiguous or not) of the bin holding each day
    (``start <= day < end``), -1 for days in none."""
    import numpy as np

    if not days:
        return np.zeros(0, dtype=np.int64)
    starts = np.array([b.start for b in bins], dtype="datetime64[D]")
    ends = np.array([b.end for b in bins], dtype="datetime64[D]")
    d = np.array(days, dtype="datetime64[D]")
    idx = np.searchsorted(starts, d, side="right") - 1
    ok = (idx >= 0) & (d < ends[np.clip(idx, 0, None)])
    return np.where(ok, idx, -1)
