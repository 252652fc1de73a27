"""Compare a cube built from the synthetic scene set with the analytic truth (demo and e2e tests).

Independent of the code under test: reads the store with xarray, computes the expectation with
:mod:`cubeless.demo.synthetic` only, and derives each time step's bin [start, end) from the
calendar itself (:func:`calendar_bin`), not from :mod:`cubeless.timebins`. Usage::

    result = compare_cube(store, scene_set, spec)
    assert result.ok, result.summary()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any, Mapping

import numpy as np

from .synthetic import SceneSet
from ..spec import CubeSpec, parse_spec

#: Metres per degree used to express a geographic resolution in metres (an upper bound).
M_PER_DEG = 111_700.0


def default_margin_m(spec: CubeSpec, scene_set: SceneSet) -> float:
    """Pixels closer than this to a block or footprint edge are not compared.

    Two target pixels or two SCL pixels (whichever is larger) for the resampling kernel, plus
    the mask dilation, plus 5 m of slack.
    """
    res_m = spec.resolution * M_PER_DEG if spec.is_geographic else spec.resolution
    return 2 * max(scene_set.config.scl_res, res_m) + spec.mask.dilate * res_m + 5.0


@dataclass(frozen=True)
class BinComparison:
    """One time step of the cube against the truth."""

    label: str
    scenes: int  #: scenes in the bin
    compared: int  #: pixels far enough from edges to compare
    mismatches: Mapping[str, int]  #: variable -> compared pixels that differ
    max_abs_diff: Mapping[str, int]
    valid_pixels: int  #: compared pixels with at least one valid observation
    examples: tuple[str, ...] = ()  #: a few differing pixels, for the failure message

    @property
    def ok(self) -> bool:
        return self.compared > 0 and not any(self.mismatches.values())


@dataclass(frozen=True)
class CubeComparison:
    """The whole cube against the truth."""

    bins: tuple[BinComparison, ...]
    problems: tuple[str, ...] = field(default_factory=tuple)  #: structural problems (time axis, vars)

    @property
    def ok(self) -> bool:
        return bool(self.bins) and not self.problems and all(b.ok for b in self.bins)

    def summary(self) -> str:
        lines = list(self.problems) + ([] if self.bins else ["the cube has no time steps"])
        for b in self.bins:
            lines.append(
                f"{b.label}: scenes={b.scenes} compared={b.compared} valid={b.valid_pixels} "
                f"mismatches={dict(b.mismatches)} max_abs_diff={dict(b.max_abs_diff)}"
                + (f" e.g. {'; '.join(b.examples)}" if b.examples else "")
            )
        return "\n".join(lines)


def calendar_bin(start: date, interval: str) -> tuple[date, date] | str:
    """The calendar bin [start, end) that begins on ``start``, or why no bin of ``interval`` does.

    Written apart from :mod:`cubeless.timebins` on purpose (this module checks that code): weeks
    are ISO weeks (Monday to Monday), months/quarters/years begin on the 1st of their first month.
    """
    if interval == "week":
        if start.isoweekday() != 1:
            return f"{start} is a {start:%A}, not the Monday a week bin starts on"
        return start, date.fromordinal(start.toordinal() + 7)
    months = {"month": 1, "quarter": 3, "year": 12}.get(interval)
    if months is None:
        return f"unknown interval {interval!r}"
    if start.day != 1 or (start.month - 1) % months:
        return f"{start} is not the first day of a {interval}"
    year, month0 = divmod(start.month - 1 + months, 12)
    return start, date(start.year + year, month0 + 1, 1)


def _as_date(v: Any) -> date:
    return date.fromisoformat(str(np.datetime_as_string(np.datetime64(v, "D"))))


def compare_cube(
    store: str,
    scene_set: SceneSet,
    spec: CubeSpec | Mapping[str, Any],
    *,
    margin_m: float | None = None,
    check_count: bool = True,
    group_by_day: bool = True,
) -> CubeComparison:
    """Compare every committed time step of the cube at ``store`` with the synthetic truth."""
    from ..store import open_cube

    spec = spec if isinstance(spec, CubeSpec) else parse_spec(dict(spec))
    margin = default_margin_m(spec, scene_set) if margin_m is None else margin_m
    ds = open_cube(store, raw=True)  # the stored DNs (Zarr or Icechunk format)
    _, ydim, xdim = spec.dims
    problems: list[str] = []
    for name in (*spec.bands, *(["count"] if check_count else [])):
        if name not in ds:
            problems.append(f"variable {name!r} missing from the cube (has {sorted(ds.data_vars)})")
    if problems:
        return CubeComparison(bins=(), problems=tuple(problems))
    xx, yy = np.meshgrid(ds[xdim].values, ds[ydim].values)
    bnds = ds["time_bnds"].values if "time_bnds" in ds else None
    out: list[BinComparison] = []
    for t, tv in enumerate(ds["time"].values):
        start = _as_date(tv)
        got_bin = calendar_bin(start, spec.interval)
        if isinstance(got_bin, str):
            problems.append(f"time step {t}: {got_bin}")
            continue
        b_start, b_end = got_bin
        if b_end <= spec.start or b_start > spec.end:
            problems.append(f"time step {t} ({b_start} .. {b_end}) lies outside the spec's {spec.start} .. {spec.end}")
            continue
        if bnds is not None and (_as_date(bnds[t][0]), _as_date(bnds[t][1])) != (b_start, b_end):
            problems.append(f"time step {t}: time_bnds {_as_date(bnds[t][0])} .. {_as_date(bnds[t][1])} "
                            f"are not the calendar {spec.interval} {b_start} .. {b_end}")
        exp = scene_set.expected(
            xx, yy, spec.crs, start=b_start, end=b_end, bands=spec.bands,
            scl_exclude=spec.mask.scl_exclude, max_cloud_cover=spec.max_cloud_cover, group_by_day=group_by_day,
        )
        cmp = exp.edge_m >= margin
        mism: dict[str, int] = {}
        maxd: dict[str, int] = {}
        examples: list[str] = []
        targets = {b: exp.values[b] for b in spec.bands}
        if check_count:
            targets["count"] = exp.count
        for name, want in targets.items():
            got = np.asarray(ds[name].isel(time=t).transpose(ydim, xdim).values).astype(np.int64)
            diff = np.abs(got - want.astype(np.int64))
            bad = (diff != 0) & cmp
            mism[name] = int(bad.sum())
            maxd[name] = int(diff[cmp].max()) if cmp.any() else 0
            for r, c in list(zip(*np.nonzero(bad)))[:3]:
                examples.append(
                    f"{name}[{ydim}={yy[r, c]:.6f},{xdim}={xx[r, c]:.6f}] got {got[r, c]} want {want[r, c]}"
                    f" (count {exp.count[r, c]})"
                )
        out.append(BinComparison(
            label=b_start.isoformat(), scenes=len(exp.scenes), compared=int(cmp.sum()), mismatches=mism,
            max_abs_diff=maxd, valid_pixels=int(((exp.count > 0) & cmp).sum()), examples=tuple(examples[:6]),
        ))
    return CubeComparison(bins=tuple(out), problems=tuple(problems))
