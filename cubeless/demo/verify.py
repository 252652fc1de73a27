"""Compare a cube built from the synthetic scene set with the analytic truth (demo and e2e tests).

Independent of the code under test: reads the store with xarray, computes the expectation with
:mod:`cubeless.demo.synthetic` only, and derives each time step's bin [start, end) from the
calendar itself (:func:`calendar_bin`), not from :mod:`cubeless.timebins`. Usage::

    result = compare_cube(store, scene_set, spec)
    assert result.ok, result.summary()
    edges = compare_edges(store, scene_set, spec)   # the pixels compare_cube leaves out
    assert edges.ok, edges.summary()
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


@dataclass(frozen=True)
class EdgeComparison:
    """The pixels near an edge (a swath's nodata strip, a footprint, a block) against bounds.

    Near an edge the exact value depends on which source pixels a reader samples, so each pixel is
    checked against what any reading within ``margin`` of it could give: its count lies between
    the observations valid at every sample point and those valid at any, and each band lies within
    the range of the valid observations' values there (a median never leaves its inputs' range).
    Nodata read as data (a 0 in the median, a nodata edge blended into a value) breaks the range.
    Pixels with a masked observation (cloud, shadow: an excluded SCL class) within ``margin`` are
    not checked: interpolating a band (bilinear, cubic) blends a cloud's bright DNs into the valid
    pixels beside it, as in any odc-stac load with the mask read nearest (``mask.dilate`` trims it).
    """

    checked: int  #: pixels checked (edge pixels of every bin, away from masked observations)
    beside_masked: int  #: edge pixels not checked: a masked observation lies within the margin
    at_nodata_edge: int  #: checked pixels where an observation has data at some sample points and none at others
    violations: Mapping[str, int]  #: variable -> checked pixels outside their bounds
    examples: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.checked > 0 and not any(self.violations.values())

    def summary(self) -> str:
        return (f"edge pixels checked={self.checked} ({self.at_nodata_edge} at a nodata edge; not checked beside a "
                f"masked observation: {self.beside_masked}) "
                f"violations={dict(self.violations)}"
                + (f" e.g. {'; '.join(self.examples)}" if self.examples else ""))


def _offsets(spec: CubeSpec, margin_m: float, y: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(dx, dy) in the cube's CRS of ``n`` x ``n`` sample points spanning +-``margin_m`` around each pixel."""
    from .synthetic import M_PER_DEG_LAT, M_PER_DEG_LON

    if spec.is_geographic:
        dy = np.full_like(y, margin_m / M_PER_DEG_LAT)
        dx = margin_m / (M_PER_DEG_LON * np.cos(np.radians(np.clip(np.abs(y), 0, 89.0))))
    else:
        dx = dy = np.full_like(y, margin_m)
    steps = np.linspace(-1.0, 1.0, n)
    return [(i * dx, j * dy) for i in steps for j in steps]


def compare_edges(
    store: str,
    scene_set: SceneSet,
    spec: CubeSpec | Mapping[str, Any],
    *,
    margin_m: float | None = None,
    group_by_day: bool = True,
) -> EdgeComparison:
    """Check every pixel of every committed bin that :func:`compare_cube` skips (closer than
    ``margin_m`` to an edge) against the bounds described in :class:`EdgeComparison`."""
    from ..store import open_cube
    from .synthetic import observations

    spec = spec if isinstance(spec, CubeSpec) else parse_spec(dict(spec))
    margin = default_margin_m(spec, scene_set) if margin_m is None else margin_m
    ds = open_cube(store, raw=True)
    _, ydim, xdim = spec.dims
    xx, yy = np.meshgrid(ds[xdim].values, ds[ydim].values)
    names = [*spec.bands, "count"]
    bad = {n: 0 for n in names}
    checked = beside = edge_of_nodata = 0
    examples: list[str] = []
    kw = dict(bands=spec.bands, scl_exclude=spec.mask.scl_exclude, max_cloud_cover=spec.max_cloud_cover,
              group_by_day=group_by_day)
    for t, tv in enumerate(ds["time"].values):
        got_bin = calendar_bin(_as_date(tv), spec.interval)
        if isinstance(got_bin, str):
            continue
        start, end = got_bin
        centre = observations(scene_set.config, scene_set.scenes, xx, yy, spec.crs, start=start, end=end, **kw)
        near = centre.edge_m < margin
        if not near.any():
            continue
        # A coarse look (3 x 3 points) drops the pixels beside a masked observation, then a fine one
        # (9 x 9: every part of the square that can hold another value) bounds the rest.
        x, y = xx[near], yy[near]
        coarse = np.zeros(x.shape, dtype=bool)
        for dx, dy in _offsets(spec, margin, y, 3):
            o = observations(scene_set.config, scene_set.scenes, x + dx, y + dy, spec.crs, start=start, end=end, **kw)
            coarse |= (o.data & ~o.valid).any(axis=0)
        near.flat[np.flatnonzero(near)[coarse]] = False
        beside += int(coarse.sum())
        x, y = xx[near], yy[near]
        valid_all = valid_any = data_all = data_any = None
        masked = np.zeros(x.shape, dtype=bool)
        lo = {b: np.full(x.shape, np.iinfo(np.uint16).max, dtype=np.int64) for b in spec.bands}
        hi = {b: np.full(x.shape, -1, dtype=np.int64) for b in spec.bands}
        for dx, dy in _offsets(spec, margin, y, 9):
            o = observations(scene_set.config, scene_set.scenes, x + dx, y + dy, spec.crs, start=start, end=end, **kw)
            masked |= (o.data & ~o.valid).any(axis=0)
            data_all = o.data if data_all is None else data_all & o.data
            data_any = o.data if data_any is None else data_any | o.data
            valid_all = o.valid if valid_all is None else valid_all & o.valid
            valid_any = o.valid if valid_any is None else valid_any | o.valid
            for b in spec.bands:
                v = o.values[b].astype(np.int64)
                lo[b] = np.minimum(lo[b], np.where(o.valid, v, np.iinfo(np.uint16).max).min(axis=0, initial=np.iinfo(np.uint16).max))
                hi[b] = np.maximum(hi[b], np.where(o.valid, v, -1).max(axis=0, initial=-1))
        assert valid_all is not None and valid_any is not None
        cmin, cmax = valid_all.sum(axis=0), valid_any.sum(axis=0)
        got = {n: np.asarray(ds[n].isel(time=t).transpose(ydim, xdim).values)[near].astype(np.int64) for n in names}
        assert data_all is not None and data_any is not None
        edge_of_nodata += int(((data_any & ~data_all).any(axis=0) & ~masked).sum())
        checked += int((~masked).sum())
        beside += int(masked.sum())
        wrong = {"count": ((got["count"] < cmin) | (got["count"] > cmax)) & ~masked}
        for b in spec.bands:
            has = got["count"] > 0
            wrong[b] = np.where(has, (got[b] < lo[b]) | (got[b] > hi[b]), got[b] != 0) & ~masked
        for n, w in wrong.items():
            bad[n] += int(w.sum())
            for i in np.nonzero(w)[0][:2]:
                examples.append(f"{start} {n}[{ydim}={y[i]:.6f},{xdim}={x[i]:.6f}] got {got[n][i]} "
                                f"(count {got['count'][i]} in [{cmin[i]}, {cmax[i]}]"
                                + (f", {n} in [{lo[n][i]}, {hi[n][i]}]" if n in lo else "") + ")")
    return EdgeComparison(checked=checked, beside_masked=beside, at_nodata_edge=edge_of_nodata, violations=bad,
                          examples=tuple(examples[:6]))
